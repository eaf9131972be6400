"""What the gateway knows about one connected socket."""

from __future__ import annotations

import asyncio
from typing import Protocol

from tornado_gateway.edge.identity import Identity


class SocketState:
    """What the gateway knows about one connected socket."""

    __slots__ = ("sid", "ip", "identity", "chats", "pending", "worker", "timer", "expired",
                 "closing", "close_reason")

    def __init__(self, sid: str, ip: str) -> None:
        self.sid = sid
        self.ip = ip
        self.identity: Identity | None = None  # once authenticated
        self.chats: set[str] = set()  # chats joined (rooms chat:<id>)
        self.pending: list = []  # (an empty deque is ten times the size; at most 64 entries)
        self.worker: asyncio.Task | None = None
        self.timer: asyncio.TimerHandle | None = None  # auth timeout, token expiry or grace
        self.expired = False
        self.closing = False
        self.close_reason: str | None = None  # why the gateway closed it, for the log

    @property
    def user_id(self) -> str | None:
        return self.identity.user_id if self.identity is not None else None


class Authenticated(Protocol):
    """A SocketState after the dispatch checked its token: what event handlers see."""

    sid: str
    identity: Identity
    chats: set[str]

    @property
    def user_id(self) -> str: ...

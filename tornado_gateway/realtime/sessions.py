"""What the gateway knows about one connected socket."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Protocol

from tornado_gateway.edge.identity import Identity


log = logging.getLogger("tornado_gateway.realtime")


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Expiry:
    """One socket's place in :class:`ExpiryTimers` (what ``cancel`` removes)."""

    __slots__ = ("timers", "at", "sid")

    def __init__(self, timers: "ExpiryTimers", at: float, sid: str) -> None:
        self.timers, self.at, self.sid = timers, at, sid

    def cancel(self) -> None:
        self.timers.cancel(self)


class ExpiryTimers:
    """Token expiries: one loop timer per expiry moment, shared by every socket whose token
    expires then (a JWT's ``exp`` is in whole seconds, so a storm's sockets share a few),
    instead of a TimerHandle per socket (some 600 bytes each, for the socket's life)."""

    def __init__(self, fire: Callable[[str], None]) -> None:
        self._fire = fire
        self._due: dict[float, set[Expiry]] = {}
        self._timers: dict[float, asyncio.TimerHandle] = {}

    def call_at(self, at: float, sid: str) -> Expiry:
        """``fire(sid)`` once the wall clock reaches ``at`` (Unix time), unless cancelled."""
        due = self._due.get(at)
        if due is None:
            due = self._due[at] = set()
            self._timers[at] = asyncio.get_running_loop().call_later(max(0.0, at - time.time()), self._run, at)
        expiry = Expiry(self, at, sid)
        due.add(expiry)
        return expiry

    def cancel(self, expiry: Expiry) -> None:
        due = self._due.get(expiry.at)
        if due is not None:
            due.discard(expiry)
            if not due:
                del self._due[expiry.at]
                self._timers.pop(expiry.at).cancel()

    def _run(self, at: float) -> None:
        self._timers.pop(at, None)
        for expiry in self._due.pop(at, ()):
            try:
                self._fire(expiry.sid)
            except Exception:
                log.exception("token expiry of socket %s failed", expiry.sid)


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
        self.timer: Cancellable | None = None  # auth timeout, token expiry or grace
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

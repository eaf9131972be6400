"""Typing indicators: ``typing:update`` with throttling and automatic stop.

Why it works this way: docs/design-notes.md.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import asyncio
import logging
import time

log = logging.getLogger("tornado_gateway.realtime")


class TypingIndicators:
    def __init__(self, timeout: float,
                 broadcast: Callable[[str, str, bool, Any], Awaitable[None]]) -> None:
        self.timeout = timeout
        self.throttle = min(3.0, timeout / 2)
        self.broadcast = broadcast  # async fn(chat_id, user_id, typing, skip_sid)
        self.active: dict[tuple[str, str], list] = {}  # (sid, chat) -> [timer, last sent, user]

    async def start(self, sid: str, user_id: str, chat_id: str) -> None:
        key = (sid, chat_id)
        entry = self.active.get(key)
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        if entry is not None:
            entry[0].cancel()
            entry[0] = loop.call_later(self.timeout, self._expire, key)
            if now - entry[1] < self.throttle:
                return
            entry[1] = now
        else:
            self.active[key] = [loop.call_later(self.timeout, self._expire, key), now, user_id]
        await self.broadcast(chat_id, user_id, True, sid)

    async def stop(self, sid: str, chat_id: str) -> None:
        entry = self.active.pop((sid, chat_id), None)
        if entry is None:
            return
        entry[0].cancel()
        await self.broadcast(chat_id, entry[2], False, sid)

    async def stop_all(self, sid: str) -> None:
        for key in [k for k in self.active if k[0] == sid]:
            await self.stop(*key)

    def _expire(self, key: tuple[str, str]) -> None:
        entry = self.active.pop(key, None)
        if entry is not None:
            task = asyncio.ensure_future(self.broadcast(key[1], entry[2], False, key[0]))
            task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("typing auto-stop failed: %s", task.exception())

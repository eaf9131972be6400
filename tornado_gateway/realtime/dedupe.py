"""Exactly-once records of the real-time parts: idempotent sends and delivered receipts.

Why it works this way: docs/design-notes.md.
"""

from __future__ import annotations

from typing import Any
from tornado_gateway.cluster.redis_link import RedisLink

import asyncio
import logging
import time

from tornado_gateway.cluster.redis_cluster import ShardScript
from tornado_gateway.codec import dumps, loads
from tornado_gateway.realtime.payloads import EventError

log = logging.getLogger("tornado_gateway.realtime")
PENDING = "pending"
PENDING_TTL = 60  # seconds a reservation lives if its node dies mid-call
SEND_RECORD_TTL = 24 * 3600
RETRY_WAIT = 30.0  # seconds a retry waits for the first attempt's result
LOCAL_MAX = 200_000


# SET key 1 NX EX ttl for every key in ONE command: 1 where the key was set, 0 where it existed.
SET_NX_MANY = """
local won = {}
for i, key in ipairs(KEYS) do
  won[i] = redis.call('SET', key, '1', 'NX', 'EX', ARGV[1]) and 1 or 0
end
return won
"""


SET_NX_PER_SHARD = ShardScript(SET_NX_MANY)  # on a Redis Cluster: one call per master


def _tagged(key: str) -> str:
    """``<first part>:<rest>`` with its first part as hash tag (a receipt key: the message id)."""
    head, sep, rest = key.partition(":")
    return "{" + head + "}" + sep + rest


class _LocalTtlDict:
    """A bounded dict whose entries expire; the memory fallback of both classes."""

    def __init__(self, max_entries: int = LOCAL_MAX) -> None:
        self.entries: dict[str, tuple[float, object]] = {}
        self.max_entries = max_entries

    def get(self, key: str) -> Any:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self.entries[key]
            return None
        return entry[1]

    def set(self, key: str, value: Any, ttl: float) -> None:
        if len(self.entries) >= self.max_entries:
            now = time.monotonic()
            self.entries = {k: v for k, v in self.entries.items() if v[0] > now}
            while len(self.entries) >= self.max_entries:
                self.entries.pop(next(iter(self.entries)))
        self.entries[key] = (time.monotonic() + ttl, value)

    def pop(self, key: str) -> None:
        self.entries.pop(key, None)


class SendRecords:
    """Reserve / complete / release idempotency records of message:send."""

    def __init__(self, redis_link: RedisLink | None) -> None:
        self.redis = redis_link
        self.local = _LocalTtlDict()
        self._writes: set = set()

    @staticmethod
    def key(user_id: str, chat_id: str, client_message_id: str) -> str:
        """Scoped to the chat (SPEC §5): the same clientMessageId in another chat is another message."""
        return f"gw:send:{{{user_id}}}:{chat_id}:{client_message_id}"

    async def reserve(self, user_id: str, chat_id: str, client_message_id: str) -> dict | None:
        """None: this call owns the send. A dict: the message of an earlier identical send."""
        key = self.key(user_id, chat_id, client_message_id)
        deadline = time.monotonic() + RETRY_WAIT
        while True:
            stored = await self._reserve_once(key)
            if stored is None:
                return None
            if stored != PENDING:
                return loads(stored, max_depth=None)
            if time.monotonic() > deadline:
                raise EventError("UPSTREAM_UNAVAILABLE",
                                 "an earlier send with this clientMessageId is still in progress")
            await asyncio.sleep(0.05)

    async def _reserve_once(self, key: str) -> str | None:
        if self._redis_usable():
            try:
                client = self.redis.client
                if await client.set(key, PENDING, nx=True, ex=PENDING_TTL):
                    return None
                stored = await client.get(key)
                if stored is None:  # expired between the two calls: try again
                    return PENDING
                return stored.decode() if isinstance(stored, bytes) else stored
            except Exception as exc:
                self._failed(exc)
        stored = self.local.get(key)
        if stored is None:
            self.local.set(key, PENDING, PENDING_TTL)
        return stored

    async def complete(self, user_id: str, chat_id: str, client_message_id: str, message: dict) -> None:
        key = self.key(user_id, chat_id, client_message_id)
        value = dumps(message)
        self.local.set(key, value, SEND_RECORD_TTL)
        if self._redis_usable():
            # Not awaited: a retry meanwhile finds "pending" and waits for this write.
            task = asyncio.ensure_future(self._store(key, value))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _store(self, key: str, value: str) -> None:
        try:
            await self.redis.client.set(key, value, ex=SEND_RECORD_TTL)
        except Exception as exc:
            self._failed(exc)

    async def release(self, user_id: str, chat_id: str, client_message_id: str) -> None:
        """The send failed: a retry may try again."""
        key = self.key(user_id, chat_id, client_message_id)
        self.local.pop(key)
        if self._redis_usable():
            try:
                await self.redis.client.delete(key)
            except Exception as exc:
                self._failed(exc)

    def _redis_usable(self) -> bool:
        return self.redis is not None and self.redis.up

    def _failed(self, exc: Exception) -> None:
        log.warning("send dedupe falls back to local memory: %s", exc)
        self.redis.note_failure(exc)


class OnceMarks:
    """``first(keys)``: which keys were never marked before, on any node."""

    def __init__(self, redis_link: RedisLink | None, prefix: str, ttl: float = SEND_RECORD_TTL) -> None:
        self.redis = redis_link
        self.prefix = prefix
        self.ttl = int(ttl)
        self.local = _LocalTtlDict()
        self._script = None

    async def first(self, keys: list[str]) -> list[str]:
        fresh = []
        for key in keys:
            if self.local.get(key) is None:
                self.local.set(key, True, self.ttl)
                fresh.append(key)
        if not fresh or self.redis is None or not self.redis.up:
            return fresh
        try:
            names = [self.prefix + _tagged(key) for key in fresh]
            if self.redis.cluster is not None:
                results = await SET_NX_PER_SHARD(self.redis.cluster, names, shared_args=[self.ttl])
            else:
                if self._script is None:
                    self._script = self.redis.client.register_script(SET_NX_MANY)
                results = await self._script(keys=names, args=[self.ttl])
        except Exception as exc:
            log.warning("receipt dedupe falls back to local memory: %s", exc)
            self.redis.note_failure(exc)
            return fresh
        return [key for key, won in zip(fresh, results) if won]

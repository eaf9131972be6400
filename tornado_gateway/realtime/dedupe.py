"""Exactly-once records of the real-time parts: idempotent sends and delivered receipts.

At most one Redis key per message; local fallbacks bounded in bytes. Why it
works this way and why each TTL is what it is: docs/design-notes.md ("Dedupe").
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

from tornado_gateway.cluster.pipelined import Script
from tornado_gateway.cluster.redis_cluster import ShardScript
from tornado_gateway.cluster.redis_link import RedisLink
from tornado_gateway.codec import dumps, loads
from tornado_gateway.realtime.payloads import EventError

log = logging.getLogger("tornado_gateway.realtime")
PENDING = "pending"
PENDING_TTL = 60  # seconds a reservation lives if its node dies mid-call
SEND_RECORD_TTL = 24 * 3600  # a retry is recognised for at least this long (at most twice as long)
RECEIPT_TTL = 600  # seconds a (message, recipient) receipt is remembered after the last one of the message
RETRY_WAIT = 30.0  # seconds a retry waits for the first attempt's result
SEND_LOCAL_BYTES = 16 << 20  # local fallback budgets, in bytes of keys and values
RECEIPT_LOCAL_BYTES = 4 << 20
ENTRY_OVERHEAD = 160  # bytes a local entry costs beyond its key and value (dict slot, tuple, float)

# KEYS[1] today's hash, KEYS[2] yesterday's; ARGV: field, pending TTL (ms), hash TTL (s).
# Returns nil when this call owns the send, else the stored value ("pending:<until ms>" or JSON).
RESERVE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old and string.sub(old, 1, 8) ~= 'pending:' then return old end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and (string.sub(cur, 1, 8) ~= 'pending:' or tonumber(string.sub(cur, 9)) > now) then return cur end
redis.call('HSET', KEYS[1], ARGV[1], 'pending:' .. (now + tonumber(ARGV[2])))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return false
"""
# KEYS[1] today's hash, KEYS[2] yesterday's; ARGV: field, message JSON, hash TTL (s).
COMPLETE = """
local key = KEYS[1]
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then key = KEYS[2] end
redis.call('HSET', key, ARGV[1], ARGV[2])
redis.call('EXPIRE', key, ARGV[3])
return 1
"""
# KEYS: one receipt set per (message, recipient) pair (a message's key repeated for each of
# its recipients); ARGV[1] the TTL, ARGV[1 + i] the recipient of KEYS[i]. 1 where it was new.
FIRST_RECEIPTS = """
local won = {}
for i, key in ipairs(KEYS) do
  won[i] = redis.call('SADD', key, ARGV[i + 1])
  redis.call('EXPIRE', key, ARGV[1])
end
return won
"""
FIRST_RECEIPTS_PER_SHARD = ShardScript(FIRST_RECEIPTS)  # on a Redis Cluster: one call per master
RESERVE_SCRIPT, COMPLETE_SCRIPT, FIRST_RECEIPTS_SCRIPT = Script(RESERVE), Script(COMPLETE), Script(FIRST_RECEIPTS)


class _LocalTtlDict:
    """A dict whose entries expire, bounded in bytes; the memory fallback of both classes.

    Entries leave in insertion order when the budget is full (with one TTL per
    use that is also the order in which they expire)."""

    def __init__(self, max_bytes: int) -> None:
        self.entries: dict[str, tuple[float, object, int]] = {}
        self.max_bytes = max_bytes
        self.bytes = 0

    def get(self, key: str) -> Any:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            self.pop(key)
            return None
        return entry[1]

    def set(self, key: str, value: Any, ttl: float) -> None:
        self.pop(key)
        size = len(key) + (len(value) if isinstance(value, str) else 0) + ENTRY_OVERHEAD
        entries = self.entries
        while entries and self.bytes + size > self.max_bytes:
            self.bytes -= entries.pop(next(iter(entries)))[2]
        entries[key] = (time.monotonic() + ttl, value, size)
        self.bytes += size

    def pop(self, key: str) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry[2]


def _day_keys(user_id: str) -> tuple[str, str]:
    """This UTC day's and yesterday's send hash of a user (hash-tagged: one cluster slot per user)."""
    day = int(time.time() // 86400)
    return f"gw:send:{{{user_id}}}:{day}", f"gw:send:{{{user_id}}}:{day - 1}"


class SendRecords:
    """Reserve / complete / release idempotency records of message:send, per (user, chat)."""

    def __init__(self, redis_link: RedisLink | None) -> None:
        self.redis = redis_link
        self.local = _LocalTtlDict(SEND_LOCAL_BYTES)
        self._writes: set = set()

    @staticmethod
    def field(chat_id: str, client_message_id: str) -> str:
        """The record's field in the user's day hash, scoped to the chat (SPEC §5): the same
        clientMessageId in another chat is another message (length-prefixed: no ambiguity)."""
        return f"{len(chat_id)}:{chat_id}:{client_message_id}"

    async def reserve(self, user_id: str, chat_id: str, client_message_id: str) -> dict | None:
        """None: this call owns the send. A dict: the message of an earlier identical send."""
        field = self.field(chat_id, client_message_id)
        deadline = time.monotonic() + RETRY_WAIT
        while True:
            stored = await self._reserve_once(user_id, field)
            if stored is None:
                return None
            if not stored.startswith(PENDING):
                return cast(dict, loads(stored, max_depth=None))
            if time.monotonic() > deadline:
                raise EventError("UPSTREAM_UNAVAILABLE",
                                 "an earlier send with this clientMessageId is still in progress")
            await asyncio.sleep(0.05)

    async def _reserve_once(self, user_id: str, field: str) -> str | None:
        if self._redis_usable():
            try:
                stored = await RESERVE_SCRIPT.run(cast(RedisLink, self.redis), _day_keys(user_id),
                                                  [field, PENDING_TTL * 1000, 2 * SEND_RECORD_TTL])
                if stored is None:
                    return None
                return stored.decode() if isinstance(stored, bytes) else str(stored)
            except Exception as exc:
                self._failed(exc)
        key = f"{user_id}\x00{field}"
        stored = self.local.get(key)
        if stored is None:
            self.local.set(key, PENDING, PENDING_TTL)
        return cast("str | None", stored)

    async def complete(self, user_id: str, chat_id: str, client_message_id: str, message: dict) -> None:
        field = self.field(chat_id, client_message_id)
        value = dumps(message)
        self.local.set(f"{user_id}\x00{field}", value, SEND_RECORD_TTL)
        if self._redis_usable():
            # Not awaited: a retry meanwhile finds "pending" and waits for this write.
            task = asyncio.ensure_future(self._store(user_id, field, value))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _store(self, user_id: str, field: str, value: str) -> None:
        try:
            await COMPLETE_SCRIPT.run(cast(RedisLink, self.redis), _day_keys(user_id),
                                      [field, value, 2 * SEND_RECORD_TTL])
        except Exception as exc:
            self._failed(exc)

    async def release(self, user_id: str, chat_id: str, client_message_id: str) -> None:
        """The send failed: a retry may try again."""
        field = self.field(chat_id, client_message_id)
        self.local.pop(f"{user_id}\x00{field}")
        if self._redis_usable():
            try:
                for key in _day_keys(user_id):
                    await cast(RedisLink, self.redis).client.hdel(key, field)
            except Exception as exc:
                self._failed(exc)

    def _redis_usable(self) -> bool:
        return self.redis is not None and self.redis.up

    def _failed(self, exc: Exception) -> None:
        log.warning("send dedupe falls back to local memory: %s", exc)
        cast(RedisLink, self.redis).note_failure(exc)


class ReceiptMarks:
    """``first(pairs)``: which (message id, recipient) pairs never had a receipt, on any node."""

    def __init__(self, redis_link: RedisLink | None, ttl: float = RECEIPT_TTL) -> None:
        self.redis = redis_link
        self.ttl = int(ttl)
        self.local = _LocalTtlDict(RECEIPT_LOCAL_BYTES)

    async def first(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        fresh = []
        for message_id, recipient in pairs:
            key = f"{message_id}\x00{recipient}"
            if self.local.get(key) is None:
                self.local.set(key, True, self.ttl)
                fresh.append((message_id, recipient))
        if not fresh or self.redis is None or not self.redis.up:
            return fresh
        names = [f"gw:receipt:{{{m}}}" for m, _ in fresh]
        try:
            if self.redis.cluster is not None:
                results = await FIRST_RECEIPTS_PER_SHARD(self.redis.cluster, names,
                                                         per_key_args=[[r] for _, r in fresh],
                                                         shared_args=[self.ttl])
            else:
                results = await FIRST_RECEIPTS_SCRIPT.run(self.redis, names, [self.ttl, *(r for _, r in fresh)])
        except Exception as exc:
            log.warning("receipt dedupe falls back to local memory: %s", exc)
            self.redis.note_failure(exc)
            return fresh
        return [pair for pair, won in zip(fresh, results) if won]

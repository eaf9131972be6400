"""Token revocation: ``session:revoke`` by jti or by "issued before" for a user.

Why it works this way: docs/design-notes.md.
"""

from __future__ import annotations

import asyncio
import logging
import time

from tornado_gateway import metrics
from tornado_gateway.edge.identity import Identity
from typing import Any, Callable

log = logging.getLogger("tornado_gateway.revocation")

JTI_PREFIX = "gw:revoked:jti:"
USER_PREFIX = "gw:revoked:user:"

# KEYS[1] user key; ARGV[1] before epoch, ARGV[2] ttl seconds. Raises "before", never lowers it.
RAISE_BEFORE_SCRIPT = """
local current = tonumber(redis.call('GET', KEYS[1]))
if current == nil or current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return 1
"""


class Revocations:
    """This node's view of revoked tokens, backed by Redis when configured."""

    def __init__(self, redis_link: Any = None, ttl: float = 7 * 86400.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.redis = redis_link  # RedisLink or None (single-node mode)
        self.ttl = ttl
        self.clock = clock
        self._jtis: dict[str, float] = {}  # jti -> epoch after which the entry can go
        self._before: dict[str, tuple[float, float]] = {}  # user -> (before, forget-after epoch)
        self._raise_before: Any = redis_link.client.register_script(RAISE_BEFORE_SCRIPT) if redis_link else None
        self._restoring: asyncio.Task | None = None
        self.synced = redis_link is None  # True once the cache holds what Redis holds

    # -- the hot path ------------------------------------------------------

    async def is_revoked(self, identity: Identity) -> bool:
        """True when ``identity``'s token was revoked (memory only, never waits on Redis)."""
        return self.check(identity)

    def check(self, identity: Identity) -> bool:
        """Synchronous form of :meth:`is_revoked`."""
        if identity.jti is not None and identity.jti in self._jtis:
            return True
        entry = self._before.get(identity.user_id)
        if entry is None:
            return False
        return identity.issued_at is None or identity.issued_at < entry[0]

    # -- recording ---------------------------------------------------------

    def apply(self, user_id: str, jti: str | None = None, before: float | None = None,
              exp: float | None = None) -> None:
        """Record a revocation in this process's memory."""
        now = self.clock()
        forget_at = now + self.ttl
        if jti is not None:
            self._jtis[jti] = min(forget_at, exp) if exp else forget_at
            metrics.REVOCATIONS.labels("jti").inc()
        if before is not None:
            current = self._before.get(user_id)
            if current is None or current[0] < before:
                self._before[user_id] = (before, forget_at)
            metrics.REVOCATIONS.labels("before").inc()
        self._prune(now)

    async def store(self, user_id: str, jti: str | None = None, before: float | None = None,
                    exp: float | None = None) -> None:
        """Write a revocation to Redis (idempotent). Raises when Redis fails."""
        if self.redis is None:
            return
        client = self.redis.client
        if jti is not None:
            ttl = self.ttl if not exp else min(self.ttl, exp - self.clock())
            await client.set(JTI_PREFIX + jti, user_id, ex=max(1, int(ttl) + 1))
        if before is not None:
            await self._raise_before(keys=(USER_PREFIX + user_id,),
                                     args=(repr(float(before)), int(self.ttl)))

    # -- keeping the cache current ------------------------------------------

    async def start(self) -> None:
        if self.redis is None:
            return
        self.redis.on_change(self._redis_changed)
        self.redis.on_wiped(self._redis_wiped)
        await self.sync()

    def _redis_wiped(self) -> None:
        self._restoring = asyncio.get_running_loop().create_task(self.restore())  # kept: weak refs

    async def restore(self) -> int:
        """Write every revocation this node holds back to Redis (after Redis lost its data)."""
        now = self.clock()
        jtis = [(j, t) for j, t in self._jtis.items() if t > now]
        befores = [(u, e[0]) for u, e in self._before.items() if e[1] > now]
        try:
            for jti, forget_at in jtis:
                await self.redis.client.set(JTI_PREFIX + jti, "", ex=max(1, int(forget_at - now) + 1))
            for user_id, before in befores:
                await self._raise_before(keys=(USER_PREFIX + user_id,),
                                         args=(repr(float(before)), int(self.ttl)))
        except Exception as exc:
            log.warning("revocations: could not restore to Redis (%s)", type(exc).__name__)
            return 0
        if jtis or befores:
            log.info("revocations: restored to Redis (%d jti, %d user)", len(jtis), len(befores))
        return len(jtis) + len(befores)

    def _redis_changed(self, up: bool) -> None:
        if up:
            asyncio.get_running_loop().create_task(self.sync())

    async def sync(self) -> bool:
        """Load every stored revocation from Redis into memory; False when Redis failed."""
        if self.redis is None:
            return True
        client = self.redis.client
        now = self.clock()
        try:
            jtis, befores = {}, {}
            async for key in client.scan_iter(match="gw:revoked:*", count=1000):
                key = key.decode() if isinstance(key, bytes) else key
                if key.startswith(JTI_PREFIX):
                    ttl = await client.ttl(key)
                    jtis[key[len(JTI_PREFIX):]] = now + (ttl if ttl > 0 else self.ttl)
                elif key.startswith(USER_PREFIX):
                    value = await client.get(key)
                    if value is not None:
                        befores[key[len(USER_PREFIX):]] = float(value)
        except Exception as exc:
            log.warning("revocations: could not load from Redis (%s); keeping %d cached",
                        type(exc).__name__, len(self._jtis) + len(self._before))
            return False
        for jti, forget_at in jtis.items():
            self._jtis[jti] = max(forget_at, self._jtis.get(jti, 0))
        for user_id, before in befores.items():
            current = self._before.get(user_id)
            if current is None or current[0] < before:
                self._before[user_id] = (before, now + self.ttl)
        if not self.synced or jtis or befores:
            log.info("revocations: loaded from Redis (%d jti, %d user)", len(jtis), len(befores))
        self.synced = True
        return True

    def _prune(self, now: float) -> None:
        if len(self._jtis) > 1000:
            self._jtis = {j: t for j, t in self._jtis.items() if t > now}
        if len(self._before) > 1000:
            self._before = {u: e for u, e in self._before.items() if e[1] > now}

    def readiness(self) -> dict:
        return {"ok": True, "synced": self.synced, "cached": len(self._jtis) + len(self._before)}

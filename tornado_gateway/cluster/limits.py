"""Rate limits shared by every node through Redis, with a local fallback.

Why it works this way: docs/design-notes.md.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass


from tornado_gateway import metrics
from tornado_gateway.cluster.pipelined import Script
from tornado_gateway.cluster.redis_cluster import ShardScript
from tornado_gateway.config import RateLimit, Settings
from tornado_gateway.errors import GatewayError
from typing import Any, Callable

log = logging.getLogger("tornado_gateway.limits")

KEY_PREFIX = "gw:rl:"

# One batch of decisions: KEYS[i] is a bucket, ARGV[2i-1] and ARGV[2i] its emission
# interval and window (us). Returns 4 integers per bucket, in order: allowed 0/1,
# remaining, retry_after_us, reset_us (Lua numbers are truncated in replies, so
# everything is in microseconds). Each decision is its own read-modify-write, in
# order, so a bucket named twice in one batch sees the first decision.
GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local window = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key))
  if tat == nil or tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - window
  local n = #out
  if now < allow_at then
    out[n + 1], out[n + 2], out[n + 3], out[n + 4] = 0, 0, math.ceil(allow_at - now), math.ceil(tat - now)
  else
    local ttl_ms = math.max(1, math.ceil((new_tat - now) / 1000))
    redis.call('SET', key, string.format('%.0f', new_tat), 'PX', ttl_ms)
    out[n + 1], out[n + 2], out[n + 3], out[n + 4] = 1, math.floor((now - allow_at) / interval), 0,
      math.ceil(new_tat - now)
  end
end
return out
"""
GCRA_PER_SHARD = ShardScript(GCRA_SCRIPT, width=4)  # on a Redis Cluster: one EVALSHA per master
GCRA = Script(GCRA_SCRIPT)  # on a single Redis (pipelined connection or redis-py client)


@dataclass(frozen=True)
class Decision:
    """The outcome of one rate-limit check."""

    allowed: bool
    limit: int
    remaining: int
    reset: float  # seconds until the bucket is full again
    retry_after: float  # seconds until the next request is allowed (0 when allowed)


def gcra(tat: float | None, now: float, interval: float,
         window: float) -> tuple[bool, float, int, float, float]:
    """One GCRA step: (allowed, new_tat, remaining, retry_after, reset), times in seconds."""
    if tat is None or tat < now:
        tat = now
    new_tat = tat + interval
    allow_at = new_tat - window
    if now < allow_at:
        return False, tat, 0, allow_at - now, tat - now
    remaining = int(math.floor((now - allow_at) / interval + 1e-9))
    return True, new_tat, remaining, 0.0, new_tat - now


class LocalLimiter:
    """GCRA buckets in this process's memory (single-node mode and Redis fallback)."""

    MAX_KEYS = 100_000  # past this, full buckets are swept out

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._tats: dict[str, float] = {}

    def allow(self, bucket: str, limit: RateLimit) -> Decision:
        now = self.clock()
        interval = limit.window / limit.count
        allowed, tat, remaining, retry_after, reset = gcra(
            self._tats.get(bucket), now, interval, limit.window)
        if allowed:
            if len(self._tats) >= self.MAX_KEYS:
                self._sweep(now)
            self._tats[bucket] = tat
        return Decision(allowed, limit.count, remaining, reset, retry_after)

    def _sweep(self, now: float) -> None:
        self._tats = {k: tat for k, tat in self._tats.items() if tat > now}


class Limits:
    """This node's limiter: Redis-shared when possible, local otherwise."""

    def __init__(self, redis_link: Any = None, settings: Settings | None = None) -> None:
        self.redis = redis_link  # RedisLink or None (single-node mode)
        self.http = HttpPolicy(settings or Settings())
        self.local = LocalLimiter()
        self._shared = redis_link is not None  # decide through Redis when it is up
        self._args: dict[RateLimit, tuple[str, str]] = {}
        self._pending: list[tuple[str, tuple[str, str], asyncio.Future]] = []
        self._sender: asyncio.Task | None = None  # sends the pending decisions, one batch at a time
        self.fallback = False  # True while deciding locally although Redis is configured
        if redis_link is not None:
            redis_link.on_change(lambda up: self._set_fallback(not up))

    async def allow(self, scope: str, key: str, limit: RateLimit) -> Decision:
        """Count one hit on ``scope``/``key`` against ``limit`` and say whether it may pass."""
        bucket = KEY_PREFIX + "{" + scope + ":" + key + "}"  # the bucket is its own hash tag
        decision = None
        if self._shared and self.redis.up:
            decision = await self._allow_shared(bucket, limit)
        if decision is None:
            if self._shared:
                self._set_fallback(True)
            decision = self.local.allow(bucket, limit)
        if not decision.allowed:
            metrics.RATE_LIMITED.labels(scope).inc()
        return decision

    async def admit_http(self, path: str, user_id: str | None, client_ip: str) -> dict[str, str]:
        """Count one HTTP request: the RateLimit headers to send, or GatewayError 429 when over.

        What the proxy calls after authentication and revocation, before the upstream.
        """
        scope, key, limit = self.http.bucket(path, user_id, client_ip)
        decision = await self.allow(scope, key, limit)
        headers = self.http.headers(scope, decision)
        if not decision.allowed:
            raise self.http.refusal(scope, decision, headers)
        return headers

    async def _allow_shared(self, bucket: str, limit: RateLimit) -> Decision | None:
        args = self._args.get(limit)
        if args is None:
            interval_us = limit.window * 1e6 / limit.count
            args = self._args[limit] = (repr(interval_us), repr(limit.window * 1e6))
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((bucket, args, future))
        if self._sender is None and len(self._pending) == 1:
            loop.call_soon(self._start_sender)
        reply = await future
        if reply is None:  # Redis gone or failing: decide locally this time
            return None
        self._set_fallback(False)
        allowed, remaining, retry_us, reset_us = reply
        return Decision(bool(allowed), limit.count, int(remaining), reset_us / 1e6, retry_us / 1e6)

    # Decisions go out in batches, one batch in flight at a time: one EVALSHA of
    # the script over every bucket of the batch (one command, one round trip).
    # Decisions asked for while a batch is in flight wait for the next one, so
    # under load batches grow and the client's per-command overhead is shared;
    # when idle a batch is one decision sent at the end of the loop iteration.

    def _start_sender(self) -> None:
        if self._sender is None and self._pending:
            self._sender = asyncio.get_running_loop().create_task(self._send_pending())

    async def _send_pending(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                if self.redis.up:
                    await self._run_batch(batch)
                else:  # the last batch failed: the rest decide locally, no second timeout
                    self._resolve(batch, [None] * len(batch))
        finally:
            self._sender = None

    async def _run_batch(self, batch: list) -> None:
        keys = [bucket for bucket, _, _ in batch]
        args = [arg for _, pair, _ in batch for arg in pair]
        replies: list[list | None]
        try:
            if self.redis.cluster is not None:
                flat = await GCRA_PER_SHARD(self.redis.cluster, keys, [pair for _, pair, _ in batch])
            else:
                flat = await GCRA.run(self.redis, keys, args)
            replies = [flat[i:i + 4] for i in range(0, len(flat), 4)]
        except Exception as exc:
            self.redis.note_failure(exc)
            replies = [None] * len(batch)
        self._resolve(batch, replies)

    @staticmethod
    def _resolve(batch: list, replies: list) -> None:
        for (_, _, future), reply in zip(batch, replies):
            if not future.done():
                future.set_result(reply)

    def _set_fallback(self, fallback: bool) -> None:
        if fallback == self.fallback:
            return
        self.fallback = fallback
        metrics.RATE_LIMIT_LOCAL.set(1 if fallback else 0)
        if fallback:
            log.error("rate limits: Redis unreachable, limiting locally on this node "
                      "(each node enforces the limits alone until Redis is back)")
        else:
            log.info("rate limits: Redis reachable again, limits are shared by all nodes")

    def readiness(self) -> dict:
        """``/readyz`` detail: where decisions are made right now."""
        if not self._shared:
            return {"ok": True, "mode": "memory"}
        if not self.redis.up:
            return {"ok": True, "mode": "local-fallback",
                    "detail": "Redis unreachable: limits enforced per node"}
        return {"ok": True, "mode": "redis"}


class HttpPolicy:
    """Which bucket an HTTP request counts against, and the headers that say so.

    ``auth`` (per IP) for RATE_LIMIT_AUTH_PATHS, else ``user`` (per user id)
    with a verified token, else ``ip`` (per client IP). Headers follow the IETF
    httpapi draft: ``RateLimit-Policy: "user";q=300;w=60`` and
    ``RateLimit: "user";r=299;t=1``; a refusal adds ``Retry-After``.
    """

    def __init__(self, settings: Settings) -> None:
        # Compared without case: an upstream may route /api/auth/LOGIN like /api/auth/login.
        self.auth_paths = tuple(p.lower() for p in settings.rate_limit_auth_paths)
        self.classes = {"auth": settings.rate_limit_auth, "user": settings.rate_limit_user,
                        "ip": settings.rate_limit_ip}
        self.policy_headers = {
            scope: f'"{scope}";q={limit.count};w={limit.window:g}'
            for scope, limit in self.classes.items()
        }

    def bucket(self, path: str, user_id: str | None, client_ip: str) -> tuple[str, str, RateLimit]:
        """(scope, key, limit) for one request (``path`` normalised by the proxy)."""
        lowered = path.lower()
        for prefix in self.auth_paths:
            if lowered == prefix or lowered.startswith(prefix + "/"):
                return "auth", client_ip, self.classes["auth"]
        if user_id is not None:
            return "user", user_id, self.classes["user"]
        return "ip", client_ip, self.classes["ip"]

    def headers(self, scope: str, decision: Decision) -> dict[str, str]:
        return {
            "RateLimit-Policy": self.policy_headers[scope],
            "RateLimit": f'"{scope}";r={decision.remaining};t={math.ceil(decision.reset)}',
        }

    def refusal(self, scope: str, decision: Decision, headers: dict[str, str]) -> GatewayError:
        retry = max(1, math.ceil(decision.retry_after))
        limit = self.classes[scope]
        return GatewayError(
            "RATE_LIMITED",
            f"rate limit exceeded ({scope}: {limit.count} per {limit.window:g}s); retry in {retry}s",
            headers={**headers, "Retry-After": str(retry)},
        )



"""The node's connection to Redis and whether Redis is reachable right now.

Why it works this way: docs/design-notes.md.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.cluster import RedisCluster
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import MaxConnectionsError
from socketio.redis_manager import parse_redis_sentinel_url

from tornado_gateway import metrics
from tornado_gateway.cluster.pipelined import PipelinedRedis
from tornado_gateway.cluster.redis_cluster import connect_cluster, is_cluster_url
from typing import Any, Callable, Sequence

log = logging.getLogger("tornado_gateway.redis")

# Short timeouts: a gateway must answer quickly even when Redis is gone.
# socket_timeout also bounds pubsub reads, so listeners wake up and notice a
# dead connection instead of blocking or spinning.
CLIENT_OPTIONS = {
    "socket_connect_timeout": 1.0,
    "socket_timeout": 2.0,
    "socket_keepalive": True,
    "health_check_interval": 10,
    # RESP2, whichever redis-py is installed (8.x speaks RESP3 unless told): the same replies
    # across the supported range, no HELLO round trip per connection, and pub/sub messages
    # as plain replies instead of RESP3 pushes, each of which redis-py 8 runs through a
    # push handler (a getLogger and a debug call per message)
    "protocol": 2,
    "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1),
}


# The shared client's pool: bounded, and a burst waits for a free connection.
POOL_MAX_CONNECTIONS = 100
POOL_WAIT = 1.0  # below the watcher's 2 s ping timeout


EPOCH_KEY = "gw:epoch"
# KEYS[1] epoch marker; ARGV[1] a fresh epoch. Returns the marker's value, set first if missing.
EPOCH_SCRIPT = """
local value = redis.call('GET', KEYS[1])
if not value then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
return value
"""


def redis_options(url: str) -> dict:
    """Client keyword arguments for ``url`` (shared with the Socket.IO manager)."""
    options = dict(CLIENT_OPTIONS)
    if urlsplit(url).scheme == "redis+sentinel":
        options.pop("retry")
    return options


def connect_subscriber(url: str) -> aioredis.Redis:
    """A client for one pub/sub connection: no silent reconnect (its owner's loop re-subscribes)."""
    if urlsplit(url).scheme == "redis+sentinel":
        return connect(url)
    return connect(url, retry=Retry(NoBackoff(), 0))


def connect(url: str, bounded_pool: bool = False, **overrides: Any) -> Any:
    """A redis.asyncio client for a redis://, rediss://, unix:// or redis+sentinel:// URL.

    ``bounded_pool``: at most POOL_MAX_CONNECTIONS connections, and a command
    that finds them all busy waits up to POOL_WAIT s for one (a burst queues
    instead of failing with "Too many connections"). Not for sentinel URLs.
    """
    options = {**redis_options(url), **overrides}
    if is_cluster_url(url):  # redis.asyncio.cluster.RedisCluster
        return connect_cluster(url, max_connections=POOL_MAX_CONNECTIONS, **options)
    if urlsplit(url).scheme == "redis+sentinel":
        sentinels, service, connection_kwargs = parse_redis_sentinel_url(url)
        sentinel = aioredis.sentinel.Sentinel(sentinels, **{**options, **connection_kwargs})
        return sentinel.master_for(service or "mymaster")
    if bounded_pool:
        return aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(
            url, max_connections=POOL_MAX_CONNECTIONS, timeout=POOL_WAIT, **options))
    return aioredis.Redis.from_url(url, **options)


def describe(url: str) -> str:
    """Where ``url`` points, for a log line: scheme and host(s), never a password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    hosts = parts.netloc.rpartition("@")[2]  # sentinel and cluster URLs list several host:port
    service = f" {parts.path.strip('/')}" if parts.scheme == "redis+sentinel" and parts.path.strip("/") else ""
    return f"{parts.scheme}://{hosts}{service}"


def pool_exhausted(exc: BaseException) -> bool:
    """A command failed for want of a free pooled connection, not because Redis is unreachable."""
    if isinstance(exc, MaxConnectionsError):
        return True
    return isinstance(exc, RedisConnectionError) and isinstance(exc.__cause__, asyncio.TimeoutError)


def connection_lost(exc: BaseException) -> bool:
    """Only a connection-level failure means Redis is unreachable; a refused command or a
    bad payload (an encoding error, a script error) is the caller's error, never an outage."""
    if pool_exhausted(exc):
        return False
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError, asyncio.TimeoutError, OSError))


class RedisLink:
    """The shared client plus an up/down flag kept current by a watcher.

    ``fast``: one pipelined connection (cluster.pipelined) for the small commands of the hot
    path on a plain ``redis://`` or ``unix://`` URL, else None (use ``client``)."""

    PING_INTERVAL = 1.0

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = describe(url)
        self.client = connect(url, bounded_pool=True)
        # The cluster client on a Redis Cluster (sharded pub/sub, per-shard scripts), else None.
        self.cluster: RedisCluster | None = self.client if isinstance(self.client, RedisCluster) else None
        self.fast: PipelinedRedis | None = None if self.cluster is not None else PipelinedRedis.for_url(
            url, connect_timeout=CLIENT_OPTIONS["socket_connect_timeout"],
            command_timeout=CLIENT_OPTIONS["socket_timeout"])
        self.up = False
        self.last_error: str | None = None
        self._watcher: asyncio.Task | None = None
        self._listeners: list = []
        self._wiped_listeners: list = []
        self.epoch: str | None = None  # the data epoch last seen (see check_epoch)
        self._epoch_script = self.client.register_script(EPOCH_SCRIPT)

    async def execute(self, *args: Any) -> Any:
        """One command on the pipelined connection when there is one, else through the client."""
        if self.fast is not None:
            return await self.fast.execute(*args)
        return await self.client.execute_command(*args)

    async def execute_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Several commands in one write (pipelined connection) or one pipeline (client)."""
        if self.fast is not None:
            return await self.fast.execute_many(commands)
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute()

    def on_change(self, callback: Any) -> None:
        """Call ``callback(up: bool)`` whenever reachability changes."""
        self._listeners.append(callback)

    def on_wiped(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when Redis is found to have lost its data (see check_epoch)."""
        self._wiped_listeners.append(callback)

    async def check_epoch(self) -> bool:
        """True when Redis lost its data since this node last looked (listeners are told once).

        Raises what the Redis call raises."""
        value = await self._epoch_script(keys=[EPOCH_KEY], args=[uuid.uuid4().hex])
        value = value.decode() if isinstance(value, bytes) else str(value)
        previous, self.epoch = self.epoch, value
        if previous is None or previous == value:
            return False
        log.warning("redis came back without the gateway's data (restart without persistence "
                    "or failover); "
                    "rebuilding presence and revocations from this node")
        for callback in self._wiped_listeners:
            try:
                callback()
            except Exception:
                log.exception("redis wipe listener failed")
        return True

    async def start(self) -> None:
        await self._ping()
        if not self.up:
            log.warning("redis unreachable at start-up (%s); serving with local fallbacks: %s",
                        self.where, self.last_error)
        self._watcher = asyncio.create_task(self._watch())

    async def _ping(self) -> None:
        try:
            await asyncio.wait_for(self.client.ping(), timeout=2.0)
        except Exception as exc:  # any failure but a busy pool means "not reachable now"
            if not pool_exhausted(exc):
                self._set(False, f"{type(exc).__name__}: {exc}")
        else:
            self._set(True, None)
            try:
                await asyncio.wait_for(self.check_epoch(), timeout=2.0)
            except Exception as exc:
                log.warning("redis epoch check failed: %s: %s", type(exc).__name__, exc)

    def _set(self, up: bool, error: str | None) -> None:
        was = self.up
        self.up, self.last_error = up, error
        if up == was:
            return
        if up:
            log.info("redis reachable at %s", self.where)
            if self._watcher is not None:
                metrics.REDIS_RECONNECTS.inc()
        elif self._watcher is not None:
            log.error("redis lost (%s): %s", self.where, error)
        for callback in self._listeners:
            try:
                callback(up)
            except Exception:
                log.exception("redis state listener failed")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.PING_INTERVAL)
            await self._ping()

    def note_failure(self, exc: BaseException) -> None:
        """Callers report a failed command so readiness turns at once (a busy pool is no outage)."""
        if pool_exhausted(exc):
            log.warning("redis connection pool busy: %s", exc)
            return
        if not connection_lost(exc):
            log.warning("redis command failed (not an outage): %s: %s", type(exc).__name__, exc)
            return
        self._set(False, f"{type(exc).__name__}: {exc}")

    async def close(self) -> None:
        if self._watcher:
            self._watcher.cancel()
            try:
                await self._watcher  # let it finish before the client it pings goes away
            except asyncio.CancelledError:
                pass
        if self.fast is not None:
            self.fast.close()
        try:
            await self.client.aclose()
        except Exception:
            pass

"""The pub/sub channels one node listens to, and when each subscription is live.

Owns the subscriber connections (one per Redis, or per master of a Redis Cluster with
sharded SSUBSCRIBE), the batching of (un)subscribes and their confirmations; each
connection runs on cluster.subscription. Design: docs/scale-out.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tornado_gateway import metrics
from tornado_gateway.cluster.redis_cluster import node_options, owner
from tornado_gateway.cluster.subscription import Subscription

log = logging.getLogger("tornado_gateway.channels")

ROOM_PREFIXES = ("chat:", "user:")
ROOM_CHANNEL_PREFIX = "gw:room:"
COMMAND_MAX = 1000  # channels per SUBSCRIBE (a re-subscription after a reconnect may hold many)


def room_channel(room: object) -> str | None:
    """The channel of a room whose events only its members' nodes need, else None.

    The room name is the channel's hash tag, so on a cluster each room's
    channel lives on one shard and rooms spread over all shards.
    """
    if isinstance(room, str) and room.startswith(ROOM_PREFIXES):
        return ROOM_CHANNEL_PREFIX + "{" + room + "}"
    return None


def channel_kind(channel: str) -> str:
    """``chat``, ``user`` or ``control``: the label of a channel in the metrics."""
    if channel.startswith(ROOM_CHANNEL_PREFIX + "{chat:"):
        return "chat"
    if channel.startswith(ROOM_CHANNEL_PREFIX + "{user:"):
        return "user"
    return "control"


class _Channel:
    """One channel's state on its connection."""

    __slots__ = ("name", "wanted", "requested", "inflight", "link", "waiters")

    def __init__(self, name: str, link: "_Link"):
        self.name = name
        self.wanted = False  # the node wants it
        self.requested = False  # the last command sent for it on this connection was a subscribe
        self.inflight = 0  # commands sent whose confirmation has not arrived
        self.link = link
        self.waiters: list[tuple[asyncio.Future, asyncio.TimerHandle]] = []  # confirmation's, with its timeout

    def answer(self, value: bool) -> None:
        """Answer every waiter of ``confirmation`` (their timeouts are cancelled)."""
        for waiter, timer in self.waiters:
            timer.cancel()
            if not waiter.done():
                waiter.set_result(value)
        self.waiters.clear()

    @property
    def live(self) -> bool:
        return self.wanted and self.requested and self.inflight == 0 and self.link.connected


class _Link:
    """One subscriber connection, run by THE reconnect loop (cluster.subscription)."""

    def __init__(self, owner: "ChannelSubscriptions", name: str, connect: Callable[[], Redis]):
        self.owner = owner
        self.name = name
        self.channels: dict[str, _Channel] = {}
        self.dirty: set[str] = set()
        self.lock = asyncio.Lock()  # one flush at a time: commands go out in decision order
        self.task: asyncio.Task | None = None
        self._lost_once = False
        self.subscription = Subscription(None, connect, on_subscribed=self._connected,
                                         on_lost=self._lost, on_item=self._handle, own_client=True)

    @property
    def connected(self) -> bool:
        return self.subscription.subscribed

    @property
    def pubsub(self) -> Any:
        return self.subscription.pubsub

    def start(self) -> None:
        self.task = asyncio.ensure_future(self.subscription.run())

    async def _connected(self) -> None:
        for channel in self.channels.values():  # a new connection holds nothing yet
            channel.requested, channel.inflight = False, 0
        self.dirty.update(self.channels)
        await self.flush()
        if self._lost_once:
            log.info("pub/sub connection %s back; re-subscribed %d channel(s)", self.name,
                     len(self.channels))
            self._lost_once = False

    def _lost(self, exc: BaseException) -> None:
        if not self._lost_once:
            log.error("pub/sub connection %s lost, reconnecting: %s: %s", self.name,
                      type(exc).__name__, exc)
            self._lost_once = True
        task = asyncio.ensure_future(self.owner._lost(self))
        task.add_done_callback(_log_failure)

    def _handle(self, message: dict) -> None:
        kind = message.get("type")
        raw = message.get("channel")
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        if kind in ("message", "smessage"):
            metrics.child(metrics.CLUSTER_MESSAGES_IN, channel_kind(name)).inc()
            self.owner.on_message(name, message["data"])
        elif kind in ("subscribe", "ssubscribe", "unsubscribe", "sunsubscribe"):
            channel = self.channels.get(name)
            if channel is None:
                return
            if kind == "sunsubscribe" and channel.inflight == 0 and channel.requested:
                # Not ours: Redis dropped it because its slot moved to another master.
                channel.requested = False
                task = asyncio.ensure_future(self.owner._lost(self))
                task.add_done_callback(_log_failure)
                return
            channel.inflight = max(0, channel.inflight - 1)
            if channel.live:
                channel.answer(True)
            elif not channel.wanted and channel.inflight == 0:
                del self.channels[name]

    async def flush(self) -> None:
        """Send what changed since the last flush: one command per kind (per slot on a cluster)."""
        async with self.lock:
            await self._flush()

    async def _flush(self) -> None:
        if not self.connected or self.pubsub is None or not self.dirty:
            return
        subscribe, unsubscribe = [], []
        for name in self.dirty:
            channel = self.channels.get(name)
            if channel is None:
                continue
            if channel.wanted and not channel.requested:
                subscribe.append(channel)
            elif not channel.wanted and channel.requested:
                unsubscribe.append(channel)
            elif not channel.wanted and channel.inflight == 0:
                del self.channels[name]
        self.dirty.clear()
        for channels, on in ((subscribe, True), (unsubscribe, False)):
            for group in self.owner._groups(channels):
                for channel in group:
                    channel.requested = on
                    channel.inflight += 1
                names = [c.name for c in group]
                if self.owner.sharded:
                    await (self.pubsub.ssubscribe(*names) if on else self.pubsub.sunsubscribe(*names))
                else:
                    await (self.pubsub.subscribe(*names) if on else self.pubsub.unsubscribe(*names))

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass


class ChannelSubscriptions:
    """The node's subscriptions; ``on_message(channel, data)`` gets every message received."""

    def __init__(self, on_message: Callable[[str, bytes], None], connect: Callable[[], Redis] | None = None,
                 cluster: RedisCluster | None = None, always: Iterable[str] = ()):
        """``connect``: a new plain client for one server (single Redis or Sentinel);
        ``cluster``: the cluster client whose masters get one connection each."""
        self.on_message = on_message
        self.cluster = cluster
        self.sharded = cluster is not None
        self._connect = connect
        self.links: dict[str, _Link] = {}
        self.always = list(always)
        self._flush_scheduled = False
        self._started = False
        for kind in ("chat", "user", "control"):
            metrics.ROOM_SUBSCRIPTIONS.labels(kind).set_function(self._counter(kind))

    async def start(self) -> None:
        """Open the connections and subscribe the ``always`` channels (does not wait for Redis)."""
        self._started = True
        if self.cluster is not None:
            try:
                await self.cluster.initialize()
            except Exception as exc:
                log.error("redis cluster unreachable at start-up, retrying: %s", exc)
        for name in self.always:
            self.want(name)

    async def close(self) -> None:
        for link in list(self.links.values()):
            await link.close()

    # -- what the node wants ------------------------------------------------------

    def want(self, name: str) -> None:
        """Listen to ``name`` (idempotent); subscribed at the end of this loop iteration."""
        link = self._link_for(name)
        channel = link.channels.get(name)
        if channel is None:
            channel = link.channels[name] = _Channel(name, link)
        if not channel.wanted:
            channel.wanted = True
            self._mark(link, name)

    def drop(self, name: str) -> None:
        """Stop listening to ``name`` (idempotent); waiters of ``live`` get False."""
        for link in self.links.values():
            channel = link.channels.get(name)
            if channel is not None and channel.wanted:
                channel.wanted = False
                channel.answer(False)
                self._mark(link, name)

    def is_live(self, name: str) -> bool:
        channel = self._find(name)
        return channel is not None and channel.live

    async def live(self, name: str, timeout: float) -> bool:
        """Wait until ``name`` is subscribed (True), or ``timeout`` s (False); False if not wanted."""
        answer = self.confirmation(name, timeout)
        return answer if isinstance(answer, bool) else await answer

    def confirmation(self, name: str, timeout: float) -> "bool | asyncio.Future[bool]":
        """``live`` without the wait, for a caller with other work meanwhile: the answer now,
        or a future of it (False once ``timeout`` s have passed)."""
        channel = self._find(name)
        if channel is None or not channel.wanted:
            return False
        if channel.live:
            return True
        # One loop timer answers False when the confirmation is late: wait_for(shield(...))
        # made a task, a second future and callbacks on every connect of a storm.
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        channel.waiters.append((waiter, loop.call_later(timeout, _give_up, channel, waiter)))
        return waiter

    def _counter(self, kind: str) -> Callable[[], float]:
        return lambda: float(self.counts()[kind])

    def counts(self) -> dict[str, int]:
        """Live subscriptions by kind (chat, user, control)."""
        out = {"chat": 0, "user": 0, "control": 0}
        for link in self.links.values():
            for channel in link.channels.values():
                if channel.live:
                    out[channel_kind(channel.name)] += 1
        return out

    # -- internals ----------------------------------------------------------------

    def _find(self, name: str) -> _Channel | None:
        for link in self.links.values():
            channel = link.channels.get(name)
            if channel is not None:
                return channel
        return None

    def _link_for(self, name: str) -> _Link:
        key, connect = "redis", self._connect
        if self.cluster is not None:
            key, connect = self._node_connect(self.cluster, name)
        if connect is None:
            raise RuntimeError("ChannelSubscriptions needs connect or cluster")
        link = self.links.get(key)
        if link is None:
            link = self.links[key] = _Link(self, key, connect)
            if self._started:
                link.start()
        return link

    @staticmethod
    def _node_connect(cluster: RedisCluster, name: str) -> tuple[str, Callable[[], Redis]]:
        """(node name, client factory) of the master owning ``name``'s slot."""
        try:
            node = owner(cluster, name)
        except Exception:  # topology unknown yet: the first master we were told about
            startup = cluster.nodes_manager.startup_nodes
            node = startup[next(iter(startup))]
        options = node_options(cluster)
        host, port = node.host, int(node.port)

        def connect() -> Redis:
            return Redis(host=host, port=port, retry=Retry(NoBackoff(), 0), **options)
        return node.name, connect

    def _mark(self, link: _Link, name: str) -> None:
        link.dirty.add(name)
        if link.task is None and self._started:
            link.start()
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_all)

    def _flush_all(self) -> None:
        self._flush_scheduled = False
        for link in self.links.values():
            if link.dirty and link.connected:
                task = asyncio.ensure_future(link.flush())
                task.add_done_callback(_log_failure)

    def _groups(self, channels: list[_Channel]) -> list[list[_Channel]]:
        """One group per command: up to COMMAND_MAX channels at once, or per hash slot on a cluster."""
        if not channels:
            return []
        if self.cluster is None:
            return [channels[i:i + COMMAND_MAX] for i in range(0, len(channels), COMMAND_MAX)]
        by_slot: dict[int, list[_Channel]] = {}
        for channel in channels:
            by_slot.setdefault(self.cluster.keyslot(channel.name), []).append(channel)
        return list(by_slot.values())

    async def _lost(self, link: _Link) -> None:
        """A connection failed or a slot moved: on a cluster, learn the topology again, re-home
        the channels whose slot has a new owner and subscribe again what this link lost."""
        if self.cluster is None:
            return
        try:
            await self.cluster.nodes_manager.initialize()
        except Exception:
            return
        for name, channel in list(link.channels.items()):
            owner = self._link_for(name)
            if owner is link:
                continue
            del link.channels[name]
            if channel.wanted:
                moved = owner.channels.setdefault(name, _Channel(name, owner))
                moved.wanted = True
                moved.waiters.extend(channel.waiters)
                self._mark(owner, name)
        for name, channel in link.channels.items():
            if channel.wanted and not channel.requested:
                self._mark(link, name)


def _give_up(channel: _Channel, waiter: asyncio.Future) -> None:
    """``confirmation``'s timeout: the waiter answers False and leaves the channel's list."""
    if not waiter.done():
        waiter.set_result(False)
    channel.waiters = [entry for entry in channel.waiters if entry[0] is not waiter]


def _log_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("pub/sub subscribe failed (retried on reconnect): %r", task.exception())

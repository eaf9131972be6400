"""The outbox of the Redis managers: events for other nodes, published by one task in batches.

An emit never waits for Redis: it queues (channel, encoded event) and returns. The task
sends what is waiting as one pipeline with one PUBLISH (SPUBLISH on a cluster) per channel,
that channel's events in one ``batch`` message, in order. While Redis fails, batches are
dropped and counted, logged once on loss and once on recovery; a full outbox drops its
oldest event.
"""

from __future__ import annotations

import asyncio
import collections
import logging

from tornado_gateway.cluster.redis_link import RedisLink

log = logging.getLogger("tornado_gateway.realtime")
OUTBOX_MAX = 20_000
PUBLISH_BATCH = 256


class Outbox:
    """Queued cross-node events of one manager, and the task that publishes them."""

    def __init__(self, redis_link: RedisLink, own_prefix: bytes, sharded: bool = False) -> None:
        self.redis_link = redis_link
        self.own_prefix = own_prefix.decode()  # messages of this node start with it (host_id)
        self.sharded = sharded
        self.dropped = 0
        self._items: collections.deque[tuple[str, str]] = collections.deque()
        self._ready = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def put(self, channel: str, encoded: str) -> None:
        if len(self._items) >= OUTBOX_MAX:
            self._items.popleft()
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("socket.io outbox full (redis slow or down): dropped %d cross-node events",
                            self.dropped)
        self._items.append((channel, encoded))
        self._ready.set()

    def batch_message(self, items: list[str]) -> str:
        """One pub/sub message for the events of one channel in one batch."""
        if len(items) == 1:
            return items[0]
        return self.own_prefix + '"method":"batch","messages":[' + ",".join(items) + "]}"

    async def _run(self) -> None:
        failing = False
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._items:
                batch = [self._items.popleft() for _ in range(min(PUBLISH_BATCH, len(self._items)))]
                by_channel: dict[str, list[str]] = {}
                for channel, encoded in batch:
                    by_channel.setdefault(channel, []).append(encoded)
                try:
                    await self._publish(by_channel)
                    if failing:
                        log.info("socket.io cross-node publishing resumed")
                        failing = False
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.dropped += len(batch)
                    if not failing:
                        log.error("socket.io cross-node publish failed, events for other nodes "
                                  "are dropped until redis is back: %s", exc)
                        failing = True
                    self.redis_link.note_failure(exc)
                    await asyncio.sleep(0.2)

    async def _publish(self, by_channel: dict[str, list[str]]) -> None:
        await self.publish({channel: self.batch_message(items) for channel, items in by_channel.items()})

    async def publish(self, messages: dict[str, str]) -> None:
        """Publish each channel's message now (not queued); raises when Redis fails."""
        if not self.sharded:
            if len(messages) == 1:  # the common case: no pipeline needed
                ((channel, message),) = messages.items()
                await self.redis_link.execute("PUBLISH", channel, message)
            else:  # one write on the pipelined connection (else one pipeline)
                await self.redis_link.execute_many([("PUBLISH", channel, message)
                                                    for channel, message in messages.items()])
            return
        pipe = self.redis_link.client.pipeline(transaction=False)  # routed by slot
        for channel, message in messages.items():
            pipe.spublish(channel, message)
        await pipe.execute()

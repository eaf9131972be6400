"""THE Redis pub/sub reconnect loop: every subscriber of the gateway runs on it."""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Awaitable, Callable

import redis.asyncio as aioredis

from tornado_gateway.cluster.pubsub_wire import Item, PubSubWire


class Subscription:
    """Keeps one channel subscribed: subscribe, hand each message on; on any failure close,
    wait (0.1 s doubling to 2 s) and subscribe again, for ever. What a subscriber does on
    (re)subscription, per message and on loss are its callbacks; ``subscribed`` says whether
    it listens right now.

    With ``channel=None`` the subscriber manages its channels itself: the loop connects,
    exposes the connection as ``pubsub`` for ``on_subscribed`` (which subscribes what it
    wants), and hands every item, subscription confirmations included, to ``on_item``
    (synchronously, as it arrives).

    A plain client gets cluster.pubsub_wire (items pushed as they arrive); any other
    (TLS, Sentinel) redis-py's PubSub, read with a timeout (never spins, never hangs)."""

    MIN_DELAY, MAX_DELAY = 0.1, 2.0
    READ_TIMEOUT = 1.0
    # Messages waiting for ``on_message`` past this many bytes: the wire stops reading (and
    # Redis's output-buffer limit for pub/sub clients applies again) until half are handled.
    QUEUE_HIGH = 1 << 20

    def __init__(self, channel: str | None, client: Callable[[], aioredis.Redis],
                 on_message: Callable[[Any], Awaitable[None]] | None = None, *,
                 on_subscribed: Callable[[], Awaitable[None]] | None = None,
                 on_lost: Callable[[BaseException], None] | None = None,
                 on_item: Callable[[dict], None] | None = None,
                 own_client: bool = False) -> None:
        self.channel = channel
        self.on_item = on_item
        self.pubsub: Any = None  # the live pub/sub connection, while subscribed
        self.client = client  # the client to subscribe with, asked again on every attempt
        self.own_client = own_client  # close it after each attempt (a dedicated connection)
        self.on_message = on_message
        self.on_subscribed = on_subscribed
        self.on_lost = on_lost
        self.subscribed = False
        self._queue: collections.deque[Any] = collections.deque()  # messages for on_message
        self._wake: asyncio.Future | None = None  # the wire's reader waits on it
        self._ended: Exception | None = None  # why the current wire closed
        self._wire: PubSubWire | None = None
        self._queued = 0  # bytes in _queue
        self._paused = False

    async def run(self) -> None:
        delay = self.MIN_DELAY
        while True:
            client: aioredis.Redis | None = None
            pubsub: Any = None
            try:
                client = self.client()
                if PubSubWire.fits(client):
                    self._queue.clear()
                    self._ended, self._queued, self._paused = None, 0, False
                    pubsub = self._wire = await PubSubWire.open(client, self._arrived, self._closed)
                else:
                    pubsub = client.pubsub(ignore_subscribe_messages=self.channel is not None)
                if self.channel is not None:
                    await pubsub.subscribe(self.channel)
                elif not isinstance(pubsub, PubSubWire):
                    await pubsub.connect()
                self.pubsub = pubsub
                self.subscribed = True
                delay = self.MIN_DELAY
                if self.on_subscribed is not None:
                    await self.on_subscribed()
                if isinstance(pubsub, PubSubWire):
                    await self._serve()
                else:
                    await self._poll(pubsub)
            except asyncio.CancelledError:
                self.subscribed = False
                self.pubsub = None
                raise
            except Exception as exc:
                self.subscribed = False
                self.pubsub = None
                if self.on_lost is not None:
                    self.on_lost(exc)
            finally:
                for closable in (pubsub, client if self.own_client else None):
                    if closable is not None:
                        try:
                            await closable.aclose()
                        except Exception:
                            pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.MAX_DELAY)

    # -- the wire: items pushed as they arrive ---------------------------------------

    def _arrived(self, item: Item) -> None:
        if self.on_item is not None:
            self.on_item(item)
            return
        if item["type"] != "message" or self.on_message is None:
            return
        data = item["data"]
        self._queue.append(data)
        self._queued += len(data)
        if self._queued > self.QUEUE_HIGH and not self._paused and self._wire is not None:
            self._paused = True
            self._wire.pause_reading()
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _closed(self, exc: Exception) -> None:
        self._ended = exc
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _serve(self) -> None:
        """Hand queued messages to ``on_message`` in order until the wire closes (raised)."""
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            while queue:
                data = queue.popleft()
                self._queued -= len(data)
                if self._paused and self._queued <= self.QUEUE_HIGH // 2 and self._wire is not None:
                    self._paused = False
                    self._wire.resume_reading()
                await self.on_message(data)  # type: ignore[misc]
            if self._ended is not None:
                raise self._ended
            self._wake = loop.create_future()
            try:
                await self._wake
            finally:
                self._wake = None

    # -- redis-py's PubSub: read with a timeout ----------------------------------------

    async def _poll(self, pubsub: Any) -> None:
        ignore = self.channel is not None
        while True:
            item = await pubsub.get_message(ignore_subscribe_messages=ignore, timeout=self.READ_TIMEOUT)
            if item is None:
                continue
            if self.on_item is not None:
                self.on_item(item)
            elif item.get("type") == "message" and self.on_message is not None:
                await self.on_message(item["data"])

"""Socket.IO client managers: local delivery (one node) and Redis pub/sub between nodes.

Each emit is encoded once and queued on every local recipient (wire.FastDelivery);
with Redis, other nodes get it through an outbox drained by one task as batched
PUBLISHes, and a listener loop that re-subscribes by itself (docs/architecture.md).
"""

from __future__ import annotations

import logging
from typing import Any

from socketio.async_manager import AsyncManager

from tornado_gateway import metrics
from tornado_gateway.cluster.redis_link import RedisLink, connect
from tornado_gateway.cluster.subscription import Subscription
from tornado_gateway.codec import JSONRefused, loads
from tornado_gateway.realtime import wire
from tornado_gateway.realtime.outbox import Outbox
from tornado_gateway.realtime.wire import _dumps

log = logging.getLogger("tornado_gateway.realtime")


class LocalManager(wire.RoomIndex, wire.FastDelivery, AsyncManager):
    """Single node (memory mode): every emit is local."""

    async def emit(self, event: str, data: Any, namespace: str = "/", room: Any = None,
                   skip_sid: Any = None, callback: Any = None, to: Any = None, **kwargs: Any) -> Any:
        room = to or room
        if callback is not None or namespace != "/":
            return await super().emit(event, data, namespace, room=room, skip_sid=skip_sid,
                                      callback=callback)
        self.emit_now(event, data, room, skip_sid)

    def emit_now(self, event: str, data: Any, room: Any, skip_sid: Any = None) -> None:
        """A room emit of namespace ``/`` without awaiting anything."""
        self.deliver_local(event, data, room, skip_sid)

    def emit_each_now(self, event: str, items: list[tuple[Any, Any]]) -> None:
        """``event`` once per ``(room, data)`` of ``items``, in order (a batch of receipts)."""
        self.deliver_each(event, items)


class RedisEmit(wire.RedisManagerBase):
    """The emit of both Redis managers: a room emit of namespace ``/`` without a callback
    goes through ``emit_now`` (no await); anything else through python-socketio's pub/sub."""

    async def emit(self, event: str, data: Any, namespace: str = "/", room: Any = None,
                   skip_sid: Any = None, callback: Any = None, to: Any = None,
                   ignore_queue: bool = False, **kwargs: Any) -> Any:
        room = to or room
        if callback is not None or namespace != "/":
            return await super().emit(event, data, namespace=namespace, room=room,
                                      skip_sid=skip_sid, callback=callback, ignore_queue=ignore_queue)
        if ignore_queue:
            self.deliver_local(event, data, room, skip_sid)
        else:
            self.emit_now(event, data, room, skip_sid)

    def emit_now(self, event: str, data: Any, room: Any, skip_sid: Any = None) -> None:
        """A room emit of namespace ``/``: local sockets now, other nodes through the outbox."""
        self.deliver_local(event, data, room, skip_sid)
        self.publish_emit(event, data, room, skip_sid)

    def emit_each_now(self, event: str, items: list[tuple[Any, Any]]) -> None:
        """``event`` once per ``(room, data)`` of ``items``, in order (a batch of receipts)."""
        self.deliver_each(event, items)
        for room, data in items:
            self.publish_emit(event, data, room)

    def publish_emit(self, event: str, data: Any, room: Any, skip_sid: Any = None) -> None:
        """The other nodes' half of an emit (queued in the outbox)."""
        raise NotImplementedError


class RedisFanoutManager(RedisEmit):
    """Several nodes: local delivery at once, other nodes through Redis pub/sub."""

    def __init__(self, url: str, redis_link: RedisLink, channel: str = "gateway:socketio") -> None:
        super().__init__(url, channel=channel, redis_options={})
        self.redis_link = redis_link  # the node's shared client publishes
        self.subscribed = False
        self._listener_lost = False
        # Messages this node published start with this (host_id first): skipped undecoded.
        self.own_prefix = ('{"host_id":' + _dumps(self.host_id) + ",").encode()
        self.outbox = Outbox(redis_link, self.own_prefix)

    def initialize(self) -> None:
        super().initialize()  # starts the listener (listen)
        self.outbox.start()

    def publish_emit(self, event: str, data: Any, room: Any, skip_sid: Any = None) -> None:
        if isinstance(room, str) and self.is_sid_room("/", room):
            return  # a local socket's own room: nothing for other nodes
        self._publish_later({"host_id": self.host_id, "method": "emit", "event": event, "data": data,
                             "room": room, "skip_sid": skip_sid, "namespace": "/"})

    async def publish_control(self, data: dict) -> None:
        """python-socketio's own publishes (disconnect, rooms of remote sids) use the outbox too."""
        self._publish_later(data)

    def _publish_later(self, message: dict) -> None:
        self.outbox.put(self.channel, _dumps(message))

    async def listen(self) -> None:
        """Listen for other nodes' events; never dies, logs loss and recovery once."""
        await Subscription(self.channel, lambda: connect(self.redis_url), self._on_pubsub,
                           on_subscribed=self._resubscribed, on_lost=self._lost,
                           own_client=True).run()

    async def _resubscribed(self) -> None:
        self.subscribed = True
        if self._listener_lost:
            log.info("socket.io cross-node listener re-subscribed")
            self._listener_lost = False

    def _lost(self, exc: BaseException) -> None:
        self.subscribed = False
        if not self._listener_lost:
            log.error("socket.io cross-node listener lost redis, retrying: %s", exc)
            self._listener_lost = True

    async def _on_pubsub(self, raw: Any) -> None:
        metrics.child(metrics.CLUSTER_MESSAGES_IN, "broadcast").inc()
        if isinstance(raw, bytes) and raw.startswith(self.own_prefix):
            return  # this node's own message
        try:
            message = loads(raw, max_depth=None)  # other nodes' own encodes
        except JSONRefused:
            log.warning("socket.io channel: undecodable message dropped")
            return
        if not isinstance(message, dict) or message.get("host_id") == self.host_id:
            return
        if message.get("method") == "batch" and isinstance(message.get("messages"), list):
            for item in message["messages"]:
                if isinstance(item, dict):
                    await self._handle_channel_message(item)
            return
        await self._handle_channel_message(message)

    async def _handle_channel_message(self, message: dict) -> None:
        method = message.get("method")
        try:
            if method == "emit":
                self.deliver_local(message["event"], message.get("data"), message.get("room"),
                                   message.get("skip_sid"))
            elif method in wire.CONTROL_METHODS:
                await self.handle_control(method, message)
        except Exception:
            log.exception("socket.io channel: handling a %s message failed", method)

    async def close(self) -> None:
        self.outbox.stop()
        task = self.listener_task()
        if task is not None:
            task.cancel()

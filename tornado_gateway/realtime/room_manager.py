"""The room-scoped Redis manager (SOCKET_FANOUT=rooms): a node hears only its sockets' rooms.

Owns the room <-> channel subscriptions (via cluster.channels), the outbox published
per room channel (SPUBLISH on a cluster) and the once-only delivery of multi-room
messages. Design: docs/scale-out.md.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from tornado_gateway.cluster.channels import ChannelSubscriptions, room_channel
from tornado_gateway.cluster.redis_link import RedisLink
from tornado_gateway.codec import JSONRefused, loads
from tornado_gateway.realtime import wire
from tornado_gateway.realtime.managers import RedisEmit
from tornado_gateway.realtime.outbox import Outbox
from tornado_gateway.realtime.wire import _dumps

log = logging.getLogger("tornado_gateway.realtime")
CONTROL_CHANNEL = "gateway:socketio"
SEEN_MAX = 4096  # ids of multi-room messages remembered, to deliver each once


class RoomFanoutManager(wire.RoomHooks, RedisEmit):
    """Several nodes, each subscribed to the rooms of its own sockets."""

    def __init__(self, redis_link: RedisLink, connect_subscriber: Callable[[], Redis] | None = None,
                 control: str = CONTROL_CHANNEL) -> None:
        super().__init__(redis_link.url, channel=control, redis_options={})
        self.redis_link = redis_link
        cluster = redis_link.cluster
        self.sharded = cluster is not None
        self.subscriptions = ChannelSubscriptions(self._on_pubsub, connect=connect_subscriber,
                                                  cluster=cluster, always=[control])
        self.own_prefix = ('{"host_id":' + _dumps(self.host_id) + ",").encode()
        self.outbox = Outbox(redis_link, self.own_prefix, sharded=self.sharded)
        self._ids = itertools.count(1)
        self._seen: collections.OrderedDict = collections.OrderedDict()

    def initialize(self) -> None:
        super().initialize()  # starts the listener task (listen)
        self.outbox.start()

    async def listen(self) -> None:
        """Open the subscriber connections (each on THE reconnect loop); they run until close."""
        await self.subscriptions.start()
        await asyncio.get_running_loop().create_future()

    async def close(self) -> None:
        self.outbox.stop()
        task = self.listener_task()
        if task is not None:
            task.cancel()
        await self.subscriptions.close()

    # -- rooms: subscribe on the first local socket, unsubscribe after the last ------

    def room_appeared(self, room: Any) -> None:
        channel = room_channel(room)
        if channel is not None:
            self.subscriptions.want(channel)

    def room_gone(self, room: Any) -> None:
        channel = room_channel(room)
        if channel is not None:
            self.subscriptions.drop(channel)

    def room_confirmation(self, room: str, timeout: float) -> "bool | asyncio.Future[bool]":
        """Whether this node hears ``room``'s channel (True for a room without one), or a future
        that answers once it does (False after ``timeout`` s)."""
        channel = room_channel(room)
        if channel is None:
            return True
        return self.subscriptions.confirmation(channel, timeout)

    # -- emitting ---------------------------------------------------------------------

    def publish_emit(self, event: str, data: Any, room: Any, skip_sid: Any = None) -> None:
        """Other nodes hear an emit through the channels of its target rooms."""
        if isinstance(room, str) and self.is_sid_room("/", room):
            return  # a local socket's own room: nothing for other nodes
        rooms = [room] if isinstance(room, str) or room is None else list(room)
        channels = [room_channel(r) for r in rooms]
        message: dict[str, Any] = {"host_id": self.host_id, "method": "emit", "event": event,
                                   "data": data, "room": room, "skip_sid": skip_sid, "namespace": "/"}
        if room is None or None in channels:  # not room-scoped: every node hears it
            self._queue(self.channel, _dumps(message))
            return
        targets = [c for c in dict.fromkeys(channels) if c is not None]
        if len(targets) > 1:
            message["id"] = next(self._ids)  # heard on several channels, delivered once
        encoded = _dumps(message)
        for channel in targets:
            self._queue(channel, encoded)

    async def emit_confirmed(self, event: str, data: Any, room: Any) -> None:
        """An emit published before anything is delivered: raises (nothing sent) when Redis fails.

        For the HTTP ingress, which must answer 503 rather than deliver to some nodes only.
        """
        rooms = [room] if isinstance(room, str) else list(room)
        channels = [room_channel(r) for r in rooms]
        message: dict[str, Any] = {"host_id": self.host_id, "method": "emit", "event": event,
                                   "data": data, "room": room, "skip_sid": None, "namespace": "/"}
        targets = [self.channel] if None in channels else [c for c in dict.fromkeys(channels) if c]
        if len(targets) > 1:
            message["id"] = next(self._ids)
        encoded = _dumps(message)
        await self.outbox.publish(dict.fromkeys(targets, encoded))
        self.deliver_local(event, data, room)

    async def publish_control(self, data: dict) -> None:
        """python-socketio's own messages (remote disconnects, callbacks) go on the control channel."""
        self._queue(self.channel, _dumps(data))

    def _queue(self, channel: str, encoded: str) -> None:
        self.outbox.put(channel, encoded)

    # -- receiving --------------------------------------------------------------------

    def _on_pubsub(self, channel: str, raw: Any) -> None:
        if isinstance(raw, bytes) and raw.startswith(self.own_prefix):
            return  # this node's own message
        try:
            message = loads(raw, max_depth=None)  # other nodes' own encodes
        except JSONRefused:
            log.warning("socket.io channel %s: undecodable message dropped", channel)
            return
        if not isinstance(message, dict) or message.get("host_id") == self.host_id:
            return
        if message.get("method") == "batch" and isinstance(message.get("messages"), list):
            for item in message["messages"]:
                if isinstance(item, dict):
                    self._handle(item)
            return
        self._handle(message)

    def _handle(self, message: dict) -> None:
        method = message.get("method")
        try:
            if method == "emit":
                if "id" in message and not self._first_time(message):
                    return
                self.deliver_local(message["event"], message.get("data"), message.get("room"),
                                   message.get("skip_sid"))
            elif method in wire.CONTROL_METHODS:
                task = asyncio.ensure_future(self.handle_control(method, message))
                task.add_done_callback(_log_failure)
        except Exception:
            log.exception("socket.io channel: handling a %s message failed", method)

    def _first_time(self, message: dict) -> bool:
        key = (message.get("host_id"), message["id"])
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)
        return True


def _log_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("socket.io control message failed: %r", task.exception())

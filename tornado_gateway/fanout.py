"""Socket.IO client managers: fast local delivery, and Redis pub/sub between nodes.

Both managers replace python-socketio's room emit:

* the event is JSON-encoded ONCE per emit and the same Engine.IO packet is
  queued on every local recipient (no task per recipient, no per-recipient
  encoding); ``message:new`` is the exception, each recipient gets its own
  ack id (the body is still encoded once) so the node learns when a device
  received it (``on_delivery_ack``);
* with Redis, local recipients get the event at once, and the event is
  published for the OTHER nodes through an outbox drained by one task with
  pipelined ``PUBLISH`` (emit never waits for Redis; order is kept). Each node
  skips its own messages (``host_id``).

The Redis listener is this module's own loop (``get_message`` with a timeout
on a client with ``socket_timeout`` set): it logs a lost subscription once,
re-subscribes with a short capped backoff, and logs the recovery, so
cross-node delivery resumes by itself after a Redis restart while local
delivery never depends on Redis.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging

from engineio import packet as eio_packet
from socketio.async_manager import AsyncManager
from socketio.async_redis_manager import AsyncRedisManager
from tornado.websocket import WebSocketClosedError

from tornado_gateway import metrics
from tornado_gateway.redis_link import connect

log = logging.getLogger("tornado_gateway.realtime")
ACKED_EVENT = "message:new"  # recipients' acks of this event make delivered receipts
ACK_WINDOW = 256  # unanswered acks kept per socket; older ones are forgotten
OUTBOX_MAX = 20_000
PUBLISH_BATCH = 256
_dumps = functools.partial(json.dumps, separators=(",", ":"), ensure_ascii=False)


class FastDelivery:
    """The local half of an emit, shared by both managers (mixed in first)."""

    on_delivery_ack = None  # set by Realtime: fn(sid, data) when a socket acks ACKED_EVENT

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.websockets: dict = {}  # eio sid -> Tornado WebSocketHandler, written directly

    def write_directly(self, eio_sid: str, socket, handler) -> None:
        """Write this websocket's messages at once instead of through Engine.IO's queue.

        A socket that connected with the websocket transport has no reason for
        engineio's per-socket writer task (one task wake-up and ``wait_for``
        per packet): its MESSAGE packets are written synchronously, in call
        order. PING/CLOSE still use the queue, which keeps engineio's writer
        and close logic as they are. Sockets upgraded from polling keep the
        queue for everything.
        """
        queue_send = socket.send

        async def send(pkt):
            if pkt.packet_type != eio_packet.MESSAGE:
                return await queue_send(pkt)
            if socket.closed or socket.closing:
                return
            _write(handler, pkt.encode())

        socket.send = send
        self.websockets[eio_sid] = handler

    def forget_websocket(self, eio_sid: str) -> None:
        self.websockets.pop(eio_sid, None)

    def deliver_local(self, event: str, data, room, skip_sid=None) -> int:
        """Queue ``event`` for this node's sockets in ``room`` (a room or list of rooms)."""
        participants = list(self.get_participants("/", room))
        if not participants:
            return 0
        body = _dumps([event, data])
        skip = skip_sid if isinstance(skip_sid, (list, tuple, set)) else (skip_sid,)
        sockets = self.server.eio.sockets
        shared = eio_packet.Packet(eio_packet.MESSAGE, "2" + body)
        track = event == ACKED_EVENT and self.on_delivery_ack is not None
        websockets = self.websockets
        sent = 0
        for sid, eio_sid in participants:
            if sid in skip:
                continue
            socket = sockets.get(eio_sid)
            if socket is None or socket.closed or socket.closing:
                continue
            if track:
                ack_id = self._ack_id(sid, functools.partial(self.on_delivery_ack, sid, data))
                pkt = eio_packet.Packet(eio_packet.MESSAGE, f"2{ack_id}{body}")
            else:
                pkt = shared
            handler = websockets.get(eio_sid)
            if handler is not None:
                _write(handler, pkt.encode())
            else:
                socket.queue.put_nowait(pkt)
            sent += 1
        if sent:
            metrics.EVENTS_OUT.labels(event).inc(sent)
        return sent

    def _ack_id(self, sid: str, callback) -> int:
        ack_id = self._generate_ack_id(sid, callback)
        pending = self.callbacks[sid]
        if len(pending) > ACK_WINDOW + 1:  # key 0 holds the counter; ids ascend
            keys = iter(pending)
            next(keys)
            del pending[next(keys)]
        return ack_id

    async def trigger_callback(self, sid, id, data):
        callback = self.callbacks.get(sid, {}).pop(id, None) if id else None
        if callback is None:
            return  # unknown or forgotten ack: nothing to do
        result = callback(*data)
        if asyncio.iscoroutine(result):
            await result


def _write(handler, text) -> None:
    try:
        handler.write_message(text, binary=isinstance(text, bytes))
    except WebSocketClosedError:
        pass  # closing: engineio notices and cleans up


class LocalManager(FastDelivery, AsyncManager):
    """Single node (memory mode): every emit is local."""

    async def emit(self, event, data, namespace="/", room=None, skip_sid=None, callback=None,
                   to=None, **kwargs):
        room = to or room
        if callback is not None or namespace != "/":
            return await super().emit(event, data, namespace, room=room, skip_sid=skip_sid,
                                      callback=callback)
        self.deliver_local(event, data, room, skip_sid)


class RedisFanoutManager(FastDelivery, AsyncRedisManager):
    """Several nodes: local delivery at once, other nodes through Redis pub/sub."""

    def __init__(self, url: str, redis_link, channel: str = "gateway:socketio"):
        super().__init__(url, channel=channel, redis_options={})
        self.redis_link = redis_link  # the node's shared client publishes
        self.outbox: collections.deque = collections.deque()
        self._outbox_ready = asyncio.Event()
        self._publisher: asyncio.Task | None = None
        self.subscribed = False
        self.dropped = 0

    def initialize(self):
        super().initialize()  # starts _thread (the listener)
        self._publisher = asyncio.ensure_future(self._publish_loop())

    async def emit(self, event, data, namespace="/", room=None, skip_sid=None, callback=None,
                   to=None, ignore_queue=False, **kwargs):
        room = to or room
        if callback is not None or namespace != "/":
            return await super().emit(event, data, namespace=namespace, room=room,
                                      skip_sid=skip_sid, callback=callback, ignore_queue=ignore_queue)
        self.deliver_local(event, data, room, skip_sid)
        if ignore_queue or (isinstance(room, str) and self.is_sid_room("/", room)):
            return  # a local socket's own room: nothing for other nodes
        self._publish_later({"host_id": self.host_id, "method": "emit", "event": event, "data": data,
                             "room": room, "skip_sid": skip_sid, "namespace": "/"})

    async def _publish(self, data):
        """python-socketio's own publishes (disconnect, rooms of remote sids) use the outbox too."""
        self._publish_later(data)

    def _publish_later(self, message: dict) -> None:
        if len(self.outbox) >= OUTBOX_MAX:
            self.outbox.popleft()
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("socket.io outbox full (redis slow or down): dropped %d cross-node events",
                            self.dropped)
        self.outbox.append(_dumps(message))
        self._outbox_ready.set()

    async def _publish_loop(self) -> None:
        failing = False
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self.outbox:
                batch = [self.outbox.popleft() for _ in range(min(PUBLISH_BATCH, len(self.outbox)))]
                try:
                    pipe = self.redis_link.client.pipeline(transaction=False)
                    for item in batch:
                        pipe.publish(self.channel, item)
                    await pipe.execute()
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

    async def _thread(self):
        """Listen for other nodes' events; never dies, logs loss and recovery once."""
        backoff = 0.1
        lost = False
        while True:
            client = pubsub = None
            try:
                client = connect(self.redis_url)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self.channel)
                self.subscribed = True
                if lost:
                    log.info("socket.io cross-node listener re-subscribed")
                    lost = False
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        await self._on_pubsub(message["data"])
            except asyncio.CancelledError:
                self.subscribed = False
                raise
            except Exception as exc:
                self.subscribed = False
                if not lost:
                    log.error("socket.io cross-node listener lost redis, retrying: %s", exc)
                    lost = True
            finally:
                for closable in (pubsub, client):
                    if closable is not None:
                        try:
                            await closable.aclose()
                        except Exception:
                            pass
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _on_pubsub(self, raw) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            log.warning("socket.io channel: undecodable message dropped")
            return
        if not isinstance(message, dict) or message.get("host_id") == self.host_id:
            return
        method = message.get("method")
        try:
            if method == "emit":
                self.deliver_local(message["event"], message.get("data"), message.get("room"),
                                   message.get("skip_sid"))
            elif method == "disconnect":
                await self._handle_disconnect(message)
            elif method == "enter_room":
                await self._handle_enter_room(message)
            elif method == "leave_room":
                await self._handle_leave_room(message)
            elif method == "close_room":
                await self._handle_close_room(message)
        except Exception:
            log.exception("socket.io channel: handling a %s message failed", method)

    async def close(self) -> None:
        for task in (self._publisher, getattr(self, "thread", None)):
            if task is not None:
                task.cancel()

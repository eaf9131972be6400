"""Socket.IO client managers: fast local delivery, and Redis pub/sub between nodes.

Both managers replace python-socketio's room emit:

* the event is JSON-encoded ONCE per emit and the same Engine.IO packet is
  queued on every local recipient (no task per recipient, no per-recipient
  encoding); ``message:new`` is the exception, each recipient gets its own
  ack id (the body is still encoded once) so the node learns when a device
  received it (``on_delivery_ack``);
* with Redis, local recipients get the event at once, and the event is
  published for the OTHER nodes through an outbox drained by one task: the
  events waiting in the outbox go out as ONE ``PUBLISH`` (a ``batch``
  message), so a burst of receipts costs one Redis command and one pub/sub
  message per node, not one each (emit never waits for Redis; order is kept).
  Each node skips its own messages by their ``host_id`` prefix, undecoded.
* websocket frames of one loop iteration are written to each socket with
  one ``IOStream.write``, one iteration later, after what that iteration
  started (the next upstream request of a sending socket) has gone out.

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
from tornado.iostream import StreamClosedError

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
        self._unflushed: dict = {}  # handler -> websocket frames written at the end of this tick

    def write_directly(self, eio_sid: str, socket, handler) -> bool:
        """Write this websocket's messages ourselves instead of through Engine.IO's queue.

        A socket that connected with the websocket transport has no reason for
        engineio's per-socket writer task (one task wake-up and ``wait_for``
        per packet) nor for Tornado's ``write_message`` (one task per
        message): its MESSAGE packets are framed here and the frames of one
        loop iteration are written with one ``IOStream.write`` (one syscall
        for a burst of events to one socket), in call order. PING/CLOSE still
        use the queue, after this socket's frames are flushed, which keeps
        engineio's writer and close logic as they are. Sockets upgraded from
        polling keep the queue for everything. False when not possible.
        """
        connection = getattr(handler, "ws_connection", None)
        if getattr(connection, "stream", None) is None or getattr(connection, "_compressor", None):
            return False
        queue_send = socket.send

        async def send(pkt):
            if pkt.packet_type != eio_packet.MESSAGE:
                self._flush_one(handler)
                return await queue_send(pkt)
            if socket.closed or socket.closing:
                return
            encoded = pkt.encode()
            if isinstance(encoded, str):
                self.send_text(handler, encoded.encode())
            else:
                self.send_text(handler, encoded, opcode=0x2)

        socket.send = send
        self.websockets[eio_sid] = handler
        return True

    def forget_websocket(self, eio_sid: str) -> None:
        handler = self.websockets.pop(eio_sid, None)
        if handler is not None:
            self._flush_one(handler)

    def send_text(self, handler, payload: bytes, opcode: int = 0x1) -> None:
        """Queue one text (or binary) frame for ``handler``; written at the end of this loop iteration."""
        frames = self._unflushed.get(handler)
        if frames is None:
            if not self._unflushed:
                # One iteration later: what this iteration started (the upstream request of
                # the socket's next message:send) is written before the fan-out's frames.
                loop = asyncio.get_running_loop()
                loop.call_soon(loop.call_soon, self.flush)
            self._unflushed[handler] = [_frame(payload, opcode)]
        else:
            frames.append(_frame(payload, opcode))

    def flush(self) -> None:
        unflushed, self._unflushed = self._unflushed, {}
        for handler, frames in unflushed.items():
            _write_frames(handler, frames)

    def _flush_one(self, handler) -> None:
        frames = self._unflushed.pop(handler, None)
        if frames:
            _write_frames(handler, frames)

    def deliver_local(self, event: str, data, room, skip_sid=None) -> int:
        """Send ``event`` to this node's sockets in ``room`` (a room or list of rooms)."""
        participants = list(self.get_participants("/", room))
        if not participants:
            return 0
        body = _dumps([event, data])
        body_bytes = body.encode()
        skip = skip_sid if isinstance(skip_sid, (list, tuple, set)) else (skip_sid,)
        sockets = self.server.eio.sockets
        track = event == ACKED_EVENT and self.on_delivery_ack is not None
        shared_payload = b"42" + body_bytes
        shared_pkt = None
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
            handler = websockets.get(eio_sid)
            if handler is not None:
                self.send_text(handler, b"42%d%s" % (ack_id, body_bytes) if track else shared_payload)
            elif track:
                socket.queue.put_nowait(eio_packet.Packet(eio_packet.MESSAGE, f"2{ack_id}{body}"))
            else:
                if shared_pkt is None:
                    shared_pkt = eio_packet.Packet(eio_packet.MESSAGE, "2" + body)
                socket.queue.put_nowait(shared_pkt)
            sent += 1
        if sent:
            metrics.EVENTS_OUT.labels(event).inc(sent)
        return sent

    def receive_fast(self, eio_sid: str, text: str) -> bool:
        """A Socket.IO EVENT or ACK from a directly written websocket, handled at once.

        Engine.IO would pass each incoming message through a queue, a new
        task with a timeout and, for events, another task; here events go
        straight to the server's ``_handle_event`` (the gateway's per-socket
        queue) and acks to their callback. False for anything else (connect,
        disconnect, binary, other namespaces): the caller hands it to
        Engine.IO as usual.
        """
        kind = text[:1]
        if kind != "2" and kind != "3":
            return False
        sid = self.sid_from_eio_sid(eio_sid, "/")
        if sid is None or not self.is_connected(sid, "/"):
            return False
        end = 1
        while end < len(text) and "0" <= text[end] <= "9":
            end += 1
        if end < len(text) and text[end] != "[":
            return False  # a namespace, or something engineio/socketio should judge
        try:
            data = json.loads(text[end:]) if end < len(text) else []
        except ValueError:
            return False
        if not isinstance(data, list):
            return False
        packet_id = int(text[1:end]) if end > 1 else None
        if kind == "2":
            self.server.realtime.receive(sid, eio_sid, data, packet_id)
        else:
            callback = self.callbacks.get(sid, {}).pop(packet_id, None) if packet_id else None
            result = callback(*data) if callback is not None else None
            if asyncio.iscoroutine(result):
                asyncio.ensure_future(result)
        return True

    def send_ack(self, eio_sid: str, ack_id: int, reply) -> bool:
        """Answer a client event's ack on a directly written websocket; False otherwise."""
        handler = self.websockets.get(eio_sid)
        if handler is None:
            return False
        self.send_text(handler, b"43%d%s" % (ack_id, _dumps([reply]).encode()))
        return True

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


def _frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """An unmasked, uncompressed, final websocket frame (RFC 6455 §5.2)."""
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    if size <= 0xFFFF:
        return bytes((0x80 | opcode, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + size.to_bytes(8, "big") + payload


def _write_frames(handler, frames: list) -> None:
    connection = handler.ws_connection
    if connection is None or connection.is_closing():
        return  # closing: engineio notices and cleans up
    try:
        connection.stream.write(frames[0] if len(frames) == 1 else b"".join(frames))
    except StreamClosedError:
        pass


class LocalManager(FastDelivery, AsyncManager):
    """Single node (memory mode): every emit is local."""

    async def emit(self, event, data, namespace="/", room=None, skip_sid=None, callback=None,
                   to=None, **kwargs):
        room = to or room
        if callback is not None or namespace != "/":
            return await super().emit(event, data, namespace, room=room, skip_sid=skip_sid,
                                      callback=callback)
        self.emit_now(event, data, room, skip_sid)

    def emit_now(self, event: str, data, room, skip_sid=None) -> None:
        """A room emit of namespace ``/`` without awaiting anything."""
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
        # Messages this node published start with this (host_id first): skipped undecoded.
        self.own_prefix = ('{"host_id":' + _dumps(self.host_id) + ",").encode()

    def initialize(self):
        super().initialize()  # starts _thread (the listener)
        self._publisher = asyncio.ensure_future(self._publish_loop())

    async def emit(self, event, data, namespace="/", room=None, skip_sid=None, callback=None,
                   to=None, ignore_queue=False, **kwargs):
        room = to or room
        if callback is not None or namespace != "/":
            return await super().emit(event, data, namespace=namespace, room=room,
                                      skip_sid=skip_sid, callback=callback, ignore_queue=ignore_queue)
        if ignore_queue:
            self.deliver_local(event, data, room, skip_sid)
        else:
            self.emit_now(event, data, room, skip_sid)

    def emit_now(self, event: str, data, room, skip_sid=None) -> None:
        """A room emit of namespace ``/``: local sockets now, other nodes through the outbox."""
        self.deliver_local(event, data, room, skip_sid)
        if isinstance(room, str) and self.is_sid_room("/", room):
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
                    await self.redis_link.client.publish(self.channel, self._batch_message(batch))
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

    def _batch_message(self, items: list[str]) -> str:
        """One PUBLISH for the events of one outbox batch (one pub/sub message per node)."""
        if len(items) == 1:
            return items[0]
        return self.own_prefix.decode() + '"method":"batch","messages":[' + ",".join(items) + "]}"

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
        if isinstance(raw, bytes) and raw.startswith(self.own_prefix):
            return  # this node's own message
        try:
            message = json.loads(raw)
        except ValueError:
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

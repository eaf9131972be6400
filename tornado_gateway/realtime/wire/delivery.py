"""The local half of an emit (python-socketio manager internals, mixed in first) and the
RFC 6455 framing of directly written websockets."""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Any, Callable, cast

from engineio import packet as eio_packet
from tornado.iostream import StreamClosedError

from tornado_gateway import metrics, tornado_compat
from tornado_gateway.codec import SocketJSON
from tornado_gateway.codec import dumps as _dumps

ACKED_EVENT = "message:new"  # recipients' acks of this event make delivered receipts
ACK_WINDOW = 256  # unanswered acks kept per socket; older ones are forgotten


class SharedAck:
    """The pending ack of one ``message:new``, shared by all its recipients on this node."""

    __slots__ = ("on_ack", "data")

    def __init__(self, on_ack: Callable[..., None], data: Any) -> None:
        self.on_ack = on_ack  # fn(sid, data, *ack args)
        self.data = data


class FastDelivery:
    """The local half of an emit, shared by both managers (mixed in first)."""

    on_delivery_ack: Callable[..., None] | None = None  # fn(sid, data): a socket acked ACKED_EVENT
    on_event: Callable[[str, str, list, int | None], None]  # fn(sid, eio_sid, data, ack id)

    if TYPE_CHECKING:  # the python-socketio manager this is mixed into
        def __getattr__(self, name: str) -> Any: ...

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.websockets: dict = {}  # eio sid -> Tornado WebSocketHandler, written directly
        self._unflushed: dict = {}  # handler -> websocket frames written at the end of this tick
        self._ack_ids = itertools.count(1)  # node-wide: every socket sees ascending, unique ids

    def write_directly(self, eio_sid: str, socket: Any, handler: Any) -> bool:
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
        if getattr(handler, "lean_socket", None) is socket:  # writes every packet directly already
            self.websockets[eio_sid] = handler
            return True
        queue_send = socket.send

        async def send(pkt: eio_packet.Packet) -> None:
            if pkt.packet_type != eio_packet.MESSAGE:
                self.flush_one(handler)
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
            self.flush_one(handler)

    def send_text(self, handler: Any, payload: bytes, opcode: int = 0x1) -> None:
        """Queue one text (or binary) frame for ``handler``; written at the end of this loop iteration."""
        self.send_frame(handler, _frame(payload, opcode))

    def send_frame(self, handler: Any, frame: bytes) -> None:
        """Queue an already framed websocket message (shared by all recipients of an emit)."""
        frames = self._unflushed.get(handler)
        if frames is None:
            if not self._unflushed:
                # One iteration later: what this iteration started (the upstream request of
                # the socket's next message:send) is written before the fan-out's frames.
                loop = asyncio.get_running_loop()
                loop.call_soon(loop.call_soon, self.flush)
            self._unflushed[handler] = [frame]
        else:
            frames.append(frame)

    def flush(self) -> None:
        unflushed, self._unflushed = self._unflushed, {}
        for handler, frames in unflushed.items():
            _write_frames(handler, frames)

    def flush_one(self, handler: Any) -> None:
        frames = self._unflushed.pop(handler, None)
        if frames:
            _write_frames(handler, frames)

    def deliver_local(self, event: str, data: Any, room: Any, skip_sid: Any = None) -> int:
        """Send ``event`` to this node's sockets in ``room`` (a room or list of rooms)."""
        participants = list(self.get_participants("/", room))
        if not participants:
            return 0
        sent = self._deliver(event, data, participants, skip_sid)
        if sent:
            metrics.child(metrics.EVENTS_OUT, event).inc(sent)
        return sent

    def deliver_each(self, event: str, items: list[tuple[Any, Any]]) -> int:
        """``event`` once per ``(room, data)`` of ``items``, in order; each room's sockets are
        looked up once for the whole batch (a burst of delivered receipts to one sender)."""
        sent = 0
        rooms: dict = {}
        for room, data in items:
            participants = rooms.get(room)
            if participants is None:
                participants = rooms[room] = list(self.get_participants("/", room))
            if participants:
                sent += self._deliver(event, data, participants, None)
        if sent:
            metrics.child(metrics.EVENTS_OUT, event).inc(sent)
        return sent

    def _deliver(self, event: str, data: Any, participants: list, skip_sid: Any) -> int:
        """Encoded and framed once: the same websocket frame goes to every direct websocket,
        the same Engine.IO packet to every other socket. ``message:new`` carries ONE ack id,
        drawn from the node-wide counter, for all its recipients (an ack id need only be
        unique per socket); each recipient's pending acks get that id mapped to one shared
        :class:`SharedAck`, the newest ``ACK_WINDOW`` of them kept.
        """
        on_ack = self.on_delivery_ack
        track = event == ACKED_EVENT and on_ack is not None
        body = _dumps([event, data])
        shared = None
        if track:
            ack_id = next(self._ack_ids)
            text = f"2{ack_id}{body}"
            shared = SharedAck(cast(Callable[..., None], on_ack), data)
            callbacks = self.callbacks
        else:
            text = "2" + body
        frame = _frame(b"4" + text.encode())
        packet = None
        skip = skip_sid if isinstance(skip_sid, (list, tuple, set)) else (skip_sid,)
        sockets = self.server.eio.sockets
        websockets = self.websockets
        unflushed = self._unflushed
        sent = 0
        for sid, eio_sid in participants:
            if sid in skip:
                continue
            socket = sockets.get(eio_sid)
            if socket is None or socket.closed or socket.closing:
                continue
            if shared is not None:
                pending = callbacks.get(sid)
                if pending is None:
                    pending = callbacks[sid] = {}
                pending[ack_id] = shared
                if len(pending) > ACK_WINDOW:  # ids ascend: the first is the oldest
                    del pending[next(iter(pending))]
            handler = websockets.get(eio_sid)
            if handler is not None:
                frames = unflushed.get(handler)
                if frames is None:
                    self.send_frame(handler, frame)
                else:
                    frames.append(frame)
            else:
                if packet is None:
                    packet = eio_packet.Packet(eio_packet.MESSAGE, text)
                socket.queue.put_nowait(packet)
            sent += 1
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
        if eio_sid in self.server._binary_packet:
            return False  # python-socketio awaits this client's binary attachments
        sid = self.sid_from_eio_sid(eio_sid, "/")
        if sid is None or not self.is_connected(sid, "/"):
            return False
        end = 1
        while end < len(text) and "0" <= text[end] <= "9":
            end += 1
        if end < len(text) and text[end] != "[":
            return False  # a namespace, or something engineio/socketio should judge
        data = SocketJSON.loads(text[end:]) if end < len(text) else []
        if not isinstance(data, list):
            return False
        packet_id = int(text[1:end]) if end > 1 else None
        if kind == "2":
            self.on_event(sid, eio_sid, data, packet_id)
        else:
            result = self.ack_received(sid, packet_id, data)
            if asyncio.iscoroutine(result):
                asyncio.ensure_future(result)
        return True

    def send_ack(self, eio_sid: str, ack_id: int, reply: dict) -> bool:
        """Answer a client event's ack on a directly written websocket; False otherwise."""
        handler = self.websockets.get(eio_sid)
        if handler is None:
            return False
        self.send_text(handler, b"43%d%s" % (ack_id, _dumps([reply]).encode()))
        return True

    def _generate_ack_id(self, sid: str, callback: Any) -> int:
        """python-socketio's own callbacks (an emit with ``callback=``) draw from the same
        node-wide counter as ``message:new``, so ids never collide on a socket."""
        ack_id = next(self._ack_ids)
        pending = self.callbacks.get(sid)
        if pending is None:
            pending = self.callbacks[sid] = {}
        pending[ack_id] = callback
        if len(pending) > ACK_WINDOW:
            del pending[next(iter(pending))]
        return ack_id

    def ack_received(self, sid: str, ack_id: int | None, args: list) -> Any:
        """A client's ACK: its pending entry runs once; an unknown, forgotten, repeated or
        another socket's id finds nothing and does nothing."""
        pending = self.callbacks.get(sid)
        entry = pending.pop(ack_id, None) if pending is not None and ack_id else None
        if entry is None:
            return None
        if type(entry) is SharedAck:
            return entry.on_ack(sid, entry.data, *args)
        return entry(*args)

    async def trigger_callback(self, sid: str, id: int | None, data: Any) -> None:
        result = self.ack_received(sid, id, data if isinstance(data, list) else [data])
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


def _write_frames(handler: Any, frames: list) -> None:
    connection = handler.ws_connection
    if connection is None or connection.is_closing():
        return  # closing: engineio notices and cleans up
    try:
        tornado_compat.write_now(connection.stream, frames[0] if len(frames) == 1 else b"".join(frames))
    except StreamClosedError:
        pass

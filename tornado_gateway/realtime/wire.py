"""The only home of python-engineio / python-socketio internals: packets, frames, hooks.

Socket.IO packet parsing and writing, RFC 6455 framing of directly written websockets,
the server's event hook, the Redis manager's private hooks and the Tornado handler of
``/socket.io/``. Why each internal is used: docs/architecture.md; pinned by
tests/realtime/test_wire.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable, cast

import socketio
import tornado.web
from engineio import packet as eio_packet
from engineio.async_drivers.tornado import get_tornado_handler
from socketio import packet as sio_packet
from socketio.async_redis_manager import AsyncRedisManager
from tornado.http1connection import HTTP1Connection
from tornado.iostream import StreamClosedError

from tornado_gateway import metrics, tornado_compat
from tornado_gateway.codec import SocketJSON
from tornado_gateway.codec import dumps as _dumps
from tornado_gateway.realtime.origin_refusal import ORIGIN_REFUSED, OriginRefusal, websocket_handshake
from tornado_gateway.edge.responses import LingeringClose, finish_error
from tornado_gateway.errors import GatewayError

log = logging.getLogger("tornado_gateway.realtime")
ACKED_EVENT = "message:new"  # recipients' acks of this event make delivered receipts
ACK_WINDOW = 256  # unanswered acks kept per socket; older ones are forgotten
CONTROL_METHODS = frozenset({"disconnect", "enter_room", "leave_room", "close_room"})


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
        queue_send = socket.send

        async def send(pkt: eio_packet.Packet) -> None:
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

    def send_text(self, handler: Any, payload: bytes, opcode: int = 0x1) -> None:
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

    def _flush_one(self, handler: Any) -> None:
        frames = self._unflushed.pop(handler, None)
        if frames:
            _write_frames(handler, frames)

    def deliver_local(self, event: str, data: Any, room: Any, skip_sid: Any = None) -> int:
        """Send ``event`` to this node's sockets in ``room`` (a room or list of rooms)."""
        participants = list(self.get_participants("/", room))
        if not participants:
            return 0
        body = _dumps([event, data])
        body_bytes = body.encode()
        skip = skip_sid if isinstance(skip_sid, (list, tuple, set)) else (skip_sid,)
        sockets = self.server.eio.sockets
        on_ack = self.on_delivery_ack
        track = event == ACKED_EVENT and on_ack is not None
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
                ack_id = self._ack_id(sid, functools.partial(cast(Callable[..., None], on_ack), sid, data))
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
        data = SocketJSON.loads(text[end:]) if end < len(text) else []
        if not isinstance(data, list):
            return False
        packet_id = int(text[1:end]) if end > 1 else None
        if kind == "2":
            self.on_event(sid, eio_sid, data, packet_id)
        else:
            callback = self.callbacks.get(sid, {}).pop(packet_id, None) if packet_id else None
            result = callback(*data) if callback is not None else None
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

    def _ack_id(self, sid: str, callback: Any) -> int:
        ack_id = self._generate_ack_id(sid, callback)
        pending = self.callbacks[sid]
        if len(pending) > ACK_WINDOW + 1:  # key 0 holds the counter; ids ascend
            keys = iter(pending)
            next(keys)
            del pending[next(keys)]
        return ack_id

    async def trigger_callback(self, sid: str, id: int | None, data: Any) -> None:
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


def _write_frames(handler: Any, frames: list) -> None:
    connection = handler.ws_connection
    if connection is None or connection.is_closing():
        return  # closing: engineio notices and cleans up
    try:
        connection.stream.write(frames[0] if len(frames) == 1 else b"".join(frames))
    except StreamClosedError:
        pass


class RedisManagerBase(FastDelivery, AsyncRedisManager):
    """python-socketio's AsyncRedisManager with its private hooks given names: ``_thread``
    (the listener task) runs :meth:`listen`, ``_publish`` goes to :meth:`publish_control`."""

    async def _thread(self) -> None:
        await self.listen()

    async def _publish(self, data: Any) -> None:
        await self.publish_control(data)

    async def listen(self) -> None:
        raise NotImplementedError

    async def publish_control(self, data: dict) -> None:
        raise NotImplementedError

    async def handle_control(self, method: str, message: dict) -> None:
        """Another node's disconnect / enter_room / leave_room / close_room message."""
        if method == "disconnect":
            await self._handle_disconnect(message)
        elif method == "enter_room":
            await self._handle_enter_room(message)
        elif method == "leave_room":
            await self._handle_leave_room(message)
        elif method == "close_room":
            await self._handle_close_room(message)

    def listener_task(self) -> asyncio.Task | None:
        return getattr(self, "thread", None)


class StrictPacket(sio_packet.Packet):
    """Socket.IO packets decoded and encoded by codec (strict; a refused payload is answered)."""

    json = SocketJSON


class RoomHooks:
    """python-socketio's room primitives given names (mixed in before the manager): every
    room of the manager appears in ``basic_enter_room`` and disappears in
    ``basic_leave_room`` (enter/leave, disconnect and close_room all go through them)."""

    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any: ...

    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: str | None = None) -> None:
        new = room not in self.rooms.get(namespace, {})
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]
        if new and namespace == "/":
            self.room_appeared(room)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        if namespace == "/" and room not in self.rooms.get(namespace, {}):
            self.room_gone(room)

    def room_appeared(self, room: Any) -> None:
        """The first local socket entered ``room``."""

    def room_gone(self, room: Any) -> None:
        """The last local socket left ``room``."""


class GatewaySocketServer(socketio.AsyncServer):
    """AsyncServer whose client events go to ``on_event`` (the ordered dispatch), not to tasks."""

    def __init__(self, on_event: Callable[[str, str, list, int | None], None], **kwargs: Any) -> None:
        self.on_event = on_event
        super().__init__(**kwargs)
        self.packet_class = StrictPacket  # Socket.IO packets only; Engine.IO keeps its own json

    async def _handle_event(self, eio_sid: str, namespace: str | None, id: int | None,
                            data: Any) -> None:
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace or "/")
        if sid is None or not self.manager.is_connected(sid, namespace or "/"):
            return
        self.on_event(sid, eio_sid, data, id)


async def send_ack_packet(sio: socketio.AsyncServer, eio_sid: str, ack_id: int, reply: dict) -> None:
    """An ACK packet through engineio's queue (``_send_packet``)."""
    await sio._send_packet(eio_sid, sio.packet_class(sio_packet.ACK, namespace="/", id=ack_id,
                                                     data=[reply]))


def eio_socket(sio: socketio.AsyncServer, eio_sid: str | None) -> Any:
    """The engineio socket of ``eio_sid`` on this node, or None."""
    return sio.eio.sockets.get(eio_sid) if eio_sid is not None else None


def write_directly(sio: socketio.AsyncServer, manager: Any, sid: str, handler: Any) -> None:
    """A socket connected with the websocket transport is written without engineio's queue."""
    eio_sid = manager.eio_sid_from_sid(sid, "/")
    socket = eio_socket(sio, eio_sid)
    if getattr(handler, "ws_connection", None) is not None and socket is not None and socket.upgraded:
        if manager.write_directly(eio_sid, socket, handler):
            handler.direct_eio_sid = eio_sid  # its events and acks skip engineio's queue too


def initialize_manager(sio: socketio.AsyncServer) -> None:
    """Start the client manager now (python-socketio would on the first connection)."""
    if not sio.manager_initialized:
        sio.manager_initialized = True
        sio.manager.initialize()


def make_socket_handler(realtime: Any) -> type[tornado.web.RequestHandler]:
    """The Tornado handler of ``/socket.io/``: engineio's, with the gateway's rules."""
    base = get_tornado_handler(realtime.sio.eio)
    gateway = realtime.gateway
    max_payload = realtime.settings.socket_max_payload
    max_body = max_payload + 1024  # a polling POST may carry a few packets' framing

    @tornado.web.stream_request_body
    class SocketIOHandler(LingeringClose, base):  # type: ignore[valid-type,misc]
        """Streams request bodies so that prepare() can bound a polling POST before it is read:
        an oversized one is refused without buffering it (the server allows up to the largest
        route's body size)."""

        route_name = "socket.io"  # access log and metrics label
        _chunks: list[bytes] | None = None

        def get_compression_options(self) -> None:
            return None  # no permessage-deflate: ~4x the memory and CPU per socket

        @property
        def max_message_size(self) -> int:
            return max_payload + 1024

        origin_refused = False  # a websocket from a refused origin: answered with connect_error, then closed
        refusal: "OriginRefusal | None" = None

        def check_origin(self, origin: str) -> bool:
            return self.origin_refused or realtime.origin_allowed(origin)

        async def open(self, *args: Any, **kwargs: Any) -> None:
            if self.origin_refused:  # never reaches engineio: a fixed Engine.IO open, nothing else
                self.refusal = OriginRefusal(self, max_payload)
                return
            await super().open(*args, **kwargs)


        def set_default_headers(self) -> None:
            # What every public response carries (engineio adds its CORS headers itself).
            headers = tornado_compat.response_headers(self)
            del headers["Server"]
            for name, value in gateway.security_headers:
                headers[name] = value
            headers["Vary"] = "Origin"

        direct_eio_sid = None  # set once the socket is written directly (websocket from the start)

        def on_message(self, message: dict) -> None:
            """Events and acks of a direct websocket go straight to the gateway, in
            arrival order (anything else, or while engineio still holds earlier
            messages, through engineio's queue as usual)."""
            if self.refusal is not None:
                self.refusal.received(message)
                return
            eio_sid = self.direct_eio_sid
            if (eio_sid is not None and type(message) is str and message[:1] == "4"
                    and self.receive_queue.empty() and realtime.manager.receive_fast(eio_sid, message[1:])):
                return
            self.receive_queue.put_nowait(message)

        def prepare(self) -> None:
            origin = self.request.headers.get("Origin")
            if not realtime.origin_allowed(origin):
                log.info("socket refused: origin not allowed (%r)", (origin or "")[:100],
                         extra={"event": "connect", "code": ORIGIN_REFUSED,
                                "client_ip": gateway.forwarding.client_ip(self.request)})
                if websocket_handshake(self.request):
                    self.origin_refused = True  # the client gets connect_error {data: {code}}
                else:  # polling: a browser could not read a refusal body from another origin anyway
                    self._refuse(403, "FORBIDDEN", "origin not allowed")
            elif gateway.draining and "sid" not in self.request.query_arguments:
                self._refuse(503, "DRAINING", "this node is shutting down")
            elif self.request.method == "POST":
                self._chunks = []
                cast(HTTP1Connection, self.request.connection).set_max_body_size(max_body)  # chunked too
                if _content_length(self.request) > max_body:
                    self._refuse(413, "PAYLOAD_TOO_LARGE", "packet too large")  # the body is not read
                    self._close_session()

        def data_received(self, chunk: bytes) -> None:
            if self._chunks is not None:
                self._chunks.append(chunk)

        def on_connection_close(self) -> None:
            if self._chunks is not None and not tornado_compat.handler_finished(self):
                self._close_session()  # a chunked POST over the limit: Tornado cut it
            super().on_connection_close()

        def _close_session(self) -> None:
            """A packet over the limit closes the transport (Socket.IO's rule), on polling too."""
            eio_sid = self.get_query_argument("sid", None)
            if eio_sid is not None and eio_sid in realtime.sio.eio.sockets:
                realtime._spawn(realtime.sio.eio.disconnect(eio_sid))

        async def post(self, *args: Any, **kwargs: Any) -> None:
            self.request.body = b"".join(self._chunks or ())
            await cast(Awaitable[None], super().post(*args, **kwargs))

        def _refuse(self, status: int, code: str, message: str) -> None:
            for name, value in gateway.cors.response_headers(self.request.headers.get("Origin")):
                self.set_header(name, value)
            finish_error(self, GatewayError(code, message, status), None)

    return SocketIOHandler


def _content_length(request: Any) -> int:
    try:
        return int(request.headers.get("Content-Length", "0"))
    except ValueError:
        return 0  # tornado refuses it when reading the body

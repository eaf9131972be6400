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
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, cast

import socketio
import tornado.web
import tornado.websocket
from engineio import packet as eio_packet
from engineio.async_drivers.tornado import get_tornado_handler
from engineio.async_socket import AsyncSocket
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
_ENVIRON_KEPT = ("tornado.handler", "HTTP_AUTHORIZATION", "REMOTE_ADDR")
_PING = eio_packet.Packet(eio_packet.PING).encode().encode()


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

    def flush_one(self, handler: Any) -> None:
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
        if not isinstance(data, list):  # python-socketio reads "" and "2" as an EVENT of None
            data = []  # an event without a name: the dispatch answers VALIDATION_FAILED
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace or "/")
        if sid is None or not self.manager.is_connected(sid, namespace or "/"):
            return
        self.on_event(sid, eio_sid, data, id)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        """A message Socket.IO cannot decode (an unknown type, bad framing, a binary
        attachment that never comes) is a protocol error of that client: one warning line,
        its transport closed at once (the reference server's "parse error"), no traceback."""
        try:
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            self._binary_packet.pop(eio_sid, None)
            protocol_error(eio_sid, "socket.io", exc)
            _spawn(self.eio.disconnect(eio_sid))

    async def _handle_eio_connect(self, eio_sid: str, environ: dict) -> Any:
        """A websocket from the start becomes a :class:`LeanSocket`; the handshake's body
        reader (engineio makes a class per request for it) is not kept for the socket's life."""
        handler = environ.get("tornado.handler")
        if getattr(handler, "ws_connection", None) is not None:
            adopt(self.eio.sockets.get(eio_sid))
        environ.pop("wsgi.input", None)
        return await super()._handle_eio_connect(eio_sid, environ)


def slim_environ(sio: socketio.AsyncServer, eio_sid: str | None, environ: dict) -> None:
    """A connected websocket keeps only what a later connect of "/" reads from its environ."""
    if eio_sid is not None and sio.environ.get(eio_sid) is environ:
        sio.environ[eio_sid] = {k: environ[k] for k in _ENVIRON_KEPT if k in environ}
    tornado_compat.drop_handshake(environ["tornado.handler"])


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
        lean_socket: "LeanSocket | None" = None  # the LeanSocket this websocket drives
        _backlog: list | None = None  # a lean socket's messages behind one engineio is handling

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            # engineio's handler makes an asyncio.Queue per connection in __init__; only a
            # websocket upgraded from polling reads it, so it is made on first use instead
            tornado.websocket.WebSocketHandler.__init__(self, *args, **kwargs)
            self.allowed_origins = list(realtime.origins)

        @property
        def receive_queue(self) -> asyncio.Queue:
            queue = self.__dict__.get("_receive_queue")
            if queue is None:
                queue = self.__dict__["_receive_queue"] = asyncio.Queue()
            return queue

        def on_message(self, message: Any) -> None:
            """Events and acks of a direct websocket go straight to the gateway, in arrival
            order; anything else through engineio (a lean socket: one task while it runs;
            a socket upgraded from polling: engineio's queue, as before it, anything)."""
            if self.refusal is not None:
                self.refusal.received(message)
                return
            if type(message) is str and message[:1] not in ENGINEIO_TYPES:
                protocol_error(self.direct_eio_sid, "engine.io", ValueError(f"packet type {message[:1]!r}"))
                self.close(1002, "parse error")  # closing the transport ends the socket
                return
            if self.lean_socket is not None:
                if self._backlog is not None:
                    self._backlog.append(message)
                elif not self._fast(message):
                    self._backlog = []
                    _spawn(self._lean_receive(message))
                return
            if self.receive_queue.empty() and self._fast(message):
                return
            self.receive_queue.put_nowait(message)

        def _fast(self, message: Any) -> bool:
            eio_sid = self.direct_eio_sid
            return bool(eio_sid is not None and type(message) is str and message[:1] == "4"
                        and realtime.manager.receive_fast(eio_sid, message[1:]))

        async def _lean_receive(self, message: Any) -> None:
            """Packets of a lean socket that engineio handles (connect, pong, close), in order."""
            socket = cast(LeanSocket, self.lean_socket)
            try:
                while True:
                    if not self._fast(message):
                        await socket.receive(eio_packet.Packet(encoded_packet=message))
                    if not self._backlog:
                        return
                    message = self._backlog.pop(0)
            except Exception:
                log.exception("socket.io packet failed; closing the socket")
                await socket.close(wait=False, abort=True)
            finally:
                self._backlog = None

        def on_close(self) -> None:
            socket = self.lean_socket
            if socket is None:
                super().on_close()
            elif not socket.closed:
                _spawn(socket.close(wait=False, abort=True, reason=socket.server.reason.TRANSPORT_CLOSE))

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


# -- lean websockets: no engineio tasks, queue or ping task per socket --------------------
#
# A socket that connects with the websocket transport from the start becomes a LeanSocket
# at its engineio connect: its packets are framed and written by the manager (send_text),
# its incoming messages arrive through the handler's on_message, and one Pinger per node
# sends the PINGs engineio would send from a sleeping task per socket (engineio's service
# task still closes a socket whose PONG does not come). Upgrades from polling keep engineio.

ENGINEIO_TYPES = frozenset("0123456")  # open, close, ping, pong, message, upgrade, noop


def protocol_error(eio_sid: str | None, layer: str, exc: BaseException) -> None:
    """The one warning line of a client's undecodable packet (bounded: it quotes client bytes)."""
    log.warning("malformed %s packet from a client, transport closed: %.120s", layer, exc,
                extra={"event": "protocol_error", "eio_sid": eio_sid})


def _spawn(coro: Any) -> None:
    asyncio.ensure_future(coro).add_done_callback(_log_failure)


def _log_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("socket task failed", exc_info=task.exception())


class LeanSocket(AsyncSocket):
    """An engineio socket whose websocket is driven by its handler, not by tasks of its own."""

    handler: Any = None  # the Tornado WebSocketHandler, once the websocket runs
    writer: Any = None  # the node's manager (``send_text``, ``flush_one``): ``configure``
    pinger: "Pinger | None" = None

    async def _websocket_handler(self, ws: Any) -> None:
        if getattr(self, "connected"):  # an upgrade from polling: engineio's own loop
            await super()._websocket_handler(ws)
            return
        self.connected = self.upgraded = True
        handler = ws.tornado_handler
        self.handler = handler
        handler.lean_socket = self
        queue = self.__dict__.pop("queue")  # from here on the class's write-through stand-in
        while not queue.empty():  # the OPEN packet, queued before the websocket ran
            self._write(queue.get_nowait())
        if self.pinger is not None:
            self.pinger.add(self)
        # and return: no reader, writer or ping task for this socket

    @property
    def queue(self) -> Any:
        """engineio's per-socket queue until the websocket runs; then a stand-in that writes."""
        return self.__dict__.get("queue") or _WriteThrough(self)

    @queue.setter
    def queue(self, value: Any) -> None:
        self.__dict__["queue"] = value

    async def send(self, pkt: eio_packet.Packet) -> None:
        if self.handler is None:
            await super().send(pkt)
            return
        if self.closed or not await self.check_ping_timeout():
            return
        self._write(pkt)

    def _write(self, pkt: eio_packet.Packet) -> None:
        encoded = pkt.encode()
        if isinstance(encoded, str):
            self.writer.send_text(self.handler, encoded.encode())
        else:
            self.writer.send_text(self.handler, encoded, opcode=0x2)

    def ping(self) -> None:
        """Send a PING now (the Pinger's turn for this socket)."""
        self.last_ping = time.time()
        self.writer.send_text(self.handler, _PING)

    def schedule_ping(self) -> None:
        self.last_ping = cast(float, None)  # the PONG came; the Pinger sends the next PING in its turn

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        was_closed = self.closed
        await super().close(wait=False, abort=abort, reason=reason)
        handler = self.handler
        if not was_closed and handler is not None:
            self.writer.flush_one(handler)
            handler.close()


class _WriteThrough:
    """What a running lean socket has instead of a queue: whatever is put is written now."""

    __slots__ = ("socket",)

    def __init__(self, socket: LeanSocket) -> None:
        self.socket = socket

    def put_nowait(self, pkt: Any) -> None:
        if pkt is not None and not self.socket.closed:
            self.socket._write(pkt)

    async def put(self, pkt: Any) -> None:
        self.put_nowait(pkt)

    async def join(self) -> None:
        return None

    def empty(self) -> bool:
        return True


class Pinger:
    """PINGs every lean socket once per ``interval`` seconds, a slice of them each second."""

    def __init__(self, interval: float) -> None:
        self.slots: list[set[LeanSocket]] = [set() for _ in range(max(1, int(interval)))]
        self._task: asyncio.Task | None = None
        self._last = 0

    def add(self, socket: LeanSocket) -> None:
        now = int(time.monotonic())
        self.slots[now % len(self.slots)].add(socket)
        if self._task is None:
            self._last = now
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(1)
            now = int(time.monotonic())
            for second in range(self._last + 1, min(now, self._last + len(self.slots)) + 1):
                self._turn(self.slots[second % len(self.slots)])
            self._last = now

    @staticmethod
    def _turn(slot: set[LeanSocket]) -> None:
        for socket in list(slot):
            if socket.closed or socket.closing:
                slot.discard(socket)
            elif socket.last_ping is None:
                socket.ping()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def configure(writer: Any, pinger: Pinger) -> None:
    """The node's manager and pinger (one Socket.IO server per process)."""
    LeanSocket.writer = writer
    LeanSocket.pinger = pinger


def adopt(socket: Any) -> bool:
    """Make a fresh engineio socket a LeanSocket (before its websocket handler runs)."""
    if type(socket) is not AsyncSocket or socket.connected or LeanSocket.writer is None:
        return False
    socket.__class__ = LeanSocket
    return True

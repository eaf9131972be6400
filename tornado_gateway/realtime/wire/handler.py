"""The Tornado handler of ``/socket.io/``: engineio's Tornado handler with the gateway's rules
(origins, draining, body limits, headers) and a direct websocket's fast receive path."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, cast

import tornado.web
import tornado.websocket
from engineio import packet as eio_packet
from engineio.async_drivers.tornado import get_tornado_handler
from tornado.http1connection import HTTP1Connection

from tornado_gateway import tornado_compat
from tornado_gateway.edge.responses import LingeringClose, finish_error
from tornado_gateway.errors import GatewayError
from tornado_gateway.realtime.origin_refusal import ORIGIN_REFUSED, OriginRefusal, websocket_handshake
from tornado_gateway.realtime.wire.lean import ENGINEIO_TYPES, LeanSocket, _spawn, protocol_error

log = logging.getLogger("tornado_gateway.realtime")


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

        def finish(self, chunk: Any = None) -> Any:
            if chunk is None and self.get_status() == 101 and not tornado_compat.headers_written(self):
                return tornado_compat.finish_switching(self)  # the upgrade's answer, in one write
            return super().finish(chunk)

        def get_websocket_protocol(self) -> Any:
            return tornado_compat.fast_websocket_protocol(self)  # frames read a chunk at a time

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

"""The Tornado handler of ``/socket.io/``: engineio's Tornado handler with the gateway's rules
(origins, draining, body limits, headers) and a direct websocket's fast receive path."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, cast

import tornado.web
import tornado.websocket
from engineio.async_drivers.tornado import get_tornado_handler
from tornado.http1connection import HTTP1Connection

from tornado_gateway import tornado_compat
from tornado_gateway.edge.responses import LingeringClose, finish_error
from tornado_gateway.errors import GatewayError
from tornado_gateway.realtime.origin_refusal import ORIGIN_REFUSED, OriginRefusal, websocket_handshake
from tornado_gateway.realtime.wire.lean import LeanReceiver

log = logging.getLogger("tornado_gateway.realtime")


def make_socket_handler(realtime: Any) -> type[tornado.web.RequestHandler]:
    """The Tornado handler of ``/socket.io/``: engineio's, with the gateway's rules."""
    base = get_tornado_handler(realtime.sio.eio)
    gateway = realtime.gateway
    max_payload = realtime.settings.socket_max_payload
    max_body = max_payload + 1024  # a polling POST may carry a few packets' framing

    @tornado.web.stream_request_body
    class SocketIOHandler(LingeringClose, base, LeanReceiver):  # type: ignore[valid-type,misc]
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
            """A lean socket's messages as LeanReceiver takes them; a socket upgraded from
            polling: through engineio's queue, as before it, except an event or ack that
            finds the queue empty."""
            if self.refusal is not None:
                self.refusal.received(message)
                return
            if self.take_message(message):
                return
            if self.receive_queue.empty() and self.fast(message):
                return
            self.receive_queue.put_nowait(message)

        def on_close(self) -> None:
            if not self.lean_closed():
                super().on_close()

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
            elif self.request.query_arguments.get("EIO", (b"",))[0] != b"4":
                # engineio refuses other versions only after a websocket upgrade, where it
                # cannot answer (the client would wait on an open websocket): refused here
                self._refuse(400, "VALIDATION_FAILED", "unsupported Engine.IO protocol version (EIO=4 expected)")
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

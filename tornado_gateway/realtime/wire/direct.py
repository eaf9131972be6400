"""Plain websocket connects of ``/socket.io/`` answered on the connection: ``DirectUpgrade``
decides and writes the 101, ``DirectSocket`` is what engineio and the gateway then hold as
the socket's handler. Every other request of the path goes to the Tornado handler."""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.websocket import WebSocketProtocol13

from tornado_gateway import tornado_compat
from tornado_gateway.edge.responses import log_request
from tornado_gateway.proxy.headers import http_date
from tornado_gateway.realtime.wire.lean import LeanReceiver, LeanSocket, _spawn

log = logging.getLogger("tornado_gateway.realtime")
PATH = "/socket.io/"
CLIENT_QUERY = "EIO=4&transport=websocket"
# A Host of a name or IPv4 address and a port: a subset of what Tornado accepts; any other
# spelling (IPv6, percent-encoded, a comma) goes to the Tornado handler, which decides.
PLAIN_HOST = re.compile(r"[A-Za-z0-9.\-]+(?::[0-9]*)?")


class DirectSocket(LeanReceiver):
    """A websocket upgraded by :class:`DirectUpgrade`: what Tornado's websocket protocol
    calls on its handler, what engineio's Tornado driver and the gateway use of one
    (``request``, ``ws_connection``, ``close``), and the access line's attributes."""

    route_name = "socket.io"
    request_id = user_id = upstream_name = client_ip = None  # nothing of these on a 101
    close_code: int | None = None
    close_reason: str | None = None

    def __init__(self, request: "httputil.HTTPServerRequest | Handshake | None", client_ip: str) -> None:
        self.request = request
        self.socket_client_ip = client_ip  # what _on_connect reads instead of the request
        self.ws_connection: Any = None  # Tornado's protocol while the websocket runs
        self.ended = False

    def get_status(self) -> int:
        return 101

    def set_status(self, *args: Any) -> None:
        raise RuntimeError("a websocket answered already")  # engineio's make_response skips it

    def forget_handshake(self) -> None:
        """The socket is connected: its request (headers, connection) is never read again."""
        self.request = None

    def on_message(self, message: Any) -> None:
        if not self.take_message(message):  # only lean sockets are upgraded here
            self.close(1011, "unexpected message")

    def on_ping(self, data: bytes) -> None:
        pass

    def on_pong(self, data: bytes) -> None:
        pass

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        log.error("socket.io websocket failed", exc_info=(typ, value, tb))

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        connection = self.ws_connection
        if connection is not None:
            connection.close(code, reason)
            self.ws_connection = None

    def on_ws_connection_close(self, close_code: int | None = None, close_reason: str | None = None) -> None:
        self.close_code, self.close_reason = close_code, close_reason
        self.ws_connection = None
        if not self.ended:
            self.ended = True
            self.lean_closed()


class DirectUpgrade:
    """Answers a plain websocket connect of ``/socket.io/`` (the client's first request, with
    the websocket transport) below Tornado's RequestHandler: the same checks and the same 101
    as the Tornado handler, without routing, a handler object, its task and its second
    origin check. Anything else, a refusal included, is left to that handler (``take``
    returns False): polling, upgrades from polling (``sid``), draining, a refused origin,
    other Engine.IO versions, a version other than 13, a body, or a missing header."""

    def __init__(self, realtime: Any) -> None:
        self.realtime = realtime
        self.head = tornado_compat.header_lines([
            *realtime.gateway.security_headers,
            ("Vary", "Origin"), ("Upgrade", "websocket"), ("Connection", "Upgrade")])
        self.max_message_size = realtime.settings.socket_max_payload + 1024

    def take(self, request_conn: Any, start_line: httputil.RequestStartLine,
             headers: httputil.HTTPHeaders) -> bool:
        """Answer the upgrade and start the socket (True), or leave the request alone."""
        if not isinstance(request_conn, HTTP1Connection) or not self._acceptable(start_line, headers):
            return False
        request = httputil.HTTPServerRequest(connection=request_conn, start_line=start_line, headers=headers)
        socket = DirectSocket(request, self.realtime.gateway.forwarding.client_ip(request))
        stream = request_conn.detach()
        connection = socket.ws_connection = tornado_compat.server_websocket(socket, stream, self.max_message_size)
        self._answer(socket, headers)
        _spawn(self._open(socket, lambda: tornado_compat.read_frames(connection)))
        return True

    def take_transport(self, transport: Any, start_line: httputil.RequestStartLine,
                       headers: httputil.HTTPHeaders, peer_ip: str) -> bool:
        """The same for a connection still on the asyncio transport it was accepted on
        (proxy.listener): the websocket stays there."""
        if not self._acceptable(start_line, headers) or not PLAIN_HOST.fullmatch(headers["Host"]):
            return False
        socket = DirectSocket(Handshake(start_line, headers, peer_ip),
                              self.realtime.gateway.forwarding.client_ip_from(
                                  peer_ip, headers.get("X-Forwarded-For")))
        websocket = tornado_compat.TransportWebsocket(socket, transport, self.max_message_size)
        socket.ws_connection = websocket.protocol
        self._answer(socket, headers)

        async def frames() -> None:
            LeanSocket.writer.flush_one(socket)  # the 101 and the open before any answer to a frame
            websocket.start()
        _spawn(self._open(socket, frames))
        return True

    def _answer(self, socket: DirectSocket, headers: httputil.HTTPHeaders) -> None:
        accept = WebSocketProtocol13.compute_accept_value(headers["Sec-Websocket-Key"])
        # The 101 goes out first among the socket's frames, with the Engine.IO open that
        # engineio queues next: one write (and one read for the client) instead of two.
        LeanSocket.writer.send_frame(socket, b"HTTP/1.1 101 Switching Protocols\r\nDate: %s\r\n%s"
                                             b"Sec-Websocket-Accept: %s\r\n\r\n" % (
                                                 http_date().encode("ascii"), self.head, accept.encode("latin-1")))
        log_request(socket)

    def _acceptable(self, start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders) -> bool:
        path, _, query = start_line.path.partition("?")
        if path != PATH or start_line.method != "GET" or start_line.version != "HTTP/1.1":
            return False
        realtime = self.realtime
        if realtime.gateway.draining or LeanSocket.writer is None:
            return False
        if query != CLIENT_QUERY:  # what the official clients send, else read as engineio does
            fields = parse_qs(query)
            if "sid" in fields or fields.get("transport", ("",))[0] != "websocket" \
                    or fields.get("EIO", ("",))[0] != "4":
                return False
        upgrade = headers.get("Upgrade")
        if upgrade is None or upgrade.lower() != "websocket" or headers.get("Sec-Websocket-Version") != "13":
            return False
        if "upgrade" not in [token.strip().lower() for token in headers.get("Connection", "").split(",")]:
            return False
        if not headers.get("Sec-Websocket-Key") or not headers.get("Host"):
            return False
        if "Content-Length" in headers or "Transfer-Encoding" in headers:
            return False
        if "Origin" not in headers and "Sec-Websocket-Origin" in headers:
            return False  # Tornado's older origin header: its handler decides
        return bool(realtime.origin_allowed(headers.get("Origin")))

    async def _open(self, socket: DirectSocket, frames: Callable[[], Awaitable[None]]) -> None:
        """engineio's connect of the socket, then its frames (none are read before it)."""
        try:
            await self.realtime.sio.open_checked_websocket(socket)
        except Exception:
            log.exception("socket.io websocket could not open; closing it")
            LeanSocket.writer.flush_one(socket)  # the 101 before the close frame
            socket.close()
        await frames()  # after a close too: its answer, then the end


class Handshake:
    """The request of a connection upgraded below Tornado, as long as its socket keeps it:
    what engineio's environ, the client address and the access line read of it (an
    ``HTTPServerRequest`` would also parse and copy the query and check the Host again)."""

    __slots__ = ("method", "uri", "version", "path", "query", "headers", "body", "remote_ip",
                 "protocol", "host", "_start_time")

    def __init__(self, start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders,
                 peer_ip: str) -> None:
        self.method, self.uri, self.version = start_line
        self.path, _, self.query = self.uri.partition("?")
        self.headers = headers
        self.body = b""
        self.remote_ip = peer_ip
        self.protocol = "http"
        self.host = headers["Host"]
        self._start_time = time.time()

    def request_time(self) -> float:
        return time.time() - self._start_time

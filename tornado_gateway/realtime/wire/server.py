"""python-socketio's AsyncServer internals: the event hook (GatewaySocketServer), strict packets,
ACKs through engineio's queue, and the server's per-socket state (environ, sockets, manager)."""

from __future__ import annotations

import sys
from typing import Any, Callable
from urllib.parse import urlsplit

import socketio
from socketio import packet as sio_packet

from tornado_gateway import tornado_compat
from tornado_gateway.codec import SocketJSON
from tornado_gateway.realtime.wire.direct import DirectSocket
from tornado_gateway.realtime.wire.lean import _spawn, adopt, protocol_error

_ENVIRON_KEPT = ("tornado.handler", "HTTP_AUTHORIZATION", "REMOTE_ADDR")


class StrictPacket(sio_packet.Packet):
    """Socket.IO packets decoded and encoded by codec (strict; a refused payload is answered)."""

    json = SocketJSON


class GatewaySocketServer(socketio.AsyncServer):
    """AsyncServer whose client events go to ``on_event`` (the ordered dispatch), not to tasks."""

    def __init__(self, on_event: Callable[[str, str, list, int | None], None], **kwargs: Any) -> None:
        self.on_event = on_event
        super().__init__(**kwargs)
        self.packet_class = StrictPacket  # Socket.IO packets only; Engine.IO keeps its own json
        # this server's copy of the driver table (engineio's is shared by the module)
        self.eio._async = {**self.eio._async, "translate_request": translate_request}

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

    async def open_checked_websocket(self, handler: Any) -> None:
        """engineio's open of a websocket that DirectUpgrade checked (GET, ``EIO=4``, the
        websocket transport and headers, an allowed origin): ``handle_request`` without
        reading the request a second time."""
        environ = translate_request(handler)
        reply = await self.eio._handle_connect(environ, "websocket")
        if isinstance(reply, dict):  # refused at the Engine.IO level: handle_request's answer
            await self.eio._make_response(reply, environ)

    async def _handle_eio_connect(self, eio_sid: str, environ: dict) -> Any:
        """A websocket from the start becomes a :class:`LeanSocket`; the handshake's body
        reader (engineio makes a class per request for it) is not kept for the socket's life."""
        handler = environ.get("tornado.handler")
        if getattr(handler, "ws_connection", None) is not None:
            adopt(self.eio.sockets.get(eio_sid))
        environ.pop("wsgi.input", None)
        return await super()._handle_eio_connect(eio_sid, environ)


class _Payload:
    """The request body as engineio reads it (``await read()``): one class, not one per request."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes | None) -> None:
        self.payload = payload or b""

    async def read(self, length: int | None = None) -> bytes:
        if length is None:
            data, self.payload = self.payload, b""
        else:
            data, self.payload = self.payload[:length], self.payload[length:]
        return data


def translate_request(handler: Any) -> dict:
    """engineio's Tornado ``translate_request`` (the WSGI-like environ of a request) without the
    class it defines on every call: a class per handshake was a tenth of a connect's CPU in a
    storm, and garbage the cycle collector then had to find."""
    request = handler.request
    full_uri = request.path + ("?" + request.query if request.query else "")
    environ = {
        "wsgi.input": _Payload(request.body), "wsgi.errors": sys.stderr, "wsgi.version": (1, 0),
        "wsgi.async": True, "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
        "SERVER_SOFTWARE": "aiohttp", "REQUEST_METHOD": request.method, "QUERY_STRING": request.query or "",
        "RAW_URI": full_uri, "SERVER_PROTOCOL": "HTTP/%s" % request.version, "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "0", "SERVER_NAME": "aiohttp", "SERVER_PORT": "0", "tornado.handler": handler,
    }
    for name, value in request.headers.items():
        name = name.upper()
        if name == "CONTENT-TYPE":
            environ["CONTENT_TYPE"] = value
        elif name == "CONTENT-LENGTH":
            environ["CONTENT_LENGTH"] = value
        else:
            environ["HTTP_" + name.replace("-", "_")] = value
    environ["wsgi.url_scheme"] = environ.get("HTTP_X_FORWARDED_PROTO", "http")
    environ["PATH_INFO"] = urlsplit(request.path).path
    environ["SCRIPT_NAME"] = ""
    return environ


def slim_environ(sio: socketio.AsyncServer, eio_sid: str | None, environ: dict) -> None:
    """A connected websocket keeps only what a later connect of "/" reads from its environ."""
    if eio_sid is not None and sio.environ.get(eio_sid) is environ:
        sio.environ[eio_sid] = {k: environ[k] for k in _ENVIRON_KEPT if k in environ}
    handler = environ["tornado.handler"]
    if isinstance(handler, DirectSocket):
        handler.forget_handshake()
    else:
        tornado_compat.drop_handshake(handler)


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

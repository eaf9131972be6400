"""Every private Tornado detail the gateway relies on, behind named functions: here the HTTP
connection and request handler details, in ``websocket.py`` a server websocket's frames.

Nothing else in the package touches an underscore name of Tornado; why each one is
needed is in docs/architecture.md, and tests/test_tornado_compat.py pins each behaviour.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any, cast

import tornado
import tornado.web
import tornado.websocket
from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.concurrent import future_add_done_callback
from tornado.iostream import IOStream, StreamClosedError
from tornado.netutil import _client_ssl_defaults
from tornado.options import OptionParser
from tornado.tcpserver import TCPServer

#: The Tornado releases these details were checked against (setup.py pins the same range).
SUPPORTED = ((6, 6), (7, 0))


def check_version(version: tuple[int, ...] = tornado.version_info[:2]) -> None:
    """Refuse a Tornado outside the range the private details below were checked on."""
    low, high = SUPPORTED
    if not low <= tuple(version[:2]) < high:
        raise RuntimeError(f"tornado {version} is not supported (need >= {low}, < {high}): "
                           "tornado_gateway.tornado_compat relies on its private details")


check_version()


# -- tornado.options ---------------------------------------------------------------------

def option_named(parser: OptionParser, dashed: str) -> Any | None:
    """The ``_Option`` of ``--dashed-name`` (``OptionParser._options``), or None."""
    return parser._options.get(dashed)


# -- HTTP/1.1 connections ------------------------------------------------------------------

def answer_without_reading_body(connection: HTTP1Connection) -> None:
    """Let ``connection.finish()`` end a response while the request body is unread,
    without closing the stream itself (``_read_finished``, ``_disconnect_on_finish``)."""
    connection._read_finished = True
    connection._disconnect_on_finish = False


def bytes_buffered(stream: IOStream) -> int:
    """Bytes an ``IOStream`` read but no read asked for yet (``_read_buffer_size``)."""
    return int(getattr(stream, "_read_buffer_size", 0))


def stream_with_bytes(sock: socket.socket, data: bytes, server: TCPServer) -> IOStream:
    """An IOStream for ``sock`` as ``server`` makes one for an accepted connection, holding
    ``data`` (read from the socket already) as the first bytes it reads."""
    stream = IOStream(sock, max_buffer_size=server.max_buffer_size, read_chunk_size=server.read_chunk_size)
    if data:
        stream._read_buffer += data
        stream._read_buffer_size += len(data)
    return stream


def client_ssl_defaults() -> ssl.SSLContext:
    """The client TLS context ``SimpleAsyncHTTPClient`` uses by default."""
    return _client_ssl_defaults()


def http_client_closed(client: AsyncHTTPClient | Any) -> bool:
    """Whether ``AsyncHTTPClient.close()`` was called (``_closed``)."""
    return bool(client._closed)


def server_connections(server: HTTPServer) -> set:
    """The open connections of an ``HTTPServer`` (``_connections``)."""
    return server._connections


# -- RequestHandler state --------------------------------------------------------------------

def body_unread(handler: tornado.web.RequestHandler) -> bool:
    """A ``@stream_request_body`` handler still inside ``prepare()``: the body is not read
    (``_prepared_future`` is set for streaming handlers and done once prepare returned)."""
    prepared = getattr(handler, "_prepared_future", None)
    return prepared is not None and not prepared.done() and not handler._finished


def handler_finished(handler: tornado.web.RequestHandler) -> bool:
    return bool(handler._finished)


def mark_finished(handler: tornado.web.RequestHandler) -> None:
    handler._finished = True


def headers_written(handler: tornado.web.RequestHandler) -> bool:
    return bool(handler._headers_written)


def response_headers(handler: tornado.web.RequestHandler) -> httputil.HTTPHeaders:
    """The handler's pending response headers, for ``set_default_headers`` (``_headers``)."""
    return handler._headers


def reason(handler: tornado.web.RequestHandler) -> str:
    return str(handler._reason)


class RequestExceptionHook(tornado.web.RequestHandler):
    """Mixin: an exception raised by a handler method goes to ``on_request_exception``
    first; when it returns False, Tornado's ``_handle_request_exception`` handles it."""

    def on_request_exception(self, e: BaseException) -> bool:
        return False

    def _handle_request_exception(self, e: BaseException) -> None:
        if not self.on_request_exception(e):
            super()._handle_request_exception(e)


_NO_HEADERS = httputil.HTTPHeaders()  # shared and never written: what a running websocket keeps
_NO_ARGS: dict = {}


def drop_handshake(handler: tornado.web.RequestHandler) -> None:
    """Let a running websocket forget its handshake (the request's headers, also the copy its
    detached HTTP1Connection keeps, the 101 answer's headers, path and open arguments, the
    HTTP server connection the request came on): a few KiB per socket, never read again."""
    request = handler.request
    connection = request.connection
    if isinstance(connection, HTTP1Connection) and connection.stream is None:  # detached: done with HTTP
        connection._request_headers = None
        connection._request_start_line = None
    request.server_connection = None
    request.headers = _NO_HEADERS
    handler._headers = _NO_HEADERS
    handler.path_args = []
    handler.path_kwargs = _NO_ARGS
    setattr(handler, "open_args", ())
    setattr(handler, "open_kwargs", _NO_ARGS)


def write_response_head(connection: HTTP1Connection, start_line: httputil.ResponseStartLine,
                        head: bytes, content_length: int | None, closes: bool,
                        chunk: bytes | None = None) -> "asyncio.Future[None]":
    """``HTTP1Connection.write_headers`` of a server response whose header lines are ready-made
    bytes (``head``: CRLF-terminated lines, no CR/LF inside a value: checked by whoever made
    them). Sets the connection's state as ``write_headers`` does: chunked output for a
    HTTP/1.1 response without ``content_length``, ``Connection: close`` when the connection
    closes after it (unless ``closes``: the head says so already), 1.0 keep-alive."""
    request = connection._request_start_line
    assert request is not None and connection._request_headers is not None
    code = start_line.code
    connection._response_start_line = start_line
    connection._chunking_output = (
        request.version == "HTTP/1.1" and request.method != "HEAD" and code not in (204, 304)
        and (code < 100 or code >= 200) and content_length is None)
    extra = b""
    if request.version == "HTTP/1.1" and connection._disconnect_on_finish and not closes:
        extra += b"Connection: close\r\n"
    if (request.version == "HTTP/1.0"
            and connection._request_headers.get("Connection", "").lower() == "keep-alive"):
        extra += b"Connection: Keep-Alive\r\n"
    if connection._chunking_output:
        extra += b"Transfer-Encoding: chunked\r\n"
    if request.method == "HEAD" or code == 304:
        connection._expected_content_remaining = 0
    else:
        connection._expected_content_remaining = content_length
    data = b"HTTP/1.1 %d %s\r\n%s%s\r\n" % (code, start_line.reason.encode("latin-1"), head, extra)
    return _write_head(connection, data, chunk)


_SWITCHING = httputil.ResponseStartLine("HTTP/1.1", 101, "Switching Protocols")


def header_lines(pairs: Any) -> bytes:
    """``Name: value`` lines of a response head (each CRLF-terminated, Latin-1, as Tornado
    writes them); ValueError when a name or value holds CR or LF (header injection)."""
    lines = [f"{name}: {value}\r\n" for name, value in pairs]
    text = "".join(lines)
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise ValueError("Illegal characters (CR or LF) in a response header")
    return text.encode("latin-1")


def finish_switching(handler: tornado.web.RequestHandler) -> "asyncio.Future[None]":
    """``RequestHandler.finish()`` of a bodyless 101 answer (a websocket upgrade): the head
    made in one pass over the handler's headers and written by ``write_response_head``,
    then what ``finish`` does after its ``flush`` (connection finished, access log,
    ``on_finish``). The representation headers are dropped as Tornado drops them on a 1xx."""
    headers = handler._headers
    for name in ("Content-Encoding", "Content-Language", "Content-Type"):
        if name in headers:
            del headers[name]
    head = header_lines(headers.get_all())
    handler._headers_written = True
    connection = cast(HTTP1Connection, handler.request.connection)
    connection.set_close_callback(None)
    future = write_response_head(connection, _SWITCHING, head, None, closes=False)
    connection.finish()
    handler._log()
    handler._finished = True
    handler.on_finish()
    return future


def _write_head(connection: HTTP1Connection, data: bytes, chunk: bytes | None) -> "asyncio.Future[None]":
    """The end of ``write_headers``: the head (and a first chunk) written, its future tracked."""
    future: asyncio.Future[None] = asyncio.Future()
    connection._write_future = future
    if connection.stream.closed():
        future.set_exception(StreamClosedError())
        future.exception()
        return future
    if chunk:
        data += connection._format_chunk(chunk)
    rest = _send_now(connection.stream, data)
    if not rest:  # all of it in one send: the write is over (``_on_write_complete``'s part)
        connection._write_future = None
        future.set_result(None)
        return future
    connection._pending_write = connection.stream.write(rest)
    future_add_done_callback(connection._pending_write, connection._on_write_complete)
    return future


def write_now(stream: "IOStream | TransportStream", data: bytes) -> None:
    """Write ``data`` on a plain ``IOStream`` without its per-write Future when nothing is
    queued before it (``_write_buffer``, ``_connecting``, ``socket``): one ``send``; what the
    kernel did not take, and every other case, goes through ``IOStream.write`` (in order,
    errors and closing handled there; a closed stream raises ``StreamClosedError``). A
    websocket on a transport (``TransportStream``) hands it to the transport."""
    if isinstance(stream, TransportStream):
        stream.send(data)
        return
    rest = _send_now(stream, data)
    if rest:
        stream.write(rest)


def _send_now(stream: IOStream, data: bytes) -> bytes:
    """One ``send`` of ``data`` when nothing is queued before it on a plain IOStream; what
    is left to write (all of ``data`` when it could not be tried)."""
    sock = stream.socket
    if type(stream) is IOStream and sock is not None and not stream._write_buffer \
            and not stream._connecting:
        try:
            sent = sock.send(data)
        except OSError:  # EAGAIN, or an error IOStream.write meets again and handles
            sent = 0
        return data[sent:] if sent else data
    return data


# after check_version: the websocket details are checked against the same releases
from tornado_gateway.tornado_compat.websocket import (  # noqa: E402
    TransportStream, TransportWebsocket, fast_websocket_protocol, read_frames, server_websocket,
    take_socket, websocket_transport)

__all__ = [name for name in dir() if not name.startswith("_")]

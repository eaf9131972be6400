"""Pins the private Tornado behaviour tornado_compat.py relies on: each test fails when a
Tornado release changes the detail the named function reaches for."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import ssl
import unittest.mock
import weakref

import pytest
import tornado.web
from tornado import httputil
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream, StreamClosedError
from tornado.options import OptionParser
from tornado.testing import bind_unused_port
from tornado.util import _websocket_mask
from tornado.websocket import WebSocketHandler, websocket_connect

from tornado_gateway import tornado_compat


def test_version_range_is_enforced():
    tornado_compat.check_version((6, 6))
    for outside in ((6, 5), (7, 0)):
        with pytest.raises(RuntimeError, match="not supported"):
            tornado_compat.check_version(outside)


def test_option_named_reads_the_parsers_options():
    parser = OptionParser()
    parser.define("max_things", type=int, default=3)  # stored under "max-things"
    option = tornado_compat.option_named(parser, "max-things")
    assert option.type is int
    option.set(7)
    assert parser.as_dict()["max_things"] == 7
    assert tornado_compat.option_named(parser, "absent") is None


def _stream_pair() -> tuple[IOStream, IOStream]:
    left, right = socket.socketpair()
    return IOStream(left), IOStream(right)


def test_finish_decides_by_the_two_flags_answer_without_reading_body_sets():
    client, server = socket.socketpair()
    connection = HTTP1Connection(IOStream(server), False)
    for name in ("_read_finished", "_disconnect_on_finish"):
        assert hasattr(connection, name)  # set in __init__ ...
    tornado_compat.answer_without_reading_body(connection)
    assert connection._read_finished is True and connection._disconnect_on_finish is False
    import inspect
    source = inspect.getsource(HTTP1Connection.finish)  # ... and read by finish()
    assert "_read_finished" in source and "_disconnect_on_finish" in source
    client.close()
    connection.stream.close()


def test_client_ssl_defaults_is_a_verifying_context():
    context = tornado_compat.client_ssl_defaults()
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.gen_test
async def test_http_client_closed_follows_close():
    client = AsyncHTTPClient(force_instance=True)
    assert tornado_compat.http_client_closed(client) is False
    client.close()
    assert tornado_compat.http_client_closed(client) is True


@pytest.mark.gen_test
async def test_server_connections_holds_open_connections():
    server = HTTPServer(tornado.web.Application([(r"/", _Pinned)]))
    sock, port = bind_unused_port()
    server.add_sockets([sock])
    assert tornado_compat.server_connections(server) == set()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(100):
        if tornado_compat.server_connections(server):
            break
        await asyncio.sleep(0.01)
    assert len(tornado_compat.server_connections(server)) == 1
    writer.close()
    server.stop()
    await server.close_all_connections()


@pytest.mark.gen_test
async def test_bytes_buffered_counts_what_no_read_took_yet():
    ours, peer = _stream_pair()
    await peer.write(b"0123456789")
    assert await ours.read_bytes(2) == b"01"
    for _ in range(100):
        if tornado_compat.bytes_buffered(ours) == 8:
            break
        await asyncio.sleep(0.01)
    assert tornado_compat.bytes_buffered(ours) == 8
    ours.close()
    peer.close()


@pytest.mark.gen_test
async def test_take_socket_takes_an_idle_streams_socket_off_the_ioloop():
    """take_socket reads _read_buffer_size, _write_buffer, _connecting and _state, and removes
    the IOLoop's handler as IOStream.close does: afterwards the IOStream reads nothing more
    and the socket is the taker's; a stream holding unread bytes is left alone."""
    ours, peer = _stream_pair()
    await peer.write(b"x")
    assert await ours.read_bytes(1) == b"x"
    ours.set_close_callback(lambda: None)  # an idle stream with a close callback watches its socket
    assert ours._state is not None
    sock = tornado_compat.take_socket(ours)
    assert sock is ours.socket and ours._state is None
    await peer.write(b"after")
    for _ in range(3):  # loop iterations in which a handler still registered would read
        await asyncio.sleep(0)
    sock.settimeout(5)
    assert sock.recv(16) == b"after"  # the bytes waited in the socket, for its new owner
    assert tornado_compat.bytes_buffered(ours) == 0
    sock.close()
    peer.close()
    held, other = _stream_pair()
    await other.write(b"ab")
    assert await held.read_bytes(1) == b"a"
    for _ in range(100):
        if tornado_compat.bytes_buffered(held):
            break
        await asyncio.sleep(0.01)
    assert tornado_compat.take_socket(held) is None
    assert await held.read_bytes(1) == b"b"  # still the IOStream's
    held.close()
    other.close()


@pytest.mark.gen_test
async def test_write_now_sends_at_once_and_queues_behind_what_waits():
    ours, peer = _stream_pair()
    tornado_compat.write_now(ours, b"ab")
    assert not ours._write_buffer  # sent by the socket at once, nothing left for IOStream
    assert await peer.read_bytes(2) == b"ab"
    big = b"x" * (8 << 20)  # more than the kernel takes at once: the rest waits in the stream
    tornado_compat.write_now(ours, big)
    assert ours._write_buffer
    tornado_compat.write_now(ours, b"tail")  # behind the waiting bytes, never ahead of them
    assert await peer.read_bytes(len(big) + 4) == big + b"tail"
    ours.close()
    with pytest.raises(StreamClosedError):
        tornado_compat.write_now(ours, b"late")
    peer.close()


class _Echo(WebSocketHandler):
    closed: list = []

    def get_websocket_protocol(self):  # type: ignore[no-untyped-def]
        return tornado_compat.fast_websocket_protocol(self)

    def on_message(self, message):  # type: ignore[no-untyped-def]
        self.write_message(message, binary=isinstance(message, bytes))

    def on_close(self) -> None:
        _Echo.closed.append(self.close_code)


def _client_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    """A masked client frame, built by hand (fragments, control frames, reserved bits)."""
    mask, size = b"k3y!", len(payload)
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 65536:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    return head + mask + _websocket_mask(mask, payload)


@pytest.mark.gen_test(timeout=20)
async def test_fast_websocket_protocol_reads_frames_as_tornado_does():
    sock, port = bind_unused_port()
    server = HTTPServer(tornado.web.Application([("/ws", _Echo)], websocket_max_message_size=200_000))
    server.add_sockets([sock])
    url = f"ws://127.0.0.1:{port}/ws"
    ws = await websocket_connect(url)
    stream = ws.protocol.stream
    # several frames in one write: a fragmented text message with a ping between its parts
    stream.write(_client_frame(1, b"one") + _client_frame(1, b"tw", fin=False) + _client_frame(9, b"p")
                 + _client_frame(0, b"o") + _client_frame(2, b"\x00three"))
    assert await ws.read_message() == "one"
    assert await ws.read_message() == "two"
    assert ws.protocol._received_pong  # the ping was answered, in its place
    assert await ws.read_message() == b"\x00three"
    frame = _client_frame(1, b"slow")  # a byte at a time
    for i in range(len(frame)):
        stream.write(frame[i:i + 1])
        await asyncio.sleep(0.002)
    assert await ws.read_message() == "slow"
    big = "x" * 150_000  # an 8-byte length, read over several chunks
    stream.write(_client_frame(1, big.encode()))
    assert await ws.read_message() == big
    stream.write(_client_frame(1, b"y" * 200_001))  # over max_message_size: the server closes
    assert await ws.read_message() is None
    ws2 = await websocket_connect(url)
    ws2.protocol.stream.write(_client_frame(1, b"x", rsv=0x40))  # an extension nobody agreed on
    assert await ws2.read_message() is None
    ws3 = await websocket_connect(url)
    ws3.protocol.stream.write(_client_frame(0, b"x"))  # a continuation of nothing
    assert await ws3.read_message() is None
    ws4 = await websocket_connect(url)
    ws4.close(1000)
    for _ in range(200):
        if 1000 in _Echo.closed:
            break
        await asyncio.sleep(0.01)
    assert 1000 in _Echo.closed  # a close frame reaches on_close with its code
    server.stop()


class _Pinned(tornado_compat.RequestExceptionHook):
    seen: dict = {}

    def get(self) -> None:
        _Pinned.seen["before_write"] = (tornado_compat.headers_written(self),
                                        tornado_compat.handler_finished(self))
        tornado_compat.response_headers(self)["X-Default"] = "set"
        raise LookupError("handled by the hook")

    def on_request_exception(self, e: BaseException) -> bool:
        if isinstance(e, LookupError):
            self.set_status(418)
            self.finish("hooked")
            _Pinned.seen["after_finish"] = tornado_compat.handler_finished(self)
            return True
        return False


@tornado.web.stream_request_body
class _Streaming(tornado.web.RequestHandler):
    seen: dict = {}

    def prepare(self) -> None:
        _Streaming.seen["in_prepare"] = tornado_compat.body_unread(self)

    def data_received(self, chunk: bytes) -> None:
        pass

    def post(self) -> None:
        _Streaming.seen["in_post"] = tornado_compat.body_unread(self)
        self.set_status(400, reason="Pinned Reason")
        _Streaming.seen["reason"] = tornado_compat.reason(self)
        self.finish()


@pytest.mark.gen_test
async def test_request_handler_state_and_exception_hook():
    app = tornado.web.Application([(r"/", _Pinned), (r"/stream", _Streaming)])
    server = HTTPServer(app)
    sock, port = bind_unused_port()
    server.add_sockets([sock])
    client = AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(f"http://127.0.0.1:{port}/", raise_error=False)
        assert response.code == 418 and response.body == b"hooked"
        assert response.headers["X-Default"] == "set"
        assert _Pinned.seen == {"before_write": (False, False), "after_finish": True}
        response = await client.fetch(HTTPRequest(f"http://127.0.0.1:{port}/stream", method="POST",
                                                  body=b"x" * 10), raise_error=False)
        assert response.code == 400
        assert _Streaming.seen == {"in_prepare": True, "in_post": False, "reason": "Pinned Reason"}
    finally:
        client.close()
        server.stop()
        await server.close_all_connections()


async def _answer(request: bytes, raw: bool, code: int = 200, length: int | None = 2,
                  close_in_head: bool = False) -> bytes:
    """One request to a server-side HTTP1Connection, answered through write_headers or
    write_response_head with the same headers; the bytes the client received."""
    client, server = _stream_pair()
    connection = HTTP1Connection(server, False, HTTP1ConnectionParameters())
    body = b"" if code in (204, 304) else b"ok"

    class Answer(httputil.HTTPMessageDelegate):
        def headers_received(self, start_line, headers):  # type: ignore[no-untyped-def]
            self.method = start_line.method

        def finish(self) -> None:
            start = httputil.ResponseStartLine("HTTP/1.1", code, httputil.responses[code])
            headers = httputil.HTTPHeaders({"X-Pin": "yes"})
            if length is not None:
                headers["Content-Length"] = str(length)
            if close_in_head:
                headers["Connection"] = "close"
            chunk = body if self.method != "HEAD" and body else None
            if raw:
                block = "".join(f"{n}: {v}\r\n" for n, v in headers.get_all()).encode()
                tornado_compat.write_response_head(connection, start, block, length, close_in_head, chunk)
            else:
                connection.write_headers(start, headers, chunk)
            connection.finish()

    reading = asyncio.ensure_future(connection.read_response(Answer()))
    await client.write(request)
    await reading
    await asyncio.sleep(0.05)
    connection.close()
    received = await client.read_until_close()
    return received


@pytest.mark.parametrize("request_head, code, length, close_in_head", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 200, 2, False),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 200, None, False),  # chunked
    (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 200, 2, False),
    (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 200, 2, True),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 200, 2, False),
    (b"GET / HTTP/1.0\r\n\r\n", 200, None, False),
    (b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", 200, 2, False),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 204, None, False),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 304, None, False),
])
@pytest.mark.gen_test
async def test_write_response_head_answers_as_write_headers_does(request_head, code, length, close_in_head):
    expected = await _answer(request_head, False, code, length, close_in_head)
    got = await _answer(request_head, True, code, length, close_in_head)

    def parts(data: bytes) -> tuple:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        return lines[0], sorted(lines[1:]), rest

    assert parts(got) == parts(expected)


@pytest.mark.gen_test
async def test_write_response_head_sent_at_once_is_done_at_once():
    """A head the socket takes whole is written without IOStream.write: its future is done
    when write_response_head returns and finish() ends the request then and there."""
    client, server = _stream_pair()
    connection = HTTP1Connection(server, False, HTTP1ConnectionParameters())
    outcome: dict = {}

    class Answer(httputil.HTTPMessageDelegate):
        def finish(self) -> None:
            start = httputil.ResponseStartLine("HTTP/1.1", 200, "OK")
            written = tornado_compat.write_response_head(connection, start, b"X-Pin: yes\r\n", 2, False, b"ok")
            outcome["done"] = written.done() and written.exception() is None
            connection.finish()

    reading = asyncio.ensure_future(connection.read_response(Answer()))
    await client.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await reading
    assert outcome["done"]
    assert await client.read_until(b"ok") == b"HTTP/1.1 200 OK\r\nX-Pin: yes\r\n\r\nok"
    connection.close()
    client.close()


class _Upgrade(_Echo):
    """An echo websocket whose 101 answer is written by finish_switching (``lean``) or by
    Tornado's own finish."""

    lean = True
    finished: list = []

    def set_default_headers(self) -> None:
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Content-Type", "text/html")  # dropped from a 1xx, as Tornado drops it

    def finish(self, chunk=None):  # type: ignore[no-untyped-def]
        if self.lean and chunk is None and self.get_status() == 101:
            return tornado_compat.finish_switching(self)
        return super().finish(chunk)

    def on_finish(self) -> None:
        _Upgrade.finished.append(self.get_status())


async def _upgrade(lean: bool) -> tuple[bytes, list]:
    """The raw 101 answer of a websocket upgrade, and the access log's statuses; then one echo."""
    logged: list = []
    sock, port = bind_unused_port()
    app = tornado.web.Application([("/ws", type("Upgrade", (_Upgrade,), {"lean": lean}))],
                                  log_function=lambda handler: logged.append(handler.get_status()))
    server = HTTPServer(app)
    server.add_sockets([sock])
    stream = IOStream(socket.socket())
    await stream.connect(("127.0.0.1", port))
    await stream.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = await stream.read_until(b"\r\n\r\n")
    await stream.write(_client_frame(1, b"after"))
    echo = await stream.read_bytes(7)
    assert echo == b"\x81\x05after"  # the websocket runs on the connection the 101 left
    stream.close()
    server.stop()
    return head, logged


@pytest.mark.gen_test
async def test_finish_switching_answers_the_upgrade_as_finish_does():
    _Upgrade.finished.clear()
    expected, expected_log = await _upgrade(lean=False)
    got, got_log = await _upgrade(lean=True)

    def parts(data: bytes) -> tuple:
        lines = data.split(b"\r\n")
        return lines[0], sorted(line for line in lines[1:] if not line.startswith(b"Date:"))

    assert parts(got) == parts(expected)
    assert b"Content-Type" not in got and b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in got  # RFC 6455's example key
    assert got_log == expected_log == [101]  # one access log line each
    assert _Upgrade.finished == [101, 101]  # on_finish ran in both


def test_finish_switching_refuses_a_header_with_a_line_break():
    # the check comes before anything is written: a stand-in connection that must stay untouched
    connection = unittest.mock.Mock(spec=HTTP1Connection)
    request = httputil.HTTPServerRequest(start_line=httputil.RequestStartLine("GET", "/ws", "HTTP/1.1"),
                                         headers=httputil.HTTPHeaders({"Host": "x"}), connection=connection)
    handler = tornado.web.RequestHandler(tornado.web.Application(), request)
    tornado_compat.response_headers(handler)["X-Bad"] = "a\r\nInjected: yes"
    handler.set_status(101)
    with pytest.raises(ValueError, match="CR or LF"):
        tornado_compat.finish_switching(handler)
    assert not connection.finish.called and not tornado_compat.headers_written(handler)


class _SlowEcho(_Echo):
    """A coroutine on_message: the next message must wait until it returned."""

    log: list = []

    async def on_message(self, message):  # type: ignore[no-untyped-def]
        _SlowEcho.log.append(("start", message))
        await asyncio.sleep(0.02)
        _SlowEcho.log.append(("end", message))
        self.write_message(message)


async def _raw_websocket(port: int, path: str) -> IOStream:
    stream = IOStream(socket.socket())
    await stream.connect(("127.0.0.1", port))
    await stream.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    await stream.read_until(b"\r\n\r\n")
    return stream


@pytest.mark.gen_test(timeout=20)
async def test_fast_websocket_protocol_keeps_no_task_per_open_socket_and_waits_for_on_message():
    sock, port = bind_unused_port()
    server = HTTPServer(tornado.web.Application([("/ws", _Echo), ("/slow", _SlowEcho)]))
    server.add_sockets([sock])
    sockets = [await _raw_websocket(port, "/ws") for _ in range(5)]
    for i, stream in enumerate(sockets):
        await stream.write(_client_frame(1, b"hi%d" % i))
        assert await stream.read_bytes(5) == b"\x81\x03hi%d" % i  # each one reads and answers
    handler_tasks = [t for t in asyncio.all_tasks() if "_execute" in t.get_coro().__qualname__]
    assert handler_tasks == []  # the handlers' coroutines ended once the sockets were open
    slow = await _raw_websocket(port, "/slow")
    await slow.write(_client_frame(1, b"m1") + _client_frame(1, b"m2") + _client_frame(1, b"m3"))
    assert await slow.read_bytes(12) == b"\x81\x02m1\x81\x02m2\x81\x02m3"
    assert _SlowEcho.log == [(step, m) for m in ("m1", "m2", "m3") for step in ("start", "end")]
    for stream in sockets + [slow]:
        stream.close()
    server.stop()


class _Forgetful(_Echo):
    """Drops its handshake once open; weak references say whether anything still holds it."""

    refs: list = []

    def open(self) -> None:
        request = self.request
        _Forgetful.refs = [weakref.ref(request.headers), weakref.ref(request.server_connection)]
        tornado_compat.drop_handshake(self)


@pytest.mark.gen_test(timeout=20)
async def test_drop_handshake_leaves_nothing_holding_the_request_headers():
    sock, port = bind_unused_port()
    server = HTTPServer(tornado.web.Application([("/ws", _Forgetful)]))
    server.add_sockets([sock])
    stream = await _raw_websocket(port, "/ws")
    await stream.write(_client_frame(1, b"still"))
    assert await stream.read_bytes(7) == b"\x81\x05still"  # the websocket runs without them
    gc.collect()
    headers, server_connection = (ref() for ref in _Forgetful.refs)
    assert headers is None  # neither the request nor its detached HTTP1Connection keeps them
    assert server_connection is None
    stream.close()
    server.stop()


class _TlsEcho(_Echo):
    closed: list = []

    def on_close(self) -> None:
        _TlsEcho.closed.append(self.close_code)


async def _tls_exchange(sock: socket.socket, tls: ssl.SSLObject, outgoing: ssl.MemoryBIO,
                        incoming: ssl.MemoryBIO, until: bytes) -> bytes:
    """Read and decrypt from ``sock`` until the plain text holds ``until``."""
    loop, plain = asyncio.get_running_loop(), b""
    while until not in plain:
        data = await loop.sock_recv(sock, 65536)
        assert data, f"the server closed before sending {until!r}"
        incoming.write(data)
        try:
            plain += tls.read(65536)
        except ssl.SSLWantReadError:
            pass
        if outgoing.pending:
            await loop.sock_sendall(sock, outgoing.read())
    return plain


@pytest.mark.gen_test(timeout=20)
async def test_fast_websocket_protocol_ends_the_socket_when_a_read_fails_at_once():
    # A frame and, right behind it, a TLS record that does not decrypt: the frame is handled,
    # then the reader's next read_bytes raises ssl.SSLError itself (not StreamClosedError),
    # and on_close must still run, as in Tornado's frame loop.
    _TlsEcho.closed = []
    certs = os.path.join(os.path.dirname(tornado.__file__), "test")  # Tornado's own test pair
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(os.path.join(certs, "test.crt"), os.path.join(certs, "test.key"))
    sock, port = bind_unused_port()
    server = HTTPServer(tornado.web.Application([("/ws", _TlsEcho)]), ssl_options=server_tls)
    server.add_sockets([sock])
    client_tls = ssl.create_default_context()
    client_tls.check_hostname, client_tls.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_tls.wrap_bio(incoming, outgoing)
    loop = asyncio.get_running_loop()
    raw = socket.socket()
    raw.setblocking(False)
    await loop.sock_connect(raw, ("127.0.0.1", port))
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            await loop.sock_sendall(raw, outgoing.read())
            incoming.write(await loop.sock_recv(raw, 65536))
    tls.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    await loop.sock_sendall(raw, outgoing.read())
    assert b" 101 " in await _tls_exchange(raw, tls, outgoing, incoming, b"\r\n\r\n")
    tls.write(_client_frame(1, b"hi"))
    forged = b"\x17\x03\x03\x00\x20" + bytes(range(32))  # application data no key made
    await loop.sock_sendall(raw, outgoing.read() + forged)
    assert b"\x81\x02hi" in await _tls_exchange(raw, tls, outgoing, incoming, b"hi")
    for _ in range(500):
        if _TlsEcho.closed:
            break
        await asyncio.sleep(0.01)
    assert _TlsEcho.closed == [None]  # ended without a close frame, but ended
    raw.close()
    server.stop()


class _Tracked(_Echo):
    """Remembers its handlers, greets from a callback right after open, ends on "bye"."""

    handlers: list = []
    closed: list = []

    def open(self) -> None:
        _Tracked.handlers.append(self)
        # runs after _receive_frame_loop began handing the socket over, before the transport exists
        asyncio.get_running_loop().call_soon(self.write_message, "hello")

    def on_message(self, message):  # type: ignore[no-untyped-def]
        if message == "bye":
            self.close(4000, "bye")
        else:
            super().on_message(message)

    def on_close(self) -> None:
        _Tracked.closed.append(self.close_code)


def _tracked_server() -> tuple[HTTPServer, int]:
    """A server of _Tracked websockets on a free port, its records emptied."""
    _Tracked.handlers, _Tracked.closed = [], []
    sock, port = bind_unused_port()
    server = HTTPServer(tornado.web.Application([("/ws", _Tracked)]))
    server.add_sockets([sock])
    return server, port


async def _wait_for(predicate) -> None:  # type: ignore[no-untyped-def]
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never happened")


@pytest.mark.gen_test(timeout=20)
async def test_fast_websocket_protocol_moves_the_socket_to_a_transport_after_the_handshake():
    # The handover leans on IOStream's _read_buffer_size, _write_buffer and _state (with
    # IOLoop.remove_handler, as IOStream.close does) and on the protocol reaching its
    # stream through self.stream only.
    server, port = _tracked_server()
    stream = await _raw_websocket(port, "/ws")
    assert await stream.read_bytes(7) == b"\x81\x05hello"  # written while the socket changed hands
    handler = _Tracked.handlers[0]
    assert tornado_compat.websocket_transport(handler) is not None
    await stream.write(_client_frame(1, b"on"))
    assert await stream.read_bytes(4) == b"\x81\x02on"
    tornado_compat.write_now(handler.ws_connection.stream, b"\x81\x03now")  # the fan-out's writer
    assert await stream.read_bytes(5) == b"\x81\x03now"
    await stream.write(_client_frame(1, b"bye"))  # the server closes: close frame, then the socket
    assert await stream.read_bytes(7) == b"\x88\x05\x0f\xa0bye"
    await stream.write(_client_frame(8, b"\x0f\xa0"))  # the client's answer ends the handshake
    await _wait_for(lambda: _Tracked.closed)
    assert _Tracked.closed == [4000]
    assert await stream.read_until_close() == b""  # and the server closed the connection

    gone = await _raw_websocket(port, "/ws")  # a peer that goes away without a close frame
    assert await gone.read_bytes(7) == b"\x81\x05hello"
    gone_stream = _Tracked.handlers[1].ws_connection.stream
    gone.close()
    await _wait_for(lambda: len(_Tracked.closed) == 2)
    assert _Tracked.closed[1] is None
    with pytest.raises(StreamClosedError):  # a write after the end fails as on an IOStream
        tornado_compat.write_now(gone_stream, b"\x81\x01x")
    server.stop()


@pytest.mark.gen_test(timeout=20)
async def test_fast_websocket_protocol_keeps_the_iostream_when_bytes_came_with_the_head():
    # A frame in the same write as the upgrade request is in the IOStream's buffer when the
    # socket would change hands: the IOStream keeps it, read by the chunk reader.
    server, port = _tracked_server()
    stream = IOStream(socket.socket())
    await stream.connect(("127.0.0.1", port))
    await stream.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                       + _client_frame(1, b"early"))
    await stream.read_until(b"\r\n\r\n")
    answers = await stream.read_bytes(7 + 7)
    assert sorted((answers[:7], answers[7:])) == [b"\x81\x05early", b"\x81\x05hello"]
    assert tornado_compat.websocket_transport(_Tracked.handlers[0]) is None
    stream.close()
    await _wait_for(lambda: _Tracked.closed)
    server.stop()


@pytest.mark.gen_test(timeout=20)
async def test_a_transports_close_drops_what_a_peer_that_stopped_reading_left_unwritten():
    # IOStream.close's rule: a peer that reads nothing cannot keep the connection open.
    server, port = _tracked_server()
    stream = await _raw_websocket(port, "/ws")  # and never reads again
    await _wait_for(lambda: _Tracked.handlers)
    handler = _Tracked.handlers[0]
    transport = tornado_compat.websocket_transport(handler)
    assert transport is not None
    frame = b"\x82\x7f" + (1 << 20).to_bytes(8, "big") + bytes(1 << 20)
    for _ in range(64):  # 64 MiB: more than the kernel's buffers take
        tornado_compat.write_now(handler.ws_connection.stream, frame)
    assert transport.get_write_buffer_size() > 0
    handler.ws_connection.stream.close()
    await _wait_for(lambda: _Tracked.closed)  # connection_lost came: the socket is gone
    stream.close()
    server.stop()

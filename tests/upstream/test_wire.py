"""The upstream response reader (upstream/wire.py) against raw loopback servers sending exact bytes.

Each server is an asyncio server whose script answers the requests of one connection; it
counts the connections it accepted, so keep-alive reuse is asserted from the upstream's
side. The client is the real PooledHTTPClient. No timing assertions (the short sleeps only
split the answer over several TCP segments).
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from tornado.simple_httpclient import HTTPStreamClosedError

from tornado_gateway.upstream.client import PooledHTTPClient
from tornado_gateway.upstream.wire import request_head


class Raw:
    """An asyncio server on loopback: ``script(reader, writer, n)`` serves its n-th connection."""

    def __init__(self, script):
        self.script = script
        self.accepts = 0
        self.requests: list[bytes] = []
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> "Raw":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.base = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def _serve(self, reader, writer):
        self.accepts += 1
        self.tasks.add(asyncio.current_task())
        writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await self.script(self, reader, writer, self.accepts)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def request(self, reader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        return head

    async def close(self):
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


def answers(*responses, close=False):
    """A script answering successive requests on a connection with ``responses`` (bytes, or a
    list of pieces sent as separate segments), then closing when ``close``."""
    async def script(raw, reader, writer, n):
        for response in responses:
            await raw.request(reader)
            for piece in (response if isinstance(response, list) else [response]):
                writer.write(piece)
                await writer.drain()
                if isinstance(response, list):
                    await asyncio.sleep(0.005)
        if close:
            return
        await reader.read()  # keep the connection open until the client closes it
    return script


async def serve(*responses, close=False) -> Raw:
    return await Raw(answers(*responses, close=close)).start()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.gen_test
async def test_chunked_with_extensions_and_trailers_is_read_and_the_connection_reused(client):
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;name=value\r\nhello\r\n1 ; quoted=\"a b\";x\r\n \r\n"
               b"5\r\nworld\r\n0;last\r\nX-Checksum: 1234\r\nX-Other: y\r\n\r\n")
    raw = await serve(chunked, OK)
    try:
        pieces = []
        response = await client.fetch(raw.base + "/a", streaming_callback=pieces.append)
        assert (response.code, b"".join(pieces)) == (200, b"hello world")
        assert (await client.fetch(raw.base + "/b")).body == b"ok"
    finally:
        await raw.close()
    assert raw.accepts == 1


@pytest.mark.gen_test
async def test_an_answer_split_over_many_segments_is_put_together(client):
    pieces = [b"HTT", b"P/1.1 200 OK\r", b"\nContent-Le", b"ngth: 10\r\n", b"\r", b"\n01234",
              b"56789"]
    chunked = [b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n4", b"\r\nab",
               b"cd\r", b"\n3\r\nefg", b"\r\n0\r", b"\n", b"\r\n"]
    raw = await serve(pieces, chunked)
    try:
        assert (await client.fetch(raw.base + "/")).body == b"0123456789"
        response = await client.fetch(raw.base + "/")
        assert (response.code, response.body) == (201, b"abcdefg")
    finally:
        await raw.close()
    assert raw.accepts == 1


@pytest.mark.parametrize("bad", [
    b"zz\r\nhello\r\n0\r\n\r\n",             # not hex
    b"-5\r\nhello\r\n0\r\n\r\n",             # a sign
    b"5\r\nhelloXX0\r\n\r\n",                # data not followed by CRLF
    b"5 x\r\nhello\r\n0\r\n\r\n",            # junk after the size that is no extension
    b"5;a\x01b\r\nhello\r\n0\r\n\r\n",       # a control character in an extension
    b"1" * 70 + b"\r\nx\r\n0\r\n\r\n",       # an absurd size
    b"0\r\nno colon in this trailer\r\n\r\n",
])
@pytest.mark.gen_test
async def test_bad_chunked_framing_fails_the_fetch_and_drops_the_connection(client, bad):
    raw = await serve(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + bad)
    try:
        with pytest.raises(HTTPStreamClosedError):
            await client.fetch(raw.base + "/", raise_error=False)
        assert all(not pool.idle for pool in client.pools.values())
    finally:
        await raw.close()


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",  # both
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/2 200 OK\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\n",
])
@pytest.mark.gen_test
async def test_bad_framing_in_the_head_fails_the_fetch(client, head):
    raw = await serve(head + b"ok")
    try:
        with pytest.raises(HTTPStreamClosedError):
            await client.fetch(raw.base + "/", raise_error=False)
    finally:
        await raw.close()


@pytest.mark.gen_test
async def test_repeated_equal_content_lengths_are_one(client):
    raw = await serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", OK)
    try:
        assert (await client.fetch(raw.base + "/")).body == b"ok"
        assert (await client.fetch(raw.base + "/")).body == b"ok"
    finally:
        await raw.close()
    assert raw.accepts == 1


@pytest.mark.gen_test
async def test_oversize_head_fails_the_fetch(io_loop):
    client = PooledHTTPClient(force_instance=True, max_header_size=1024)
    raw = await serve(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 2000 + b"\r\nContent-Length: 2\r\n\r\nok")
    try:
        with pytest.raises(HTTPStreamClosedError):
            await client.fetch(raw.base + "/", raise_error=False)
    finally:
        await raw.close()
        client.close()


@pytest.mark.gen_test
async def test_default_head_limit_is_64_kib(client):
    big = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"b" * 70000 + b"\r\nContent-Length: 2\r\n\r\nok"
    fits = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"b" * 60000 + b"\r\nContent-Length: 2\r\n\r\nok"
    raw = await serve(fits, big)
    try:
        assert (await client.fetch(raw.base + "/")).body == b"ok"
        with pytest.raises(HTTPStreamClosedError):
            await client.fetch(raw.base + "/", raise_error=False)
    finally:
        await raw.close()


@pytest.mark.gen_test
async def test_connection_close_answer_is_not_reused(client):
    raw = await serve(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", OK)
    try:
        assert (await client.fetch(raw.base + "/")).body == b"ok"
        assert (await client.fetch(raw.base + "/")).body == b"ok"  # on a new connection
    finally:
        await raw.close()
    assert raw.accepts == 2


@pytest.mark.gen_test
async def test_http_10_body_until_close_and_keep_alive(client):
    until_close = await serve(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it", close=True)
    keep_alive = await serve(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
                             b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nyes")
    try:
        for _ in range(2):
            assert (await client.fetch(until_close.base + "/")).body == b"all of it"
        assert (await client.fetch(keep_alive.base + "/")).body == b"ok"
        assert (await client.fetch(keep_alive.base + "/")).body == b"yes"
    finally:
        await until_close.close()
        await keep_alive.close()
    assert (until_close.accepts, keep_alive.accepts) == (2, 1)


@pytest.mark.gen_test
async def test_answers_without_a_body_leave_the_connection_reusable(client):
    raw = await serve(b"HTTP/1.1 204 No Content\r\n\r\n",
                      b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",  # the length is not read
                      b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n",  # to a HEAD
                      b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n" + OK)
    try:
        assert (await client.fetch(raw.base + "/", raise_error=False)).code == 204
        assert (await client.fetch(raw.base + "/", raise_error=False)).code == 304
        head = await client.fetch(raw.base + "/", method="HEAD")
        assert (head.code, head.body, head.headers["Content-Length"]) == (200, b"", "12")
        final = await client.fetch(raw.base + "/")
        assert (final.code, final.body) == (200, b"ok")
    finally:
        await raw.close()
    assert raw.accepts == 1


@pytest.mark.parametrize("cut", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nonly5",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",  # no end of the trailer section
    b"HTTP/1.1 200 OK\r\nContent-Le",
])
@pytest.mark.gen_test
async def test_premature_close_fails_the_fetch(client, cut):
    raw = await serve(cut, close=True)
    try:
        with pytest.raises(HTTPStreamClosedError):
            await client.fetch(raw.base + "/", raise_error=False)
    finally:
        await raw.close()


@pytest.mark.gen_test
async def test_request_goes_out_as_one_head_with_its_body(client):
    raw = await serve(OK)
    try:
        await client.fetch(raw.base + "/p?q=1", method="POST", body=b"",
                           headers={"X-One": "1"})
    finally:
        await raw.close()
    head = raw.requests[0]
    assert head.startswith(b"POST /p?q=1 HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 0\r\n" in head and b"\r\nX-One: 1\r\n" in head


def test_request_head_refuses_line_breaks():
    assert request_head("GET", "/", {"A": "b"}, False) == b"GET / HTTP/1.1\r\nA: b\r\n\r\n"
    assert request_head("POST", "/", {}, True) == b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    for headers, path in (({"A": "b\r\nX: y"}, "/"), ({"A\n": "b"}, "/"), ({}, "/\r\nX: y")):
        with pytest.raises(ValueError):
            request_head("GET", path, headers, False)


async def _tornado_request_bytes(method: str, headers: dict, chunk: bytes | None) -> bytes:
    """What Tornado's own HTTP1Connection sends for this request (the former writer)."""
    from tornado import httputil
    from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
    from tornado.iostream import IOStream

    left, right = socket.socketpair()
    client, server = IOStream(left), IOStream(right)
    connection = HTTP1Connection(client, True, HTTP1ConnectionParameters())
    connection.write_headers(httputil.RequestStartLine(method, "/p?q=1", ""), httputil.HTTPHeaders(headers),
                             chunk)
    connection.finish()
    await asyncio.sleep(0.05)
    client.close()
    return await server.read_until_close()


async def _wire_request_bytes(method: str, headers: dict, chunk: bytes | None) -> bytes:
    from tornado.iostream import IOStream

    from tornado_gateway.upstream.wire import BodyWriter, send

    left, right = socket.socketpair()
    client, server = IOStream(left), IOStream(right)
    chunked = method in ("POST", "PUT", "PATCH") and "Content-Length" not in headers
    send(client, request_head(method, "/p?q=1", headers, chunked))
    length = headers.get("Content-Length")
    writer = BodyWriter(client, chunked, int(length) if length is not None else None)
    if chunk:
        writer.write(chunk)
    writer.finish()
    await asyncio.sleep(0.05)
    client.close()
    return await server.read_until_close()


@pytest.mark.parametrize("method, headers, chunk", [
    ("GET", {"Host": "u:1", "X-Request-ID": "r1", "Cookie": "a=1; b=2"}, None),
    ("POST", {"Host": "u:1", "Content-Length": "2"}, b"ok"),
    ("POST", {"Host": "u:1"}, b"streamed"),  # no Content-Length: chunked
    ("PUT", {"Host": "u:1", "Content-Length": "0"}, None),
    ("DELETE", {"Host": "u:1"}, None),
])
@pytest.mark.gen_test
async def test_the_request_goes_out_as_tornados_writer_sent_it(method, headers, chunk):
    assert await _wire_request_bytes(method, headers, chunk) == await _tornado_request_bytes(method, headers, chunk)

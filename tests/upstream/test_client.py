"""PooledHTTPClient against real upstreams on loopback: Tornado apps and raw sockets.

Each upstream counts the TCP connections it accepted, so keep-alive reuse is
asserted from the upstream's side. No timing assertions: timeouts are only
used to provoke the timeout errors.
"""

from __future__ import annotations

import asyncio
import gzip
import random
import socket
import struct
import threading

import pytest
import tornado.web
from tornado import httputil
from tornado.httpclient import HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.simple_httpclient import HTTPStreamClosedError, HTTPTimeoutError

from tornado_gateway.upstream.client import PooledHTTPClient
from tornado_gateway.upstream.head import parse_response_head

MIB = 1024 * 1024


# -- upstreams -------------------------------------------------------------------

class CountingServer(HTTPServer):
    """A Tornado HTTPServer that counts accepted connections."""

    accepts = 0

    def handle_stream(self, stream, address):
        self.accepts += 1
        super().handle_stream(stream, address)


class Hello(tornado.web.RequestHandler):
    def get(self):
        self.write("hello")

    def post(self):
        self.write(b"got %d" % len(self.request.body))

    def head(self):
        self.set_header("Content-Length", "5")


class CloseAfter(tornado.web.RequestHandler):
    def get(self):
        self.set_header("Connection", "close")
        self.write("bye")


class Chunked(tornado.web.RequestHandler):
    async def get(self):
        for i in range(5):
            self.write(f"part{i};")
            await self.flush()


class NoContent(tornado.web.RequestHandler):
    def get(self):
        self.set_status(204)


class NotModified(tornado.web.RequestHandler):
    def get(self):
        self.set_status(304)


class Redirect(tornado.web.RequestHandler):
    def get(self):
        self.redirect("/hello", status=302)


class Gzipped(tornado.web.RequestHandler):
    def get(self):
        self.set_header("Content-Encoding", "gzip")
        self.write(gzip.compress(b"zipped"))


class Slow(tornado.web.RequestHandler):
    async def get(self):
        await self.settings["release"].wait()
        self.write("late")


class Never(tornado.web.RequestHandler):
    async def get(self):
        await asyncio.Event().wait()


@tornado.web.stream_request_body
class Sink(tornado.web.RequestHandler):
    def prepare(self):
        self.request.connection.set_max_body_size(1 << 40)
        self.received = 0
        self.chunks = 0

    def data_received(self, chunk):
        self.received += len(chunk)
        self.chunks += 1

    def post(self):
        self.write({"received": self.received, "chunked": "Content-Length" not in self.request.headers})

    put = post


@pytest.fixture
def upstream(io_loop):
    release = asyncio.Event()
    app = tornado.web.Application([
        (r"/hello", Hello), (r"/close", CloseAfter), (r"/chunked", Chunked),
        (r"/204", NoContent), (r"/304", NotModified), (r"/redirect", Redirect),
        (r"/gzip", Gzipped), (r"/slow", Slow), (r"/never", Never), (r"/sink", Sink),
    ], release=release)
    server = CountingServer(app, max_body_size=1 << 40)
    sockets = bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    server.base = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    server.release = release
    yield server
    server.stop()


class RawUpstream:
    """A blocking socket server in a thread; ``script(conn, n)`` serves the n-th connection."""

    def __init__(self, script):
        self.script = script
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.base = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.accepts = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepts += 1
            threading.Thread(target=self._run, args=(conn, self.accepts), daemon=True).start()

    def _run(self, conn, n):
        try:
            self.script(conn, n)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.listener.close()


def read_request(conn) -> bytes:
    """Read one request head (requests in these scripts have no body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


def reset(conn):
    """Close with RST instead of FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# -- keep-alive -----------------------------------------------------------------

@pytest.mark.gen_test
async def test_sequential_requests_share_one_connection(client, upstream):
    for _ in range(20):
        response = await client.fetch(upstream.base + "/hello")
        assert response.body == b"hello"
    assert upstream.accepts == 1


@pytest.mark.gen_test
async def test_concurrent_requests_reuse_the_pooled_connections(client, upstream):
    # Eight requests held in flight at once need eight connections ...
    held = [asyncio.ensure_future(client.fetch(upstream.base + "/slow")) for _ in range(8)]
    for _ in range(500):
        if upstream.accepts == 8:
            break
        await asyncio.sleep(0.01)
    assert upstream.accepts == 8
    upstream.release.set()
    assert [r.body for r in await asyncio.gather(*held)] == [b"late"] * 8
    # ... and the next eight find them idle in the pool: no new connection.
    await asyncio.gather(*(client.fetch(upstream.base + "/hello") for _ in range(8)))
    assert upstream.accepts == 8


@pytest.mark.gen_test
async def test_connection_close_response_is_not_reused(client, upstream):
    for _ in range(3):
        assert (await client.fetch(upstream.base + "/close")).body == b"bye"
    assert upstream.accepts == 3


@pytest.mark.gen_test
async def test_request_saying_connection_close_is_not_reused(client, upstream):
    for _ in range(2):
        await client.fetch(upstream.base + "/hello", headers={"Connection": "close"})
    assert upstream.accepts == 2


@pytest.mark.gen_test
async def test_connections_above_the_cap_wait_in_a_queue(io_loop, upstream):
    client = PooledHTTPClient(force_instance=True, max_connections_per_host=2)
    try:
        pending = [client.fetch(upstream.base + "/slow") for _ in range(6)]
        queued = client.fetch(upstream.base + "/hello")  # waits behind the slow ones
        await asyncio.sleep(0.05)
        assert not queued.done()
        upstream.release.set()
        responses = await asyncio.gather(*pending, queued)
    finally:
        client.close()
    assert [r.body for r in responses] == [b"late"] * 6 + [b"hello"]
    assert upstream.accepts == 2


@pytest.mark.gen_test
async def test_queue_wait_counts_against_connect_timeout(io_loop, upstream):
    client = PooledHTTPClient(force_instance=True, max_connections_per_host=1)
    try:
        holder = client.fetch(upstream.base + "/slow")
        with pytest.raises(HTTPTimeoutError, match="Timeout in request queue"):
            await client.fetch(upstream.base + "/hello", connect_timeout=0.2)
        upstream.release.set()
        assert (await holder).body == b"late"
    finally:
        client.close()


@pytest.mark.gen_test
async def test_idle_connections_are_evicted(io_loop, upstream):
    client = PooledHTTPClient(force_instance=True, idle_timeout=0.1)
    try:
        await client.fetch(upstream.base + "/hello")
        pool = next(iter(client.pools.values()))
        while pool.idle:  # the sweeper runs every idle_timeout / 2
            await asyncio.sleep(0.05)
        await client.fetch(upstream.base + "/hello")
    finally:
        client.close()
    assert upstream.accepts == 2


# -- stale connections ------------------------------------------------------------

@pytest.mark.gen_test
async def test_pooled_connection_closed_by_upstream_is_replaced(client):
    def answer_once_then_close(conn, n):
        read_request(conn)
        conn.sendall(OK_RESPONSE)  # keep-alive response, then the upstream hangs up
    raw = RawUpstream(answer_once_then_close)
    try:
        for _ in range(3):
            assert (await client.fetch(raw.base + "/")).body == b"ok"
    finally:
        raw.close()
    assert raw.accepts == 3


def second_request_dies(conn, n):
    """Answer one request, then reset the connection when the next one arrives."""
    read_request(conn)
    conn.sendall(OK_RESPONSE)
    read_request(conn)  # the upstream closed it while our request was on its way
    reset(conn)


@pytest.mark.gen_test
async def test_request_on_a_connection_closed_in_flight_is_retried_once(client):
    raw = RawUpstream(second_request_dies)
    try:
        assert (await client.fetch(raw.base + "/")).body == b"ok"
        assert (await client.fetch(raw.base + "/", method="POST", body=b"replayable")).body == b"ok"
    finally:
        raw.close()
    assert raw.accepts == 2


@pytest.mark.gen_test
async def test_started_upload_on_a_dead_connection_is_not_replayed(client):
    raw = RawUpstream(second_request_dies)
    calls = []

    async def producer(write):
        calls.append(1)
        await write(b"x" * 10)

    try:
        await client.fetch(raw.base + "/")
        with pytest.raises(HTTPStreamClosedError):
            await client.fetch(raw.base + "/", method="POST", body_producer=producer,
                               headers={"Content-Length": "10"})
    finally:
        raw.close()
    assert calls == [1]  # the producer ran once: its data cannot be sent again


# -- failures ----------------------------------------------------------------------

@pytest.mark.gen_test
async def test_connect_refused_raises_oserror(client):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OSError):
        await client.fetch(f"http://127.0.0.1:{port}/", raise_error=False)


@pytest.mark.gen_test
async def test_connect_timeout(client):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # one connection fills the accept queue; later SYNs are dropped
    filler = socket.create_connection(listener.getsockname())
    try:
        with pytest.raises(HTTPTimeoutError, match="^Timeout while connecting"):
            await client.fetch("http://127.0.0.1:%d/" % listener.getsockname()[1],
                               connect_timeout=0.2, raise_error=False)
    finally:
        filler.close()
        listener.close()


@pytest.mark.gen_test
async def test_request_timeout(client, upstream):
    with pytest.raises(HTTPTimeoutError, match="^Timeout during request$"):
        await client.fetch(upstream.base + "/never", request_timeout=0.2, raise_error=False)
    assert (await client.fetch(upstream.base + "/hello")).body == b"hello"


@pytest.mark.gen_test
async def test_upstream_reset_mid_body_raises_stream_closed(client):
    def reset_mid_body(conn, n):
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        reset(conn)
    raw = RawUpstream(reset_mid_body)
    received = []
    try:
        with pytest.raises(HTTPStreamClosedError):
            await client.fetch(raw.base + "/", streaming_callback=received.append,
                               raise_error=False)
    finally:
        raw.close()
    assert sum(map(len, received)) <= 1000


@pytest.mark.gen_test
async def test_upstream_closing_before_answering_raises_stream_closed(client):
    raw = RawUpstream(lambda conn, n: read_request(conn))  # reads, then hangs up
    try:
        with pytest.raises(HTTPStreamClosedError):
            await client.fetch(raw.base + "/", raise_error=False)
    finally:
        raw.close()


def _tornado_parse(data: bytes):
    text = data.decode("latin1").lstrip("\r\n")
    eol = text.find("\n")
    return text[:eol].rstrip("\r"), httputil.HTTPHeaders.parse(text[eol:])


def test_response_head_parser_accepts_and_refuses_exactly_what_tornado_does():
    rng = random.Random(20261201)
    alphabet = ["a", "Z", "0", "-", "_", "!", ":", " ", "\t", "\r", "\x00", "\x1f", "\x7f", "\xe9",
                "\xff", "(", "@", "/", ";", "="]
    refused = 0
    for _ in range(20000):
        lines = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
                 for _ in range(rng.randrange(1, 4))]
        if rng.random() < 0.5:  # a well-formed name, and a value of visible characters and blanks
            lines = [f"X-{i}: " + "".join(c for c in line if c in "aZ0-_!:( @/;=\xe9\xff \t")
                     for i, line in enumerate(lines)]
        data = ("HTTP/1.1 200 OK\r\n" + "".join(line + rng.choice(["\r\n", "\n"]) for line in lines)
                + "\r\n").encode("latin1")
        outcomes = []
        for parse in (_tornado_parse, parse_response_head):
            try:
                start, headers = parse(data)
                outcomes.append((start, list(headers.get_all())))
            except httputil.HTTPInputError:
                outcomes.append("refused")
        assert outcomes[0] == outcomes[1], data
        refused += outcomes[0] == "refused"
    assert 1000 < refused < 19000  # both kinds were tried


@pytest.mark.parametrize("bad_line", [b" folded: x", b"Bad Name: x", b"X: a\x00b", b"X: a\rb", b"NoColon"])
@pytest.mark.gen_test
async def test_malformed_response_header_fails_the_fetch_and_drops_the_connection(client, bad_line):
    def answer(conn, n):
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + bad_line + b"\r\n\r\nok")
    raw = RawUpstream(answer)
    try:
        with pytest.raises(HTTPStreamClosedError):
            await client.fetch(raw.base + "/", raise_error=False)
        assert client.pools and all(not pool.idle for pool in client.pools.values())
    finally:
        raw.close()


@pytest.mark.gen_test
async def test_streaming_callback_error_is_raised_and_connection_dropped(client, upstream):
    def boom(chunk):
        raise RuntimeError("client went away")
    with pytest.raises(RuntimeError, match="client went away"):
        await client.fetch(upstream.base + "/hello", streaming_callback=boom)
    assert (await client.fetch(upstream.base + "/hello")).body == b"hello"
    assert upstream.accepts == 2


# -- streaming ---------------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_slow_streaming_callback_holds_back_the_upstream(client):
    body_size = 128 * MIB
    progress = {"sent": 0}
    stalled = threading.Event()

    def big_body(conn, n):
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % body_size)
        conn.setblocking(False)
        block = b"x" * (256 * 1024)
        import select
        while progress["sent"] < body_size:
            _, writable, _ = select.select([], [conn], [], 0.5)
            if not writable:
                stalled.set()  # the client stopped reading: TCP buffers are full
                select.select([], [conn], [], None)
                continue
            try:
                progress["sent"] += conn.send(block[: body_size - progress["sent"]])
            except BlockingIOError:
                continue

    raw = RawUpstream(big_body)
    go_on = asyncio.Event()
    delivered = {"bytes": 0, "chunks": 0}

    async def slow_consumer(chunk):
        delivered["bytes"] += len(chunk)
        delivered["chunks"] += 1
        if delivered["chunks"] == 1:
            await go_on.wait()  # a slow client: nothing more is consumed until told

    try:
        fetch = client.fetch(raw.base + "/", streaming_callback=slow_consumer, request_timeout=60)
        await asyncio.get_running_loop().run_in_executor(None, stalled.wait, 25)
        assert stalled.is_set(), "the upstream never had to wait for the client"
        sent_while_blocked = progress["sent"]
        assert delivered["chunks"] == 1
        # Only socket buffers and one read-ahead hold the difference, not the body.
        assert sent_while_blocked < 32 * MIB
        go_on.set()
        response = await fetch
    finally:
        raw.close()
    assert response.code == 200
    assert delivered["bytes"] == body_size


@pytest.mark.gen_test
async def test_body_producer_streams_the_upload(client, upstream):
    chunks = 50

    async def producer(write):
        for _ in range(chunks):
            await write(b"y" * 65536)

    response = await client.fetch(upstream.base + "/sink", method="POST", body_producer=producer,
                                  headers={"Content-Length": str(chunks * 65536)})
    assert response.body == b'{"received": 3276800, "chunked": false}'
    chunked = await client.fetch(upstream.base + "/sink", method="PUT", body_producer=producer)
    assert chunked.body == b'{"received": 3276800, "chunked": true}'
    assert upstream.accepts == 1


@pytest.mark.gen_test
async def test_chunked_response_is_read_whole_and_connection_reused(client, upstream):
    pieces = []
    response = await client.fetch(upstream.base + "/chunked", streaming_callback=pieces.append)
    assert response.headers.get("Transfer-Encoding") == "chunked"
    assert b"".join(pieces) == b"part0;part1;part2;part3;part4;"
    buffered = await client.fetch(upstream.base + "/chunked")
    assert buffered.body == b"part0;part1;part2;part3;part4;"
    assert upstream.accepts == 1


@pytest.mark.gen_test
async def test_head_204_and_304_have_no_body_and_keep_the_connection(client, upstream):
    head = await client.fetch(upstream.base + "/hello", method="HEAD")
    assert (head.code, head.body, head.headers["Content-Length"]) == (200, b"", "5")
    no_content = await client.fetch(upstream.base + "/204")
    assert (no_content.code, no_content.body) == (204, b"")
    not_modified = await client.fetch(upstream.base + "/304", raise_error=False)
    assert (not_modified.code, not_modified.body) == (304, b"")
    assert (await client.fetch(upstream.base + "/hello")).body == b"hello"
    assert upstream.accepts == 1


@pytest.mark.gen_test
async def test_redirects_and_compressed_bodies_pass_through(client, upstream):
    redirect = await client.fetch(upstream.base + "/redirect", raise_error=False)
    assert (redirect.code, redirect.headers["Location"]) == (302, "/hello")
    zipped = await client.fetch(upstream.base + "/gzip")
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped.body) == b"zipped"


@pytest.mark.gen_test
async def test_header_callback_sees_status_and_headers(client, upstream):
    lines = []
    await client.fetch(upstream.base + "/hello", header_callback=lines.append)
    assert lines[0].startswith("HTTP/1.1 200")
    assert "Content-Length: 5\r\n" in lines
    assert lines[-1] == "\r\n"


@pytest.mark.gen_test
async def test_ip_literal_skips_the_resolver(client, upstream):
    resolved = await client.resolver.resolve("127.0.0.1", 80)
    assert resolved == [(socket.AF_INET, ("127.0.0.1", 80))]
    assert (await client.fetch(upstream.base.replace("127.0.0.1", "localhost") + "/hello",
                               )).body == b"hello"


@pytest.mark.gen_test
async def test_https_upstream_is_pooled_too(client):
    import os
    import ssl

    import tornado.test
    certs = os.path.dirname(tornado.test.__file__)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(os.path.join(certs, "test.crt"), os.path.join(certs, "test.key"))
    server = CountingServer(tornado.web.Application([(r"/hello", Hello)]), ssl_options=context)
    sockets = bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    base = f"https://127.0.0.1:{sockets[0].getsockname()[1]}"
    try:
        for _ in range(3):
            response = await client.fetch(base + "/hello", validate_cert=False)
            assert response.body == b"hello"
        with pytest.raises(ssl.SSLError):  # the self-signed certificate is refused by default
            await client.fetch(base + "/hello")
    finally:
        server.stop()
    assert server.accepts == 2

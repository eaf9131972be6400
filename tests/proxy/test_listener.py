"""proxy.listener: every public connection starts on an asyncio transport until its first head
is in; the Upgrades take a plain websocket connect there, Tornado gets everything else with the
bytes already read (real sockets, a real HTTPServer)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
import tornado.web
from hypothesis import given, settings
from hypothesis import strategies as st
from tornado import httputil
from tornado.httpserver import HTTPServer

from tornado_gateway.proxy.listener import PublicListener, parse_head


class _Echo(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write(f"got {self.request.path} {self.request.headers.get('X-A', '-')}")

    def post(self) -> None:
        self.write(b"body " + self.request.body)


class _Upgrades:
    """Takes requests for /take: records them and answers on the transport itself."""

    def __init__(self) -> None:
        self.taken: list[tuple] = []
        self.offered = 0

    def take(self, request_conn, start_line, headers) -> bool:
        return False

    def take_transport(self, transport, start_line, headers, peer_ip) -> bool:
        self.offered += 1
        if start_line.path != "/take":
            return False
        self.taken.append((start_line.method, start_line.path, headers.get("X-A"), peer_ip))
        transport.write(b"taken\n")
        transport.close()
        return True


async def _listening(idle: float = 30.0, upgrades: _Upgrades | None = None):
    server = HTTPServer(tornado.web.Application([(r"/.*", _Echo)]))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    listener = PublicListener(server, upgrades or _Upgrades(), idle)
    await listener.start([sock], 1024)
    return listener, server, sock.getsockname()[1]


async def _closed_without_answer(reader: asyncio.StreamReader) -> bool:
    """The connection ended with nothing written: EOF, or a reset (unread bytes were left)."""
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


async def _exchange(port: int, *pieces: bytes, pause: float = 0.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
        if pause:
            await asyncio.sleep(pause)
    data = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return data


@pytest.mark.gen_test(timeout=20)
async def test_requests_reach_tornado_with_the_bytes_already_read():
    listener, server, port = await _listening()
    try:
        answer = await _exchange(port, b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"got /a 1")
        # a head in pieces, a byte at a time
        head = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
        answer = await _exchange(port, *(head[i:i + 1] for i in range(len(head))), pause=0.001)
        assert answer.endswith(b"got /b -")
        # a body right behind the head, and two requests in one write
        answer = await _exchange(port, b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz")
        assert answer.endswith(b"body xyz")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /d HTTP/1.1\r\nHost: x\r\n\r\nGET /e HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        both = await asyncio.wait_for(reader.read(), 5)
        assert both.count(b"HTTP/1.1 200") == 2 and b"got /d" in both and both.endswith(b"got /e -")
        writer.close()
        assert listener.waiting == set()
    finally:
        listener.stop()


@pytest.mark.gen_test(timeout=20)
async def test_other_spellings_of_a_head_get_tornados_answer():
    listener, server, port = await _listening()
    try:
        # bare LF line ends: Tornado reads them
        assert (await _exchange(port, b"GET /lf HTTP/1.1\nHost: x\n\n")).endswith(b"got /lf -")
        # a folded header line and a header without a colon: Tornado's 400
        assert (await _exchange(port, b"GET /f HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n")).startswith(b"HTTP/1.1 ")
        assert (await _exchange(port, b"GET /n HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n")).startswith(
            b"HTTP/1.1 400")
        # a head longer than Tornado's limit, never ended: Tornado's refusal, not a wait
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70000)
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431")
        writer.close()
    finally:
        listener.stop()


def test_parse_head_reads_only_plain_heads():
    line, headers = parse_head(b"GET /socket.io/?EIO=4 HTTP/1.1\r\nHost: x\r\nupgrade:  websocket \r\nA: 1\r\nA: 2")
    assert (line.method, line.path, line.version) == ("GET", "/socket.io/?EIO=4", "HTTP/1.1")
    assert headers["Upgrade"] == "websocket" and headers.get_list("A") == ["1", "2"]
    assert parse_head(b"GET / HTTP/1.1\r\nHost: x\nA: 1") is None  # a bare LF inside
    assert parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n folded") is None
    assert parse_head(b"GET / HTTP/1.1\r\nHost x") is None
    assert parse_head(b"GET / HTTP/1.1\r\nBad Name: x") is None  # Tornado's header-name check
    assert parse_head(b"NOT A REQUEST LINE") is None


def _line_by_line(head: bytes) -> tuple[httputil.RequestStartLine, list[tuple[str, str]]] | None:
    """The reference reading: each line through Tornado's own checks (HTTPHeaders.add)."""
    if b"\n" in head.replace(b"\r\n", b""):
        return None
    lines = head.decode("latin-1").split("\r\n")
    try:
        start_line = httputil.parse_request_start_line(lines[0])
        headers = httputil.HTTPHeaders()
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or line[:1] in (" ", "\t"):
                return None
            headers.add(name, value.strip(" \t"))
    except httputil.HTTPInputError:
        return None
    return start_line, sorted(headers.get_all())


_HEAD_BYTES = st.sampled_from([b"a", b"Z", b"0", b"-", b"_", b" ", b"\t", b":", b"\r", b"\n", b"\r\n",
                               b"\x00", b"\x7f", b"\x80", b"\xff", b"(", b"/", b"=", b"~"])


_CHUNK = st.lists(_HEAD_BYTES, max_size=8).map(b"".join)
_LINE = st.one_of(_CHUNK, st.tuples(st.sampled_from([b"Host", b"A", b"x-y", b"Bad Name", b""]), _CHUNK)
                  .map(lambda pair: pair[0] + b":" + pair[1]))


@settings(max_examples=400, deadline=None, database=None)
@given(st.lists(_LINE, max_size=5))
def test_parse_head_reads_every_head_as_tornado_checks_it_line_by_line(lines):
    """One match over the header block accepts exactly what Tornado's per-line checks accept,
    and reads the same headers (odd bytes, blanks, colons, bare CR and LF, repeats)."""
    head = b"\r\n".join([b"GET /socket.io/?EIO=4 HTTP/1.1", *lines])
    expected = _line_by_line(head)
    parsed = parse_head(head)
    if expected is None:
        assert parsed is None
    else:
        assert parsed is not None and parsed[0] == expected[0] and sorted(parsed[1].get_all()) == expected[1]


@pytest.mark.gen_test(timeout=20)
async def test_the_upgrades_take_a_connection_on_its_transport():
    upgrades = _Upgrades()
    listener, server, port = await _listening(upgrades=upgrades)
    try:
        assert await _exchange(port, b"GET /take HTTP/1.1\r\nHost: x\r\nX-A: 7\r\n\r\n") == b"taken\n"
        assert upgrades.taken == [("GET", "/take", "7", "127.0.0.1")]
        # with bytes behind the head (a pipelined request), only Tornado reads the connection
        answer = await _exchange(port, b"GET /take HTTP/1.1\r\nHost: x\r\n\r\nGET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200") and len(upgrades.taken) == 1
        # a whole head over Tornado's limit, in one read: Tornado's to refuse, never taken
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /take HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert b"taken" not in answer and (answer == b"" or answer.startswith(b"HTTP/1.1 431"))
        writer.close()
        assert len(upgrades.taken) == 1
    finally:
        listener.stop()


@pytest.mark.gen_test(timeout=20)
async def test_a_connection_without_a_head_is_dropped_when_idle_and_at_a_drain():
    listener, server, port = await _listening(idle=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /slow HTTP/1.1\r\n")  # a head that never ends
    assert await _closed_without_answer(reader)
    writer.close()
    assert listener.waiting == set()
    listener.stop()

    listener, server, port = await _listening(idle=30)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /half")
    for _ in range(100):
        if listener.waiting:
            break
        await asyncio.sleep(0.01)
    assert len(listener.waiting) == 1
    listener.stop()  # the drain: no new connections, the waiting one dropped
    assert await _closed_without_answer(reader)
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    # a client that goes away mid-head leaves nothing behind
    listener, server, port = await _listening()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /gone")
    await writer.drain()
    writer.close()
    for _ in range(100):
        if not listener.waiting:
            break
        await asyncio.sleep(0.01)
    assert listener.waiting == set()
    listener.stop()


@pytest.mark.gen_test(timeout=30)
async def test_connections_wait_in_the_listen_backlog_while_the_loop_is_busy():
    # the loop listens again on the bound socket: with its default backlog (100) a storm's
    # SYNs beyond it are dropped and retried a second or more later
    listener, server, port = await _listening()
    try:
        def connect_all() -> int:
            made = []
            for _ in range(300):
                client = socket.socket()
                client.settimeout(0.5)
                try:
                    client.connect(("127.0.0.1", port))
                    made.append(client)
                except OSError:
                    client.close()
            for client in made:
                client.close()
            return len(made)

        loop = asyncio.get_running_loop()
        loop.call_soon(time.sleep, 2.0)  # the loop accepts nothing meanwhile
        assert await loop.run_in_executor(None, connect_all) == 300
    finally:
        listener.stop()

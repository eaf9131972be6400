"""upstream/stream.py: a pooled plain-TCP connection moved from its IOStream to a transport
reads, writes and ends as IOStream would (real loopback sockets, an asyncio server as the
upstream). No timing assertions: every wait is for a marker."""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

import pytest
from tornado.iostream import IOStream, StreamClosedError, UnsatisfiableReadError
from tornado.tcpclient import TCPClient

from tornado_gateway.upstream.stream import TransportConnection, buffered, on_transport


class Peer:
    """The upstream side of one connection: its reader and writer once accepted."""

    def __init__(self) -> None:
        self.accepted: asyncio.Future = asyncio.get_running_loop().create_future()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.set_result((reader, writer))

    async def close(self) -> None:
        if self.accepted.done():
            self.accepted.result()[1].close()
        self.server.close()
        await self.server.wait_closed()


@contextlib.asynccontextmanager
async def _connected() -> AsyncIterator[tuple[TransportConnection, asyncio.StreamReader, asyncio.StreamWriter]]:
    """A pooled connection's transport side and its upstream's reader and writer; both closed after."""
    peer = Peer()
    port = await peer.start()
    stream = await TCPClient().connect("127.0.0.1", port)
    connection = await on_transport(stream, 100 * 1024 * 1024, 16 * 1024)
    assert isinstance(connection, TransportConnection)
    reader, writer = await peer.accepted
    try:
        yield connection, reader, writer
    finally:
        connection.close()
        await peer.close()


def _close_seen(connection: TransportConnection) -> asyncio.Future:
    """A future done when the connection's close callback runs."""
    closed = asyncio.get_running_loop().create_future()
    connection.set_close_callback(lambda: closed.set_result(True))
    return closed


async def _until(condition) -> None:
    for _ in range(10000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


@pytest.mark.gen_test(timeout=20)
async def test_reads_take_what_iostream_reads_take():
    async with _connected() as (connection, reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nA: b\r\n")  # the head in two segments
        await writer.drain()
        head = connection.read_until_regex(b"\r?\n\r?\n", max_bytes=1024)
        writer.write(b"\r\nbodyXYZ\r\nrest")
        assert await head == b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n"
        assert await connection.read_bytes(4) == b"body"
        assert await connection.read_until(b"\r\n", max_bytes=64) == b"XYZ\r\n"
        assert await connection.read_bytes(100, partial=True) == b"rest"
        assert buffered(connection) == 0
        connection.write(b"GET / HTTP/1.1\r\n\r\n")
        assert await reader.readuntil(b"\r\n\r\n") == b"GET / HTTP/1.1\r\n\r\n"


@pytest.mark.gen_test(timeout=20)
async def test_a_delimiter_beyond_max_bytes_closes_the_connection():
    async with _connected() as (connection, reader, writer):
        closed = _close_seen(connection)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 2000)
        with pytest.raises(StreamClosedError) as raised:
            await connection.read_until_regex(b"\r?\n\r?\n", max_bytes=1024)
        assert isinstance(raised.value.real_error, UnsatisfiableReadError)
        assert connection.closed() and await closed
        assert await reader.read() == b""  # the upstream sees the connection end
        with pytest.raises(StreamClosedError):
            connection.write(b"more")


@pytest.mark.gen_test(timeout=20)
async def test_a_read_allowed_more_than_the_read_ahead_keeps_reading():
    """A head limit above the 64 KiB read-ahead: reading must not pause under a waiting read."""
    async with _connected() as (connection, _, writer):
        head = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"p" * 150_000 + b"\r\n\r\n"
        writer.write(head)
        assert await connection.read_until_regex(b"\r?\n\r?\n", max_bytes=200_000) == head


@pytest.mark.gen_test(timeout=20)
async def test_bytes_received_before_the_peer_closed_are_read_first():
    async with _connected() as (connection, _, writer):
        closed = _close_seen(connection)
        writer.write(b"0123456789")
        await writer.drain()
        writer.close()
        await closed  # the end arrived after the bytes
        assert connection.closed() and buffered(connection) == 10
        assert await connection.read_bytes(4) == b"0123"
        assert await connection.read_bytes(100, partial=True) == b"456789"
        with pytest.raises(StreamClosedError):
            await connection.read_bytes(1, partial=True)


@pytest.mark.gen_test(timeout=30)
async def test_reading_pauses_while_nobody_reads_and_nothing_is_lost():
    async with _connected() as (connection, _, writer):
        body = bytes(range(256)) * 16384  # 4 MiB
        writer.write(body)
        assert connection.transport is not None
        await _until(lambda: buffered(connection) > 65536)
        assert not connection.transport.is_reading()  # the rest waits in the kernel and the peer
        assert buffered(connection) < len(body)
        received = bytearray()
        while len(received) < len(body):
            received += await connection.read_bytes(65536, partial=True)
        assert received == body and connection.transport.is_reading()


@pytest.mark.gen_test(timeout=30)
async def test_a_write_waits_while_the_upstream_does_not_read():
    async with _connected() as (connection, reader, _):
        chunk = b"x" * (1024 * 1024)
        writes = []
        for _ in range(256):  # the upstream reads nothing: the transport's buffer fills
            writes.append(connection.write(chunk))
            if not writes[-1].done():
                break
            await asyncio.sleep(0)
        assert not writes[-1].done(), "256 MiB written and never told to wait"
        assert connection.transport is not None and connection.transport.get_write_buffer_size() > 0
        received = 0
        while not writes[-1].done():
            received += len(await reader.read(1024 * 1024))
        await writes[-1]
        assert received > 0


@pytest.mark.gen_test(timeout=20)
async def test_only_a_plain_stream_with_nothing_buffered_moves():
    peer = Peer()
    port = await peer.start()
    stream = await TCPClient().connect("127.0.0.1", port)
    _, writer = await peer.accepted
    try:
        writer.write(b"early")
        assert await stream.read_bytes(1) == b"e"  # the rest of "early" stays in the IOStream
        assert await on_transport(stream, 1024 * 1024, 16 * 1024) is stream
        assert isinstance(stream, IOStream) and await stream.read_bytes(4) == b"arly"
    finally:
        stream.close()
        await peer.close()


@pytest.mark.gen_test(timeout=20)
async def test_a_cancelled_read_leaves_its_bytes_to_the_next_one():
    async with _connected() as (connection, _, writer):
        waiting = connection.read_bytes(5)
        waiting.cancel()
        writer.write(b"hello")
        assert await connection.read_bytes(5) == b"hello"

"""Pins the private Tornado details proxy.listener relies on through tornado_compat: an IOStream
made with bytes already read (``_read_buffer``, ``_read_buffer_size``), and a server websocket on
a transport that was accepted below Tornado (``TransportWebsocket``)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from tornado.httpserver import HTTPServer

from tornado_gateway import tornado_compat


@pytest.mark.gen_test(timeout=10)
async def test_a_stream_made_with_bytes_reads_them_first_then_the_socket():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    server = HTTPServer(lambda request: None, max_buffer_size=1000, chunk_size=7)
    stream = tornado_compat.stream_with_bytes(ours, b"GET /a", server)
    assert (stream.max_buffer_size, stream.read_chunk_size) == (1000, 7)
    theirs.sendall(b"bc HTTP/1.1\r\n\r\nrest")
    assert await stream.read_until(b"\r\n\r\n") == b"GET /abc HTTP/1.1\r\n\r\n"
    assert await stream.read_bytes(4) == b"rest"
    stream.close()
    theirs.close()


async def _soon(check) -> None:
    """Wait (up to a second) until ``check()`` is true."""
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0.01)


class _Delegate:
    """What Tornado's websocket protocol calls on a handler."""

    close_code = close_reason = None

    def __init__(self) -> None:
        self.messages: list = []
        self.closed: list = []

    def on_message(self, message) -> None:
        self.messages.append(message)

    def on_ping(self, data) -> None:
        pass

    def on_pong(self, data) -> None:
        pass

    def on_ws_connection_close(self, code=None, reason=None) -> None:
        self.closed.append(code)

    def log_exception(self, *args) -> None:
        raise AssertionError(args)


async def _accepted_transport():
    """(server-side transport, client reader, client writer) over loopback."""
    loop = asyncio.get_running_loop()
    made: asyncio.Future = loop.create_future()

    class Accept(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            made.set_result(transport)

    server = await loop.create_server(Accept, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    transport = await made
    server.close()
    return transport, reader, writer


def _client_frame(payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@pytest.mark.gen_test(timeout=10)
async def test_a_websocket_on_an_accepted_transport_writes_at_start_then_reads_frames():
    transport, reader, writer = await _accepted_transport()
    delegate = _Delegate()
    websocket = tornado_compat.TransportWebsocket(delegate, transport, 1024)
    websocket.protocol.write_message("one")  # before start: held, then written together
    tornado_compat.write_now(websocket.protocol.stream, b"\x81\x03two")
    writer.write(_client_frame(b"early"))  # sent before start: read only after it
    await asyncio.sleep(0.05)
    assert delegate.messages == []
    websocket.start()
    assert await asyncio.wait_for(reader.readexactly(10), 5) == b"\x81\x03one\x81\x03two"
    await _soon(lambda: delegate.messages)
    assert delegate.messages == ["early"]
    writer.close()
    await _soon(lambda: delegate.closed)
    assert delegate.closed == [None]


@pytest.mark.gen_test(timeout=10)
async def test_a_websocket_whose_connection_ended_before_start_ends_at_start():
    transport, reader, writer = await _accepted_transport()
    delegate = _Delegate()
    websocket = tornado_compat.TransportWebsocket(delegate, transport, 1024)
    transport.abort()  # gone while engineio opened the socket
    await asyncio.sleep(0.05)
    websocket.start()
    assert delegate.closed == [None]
    writer.close()


@pytest.mark.gen_test(timeout=10)
async def test_a_websocket_whose_client_left_before_start_ends_after_it():
    transport, reader, writer = await _accepted_transport()
    delegate = _Delegate()
    websocket = tornado_compat.TransportWebsocket(delegate, transport, 1024)
    writer.close()  # the client goes while reading is paused
    await asyncio.sleep(0.05)
    websocket.start()
    await _soon(lambda: delegate.closed)
    assert delegate.closed == [None]

"""DrainableHTTPServer closes connections that wait too long for a request's head with one
periodic sweep instead of Tornado's per-request header timer. Real sockets; the sweep is
called directly with the clock moved, so nothing here waits for a timeout."""

from __future__ import annotations

import asyncio
import socket

import pytest
import tornado.web
from tornado.netutil import bind_sockets

from tornado_gateway.server import IDLE_CONNECTION_TIMEOUT, DrainableHTTPServer


class Hello(tornado.web.RequestHandler):
    async def get(self):
        if self.get_argument("wait", None):
            await self.settings["release"].wait()
        self.write("hi")


@pytest.mark.gen_test
async def test_idle_connections_are_swept_and_busy_ones_are_not():
    release = asyncio.Event()
    server = DrainableHTTPServer(tornado.web.Application([(r"/", Hello)], release=release),
                                 idle_connection_timeout=IDLE_CONNECTION_TIMEOUT)
    sockets = bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    assert server.conn_params.header_timeout is None and server.idle_timeout == IDLE_CONNECTION_TIMEOUT
    try:
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        idle_writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await idle_reader.readuntil(b"hi")).startswith(b"HTTP/1.1 200")
        busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
        busy_writer.write(b"GET /?wait=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        while len(server._busy_set()) < 1:
            await asyncio.sleep(0.01)
        never_asked = socket.create_connection(("127.0.0.1", port))  # no request at all
        never_asked.setblocking(False)
        while len(server._waiting_since()) < 2:  # the idle one and the one that never asked
            await asyncio.sleep(0.01)

        server._close_idle()  # nothing waited long enough yet
        for conn in list(server._waiting_since()):
            server._waiting_since()[conn] -= IDLE_CONNECTION_TIMEOUT + 1  # as if 76 s went by
        server._close_idle()

        assert await idle_reader.read() == b""  # closed by the gateway
        assert await asyncio.get_running_loop().sock_recv(never_asked, 1) == b""
        release.set()
        assert (await busy_reader.readuntil(b"hi")).startswith(b"HTTP/1.1 200")  # untouched
        never_asked.close()
        idle_writer.close()
        busy_writer.close()
    finally:
        server.stop()
        await server.close_all_connections()
        server.stop_sweeping()

"""The public listener's accept: a connection starts on an asyncio transport of the loop until
its first request's head is in. A plain websocket connect of ``/socket.io/`` stays there (the
``Upgrades`` answer it); anything else goes to the Tornado HTTPServer with the bytes already
read. Why: docs/design-notes.md, "proxy/listener.py"."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from typing import Any

from tornado import httputil
from tornado.httpserver import HTTPServer

from tornado_gateway import tornado_compat
from tornado_gateway.proxy.router import Upgrades

MAX_HEAD = 65536  # Tornado's max_header_size: a longer head is Tornado's to refuse (431)


class PublicListener:
    """Accepts on the public sockets; ``stop`` stops accepting and drops the connections that
    have not sent a whole head yet (a drain: they carry no request)."""

    def __init__(self, server: HTTPServer, upgrades: Upgrades | None, idle_timeout: float) -> None:
        self.server = server
        self.upgrades = upgrades
        self.idle_timeout = idle_timeout
        self.waiting: set[_Head] = set()  # connections whose first head is not in yet
        self._servers: list[asyncio.AbstractServer] = []

    async def start(self, sockets: list[socket.socket], backlog: int) -> None:
        """Accept on ``sockets`` (bound and listening); ``backlog`` as they were bound with (the
        loop listens again, with its own default of 100 unless told)."""
        loop = asyncio.get_running_loop()
        for sock in sockets:
            self._servers.append(await loop.create_server(lambda: _Head(self), sock=sock, backlog=backlog))

    def stop(self) -> None:
        for server in self._servers:
            server.close()
        for head in list(self.waiting):
            head.drop()


# A header line as Tornado accepts it (HTTPHeaders.add: a token name, a value of visible or
# obs-text characters with inner spaces and tabs), in bytes; the value's outer blanks are
# not part of it. One match checks the whole block instead of two per line.
_VCHAR = rb"[\x21-\x7e\x80-\xff]"
_FIELD_LINE = (rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[ \t]*(?:" + _VCHAR + rb"(?:[\x21-\x7e\x80-\xff \t]*"
               + _VCHAR + rb")?)?[ \t]*")
_FIELD_LINES = re.compile(rb"(?:" + _FIELD_LINE + rb"\r\n)*" + _FIELD_LINE)


def parse_head(head: bytes) -> tuple[httputil.RequestStartLine, httputil.HTTPHeaders] | None:
    """A request head of CRLF lines without folding, as Tornado would read it, or None for
    anything else (Tornado then reads it again and answers as it does)."""
    first, crlf, fields = head.partition(b"\r\n")
    if b"\n" in first or (crlf and not _FIELD_LINES.fullmatch(fields)):
        return None  # a bare LF, a folded or malformed line: Tornado's reading of it
    try:
        start_line = httputil.parse_request_start_line(first.decode("latin-1"))
    except httputil.HTTPInputError:
        return None
    headers = httputil.HTTPHeaders()
    if crlf:
        for line in fields.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            value = value.strip(" \t")
            if name in headers:
                headers.add(name, value)  # a repeated header: its values combined
            else:
                headers[name] = value  # checked above, as add would
    return start_line, headers


class _Head(asyncio.Protocol):
    """One accepted connection until its first request's head is in."""

    def __init__(self, listener: PublicListener) -> None:
        self.listener = listener
        self.buffer = bytearray()
        self.transport: Any = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.listener.waiting.add(self)
        self.timer = asyncio.get_running_loop().call_later(self.listener.idle_timeout, self.drop)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        start = max(0, len(buffer) - 3)  # search what is new: a head sent bytewise stays linear
        buffer += data
        end = buffer.find(b"\r\n\r\n", start)
        if end < 0:
            if len(buffer) > MAX_HEAD or buffer.find(b"\n\n", start) >= 0 or buffer.find(b"\n\r\n", start) >= 0:
                self._to_tornado()  # too long, or the end of a head in another spelling
            return
        self._done()
        upgrades = self.listener.upgrades
        plain = upgrades is not None and end + 4 == len(buffer) <= MAX_HEAD
        parsed = parse_head(bytes(buffer[:end])) if plain else None
        peer = self.transport.get_extra_info("peername")
        if parsed is None or not isinstance(peer, tuple) \
                or not upgrades.take_transport(self.transport, *parsed, peer[0]):  # type: ignore[union-attr]
            self._to_tornado()

    def _to_tornado(self) -> None:
        """Hand the connection to Tornado's HTTPServer with what was read (a copy of its socket:
        the transport closes its own)."""
        self._done()
        transport = self.transport
        if transport.is_closing():
            return
        transport.pause_reading()
        address = transport.get_extra_info("peername")
        try:
            sock = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
        except OSError:
            transport.abort()
            return
        transport.abort()
        sock.setblocking(False)
        server = self.listener.server
        server.handle_stream(tornado_compat.stream_with_bytes(sock, bytes(self.buffer), server), address)
        self.buffer = bytearray()

    def _done(self) -> None:
        """The head is in (or the connection goes): no longer waiting, no idle timer."""
        self.listener.waiting.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def drop(self) -> None:
        """Idle too long before a whole head, or the node drains: close without an answer."""
        self._done()
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()

"""Connections to upstreams: per-host pools of idle keep-alive streams, targets, TLS, resolver."""

from __future__ import annotations

from typing import Any

import asyncio
import collections
import socket
import ssl
import time
import urllib.parse

from tornado import httputil
from tornado.httpclient import HTTPRequest
from tornado.ioloop import IOLoop
from tornado.iostream import SSLIOStream
from tornado.netutil import Resolver, is_valid_ip

from tornado_gateway import tornado_compat
from tornado_gateway.upstream.stream import Connection, TransportConnection
from tornado.simple_httpclient import HTTPTimeoutError


class LiteralFirstResolver(Resolver):
    """Answers IP literals at once and sends real names to the default resolver."""

    def initialize(self) -> None:
        self.names = Resolver()

    def close(self) -> None:
        self.names.close()

    async def resolve(self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC) -> list[tuple[int, Any]]:
        if is_valid_ip(host):
            literal_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            if family in (socket.AF_UNSPEC, literal_family):
                return [(literal_family, (host, port))]
        return await self.names.resolve(host, port, family)


class HostPool:
    """The connections to one ``(scheme, host, port)``: idle ones, a count and a queue."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.idle: collections.deque[tuple[Connection, float]] = collections.deque()
        self.open_count = 0  # idle + in use + being opened
        self.waiters: collections.deque[asyncio.Future] = collections.deque()

    def take_idle(self, look: bool = False) -> Connection | None:
        """The most recently used idle connection that still looks alive.

        ``look``: also peek at the socket for an EOF the event loop has not
        reported yet (for requests that cannot be replayed on a new connection).
        """
        while self.idle:
            stream, _ = self.idle.pop()
            if stream.closed() or (look and _peer_closed(stream)):
                self._discard(stream)
                continue
            return stream
        return None

    async def wait_for_turn(self, timeout: float | None) -> Connection | None:
        """Wait until a connection is handed over (a stream) or may be opened (None)."""
        turn = asyncio.get_running_loop().create_future()
        self.waiters.append(turn)
        try:
            return await asyncio.wait_for(turn, timeout)
        except asyncio.TimeoutError:
            raise HTTPTimeoutError("Timeout in request queue") from None

    def give_back(self, stream: Connection) -> None:
        """A connection is free for another request: hand it on, or keep it idle."""
        while self.waiters:
            turn = self.waiters.popleft()
            if not turn.done():
                turn.set_result(stream)
                return
        self.idle.append((stream, time.monotonic()))
        # The close callback set by adopt() forgets it if it closes while idle.

    def adopt(self, stream: Connection) -> None:
        """A new connection of this pool: when it closes while idle, it is forgotten.

        Set once for the connection's life (``IOStream.set_close_callback`` updates the
        event loop's interest each time it is called); in use, the callback finds nothing."""
        stream.set_close_callback(lambda: self._forget_idle(stream))

    def discard(self, stream: Connection | None) -> None:
        """A connection in use failed or must not be reused: close it, free its slot."""
        if stream is not None:
            stream.close()
        self._discard(None)

    def evict_idle(self, older_than: float) -> None:
        """Close idle connections unused since ``older_than`` (monotonic seconds)."""
        while self.idle and self.idle[0][1] < older_than:
            stream, _ = self.idle.popleft()
            stream.set_close_callback(None)
            self._discard(stream)

    def close(self) -> None:
        while self.idle:
            stream, _ = self.idle.popleft()
            stream.set_close_callback(None)
            stream.close()
        for turn in self.waiters:
            turn.cancel()
        self.waiters.clear()

    def _forget_idle(self, stream: Connection) -> None:
        try:
            self.idle.remove(next(entry for entry in self.idle if entry[0] is stream))
        except StopIteration:
            return
        self._discard(None)

    def _discard(self, stream: Connection | None) -> None:
        if stream is not None:
            stream.close()
        self.open_count -= 1
        while self.waiters:  # the freed slot goes to the longest waiter
            turn = self.waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return


def _peer_closed(stream: Connection) -> bool:
    """True when an idle plain-TCP connection already got EOF or data it should not have."""
    if isinstance(stream, TransportConnection):  # it reads as bytes come: both show at once
        return stream.closed() or stream.buffered() > 0
    sock = stream.socket
    if sock is None:
        return True
    if isinstance(stream, SSLIOStream):
        return False  # SSL sockets refuse MSG_PEEK; the close callback and retry cover them
    try:
        sock.recv(1, socket.MSG_PEEK)  # b"" (EOF) or unasked-for bytes: unusable either way
    except BlockingIOError:
        return False  # nothing to read: still open
    except OSError:
        pass
    return True


def remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - IOLoop.current().time())


class Target:
    """Where a request goes: parsed once per fetch."""

    __slots__ = ("scheme", "host", "port", "netloc", "path", "userinfo", "ssl_key", "ssl_options")

    def __init__(self, request: Any) -> None:  # an HTTPRequest or a forward.ForwardRequest
        parsed = urllib.parse.urlsplit(request.url)
        if parsed.scheme not in ("http", "https"):
            raise ValueError(f"Unsupported url scheme: {request.url}")
        self.scheme = parsed.scheme
        self.netloc = parsed.netloc.rpartition("@")[2]
        self.userinfo = (parsed.username, parsed.password) if parsed.username is not None else None
        host, port = httputil.split_host_and_port(self.netloc)
        self.host = host[1:-1] if host.startswith("[") else host
        self.port = port or (443 if parsed.scheme == "https" else 80)
        self.path = (parsed.path or "/") + ("?" + parsed.query if parsed.query else "")
        self.ssl_key = _ssl_key(request) if parsed.scheme == "https" else None
        self.ssl_options: ssl.SSLContext | dict | None = None  # filled in by the client, per ssl_key

    def with_path(self, path: str) -> "Target":
        """This target with another path (and query): a copy, the URL is not parsed again."""
        target = Target.__new__(Target)
        for name in Target.__slots__:
            setattr(target, name, getattr(self, name))
        target.path = path
        return target

    @property
    def pool_key(self) -> tuple:
        return (self.scheme, self.host, self.port, self.ssl_key)


def _ssl_key(request: HTTPRequest) -> tuple:
    """What a request's TLS settings are, as a hashable key (connections differ by it)."""
    options = request.ssl_options
    if isinstance(options, ssl.SSLContext):
        return ("context", id(options))
    if options is not None:
        return ("dict", tuple(sorted((k, str(v)) for k, v in options.items())))
    return ("settings", request.validate_cert, request.ca_certs, request.client_cert,
            request.client_key)


def ssl_options(request: HTTPRequest) -> ssl.SSLContext | dict:
    """The TLS settings of a request, as SimpleAsyncHTTPClient derives them."""
    if request.ssl_options is not None:
        return request.ssl_options
    if (request.validate_cert and request.ca_certs is None and request.client_cert is None
            and request.client_key is None):
        return tornado_compat.client_ssl_defaults()
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=request.ca_certs)
    if not request.validate_cert:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if request.client_cert is not None:
        context.load_cert_chain(request.client_cert, request.client_key)
    return context


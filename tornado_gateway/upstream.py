"""The upstream HTTP client: pooled keep-alive connections on Tornado's own HTTP/1.1 code.

Why not a built-in client (measured on this 2-core box, see docs/benchmarks.md
"## HTTP edge"): ``SimpleAsyncHTTPClient`` opens one TCP connection per
request (no keep-alive), queues above ``max_clients=10``, follows redirects and
decompresses by default; a proxy built on it spends about 1 ms of CPU per
request and opens one upstream connection per request. ``curl_httpclient``
keeps connections alive, but its ``streaming_callback`` cannot be a coroutine,
so a slow client cannot slow the upstream down: the body would pile up in the
gateway's memory.

:class:`PooledHTTPClient` keeps the standard ``AsyncHTTPClient.fetch`` API and
the failure contract of ``SimpleAsyncHTTPClient`` and adds what a proxy needs:

* per ``(scheme, host, port)`` pools of idle keep-alive connections, reused
  only after a response was read completely and neither side said
  ``Connection: close``; a connection that failed is closed, never pooled;
* a generous cap of connections per upstream (``max_connections_per_host``);
  requests above it wait in a queue for a free connection, and that wait
  counts against ``connect_timeout`` (``HTTPTimeoutError("Timeout in request
  queue")``);
* idle connections are closed after ``idle_timeout`` seconds, shorter than
  the upstream's own keep-alive timeout (Node's default is 5 s), and one the
  upstream closed while idle is noticed (close callback; plus a ``MSG_PEEK``
  look before it carries a request that could not be replayed);
* a request that fails on a *reused* connection before any byte of the
  response arrived is sent again once on a new connection, when it can be
  replayed: no body, a ``body`` in memory, or a ``body_producer`` that had not
  written anything yet;
* ``TCP_NODELAY``, kept on for the connection's life (HTTP1Connection would
  toggle it twice per request); IP-literal hosts skip the resolver (asyncio's default
  resolver would send even ``127.0.0.1`` through a thread pool);
* the upstream's response head is parsed with one precompiled expression per
  line (:func:`parse_response_head`), as strict as Tornado's own parser, which
  runs four per line and was a fifth of the client's CPU per request;
* https through ``TCPClient`` with the request's ssl settings;
* never follows redirects and never decompresses (``follow_redirects`` and
  ``decompress_response`` default to False; redirects are not followed even
  when asked for);
* a coroutine ``streaming_callback`` is awaited before more of the body is
  read (at most one 64 KiB read is buffered ahead), and ``body_producer``'s
  ``write`` returns a future that resolves once the chunk was handed to the
  socket, so both directions stream with backpressure.

Failure contract (what ``fetch`` raises, with or without ``raise_error``):

* connect refused/unreachable/DNS failure: the ``OSError`` (nothing was sent);
* connect timeout (including TLS and queue wait):
  ``HTTPTimeoutError("Timeout while connecting…")`` / ``"Timeout in request
  queue"``; whole request: ``HTTPTimeoutError("Timeout during request")``;
* the connection closed or reset after the request started:
  ``HTTPStreamClosedError`` (never a bare ``OSError``, so a caller that retries
  on ``OSError`` never replays a request the upstream may have seen);
* an exception raised by ``streaming_callback``/``header_callback``/
  ``head_callback``/``body_producer`` is raised by ``fetch`` as it is.

One extension of the standard request: :class:`UpstreamRequest` takes a
``head_callback(start_line, headers)``, called once per response (interim 1xx
responses excluded) with the head as parsed, before any body chunk, instead
of ``header_callback``'s one call per formatted header line, which a proxy
would only split again.

The gateway builds its own instance with ``force_instance=True`` (see
``Gateway.__init__``) rather than ``AsyncHTTPClient.configure``: the
process-wide default stays Tornado's, so other code calling
``AsyncHTTPClient()`` is unaffected, the settings come from the gateway's
Settings, and ``Gateway.close()`` closes exactly this pool.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import re
import socket
import ssl
import time
import urllib.parse
from io import BytesIO
from typing import Any, Callable

from tornado import httputil
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.iostream import IOStream, SSLIOStream, StreamClosedError
from tornado.netutil import Resolver, _client_ssl_defaults, is_valid_ip
from tornado.simple_httpclient import HTTPStreamClosedError, HTTPTimeoutError
from tornado.tcpclient import TCPClient

#: Defaults every request gets unless it says otherwise: a proxy passes
#: redirects and compressed bodies through untouched.
PROXY_DEFAULTS = {"follow_redirects": False, "decompress_response": False,
                  "allow_nonstandard_methods": True}
UNLIMITED = 1 << 62
CHUNK_SIZE = 64 * 1024


# One header field line (RFC 9110 §5.5, RFC 9112 §5): a token, ":", optional whitespace, then
# a value that is empty or starts and ends with a visible (or obs-text) character; no
# controls, no bare CR, no line folding. What Tornado's HTTPHeaders.parse accepts, in one match.
FIELD_LINE = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*"
                        r"((?:[\x21-\x7e\x80-\xff](?:[\x21-\x7e\x80-\xff \t]*[\x21-\x7e\x80-\xff])?)?)"
                        r"[ \t]*")


def parse_response_head(data: bytes) -> tuple[str, httputil.HTTPHeaders]:
    """The start line and headers of a response head (``HTTP1Connection._parse_headers``).

    Raises ``HTTPInputError`` for any line Tornado's parser would refuse.
    """
    text = data.decode("latin1").lstrip("\r\n")
    lines = text.split("\n")
    headers = httputil.HTTPHeaders()
    for line in lines[1:]:
        if line.endswith("\r"):
            line = line[:-1]
        if not line:
            continue
        match = FIELD_LINE.fullmatch(line)
        if match is None:
            raise httputil.HTTPInputError(f"malformed response header line {line[:80]!r}")
        name, value = match.groups()
        if name in headers:
            headers.add(name, value)
        else:
            headers[name] = value
    return lines[0].rstrip("\r"), headers


class _UpstreamConnection(HTTP1Connection):
    """The client side of one exchange: Tornado's HTTP1Connection with the faster parser.

    ``_parse_headers`` is Tornado's own (private) hook for this; tornado is pinned
    below 7, and test_upstream_client checks both the parser and its use on the wire.
    """

    def _parse_headers(self, data: bytes) -> tuple[str, httputil.HTTPHeaders]:
        return parse_response_head(data)


class UpstreamRequest(HTTPRequest):
    """An ``HTTPRequest`` with ``head_callback`` (see the module docstring)."""

    def __init__(self, url: str, head_callback: Callable[[httputil.ResponseStartLine,
                                                          httputil.HTTPHeaders], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.head_callback = head_callback


class LiteralFirstResolver(Resolver):
    """Answers IP literals at once and sends real names to the default resolver."""

    def initialize(self) -> None:  # type: ignore[override]
        self.names = Resolver()

    def close(self) -> None:
        self.names.close()

    async def resolve(self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC):
        if is_valid_ip(host):
            literal_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            if family in (socket.AF_UNSPEC, literal_family):
                return [(literal_family, (host, port))]
        return await self.names.resolve(host, port, family)


class HostPool:
    """The connections to one ``(scheme, host, port)``: idle ones, a count and a queue."""

    def __init__(self, limit: int):
        self.limit = limit
        self.idle: collections.deque[tuple[IOStream, float]] = collections.deque()
        self.open_count = 0  # idle + in use + being opened
        self.waiters: collections.deque[asyncio.Future] = collections.deque()

    def take_idle(self, look: bool = False) -> IOStream | None:
        """The most recently used idle connection that still looks alive.

        ``look``: also peek at the socket for an EOF the event loop has not
        reported yet (for requests that cannot be replayed on a new connection).
        """
        while self.idle:
            stream, _ = self.idle.pop()
            stream.set_close_callback(None)
            if stream.closed() or (look and _peer_closed(stream)):
                self._discard(stream)
                continue
            return stream
        return None

    async def wait_for_turn(self, timeout: float | None) -> IOStream | None:
        """Wait until a connection is handed over (a stream) or may be opened (None)."""
        turn = asyncio.get_running_loop().create_future()
        self.waiters.append(turn)
        try:
            return await asyncio.wait_for(turn, timeout)
        except asyncio.TimeoutError:
            raise HTTPTimeoutError("Timeout in request queue") from None

    def give_back(self, stream: IOStream) -> None:
        """A connection is free for another request: hand it on, or keep it idle."""
        while self.waiters:
            turn = self.waiters.popleft()
            if not turn.done():
                turn.set_result(stream)
                return
        self.idle.append((stream, time.monotonic()))
        stream.set_close_callback(lambda: self._forget_idle(stream))

    def discard(self, stream: IOStream | None) -> None:
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

    def _forget_idle(self, stream: IOStream) -> None:
        try:
            self.idle.remove(next(entry for entry in self.idle if entry[0] is stream))
        except StopIteration:
            return
        self._discard(None)

    def _discard(self, stream: IOStream | None) -> None:
        if stream is not None:
            stream.close()
        self.open_count -= 1
        while self.waiters:  # the freed slot goes to the longest waiter
            turn = self.waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return


def _peer_closed(stream: IOStream) -> bool:
    """True when an idle plain-TCP connection already got EOF or data it should not have."""
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


class PooledHTTPClient(AsyncHTTPClient):
    """``AsyncHTTPClient`` with keep-alive pools per upstream (see the module docstring)."""

    def initialize(  # type: ignore[override]
        self,
        max_connections_per_host: int = 256,
        idle_timeout: float = 4.0,
        max_buffer_size: int = 100 * 1024 * 1024,
        max_header_size: int | None = None,
        max_body_size: int | None = None,
        resolver: Resolver | None = None,
        defaults: dict[str, Any] | None = None,
    ) -> None:
        super().initialize(defaults={**PROXY_DEFAULTS, **(defaults or {})})
        self.max_connections_per_host = max_connections_per_host
        self.idle_timeout = idle_timeout
        self.max_buffer_size = max_buffer_size  # body limit when not streaming
        self.max_body_size = max_body_size  # None: unlimited when streaming
        self.connection_params = HTTP1ConnectionParameters(
            chunk_size=CHUNK_SIZE, max_header_size=max_header_size)
        self.own_resolver = resolver is None
        self.resolver = resolver or LiteralFirstResolver()
        self.tcp_client = TCPClient(resolver=self.resolver)
        self.pools: dict[tuple, HostPool] = {}
        self.connections_opened = 0
        self._sweeper: PeriodicCallback | None = None
        self._running: set[asyncio.Task] = set()
        self._ssl_contexts: dict[tuple, ssl.SSLContext | dict] = {}

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        if self._sweeper is not None:
            self._sweeper.stop()
        for task in list(self._running):
            task.cancel()  # in-flight fetches fail with HTTPStreamClosedError("client closed")
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()
        self.tcp_client.close()
        if self.own_resolver:
            self.resolver.close()

    def fetch_impl(self, request: HTTPRequest, callback: Callable[[HTTPResponse], None]) -> None:
        task = asyncio.ensure_future(_Exchange(self, request, callback).run())
        self._running.add(task)  # asyncio keeps only weak references to tasks
        task.add_done_callback(self._running.discard)

    # -- connections -------------------------------------------------------

    def pool_for(self, key: tuple) -> HostPool:
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = HostPool(self.max_connections_per_host)
            self._start_sweeper()
        return pool

    async def acquire(self, pool: HostPool, target: "_Target", deadline: float | None,
                      replayable: bool = True) -> tuple[IOStream, bool]:
        """A connection for one request, and whether it was reused from the pool."""
        while True:
            stream = pool.take_idle(look=not replayable)
            if stream is not None:
                return stream, True
            if pool.open_count < pool.limit:
                return await self.open(pool, target, deadline), False
            stream = await pool.wait_for_turn(_remaining(deadline))
            if stream is not None:
                return stream, True
            # else a slot was freed: loop to take it (or wait again if someone was quicker)

    async def open(self, pool: HostPool, target: "_Target", deadline: float | None) -> IOStream:
        pool.open_count += 1
        try:
            stream = await self.tcp_client.connect(
                target.host, target.port, ssl_options=target.ssl_options,
                max_buffer_size=self.max_buffer_size, timeout=_remaining(deadline))
        except TimeoutError as exc:
            pool.discard(None)
            raise HTTPTimeoutError(str(exc) or "Timeout while connecting") from None
        except StreamClosedError as exc:  # refused, unreachable, reset during TLS: nothing sent
            pool.discard(None)
            raise exc.real_error or ConnectionError("connection closed while connecting") from None
        except BaseException:
            pool.discard(None)
            raise
        self.connections_opened += 1
        stream.set_nodelay(True)
        # HTTP1Connection turns Nagle back on after every message and off again in
        # finish(): two setsockopt calls per request. An upstream connection keeps
        # TCP_NODELAY for its whole life instead.
        stream.set_nodelay = _keep_nodelay  # type: ignore[method-assign]
        return stream

    def ssl_options_for(self, key: tuple, request: HTTPRequest) -> ssl.SSLContext | dict:
        """One TLS context per distinct ssl settings, made on first use."""
        options = self._ssl_contexts.get(key)
        if options is None:
            options = self._ssl_contexts[key] = _ssl_options(request)
        return options

    def _start_sweeper(self) -> None:
        if self._sweeper is None and self.idle_timeout > 0:
            self._sweeper = PeriodicCallback(self._evict_idle, self.idle_timeout * 1000 / 2)
            self._sweeper.start()

    def _evict_idle(self) -> None:
        older_than = time.monotonic() - self.idle_timeout
        for pool in self.pools.values():
            pool.evict_idle(older_than)


def _keep_nodelay(value: bool) -> None:
    """Stands in for ``IOStream.set_nodelay`` on pooled connections (always on)."""


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - IOLoop.current().time())


class _Target:
    """Where a request goes: parsed once per fetch."""

    __slots__ = ("scheme", "host", "port", "netloc", "path", "userinfo", "ssl_key", "ssl_options")

    def __init__(self, request: HTTPRequest):
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
        self.ssl_options = None  # filled in by the client, one context per ssl_key

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


def _ssl_options(request: HTTPRequest) -> ssl.SSLContext | dict:
    """The TLS settings of a request, as SimpleAsyncHTTPClient derives them."""
    if request.ssl_options is not None:
        return request.ssl_options
    if (request.validate_cert and request.ca_certs is None and request.client_cert is None
            and request.client_key is None):
        return _client_ssl_defaults()
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=request.ca_certs)
    if not request.validate_cert:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if request.client_cert is not None:
        context.load_cert_chain(request.client_cert, request.client_key)
    return context


class _Exchange(httputil.HTTPMessageDelegate):
    """One fetch: get a connection, send the request, read the response, settle once."""

    def __init__(self, client: PooledHTTPClient, request: HTTPRequest,
                 callback: Callable[[HTTPResponse], None]):
        self.client = client
        self.request = request
        self.callback: Callable[[HTTPResponse], None] | None = callback
        self.io_loop = IOLoop.current()
        self.start_time = self.io_loop.time()
        self.start_wall_time = time.time()
        self.stream: IOStream | None = None
        self.timeout_handle = None
        self.streaming_callback = request.streaming_callback
        self.header_callback = request.header_callback
        self.head_callback = getattr(request, "head_callback", None)
        self.body_started = False  # body_producer wrote (or tried to write) a chunk
        self.callback_error: BaseException | None = None
        self._reset_response()

    def _reset_response(self) -> None:
        self.start_line: httputil.ResponseStartLine | None = None
        self.headers: httputil.HTTPHeaders | None = None
        self.chunks: list[bytes] = []
        self.body_size = 0
        self.complete = False

    # -- the run -----------------------------------------------------------

    async def run(self) -> None:
        try:
            target = _Target(self.request)
            if target.ssl_key is not None:
                target.ssl_options = self.client.ssl_options_for(target.ssl_key, self.request)
            pool = self.client.pool_for(target.pool_key)
            headers = self._request_headers(target)
            stream, reused = await self.client.acquire(
                pool, target, self._connect_deadline(), self.request.body_producer is None)
            self._start_request_timer()
            if not await self._send_and_read(pool, stream, reused, target, headers):
                # The reused connection was dead: once more on a new one (may exceed the cap by one).
                connect_timeout = self.request.connect_timeout
                deadline = self.io_loop.time() + connect_timeout if connect_timeout else None
                stream = await self.client.open(pool, target, deadline)
                await self._send_and_read(pool, stream, False, target, headers)
        except asyncio.CancelledError:
            self._settle_error(HTTPStreamClosedError("client closed"))
            raise
        except Exception as exc:
            self._settle_error(exc)
        else:
            self._settle_response()

    async def _send_and_read(self, pool: HostPool, stream: IOStream, reused: bool,
                             target: _Target, headers: httputil.HTTPHeaders) -> bool:
        """One attempt on one connection; False when a dead reused connection should be retried."""
        if self.callback is None:  # the request timed out while this connection was opened
            pool.give_back(stream)
            return True
        self.stream = stream
        connection = _UpstreamConnection(stream, True, self.client.connection_params)
        connection.set_max_body_size(self._body_limit())
        try:
            await self._send(connection, target, headers)
            await connection.read_response(self)
        except Exception as exc:
            pool.discard(stream)
            if self.callback_error is not None:
                raise self.callback_error from None
            if reused and self._may_retry(stream, exc):
                self._reset_response()
                return False
            raise self._as_stream_error(exc) from None
        except BaseException:  # cancelled by close()
            pool.discard(stream)
            raise
        finally:
            self.stream = None
        if self.callback_error is not None or not self.complete:
            pool.discard(stream)
            if self.callback_error is not None:
                raise self.callback_error
            raise HTTPStreamClosedError("Connection closed before the response was complete")
        if self._reusable(stream, headers):
            pool.give_back(stream)
        else:
            pool.discard(stream)
        return True

    async def _send(self, connection: HTTP1Connection, target: _Target,
                    headers: httputil.HTTPHeaders) -> None:
        start_line = httputil.RequestStartLine(self.request.method, target.path, "")
        body = self.request.body
        if body is not None:
            connection.write_headers(start_line, headers, body or None)
        else:
            connection.write_headers(start_line, headers)
            producer = self.request.body_producer
            if producer is not None:
                await self._produce_body(producer, connection)
        connection.finish()

    async def _produce_body(self, producer, connection: HTTP1Connection) -> None:
        def write(chunk: bytes):
            self.body_started = True
            return connection.write(chunk)

        try:
            result = producer(write)
            if result is not None:
                await result
        except StreamClosedError:
            raise
        except Exception as exc:
            self.callback_error = exc
            raise

    # -- request details -----------------------------------------------------

    def _request_headers(self, target: _Target) -> httputil.HTTPHeaders:
        request = self.request
        headers = request.headers
        if "Host" not in headers:
            headers["Host"] = target.netloc
        username, password = target.userinfo or (request.auth_username, request.auth_password)
        if username is not None:
            if request.auth_mode not in (None, "basic"):
                raise ValueError(f"unsupported auth_mode {request.auth_mode}")
            credentials = httputil.encode_username_password(username, password or "")
            headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        if request.user_agent:
            headers["User-Agent"] = request.user_agent
        if request.body is not None:
            headers["Content-Length"] = str(len(request.body))
        if request.decompress_response:
            headers["Accept-Encoding"] = "gzip"
        return headers

    def _body_limit(self) -> int:
        if self.streaming_callback is not None:
            return self.client.max_body_size or UNLIMITED
        return min(self.client.max_body_size or UNLIMITED, self.client.max_buffer_size)

    def _connect_deadline(self) -> float | None:
        connect, total = self.request.connect_timeout, self.request.request_timeout
        timeout = min(connect, total) if connect and total else connect or total
        return self.start_time + timeout if timeout else None

    def _start_request_timer(self) -> None:
        timeout = self.request.request_timeout
        if timeout and self.timeout_handle is None:
            self.timeout_handle = self.io_loop.call_at(
                self.start_time + timeout, self._on_request_timeout)

    def _on_request_timeout(self) -> None:
        self.timeout_handle = None
        self._settle_error(HTTPTimeoutError("Timeout during request"))
        if self.stream is not None:
            self.stream.close()  # ends the attempt; the connection is discarded

    # -- reuse and retry -------------------------------------------------------

    def _may_retry(self, stream: IOStream, exc: Exception) -> bool:
        """A reused connection died before the upstream answered, and replaying is safe."""
        return (
            isinstance(exc, (StreamClosedError, OSError))
            and self.start_line is None
            and not _received_anything(stream)
            and not self.body_started
            and self.callback is not None
        )

    def _reusable(self, stream: IOStream, request_headers: httputil.HTTPHeaders) -> bool:
        if stream.closed() or self.client._closed:
            return False
        if request_headers.get("Connection", "").lower() == "close":
            return False
        assert self.start_line is not None and self.headers is not None
        connection_header = self.headers.get("Connection", "").lower()
        if self.start_line.version == "HTTP/1.1":
            return connection_header != "close"
        return connection_header == "keep-alive"

    @staticmethod
    def _as_stream_error(exc: Exception) -> Exception:
        if isinstance(exc, (StreamClosedError, OSError)):
            real = getattr(exc, "real_error", None) or (exc if isinstance(exc, OSError) else None)
            message = f"Connection closed ({real})" if real else "Connection closed"
            return HTTPStreamClosedError(message)
        return exc

    # -- HTTPMessageDelegate ----------------------------------------------------

    def headers_received(self, start_line, headers):
        self.start_line = start_line
        self.headers = headers
        if self.head_callback is not None:
            if not 100 <= start_line.code < 200:
                try:
                    self.head_callback(start_line, headers)
                except Exception as exc:
                    self._abort(exc)
        elif self.header_callback is not None:
            try:
                self.header_callback("%s %s %s\r\n" % start_line)
                for name, value in headers.get_all():
                    self.header_callback(f"{name}: {value}\r\n")
                self.header_callback("\r\n")
            except Exception as exc:
                self._abort(exc)
        return None

    def data_received(self, chunk: bytes):
        self.body_size += len(chunk)
        if self.callback is None:
            return None  # settled already (timeout): drop the rest
        if self.streaming_callback is None:
            self.chunks.append(chunk)
            return None
        try:
            result = self.streaming_callback(chunk)
        except Exception as exc:
            self._abort(exc)
            return None
        if result is None:
            return None
        return self._await_callback(result)

    async def _await_callback(self, result) -> None:
        try:
            await result
        except Exception as exc:
            self._abort(exc)

    def finish(self) -> None:
        self.complete = True

    def on_connection_close(self) -> None:
        pass  # read_response raises or returns; run() looks at self.complete

    def _abort(self, exc: BaseException) -> None:
        """A callback failed: stop reading, and make fetch raise its exception."""
        self.callback_error = exc
        if self.stream is not None:
            self.stream.close()

    # -- settling ---------------------------------------------------------------

    def _settle_response(self) -> None:
        if self.callback is None or self.start_line is None:
            return
        buffer = BytesIO(b"".join(self.chunks))
        self._settle(HTTPResponse(
            self.request, self.start_line.code, reason=self.start_line.reason,
            headers=self.headers, buffer=buffer, effective_url=self.request.url,
            request_time=self.io_loop.time() - self.start_time, start_time=self.start_wall_time))

    def _settle_error(self, exc: BaseException) -> None:
        if self.callback is None:
            return
        self._settle(HTTPResponse(
            self.request, 599, error=exc, request_time=self.io_loop.time() - self.start_time,
            start_time=self.start_wall_time))

    def _settle(self, response: HTTPResponse) -> None:
        callback, self.callback = self.callback, None
        if self.timeout_handle is not None:
            self.timeout_handle.cancel()
            self.timeout_handle = None
        callback(response)


def _received_anything(stream: IOStream) -> bool:
    # IOStream keeps bytes of an unfinished read (a partial status line) in its buffer.
    return bool(getattr(stream, "_read_buffer_size", 0))


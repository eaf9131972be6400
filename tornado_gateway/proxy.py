"""The reverse proxy: route, authenticate, and stream a request to its upstream and back.

:class:`ProxyHandler` answers every path the other handlers do not. In
``prepare`` (right after the request headers arrive) it validates and routes
the path (paths.py), authenticates (SPEC §3), calls :meth:`ProxyHandler.admit`,
checks the body limit and the upstream's circuit breaker, and starts the
upstream exchange; the request body is then passed on chunk by chunk as it
arrives, and the response comes back the same way:

* client -> upstream: ``data_received`` puts chunks into a :class:`BodyPipe`
  of a few chunks; the upstream client's ``body_producer`` takes them out and
  awaits each write. When the upstream is slower, the pipe fills,
  ``data_received`` waits, and Tornado stops reading from the client.
* upstream -> client: ``header_callback`` copies status and headers over,
  ``streaming_callback`` (a coroutine) writes each chunk and awaits
  ``flush()``, so a slow client slows the upstream read down.

Upstream failures become the gateway's JSON errors while nothing has been sent
to the client yet; after that the client connection is cut, so a truncated
body is never presented as complete.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import lru_cache
from typing import Awaitable
from urllib.parse import urlsplit

import tornado.web
from tornado import httputil
from tornado.http1connection import is_transfer_encoding_chunked
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.simple_httpclient import HTTPTimeoutError

from tornado_gateway import metrics
from tornado_gateway.auth import AuthError, Identity, bearer_token
from tornado_gateway.circuit import CircuitBreaker
from tornado_gateway.errors import GatewayError
from tornado_gateway.handlers import GatewayHandler
from tornado_gateway.paths import PathError, Resolved, check_query, is_under, resolve

log = logging.getLogger("tornado_gateway.proxy")

# RFC 9110 §7.6.1 connection-specific fields (plus the old Proxy-Connection).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade",
})
# Client headers the gateway sets itself or never passes on (besides X-User*, X-Forwarded-*).
REQUEST_DROP = HOP_BY_HOP | {"host", "expect", "x-request-id", "forwarded", "x-real-ip"}
# Upstream headers the client never sees (besides Access-Control-*: the gateway owns CORS).
RESPONSE_DROP = HOP_BY_HOP | {"server", "x-powered-by", "x-request-id"}
REFRESH_PATH = "/api/auth/refresh"
REFRESH_COOKIE = "refreshToken"
RETRYABLE_METHODS = ("GET", "HEAD")
BODY_METHODS = ("POST", "PUT", "PATCH")  # the upstream client frames chunked bodies only for these
PIPE_DEPTH = 4  # request chunks (each <= 64 KiB) buffered between client and upstream
# An oversize body up to this much beyond the limit is read and dropped before the 413.
OVERSIZE_DRAIN = 4 * 1024 * 1024


class Abandoned(Exception):
    """Raised into the upstream exchange to stop it: the client side is over."""


class BodyPipe:
    """Request body chunks on their way from the client to the upstream (bounded)."""

    _END = None
    _ABORT = object()

    def __init__(self, depth: int = PIPE_DEPTH):
        self._queue: asyncio.Queue = asyncio.Queue(depth)
        self.aborted = False

    async def put(self, chunk: bytes) -> None:
        if not self.aborted:
            await self._queue.put(chunk)

    async def end(self) -> None:
        await self.put(self._END)

    def abort(self) -> None:
        """Stop the upstream request: the producer raises Abandoned at its next read."""
        if self.aborted:
            return
        self.aborted = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(self._ABORT)

    async def produce(self, write) -> None:
        """The upstream request's ``body_producer``."""
        while True:
            chunk = await self._queue.get()
            if chunk is self._END:
                return
            if chunk is self._ABORT or self.aborted:
                raise Abandoned("request body aborted")
            await write(chunk)


class _QuietAbandon(logging.Filter):
    """Tornado logs exceptions raised in HTTP callbacks; ours are intended."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], Abandoned))


logging.getLogger("tornado.application").addFilter(_QuietAbandon())


def connection_named(values) -> set[str]:
    """Lower-case names listed in the given Connection header values: hop-by-hop too."""
    names = set()
    for value in values:
        names.update(part.strip().lower() for part in value.split(",") if part.strip())
    return names


def is_identity_header(name: str) -> bool:
    """``X-User-Id`` and every ``X-User*`` header: only the gateway may set them."""
    return name.startswith("x-user")


def is_connect_failure(exc: BaseException) -> bool:
    """Refused/unreachable/DNS: nothing reached the upstream, so a retry is safe."""
    return isinstance(exc, OSError) and not isinstance(
        exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, TimeoutError))


@lru_cache(maxsize=256)
def host_of(upstream: str) -> str:
    return urlsplit(upstream).netloc


@tornado.web.stream_request_body
class ProxyHandler(GatewayHandler):
    """Proxies every route of ``settings.routes``; 404 JSON elsewhere."""

    route_name = "proxy"
    identity: Identity | None = None
    _tracked = False
    _client_gone = False
    _pipe: BodyPipe | None = None
    _task: Awaitable[None] | None = None  # the upstream exchange (a task when a body streams)
    _body_limit = 0
    _discarding = False  # the body is oversize: dropped as it arrives, answered 413
    _received = 0
    _head_lines: list[str] | None = None
    _attempt_started = 0.0

    def compute_etag(self) -> None:
        return None  # never answer 304 or add an ETag on the upstream's behalf

    # -- request admission ---------------------------------------------------

    async def prepare(self) -> None:
        self._track_start()
        if self.request.method == "OPTIONS":
            return  # CORS preflight, answered by GatewayHandler.options
        try:
            check_query(self.request.query)
            resolved = resolve(self.gateway.settings.routes, self.request.path)
        except PathError as exc:
            raise GatewayError("BAD_PATH", str(exc)) from None
        if resolved is None:
            self.route_name = "not_found"
            raise GatewayError("NOT_FOUND", "no route for this path")
        route = resolved.route
        self.route_name = self.upstream_name = route.service
        self.public_path = resolved.path  # normalised: what limits classify by
        self.identity = self.authenticate(resolved.path)
        if self.identity is not None:
            self.user_id = self.identity.user_id
        await self.admit(self.identity)
        if not self._accept_body(route.max_body_size):
            return  # an oversize body is read and dropped, then answered 413 (see _relay)
        breaker = self.gateway.circuits.get(route.upstream)
        if not breaker.allow():
            metrics.UPSTREAM_ERRORS.labels(route.service, "circuit_open").inc()
            raise GatewayError("CIRCUIT_OPEN", f"the {route.service} service is failing; retry later",
                               headers={"Retry-After": str(breaker.retry_after())})
        exchange = self._proxy(resolved, breaker)
        if self._pipe is not None:  # the upstream request starts now, the body follows
            self._task = asyncio.ensure_future(exchange)
        else:  # nothing to stream: _relay runs it at once
            self._task = exchange

    def authenticate(self, path: str) -> Identity | None:
        """The caller's identity, None when anonymous on a public path; raises AuthError."""
        tokens = self.gateway.tokens
        bearer = bearer_token(self.request.headers.get("Authorization"))
        if path.rstrip("/") == REFRESH_PATH:
            # Refresh tokens are checked at the edge: a forged one never reaches auth.
            cookie = self.get_cookie(REFRESH_COOKIE)
            if cookie:
                return tokens.verify_refresh(cookie)
            if bearer:
                return tokens.verify_refresh(bearer)
            raise AuthError("UNAUTHENTICATED", f"a refresh token (cookie {REFRESH_COOKIE} or Bearer) "
                                               "is required")
        public = any(is_under(path, prefix) for prefix in self.gateway.settings.public_paths)
        if bearer is None:
            if public:
                return None
            raise AuthError("UNAUTHENTICATED", "a bearer token is required")
        try:
            return tokens.verify_access(bearer)
        except AuthError:
            if public:
                return None  # a bad token on a public route is ignored, never trusted
            raise

    async def admit(self, identity: Identity | None) -> None:
        """Last check before the upstream is contacted: rate limits and revocation go here.

        Runs after authentication (``identity`` is None for an anonymous call
        on a public path) and raises a GatewayError to refuse the request.
        The logic lives in revocation.py and limits.py; this only calls them.
        """
        gateway = self.gateway
        if identity is not None and await gateway.revocations.is_revoked(identity):
            raise AuthError("TOKEN_REVOKED", "token has been revoked")
        if gateway.settings.rate_limit_enabled:
            user_id = identity.user_id if identity is not None else None
            headers = await gateway.limits.admit_http(self.public_path, user_id, self.client_ip)
            for name, value in headers.items():
                self.set_header(name, value)

    def _accept_body(self, limit: int) -> bool:
        """Check the body's framing and size; False when it is oversize and will be dropped.

        A declared oversize body is refused before the upstream is contacted:
        at once when the client waits for ``100 Continue`` or the excess is
        large (then the connection closes with a lingering close, see
        handlers.LingeringClose), else after reading and dropping it, which
        keeps the connection open for the client's next request.
        """
        headers = self.request.headers
        self._body_limit = limit
        try:
            chunked = is_transfer_encoding_chunked(headers)
        except httputil.HTTPInputError as exc:
            raise GatewayError("BAD_REQUEST", str(exc)) from None
        declared = headers.get("Content-Length")
        if declared is not None:
            if not declared.isdigit() or len(declared) > 18:
                raise GatewayError("BAD_REQUEST", "malformed Content-Length")
            size = int(declared)
            if size > limit:
                if (size > limit + OVERSIZE_DRAIN
                        or headers.get("Expect", "").lower() == "100-continue"):
                    raise GatewayError("PAYLOAD_TOO_LARGE", f"request body over {limit} bytes")
                self.request.connection.set_max_body_size(size)
                self._discarding = True
                return False
            self.request.connection.set_max_body_size(limit)
            has_body = size > 0
        elif chunked:
            if self.request.method not in BODY_METHODS:
                raise GatewayError("LENGTH_REQUIRED",
                                   f"a {self.request.method} body needs a Content-Length")
            # Tornado's own limit (a bare 400) must sit above ours and the drain.
            self.request.connection.set_max_body_size(limit + 2 * OVERSIZE_DRAIN)
            has_body = True
        else:
            has_body = False
        if has_body:
            self._pipe = BodyPipe()
        return True

    def data_received(self, chunk: bytes):
        self._received += len(chunk)
        if self._finished:
            return None
        if self._discarding:
            if self._received > self._body_limit + OVERSIZE_DRAIN:
                self._refuse_oversize()  # enough: answer now and close
            return None
        if self._pipe is None:
            return None
        if self._received > self._body_limit:
            # Chunked and over the limit: the upstream request is aborted, the rest dropped.
            self._pipe.abort()
            self._discarding = True
            if self._headers_written:
                self._refuse_oversize()  # the response already started: cut it
            return None
        return self._pipe.put(chunk)

    def send_gateway_error(self, error: GatewayError) -> None:
        cut = self._headers_written and not self._finished
        super().send_gateway_error(error)
        if cut:  # the response was cut mid-way: log it as the error it became
            self._status_code = error.status
            self.application.log_request(self)
        if self._finished:
            self._track_end()  # a cut connection never reaches on_finish

    def _refuse_oversize(self) -> None:
        """413 (or a cut connection when the response already started)."""
        self.send_gateway_error(
            GatewayError("PAYLOAD_TOO_LARGE", f"request body over {self._body_limit} bytes"))

    # -- the exchange ----------------------------------------------------------

    async def _relay(self, *args) -> None:
        """Runs once the whole request body arrived; waits for the response to finish."""
        if self._pipe is not None and not self._finished and not self._discarding:
            await self._pipe.end()
        exchange, self._task = self._task, None
        if exchange is not None:
            await exchange
        if self._discarding and not self._finished:
            self._refuse_oversize()

    get = head = post = put = patch = delete = _relay

    async def _proxy(self, resolved: Resolved, breaker: CircuitBreaker) -> None:
        try:
            await self._forward(resolved, breaker)
        except GatewayError as error:
            if not self._client_gone and not self._discarding:
                self.send_gateway_error(error)
        except Exception:
            log.exception("proxying failed", extra={"request_id": self.request_id,
                                                    "upstream": self.upstream_name})
            if not self._client_gone:
                self.send_gateway_error(GatewayError("INTERNAL", "internal error"))
        finally:
            if self._pipe is not None:
                self._pipe.abort()  # frees a data_received still waiting on the pipe
        if self._client_gone:
            self._abandon()

    async def _forward(self, resolved: Resolved, breaker: CircuitBreaker) -> None:
        route = resolved.route
        attempts = 2 if self.request.method in RETRYABLE_METHODS and self._pipe is None else 1
        for attempt in range(1, attempts + 1):
            self._head_lines = []
            self._attempt_started = time.monotonic()
            try:
                response = await self.gateway.http_client.fetch(
                    self._upstream_request(resolved), raise_error=False)
                if response.code == 599 and response.error is not None:
                    raise response.error
            except Abandoned:
                return
            except (HTTPTimeoutError, TimeoutError):
                self._upstream_failed(route, breaker, "timeout", count=True)
                raise GatewayError("UPSTREAM_TIMEOUT",
                                   f"the {route.service} service did not answer in time") from None
            except (HTTPClientError, StreamClosedError, httputil.HTTPInputError, OSError) as exc:
                connect_failed = is_connect_failure(exc)
                started = self._head_lines is None
                self._upstream_failed(route, breaker, "connect" if connect_failed else "reset",
                                      count=not started)
                if connect_failed and attempt < attempts and breaker.allow():
                    log.warning("upstream %s: connect failed (%s); retrying once", route.service,
                                type(exc).__name__,
                                extra={"request_id": self.request_id, "upstream": route.service})
                    continue
                raise GatewayError("UPSTREAM_UNAVAILABLE",
                                   f"the {route.service} service is unavailable") from None
            breaker.record_success()
            metrics.CIRCUIT_OPEN.labels(route.service).set(0)
            if self._head_lines is not None:  # a client that skipped header_callback
                self._copy_head(response.code, response.reason, response.headers)
            if not self._finished:
                self.finish()
            return

    def _upstream_failed(self, route, breaker: CircuitBreaker, kind: str, count: bool) -> None:
        metrics.UPSTREAM_ERRORS.labels(route.service, kind).inc()
        if count:  # no response at all: the upstream is unhealthy
            breaker.record_failure()
            metrics.CIRCUIT_OPEN.labels(route.service).set(1 if breaker.is_open else 0)

    def _upstream_request(self, resolved: Resolved) -> HTTPRequest:
        route = resolved.route
        url = route.upstream + resolved.upstream_path
        if self.request.query:
            url += "?" + self.request.query
        method = self.request.method
        body = None
        if self._pipe is None and method in BODY_METHODS:
            body = b""
        return HTTPRequest(
            url,
            method=method,
            headers=self._upstream_headers(route),
            body=body,
            body_producer=self._pipe.produce if self._pipe is not None else None,
            connect_timeout=route.connect_timeout,
            request_timeout=route.timeout,
            follow_redirects=False,
            decompress_response=False,
            allow_nonstandard_methods=True,
            header_callback=self._on_header_line,
            streaming_callback=self._on_chunk,
        )

    def _upstream_headers(self, route) -> httputil.HTTPHeaders:
        incoming = self.request.headers
        dropped = connection_named(incoming.get_list("Connection"))
        out = httputil.HTTPHeaders()
        for name, value in incoming.get_all():
            lower = name.lower()
            if (lower in REQUEST_DROP or lower in dropped or is_identity_header(lower)
                    or lower.startswith("x-forwarded-")):
                continue
            out.add(name, value)
        for name, value in self.gateway.forwarding.forwarded_headers(self.request).items():
            out[name] = value
        out["Host"] = host_of(route.upstream)
        out["X-Request-ID"] = self.request_id
        if self.identity is not None:
            out["X-User-Id"] = self.identity.user_id
        return out

    # -- the response ----------------------------------------------------------

    def _on_header_line(self, line: str) -> None:
        """``header_callback``: the status line, one call per header, then a blank line."""
        if self._head_lines is None:
            return
        if line.strip():
            self._head_lines.append(line)
            return
        lines, self._head_lines = self._head_lines, []
        if not lines:
            return
        start = httputil.parse_response_start_line(lines[0].strip())
        if 100 <= start.code < 200:
            return  # interim response (e.g. 100 Continue): not relayed
        headers = []
        for header in lines[1:]:
            name, _, value = header.partition(":")
            headers.append((name.strip(), value.strip()))
        self._copy_head(start.code, start.reason, headers)

    def _copy_head(self, code: int, reason: str | None, headers) -> None:
        """Status and end-to-end headers (``(name, value)`` pairs) of the upstream response."""
        self._head_lines = None
        service = self.upstream_name or "unknown"
        metrics.UPSTREAM_LATENCY.labels(service).observe(time.monotonic() - self._attempt_started)
        if self._finished:
            return
        self.set_status(code, reason or httputil.responses.get(code, "Unknown"))
        out = self._headers
        out.pop("Content-Type", None)  # never invent one
        our_vary = out.get("Vary")
        if isinstance(headers, httputil.HTTPHeaders):
            headers = list(headers.get_all())
        dropped = connection_named(value for name, value in headers if name.lower() == "connection")
        replaced: set[str] = set()
        for name, value in headers:
            lower = name.lower()
            if (lower in RESPONSE_DROP or lower in dropped or lower.startswith("access-control-")
                    or any(c in value for c in "\r\n\0")):
                continue
            if lower not in replaced:
                replaced.add(lower)
                out.pop(name, None)  # an upstream's own value beats the gateway's default
            out.add(name, value)
        if our_vary and "vary" in replaced:
            out["Vary"] = f"{out['Vary']}, {our_vary}"

    async def _on_chunk(self, chunk: bytes) -> None:
        """``streaming_callback``: pass a body chunk on; returns once the client took it."""
        if self._client_gone or self._finished:
            raise Abandoned("client gone")
        self.write(chunk)
        try:
            await self.flush()
        except StreamClosedError:
            self._client_gone = True
            raise Abandoned("client gone") from None

    # -- bookkeeping -------------------------------------------------------------

    def _track_start(self) -> None:
        if not self._tracked:
            self._tracked = True
            self.gateway.request_started()

    def _track_end(self) -> None:
        if self._tracked:
            self._tracked = False
            self.gateway.request_finished()

    def on_finish(self) -> None:
        self._track_end()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self._client_gone = True
        if self._pipe is not None:
            self._pipe.abort()
        if asyncio.iscoroutine(self._task):
            self._task.close()  # never started: nothing was sent upstream
        self._track_end()

    def _abandon(self) -> None:
        """The client went away: log the request as 499 (nginx's "client closed request")."""
        if self._finished:
            return
        self.set_status(499, "Client Closed Request")
        try:
            self.finish()
        except Exception:  # the connection is gone; only the access log line matters
            self._finished = True

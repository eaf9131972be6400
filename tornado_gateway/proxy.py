"""The reverse proxy: route, authenticate, and stream a request to its upstream and back.

The public listener's :class:`PublicRouter` (see ``Gateway.public_router``)
sends the application's few paths (health, readiness, presence, Socket.IO) to
the ``tornado.web.Application``; every other request becomes a
:class:`ProxyExchange`, an ``HTTPMessageDelegate`` writing straight to
Tornado's ``HTTP1Connection``. A proxy needs nothing of ``RequestHandler``
(templates, cookies, XSRF, ETags, output transforms), and skipping it halves
the server side's CPU per request (docs/benchmarks.md, "HTTP edge").

In ``headers_received`` (once the request head arrived) the exchange
validates and routes the path (paths.py), authenticates (SPEC §3), calls
:meth:`ProxyExchange.admit` (revocation), waits for the rate limiter when
limits are on (the only wait before the upstream), checks the body limit and
the upstream's circuit breaker. A request with a body starts its
upstream request at once and the body follows chunk by chunk; a bodyless one
starts when Tornado has read the (empty) body:

* client -> upstream: ``data_received`` puts chunks into a :class:`BodyPipe`
  of a few chunks; the upstream client's ``body_producer`` takes them out and
  awaits each write. When the upstream is slower, the pipe fills,
  ``data_received`` returns a pending future, and Tornado stops reading from
  the client.
* upstream -> client: ``head_callback`` prepares status and headers, which
  go out together with the first body chunk (one write for a small answer);
  ``streaming_callback`` writes each chunk and, while the write is pending,
  hands the client back a future to wait on, so a slow client slows the
  upstream read down.

A refusal decided from the head (400, 401, 404, 405, 411, 413, 429, 503) is
answered once the request body was read and dropped, which keeps the
connection alive, when that body is absent or small; otherwise at once,
followed by a lingering close (handlers.answer_before_body). Upstream failures
become the gateway's JSON errors while nothing has been sent to the client
yet; after that the client connection is cut, so a truncated body is never
presented as complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from email.utils import formatdate
from functools import lru_cache
from urllib.parse import urlsplit

from tornado import httputil
from tornado.http1connection import is_transfer_encoding_chunked
from tornado.httpclient import HTTPClientError
from tornado.iostream import StreamClosedError
from tornado.simple_httpclient import HTTPTimeoutError

from tornado_gateway import metrics
from tornado_gateway.auth import AuthError, Identity, bearer_token
from tornado_gateway.circuit import CircuitBreaker
from tornado_gateway.errors import GatewayError, error_body
from tornado_gateway.handlers import (DelegateRelay, answer_before_body, default_headers, has_body,
                                      log_request, make_request_id)
from tornado_gateway.paths import PathError, Resolved, check_query, is_under, resolve
from tornado_gateway.upstream import UpstreamRequest

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
# A refused request's body up to this size is read and dropped before the answer (the
# connection stays open); a larger or unknown one gets the answer at once and a lingering close.
DROP_BODY_MAX = 4 * 1024 * 1024
# Whatever arrives beyond a body limit up to this much is dropped before the 413.
OVERSIZE_DRAIN = 4 * 1024 * 1024
SUPPORTED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


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

    def end_nowait(self):
        """End the body now when the pipe has room; else return the awaitable that will."""
        if self.aborted:
            return None
        try:
            self._queue.put_nowait(self._END)
        except asyncio.QueueFull:
            return self.end()
        return None

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


# A Host header: RFC 3986 host (reg-name, IPv4, IP literal) and optional port, the check
# HTTPServerRequest makes; a comma means two Host lines were joined, also refused.
HOST_RE = re.compile(r"(?:[\[\]:A-Za-z0-9\-._~!$&'()*+;=]|%[0-9A-Fa-f]{2})*")


class PublicRouter(httputil.HTTPServerConnectionDelegate):
    """The public listener: the application's own paths, every other path to the proxy.

    Chooses from the request line alone, so a proxied request never builds the
    ``HTTPServerRequest`` the application needs (it parses and copies the
    query arguments and costs about as much as the rest of the routing).
    """

    def __init__(self, gateway, app, app_paths: str):
        self.gateway = gateway
        self.app = app
        self.app_paths = re.compile(app_paths)

    def start_request(self, server_conn, request_conn) -> httputil.HTTPMessageDelegate:
        return _PublicRequest(self, server_conn, request_conn)


class _PublicRequest(DelegateRelay):
    """Hands one request to the application or to a ProxyExchange, once its head arrived."""

    def __init__(self, router: PublicRouter, server_conn, request_conn):
        self.router = router
        self.server_conn = server_conn
        self.request_conn = request_conn

    def headers_received(self, start_line, headers):
        router = self.router
        if router.app_paths.fullmatch(start_line.path.partition("?")[0]):
            self.delegate = router.app.start_request(self.server_conn, self.request_conn)
        else:
            request = ProxyRequest(self.request_conn, start_line, headers)
            self.delegate = ProxyExchange(router.gateway, request)
        return self.delegate.headers_received(start_line, headers)


class ProxyRequest:
    """What the proxy reads of a request: the parts of ``HTTPServerRequest`` it uses."""

    __slots__ = ("method", "uri", "version", "path", "query", "headers", "connection",
                 "remote_ip", "protocol", "host", "_start_time")

    def __init__(self, connection, start_line: httputil.RequestStartLine,
                 headers: httputil.HTTPHeaders):
        self.method, self.uri, self.version = start_line
        self.path, _, self.query = self.uri.partition("?")
        self.headers = headers
        self.connection = connection
        context = getattr(connection, "context", None)
        self.remote_ip = getattr(context, "remote_ip", None)
        self.protocol = getattr(context, "protocol", "http")
        host = headers.get("Host")
        if host is None:
            if self.version != "HTTP/1.0":
                raise httputil.HTTPInputError("Missing Host header")
            host = "127.0.0.1"
        elif not HOST_RE.fullmatch(host):
            raise httputil.HTTPInputError(f"Invalid Host header: {host!r}")
        self.host = host
        self._start_time = time.time()

    def request_time(self) -> float:
        return time.time() - self._start_time


class ProxyExchange(httputil.HTTPMessageDelegate):
    """One client request on its way to an upstream and its answer on the way back.

    Answers to the attributes ``log_request`` reads (``request``,
    ``get_status()``, ``route_name``, ``request_id``, ``user_id``,
    ``upstream_name``, ``client_ip``), like the application's handlers.
    """

    route_name = "proxy"
    upstream_name: str | None = None
    user_id: str | None = None
    identity: Identity | None = None

    def __init__(self, gateway, request: ProxyRequest):
        self.gateway = gateway
        self.request = request
        self.connection = request.connection
        self.request_id = make_request_id(request.headers.get("X-Request-ID"))
        self.status = 200
        self.extra_headers: dict[str, str] = {}  # rate-limit headers of this request
        self._head: tuple[httputil.ResponseStartLine, httputil.HTTPHeaders] | None = None
        self._head_written = False
        self._finished = False  # the response is complete (or was cut)
        self._client_gone = False
        self._tracked = False
        self._refusal: GatewayError | None = None  # sent once the body was dropped
        self._preflight = False
        self._pipe: BodyPipe | None = None
        self._resolved: Resolved | None = None  # where the request goes, once admitted
        self._breaker: CircuitBreaker | None = None
        self._attempts = 0
        self._max_attempts = 1
        self._body_limit = 0
        self._discarding = False  # the body is dropped as it arrives
        self._received = 0
        self._attempt_started = 0.0
        self._response_started = False  # the upstream's head arrived in this attempt

    @property
    def client_ip(self) -> str:
        return self.gateway.forwarding.client_ip(self.request)

    def get_status(self) -> int:
        return self.status

    # -- the client's request (HTTPMessageDelegate) ---------------------------------

    def headers_received(self, start_line, headers):
        self._tracked = True
        self.gateway.request_started()
        self.connection.set_close_callback(self.on_connection_close)
        with self._refusing():
            resolved = self._admit()
            if resolved is not None:
                if self.gateway.settings.rate_limit_enabled:
                    return self._limit_then_start(resolved)  # the only wait before the upstream
                self._start(resolved)
        return None

    async def _limit_then_start(self, resolved: Resolved) -> None:
        with self._refusing():
            self.extra_headers = await self.gateway.limits.admit_http(
                resolved.path, self.user_id, self.client_ip)
            self._start(resolved)

    @contextlib.contextmanager
    def _refusing(self):
        """A GatewayError (or a bug) while admitting the request becomes its answer."""
        try:
            yield
        except GatewayError as error:
            self._refuse(error)
        except Exception:
            log.exception("admitting a request failed", extra={"request_id": self.request_id})
            self._refuse(GatewayError("INTERNAL", "internal error"))

    def _admit(self) -> Resolved | None:
        """Route, authenticate and :meth:`admit`; the route to start, or None (a preflight)."""
        request = self.request
        if request.method not in SUPPORTED_METHODS:
            raise GatewayError("METHOD_NOT_ALLOWED", f"method {request.method} is not supported")
        if request.method == "OPTIONS":
            self._check_preflight()
            self._preflight = True
            self._accept_body(DROP_BODY_MAX, dropped=True)
            return None
        try:
            check_query(request.query)
            resolved = resolve(self.gateway.settings.routes, request.path)
        except PathError as exc:
            raise GatewayError("BAD_PATH", str(exc)) from None
        if resolved is None:
            self.route_name = "not_found"
            raise GatewayError("NOT_FOUND", "no route for this path")
        route = resolved.route
        self.route_name = self.upstream_name = route.service
        self.identity = self.authenticate(resolved.path)
        if self.identity is not None:
            self.user_id = self.identity.user_id
        self.admit(self.identity)
        return resolved

    def _start(self, resolved: Resolved) -> None:
        """Body limits and the circuit breaker; then the upstream request, now or after the body."""
        route = resolved.route
        self._accept_body(route.max_body_size)
        breaker = self.gateway.circuits.get(route.upstream)
        if not breaker.allow():
            metrics.child(metrics.UPSTREAM_ERRORS, route.service, "circuit_open").inc()
            raise GatewayError("CIRCUIT_OPEN", f"the {route.service} service is failing; retry later",
                               headers={"Retry-After": str(breaker.retry_after())})
        self._resolved, self._breaker = resolved, breaker
        # GET and HEAD are retried once on a connect failure (nothing reached the upstream).
        self._max_attempts = 2 if self.request.method in RETRYABLE_METHODS and self._pipe is None else 1
        if self._pipe is not None:  # the upstream request starts now, the body follows
            self._forward()

    def _check_preflight(self) -> None:
        headers = self.request.headers
        if not headers.get("Access-Control-Request-Method"):
            raise GatewayError("METHOD_NOT_ALLOWED", "OPTIONS is only answered as a CORS preflight")
        if not self.gateway.cors.allows(headers.get("Origin")):
            raise GatewayError("FORBIDDEN", "origin not allowed")

    def authenticate(self, path: str) -> Identity | None:
        """The caller's identity, None when anonymous on a public path; raises AuthError."""
        tokens = self.gateway.tokens
        bearer = bearer_token(self.request.headers.get("Authorization"))
        if path.rstrip("/") == REFRESH_PATH:
            # Refresh tokens are checked at the edge: a forged one never reaches auth.
            cookie = self._cookie(REFRESH_COOKIE)
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

    def _cookie(self, name: str) -> str | None:
        header = self.request.headers.get("Cookie")
        if not header:
            return None
        try:
            return httputil.parse_cookie(header).get(name)
        except Exception:  # a malformed Cookie header: no cookie
            return None

    def admit(self, identity: Identity | None) -> None:
        """Checks between authentication and the upstream; raise a GatewayError to refuse.

        ``identity`` is None for an anonymous call on a public path. Revocation
        is checked here (in memory, see revocation.py); the rate limit, which may
        wait on Redis, follows it when RATE_LIMIT_ENABLED (limits.py).
        """
        if identity is not None and self.gateway.revocations.check(identity):
            raise AuthError("TOKEN_REVOKED", "token has been revoked")

    def _accept_body(self, limit: int, dropped: bool = False) -> None:
        """Check the body's framing and size, and set up its pipe to the upstream.

        ``dropped``: the body is read and dropped whatever its size up to ``limit``
        (a preflight). A declared oversize body raises 413 before the upstream is
        contacted (``_refuse`` then decides whether it is read and dropped first);
        a chunked one is counted as it arrives (``data_received``).
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
                self._discarding = True
                raise GatewayError("PAYLOAD_TOO_LARGE", f"request body over {limit} bytes")
            self.connection.set_max_body_size(limit)
            body = size > 0
        elif chunked:
            if self.request.method not in BODY_METHODS:
                raise GatewayError("LENGTH_REQUIRED",
                                   f"a {self.request.method} body needs a Content-Length")
            # Tornado's own limit (a bare 400) must sit above ours and the drain.
            self.connection.set_max_body_size(limit + 2 * OVERSIZE_DRAIN)
            body = True
        else:
            body = False
        if dropped:
            self._discarding = True
        elif body:
            self._pipe = BodyPipe()

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
            if self._head_written:
                self._refuse_oversize()  # the response already started: cut it
            return None
        return self._pipe.put(chunk)

    def finish(self) -> None:
        """The whole request body arrived (or was dropped)."""
        if self._finished:
            return
        if self._refusal is not None:
            self.send_gateway_error(self._refusal)
        elif self._preflight:
            self._answer_preflight()
        elif self._discarding:
            self._refuse_oversize()
        elif self._pipe is not None:
            self._end_body()
        elif self._resolved is not None:
            self._forward()

    def on_connection_close(self) -> None:
        """The client went away (Tornado's close callback, or a read that failed)."""
        if self._client_gone:
            return
        self._client_gone = True
        if self._pipe is not None:
            self._pipe.abort()
        if not self._finished:
            self._abandon()

    def _end_body(self) -> None:
        ended = self._pipe.end_nowait()
        if ended is not None:  # the pipe is full: end it when there is room
            asyncio.ensure_future(ended)

    # -- refusals -----------------------------------------------------------------------

    def _refuse(self, error: GatewayError) -> None:
        """Refuse from the head: after a small body was dropped, or now (large/unknown body)."""
        headers = self.request.headers
        declared = headers.get("Content-Length", "0")
        small = ("Transfer-Encoding" not in headers and declared.isdigit()
                 and int(declared) <= DROP_BODY_MAX
                 and headers.get("Expect", "").lower() != "100-continue")
        if not has_body(headers) or small:
            self._refusal = error
            self._discarding = True
            self._body_limit = max(self._body_limit, DROP_BODY_MAX)
            if small:
                self.connection.set_max_body_size(max(int(declared), 1))
            return
        answer_before_body(self.connection, lambda: self.send_gateway_error(error, close=True))

    def _refuse_oversize(self) -> None:
        """413 (or a cut connection when the response already started)."""
        self.send_gateway_error(
            GatewayError("PAYLOAD_TOO_LARGE", f"request body over {self._body_limit} bytes"))

    def _answer_preflight(self) -> None:
        request_headers = self.request.headers
        headers = self._response_headers()
        for name, value in self.gateway.cors.preflight_headers(
            request_headers.get("Origin"), request_headers.get("Access-Control-Request-Headers")
        ):
            headers[name] = value
        headers["Content-Length"] = "0"
        self.status = 204
        self._write_all(httputil.ResponseStartLine("HTTP/1.1", 204, "No Content"), headers, None)

    # -- the upstream exchange ------------------------------------------------------------

    def _forward(self) -> None:
        """Send one attempt upstream; :meth:`_settle` takes its outcome.

        No task of its own: ``fetch`` runs the exchange, and its future's
        done-callback finishes the answer, retries, or sends the error.
        """
        self._attempts += 1
        self._response_started = False
        self._attempt_started = time.monotonic()
        try:
            fetched = self.gateway.http_client.fetch(self._upstream_request(self._resolved),
                                                     raise_error=False)
        except Exception:
            log.exception("starting the upstream request failed", extra={"request_id": self.request_id})
            self.send_gateway_error(GatewayError("INTERNAL", "internal error"))
            return
        fetched.add_done_callback(self._settle)

    def _settle(self, fetched: asyncio.Future) -> None:
        route = self._resolved.route
        retrying = False
        try:
            retrying = self._take(fetched, route, self._breaker)
        except GatewayError as error:
            if not self._client_gone and not self._discarding:
                self.send_gateway_error(error)
        except Exception:
            log.exception("proxying failed", extra={"request_id": self.request_id,
                                                    "upstream": route.service})
            if not self._client_gone:
                self.send_gateway_error(GatewayError("INTERNAL", "internal error"))
        finally:
            if self._pipe is not None:
                self._pipe.abort()  # frees a data_received still waiting on the pipe
        if retrying:
            self._forward()
        # A body over its limit (self._discarding) is answered by finish() or data_received.

    def _take(self, fetched: asyncio.Future, route, breaker: CircuitBreaker) -> bool:
        """Finish the answer from one attempt's outcome; True when it is to be retried.

        Raises the GatewayError the client gets when the upstream failed.
        """
        try:
            response = fetched.result()
            if response.code == 599 and response.error is not None:
                raise response.error
        except (Abandoned, asyncio.CancelledError):
            return False
        except (HTTPTimeoutError, TimeoutError):
            self._upstream_failed(route, breaker, "timeout", count=True)
            raise GatewayError("UPSTREAM_TIMEOUT",
                               f"the {route.service} service did not answer in time") from None
        except (HTTPClientError, StreamClosedError, httputil.HTTPInputError, OSError) as exc:
            connect_failed = is_connect_failure(exc)
            self._upstream_failed(route, breaker, "connect" if connect_failed else "reset",
                                  count=not self._response_started)
            if (connect_failed and self._attempts < self._max_attempts and breaker.allow()
                    and not self._client_gone):
                log.warning("upstream %s: connect failed (%s); retrying once", route.service,
                            type(exc).__name__,
                            extra={"request_id": self.request_id, "upstream": route.service})
                return True
            raise GatewayError("UPSTREAM_UNAVAILABLE",
                               f"the {route.service} service is unavailable") from None
        breaker.record_success()
        metrics.child(metrics.CIRCUIT_OPEN, route.service).set(0)
        if self._finished or self._client_gone:
            return False
        if self._head is None:  # no head_callback: take the head from the response
            self._on_head(httputil.ResponseStartLine("HTTP/1.1", response.code, response.reason),
                          response.headers)
        self._finish_response()
        return False

    def _upstream_failed(self, route, breaker: CircuitBreaker, kind: str, count: bool) -> None:
        metrics.child(metrics.UPSTREAM_ERRORS, route.service, kind).inc()
        if count:  # no response at all: the upstream is unhealthy
            breaker.record_failure()
            metrics.child(metrics.CIRCUIT_OPEN, route.service).set(1 if breaker.is_open else 0)

    def _upstream_request(self, resolved: Resolved) -> UpstreamRequest:
        route = resolved.route
        url = route.upstream + resolved.upstream_path
        if self.request.query:
            url += "?" + self.request.query
        method = self.request.method
        body = None
        if self._pipe is None and method in BODY_METHODS:
            body = b""
        return UpstreamRequest(
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
            head_callback=self._on_head,
            streaming_callback=self._on_chunk,
        )

    def _upstream_headers(self, route) -> dict[str, str]:
        """The request headers for the upstream, one value per name.

        A plain dict: ``AsyncHTTPClient.fetch`` copies ``request.headers`` into
        an HTTPHeaders, and copying an HTTPHeaders validates every line again
        (the client's were validated when they were parsed). Repeated fields are
        combined as RFC 9110 §5.3 allows: with ", ", and ``Cookie`` with "; "
        (RFC 6265 §5.4: one Cookie header).
        """
        incoming = self.request.headers
        dropped = connection_named(incoming.get_list("Connection")) if "Connection" in incoming else ()
        out: dict[str, str] = {}
        for name, value in incoming.get_all():  # names arrive normalised (Http-Header-Case)
            lower = name.lower()
            if (lower in REQUEST_DROP or lower in dropped or is_identity_header(lower)
                    or lower.startswith("x-forwarded-")):
                continue
            if name in out:
                out[name] += ("; " if lower == "cookie" else ", ") + value
            else:
                out[name] = value
        out.update(self.gateway.forwarding.forwarded_headers(self.request))
        out["Host"] = host_of(route.upstream)
        out["X-Request-ID"] = self.request_id
        if self.identity is not None:
            out["X-User-Id"] = self.identity.user_id
        return out

    # -- the response -------------------------------------------------------------------

    def _on_head(self, start_line: httputil.ResponseStartLine, upstream: httputil.HTTPHeaders) -> None:
        """``head_callback``: the upstream's status and end-to-end headers, ready to go out."""
        self._response_started = True
        service = self.upstream_name or "unknown"
        metrics.child(metrics.UPSTREAM_LATENCY, service).observe(time.monotonic() - self._attempt_started)
        if self._finished:
            return
        headers = self._response_headers()
        ours_vary = headers.get("Vary")
        dropped = connection_named(upstream.get_list("Connection")) if "Connection" in upstream else ()
        replaced: set[str] = set()
        for name, value in upstream.get_all():
            lower = name.lower()
            if lower in RESPONSE_DROP or lower in dropped or lower.startswith("access-control-"):
                continue
            if lower in replaced:
                headers.add(name, value)  # a repeated field (Set-Cookie): every line kept
            else:
                replaced.add(lower)
                headers[name] = value  # an upstream's own value beats the gateway's default
        if ours_vary and "vary" in replaced:
            headers["Vary"] = f"{headers['Vary']}, {ours_vary}"
        self.status = start_line.code
        self._head = (httputil.ResponseStartLine("HTTP/1.1", start_line.code, start_line.reason
                                                 or httputil.responses.get(start_line.code, "Unknown")),
                      headers)

    def _on_chunk(self, chunk: bytes):
        """``streaming_callback``: pass a body chunk on. Returns None when the client took
        it at once, else an awaitable that resolves when it did (backpressure)."""
        if self._client_gone or self._finished:
            raise Abandoned("client gone")
        if self._head_written:
            written = self.connection.write(chunk)
        else:
            self._head_written = True
            written = self.connection.write_headers(*self._head, chunk)
        if not written.done():
            return self._written(written)
        if written.exception() is not None:
            self._lost(written.exception())
        return None

    async def _written(self, written) -> None:
        try:
            await written
        except StreamClosedError as exc:
            self._lost(exc)

    def _lost(self, exc: BaseException):
        self.on_connection_close()
        raise Abandoned("client gone") from exc

    def _finish_response(self) -> None:
        if not self._head_written:
            self._head_written = True
            self.connection.write_headers(*self._head)
        self._end()

    def _response_headers(self) -> httputil.HTTPHeaders:
        """What every answer starts from (an upstream's own headers then override these)."""
        headers = httputil.HTTPHeaders()
        headers["Date"] = _http_date()
        for name, value in default_headers(self.gateway, self.request_id,
                                           self.request.headers.get("Origin")):
            headers[name] = value
        for name, value in self.extra_headers.items():
            headers[name] = value
        if self.gateway.draining:
            # Decided when the headers go out: a response that started before SIGTERM
            # and ends during the drain still says so.
            headers["Connection"] = "close"
        return headers

    def send_gateway_error(self, error: GatewayError, close: bool = False) -> None:
        """The gateway's JSON error, or a cut connection when the response already started."""
        if self._finished:
            return
        if self._head_written:
            # Too late for a status: cut the response so the client sees it fail.
            self.status = error.status
            self.connection.close()
            self._end(written=False)
            return
        headers = self._response_headers()
        for name, value in error.headers.items():
            headers[name] = value
        body = error_body(error.code, error.message, self.request_id)
        headers["Content-Type"] = "application/json; charset=utf-8"
        headers["Content-Length"] = str(len(body))
        if close:
            headers["Connection"] = "close"
        self.status = error.status
        start_line = httputil.ResponseStartLine("HTTP/1.1", error.status,
                                                httputil.responses.get(error.status, "Unknown"))
        self._write_all(start_line, headers, None if self.request.method == "HEAD" else body)

    def _write_all(self, start_line, headers, body: bytes | None) -> None:
        self._head_written = True
        self.connection.write_headers(start_line, headers, body)
        self._end()

    def _end(self, written: bool = True) -> None:
        """The response is over: finish the connection's message, log, count."""
        self._finished = True
        if written:
            self.connection.finish()
        log_request(self)
        if self._tracked:
            self._tracked = False
            self.gateway.request_finished()

    def _abandon(self) -> None:
        """The client went away: log the request as 499 (nginx's "client closed request")."""
        self.status = 499
        self._end(written=False)


_date_cache = [0, ""]


def _http_date() -> str:
    """The Date header value, formatted once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0], _date_cache[1] = now, formatdate(now, usegmt=True)
    return _date_cache[1]

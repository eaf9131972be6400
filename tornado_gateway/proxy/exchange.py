"""One proxied request: the state machine from the client's head to the upstream's last byte."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Awaitable, Iterator, cast

from tornado import httputil
from tornado.httpclient import HTTPClientError
from tornado.iostream import StreamClosedError
from tornado.simple_httpclient import HTTPTimeoutError

from tornado_gateway import metrics
from tornado_gateway.edge.identity import Identity, authenticate_http, refuse_revoked
from tornado_gateway.proxy.circuit import CircuitBreaker
from tornado_gateway.config import Route
from tornado_gateway.errors import GatewayError
from tornado_gateway.edge.responses import answer_before_body, has_body, make_request_id
from tornado_gateway.edge.paths import PathError, Resolved, check_query, class_key, resolve
from tornado_gateway.upstream.forward import ForwardRequest

from tornado_gateway.proxy.body import (BODY_METHODS, DROP_BODY_MAX, OVERSIZE_DRAIN,
                                        UPLOAD_READ_SIZE, Abandoned, BodyPipe, framing)
from tornado_gateway.proxy.circuit import is_connect_failure
from tornado_gateway.proxy.headers import upstream_headers
from tornado_gateway.proxy.request import ProxyRequest
from tornado_gateway.proxy.response import ClientResponse
from tornado_gateway.parts import GatewayParts

log = logging.getLogger("tornado_gateway.proxy")

RETRYABLE_METHODS = ("GET", "HEAD")
SUPPORTED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ProxyExchange(ClientResponse, httputil.HTTPMessageDelegate):
    """One client request on its way to an upstream and its answer on the way back.

    Answers to the attributes ``log_request`` reads (``request``,
    ``get_status()``, ``route_name``, ``request_id``, ``user_id``,
    ``upstream_name``, ``client_ip``), like the application's handlers.
    """

    route_name = "proxy"
    upstream_name: str | None = None
    user_id: str | None = None
    identity: Identity | None = None

    def __init__(self, gateway: GatewayParts, request: ProxyRequest) -> None:
        self.gateway = gateway
        self.request = request
        self.connection = request.connection
        self.request_id = make_request_id(request.headers.get("X-Request-ID"))
        self.status = 200
        self.extra_headers: dict[str, str] = {}  # rate-limit headers of this request
        self._head: tuple[httputil.ResponseStartLine, Any] | None = None
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

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
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
                class_key(resolved.path), self.user_id, self.client_ip)
            self._start(resolved)

    @contextlib.contextmanager
    def _refusing(self) -> Iterator[None]:
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
        self.identity = authenticate_http(self.gateway.tokens, self.gateway.settings.public_paths,
                                          self.request.headers, resolved.path)
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

    def admit(self, identity: Identity | None) -> None:
        """Checks between authentication and the upstream; raise a GatewayError to refuse.

        ``identity`` is None for an anonymous call on a public path. Revocation
        is checked here (in memory, see revocation.py); the rate limit, which may
        wait on Redis, follows it when RATE_LIMIT_ENABLED (limits.py).
        """
        if identity is not None:
            refuse_revoked(self.gateway.revocations, identity)

    def _accept_body(self, limit: int, dropped: bool = False) -> None:
        """Check the body's framing and size (``body.framing``), set up its pipe to the upstream.

        ``dropped``: the body is read and dropped whatever its size up to ``limit`` (a preflight).
        """
        self._body_limit = limit
        try:
            max_size, body = framing(self.request.headers, self.request.method, limit)
        except GatewayError as error:
            if error.code == "PAYLOAD_TOO_LARGE":
                self._discarding = True
            raise
        if max_size is not None:
            self.connection.set_max_body_size(max_size)
        if dropped:
            self._discarding = True
        elif body:
            self._pipe = BodyPipe()
            stream = getattr(self.connection, "stream", None)
            if stream is not None:  # a body is read in larger pieces than a head (server.py)
                stream.read_chunk_size = min(UPLOAD_READ_SIZE, stream.max_buffer_size // 2)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
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
        ended = cast(BodyPipe, self._pipe).end_nowait()
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

        No task of its own: ``forward`` runs the exchange, and its future's
        done-callback finishes the answer, retries, or sends the error.
        """
        self._attempts += 1
        self._response_started = False
        self._attempt_started = time.monotonic()
        try:
            fetched = self.gateway.http_client.forward(self._upstream_request(cast(Resolved, self._resolved)))
        except Exception:
            log.exception("starting the upstream request failed", extra={"request_id": self.request_id})
            self.send_gateway_error(GatewayError("INTERNAL", "internal error"))
            return
        fetched.add_done_callback(self._settle)

    def _settle(self, fetched: asyncio.Future) -> None:
        route = cast(Resolved, self._resolved).route
        retrying = False
        try:
            retrying = self._take(fetched, route, cast(CircuitBreaker, self._breaker))
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

    def _take(self, fetched: asyncio.Future, route: Route, breaker: CircuitBreaker) -> bool:
        """Finish the answer from one attempt's outcome; True when it is to be retried.

        Raises the GatewayError the client gets when the upstream failed.
        """
        try:
            fetched.result()
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
        self._finish_response()  # the head came through head_callback (_on_head)
        return False

    def _upstream_failed(self, route: Route, breaker: CircuitBreaker, kind: str, count: bool) -> None:
        metrics.child(metrics.UPSTREAM_ERRORS, route.service, kind).inc()
        if count:  # no response at all: the upstream is unhealthy
            breaker.record_failure()
            metrics.child(metrics.CIRCUIT_OPEN, route.service).set(1 if breaker.is_open else 0)

    def _upstream_request(self, resolved: Resolved) -> ForwardRequest:
        route = resolved.route
        tail = resolved.upstream_path
        if self.request.query:
            tail += "?" + self.request.query
        method = self.request.method
        body = None
        if self._pipe is None and method in BODY_METHODS:
            body = b""
        return ForwardRequest(
            route.upstream, tail, method,
            upstream_headers(self.request, route.upstream, self.gateway.forwarding,
                             self.request_id, self.identity),
            body, self._pipe.produce if self._pipe is not None else None,
            route.connect_timeout, route.timeout, self._on_head, self._on_chunk)

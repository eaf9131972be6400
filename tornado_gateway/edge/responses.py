"""The base request handler: request id, security headers, CORS, JSON errors, access log.

Why it works this way: docs/design-notes.md.
"""

from __future__ import annotations

from asyncio import Future
from tornado.iostream import IOStream
from types import TracebackType

import asyncio
import logging
import re
import os
import socket
import time

import tornado.web
from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.iostream import StreamClosedError

from tornado_gateway import logs, metrics, tornado_compat
from tornado_gateway.errors import JSON_CONTENT_TYPE, GatewayError, error_body
from tornado_gateway.parts import GatewayParts
from typing import Any, Awaitable, Callable, Iterator, TypeVar, cast

T = TypeVar("T")
from tornado_gateway.codec import dumps_bytes

access_log = logging.getLogger("tornado_gateway.access")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}\Z")
_CODE_OF_STATUS = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 403: "FORBIDDEN", 404: "NOT_FOUND",
                   405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE", 429: "RATE_LIMITED",
                   503: "DRAINING"}


LINGER_SECONDS = 5.0  # how long a refused request's unread body is still read and dropped


def make_request_id(incoming: str | None) -> str:
    """Keep a sane client-supplied X-Request-ID, else make one."""
    if incoming and REQUEST_ID_RE.match(incoming):
        return incoming
    return os.urandom(16).hex()  # 32 hex digits, like uuid4().hex, for a quarter of its cost


class LingeringClose(tornado.web.RequestHandler):
    """Mixin for ``@stream_request_body`` handlers: a lingering close after an early answer.

    A response finished in ``prepare()`` (a 401, 404, 413, 429 before the body
    was read) makes Tornado close the connection at once. When the client is
    still sending a body, the kernel answers the unread bytes with a reset,
    which can destroy the response before the client has read it: the client
    sees "connection reset" instead of the JSON error. Here the connection is
    taken from Tornado instead; once the response is written the sending side
    is shut down (the client reads the answer, then EOF) and what the client
    still sends is read and dropped for up to LINGER_SECONDS (nginx's
    lingering close). Bodyless requests are closed as Tornado does.
    """

    def finish(self, chunk: str | bytes | dict | None = None) -> Future[None]:
        if not self._body_unread():
            return super().finish(chunk)
        self.set_header("Connection", "close")
        finish = super().finish
        return answer_before_body(self.request.connection, lambda: finish(chunk))

    def _body_unread(self) -> bool:
        return tornado_compat.body_unread(self) and has_body(self.request.headers)


def answer_before_body(connection: Any, send: Callable[[], T]) -> T:
    """Run ``send()``, which writes a whole response (``Connection: close``) while the
    request body is still unread, then close with a lingering close; returns what
    ``send`` returned. Only while the request's headers are being handled (Tornado
    allows ``detach`` there: a handler's ``prepare``, a delegate's ``headers_received``).
    """
    # HTTP1Connection.finish() would close the stream itself, possibly before it
    # returns, because the body is unread.
    tornado_compat.answer_without_reading_body(connection)
    result = send()
    asyncio.ensure_future(_linger(connection.detach()))
    return result


def has_body(headers: httputil.HTTPHeaders) -> bool:
    """Whether a request announces a body (chunked, or a Content-Length above 0)."""
    return "Transfer-Encoding" in headers or headers.get("Content-Length", "0") not in ("", "0")


def default_headers(gateway: GatewayParts, request_id: str,
                    origin: str | None) -> Iterator[tuple[str, str]]:
    """(name, value) pairs every public response starts from: the security floor, the
    request id and the CORS headers for ``origin``."""
    yield from gateway.security_headers
    yield from request_headers(gateway, request_id, origin)


def request_headers(gateway: GatewayParts, request_id: str, origin: str | None) -> list[tuple[str, str]]:
    """The part of :func:`default_headers` after the security floor: what varies by request."""
    return [("X-Request-ID", request_id), *gateway.cors.response_headers(origin)]


async def _linger(stream: IOStream) -> None:
    try:
        await stream.write(b"")  # resolves once the response is on the wire
        stream.socket.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.wait_for(stream.read_bytes(65536, partial=True), left)
    except (StreamClosedError, OSError, asyncio.TimeoutError):
        pass
    finally:
        stream.close()


def finish_error(handler: tornado.web.RequestHandler, error: GatewayError,
                 request_id: str | None) -> Future[None]:
    """Answer with THE error envelope (errors.error_body): status, headers, JSON body."""
    handler.set_status(error.status)
    for name, value in error.headers.items():
        handler.set_header(name, value)
    handler.set_header("Content-Type", JSON_CONTENT_TYPE)
    return handler.finish(error_body(error.code, error.message, request_id))


class GatewayApplication(tornado.web.Application):
    """A ``tornado.web.Application`` whose handlers reach the node as ``self.gateway``."""

    gateway: GatewayParts


class DelegateRelay(httputil.HTTPMessageDelegate):
    """Passes a request's body and end on to ``self.delegate``, which a subclass sets
    in ``headers_received`` at the latest (the public router, the drain's busy mark)."""

    delegate: Any = None  # an httputil.HTTPMessageDelegate once headers_received ran

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()

    def on_connection_close(self) -> None:
        if self.delegate is not None:
            self.delegate.on_connection_close()


class GatewayHandler(LingeringClose, tornado_compat.RequestExceptionHook):
    """Shared behaviour of every public endpoint."""

    route_name = "gateway"  # metrics/log label; subclasses name themselves
    upstream_name: str | None = None
    user_id: str | None = None

    request_id: str | None = None

    @property
    def gateway(self) -> GatewayParts:
        return cast(GatewayApplication, self.application).gateway

    def set_default_headers(self) -> None:
        # Runs in __init__ and again on clear(): the request id must not change.
        if self.request_id is None:
            self.request_id = make_request_id(self.request.headers.get("X-Request-ID"))
        headers = tornado_compat.response_headers(self)
        del headers["Server"]
        for name, value in default_headers(self.gateway, self.request_id,
                                           self.request.headers.get("Origin")):
            headers[name] = value

    def flush(self, include_footers: bool = False) -> Future[None]:
        # Decided when the headers go out, not when the request came in: a response
        # that started before SIGTERM and ends during the drain still says so.
        if not tornado_compat.headers_written(self) and self.gateway.draining:
            self.set_header("Connection", "close")
        return super().flush(include_footers)

    @property
    def client_ip(self) -> str:
        return self.gateway.forwarding.client_ip(self.request)

    def options(self, *args: str, **kwargs: str) -> None:
        """CORS preflights are answered here and never reach an upstream."""
        origin = self.request.headers.get("Origin")
        if not self.request.headers.get("Access-Control-Request-Method"):
            raise GatewayError("METHOD_NOT_ALLOWED", "OPTIONS is only answered as a CORS preflight")
        if not self.gateway.cors.allows(origin):
            raise GatewayError("FORBIDDEN", "origin not allowed")
        for name, value in self.gateway.cors.preflight_headers(
            origin, self.request.headers.get("Access-Control-Request-Headers")
        ):
            self.set_header(name, value)
        self.set_status(204)
        self.finish()

    def write_json(self, status: int, payload: Any) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(dumps_bytes(payload))

    def send_gateway_error(self, error: GatewayError) -> None:
        if tornado_compat.handler_finished(self):
            return
        if tornado_compat.headers_written(self):
            # Too late for a status: cut the response so the client sees it fail.
            cast(HTTP1Connection, self.request.connection).close()
            tornado_compat.mark_finished(self)
            return
        self.clear()
        finish_error(self, error, self.request_id)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, GatewayError):
            error = exc
        else:
            code = _CODE_OF_STATUS.get(status_code, "INTERNAL" if status_code >= 500 else "BAD_REQUEST")
            reason = tornado_compat.reason(self) if status_code < 500 else "internal error"
            error = GatewayError(code, reason, status_code)
        self.send_gateway_error(error)

    def log_exception(self, typ: type[BaseException] | None, value: BaseException | None,
                      tb: TracebackType | None) -> None:
        if isinstance(value, GatewayError):
            return  # an answer, not a failure
        if isinstance(value, tornado.web.HTTPError):
            return
        access_log.error("unhandled error in %s", self.request.path, exc_info=value,
                         extra={"request_id": getattr(self, "request_id", None)})

    def on_request_exception(self, e: BaseException) -> bool:
        if isinstance(e, GatewayError):
            self.send_gateway_error(e)
            return True
        return False


class NotFoundHandler(GatewayHandler):
    """What answers when no route matches."""

    route_name = "not_found"

    def prepare(self) -> None:
        if self.request.method != "OPTIONS":
            raise GatewayError("NOT_FOUND", "no route for this path")


# Polled by machines or one request per socket.io poll: their successes are logged at debug.
QUIET_ROUTES = frozenset({"health", "ready", "metrics", "socket.io"})


def log_request(handler: Any) -> None:
    """One access line and the HTTP metrics per request: the applications' ``log_function``,
    and what the proxy's exchanges call (they answer to the same attributes)."""
    status = handler.get_status()
    duration = handler.request.request_time()
    route = getattr(handler, "route_name", "other")
    metrics.child(metrics.HTTP_REQUESTS, route, handler.request.method, str(status)).inc()
    metrics.child(metrics.HTTP_LATENCY, route).observe(duration)
    level = logging.INFO if status < 500 else logging.WARNING
    if status < 400 and route in QUIET_ROUTES:
        level = logging.DEBUG
    if logs.access.enabled_for(level):
        logs.access.write(level, handler.request.method, handler.request.path, status, duration,
                          getattr(handler, "request_id", None), getattr(handler, "user_id", None), route,
                          getattr(handler, "upstream_name", None),
                          getattr(handler, "client_ip", None) if status >= 400 else None)

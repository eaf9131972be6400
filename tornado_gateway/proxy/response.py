"""The proxied request's answer to the client: head, streamed body, the gateway's own errors."""

from __future__ import annotations

from asyncio import Future

import time
from typing import Any, cast, Awaitable, NoReturn

from tornado import httputil
from tornado.iostream import StreamClosedError

from tornado_gateway import metrics, tornado_compat
from tornado_gateway.edge.responses import default_headers, log_request, request_headers
from tornado_gateway.errors import JSON_CONTENT_TYPE, GatewayError, error_body
from tornado_gateway.proxy.body import Abandoned
from tornado_gateway.proxy.headers import http_date, merge_response_headers, response_head


class ClientResponse:
    """The writing half of ``ProxyExchange`` (mixed in): everything sent to the client."""

    gateway: Any
    request: Any
    connection: Any
    request_id: str
    status: int
    upstream_name: str | None
    extra_headers: dict[str, str]
    _head: tuple[httputil.ResponseStartLine, Any] | None  # HTTPHeaders, or response_head()'s bytes
    _head_written: bool
    _finished: bool
    _client_gone: bool
    _tracked: bool
    _attempt_started: float
    _response_started: bool

    def on_connection_close(self) -> None:
        raise NotImplementedError

    def _on_head(self, start_line: httputil.ResponseStartLine, upstream: httputil.HTTPHeaders) -> None:
        """``head_callback``: the upstream's status and end-to-end headers, ready to go out."""
        self._response_started = True
        service = self.upstream_name or "unknown"
        metrics.child(metrics.UPSTREAM_LATENCY, service).observe(time.monotonic() - self._attempt_started)
        if self._finished:
            return
        self.status = start_line.code
        start = httputil.ResponseStartLine("HTTP/1.1", start_line.code, start_line.reason
                                           or httputil.responses.get(start_line.code, "Unknown"))
        # The security floor goes in as one block formatted once (headers.preformatted).
        pairs = self._default_pairs(with_security=False)
        raw = response_head(pairs, upstream, self.gateway.security_headers, at=1)
        if raw is not None:  # the usual case: written as bytes, no HTTPHeaders on the way out
            self._head = (start, raw)
            return
        headers = self._response_headers()
        merge_response_headers(headers, upstream)
        self._head = (start, headers)

    def _write_head(self, chunk: bytes | None = None) -> "Future[None]":
        self._head_written = True
        start, head = cast(tuple, self._head)
        if isinstance(head, tuple):
            block, content_length, closes = head
            return tornado_compat.write_response_head(self.connection, start, block, content_length,
                                                      closes, chunk)
        return cast("Future[None]", self.connection.write_headers(start, head, chunk))

    def _on_chunk(self, chunk: bytes) -> Awaitable[None] | None:
        """``streaming_callback``: pass a body chunk on. Returns None when the client took
        it at once, else an awaitable that resolves when it did (backpressure)."""
        if self._client_gone or self._finished:
            raise Abandoned("client gone")
        if self._head_written:
            written = self.connection.write(chunk)
        else:
            written = self._write_head(chunk)
        if not written.done():
            return self._written(written)
        if written.exception() is not None:
            self._lost(written.exception())
        return None

    async def _written(self, written: Future[None]) -> None:
        try:
            await written
        except StreamClosedError as exc:
            self._lost(exc)

    def _lost(self, exc: BaseException) -> NoReturn:
        self.on_connection_close()
        raise Abandoned("client gone") from exc

    def _finish_response(self) -> None:
        if not self._head_written:
            self._write_head()
        self._end()

    def _default_pairs(self, with_security: bool = True) -> list[tuple[str, str]]:
        """What every answer starts from (an upstream's own headers then override these);
        without the security headers (the Date's follower) when not ``with_security``."""
        pairs = [("Date", http_date())]
        origin = self.request.headers.get("Origin")
        if with_security:
            pairs.extend(default_headers(self.gateway, self.request_id, origin))
        else:
            pairs.extend(request_headers(self.gateway, self.request_id, origin))
        pairs.extend(self.extra_headers.items())
        if self.gateway.draining:
            # Decided when the headers go out: a response that started before SIGTERM
            # and ends during the drain still says so.
            pairs.append(("Connection", "close"))
        return pairs

    def _response_headers(self) -> httputil.HTTPHeaders:
        headers = httputil.HTTPHeaders()
        for name, value in self._default_pairs():
            headers[name] = value
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
        headers["Content-Type"] = JSON_CONTENT_TYPE
        headers["Content-Length"] = str(len(body))
        if close:
            headers["Connection"] = "close"
        self.status = error.status
        start_line = httputil.ResponseStartLine("HTTP/1.1", error.status,
                                                httputil.responses.get(error.status, "Unknown"))
        self._write_all(start_line, headers, None if self.request.method == "HEAD" else body)

    def _write_all(self, start_line: httputil.ResponseStartLine, headers: httputil.HTTPHeaders,
                   body: bytes | None) -> None:
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



"""One upstream fetch: get a connection, send the request, read the response, settle once."""

from __future__ import annotations

from asyncio import Future

import base64
import logging
import ssl
import time
from io import BytesIO
from typing import Any, Awaitable, Callable, Protocol

from tornado import httputil
from tornado.httpclient import HTTPRequest, HTTPResponse
from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError
from tornado.simple_httpclient import HTTPStreamClosedError, HTTPTimeoutError


from tornado_gateway import tornado_compat
from tornado_gateway.upstream import wire
from tornado_gateway.upstream.pool import HostPool, Target
from tornado_gateway.upstream.stream import Connection, buffered

log = logging.getLogger("tornado_gateway.upstream")

UNLIMITED = 1 << 62
CHUNKED_METHODS = ("POST", "PUT", "PATCH")  # a body of unknown length is chunked for these


class ConnectionSource(Protocol):
    """What an exchange needs of its client (``PooledHTTPClient``)."""

    max_header_size: int
    max_body_size: int | None
    max_buffer_size: int

    def ssl_options_for(self, key: tuple, request: HTTPRequest) -> ssl.SSLContext | dict: ...

    def pool_for(self, key: tuple) -> HostPool: ...

    async def acquire(self, pool: HostPool, target: Target, deadline: float | None,
                      replayable: bool = True) -> tuple[Connection, bool]: ...

    async def open(self, pool: HostPool, target: Target, deadline: float | None) -> Connection: ...


class Exchange:
    """One fetch: get a connection, send the request, read the response, settle once."""

    def __init__(self, client: ConnectionSource, request: Any,
                 callback: Callable[[Any], None], target: Target | None = None) -> None:
        """``request``: an HTTPRequest (or forward.ForwardRequest); ``callback`` gets the
        HTTPResponse; ``target``: where it goes, when the caller parsed that already."""
        self.client = client
        self.request = request
        self.callback: Callable[[Any], None] | None = callback
        self.target = target
        self.io_loop = IOLoop.current()
        self.start_time = self.io_loop.time()
        self.start_wall_time = time.time()
        self.stream: Connection | None = None
        self.timeout_handle: Any = None
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
            target = self.target or Target(self.request)
            if target.ssl_key is not None:
                target.ssl_options = self.client.ssl_options_for(target.ssl_key, self.request)
            pool = self.client.pool_for(target.pool_key)
            headers = self.request_headers(target)
            stream, reused = await self.client.acquire(
                pool, target, self.connect_deadline(), self.request.body_producer is None)
            self._start_request_timer()
            if not await self._send_and_read(pool, stream, reused, target, headers):
                # The reused connection was dead: once more on a new one (may exceed the cap by one).
                connect_timeout = self.request.connect_timeout
                deadline = self.io_loop.time() + connect_timeout if connect_timeout else None
                stream = await self.client.open(pool, target, deadline)
                await self._send_and_read(pool, stream, False, target, headers)
        except Exception as exc:  # cancelled (the client closed): the client's task callback settles
            self._settle_error(exc)
        else:
            self._settle_response()

    def cancelled(self) -> None:
        """Its task was cancelled, maybe before it ran (the client closed): settle once."""
        self._settle_error(HTTPStreamClosedError("client closed"))

    async def _send_and_read(self, pool: HostPool, stream: Connection, reused: bool,
                             target: Target, headers: httputil.HTTPHeaders) -> bool:
        """One attempt on one connection; False when a dead reused connection should be retried."""
        if self.callback is None:  # the request timed out while this connection was opened
            pool.give_back(stream)
            return True
        self.stream = stream
        try:
            await self._send(stream, target, headers)
            await self.read_from(stream)
        except httputil.HTTPInputError as exc:  # bad framing: the connection is unusable
            pool.discard(stream)
            log.info("Malformed HTTP response from %s: %s", target.netloc, exc)
            if self.callback_error is not None:
                raise self.callback_error from None
            raise HTTPStreamClosedError("Connection closed before the response was complete") from None
        except Exception as exc:
            pool.discard(stream)
            if self.callback_error is not None:
                raise self.callback_error from None
            if reused and self._may_retry(stream, exc):
                self._reset_response()
                return False
            raise self.as_stream_error(exc) from None
        except BaseException:  # cancelled by close()
            pool.discard(stream)
            raise
        finally:
            self.stream = None
        if self.callback_error is not None:
            pool.discard(stream)
            raise self.callback_error
        if self.reusable(stream, headers):
            pool.give_back(stream)
        else:
            pool.discard(stream)
        return True

    async def read_from(self, stream: Connection) -> None:
        """Read this exchange's response on ``stream``, where its request was sent."""
        self.stream = stream
        await wire.read_response(stream, self, self.request.method, self._body_limit(),
                                 self.client.max_header_size)
        self.complete = True

    async def _send(self, stream: Connection, target: Target, headers: httputil.HTTPHeaders) -> None:
        """The request head, with its body when there is one, in one write; a produced body after it."""
        request = self.request
        method = request.method
        chunked = method in CHUNKED_METHODS and "Content-Length" not in headers
        head = wire.request_head(method, target.path, headers, chunked)
        body = request.body
        if body is not None:
            wire.send(stream, head + body if body else head)
            return
        wire.send(stream, head)
        length = headers.get("Content-Length")
        writer = wire.BodyWriter(stream, chunked, int(length) if length is not None else None)
        producer = request.body_producer
        if producer is not None:
            await self._produce_body(producer, writer)
        writer.finish()

    async def _produce_body(self, producer: Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]],
                            writer: wire.BodyWriter) -> None:
        def write(chunk: bytes) -> Future[None]:
            self.body_started = True
            return writer.write(chunk)

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

    def request_headers(self, target: Target) -> httputil.HTTPHeaders:
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

    def connect_deadline(self) -> float | None:
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

    def _may_retry(self, stream: Connection, exc: Exception) -> bool:
        """A reused connection died before the upstream answered, and replaying is safe."""
        return (
            isinstance(exc, (StreamClosedError, OSError))
            and self.start_line is None
            and not _received_anything(stream)
            and not self.body_started
            and self.callback is not None
        )

    def reusable(self, stream: Connection, request_headers: httputil.HTTPHeaders) -> bool:
        if stream.closed() or tornado_compat.http_client_closed(self.client):
            return False
        if request_headers.get("Connection", "").lower() == "close":
            return False
        assert self.start_line is not None and self.headers is not None
        connection_header = self.headers.get("Connection", "").lower()
        if self.start_line.version == "HTTP/1.1":
            return connection_header != "close"
        return connection_header == "keep-alive"

    @staticmethod
    def as_stream_error(exc: Exception) -> Exception:
        if isinstance(exc, (StreamClosedError, OSError)):
            real = getattr(exc, "real_error", None) or (exc if isinstance(exc, OSError) else None)
            message = f"Connection closed ({real})" if real else "Connection closed"
            return HTTPStreamClosedError(message)
        return exc

    # -- wire.ResponseDelegate ----------------------------------------------------

    def headers_received(self, start_line: httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> None:
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

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
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

    async def _await_callback(self, result: Awaitable[None]) -> None:
        try:
            await result
        except Exception as exc:
            self._abort(exc)

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

    def _settle(self, response: HTTPResponse | BaseException | None) -> None:
        callback, self.callback = self.callback, None
        assert callback is not None  # settled once
        if self.timeout_handle is not None:
            self.timeout_handle.cancel()
            self.timeout_handle = None
        callback(response)


def _received_anything(stream: Connection) -> bool:
    # The stream keeps bytes of an unfinished read (a partial status line) in its buffer.
    return buffered(stream) > 0



"""Requests that must reach one upstream in order, written back to back on one connection.

HTTP/1.1 pipelining for replayable requests (a socket's ``message:send`` carries an
Idempotency-Key): every request is written at once and the answers are read in order, so
the upstream gets them in this order without a round trip between them. When the
connection ends before every answer came (an error, ``Connection: close``), the unanswered
requests go out again, in order, on another connection. Why: docs/design-notes.md.
"""

from __future__ import annotations

import asyncio
from tornado import httputil
from tornado.ioloop import IOLoop
from tornado.simple_httpclient import HTTPStreamClosedError, HTTPTimeoutError

from tornado_gateway import tornado_compat
from tornado_gateway.upstream import wire
from tornado_gateway.upstream.exchange import ConnectionSource, Exchange
from tornado_gateway.upstream.forward import ForwardExchange
from tornado_gateway.upstream.pool import HostPool, Target
from tornado_gateway.upstream.stream import Connection, buffered


class PipelinedExchange:
    """Several ``ForwardExchange`` to one upstream, in order, sharing connections."""

    def __init__(self, client: ConnectionSource, exchanges: list[ForwardExchange]) -> None:
        self.client = client
        self.exchanges = exchanges
        self.stream: Connection | None = None
        self.timed_out = False

    async def run(self) -> None:
        pending = self.exchanges
        first = pending[0]
        timer = None
        try:
            targets = [exchange.target or Target(exchange.request) for exchange in pending]
            pool_key = targets[0].pool_key
            if any(target.pool_key != pool_key for target in targets):
                raise ValueError("pipelined requests must go to one upstream")
            if targets[0].ssl_key is not None:
                options = self.client.ssl_options_for(targets[0].ssl_key, first.request)
                for target in targets:
                    target.ssl_options = options
            pool = self.client.pool_for(pool_key)
            payloads = {id(exchange): _request_bytes(exchange, target)
                        for exchange, target in zip(pending, targets)}
            timeout = first.request.request_timeout
            if timeout:
                timer = IOLoop.current().call_at(first.start_time + timeout, self._on_timeout)
            fresh = False  # after an attempt that got no answer, open a new connection
            while pending and not self.timed_out:
                if fresh:
                    stream, reused = await self.client.open(pool, targets[0], first.connect_deadline()), False
                else:
                    stream, reused = await self.client.acquire(pool, targets[0], first.connect_deadline())
                left = await self._attempt(pool, stream, reused, pending, payloads)
                fresh = len(left) == len(pending)
                pending = left
        except asyncio.CancelledError:
            self._fail(pending, HTTPStreamClosedError("client closed"))
            raise
        except Exception as exc:
            self._fail(pending, exc)
        finally:
            if timer is not None:
                IOLoop.current().remove_timeout(timer)

    async def _attempt(self, pool: HostPool, stream: Connection, reused: bool,
                       pending: list[ForwardExchange], payloads: dict[int, bytes]) -> list[ForwardExchange]:
        """Write every pending request, read the answers in order; what is left to send again."""
        self.stream = stream
        try:
            wire.send(stream, b"".join(payloads[id(exchange)] for exchange in pending))
            for index, exchange in enumerate(pending):
                try:
                    await exchange.read_from(stream)
                except Exception as exc:
                    pool.discard(stream)
                    if self.timed_out:
                        return []
                    if exchange.callback_error is not None:  # its own callback refused the answer
                        exchange.finish(exchange.callback_error)
                        return pending[index + 1:]
                    if isinstance(exc, httputil.HTTPInputError):
                        exchange.finish(HTTPStreamClosedError("Malformed HTTP response"))
                        return pending[index + 1:]
                    if exchange.start_line is None and (index > 0 or reused) and self._may_replay(stream):
                        exchange.unread()
                        return pending[index:]  # the upstream never answered these
                    self._fail(pending[index:], Exchange.as_stream_error(exc))
                    return []
                exchange.finish()
                if not exchange.reusable(stream, exchange.request.headers):
                    pool.discard(stream)
                    return pending[index + 1:]
            pool.give_back(stream)
            return []
        finally:
            self.stream = None

    def _may_replay(self, stream: Connection) -> bool:
        return not tornado_compat.http_client_closed(self.client) and \
            buffered(stream) == 0

    def _on_timeout(self) -> None:
        self.timed_out = True
        self._fail(self.exchanges, HTTPTimeoutError("Timeout during request"))
        if self.stream is not None:
            self.stream.close()

    @staticmethod
    def _fail(exchanges: list[ForwardExchange], exc: BaseException) -> None:
        for exchange in exchanges:
            exchange.finish(exc)  # settled ones stay as they are


def _request_bytes(exchange: ForwardExchange, target: Target) -> bytes:
    """The whole request, head and body (a pipelined request has its body in memory)."""
    request = exchange.request
    if request.body_producer is not None:
        raise ValueError("a pipelined request needs its body as bytes")
    headers = exchange.request_headers(target)
    return wire.request_head(request.method, target.path, headers, False) + (request.body or b"")


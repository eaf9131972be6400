"""Requests that must reach one upstream in order, written back to back on one connection.

HTTP/1.1 pipelining for replayable requests (a socket's ``message:send`` carries an
Idempotency-Key): every request is written at once and the answers are read in order, so
the upstream gets them in this order without a round trip between them. When the
connection ends before every answer came (an error, ``Connection: close``), the unanswered
requests go out again, in order, on another connection. ``TurnBatches`` gathers requests
that may share a connection (GETs of different sockets) over one loop turn and sends each
upstream's share that way, at most ``PIPELINE_DEPTH`` per connection. Why: docs/design-notes.md.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from tornado import httputil
from tornado.ioloop import IOLoop
from tornado.simple_httpclient import HTTPStreamClosedError, HTTPTimeoutError

from tornado_gateway import tornado_compat
from tornado_gateway.upstream import wire
from tornado_gateway.upstream.exchange import ConnectionSource, Exchange
from tornado_gateway.upstream.forward import ForwardExchange
from tornado_gateway.upstream.pool import HostPool, Target
from tornado_gateway.upstream.stream import Connection, buffered

PIPELINE_DEPTH = 16  # requests of one turn batch written back to back on one connection


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
                if self.timed_out:  # every request failed while the connection came
                    pool.give_back(stream)
                    break
                left = await self._attempt(pool, stream, reused, pending, payloads)
                fresh = len(left) == len(pending)
                pending = left
        except Exception as exc:  # cancelled (the client closed): the client's task callback settles
            self._fail(pending, exc)
        finally:
            if timer is not None:
                IOLoop.current().remove_timeout(timer)

    async def _attempt(self, pool: HostPool, stream: Connection, reused: bool,
                       pending: list[ForwardExchange], payloads: dict[int, bytes]) -> list[ForwardExchange]:
        """Write every pending request, read the answers in order; what is left to send again."""
        self.stream = stream
        try:
            try:
                wire.send(stream, b"".join(payloads[id(exchange)] for exchange in pending))
            except Exception as exc:  # closed while idle (or handed over just as it closed)
                pool.discard(stream)
                if reused and self._may_replay(stream):
                    return pending  # nothing was sent: all of them again, on a new connection
                self._fail(pending, Exchange.as_stream_error(exc))
                return []
            for index, exchange in enumerate(pending):
                try:
                    await exchange.read_from(stream)
                except asyncio.CancelledError:  # the client closes: the connection goes too
                    pool.discard(stream)
                    raise
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
                if exchange.callback_error is not None:  # refused an answer read whole (too large)
                    pool.discard(stream)
                    exchange.finish(exchange.callback_error)
                    return pending[index + 1:]
                exchange.finish()
                if not exchange.reusable(stream, exchange.request.headers):
                    pool.discard(stream)
                    return pending[index + 1:]
            pool.give_back(stream)
            return []
        finally:
            self.stream = None

    def cancelled(self) -> None:
        """Its task was cancelled, maybe before it ran (the client closed): settle every request."""
        self._fail(self.exchanges, HTTPStreamClosedError("client closed"))

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



class TurnBatches:
    """Replayable requests without a body made during one loop turn, per upstream (and
    timeouts): at the end of the turn each upstream's share goes out pipelined, ``depth`` requests per connection
    (one request alone goes as a plain exchange). Under light load a batch is one request and
    waits for nothing but the rest of the turn; in a burst (a reconnect storm's ``chat:join``
    membership checks) a batch costs one connection, one write and a read or two, where one
    request per connection would open hundreds of connections at once."""

    def __init__(self, client: ConnectionSource, run: Callable[[Exchange | PipelinedExchange], None],
                 depth: int = PIPELINE_DEPTH) -> None:
        self.client = client
        self.run = run
        self.depth = depth
        self.waiting: dict[tuple, list[ForwardExchange]] = {}

    def add(self, exchange: ForwardExchange) -> None:
        target = exchange.target
        if target is None:  # no parsed target to group by: on its own
            self.run(exchange)
            return
        if not self.waiting:
            asyncio.get_running_loop().call_soon(self._flush)
        request = exchange.request  # a batch shares one deadline: same upstream, same timeouts
        key = (target.pool_key, request.connect_timeout, request.request_timeout)
        self.waiting.setdefault(key, []).append(exchange)

    def close(self) -> None:
        """The client closes: what waits for the end of the turn fails as in-flight fetches do."""
        waiting, self.waiting = self.waiting, {}
        for exchanges in waiting.values():
            PipelinedExchange._fail(exchanges, HTTPStreamClosedError("client closed"))

    def _flush(self) -> None:
        waiting, self.waiting = self.waiting, {}
        for exchanges in waiting.values():
            # share the batch out evenly: 17 requests go 9 + 8, not 16 + 1
            connections = -(-len(exchanges) // self.depth)
            for index in range(connections):
                share = exchanges[index::connections]
                self.run(share[0] if len(share) == 1 else PipelinedExchange(self.client, share))

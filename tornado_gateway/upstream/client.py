"""The pooled keep-alive ``AsyncHTTPClient`` the proxy and the socket services use."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any, Callable

from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.ioloop import PeriodicCallback
from tornado.iostream import IOStream, StreamClosedError
from tornado.netutil import Resolver
from tornado.simple_httpclient import HTTPTimeoutError
from tornado.tcpclient import TCPClient


from tornado_gateway import tornado_compat
from tornado_gateway.upstream import wire
from tornado_gateway.upstream.exchange import Exchange
from tornado_gateway.upstream.forward import ForwardExchange, ForwardRequest, target_for
from tornado_gateway.upstream.pipeline import PipelinedExchange, TurnBatches
from tornado_gateway.upstream.pool import HostPool, LiteralFirstResolver, Target, remaining, ssl_options
from tornado_gateway.upstream.stream import Connection, on_transport

#: Defaults every request gets unless it says otherwise: a proxy passes
#: redirects and compressed bodies through untouched.
PROXY_DEFAULTS = {"follow_redirects": False, "decompress_response": False,
                  "allow_nonstandard_methods": True}


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
        self.max_header_size = max_header_size or wire.MAX_HEAD
        self.own_resolver = resolver is None
        self.resolver = resolver or LiteralFirstResolver()
        self.tcp_client = TCPClient(resolver=self.resolver)
        self.pools: dict[tuple, HostPool] = {}
        self.connections_opened = 0
        self._sweeper: PeriodicCallback | None = None
        self._running: set[asyncio.Task] = set()
        self._ssl_contexts: dict[tuple, ssl.SSLContext | dict] = {}
        self._turn_batches = TurnBatches(self, self._run)

    def close(self) -> None:
        if tornado_compat.http_client_closed(self):
            return
        super().close()
        if self._sweeper is not None:
            self._sweeper.stop()
        for task in list(self._running):
            task.cancel()  # in-flight fetches fail with HTTPStreamClosedError("client closed")
        self._turn_batches.close()
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()
        self.tcp_client.close()
        if self.own_resolver:
            self.resolver.close()

    def fetch_impl(self, request: HTTPRequest, callback: Callable[[HTTPResponse], None]) -> None:
        self._run(Exchange(self, request, callback))

    def forward(self, request: ForwardRequest) -> "asyncio.Future[None]":
        """A proxied request (forward.py): ``fetch(request, raise_error=False)`` for a proxy.

        The future's result is None once the response went through ``head_callback`` and
        ``streaming_callback``; it fails with the exceptions ``fetch`` raises."""
        self._check_open()
        future, settle = _settler()
        self._run(ForwardExchange(self, request, settle, target_for(request)))
        return future

    def forward_in_order(self, requests: list[ForwardRequest]) -> "list[asyncio.Future[None]]":
        """Replayable requests to one upstream, pipelined on one connection (pipeline.py): the
        upstream gets them in this order. One future per request, as ``forward``'s."""
        self._check_open()
        futures, exchanges = [], []
        for request in requests:
            future, settle = _settler()
            futures.append(future)
            exchanges.append(ForwardExchange(self, request, settle, target_for(request)))
        self._run(PipelinedExchange(self, exchanges))
        return futures

    def forward_batched(self, request: ForwardRequest) -> "asyncio.Future[None]":
        """A request that may share a connection, as ``forward``: it must be replayable and
        have no body (a GET). The ones made in one loop turn to one upstream go pipelined
        (pipeline.TurnBatches); the upstream may get them in any order."""
        self._check_open()
        if request.body is not None or request.body_producer is not None:
            raise ValueError("a batched request has no body")
        future, settle = _settler()
        self._turn_batches.add(ForwardExchange(self, request, settle, target_for(request)))
        return future

    def _check_open(self) -> None:
        if tornado_compat.http_client_closed(self):
            raise RuntimeError("forward() called on closed AsyncHTTPClient")

    def _run(self, exchange: Exchange | PipelinedExchange) -> None:
        task = asyncio.ensure_future(exchange.run())
        self._running.add(task)  # asyncio keeps only weak references to tasks
        task.add_done_callback(lambda done: _forget(self._running, done, exchange))

    # -- connections -------------------------------------------------------

    def pool_for(self, key: tuple) -> HostPool:
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = HostPool(self.max_connections_per_host)
            self._start_sweeper()
        return pool

    async def acquire(self, pool: HostPool, target: Target, deadline: float | None,
                      replayable: bool = True) -> tuple[Connection, bool]:
        """A connection for one request, and whether it was reused from the pool."""
        while True:
            stream = pool.take_idle(look=not replayable)
            if stream is not None:
                return stream, True
            if pool.open_count < pool.limit:
                return await self.open(pool, target, deadline), False
            stream = await pool.wait_for_turn(remaining(deadline))
            if stream is not None:
                return stream, True
            # else a slot was freed: loop to take it (or wait again if someone was quicker)

    async def open(self, pool: HostPool, target: Target, deadline: float | None) -> Connection:
        pool.open_count += 1
        try:
            stream = await self.tcp_client.connect(
                target.host, target.port, ssl_options=target.ssl_options,
                max_buffer_size=self.max_buffer_size, timeout=remaining(deadline))
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
        stream.set_nodelay(True)  # for the connection's whole life (wire.py writes whole messages)
        read_chunk = min(wire.READ_SIZE, stream.max_buffer_size // 2)
        stream.read_chunk_size = read_chunk
        try:
            connection = await on_transport(stream, self.max_buffer_size, read_chunk)
        except BaseException:
            pool.discard(None)
            raise
        pool.adopt(connection)
        return connection

    def ssl_options_for(self, key: tuple, request: HTTPRequest) -> ssl.SSLContext | dict:
        """One TLS context per distinct ssl settings, made on first use."""
        options = self._ssl_contexts.get(key)
        if options is None:
            options = self._ssl_contexts[key] = ssl_options(request)
        return options

    def _start_sweeper(self) -> None:
        if self._sweeper is None and self.idle_timeout > 0:
            self._sweeper = PeriodicCallback(self._evict_idle, self.idle_timeout * 1000 / 2)
            self._sweeper.start()

    def _evict_idle(self) -> None:
        older_than = time.monotonic() - self.idle_timeout
        for pool in self.pools.values():
            pool.evict_idle(older_than)




def _forget(running: set[asyncio.Task], task: asyncio.Task, exchange: Exchange | PipelinedExchange) -> None:
    """A finished exchange task leaves the running set; a cancelled one (close(), before it
    ran or while it waited) has its requests settled here, the one place that does it."""
    running.discard(task)
    if task.cancelled():
        exchange.cancelled()


def _settler() -> "tuple[asyncio.Future[None], Callable[[BaseException | None], None]]":
    """A future, and the exchange callback that settles it (None: success)."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def settle(outcome: BaseException | None) -> None:
        if future.cancelled():
            return
        if outcome is None:
            future.set_result(None)
        else:
            future.set_exception(outcome)

    return future, settle

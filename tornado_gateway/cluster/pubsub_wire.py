"""One Redis pub/sub connection on a transport of the loop: hiredis parses what arrives and
each item goes to a callback as it comes, instead of one ``get_message`` call (a read, a
timeout context and a retry wrapper) per message as redis-py's PubSub makes.

Plain TCP and unix-socket clients speaking RESP2 only (``PubSubWire.fits``); TLS, Sentinel,
RESP3 and credential providers keep redis-py's PubSub. Why: docs/benchmarks.md, "The pub/sub
reader".
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Callable

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool, Connection, ConnectionPool
from redis.asyncio.connection import UnixDomainSocketConnection
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tornado_gateway.cluster.pipelined import replies

# An item as redis-py's PubSub hands it on: type, pattern, channel, data.
Item = dict[str, Any]

_KINDS = {b"message": "message", b"smessage": "smessage", b"pmessage": "pmessage",
          b"subscribe": "subscribe", b"unsubscribe": "unsubscribe", b"ssubscribe": "ssubscribe",
          b"sunsubscribe": "sunsubscribe", b"psubscribe": "psubscribe",
          b"punsubscribe": "punsubscribe"}  # a pong never gets here: data_received drops it


class _Protocol(asyncio.Protocol):
    """Replies to the set-up commands go to ``setup`` waiters, in order; after them every
    reply is a pushed item."""

    def __init__(self, sink: Callable[[Item], None], on_close: Callable[[Exception], None]) -> None:
        self.sink = sink
        self.on_close = on_close
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.setup: list[asyncio.Future] = []
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.heard = False  # anything arrived since the last health check
        self.watch: asyncio.TimerHandle | None = None  # the health check's timer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.heard = True
        try:
            for reply in replies(self.reader, data):
                if self.closed:
                    return
                if reply == b"PONG" or (type(reply) is list and reply and reply[0] == b"pong"):
                    continue  # the health check's answer (plain when nothing is subscribed)
                if self.setup:
                    waiter = self.setup.pop(0)
                    if not waiter.done():
                        waiter.set_result(reply)
                    continue
                item = _item(reply)
                if item is None:  # an error or a reply no pub/sub connection gets: out of step
                    self.fail(RedisConnectionError(f"unexpected reply on a pub/sub connection: {reply!r}"[:200]))
                    return
                try:
                    self.sink(item)
                except Exception as exc:  # the subscriber failed: as a lost connection, start over
                    self.fail(exc)
                    return
        except RedisConnectionError as exc:  # the stream cannot be parsed
            self.fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to redis lost: {exc or 'closed by server'}"))

    def fail(self, exc: Exception) -> None:
        if self.closed:
            return
        self.closed = True
        if self.watch is not None:
            self.watch.cancel()
        for waiter in self.setup:
            if not waiter.done():
                waiter.set_exception(exc)
        self.setup.clear()
        if self.transport is not None:
            self.transport.abort()
        self.on_close(exc)


def _item(reply: Any) -> Item | None:
    if not isinstance(reply, list) or len(reply) < 2:
        return None
    kind = _KINDS.get(reply[0])
    if kind is None:
        return None
    if kind == "pmessage" and len(reply) == 4:
        return {"type": kind, "pattern": reply[1], "channel": reply[2], "data": reply[3]}
    if len(reply) == 3:
        return {"type": kind, "pattern": None, "channel": reply[1], "data": reply[2]}
    return None


class PubSubWire:
    """``await PubSubWire.open(client, sink, on_close)``: a connection to the server ``client``
    talks to; ``subscribe``/``unsubscribe`` (and the sharded forms) send at once, confirmations
    and messages reach ``sink`` as they arrive, and ``on_close(exc)`` is called once when the
    connection ends (lost, refused or closed by ``aclose``)."""

    SETUP_TIMEOUT = 5.0

    def __init__(self, protocol: _Protocol) -> None:
        self._protocol = protocol

    @staticmethod
    def fits(client: Any) -> bool:
        """Whether ``client`` is a plain redis.asyncio client this wire can stand in for."""
        if type(client) is not aioredis.Redis:
            return False
        pool = client.connection_pool
        if type(pool) not in (ConnectionPool, BlockingConnectionPool) \
                or pool.connection_class not in (Connection, UnixDomainSocketConnection):
            return False
        kwargs = pool.connection_kwargs
        return kwargs.get("protocol") in (None, 2, "2") and kwargs.get("credential_provider") is None \
            and not kwargs.get("decode_responses")

    @classmethod
    async def open(cls, client: aioredis.Redis, sink: Callable[[Item], None],
                   on_close: Callable[[Exception], None]) -> "PubSubWire":
        kwargs = client.connection_pool.connection_kwargs
        timeout = kwargs.get("socket_connect_timeout") or kwargs.get("socket_timeout") or cls.SETUP_TIMEOUT
        loop = asyncio.get_running_loop()

        def make() -> _Protocol:
            return _Protocol(sink, on_close)
        try:
            if client.connection_pool.connection_class is UnixDomainSocketConnection:
                connect = loop.create_unix_connection(make, kwargs["path"])
            else:
                connect = loop.create_connection(make, kwargs.get("host", "localhost"),
                                                 int(kwargs.get("port", 6379)))
            transport, protocol = await asyncio.wait_for(connect, timeout)
        except asyncio.TimeoutError:
            raise RedisTimeoutError("timed out connecting to redis") from None
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to redis: {exc}") from exc
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # as redis-py's connections
        wire = cls(protocol)
        setup: list[tuple] = []  # what redis-py's connection would send first
        if kwargs.get("password"):
            username = kwargs.get("username")
            setup.append(("AUTH", username, kwargs["password"]) if username else ("AUTH", kwargs["password"]))
        if kwargs.get("client_name"):
            setup.append(("CLIENT", "SETNAME", kwargs["client_name"]))
        if kwargs.get("db"):
            setup.append(("SELECT", int(kwargs["db"])))
        for command in setup:
            reply = await wire._setup(command, timeout)
            if isinstance(reply, ResponseError):
                error = AuthenticationError(f"redis refused the connection set-up ({command[0]}): {reply}")
                protocol.fail(error)
                raise error
        interval = kwargs.get("health_check_interval")
        if interval:
            wire._watch(float(interval))
        return wire

    def _watch(self, interval: float) -> None:
        """redis-py's ``health_check_interval`` for a connection that mostly listens: a PING
        after an interval with nothing heard, and the connection given up when the next
        interval brings nothing either (a peer gone without a word, a half-open connection)."""
        protocol = self._protocol
        protocol.heard = False
        pinged = False

        def check() -> None:
            nonlocal pinged
            if protocol.closed:
                return
            if protocol.heard:
                protocol.heard, pinged = False, False
            elif pinged:
                protocol.fail(RedisTimeoutError(f"redis did not answer a PING within {interval:g} s"))
                return
            else:
                try:
                    self._write(("PING",))
                except RedisConnectionError:
                    return
                pinged = True
            protocol.watch = asyncio.get_running_loop().call_later(interval, check)
        protocol.watch = asyncio.get_running_loop().call_later(interval, check)

    def pause_reading(self) -> None:
        """Leave what arrives in the socket (and Redis's output buffer, whose pub/sub limit
        then applies) until ``resume_reading``: a subscriber that falls behind."""
        transport = self._protocol.transport
        if transport is not None and not self._protocol.closed:
            transport.pause_reading()

    def resume_reading(self) -> None:
        transport = self._protocol.transport
        if transport is not None and not self._protocol.closed:
            transport.resume_reading()

    async def _setup(self, command: tuple, timeout: float) -> Any:
        protocol = self._protocol
        waiter = asyncio.get_running_loop().create_future()
        protocol.setup.append(waiter)
        self._write(command)
        try:
            return await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            protocol.fail(RedisTimeoutError("redis did not answer the connection set-up"))
            raise RedisTimeoutError("redis did not answer the connection set-up") from None
        except BaseException:
            protocol.fail(RedisConnectionError("connection set-up abandoned"))
            raise

    def _write(self, command: tuple) -> None:
        protocol = self._protocol
        if protocol.closed or protocol.transport is None:
            raise RedisConnectionError("connection to redis lost")
        protocol.transport.write(hiredis.pack_command(command))

    async def subscribe(self, *channels: str) -> None:
        self._write(("SUBSCRIBE", *channels))

    async def unsubscribe(self, *channels: str) -> None:
        self._write(("UNSUBSCRIBE", *channels))

    async def ssubscribe(self, *channels: str) -> None:
        self._write(("SSUBSCRIBE", *channels))

    async def sunsubscribe(self, *channels: str) -> None:
        self._write(("SUNSUBSCRIBE", *channels))

    @property
    def closed(self) -> bool:
        return self._protocol.closed

    async def aclose(self) -> None:
        self._protocol.fail(RedisConnectionError("pub/sub connection closed by the gateway"))

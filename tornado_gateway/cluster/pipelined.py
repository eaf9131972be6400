"""One multiplexed Redis connection for the hot path: the commands of a loop iteration are
written together and answered in order (hiredis parses), instead of a pooled redis-py call each.

Why: a redis-py command costs about 100-150 µs of CPU here, this about 15 (docs/benchmarks.md,
"Redis commands"). Plain ``redis://`` and ``unix://`` URLs only; TLS, Sentinel and Cluster
keep redis-py (``PipelinedRedis.for_url`` returns None for them).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
from typing import Any, Iterator, Protocol, Sequence
from urllib.parse import urlsplit

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def replies(reader: hiredis.Reader, data: bytes) -> Iterator[Any]:
    """Feed ``data`` to ``reader`` and yield every complete reply (error replies as
    exception objects); a stream hiredis cannot parse raises redis-py's ConnectionError."""
    reader.feed(data)
    while True:
        try:
            reply = reader.gets()
        except hiredis.ProtocolError as exc:
            raise RedisConnectionError(f"redis protocol error: {exc}") from None
        if reply is False:
            return
        yield reply


class _Protocol(asyncio.Protocol):
    """The wire: replies are matched to waiters first in, first out."""

    def __init__(self, owner: "PipelinedRedis") -> None:
        self.owner = owner
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiters: collections.deque[tuple[asyncio.Future, float]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.outgoing: list[bytes] = []  # commands of this loop iteration, written together

    def write(self, packed: bytes) -> None:
        self.outgoing.append(packed)
        if len(self.outgoing) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        outgoing, self.outgoing = self.outgoing, []
        if self.transport is not None and not self.closed:
            self.transport.write(b"".join(outgoing) if len(outgoing) > 1 else outgoing[0])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiters = self.waiters
        try:
            for reply in replies(self.reader, data):
                if not waiters:  # a reply nobody asked for: the stream is out of step
                    self.abort(RedisConnectionError("redis sent an unexpected reply"))
                    return
                future = waiters.popleft()[0]
                if not future.done():
                    if isinstance(reply, ResponseError):
                        future.set_exception(_error(reply))
                    else:
                        future.set_result(reply)
        except RedisConnectionError as exc:  # the stream cannot be parsed
            self.abort(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to redis lost: {exc or 'closed by server'}"))

    def fail(self, exc: Exception) -> None:
        self.closed = True
        while self.waiters:
            future = self.waiters.popleft()[0]
            if not future.done():
                future.set_exception(exc)
        self.owner._forget(self)

    def abort(self, exc: Exception) -> None:
        self.fail(exc)
        if self.transport is not None:
            self.transport.abort()


def _error(reply: ResponseError) -> ResponseError:
    if str(reply).startswith("NOSCRIPT"):
        return NoScriptError(str(reply))
    return reply


class ScriptHost(Protocol):
    """What ``Script.run`` needs of a link (``RedisLink``)."""

    fast: "PipelinedRedis | None"
    client: Any


class Script:
    """A Lua script run with EVALSHA, loaded again when Redis forgot it (a restart)."""

    def __init__(self, body: str) -> None:
        self.body = body
        self.sha = hashlib.sha1(body.encode()).hexdigest()

    async def run(self, link: ScriptHost, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        """On the link's pipelined connection when it has one, else on its redis-py client (a
        cluster client routes by the keys, which must then share a slot)."""
        if link.fast is not None:
            return await self(link.fast, keys, args)
        client = link.client
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.body)
            return await client.evalsha(self.sha, len(keys), *keys, *args)

    async def __call__(self, redis: "PipelinedRedis", keys: Sequence[Any] = (),
                       args: Sequence[Any] = ()) -> Any:
        try:
            return await redis.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.execute("SCRIPT", "LOAD", self.body)
            return await redis.execute("EVALSHA", self.sha, len(keys), *keys, *args)


class PipelinedRedis:
    """``await execute(*args)``: the raw reply (bytes, int, list, None), or the redis-py
    exception a pooled client would raise (ConnectionError, TimeoutError, ResponseError)."""

    def __init__(self, url: str, connect_timeout: float = 1.0, command_timeout: float = 2.0) -> None:
        self.options = parse_url(url)
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    @classmethod
    def for_url(cls, url: str, **kwargs: Any) -> "PipelinedRedis | None":
        """A pipelined connection for plain ``redis://`` and ``unix://`` URLs, else None."""
        if urlsplit(url).scheme not in ("redis", "unix"):
            return None
        return cls(url, **kwargs)

    async def execute(self, *args: Any) -> Any:
        return await self._send(await self._live(), args)

    async def execute_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Several commands written together, their replies in order; the first failure
        raises (after every command was sent, as ``execute`` each would)."""
        protocol = await self._live()
        futures = [self._send(protocol, args) for args in commands]
        replies = []
        failure: BaseException | None = None
        for future in futures:
            try:
                replies.append(await future)
            except Exception as exc:  # every reply is read, so none is left unretrieved
                failure = failure or exc
        if failure is not None:
            raise failure
        return replies

    async def _live(self) -> _Protocol:
        """The open connection, or a new one."""
        protocol = self._protocol
        if protocol is None or protocol.closed or protocol.transport is None \
                or protocol.transport.is_closing():
            protocol = await self._connect()
        return protocol

    def _send(self, protocol: _Protocol, args: Sequence[Any]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        try:
            packed = hiredis.pack_command(tuple(args))
        except Exception as exc:  # a value of a type Redis cannot take: the caller's error
            future.set_exception(ResponseError(f"cannot encode the command: {exc}"))
            return future
        if protocol.closed:  # lost between the connect and this command
            future.set_exception(RedisConnectionError("connection to redis lost"))
            return future
        protocol.write(packed)
        protocol.waiters.append((future, time.monotonic()))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.command_timeout, self._check_overdue)
        return future

    def _check_overdue(self) -> None:
        """One timer per connection instead of a timeout per command: a reply older than
        ``command_timeout`` means Redis hangs, and every waiter fails with a TimeoutError."""
        self._watchdog = None
        protocol = self._protocol
        if protocol is None or not protocol.waiters:
            return
        age = time.monotonic() - protocol.waiters[0][1]
        if age >= self.command_timeout:
            protocol.abort(RedisTimeoutError(f"redis did not answer within {self.command_timeout} s"))
            return
        self._watchdog = asyncio.get_running_loop().call_later(
            self.command_timeout - age, self._check_overdue)

    async def _connect(self) -> _Protocol:
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = asyncio.ensure_future(self._open())
            connecting.add_done_callback(self._connected)
        return await asyncio.shield(connecting)

    def _connected(self, connecting: asyncio.Future) -> None:
        """The attempt is over (whoever waited for it): the next command may try again."""
        if self._connecting is connecting:
            self._connecting = None
        if not connecting.cancelled():
            connecting.exception()  # retrieved: a failure nobody awaited is not logged

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        options = self.options
        try:
            if "path" in options:
                connect = loop.create_unix_connection(lambda: _Protocol(self), options["path"])
            else:
                connect = loop.create_connection(lambda: _Protocol(self), options.get("host", "localhost"),
                                                 int(options.get("port", 6379)))
            _, protocol = await asyncio.wait_for(connect, self.connect_timeout)
        except asyncio.TimeoutError:
            raise RedisTimeoutError("timed out connecting to redis") from None
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to redis: {exc}") from exc
        try:
            setup: list[tuple[Any, ...]] = []
            if options.get("password"):
                setup.append(("AUTH", options["username"], options["password"]) if options.get("username")
                             else ("AUTH", options["password"]))
            if options.get("db"):
                setup.append(("SELECT", int(options["db"])))
            for command in setup:
                await asyncio.wait_for(self._send(protocol, command), self.command_timeout)
        except BaseException as exc:
            protocol.abort(exc if isinstance(exc, Exception) else RedisConnectionError("cancelled"))
            if isinstance(exc, asyncio.TimeoutError):
                raise RedisTimeoutError("redis did not answer the connection set-up") from None
            if isinstance(exc, ResponseError):  # a wrong password or database: no usable connection
                raise AuthenticationError(f"redis refused the connection set-up: {exc}") from None
            raise
        self._protocol = protocol
        return protocol

    def _forget(self, protocol: _Protocol) -> None:
        if self._protocol is protocol:
            self._protocol = None

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.abort(RedisConnectionError("connection closed by the gateway"))

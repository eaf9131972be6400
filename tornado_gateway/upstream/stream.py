"""A plain-TCP upstream connection on an asyncio transport: the part of Tornado's ``IOStream``
that the upstream client uses (``read_until_regex``, ``read_until``, ``read_bytes``,
``write``, ``close``, ``set_close_callback``), with IOStream's outcomes, but read by the loop
as bytes arrive instead of an IOStream's handler turned on and off for every read.

TCPClient still connects (resolver, both address families, timeouts); the connected socket
then moves to a transport (``tornado_compat.take_socket``). TLS connections keep IOStream.
Why: docs/design-notes.md, "upstream/stream.py".
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Callable, Union

from tornado.iostream import IOStream, StreamClosedError, UnsatisfiableReadError

from tornado_gateway import tornado_compat

_Finder = Callable[[bytearray], "int | None"]


class TransportConnection(asyncio.Protocol):
    """One connection; one read at a time, as IOStream. Bytes wait in a buffer; reading pauses
    while more than ``read_chunk_size`` (at least 64 KiB) waits and no read is waiting."""

    def __init__(self, max_buffer_size: int, read_chunk_size: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.max_buffer_size = max_buffer_size
        self.read_chunk_size = read_chunk_size
        self.error: BaseException | None = None
        self._buffer = bytearray()
        self._finder: _Finder | None = None
        self._future: asyncio.Future | None = None
        self._closed = False
        self._close_callback: Callable[[], None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._drains: list[asyncio.Future] = []

    # -- reading -----------------------------------------------------------------------

    def read_until_regex(self, regex: bytes, max_bytes: int | None = None) -> "asyncio.Future[bytes]":
        pattern = re.compile(regex)

        def find(buffer: bytearray) -> int | None:
            match = pattern.search(buffer)
            return _checked(match.end() if match else None, len(buffer), max_bytes)
        return self._read(find)

    def read_until(self, delimiter: bytes, max_bytes: int | None = None) -> "asyncio.Future[bytes]":
        def find(buffer: bytearray) -> int | None:
            at = buffer.find(delimiter)
            return _checked(at + len(delimiter) if at >= 0 else None, len(buffer), max_bytes)
        return self._read(find)

    def read_bytes(self, num_bytes: int, partial: bool = False) -> "asyncio.Future[bytes]":
        def find(buffer: bytearray) -> int | None:
            size = len(buffer)
            if size >= num_bytes or (partial and size > 0):
                return min(num_bytes, size)
            return None
        return self._read(find)

    def buffered(self) -> int:
        """Bytes that arrived and no read took yet."""
        return len(self._buffer)

    def _read(self, finder: _Finder) -> "asyncio.Future[bytes]":
        if self._future is not None and not self._future.done():
            raise RuntimeError("Already reading")
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._future, self._finder = future, finder
        self._try_read()
        return future

    def _try_read(self) -> None:
        future, finder = self._future, self._finder
        if future is None or finder is None:
            return
        if future.done():  # cancelled by its reader: its bytes stay for the next read
            self._future = self._finder = None
            return
        try:
            end = finder(self._buffer)
        except UnsatisfiableReadError as exc:  # IOStream closes the connection then
            self._future = self._finder = None
            if not future.done():
                future.set_exception(StreamClosedError(real_error=exc))
            self.close(exc_info=exc)
            return
        if end is None:
            if self._closed:
                self._future = self._finder = None
                if not future.done():
                    future.set_exception(StreamClosedError(real_error=self.error))
            elif self._reading_paused:
                self._resume_reading()  # a read waits for more
            return
        self._future = self._finder = None
        data = bytes(self._buffer[:end])
        del self._buffer[:end]
        if not future.done():
            future.set_result(data)
        if self._reading_paused and len(self._buffer) <= self._high_water():
            self._resume_reading()

    def _high_water(self) -> int:
        return max(self.read_chunk_size, 65536)

    def _resume_reading(self) -> None:
        self._reading_paused = False
        if self.transport is not None and not self._closed:
            self.transport.resume_reading()

    # -- writing -----------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write without waiting (``tornado_compat.write_now`` of an IOStream)."""
        if self._closed or self.transport is None:
            raise StreamClosedError(real_error=self.error)
        self.transport.write(data)

    def write(self, data: bytes) -> "asyncio.Future[None]":
        """Write; the future is done at once, or once the transport's buffer drained below its
        limit (IOStream's is done once the kernel took everything)."""
        self.send(data)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._writing_paused:
            self._drains.append(future)
        else:
            future.set_result(None)
        return future

    # -- the connection ----------------------------------------------------------------

    def closed(self) -> bool:
        return self._closed

    def close(self, exc_info: Any = False) -> None:
        """Close at once (what was not written yet is dropped, as IOStream drops it)."""
        if self._closed:
            return
        if isinstance(exc_info, BaseException):
            self.error = exc_info
        if self.transport is not None:
            self.transport.abort()
        self._ended()

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        self._close_callback = callback

    def _ended(self) -> None:
        self._closed = True
        self._try_read()  # a read the buffer answers still gets its bytes; else StreamClosedError
        drains, self._drains = self._drains, []
        for drain in drains:
            if not drain.done():
                drain.set_exception(StreamClosedError(real_error=self.error))
        callback, self._close_callback = self._close_callback, None
        if callback is not None:
            asyncio.get_running_loop().call_soon(callback)

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._try_read()
        if self._future is None and not self._reading_paused and not self._closed \
                and len(self._buffer) > self._high_water():  # a waiting read keeps reading on
            self._reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost ends the connection

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self.error = exc
        self._ended()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drains, self._drains = self._drains, []
        for drain in drains:
            if not drain.done():
                drain.set_result(None)


Connection = Union[IOStream, TransportConnection]


def _checked(end: int | None, size: int, max_bytes: int | None) -> int | None:
    """IOStream's ``_check_max_bytes``: a delimiter found past ``max_bytes``, or none found in
    more than ``max_bytes``, cannot be read."""
    if max_bytes is not None and (end if end is not None else size) > max_bytes:
        raise UnsatisfiableReadError(f"delimiter not found within {max_bytes} bytes")
    return end


async def on_transport(stream: IOStream, max_buffer_size: int, read_chunk_size: int) -> Connection:
    """``stream``'s connection on a transport of the loop, or ``stream`` itself when it cannot
    move (TLS, bytes already buffered)."""
    sock = tornado_compat.take_socket(stream)
    if sock is None:
        return stream
    connection = TransportConnection(max_buffer_size, read_chunk_size)
    try:
        await asyncio.get_running_loop().create_connection(lambda: connection, sock=sock)
    except BaseException:
        sock.close()
        raise
    return connection


def buffered(stream: Connection) -> int:
    """Bytes read from ``stream`` that no read took yet."""
    if isinstance(stream, TransportConnection):
        return stream.buffered()
    return tornado_compat.bytes_buffered(stream)

"""The websocket side of the Tornado seam: a server websocket's frames read out of whole
chunks, on callbacks, and once the handshake is over on an asyncio transport of its own
(``take_socket``, which pooled upstream connections use too).

Part of tornado_compat: every private Tornado detail used here is named in
docs/architecture.md and pinned by tests/test_tornado_compat.py.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

import tornado.websocket
from tornado import gen
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError
from tornado.util import _websocket_mask
from tornado.websocket import WebSocketProtocol, WebSocketProtocol13, _WebSocketParams

_READ_CHUNK = 65536  # what a websocket reads at once (the frames in it are handled together)


class _FastFrames(WebSocketProtocol13):
    """Tornado's server websocket protocol, reading frames out of whole chunks, on callbacks.

    ``_receive_frame_loop`` awaits up to four ``read_bytes`` per frame (head, length,
    mask, payload: a Future each), and keeps the handler's chain of coroutines (``_execute``,
    ``get``, ``accept_connection``) and its task alive as long as the socket: some 4 KiB
    per idle websocket. Here ``_receive_frame_loop`` hands the connection's socket from
    its IOStream to an asyncio transport (:class:`_TransportReader`: the loop reads in C and
    calls ``data_received``, no Future or IOStream bookkeeping per read) and returns, so
    that chain ends once the socket is open. A TLS stream, or one holding bytes not read
    or not written yet, keeps the IOStream and a :class:`_ChunkReader` (one
    ``read_bytes(partial=True)`` at a time). Both take every complete frame out of what
    arrived and hand each message to Tornado's ``_handle_message`` as its loop would
    (text decoding, ping/pong, close; a coroutine ``on_message`` is waited for before the
    next message). Same refusals as Tornado: reserved bits or a long control frame abort,
    a fragmented control frame or a stray continuation abort, a message over
    ``max_message_size`` closes with 1009. A compressed connection keeps Tornado's loop.
    """

    async def _receive_frame_loop(self) -> None:
        if self._decompressor is not None:
            await super()._receive_frame_loop()
            return
        sock = take_socket(self.stream)
        if sock is None:
            _ChunkReader(self).read()
            return
        reader = _TransportReader(self)
        self.stream = reader.stream  # type: ignore[assignment]  # what the protocol uses of it
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: reader, sock)
        except Exception:  # the loop refused the socket: end the websocket as a lost one
            sock.close()
            reader.connection_lost(None)
            raise

    def _take_frames(self, buffer: bytes) -> tuple[int, int, "asyncio.Future | None"]:
        """Handle the complete frames at the start of ``buffer``: (bytes used, bytes the next
        frame needs from there as far as its head tells, the future of a message handler
        still running: the frames after it wait for it, as in Tornado's loop)."""
        pos, end = 0, len(buffer)
        max_size = self.params.max_message_size
        while not self.client_terminated:
            if end - pos < 2:
                return pos, 2, None
            head, second = buffer[pos], buffer[pos + 1]
            opcode = head & 0x0F
            length = second & 0x7F
            if head & 0x70 or (opcode & 0x8 and length >= 126):
                self._abort()  # an extension nobody agreed on, or a long control frame
                break
            at = pos + 2
            if length >= 126:
                extra = 2 if length == 126 else 8
                if end - at < extra:
                    return pos, 2 + extra, None
                length = int.from_bytes(buffer[at:at + extra], "big")
                at += extra
            fragments = self._fragmented_message_buffer
            if length + (len(fragments) if fragments is not None else 0) > max_size:
                self.close(1009, "message too big")
                self._abort()
                break
            mask_at = at
            if second & 0x80:
                at += 4
            if end - at < length:
                return pos, at + length - pos, None
            if second & 0x80:
                data = _websocket_mask(buffer[mask_at:at], buffer[at:at + length])
            else:
                data = buffer[at:at + length]
            pos = at + length
            final = head & 0x80
            if opcode & 0x8:
                if not final:
                    self._abort()  # control frames are never fragmented
                    break
            elif opcode == 0:
                if fragments is None:
                    self._abort()  # nothing to continue
                    break
                fragments.extend(data)
                if final:
                    opcode = cast(int, self._fragmented_message_opcode)
                    data = bytes(fragments)
                    self._fragmented_message_buffer = None
            elif fragments is not None:
                self._abort()  # a new message before the fragmented one ended
                break
            elif not final:
                self._fragmented_message_opcode = opcode  # type: ignore[assignment]  # Tornado types it None
                self._fragmented_message_buffer = bytearray(data)
            if final:
                handled = self._handle_message(opcode, data)
                if handled is not None:
                    return pos, 0, gen.convert_yielded(handled)
        return pos, 0, None




def take_socket(stream: IOStream) -> socket.socket | None:
    """The connected socket of a plain ``IOStream`` that holds no unread or unwritten bytes,
    taken off the IOLoop (its handler removed, ``_state`` cleared, as ``IOStream.close``
    does) for a transport to own (a websocket's in ``_FastFrames``, a pooled upstream
    connection's in upstream/stream.py); None (the stream untouched) for any other stream."""
    sock = stream.socket
    if type(stream) is not IOStream or sock is None or stream.closed() or stream._read_buffer_size \
            or stream._write_buffer or stream._connecting:
        return None
    if stream._state is not None:
        stream.io_loop.remove_handler(sock)
        stream._state = None
    return sock  # the stream is dropped unclosed: the transport owns the socket



class _ChunkReader:
    """The frame reader of one :class:`_FastFrames` connection: one pending ``read_bytes``
    and its callback, no task; ``on_ws_connection_close`` once at the end, as Tornado's loop."""

    __slots__ = ("protocol", "buffer", "need")

    def __init__(self, protocol: _FastFrames) -> None:
        self.protocol = protocol
        self.buffer = b""
        self.need = 0  # bytes the frame at the start of the buffer needs, when its head tells

    def read(self) -> None:
        protocol = self.protocol
        if protocol.client_terminated:
            self._end()
            return
        try:
            if self.buffer and self.need > len(self.buffer):  # the rest of a frame: just that
                future = protocol.stream.read_bytes(self.need - len(self.buffer))
            else:
                future = protocol.stream.read_bytes(_READ_CHUNK, partial=True)
        except BaseException as error:  # closed, or failed at once (a TLS record that does not decrypt)
            self._failed(error)
            return
        cast("asyncio.Future[bytes]", future).add_done_callback(self._arrived)

    def _arrived(self, future: "asyncio.Future[bytes]") -> None:
        protocol = self.protocol
        try:
            chunk = future.result()
        except BaseException as error:
            self._failed(error)
            return
        protocol._wire_bytes_in += len(chunk)
        self.buffer = self.buffer + chunk if self.buffer else chunk
        self._take()

    def _take(self, _: object = None) -> None:
        try:
            used, self.need, running = self.protocol._take_frames(self.buffer)
        except BaseException:
            self.protocol._abort()
            self._end()
            raise
        self.buffer = self.buffer[used:]
        if running is not None:  # a message handler still running: the rest waits for it
            running.add_done_callback(self._take)
        else:
            self.read()

    def _failed(self, error: BaseException) -> None:
        """A read failed: the socket aborted and ended; an error other than the stream closing
        is raised on (logged by the loop's exception handler, or for the first read as an
        uncaught exception of the request)."""
        self.protocol._abort()
        self._end()
        if not isinstance(error, StreamClosedError):
            raise error

    def _end(self) -> None:
        protocol = self.protocol
        protocol.handler.on_ws_connection_close(protocol.close_code, protocol.close_reason)


class TransportStream:
    """What a websocket protocol and ``write_now`` use of an IOStream, on the transport that
    took the connection over (``write``, ``closed``, ``close``, ``set_nodelay``, ``io_loop``).
    What is written before the transport exists (one loop iteration) waits in ``pending``."""

    __slots__ = ("transport", "pending", "io_loop")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] | None = []  # None once closed before the transport came
        self.io_loop = IOLoop.current()

    def send(self, data: bytes) -> None:
        """Write ``data`` (``StreamClosedError`` once closed, as ``IOStream.write``)."""
        transport = self.transport
        if transport is None:
            if self.pending is None:
                raise StreamClosedError()
            self.pending.append(data)
        elif transport.is_closing():
            raise StreamClosedError()
        else:
            transport.write(data)

    def write(self, data: bytes) -> "asyncio.Future[None]":
        self.send(data)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)  # written as far as a caller can wait for: the transport has it
        return future

    def closed(self) -> bool:
        transport = self.transport
        return self.pending is None if transport is None else transport.is_closing()

    def close(self) -> None:
        """Close now, as ``IOStream.close``: what the kernel took still reaches the peer (a
        close frame, say); what it did not take yet is dropped, so a peer that stops reading
        cannot hold the connection open."""
        transport = self.transport
        if transport is not None:
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()
        self.pending = None

    def set_nodelay(self, value: bool) -> None:
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if value else 0)


class _TransportReader(asyncio.Protocol):
    """The frame reader of a :class:`_FastFrames` connection on its own asyncio transport:
    reading pauses while a message handler runs; ``on_ws_connection_close`` once, when the
    connection is lost (after a close handshake, an abort or the peer going away)."""

    def __init__(self, protocol: _FastFrames) -> None:
        self.protocol = protocol
        self.stream = TransportStream()
        self.buffer = b""
        self.transport: Any = None
        self.lost = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        stream = self.stream
        pending, stream.pending = stream.pending, []
        stream.transport = transport
        if pending:
            transport.write(b"".join(pending))
        if pending is None:  # closed before the transport came
            transport.close()

    def data_received(self, data: bytes) -> None:
        self.protocol._wire_bytes_in += len(data)
        self.buffer = self.buffer + data if self.buffer else data
        self._take()

    def _take(self, _: object = None) -> None:
        protocol = self.protocol
        if protocol.client_terminated or self.lost:
            return
        try:
            used, _need, running = protocol._take_frames(self.buffer)
        except BaseException:
            protocol._abort()
            raise
        self.buffer = self.buffer[used:]
        if running is not None:  # a message handler still running: the rest waits for it
            self.transport.pause_reading()
            running.add_done_callback(self._resume)

    def _resume(self, _: object) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()
        self._take()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.lost:
            return
        self.lost = True
        protocol = self.protocol
        protocol._abort()
        protocol.handler.on_ws_connection_close(protocol.close_code, protocol.close_reason)


def websocket_transport(handler: tornado.websocket.WebSocketHandler) -> asyncio.Transport | None:
    """The asyncio transport a running websocket's connection is on, or None (an IOStream)."""
    connection = handler.ws_connection
    stream = getattr(connection, "stream", None)
    return stream.transport if type(stream) is TransportStream else None


def fast_websocket_protocol(handler: tornado.websocket.WebSocketHandler) -> WebSocketProtocol | None:
    """``get_websocket_protocol`` for a server handler: Tornado's protocol with the chunk reader."""
    protocol = tornado.websocket.WebSocketHandler.get_websocket_protocol(handler)
    if type(protocol) is WebSocketProtocol13:
        protocol.__class__ = _FastFrames
    return protocol


def server_websocket(delegate: Any, stream: IOStream, max_message_size: int) -> WebSocketProtocol:
    """A server websocket on a detached ``stream`` whose upgrade was answered without a
    WebSocketHandler, for any ``delegate`` with what Tornado's protocol calls on a handler
    (``on_message``, ``on_ping``, ``on_pong``, ``on_ws_connection_close``, ``log_exception``,
    ``close_code``, ``close_reason``): no compression, no pings of its own (``_WebSocketParams``).
    Its frames are read once :func:`read_frames` runs."""
    protocol = _FastFrames(delegate, False, _WebSocketParams(max_message_size=max_message_size))
    protocol.stream = stream
    return protocol


class TransportWebsocket:
    """A :func:`server_websocket` for a connection already on an asyncio ``transport`` whose
    upgrade was answered there: what it writes waits until :meth:`start`, which writes it,
    makes its frame reader the transport's protocol and resumes reading (paused meanwhile); a
    connection lost before that ends the websocket at :meth:`start`."""

    def __init__(self, delegate: Any, transport: asyncio.Transport, max_message_size: int) -> None:
        self.protocol = cast(_FastFrames, server_websocket(delegate, None, max_message_size))  # type: ignore[arg-type]
        self.reader = _TransportReader(self.protocol)
        self.protocol.stream = self.reader.stream  # type: ignore[assignment]  # what the protocol uses of it
        self.transport = transport
        transport.pause_reading()

    def start(self) -> None:
        transport = self.transport
        if transport.is_closing():
            self.reader.connection_lost(None)
            return
        transport.set_protocol(self.reader)
        self.reader.connection_made(transport)
        transport.resume_reading()


async def read_frames(protocol: WebSocketProtocol) -> None:
    """Start reading a :func:`server_websocket`'s frames (on a transport where it can)."""
    await cast(_FastFrames, protocol)._receive_frame_loop()

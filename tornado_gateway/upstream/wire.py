"""HTTP/1.1 on one pooled upstream connection: the request written out, the response read back.

The gateway's own small client half of HTTP/1.1, in place of Tornado's ``HTTP1Connection``:
the request head (and a body known in advance) goes out in one write; the response head is
read with one capped ``read_until_regex``; the body is framed by Content-Length, chunked
coding (extensions and trailers accepted and dropped) or the connection's close, and not
read at all after HEAD or for 1xx, 204 and 304. Everything that decides framing is checked
as strictly as Tornado checks it: bad framing raises ``HTTPInputError`` (the exchange turns
it into the same stream error, hence the same 502, as before).
"""

from __future__ import annotations

import asyncio
import re
from functools import lru_cache
from typing import Awaitable, Protocol

from tornado import httputil
from tornado.iostream import StreamClosedError

from tornado_gateway import tornado_compat
from tornado_gateway.upstream.head import parse_response_head
from tornado_gateway.upstream.stream import Connection, TransportConnection

MAX_HEAD = 65536  # the response head, as Tornado's default max_header_size
BODY_READ = 64 * 1024  # at most this much is handed on per data_received
# What a pooled connection reads per recv: every read allocates (and zeroes) a buffer of this
# size, so a small response is cheaper with 16 KiB than with Tornado's 64 KiB; a large body
# is read with BODY_READ-sized reads (``_large_reads``).
READ_SIZE = 16 * 1024
MAX_1XX = 10  # interim responses before the real one (as Tornado)
CHUNK_LINE_MAX = 4096  # a chunk-size line with its extensions
YIELD_EVERY = 256 * 1024  # body bytes read before the loop lets others run (as Tornado)
HEAD_END = b"\r?\n\r?\n"  # what Tornado accepts as the end of a head (bare LF too)
# chunk-size [ chunk-ext ] (RFC 9112 §7.1.1): hex digits, then ";" and anything without controls.
CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[^\x00-\x08\x0a-\x1f\x7f]*)?")


class ResponseDelegate(Protocol):
    """Who is told about the response as it is read (``upstream.exchange.Exchange``)."""

    def headers_received(self, start_line: httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> None: ...

    def data_received(self, chunk: bytes) -> Awaitable[None] | None: ...


# -- writing -------------------------------------------------------------------------------

def request_head(method: str, path: str, headers: httputil.HTTPHeaders | dict[str, str],
                 chunked: bool) -> bytes:
    """The request head as bytes; ValueError when a line holds CR or LF (header injection)."""
    if isinstance(headers, httputil.HTTPHeaders):
        lines = [f"\r\n{name}: {value}" for name, value in headers.get_all()]
    else:  # names spelled as an HTTPHeaders copy would spell them (X-Request-ID -> X-Request-Id)
        lines = [f"\r\n{field_name(name)}: {value}" for name, value in headers.items()]
    if chunked:
        lines.append("\r\nTransfer-Encoding: chunked")
    first = f"{method} {path} HTTP/1.1"
    text = "".join(lines)
    if (text.count("\r") != len(lines) or text.count("\n") != len(lines)
            or "\r" in first or "\n" in first):
        raise ValueError("Illegal characters (CR or LF) in header")
    # As Tornado's write_headers: the request line in UTF-8, the field lines in Latin-1.
    return first.encode("utf-8") + text.encode("latin-1") + b"\r\n\r\n"


@lru_cache(1000)
def field_name(name: str) -> str:
    """A header name in Http-Header-Case, as Tornado's HTTPHeaders spells it."""
    return "-".join([word.capitalize() for word in name.split("-")])


def send(stream: Connection, data: bytes) -> None:
    """Write without waiting (the response is read next; a failed write closes the stream)."""
    if isinstance(stream, TransportConnection):
        stream.send(data)
    else:
        tornado_compat.write_now(stream, data)


class BodyWriter:
    """A request body written as it is produced: chunked, or counted against Content-Length."""

    def __init__(self, stream: Connection, chunked: bool, expected: int | None) -> None:
        self.stream = stream
        self.chunked = chunked
        self.remaining = expected  # None: chunked or no Content-Length

    def write(self, chunk: bytes) -> "asyncio.Future[None]":
        if self.chunked:
            if not chunk:
                return self.stream.write(b"")
            return self.stream.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        if self.remaining is not None:
            self.remaining -= len(chunk)
            if self.remaining < 0:
                self.stream.close()
                raise httputil.HTTPOutputError("Tried to write more data than Content-Length")
        return self.stream.write(chunk)

    def finish(self) -> None:
        if self.chunked:
            send(self.stream, b"0\r\n\r\n")
        elif self.remaining and not self.stream.closed():
            self.stream.close()
            raise httputil.HTTPOutputError(
                f"Tried to write {self.remaining} bytes less than Content-Length")


# -- reading -------------------------------------------------------------------------------

async def read_response(stream: Connection, delegate: ResponseDelegate, method: str,
                        max_body: int, max_head: int = MAX_HEAD) -> bool:
    """Read one response into ``delegate``; True when it ended on its framing (not by a close).

    Raises ``HTTPInputError`` (bad framing, a body over ``max_body``) and
    ``StreamClosedError`` (the connection died before the end; also a head over
    ``max_head`` or a chunk line over CHUNK_LINE_MAX: IOStream closes the stream then).
    """
    for _ in range(MAX_1XX + 1):
        start_line, headers = await _read_head(stream, max_head)
        code = start_line.code
        if 100 <= code < 200:
            if "Content-Length" in headers or "Transfer-Encoding" in headers:
                raise httputil.HTTPInputError(f"Response code {code} cannot have body")
            delegate.headers_received(start_line, headers)
            continue
        delegate.headers_received(start_line, headers)
        if method == "HEAD" or code == 304:
            return True
        return await _read_body(stream, delegate, code, headers, max_body)
    raise httputil.HTTPInputError("Too many 1xx responses")


async def _read_head(stream: Connection, max_head: int) -> tuple[httputil.ResponseStartLine,
                                                                httputil.HTTPHeaders]:
    data = await stream.read_until_regex(HEAD_END, max_bytes=max_head)
    start, headers = parse_response_head(data)
    return httputil.parse_response_start_line(start), headers


async def _read_body(stream: Connection, delegate: ResponseDelegate, code: int,
                     headers: httputil.HTTPHeaders, max_body: int) -> bool:
    """The body framing of Tornado's ``HTTP1Connection._read_body``, read here."""
    length: int | None = None
    if "Content-Length" in headers:
        value = headers["Content-Length"]
        if "," in value:  # repeated by a proxy: fine when every copy agrees
            pieces = re.split(r",[ \t]*", value)
            if any(piece != pieces[0] for piece in pieces):
                raise httputil.HTTPInputError(f"Multiple unequal Content-Lengths: {value!r}")
            headers["Content-Length"] = value = pieces[0]
        if not value.isdigit() or not value.isascii():
            raise httputil.HTTPInputError(f"Only integer Content-Length is allowed: {value}")
        length = int(value)
        if length > max_body:
            raise httputil.HTTPInputError("Content-Length too long")
    chunked = _is_chunked(headers)
    if code == 204:
        if chunked or length not in (None, 0):
            raise httputil.HTTPInputError(f"Response with code {code} should not have body")
        return True
    if length is not None and length <= READ_SIZE:
        await _read_fixed(stream, delegate, length)
        return True
    stream.read_chunk_size = min(BODY_READ, stream.max_buffer_size // 2)  # a large body
    try:
        if chunked:
            await _read_chunked(stream, delegate, max_body)
        elif length is not None:
            await _read_fixed(stream, delegate, length)
        else:
            await _read_until_close(stream, delegate, max_body)
            return False
    finally:
        stream.read_chunk_size = min(READ_SIZE, stream.max_buffer_size // 2)
    return True


def _is_chunked(headers: httputil.HTTPHeaders) -> bool:
    """``Transfer-Encoding: chunked`` exactly; any other coding, or one with a length, is refused."""
    if "Transfer-Encoding" not in headers:
        return False
    if "Content-Length" in headers:
        raise httputil.HTTPInputError("Message with both Transfer-Encoding and Content-Length")
    if headers["Transfer-Encoding"].lower() == "chunked":
        return True
    raise httputil.HTTPInputError(f"Unsupported Transfer-Encoding {headers['Transfer-Encoding']}")


async def _deliver(delegate: ResponseDelegate, chunk: bytes) -> None:
    result = delegate.data_received(chunk)
    if result is not None:
        await result


async def _read_fixed(stream: Connection, delegate: ResponseDelegate, length: int) -> None:
    work = 0
    while length > 0:
        chunk = await stream.read_bytes(min(BODY_READ, length), partial=True)
        length -= len(chunk)
        await _deliver(delegate, chunk)
        work += len(chunk)
        if work >= YIELD_EVERY:
            work = 0
            await asyncio.sleep(0)


async def _read_until_close(stream: Connection, delegate: ResponseDelegate, max_body: int) -> None:
    total = work = 0
    while True:
        try:
            chunk = await stream.read_bytes(BODY_READ, partial=True)
        except StreamClosedError:
            return  # the close is the end of this body
        total += len(chunk)
        if total > max_body:
            raise httputil.HTTPInputError("Body too long")
        await _deliver(delegate, chunk)
        work += len(chunk)
        if work >= YIELD_EVERY:
            work = 0
            await asyncio.sleep(0)


async def _read_chunked(stream: Connection, delegate: ResponseDelegate, max_body: int) -> None:
    """Chunks, their data coalesced up to BODY_READ while more is already buffered."""
    total = work = 0
    pending = bytearray()
    while True:
        line = await _read(stream.read_until(b"\r\n", max_bytes=CHUNK_LINE_MAX), pending, delegate)
        match = CHUNK_LINE.fullmatch(line, 0, len(line) - 2)
        if match is None:
            raise httputil.HTTPInputError("invalid chunk size")
        size = int(match.group(1), 16)
        if size == 0:
            break
        total += size
        if total > max_body:
            raise httputil.HTTPInputError("chunked body too large")
        while size:
            data = await _read(stream.read_bytes(min(size, BODY_READ), partial=True), pending, delegate)
            size -= len(data)
            if not pending and len(data) == BODY_READ:
                await _deliver(delegate, data)  # a full read goes on as it is
            else:
                pending += data
                if len(pending) >= BODY_READ:
                    out = bytes(pending[:BODY_READ])
                    del pending[:BODY_READ]
                    await _deliver(delegate, out)
            work += len(data)
            if work >= YIELD_EVERY:
                work = 0
                await asyncio.sleep(0)
        if await _read(stream.read_bytes(2), pending, delegate) != b"\r\n":
            raise httputil.HTTPInputError("improperly terminated chunk")
    trailer = 0
    while True:  # the trailer section: field lines dropped, up to the empty line
        line = await _read(stream.read_until(b"\r\n", max_bytes=CHUNK_LINE_MAX), pending, delegate)
        if line == b"\r\n":
            break
        trailer += len(line)
        if trailer > MAX_HEAD or b":" not in line or b"\n" in line[:-1] or b"\r" in line[:-2]:
            raise httputil.HTTPInputError("malformed trailer section")
    if pending:
        await _deliver(delegate, bytes(pending))


async def _read(read: Awaitable[bytes], pending: bytearray, delegate: ResponseDelegate) -> bytes:
    """A read that, when it has to wait for the network, first hands on what is pending."""
    if pending and not (isinstance(read, asyncio.Future) and read.done()):
        data = bytes(pending)
        pending.clear()
        await _deliver(delegate, data)
    return await read

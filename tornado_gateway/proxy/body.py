"""The request body on its way upstream: the bounded pipe, its limits, and abandonment."""

from __future__ import annotations

from typing import Awaitable, Callable

import asyncio
import logging

from tornado import httputil
from tornado.http1connection import is_transfer_encoding_chunked

from tornado_gateway.errors import GatewayError

BODY_METHODS = ("POST", "PUT", "PATCH")  # the upstream client frames chunked bodies only for these
UPLOAD_READ_SIZE = 64 * 1024  # what a client connection reads per recv once a body is piped
PIPE_DEPTH = 4  # request chunks (each <= 64 KiB) buffered between client and upstream
# A refused request's body up to this size is read and dropped before the answer (the
# connection stays open); a larger or unknown one gets the answer at once and a lingering close.
DROP_BODY_MAX = 4 * 1024 * 1024
# Whatever arrives beyond a body limit up to this much is dropped before the 413.
OVERSIZE_DRAIN = 4 * 1024 * 1024


class Abandoned(Exception):
    """Raised into the upstream exchange to stop it: the client side is over."""


class BodyPipe:
    """Request body chunks on their way from the client to the upstream (bounded)."""

    _END = None
    _ABORT = object()

    def __init__(self, depth: int = PIPE_DEPTH) -> None:
        self._queue: asyncio.Queue = asyncio.Queue(depth)
        self.aborted = False

    async def put(self, chunk: bytes | None) -> None:
        if not self.aborted:
            await self._queue.put(chunk)

    async def end(self) -> None:
        await self.put(self._END)

    def end_nowait(self) -> Awaitable[None] | None:
        """End the body now when the pipe has room; else return the awaitable that will."""
        if self.aborted:
            return None
        try:
            self._queue.put_nowait(self._END)
        except asyncio.QueueFull:
            return self.end()
        return None

    def abort(self) -> None:
        """Stop the upstream request: the producer raises Abandoned at its next read."""
        if self.aborted:
            return
        self.aborted = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(self._ABORT)

    async def produce(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        """The upstream request's ``body_producer``."""
        while True:
            chunk = await self._queue.get()
            if chunk is self._END:
                return
            if chunk is self._ABORT or self.aborted:
                raise Abandoned("request body aborted")
            await write(chunk)


class _QuietAbandon(logging.Filter):
    """Tornado logs exceptions raised in HTTP callbacks; ours are intended."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], Abandoned))


logging.getLogger("tornado.application").addFilter(_QuietAbandon())




def framing(headers: httputil.HTTPHeaders, method: str, limit: int) -> tuple[int | None, bool]:
    """The connection's body size limit for this request (None: leave Tornado's) and whether
    a body follows. A declared oversize body raises 413 before the upstream is contacted; a
    chunked one is counted as it arrives (``ProxyExchange.data_received``)."""
    try:
        chunked = is_transfer_encoding_chunked(headers)
    except httputil.HTTPInputError as exc:
        raise GatewayError("BAD_REQUEST", str(exc)) from None
    declared = headers.get("Content-Length")
    if declared is not None:
        if not declared.isdigit() or len(declared) > 18:
            raise GatewayError("BAD_REQUEST", "malformed Content-Length")
        size = int(declared)
        if size > limit:
            raise GatewayError("PAYLOAD_TOO_LARGE", f"request body over {limit} bytes")
        return limit, size > 0
    if chunked:
        if method not in BODY_METHODS:
            raise GatewayError("LENGTH_REQUIRED", f"a {method} body needs a Content-Length")
        # Tornado's own limit (a bare 400) must sit above ours and the drain.
        return limit + 2 * OVERSIZE_DRAIN, True
    return None, False

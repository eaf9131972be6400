"""The proxy's way into the upstream client: ``fetch`` without HTTPRequest or HTTPResponse.

``PooledHTTPClient.forward(ForwardRequest(...))`` runs the same ``Exchange`` as ``fetch``
(pool, retry, timeouts, wire.py) and its future fails with the same exceptions as
``fetch(..., raise_error=False)``; what it skips is per-request bookkeeping a proxy does not
use: the HTTPRequest with its defaults proxy and header copy, the URL parsed again for every
request (the upstream's part is parsed once, ``target_for``), and the HTTPResponse.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from tornado import httputil

from tornado_gateway.upstream.exchange import Exchange
from tornado_gateway.upstream.pool import Target

DEFAULT_TIMEOUT = 20.0  # HTTPRequest's connect and request timeouts when none is given
UNSAFE_IN_TAIL = ("#", "\t", "\r", "\n")  # urlsplit would cut or drop these: parse the whole URL


class ForwardRequest:
    """One proxied request: what an ``Exchange`` reads of an ``HTTPRequest``, nothing more."""

    __slots__ = ("upstream", "tail", "url", "method", "headers", "body", "body_producer",
                 "connect_timeout", "request_timeout", "head_callback", "streaming_callback")

    # HTTPRequest's attributes at the proxy's fixed values (client.PROXY_DEFAULTS).
    header_callback = None
    auth_username = auth_password = auth_mode = None
    user_agent = None
    decompress_response = False
    ssl_options = None
    validate_cert = True
    ca_certs = client_cert = client_key = None

    def __init__(self, upstream: str, tail: str, method: str, headers: dict[str, str],
                 body: bytes | None,
                 body_producer: Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]] | None,
                 connect_timeout: float | None, request_timeout: float | None,
                 head_callback: Callable[[httputil.ResponseStartLine, httputil.HTTPHeaders], None],
                 streaming_callback: Callable[[bytes], Awaitable[None] | None]) -> None:
        self.upstream = upstream  # the route's upstream URL
        self.tail = tail  # the path below it, with "?query" when there is one
        self.url = upstream + tail
        self.method = method
        self.headers = headers
        self.body = body
        self.body_producer = body_producer
        self.connect_timeout = DEFAULT_TIMEOUT if connect_timeout is None else connect_timeout
        self.request_timeout = DEFAULT_TIMEOUT if request_timeout is None else request_timeout
        self.head_callback = head_callback
        self.streaming_callback = streaming_callback


@lru_cache(maxsize=256)
def _base(upstream: str) -> tuple[Target, str] | None:
    """The upstream URL parsed once: its target and its path (None: parse every request)."""
    try:
        parsed = urlsplit(upstream)
        if parsed.query or parsed.fragment or "?" in upstream or "#" in upstream:
            return None
        return Target(ForwardRequest(upstream, "", "GET", {}, None, None, None, None,
                                     _no_head, _no_chunk)), parsed.path
    except ValueError:
        return None  # the exchange parses it again and fails the request with this error


def target_for(request: ForwardRequest) -> Target | None:
    """The request's target from its upstream's parsed once, as ``Target(request)`` would make it."""
    base = _base(request.upstream)
    tail = request.tail
    if base is None or any(character in tail for character in UNSAFE_IN_TAIL):
        return None
    if tail and tail[0] not in "/?":
        return None
    target, base_path = base
    path = base_path + tail
    return target.with_path(path if path.startswith("/") else "/" + path)


def _no_head(start_line: httputil.ResponseStartLine, headers: httputil.HTTPHeaders) -> None:
    pass


def _no_chunk(chunk: bytes) -> None:
    pass


class ForwardExchange(Exchange):
    """An ``Exchange`` that settles with None (success) or the exception ``fetch`` would raise."""

    def _settle_response(self) -> None:
        if self.callback is None or self.start_line is None:
            return
        self._settle(None)

    def _settle_error(self, exc: BaseException) -> None:
        if self.callback is None:
            return
        self._settle(exc)

    def finish(self, error: BaseException | None = None) -> None:
        """Settle from outside ``run`` (pipeline.py reads the responses itself)."""
        if error is None:
            self._settle_response()
        else:
            self._settle_error(error)

    def unread(self) -> None:
        """Forget a partly read response: the request goes out again (pipeline.py)."""
        self._reset_response()

"""Request and response headers across the proxy: hop-by-hop, identity, forwarding, Date."""

from __future__ import annotations

import time
from email.utils import formatdate
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from tornado import httputil

# RFC 9110 §7.6.1 connection-specific fields (plus the old Proxy-Connection).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade",
})
# Client headers the gateway sets itself or never passes on (besides X-User*, X-Forwarded-*).
REQUEST_DROP = HOP_BY_HOP | {"host", "expect", "x-request-id", "forwarded", "x-real-ip"}
# Upstream headers the client never sees (besides Access-Control-*: the gateway owns CORS).
RESPONSE_DROP = HOP_BY_HOP | {"server", "x-powered-by", "x-request-id"}


def connection_named(values: list[str]) -> set[str]:
    """Lower-case names listed in the given Connection header values: hop-by-hop too."""
    names: set[str] = set()
    for value in values:
        names.update(part.strip().lower() for part in value.split(",") if part.strip())
    return names


def is_identity_header(name: str) -> bool:
    """``X-User-Id`` and every ``X-User*`` header, in any spelling (``x_user_id`` reads as
    ``HTTP_X_USER_ID`` to WSGI/CGI/PHP): only the gateway may set them. ``name`` is lower case."""
    return name.replace("_", "-").startswith("x-user")


def is_dropped_spelling(name: str) -> bool:
    """A header name with an underscore is never passed on (nginx's default): CGI-style
    servers read ``X_Forwarded_For`` as ``X-Forwarded-For``, so it could impersonate any
    header the gateway sets."""
    return "_" in name


@lru_cache(maxsize=256)
def host_of(upstream: str) -> str:
    return urlsplit(upstream).netloc


def merge_response_headers(headers: httputil.HTTPHeaders, upstream: httputil.HTTPHeaders) -> None:
    """Put the upstream's end-to-end headers over the gateway's defaults in ``headers``."""
    ours_vary = headers.get("Vary")
    dropped = connection_named(upstream.get_list("Connection")) if "Connection" in upstream else ()
    replaced: set[str] = set()
    for name, value in upstream.get_all():
        lower = name.lower()
        if lower in RESPONSE_DROP or lower in dropped or lower.startswith("access-control-"):
            continue
        if lower in replaced:
            headers.add(name, value)  # a repeated field (Set-Cookie): every line kept
        else:
            replaced.add(lower)
            headers[name] = value  # an upstream's own value beats the gateway's default
    if ours_vary and "vary" in replaced:
        headers["Vary"] = f"{headers['Vary']}, {ours_vary}"


def response_head(defaults: list[tuple[str, str]], upstream: httputil.HTTPHeaders,
                  constant: tuple[tuple[str, str], ...] = (), at: int = 0,
                  ) -> tuple[bytes, int | None, bool] | None:
    """The header block of a proxied response as bytes, the upstream's end-to-end headers over
    the gateway's ``defaults`` (as :func:`merge_response_headers` would put them), with its
    Content-Length and whether it says ``Connection: close``; None when the upstream's head
    needs the general path (repeated or unreadable Content-Length). The upstream's values
    passed its head parser (no CR/LF); the defaults are the gateway's own.

    ``constant``: defaults that never change (the security headers), standing after the first
    ``at`` of ``defaults``: they go out as one block formatted once (:func:`preformatted`)
    unless a name in them is also the upstream's or another default's (then line by line,
    the same bytes either way)."""
    dropped = connection_named(upstream.get_list("Connection")) if "Connection" in upstream else ()
    lines: list[str] = []
    seen: set[str] = set()
    vary_at = -1
    content_length = None
    for name, value in upstream.get_all():
        lower = name.lower()
        if lower in RESPONSE_DROP or lower in dropped or lower.startswith("access-control-"):
            continue
        if lower == "content-length":
            if content_length is not None or not value.isdigit():
                return None
            content_length = int(value)
        elif lower == "vary":
            vary_at = len(lines)
        seen.add(lower)
        lines.append(f"{name}: {value}\r\n")
    ours: dict[str, tuple[str, str]] = {}
    for name, value in defaults:  # a later default of the same name wins, as in HTTPHeaders
        ours[name.lower()] = (name, value)
    block, names = preformatted(constant)
    if block and (len(ours) != len(defaults) or not names.isdisjoint(seen)
                  or not names.isdisjoint(ours)):
        return response_head([*defaults[:at], *constant, *defaults[at:]], upstream)
    for index, (lower, (name, value)) in enumerate(ours.items()):
        if index == at and block:
            lines.append(block)
        if lower not in seen:
            lines.append(f"{name}: {value}\r\n")
        elif lower == "vary" and vary_at >= 0:  # both vary: the upstream's reasons, then ours
            lines[vary_at] = f"{lines[vary_at][:-2]}, {value}\r\n"
    if block and at >= len(ours):
        lines.append(block)
    closes = "connection" in ours and ours["connection"][1].lower() == "close"
    return "".join(lines).encode("latin-1"), content_length, closes


_blocks: dict[int, tuple[tuple, str, frozenset[str]]] = {}


def preformatted(constant: tuple[tuple[str, str], ...]) -> tuple[str, frozenset[str]]:
    """``constant``'s field lines as one string and its lower-case names, made once per tuple."""
    entry = _blocks.get(id(constant))
    if entry is None or entry[0] is not constant:
        block = "".join(f"{name}: {value}\r\n" for name, value in constant)
        entry = _blocks[id(constant)] = (constant, block, frozenset(n.lower() for n, _ in constant))
    return entry[1], entry[2]


def upstream_headers(request: Any, upstream: str, forwarding: Any, request_id: str,
                     identity: Any) -> dict[str, str]:
    """The request headers for the upstream, one value per name.

    A plain dict: ``AsyncHTTPClient.fetch`` copies ``request.headers`` into
    an HTTPHeaders, and copying an HTTPHeaders validates every line again
    (the client's were validated when they were parsed). Repeated fields are
    combined as RFC 9110 §5.3 allows: with ", ", and ``Cookie`` with "; "
    (RFC 6265 §5.4: one Cookie header).
    """
    incoming = request.headers
    dropped = connection_named(incoming.get_list("Connection")) if "Connection" in incoming else ()
    out: dict[str, str] = {}
    for name, value in incoming.get_all():  # names arrive normalised (Http-Header-Case)
        lower = name.lower()
        if (lower in REQUEST_DROP or lower in dropped or is_identity_header(lower)
                or is_dropped_spelling(lower) or lower.startswith("x-forwarded-")):
            continue
        if name in out:
            out[name] += ("; " if lower == "cookie" else ", ") + value
        else:
            out[name] = value
    out.update(forwarding.forwarded_headers(request))
    out["Host"] = host_of(upstream)
    out["X-Request-ID"] = request_id
    if identity is not None:
        out["X-User-Id"] = identity.user_id
    return out


_date_cache: list = [0, ""]


def http_date() -> str:
    """The Date header value, formatted once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0], _date_cache[1] = now, formatdate(now, usegmt=True)
    return _date_cache[1]


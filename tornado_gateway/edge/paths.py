"""Request paths: validation, dot-segment resolution and route matching.

Why it works this way: docs/design-notes.md.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Sequence

from tornado_gateway.config import Route

# RFC 3986 pchar plus "/": unreserved, sub-delims, ":", "@", pct-encoded.
_PATH_CHARS_RE = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*\Z")  # \Z: "$" allows a final \n
_ESCAPE_RE = re.compile(r"%(..)?", re.S)
_HEX = frozenset("0123456789abcdefABCDEF")
# Escapes never accepted: slash, backslash, and controls (decoded, they change meaning).
_FORBIDDEN_ESCAPES = frozenset({0x2F, 0x5C, 0x7F, *range(0x00, 0x20)})
# Query: printable ASCII except "#" (a fragment would be dropped by the upstream URL parser).
_QUERY_RE = re.compile(r"^[\x21-\x22\x24-\x7e]*\Z")


class PathError(ValueError):
    """The path is malformed or would escape its route; the message says why."""


def check_query(query: str) -> None:
    """Refuse a query string that could not be forwarded byte-for-byte."""
    if query and not _QUERY_RE.match(query):
        raise PathError("query string holds a control, space, '#' or non-ASCII character")


def split_segments(path: str) -> list[str]:
    """Validate ``path`` (raw, as sent) and return its segments (still encoded).

    ``"/api/users/42"`` -> ``["api", "users", "42"]``; a trailing slash gives a
    last empty segment (``"/api/users/"`` -> ``["api", "users", ""]``).
    """
    if not path.startswith("/"):
        raise PathError("path must start with '/'")
    if not _PATH_CHARS_RE.match(path):
        raise PathError("path holds a character that must be percent-encoded "
                        "(backslash, space, control, non-ASCII, '#', ...)")
    for match in _ESCAPE_RE.finditer(path):
        digits = match.group(1)
        if digits is None or not (digits[0] in _HEX and digits[1] in _HEX):
            raise PathError("malformed percent-escape in path")
        if int(digits, 16) in _FORBIDDEN_ESCAPES:
            raise PathError("encoded slash, backslash or control character in path")
    segments = path[1:].split("/")
    if "" in segments[:-1]:
        raise PathError("empty path segment ('//')")
    if ";" in path:
        for segment in segments:
            if ";" in segment and dot_kind(segment.partition(";")[0]):
                raise PathError("dot segment with path parameters ('..;')")
    return segments


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _decode_unreserved(match: re.Match) -> str:
    digits = match.group(1) or ""
    if len(digits) == 2 and digits[0] in _HEX and digits[1] in _HEX:
        char = chr(int(digits, 16))
        if char in _UNRESERVED:
            return char
    return match.group(0)


def class_key(path: str) -> str:
    """``path`` as a lenient router reads it, for classifying only (never forwarded):
    unreserved escapes decoded, ``;params`` dropped from each segment, lower case."""
    if "%" in path:
        path = _ESCAPE_RE.sub(_decode_unreserved, path)
    if ";" in path:
        path = "/".join(segment.partition(";")[0] for segment in path.split("/"))
    return path.lower()


def dot_kind(segment: str) -> str | None:
    """``"."`` or ``".."`` when the segment is a dot segment (encoded or not), else None."""
    if len(segment) > 6 or "." not in segment and "%" not in segment:
        return None
    decoded = segment.replace("%2e", ".").replace("%2E", ".")
    return decoded if decoded in (".", "..") else None


def match_route(routes: Sequence[Route], segments: Sequence[str]) -> Route | None:
    """The route whose prefix is the longest whole-segment match (routes are longest first)."""
    segments = tuple(segments)
    for route in routes:
        prefix = _prefix_segments(route.prefix)
        if segments[: len(prefix)] == prefix:
            return route
    return None


@lru_cache(maxsize=1024)
def _prefix_segments(prefix: str) -> tuple[str, ...]:
    return tuple(prefix.strip("/").split("/"))


def route_segments(route: Route) -> list[str]:
    return list(_prefix_segments(route.prefix))


def remove_dot_segments(segments: Sequence[str]) -> list[str]:
    """RFC 3986 §5.2.4 on a segment list, refusing any climb above its root.

    A final ``.`` or ``..`` leaves a trailing slash, as in the RFC.
    """
    out: list[str] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        kind = dot_kind(segment)
        if kind is None:
            out.append(segment)
            continue
        if kind == "..":
            if not out:
                raise PathError("'..' climbs above the route prefix")
            out.pop()
        if index == last:
            out.append("")
    return out


def is_under(path: str, prefix: str) -> bool:
    """``path`` equals ``prefix`` or continues it at a segment boundary."""
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/") or not prefix


class Resolved:
    """Where a request goes: its route, the normalised path, the upstream path."""

    __slots__ = ("route", "path", "upstream_path")

    def __init__(self, route: Route, path: str, upstream_path: str) -> None:
        self.route = route
        self.path = path  # normalised public path, e.g. "/api/users/b"
        self.upstream_path = upstream_path  # e.g. "/users/b" for upstream ".../users"


def resolve(routes: Sequence[Route], raw_path: str) -> Resolved | None:
    """Route ``raw_path``; None when no route matches. Raises PathError on a bad path."""
    segments = split_segments(raw_path)
    route = match_route(routes, segments)
    if route is None:
        if any(dot_kind(s) for s in segments):
            raise PathError("dot segments in a path outside every route")
        return None
    prefix = route_segments(route)
    rest = remove_dot_segments(segments[len(prefix):])
    if rest != segments[len(prefix):] and match_route(routes, [*prefix, *rest]) is not route:
        raise PathError("dot segments would move the path to another route")
    tail = "/" + "/".join(rest) if rest else ""
    upstream_path = (route.upstream_path + tail) or "/"
    return Resolved(route, route.prefix + tail, upstream_path)

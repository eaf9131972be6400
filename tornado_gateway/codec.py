"""Strict JSON for every way in and out of the gateway (one decoder, one encoder).

``loads`` is the only decoder of JSON that comes from outside the process
(socket packets, ingress bodies from HTTP and Redis, upstream answers,
records read back from Redis): orjson, which refuses text that is not valid
Unicode (lone surrogate escapes), ``NaN``/``Infinity``, numbers out of range
and nesting past 1024 levels without ever raising ``RecursionError``; on top
of that a depth bound (64 by default). Every refusal is :class:`JSONRefused`
with a reason for people. ``dumps``/``dumps_bytes`` are the only encoders of
what leaves the process. docs/validation.md has the reasoning and figures.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

MAX_DEPTH = 64  # SPEC §6: deeper bodies are refused
_OPEN = ("[", "{")


class JSONRefused(ValueError):
    """Input that is not strict JSON, not valid Unicode, or nests too deep."""


class Refused:
    """Stands in for a socket payload that ``SocketJSON.loads`` refused (see realtime)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self) -> str:
        return f"Refused({self.reason!r})"


def _reason(exc: orjson.JSONDecodeError) -> str:
    text = str(exc)
    if "surrogate" in text or "UTF-8" in text or "utf-8" in text:
        return "text that is not valid Unicode"
    if "depth" in text:
        return f"JSON nested deeper than {MAX_DEPTH} levels"
    if "infinity" in text:
        return "a number out of range"
    return "not valid JSON (strict: NaN, Infinity and trailing data are refused)"


def loads(raw: bytes | bytearray | memoryview | str, max_depth: int | None = MAX_DEPTH) -> Any:
    """Decode strict JSON; raises :class:`JSONRefused` (never RecursionError)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise JSONRefused(_reason(exc)) from None
    if max_depth is not None and isinstance(value, (dict, list)) and too_deep(value, raw, max_depth):
        raise JSONRefused(f"JSON nested deeper than {max_depth} levels")
    return value


def too_deep(value: Any, raw: bytes | bytearray | memoryview | str | None = None,
             max_depth: int = MAX_DEPTH) -> bool:
    """True when ``value`` nests containers deeper than ``max_depth`` (iterative walk).

    ``raw`` (the text it was decoded from) lets a shallow document skip the walk:
    fewer opening brackets than ``max_depth`` cannot nest deeper.
    """
    if raw is not None:
        text = raw if isinstance(raw, (str, bytes, bytearray)) else bytes(raw)
        opened = (text.count("[") + text.count("{")) if isinstance(text, str) else (
            text.count(b"[") + text.count(b"{"))
        if opened <= max_depth:
            return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            return True
        if not isinstance(item, (dict, list)):
            continue
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def valid_unicode(text: str) -> bool:
    """False when ``text`` holds a lone surrogate (it cannot be encoded as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def dumps_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON of ``value``: every outbound encode goes through here.

    Never raises for text: anything orjson declines (a lone surrogate from a
    careless upstream, an integer over 64 bits, nesting past 254) is encoded by
    the standard library with ASCII escapes, which is still valid JSON.
    ``NaN``/``Infinity`` become ``null`` (JSON has no such numbers); only then
    in the fallback do they raise ValueError.
    """
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
                          default=str).encode()


def dumps(value: Any) -> str:
    """:func:`dumps_bytes` as ``str``."""
    return dumps_bytes(value).decode()


# -- the json "module" python-socketio and python-engineio use for packets -------------

_EVENT_NAME = re.compile(r'^\[\s*"((?:[^"\\]|\\.){0,64})"')


class SocketJSON:
    """``AsyncServer(json=SocketJSON)``: packets go through :func:`loads` and :func:`dumps`.

    A packet whose data is refused does not close the socket: its data becomes
    ``[event name, Refused(reason)]`` (the event name read from the packet's
    start when possible), so the event is answered ``VALIDATION_FAILED`` on its
    ack like any other invalid payload.
    """

    @staticmethod
    def loads(text: str | bytes, **_: Any) -> Any:
        try:
            return loads(text)
        except JSONRefused as exc:
            raw = text if isinstance(text, str) else text.decode("utf-8", "replace")
            match = _EVENT_NAME.match(raw)
            name = match.group(1) if match and "\\" not in match.group(1) else ""
            return [name, Refused(str(exc))]

    @staticmethod
    def dumps(value: Any, **_: Any) -> str:
        return dumps(value)

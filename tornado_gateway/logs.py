"""Logging: one JSON object per line on stdout, with request context, never secrets.

Why it works this way: docs/design-notes.md.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Iterable
from urllib.parse import quote

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
user_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("user_id", default=None)

CONTEXT_FIELDS = ("request_id", "user_id", "route", "upstream", "method", "path", "status",
                  "duration_ms", "client_ip", "event", "sid", "code")
_REDACTIONS = (
    (re.compile(r"(?i)\b(bearer|basic|digest)\s+[^\s,;\"']+"), r"\1 [redacted]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    (re.compile(r"(?i)((?:password|passwd|secret|token|cookie|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s,;\"'&}]+"),
     r"\1[redacted]"),
    (re.compile(r"(?i)(redis(?:s)?(?:\+sentinel)?://[^:/@\s]*:)[^@\s]+@"), r"\1[redacted]@"),
    # tornado logs a malformed request's offending header value (a whole Cookie
    # or Authorization header) at info: keep the reason, drop the value.
    (re.compile(r"(Invalid header (?:value|name)) .*"), r"\1 [redacted]"),
)


def redact(text: str) -> str:
    """Remove tokens, passwords and cookies from a log message."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    """Formats a record as a single JSON line, with secrets taken out."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Literal secret values (and their URL-quoted forms), longest first so a
        # secret containing another is removed whole. Short ones would eat words.
        values = {v for secret in secrets if len(secret) >= 6 for v in (secret, quote(secret, safe=""))}
        self.secrets = sorted(values, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return redact(text)

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.redact(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        user_id = getattr(record, "user_id", None) or user_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        if user_id:
            entry["user_id"] = user_id
        for name in CONTEXT_FIELDS[2:]:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = self.redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["error"] = self.redact(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = self.redact(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(level: str, secrets: Iterable[str] = ()) -> None:
    """Send every logger (ours, tornado's, socketio's) to stdout as JSON; never print ``secrets``."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Our own access log replaces tornado's; the libraries are chatty at info.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    for noisy in ("socketio", "engineio", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

"""Logs: one JSON object per line on stdout, with request context, never secrets.

The access line and a socket's lines (connected, refused, disconnected) are written
without ``logging``; every line goes through one writer that buffers those (flushed
per loop iteration, at exit, on a crash) and writes any other record at once, with
what was buffered before it. Why it works
this way: docs/design-notes.md ("Logs").
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import json
import logging
import re
import signal
import sys
import threading
import time
from types import FrameType, TracebackType
from typing import Any, BinaryIO, Iterable
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
# Text none of the patterns above can match (it holds none of these, in any case) is
# returned as it is: a few substring tests, ten times cheaper than one regex search.
_TRIGGERS = ("bearer", "basic", "digest", "eyj", "passw", "secret", "token", "cookie",
             "authorization", "redis", "invalid header")
_OWN_LOGGERS = "tornado_gateway"
_quote = json.encoder.encode_basestring  # the C speed-up; keeps non-ASCII


def redact(text: str) -> str:
    """Remove tokens, passwords and cookies from a log message."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class Redactor:
    """Takes the configured secret values and credential-shaped text out of strings."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Literal secret values (and their URL-quoted forms), longest first so a
        # secret containing another is removed whole. Short ones would eat words.
        values = {v for secret in secrets if len(secret) >= 6 for v in (secret, quote(secret, safe=""))}
        self.secrets = sorted(values, key=len, reverse=True)

    def hit(self, text: str) -> bool:
        """Whether ``text`` may hold something to redact (False: it certainly does not)."""
        lower = text.lower()
        for word in _TRIGGERS:
            if word in lower:
                return True
        for secret in self.secrets:
            if secret in text:
                return True
        return False

    def __call__(self, text: str) -> str:
        if not self.hit(text):
            return text
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return redact(text)


class LineWriter:
    """Buffers whole lines and writes them once per event-loop iteration (at once outside a loop)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self._pending: list[str] = []
        self._scheduled = False

    def write(self, line: str) -> None:
        self._pending.append(line)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # start-up, shut-down, another thread
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        lines.append("")
        try:  # lone surrogates become \udXXX escapes: still valid JSON, never an encode error
            self.stream.write("\n".join(lines).encode("utf-8", "backslashreplace"))
            self.stream.flush()
        except (OSError, ValueError):  # stdout closed or gone: nothing left to tell
            pass


class JsonFormatter(logging.Formatter):
    """Formats a record as a single JSON line, with secrets taken out."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.redactor = Redactor(secrets)
        self.secrets = self.redactor.secrets

    def redact(self, text: str) -> str:
        return self.redactor(text)

    def message(self, record: logging.LogRecord) -> str:
        """The gateway's own templates as written, their arguments redacted; anything else redacted whole."""
        if record.args and isinstance(record.args, tuple) and isinstance(record.msg, str) \
                and record.name.startswith(_OWN_LOGGERS):
            args = tuple(a if a is None or isinstance(a, (int, float)) else self.redactor(str(a))
                         for a in record.args)
            try:
                return record.msg % args
            except (TypeError, ValueError):
                pass
        elif not record.args and record.name.startswith(_OWN_LOGGERS) and isinstance(record.msg, str):
            return record.msg
        return self.redactor(record.getMessage())

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.message(record),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        user_id = getattr(record, "user_id", None) or user_id_var.get()
        if request_id:
            entry["request_id"] = self.redactor(request_id)
        if user_id:
            entry["user_id"] = self.redactor(user_id)
        for name in CONTEXT_FIELDS[2:]:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = self.redactor(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["error"] = self.redactor(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = self.redactor(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


class _WriterHandler(logging.Handler):
    """The ``logging`` side of the writer."""

    def __init__(self, writer: LineWriter, formatter: JsonFormatter) -> None:
        super().__init__()
        self.writer = writer
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        # Not an access line: rare, and a transition (Redis lost, a refusal) is read when it
        # happens, not one loop iteration later (after the response that reveals it).
        try:
            self.writer.write(self.format(record))
            self.writer.flush()
        except Exception:  # a record that cannot be formatted must not take the caller down
            self.handleError(record)

    def flush(self) -> None:
        self.writer.flush()


_stamp = [-1, ""]


def _timestamp(now: float) -> str:
    """ISO 8601 UTC with milliseconds; the seconds part formatted once per second."""
    second = int(now)
    if _stamp[0] != second:
        _stamp[0], _stamp[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_stamp[1]}.{int((now - second) * 1000):03d}Z"


class _DirectLog:
    """Lines written to the writer without ``logging`` (one or more come with every request or
    socket); through ``logging`` until ``setup_logging`` gave a writer."""

    LOGGER = "tornado_gateway"
    _LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
               logging.ERROR: "error"}

    def __init__(self) -> None:
        self.threshold = logging.INFO
        self.writer: LineWriter | None = None  # None: not set up, lines go through ``logging``
        self.redactor = Redactor()

    def enabled_for(self, level: int) -> bool:
        if self.writer is None:
            return logging.getLogger(self.LOGGER).isEnabledFor(level)
        return level >= self.threshold

    def _head(self, level: int, message: str) -> str:
        return (f'{{"time":"{_timestamp(time.time())}","level":"{self._LEVELS.get(level, "info")}",'
                f'"logger":"{self.LOGGER}","message":{_quote(message)}')


class AccessLog(_DirectLog):
    """The access line of each HTTP request."""

    LOGGER = "tornado_gateway.access"

    def write(self, level: int, method: str, path: str, status: int, duration: float,
              request_id: str | None, user_id: str | None, route: str, upstream: str | None,
              client_ip: str | None) -> None:
        """One line for one request (the caller checked ``enabled_for(level)``)."""
        if self.writer is None:
            logging.getLogger(self.LOGGER).log(level, "%s %s %d", method, path, status, extra={
                "request_id": request_id, "user_id": user_id, "route": route, "upstream": upstream,
                "method": method, "path": path, "status": status,
                "duration_ms": round(duration * 1000, 2), "client_ip": client_ip})
            return
        redactor = self.redactor
        # One search over everything a client or token chose; each field only when it hit.
        if redactor.hit(f"{method} {path} {request_id} {user_id}"):
            method, path = redactor(method), redactor(path)
            request_id = redactor(request_id) if request_id else request_id
            user_id = redactor(user_id) if user_id else user_id
        path_q = _quote(path)
        line = self._head(level, f"{method} {path} {status}")
        if request_id:
            line += f',"request_id":{_quote(request_id)}'
        if user_id:
            line += f',"user_id":{_quote(user_id)}'
        line += f',"route":{_quote(route)}'
        if upstream:
            line += f',"upstream":{_quote(upstream)}'
        line += (f',"method":{_quote(method)},"path":{path_q},"status":{status:d},'
                 f'"duration_ms":{duration * 1000:.2f}')
        if client_ip:
            line += f',"client_ip":{_quote(client_ip)}'
        self.writer.write(line + "}")


class SocketLog(_DirectLog):
    """A socket's lines: connected, authenticated, refused, disconnected (a storm writes thousands)."""

    LOGGER = "tornado_gateway.realtime"

    def write(self, level: int, message: str, event: str, sid: str | None, client_ip: str | None = None,
              user_id: str | None = None, code: str | None = None) -> None:
        """One line about one socket (the caller checked ``enabled_for(level)``); the fields of
        the ``logging`` line it replaces, in the same order, redacted the same way."""
        if self.writer is None:
            logging.getLogger(self.LOGGER).log(level, "%s", message, extra={
                "event": event, "sid": sid, "client_ip": client_ip, "user_id": user_id, "code": code})
            return
        redactor = self.redactor
        if redactor.hit(f"{message} {user_id} {client_ip} {sid} {code}"):
            message = redactor(message)
            user_id, client_ip, sid, code = (redactor(v) if v else v for v in (user_id, client_ip, sid, code))
        line = self._head(level, message)
        if user_id:
            line += f',"user_id":{_quote(user_id)}'
        if client_ip:
            line += f',"client_ip":{_quote(client_ip)}'
        line += f',"event":{_quote(event)}'
        if sid:
            line += f',"sid":{_quote(sid)}'
        if code:
            line += f',"code":{_quote(code)}'
        self.writer.write(line + "}")


access = AccessLog()
sockets = SocketLog()
_writer: LineWriter | None = None


def flush() -> None:
    """Write out whatever is buffered (exit paths call it; harmless at any time)."""
    if _writer is not None:
        _writer.flush()


def setup_logging(level: str, secrets: Iterable[str] = (), stream: BinaryIO | None = None) -> None:
    """Send every logger (ours, tornado's, socketio's), warnings and crashes to stdout as JSON."""
    global _writer
    secrets = list(secrets)
    if _writer is not None:
        _writer.flush()
    _writer = LineWriter(stream if stream is not None else sys.stdout.buffer)
    formatter = JsonFormatter(secrets)
    root = logging.getLogger()
    root.handlers[:] = [_WriterHandler(_writer, formatter)]
    root.setLevel(level.upper())
    for direct in (access, sockets):
        direct.writer, direct.redactor, direct.threshold = _writer, formatter.redactor, root.level
    # Our own access log replaces tornado's; the libraries are chatty at info.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    for noisy in ("socketio", "engineio", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)  # warnings.warn(...) becomes a "py.warnings" JSON line
    _install_exit_paths()


def _install_exit_paths() -> None:
    """Unhandled exceptions become JSON lines; buffered lines are written at exit and on SIGTERM."""
    crash = logging.getLogger("tornado_gateway.crash")

    def excepthook(typ: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if issubclass(typ, KeyboardInterrupt):
            crash.warning("interrupted")
        else:
            crash.critical("unhandled exception", exc_info=(typ, value, tb))
        flush()

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        crash.error("unhandled exception in thread %s", getattr(args.thread, "name", "?"),
                    exc_info=(args.exc_type, args.exc_value, args.exc_traceback))  # type: ignore[arg-type]
        flush()

    def unraisable_hook(unraisable: Any) -> None:
        value = unraisable.exc_value
        crash.warning("%s: %s", unraisable.err_msg or "exception ignored",
                      getattr(unraisable.object, "__qualname__", repr(unraisable.object)),
                      exc_info=(type(value), value, unraisable.exc_traceback) if value else None)

    sys.excepthook = excepthook
    threading.excepthook = thread_hook
    sys.unraisablehook = unraisable_hook
    atexit.register(flush)
    if threading.current_thread() is threading.main_thread():
        # Until the server installs its own (drain) handler, and after it removed it.
        signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM outside the drain: exit 143 the Python way, so ``atexit`` writes what is buffered."""
    raise SystemExit(128 + signum)


__all__ = ["AccessLog", "JsonFormatter", "LineWriter", "Redactor", "SocketLog", "access", "flush", "redact",
           "setup_logging", "sockets"]

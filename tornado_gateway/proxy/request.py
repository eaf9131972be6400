"""What the proxy reads of a request: the request line, headers, peer, Host check."""

from __future__ import annotations

import re
import time

from tornado import httputil
from typing import Any

# A Host header: RFC 3986 host (reg-name, IPv4, IP literal) and optional port, the check
# HTTPServerRequest makes; a comma means two Host lines were joined, also refused.
HOST_RE = re.compile(r"(?:[\[\]:A-Za-z0-9\-._~!$&'()*+;=]|%[0-9A-Fa-f]{2})*")


class ProxyRequest:
    """What the proxy reads of a request: the parts of ``HTTPServerRequest`` it uses."""

    __slots__ = ("method", "uri", "version", "path", "query", "headers", "connection",
                 "remote_ip", "protocol", "host", "_start_time")

    def __init__(self, connection: Any, start_line: httputil.RequestStartLine,
                 headers: httputil.HTTPHeaders) -> None:
        self.method, self.uri, self.version = start_line
        self.path, _, self.query = self.uri.partition("?")
        self.headers = headers
        self.connection = connection
        context = getattr(connection, "context", None)
        self.remote_ip = getattr(context, "remote_ip", None)
        self.protocol = getattr(context, "protocol", "http")
        host = headers.get("Host")
        if host is None:
            if self.version != "HTTP/1.0":
                raise httputil.HTTPInputError("Missing Host header")
            host = "127.0.0.1"
        elif not HOST_RE.fullmatch(host):
            raise httputil.HTTPInputError(f"Invalid Host header: {host!r}")
        self.host = host
        self._start_time = time.time()

    def request_time(self) -> float:
        return time.time() - self._start_time



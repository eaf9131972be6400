"""Shared by the proxy tests: the proxy gateway fixture, special upstreams, raw HTTP helpers."""

import re
import socket
import threading

import pytest
from tornado.httpclient import AsyncHTTPClient

from harness import GatewayProcess, free_port, make_token
from internal_client import AUTH_ENV

MIB = 1024 * 1024
LIMIT = 65536
MEDIA_LIMIT = 32 * MIB
TOKEN = make_token("u1")
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class HeadOnlyUpstream:
    """A raw TCP upstream that reads a request head and counts it, then never answers: it
    hangs up at once, or with ``hold`` keeps the connection open, reading nothing more
    (a slow upstream), until closed."""

    def __init__(self, hold: bool = False):
        self.hold = threading.Event() if hold else None
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if self.hold is not None:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if data:
                    self.requests += 1
                if self.hold is not None:
                    self.hold.wait(60)

    def close(self):
        if self.hold is not None:
            self.hold.set()
        self.sock.close()


@pytest.fixture(scope="module")
def hangup():
    server = HeadOnlyUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def dead_ports():
    return {"down": free_port(), "downpost": free_port()}


@pytest.fixture(scope="module")
def proxy_gw(stub_upstreams, hangup, dead_ports):
    routes = ",".join([
        "/api/slowpoke=chats;timeout=0.5",
        f"/api/down=http://127.0.0.1:{dead_ports['down']}",
        f"/api/downpost=http://127.0.0.1:{dead_ports['downpost']}",
        f"/api/hangup=http://127.0.0.1:{hangup.port}",
    ])
    process = GatewayProcess({
        **stub_upstreams.env(), **AUTH_ENV,
        "USERS_SERVICE_URL": stub_upstreams.url("users", "/users"),
        "MAX_BODY_SIZE": str(LIMIT), "MEDIA_MAX_BODY_SIZE": str(MEDIA_LIMIT),
        "RATE_LIMIT_ENABLED": "false", "CIRCUIT_FAILURES": "100",
        "GATEWAY_ROUTES": routes,
    }).start()
    yield process
    process.stop()


async def fetch(gw, path, method="GET", headers=None, auth=True, **kwargs):
    all_headers = {**(AUTH if auth else {}), **(headers or {})}
    kwargs.setdefault("follow_redirects", False)
    kwargs.setdefault("decompress_response", False)
    kwargs.setdefault("request_timeout", 60)
    return await AsyncHTTPClient().fetch(gw.url(path), method=method, headers=all_headers,
                                         raise_error=False, **kwargs)


def raw_exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send bytes exactly as given, return everything read until EOF (or a complete response)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            received += chunk
            if _complete(received):
                break
    return received


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    return bool(sep and match and len(body) >= int(match.group(1)))


def parse_raw(data: bytes) -> tuple[int, dict, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, body


def metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0

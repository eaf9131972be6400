"""Real parts for the tests: a redis-server, stub upstreams, gateway processes, tokens.

Nothing here is mocked: the redis-server is a real one on a free port that a
test may kill and restart; stub upstreams are small Tornado apps on loopback
(in a background thread, so sync and async tests can use them) that record
every request; gateways are real ``python -m tornado_gateway`` processes.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import jwt
import tornado.httpserver
import tornado.ioloop
import tornado.web

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCESS_SECRET = "test-access-secret-0123456789abcdef0123456789"
REFRESH_SECRET = "test-refresh-secret-0123456789abcdef012345678"
ORIGIN = "http://app.test:5173"
SERVICES = ("auth", "users", "chats", "messages", "media", "notifications")


# Below Linux's ephemeral range (32768-60999): a port the kernel hands out for outgoing
# connections could be taken by one while a server of ours is down, and its restart fail.
PORT_RANGE = (20000, 32000)


_RECENT_PORTS: collections.deque = collections.deque(maxlen=1024)


def free_port() -> int:
    """A port free right now and not handed out among this process's last 1,024 picks: two
    picks in a row (a gateway's PORT and INTERNAL_PORT) were once the same port, and the
    gateway then stopped at start-up, after its first listener had answered the wait."""
    while True:
        port = random.randrange(*PORT_RANGE)
        if port in _RECENT_PORTS:
            continue
        _RECENT_PORTS.append(port)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def wait_for_port(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def terminate(proc: subprocess.Popen, timeout: float) -> int:
    """SIGTERM (the drain), then SIGKILL if it has not exited within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def node_with_packages(directory: str) -> str:
    """``node``, with ``directory``'s pinned socket.io-client installed (``npm ci`` on first use).

    Skips the test when node/npm are missing (``.ci/run`` installs them).
    """
    import pytest

    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm not installed (.ci/run installs them)")
    if not os.path.isdir(os.path.join(directory, "node_modules", "socket.io-client")):
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=directory, check=True,
                       capture_output=True, timeout=180)
    return node


def make_token(sub: str | None = "u1", *, secret: str = ACCESS_SECRET, ttl: float = 600,
               algorithm: str = "HS256", **claims) -> str:
    """A signed JWT; pass exp=None to leave exp out, sub=None to leave sub out."""
    now = int(time.time())
    payload = {"iat": now, "exp": now + int(ttl)}
    if sub is not None:
        payload["sub"] = sub
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, secret, algorithm=algorithm)


# -- redis -----------------------------------------------------------------

class RedisServer:
    """A redis-server of the test's own on a free loopback port."""

    def __init__(self):
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.dir = tempfile.mkdtemp(prefix="gw-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (.ci/run installs it)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, proc=self.proc)
        return self

    def kill(self) -> None:
        """SIGKILL: Redis vanishes the way a crash does."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        self.kill()

    def restart(self) -> None:
        self.kill()
        self.start()

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)


# -- stub upstreams ----------------------------------------------------------

@dataclass
class Recorded:
    """One request a stub upstream received."""

    service: str
    method: str
    uri: str
    headers: dict
    body: bytes
    header_list: list = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.uri.split("?", 1)[0]

    def json(self):
        return json.loads(self.body)


class StubHandler(tornado.web.RequestHandler):
    """Records the request, then behaves as the path or the stub's hooks say.

    Paths (after any prefix): ``/status/NNN`` answers NNN; ``/slow/MS`` waits;
    ``/bytes/N`` streams N bytes; ``/reset`` closes the connection mid-response;
    ``/redirect`` answers 302; anything else echoes the request as JSON.
    A test may set ``stub.hooks[(method, path)] = fn(record, handler)``, or
    ``stub.hooks[(service, method, path)]`` for one service only (those win); a
    path ending in ``*`` matches every path with that prefix (exact paths win).
    """

    def initialize(self, stub: "StubUpstreams", service: str):
        self.stub = stub
        self.service = service

    def check_xsrf_cookie(self):
        pass

    async def _any(self):
        record = Recorded(
            service=self.service,
            method=self.request.method,
            uri=self.request.uri,
            headers={k.lower(): v for k, v in self.request.headers.items()},
            body=self.request.body,
            header_list=list(self.request.headers.get_all()),
        )
        self.stub.record(record)
        hooks, method = self.stub.hooks, self.request.method
        hook = (hooks.get((self.service, method, record.path)) or hooks.get((self.service, "*", record.path))
                or hooks.get((method, record.path)) or hooks.get(("*", record.path))
                or self._prefix_hook(record.path))
        if hook is not None:
            result = hook(record, self)
            if asyncio.iscoroutine(result):
                await result
            return
        parts = record.path.strip("/").split("/")
        if len(parts) >= 2 and parts[-2] == "status":
            self.set_status(int(parts[-1]))
            self.finish({"from": self.service, "status": int(parts[-1])})
        elif len(parts) >= 2 and parts[-2] == "slow":
            await asyncio.sleep(int(parts[-1]) / 1000)
            self.finish({"from": self.service, "slept_ms": int(parts[-1])})
        elif len(parts) >= 2 and parts[-2] == "bytes":
            await self._stream_bytes(int(parts[-1]))
        elif parts[-1] == "reset":
            self.set_header("Content-Length", "1000")
            self.write(b"x" * 10)
            await self.flush()
            self.request.connection.stream.close()
        elif parts[-1] == "redirect":
            self.redirect("/elsewhere", status=302)
        else:
            self.finish({
                "from": self.service, "method": record.method, "uri": record.uri,
                "headers": record.headers, "body_len": len(record.body),
            })

    def _prefix_hook(self, path: str):
        """``hooks[(method, "/prefix/*")]`` matches every path under the prefix (the longest
        prefix wins, a service's own hooks first)."""
        found = []
        for key, hook in list(self.stub.hooks.items()):
            service, method, pattern = key if len(key) == 3 else (None, *key)
            if service not in (None, self.service):
                continue
            if pattern.endswith("*") and path.startswith(pattern[:-1]) \
                    and method in (self.request.method, "*"):
                found.append((service is not None, len(pattern), hook))
        return max(found, key=lambda item: item[:2])[2] if found else None

    async def _stream_bytes(self, total: int):
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Length", str(total))
        chunk = b"z" * 65536
        sent = 0
        while sent < total:
            piece = chunk[: min(len(chunk), total - sent)]
            self.write(piece)
            await self.flush()
            sent += len(piece)
        self.finish()

    get = post = put = patch = delete = head = options = _any


class StubUpstreams:
    """Six stub services (one port each) in a background thread's IOLoop."""

    def __init__(self, services=SERVICES):
        self.services = services
        self.ports = {name: free_port() for name in services}
        self.requests: list[Recorded] = []
        self.hooks: dict = {}
        self._lock = threading.Lock()
        self._loop: tornado.ioloop.IOLoop | None = None
        self._thread: threading.Thread | None = None
        self.connections = 0  # TCP connections accepted, all services

    def url(self, service: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def env(self) -> dict:
        return {f"{s.upper()}_SERVICE_URL": self.url(s) for s in self.services}

    def record(self, record: Recorded) -> None:
        with self._lock:
            self.requests.append(record)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
        self.hooks.clear()

    def received(self, service: str | None = None, path_prefix: str = "") -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests
                    if (service is None or r.service == service) and r.path.startswith(path_prefix)]

    def start(self) -> "StubUpstreams":
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(asyncio.new_event_loop())
            self._loop = tornado.ioloop.IOLoop.current()
            stub = self

            class CountingServer(tornado.httpserver.HTTPServer):
                def handle_stream(self, stream, address):
                    stub.connections += 1
                    return super().handle_stream(stream, address)

            for name, port in self.ports.items():
                app = tornado.web.Application([(r".*", StubHandler, {"stub": self, "service": name})])
                server = CountingServer(app, max_body_size=2 * 1024 ** 3)
                server.listen(port, "127.0.0.1")
            ready.set()
            self._loop.start()

        self._thread = threading.Thread(target=run, daemon=True, name="stub-upstreams")
        self._thread.start()
        ready.wait(10)
        return self

    def call_soon(self, fn, *args) -> None:
        """Run ``fn`` on the stubs' loop (e.g. to change state safely)."""
        self._loop.add_callback(fn, *args)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.add_callback(self._loop.stop)


# -- gateway processes -------------------------------------------------------

class GatewayProcess:
    """``python -m tornado_gateway`` with the given environment."""

    def __init__(self, env: dict | None = None, args: list[str] | None = None):
        self.port = free_port()
        self.internal_port = free_port()
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "NODE_ENV": "development",
            "LOG_LEVEL": "info",
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "INTERNAL_PORT": str(self.internal_port),
            "ALLOWED_ORIGINS": ORIGIN,
            "JWT_ACCESS_SECRET": ACCESS_SECRET,
            "JWT_REFRESH_SECRET": REFRESH_SECRET,
            "REDIS_URL": "memory://",
            "DRAIN_GRACE": "0",  # no load balancer to wait for; tests/edge/test_drain.py sets its own
            "PYTHONUNBUFFERED": "1",
        }
        self.env.update({k: str(v) for k, v in (env or {}).items() if v is not None})
        for key in [k for k, v in (env or {}).items() if v is None]:
            self.env.pop(key, None)
        self.args = args or []
        self.proc: subprocess.Popen | None = None
        self.log_path = tempfile.mktemp(prefix="gw-", suffix=".log")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def internal_base(self) -> str:
        return f"http://127.0.0.1:{self.internal_port}"

    def url(self, path: str) -> str:
        return self.base + path

    def start(self, wait: bool = True) -> "GatewayProcess":
        for attempt in range(3):
            self._log = open(self.log_path, "wb")
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tornado_gateway", *self.args],
                env=self.env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            )
            if not wait:
                return self
            try:
                wait_for_port(self.port, timeout=15, proc=self.proc)
                return self
            except RuntimeError as exc:
                # free_port's pick can be taken by another process before the gateway binds
                # it: start again on other ports; any other failure is raised with its log.
                self._log.close()
                if "cannot listen on" not in self.logs() or attempt == 2 or self.env.get("PORT") != str(self.port):
                    raise RuntimeError(f"{exc}; gateway log: {self.logs()[-2000:]}") from None
                if self.env.get("INTERNAL_PORT") == str(self.internal_port):
                    self.internal_port = free_port()
                    self.env["INTERNAL_PORT"] = str(self.internal_port)
                self.port = free_port()
                self.env["PORT"] = str(self.port)
        return self

    def logs(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_records(self) -> list[dict]:
        out = []
        for line in self.logs().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"unparsed": line})
        return out

    def signal(self, sig=signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        code = terminate(self.proc, 15)
        self._log.close()
        return code

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def get_json(self, path: str, headers: dict | None = None) -> tuple[int, dict]:
        """A small blocking GET for set-up checks (tests use real async clients)."""
        req = urllib.request.Request(self.url(path), headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")


def run_gateway_cli(args: list[str], env: dict | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    """Run ``python -m tornado_gateway ARGS`` to completion (for config errors, --help)."""
    base_env = {"PATH": os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "tornado_gateway", *args], env={**base_env, **(env or {})},
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)

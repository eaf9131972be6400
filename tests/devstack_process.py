"""A real ``python -m tornado_gateway --devstack`` process on free loopback ports, for the tests."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from harness import ORIGIN, ROOT, SERVICES, free_port, terminate, wait_for_port


class DevstackProcess:
    """The gateway plus its six stand-ins; stdout (JSON log) and stderr (the block) kept apart."""

    def __init__(self, env: dict | None = None, args: list[str] | None = None):
        self.port = free_port()
        self.internal_port = free_port()
        self.service_ports = {s: free_port() for s in SERVICES}
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONUNBUFFERED": "1",
            "PORT": str(self.port),
            "INTERNAL_PORT": str(self.internal_port),
            "ALLOWED_ORIGINS": ORIGIN,
            "RATE_LIMIT_AUTH": "1000/60",  # the tests log in more often than a person does
            "DRAIN_GRACE": "0",
            **{f"{s.upper()}_SERVICE_URL": f"http://127.0.0.1:{p}" for s, p in self.service_ports.items()},
        }
        for key, value in (env or {}).items():
            if value is None:
                self.env.pop(key, None)
            else:
                self.env[key] = str(value)
        self.args = ["--devstack", *(args or [])]
        self.proc: subprocess.Popen | None = None
        # the outputs live in a directory of this process's own, removed by stop() (what they
        # held is kept in memory for the assertions made after it)
        self._dir = tempfile.mkdtemp(prefix="devstack-")
        self.out_path = os.path.join(self._dir, "stdout")
        self.err_path = os.path.join(self._dir, "stderr")
        self._kept: dict[str, str] = {}

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def service_url(self, service: str, path: str) -> str:
        return f"http://127.0.0.1:{self.service_ports[service]}{path}"

    def start(self) -> "DevstackProcess":
        self._out, self._err = open(self.out_path, "wb"), open(self.err_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "tornado_gateway", *self.args], env=self.env,
                                     cwd=ROOT, stdout=self._out, stderr=self._err)
        wait_for_port(self.port, timeout=20, proc=self.proc)
        deadline = time.monotonic() + 10
        while "  stop " not in self.stderr():  # the block is printed right after the listener is up
            if time.monotonic() > deadline:
                raise TimeoutError(f"no start-up block: {self.stderr()!r}")
            time.sleep(0.05)
        return self

    def stdout(self) -> str:
        return self._read(self.out_path)

    def stderr(self) -> str:
        return self._read(self.err_path)

    def _read(self, path: str) -> str:
        if path in self._kept:
            return self._kept[path]
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def banner_line(self, label: str) -> str:
        match = re.search(rf"^  {label} +(.*)$", self.stderr(), re.M)
        assert match, f"no {label!r} line in {self.stderr()!r}"
        return match.group(1)

    def request(self, method: str, path: str, body: dict | None = None, token: str | None = None,
                headers: dict | None = None) -> tuple[int, dict, dict]:
        """A blocking JSON request through the gateway: (status, JSON body, headers)."""
        data = json.dumps(body).encode() if body is not None else None
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url(path), data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null"), dict(resp.headers)
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null"), dict(err.headers)

    def login(self, username: str, password: str = "devstack") -> dict:
        status, body, _ = self.request("POST", "/api/auth/login", {"username": username, "password": password})
        assert status == 200, body
        return body

    def stop(self) -> int | None:
        if self.proc is None:
            shutil.rmtree(self._dir, ignore_errors=True)
            return None
        code = terminate(self.proc, 20)
        self._out.close()
        self._err.close()
        for path in (self.out_path, self.err_path):
            self._kept[path] = self._read(path)
        shutil.rmtree(self._dir, ignore_errors=True)
        return code

"""A real Redis Sentinel for the tests: one master and one sentinel process on free loopback ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from harness import RedisServer, free_port, wait_for_port


class RedisSentinel:
    """A redis-server master watched by one ``redis-server --sentinel`` (service ``mymaster``)."""

    def __init__(self) -> None:
        self.master = RedisServer()
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="gw-sentinel-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/0/mymaster"

    def start(self) -> "RedisSentinel":
        self.master.start()
        config = os.path.join(self.dir, "sentinel.conf")
        with open(config, "w") as f:  # the sentinel rewrites its config file: it must be writable
            f.write(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
                    f"sentinel monitor mymaster 127.0.0.1 {self.master.port} 1\n")
        self.proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", config, "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.master.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

"""A real Redis Cluster for the tests: three masters on free loopback ports, no replicas.

Each master is a ``redis-server --cluster-enabled yes`` in its own temporary
directory (its ``nodes.conf`` lives there); ``redis-cli --cluster create``
joins them and spreads the 16384 slots. A shard can be SIGKILLed and
restarted on the same port with the same ``nodes.conf``: it comes back as the
owner of the same slots (without its data: no persistence), and the cluster
turns ``ok`` again by itself.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time

from harness import wait_for_port

MIN_VERSION = (7, 0)  # sharded pub/sub (SSUBSCRIBE / SPUBLISH)
NODE_TIMEOUT_MS = 2000


def redis_server_version() -> tuple[int, ...]:
    """The installed redis-server's version, e.g. (7, 0, 15)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (.ci/run installs it)")
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if match is None:
        raise RuntimeError(f"cannot read the redis-server version from {out!r}")
    return tuple(int(part) for part in match.groups())


def _port_pair() -> tuple[int, int]:
    """A free client port and a free cluster-bus port, both below the ephemeral range."""
    import random

    while True:
        port = random.randrange(20000, 32000)
        bus = random.randrange(20000, 32000)
        if port == bus:
            continue
        sockets = []
        try:
            for candidate in (port, bus):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        return port, bus


class ClusterNode:
    """One master: a redis-server process with its own directory and nodes.conf."""

    def __init__(self, full_coverage: bool):
        self.port, self.bus_port = _port_pair()
        self.dir = tempfile.mkdtemp(prefix="gw-cluster-")
        self.full_coverage = full_coverage
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "ClusterNode":
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server",
             "--port", str(self.port), "--cluster-port", str(self.bus_port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             "--cluster-require-full-coverage", "yes" if self.full_coverage else "no",
             "--save", "", "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
             "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, proc=self.proc)
        return self

    def kill(self) -> None:
        """SIGKILL this process only (by its PID)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def cli(self, *args: str, timeout: float = 10) -> str:
        return subprocess.run([_redis_cli(), "-h", "127.0.0.1", "-p", str(self.port), *args],
                              capture_output=True, text=True, timeout=timeout).stdout

    def cluster_state(self) -> str:
        match = re.search(r"cluster_state:(\w+)", self.cli("CLUSTER", "INFO"))
        return match.group(1) if match else "unreachable"


def _redis_cli() -> str:
    binary = shutil.which("redis-cli")
    if binary is None:
        raise RuntimeError("redis-cli is not installed (.ci/run installs redis-tools)")
    return binary


class RedisCluster:
    """Three masters joined into one cluster; ``url`` is the gateway's REDIS_URL for it."""

    def __init__(self, masters: int = 3, full_coverage: bool = True):
        version = redis_server_version()
        if version[:2] < MIN_VERSION:
            raise RuntimeError(f"redis-server {'.'.join(map(str, version))} has no sharded pub/sub "
                               f"(needs >= {MIN_VERSION[0]}.{MIN_VERSION[1]})")
        self.nodes = [ClusterNode(full_coverage) for _ in range(masters)]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(node.address for node in self.nodes)

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", node.port) for node in self.nodes]

    def start(self, timeout: float = 30) -> "RedisCluster":
        try:
            for node in self.nodes:
                node.start()
            result = subprocess.run(
                [_redis_cli(), "--cluster", "create", *(node.address for node in self.nodes),
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, text=True, timeout=timeout)
            if result.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {result.stdout}{result.stderr}")
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every master says cluster_state:ok and knows every other master."""
        deadline = time.monotonic() + timeout
        while True:
            states = [node.cluster_state() for node in self.nodes]
            if all(state == "ok" for state in states) and self._all_known():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis cluster not ok after {timeout}s: {states}")
            time.sleep(0.1)

    def _all_known(self) -> bool:
        for node in self.nodes:
            lines = [line for line in node.cli("CLUSTER", "NODES").splitlines() if "master" in line]
            if len(lines) != len(self.nodes) or any("fail" in line.split()[2] for line in lines):
                return False
        return True

    def node_of(self, key: str) -> ClusterNode:
        """The master that owns ``key``'s slot."""
        slot = int(self.nodes[0].cli("CLUSTER", "KEYSLOT", key).strip())
        for node in self.nodes:
            for line in node.cli("CLUSTER", "NODES").splitlines():
                fields = line.split()
                if "myself" not in fields[2]:
                    continue
                for span in fields[8:]:
                    if span.startswith("["):
                        continue  # a slot being migrated
                    low, _, high = span.partition("-")
                    if int(low) <= slot <= int(high or low):
                        return node
        raise LookupError(f"no master owns the slot of {key!r}")

    def kill(self, node: ClusterNode) -> None:
        node.kill()

    def restart(self, node: ClusterNode, timeout: float = 30) -> None:
        """Kill one shard and start it again on the same port with the same nodes.conf."""
        node.kill()
        node.start()
        self.wait_ok(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        for node in self.nodes:
            shutil.rmtree(node.dir, ignore_errors=True)

    def client(self):
        """A synchronous cluster client for set-up checks."""
        from redis.cluster import ClusterNode as PyClusterNode
        from redis.cluster import RedisCluster as PyRedisCluster

        return PyRedisCluster(startup_nodes=[PyClusterNode(h, p) for h, p in self.startup_nodes],
                              decode_responses=True)

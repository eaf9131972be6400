"""Socket.IO fan-out and idle-connection benchmark of one gateway process with Redis.

Starts a redis-server on a free port, a fast stub of the chats/messages
services (bench/socket_stub.py), and one gateway (``python -m
tornado_gateway``), then runs bench/socket_fanout.js (socket.io-client,
websocket transport) and prints its figures with the gateway's CPU use, and
the gateway's RSS growth per idle authenticated connection.

    .venv/bin/python bench/socket_bench.py [--receivers 50] [--inflight 32] [--duration 10]
                                           [--ack] [--idle 2000] [--skip-fanout]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from harness import ACCESS_SECRET, ORIGIN, GatewayProcess, RedisServer, free_port, wait_for_port  # noqa: E402

CLIENT = os.path.join(ROOT, "bench", "socket_fanout.js")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ClientCpu:
    """CPU seconds of the Node client, read from a thread until it exits."""

    def __init__(self, pid: int):
        self.seconds = 0.0
        threading.Thread(target=self._watch, args=(pid,), daemon=True).start()

    def _watch(self, pid: int) -> None:
        while True:
            try:
                self.seconds = cpu_seconds(pid)
            except (OSError, IndexError):
                return
            time.sleep(0.2)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run_client(mode: str, options: dict, **popen) -> subprocess.Popen:
    return subprocess.Popen(["node", CLIENT, mode, json.dumps(options)], stdout=subprocess.PIPE, text=True,
                            **popen)


def profile(pid: int, svg: str, seconds: float) -> subprocess.Popen:
    """py-spy (``.venv/bin/pip install py-spy``) sampling the gateway for ``seconds``."""
    spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                             "--output", svg, "--format", "flamegraph" if svg.endswith(".svg") else "raw",
                             "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receivers", type=int, default=50)
    parser.add_argument("--inflight", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--ack", action="store_true", help="receivers ack message:new (receipts on)")
    parser.add_argument("--idle", type=int, default=2000, help="idle connections (0: skip)")
    parser.add_argument("--skip-fanout", action="store_true")
    parser.add_argument("--profile", metavar="SVG", help="py-spy flame graph of the gateway during fan-out")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it

    redis = RedisServer().start()
    stub_port = free_port()
    stub = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "socket_stub.py"), str(stub_port)])
    wait_for_port(stub_port)
    stub_url = f"http://127.0.0.1:{stub_port}"
    gateway = GatewayProcess({
        "REDIS_URL": redis.url, "LOG_LEVEL": "warning", "CHATS_SERVICE_URL": stub_url,
        "MESSAGES_SERVICE_URL": stub_url, "SOCKET_RATE_MESSAGE": "100000000/1",
        "SOCKET_RATE_CONNECT": "100000000/1", "SOCKET_RATE_JOIN": "100000000/1",
        "MAX_CONNECTIONS_PER_IP": "0", "MAX_CONNECTIONS_PER_USER": "0",
    }).start()
    pid = gateway.proc.pid
    base = {"url": gateway.base, "origin": ORIGIN, "secret": ACCESS_SECRET}
    try:
        print(f"load before: {os.getloadavg()[0]:.2f} (1-min average), {os.cpu_count()} cores")
        if not args.skip_fanout:
            cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
            stub_cpu_before = cpu_seconds(stub.pid)
            client = run_client("fanout", {**base, "chat": "bench", "receivers": args.receivers,
                                           "inflight": args.inflight, "duration": args.duration,
                                           "ack": args.ack})
            spy = profile(pid, args.profile, args.duration + 4) if args.profile else None
            client_cpu = ClientCpu(client.pid)
            out, _ = client.communicate(timeout=args.duration + 120)
            if spy is not None:
                spy.wait(60)
            wall = time.monotonic() - wall_before
            result = json.loads(out.strip().splitlines()[-1])
            result["gatewayCpuPercent"] = round(100 * (cpu_seconds(pid) - cpu_before) / wall)
            result["stubCpuPercent"] = round(100 * (cpu_seconds(stub.pid) - stub_cpu_before) / wall)
            result["clientCpuPercent"] = round(100 * client_cpu.seconds / wall)
            result["allDelivered"] = result.get("deliveries") == result.get("expectedDeliveries")
            print("fan-out:", json.dumps(result))
        if args.idle:
            time.sleep(1)
            rss_before = rss_kib(pid)
            client = run_client("idle", {**base, "connections": args.idle})
            ready = json.loads(client.stdout.readline())
            time.sleep(3)
            rss_after = rss_kib(pid)
            client.terminate()
            client.wait(30)
            print("idle:", json.dumps({
                "connections": ready.get("ready"), "rssBeforeKiB": rss_before, "rssAfterKiB": rss_after,
                "kibPerConnection": round((rss_after - rss_before) / max(1, ready.get("ready", 1)), 1),
                **({"error": ready["error"]} if "error" in ready else {})}))
        print(f"load after: {os.getloadavg()[0]:.2f}")
    finally:
        gateway.stop()
        stub.terminate()
        stub.wait()
        redis.stop()
        if "error" in gateway.logs():
            print("gateway log errors:", [line for line in gateway.logs().splitlines() if '"error"' in line][:5])


if __name__ == "__main__":
    main()

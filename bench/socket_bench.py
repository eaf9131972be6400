"""Socket.IO benchmarks of one gateway process against the Node reference (bench/node_ref/).

Each target gets its own redis-server; both talk to one fast stub of the chats and
messages services (bench/socket_stub.py); the client is bench/socket_fanout.js
(socket.io-client, websocket transport). Production configuration by default
(NODE_ENV=production, LOG_LEVEL=info). In one run, alternating targets:

1. fan-out: R receivers in one chat, K ``message:send`` in flight for D seconds;
   deliveries/s, latency p50/p99, every delivery exactly once;
2. connect storm: N clients connecting at once (authenticated, websocket), each
   joining a chat: time until all joined, failures, handshakes/s (from one Node process, or
   from several starting together with --storm-processes; socket.io-client, or the lean
   generator bench/storm_wire.js with --storm-client wire, which leaves the server the
   bottleneck);
3. idle: N idle authenticated websockets on a fresh process, RSS growth per socket;
   then the gateway again under tracemalloc (bench/traced_gateway.py): the top
   allocation sites per socket;
4. soak: C chats of M members (receivers ack, so delivered receipts flow), S
   messages: RSS growth and Redis keys per 1,000 messages, exactly once.

    .venv/bin/python bench/socket_bench.py [--targets gateway,node] [--rounds 2] [--receivers 50]
        [--inflight 32] [--senders 1] [--duration 8] [--ack] [--storm 2000] [--storm-processes 1]
        [--storm-client socketio|wire] [--idle 2000] [--soak 5000] [--trace 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from harness import (ACCESS_SECRET, ORIGIN, REFRESH_SECRET, RedisServer, free_port,  # noqa: E402
                     wait_for_port)

CLIENT = os.path.join(ROOT, "bench", "socket_fanout.js")
WIRE_CLIENT = os.path.join(ROOT, "bench", "storm_wire.js")  # the lean storm generator
NODE_REF = os.path.join(ROOT, "bench", "node_ref")
STARTED: list["Target"] = []  # stopped on the way out, whatever happened


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def load() -> float:
    return round(os.getloadavg()[0], 2)


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


FLOORS = ("floor", "raw")  # targets that answer storms and idle sockets only


class Target:
    """One server under test (``gateway``, ``node``, ``traced``, or ``floor`` and ``raw``:
    bench/socket_floor.py on Tornado and below it, storms and idle sockets only) with a
    redis-server of its own."""

    def __init__(self, kind: str, stub_url: str, log_level: str, workdir: str):
        self.kind = kind
        self.redis = RedisServer().start()
        self.port = free_port()
        self.log_path = os.path.join(workdir, f"{kind}-{self.port}.log")
        self.snapshots = os.path.join(workdir, f"trace-{self.port}")
        env = {
            "PATH": os.environ.get("PATH", ""), "NODE_ENV": os.environ.get("BENCH_NODE_ENV", "production"),
            "LOG_LEVEL": log_level, "HOST": "127.0.0.1", "PORT": str(self.port), "INTERNAL_PORT": "0",
            "ALLOWED_ORIGINS": ORIGIN, "JWT_ACCESS_SECRET": ACCESS_SECRET, "JWT_REFRESH_SECRET": REFRESH_SECRET,
            "REDIS_URL": self.redis.url, "CHATS_SERVICE_URL": stub_url, "MESSAGES_SERVICE_URL": stub_url,
            # the benchmark's own load must not be refused
            "RATE_LIMIT_USER": "1000000000/60", "RATE_LIMIT_IP": "1000000000/60",
            "SOCKET_RATE_MESSAGE": "100000000/1", "SOCKET_RATE_CONNECT": "100000000/1",
            "SOCKET_RATE_JOIN": "100000000/1", "MAX_CONNECTIONS_PER_IP": "0", "MAX_CONNECTIONS_PER_USER": "0",
        }
        cmd = {"gateway": [sys.executable, "-m", "tornado_gateway"],
               "traced": [sys.executable, os.path.join(ROOT, "bench", "traced_gateway.py"), self.snapshots],
               "node": ["node", os.path.join(NODE_REF, "server.js")],
               "floor": [sys.executable, os.path.join(ROOT, "bench", "socket_floor.py")],
               "raw": [sys.executable, os.path.join(ROOT, "bench", "socket_floor.py"), "--raw"]}[kind]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, timeout=30, proc=self.proc)
        self.url = f"http://127.0.0.1:{self.port}"
        self.pid = self.proc.pid
        self._snapshot_count = 0
        self._stopped = False
        STARTED.append(self)

    def client_options(self, **extra: Any) -> dict:
        return {"url": self.url, "origin": ORIGIN, "secret": ACCESS_SECRET,
                "receiptEvent": self.kind == "node", **extra}

    def redis_keys(self) -> dict[str, int]:
        """Keys in this target's Redis by prefix (up to the first ':' after the first word)."""
        client = self.redis.client()
        counts: dict[str, int] = {}
        for key in client.scan_iter(count=1000):
            text = key.decode() if isinstance(key, bytes) else key
            words = []  # the leading parts without digits: "gw:receipt:m12:u3" -> "gw:receipt"
            for part in text.split(":")[:-1]:
                if any(c.isdigit() for c in part) or len(words) == 2:
                    break
                words.append(part)
            prefix = ":".join(words) or text
            counts[prefix] = counts.get(prefix, 0) + 1
        client.close()
        return counts

    def snapshot(self) -> tracemalloc.Snapshot:
        path = f"{self.snapshots}.{self._snapshot_count}"
        self._snapshot_count += 1
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 120
        while not os.path.exists(path + ".done"):
            if time.monotonic() > deadline:
                raise RuntimeError("no tracemalloc snapshot from the traced gateway")
            time.sleep(0.1)
        return tracemalloc.Snapshot.load(path)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.redis.stop()
        errors = [line for line in open(self.log_path, errors="replace") if '"error"' in line or "Error" in line]
        if errors:
            print(f"  {self.kind} log, lines with errors: {errors[:3]}")


def storm_command(client: str, options: dict) -> list[str]:
    """The storm client: socket.io-client (``socketio``) or the lean generator (``wire``)."""
    if client == "wire":
        return ["node", WIRE_CLIENT, json.dumps(options)]
    return ["node", CLIENT, "storm", json.dumps(options)]


def run_client(mode: str, options: dict, timeout: float, command: list[str] | None = None) -> dict:
    proc = subprocess.Popen(command or ["node", CLIENT, mode, json.dumps(options)], stdout=subprocess.PIPE, text=True)
    client_cpu = ClientCpu(proc.pid)
    out, _ = proc.communicate(timeout=timeout)
    result = json.loads(out.strip().splitlines()[-1])
    result["clientCpuSeconds"] = round(client_cpu.seconds, 2)
    return result


def fanout(target: Target, args: argparse.Namespace, chat: str, stub_pid: int) -> dict:
    cpu_before, wall_before, stub_before = cpu_seconds(target.pid), time.monotonic(), cpu_seconds(stub_pid)
    result = run_client("fanout", target.client_options(
        chat=chat, receivers=args.receivers, inflight=args.inflight, duration=args.duration, ack=args.ack,
        senders=args.senders),
        timeout=args.duration + 180)
    wall, cpu = time.monotonic() - wall_before, cpu_seconds(target.pid) - cpu_before
    result["serverCpuPercent"] = round(100 * cpu / wall)
    # all of the run's server CPU (connects and joins included) over all its deliveries
    result["serverCpuMicrosPerDelivery"] = round(1e6 * cpu / max(1, result.get("deliveries") or 1), 1)
    result["stubCpuPercent"] = round(100 * (cpu_seconds(stub_pid) - stub_before) / wall)
    result["exactlyOnce"] = result.get("deliveries") == result.get("expectedDeliveries") \
        and result.get("duplicates") == 0
    return result


def storm_together(target: Target, n: int, chat: str, chat_size: int, processes: int, client: str) -> dict:
    """One storm of ``n`` clients from several Node processes that start at the same moment:
    handshakes/s over the slowest process's time, the client CPU of all of them."""
    share = n // processes
    start_at = int(time.time() * 1000) + 1500  # every process started and loaded by then
    procs = [subprocess.Popen(storm_command(client, target.client_options(
        chat=chat, connections=share, chatSize=chat_size, first=i * share, startAt=start_at, hold=True)),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for i in range(processes)]
    cpus = [ClientCpu(proc.pid) for proc in procs]
    parts = [json.loads(proc.stdout.readline()) for proc in procs]  # type: ignore[union-attr]
    for proc in procs:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(120)
    joined, seconds = sum(p["joined"] for p in parts), max(p["seconds"] for p in parts)
    return {"connections": share * processes, "processes": processes, "joined": joined,
            "failures": sum(p["failures"] for p in parts),
            "firstFailures": [f for p in parts for f in p["firstFailures"]][:3], "seconds": seconds,
            "handshakesPerSecond": round(joined / seconds),
            "joinedMs": {"last": _latest(p["joinedMs"]["last"] for p in parts)},
            "connectedMs": {"last": _latest(p["connectedMs"]["last"] for p in parts)},
            "createdMs": max(p["createdMs"] for p in parts),
            "stormCpuMs": sum(p["stormCpuMs"] for p in parts),
            "clientCpuSeconds": round(sum(c.seconds for c in cpus), 2)}


def _latest(times: Any) -> Any:
    """The latest of the storm processes' times (None from a process that got no one in)."""
    return max((t for t in times if t is not None), default=None)


def storm(target: Target, n: int, chat: str, chat_size: int, stub_pid: int, processes: int = 1,
          client: str = "socketio") -> dict:
    redis_pid = target.redis.proc.pid if target.redis.proc else None
    cpu_before, stub_before = cpu_seconds(target.pid), cpu_seconds(stub_pid)
    redis_before = cpu_seconds(redis_pid) if redis_pid else 0.0
    if processes > 1:
        result = storm_together(target, n, chat, chat_size, processes, client)
    else:
        options = target.client_options(chat=chat, connections=n, chatSize=chat_size)
        result = run_client("storm", options, timeout=300, command=storm_command(client, options))
    result["serverCpuSeconds"] = round(cpu_seconds(target.pid) - cpu_before, 2)
    # the rest of the machine's CPU the storm cost: this target's redis-server and the shared stub
    result["redisCpuSeconds"] = round(cpu_seconds(redis_pid) - redis_before, 2) if redis_pid else None
    result["stubCpuSeconds"] = round(cpu_seconds(stub_pid) - stub_before, 2)
    time.sleep(2)  # the storm's sockets close
    return result


def idle(target: Target, n: int) -> tuple[dict, subprocess.Popen]:
    time.sleep(1)
    before = rss_kib(target.pid)
    proc = subprocess.Popen(["node", CLIENT, "idle", json.dumps(target.client_options(connections=n))],
                            stdout=subprocess.PIPE, text=True)
    ready = json.loads(proc.stdout.readline())
    time.sleep(3)
    after = rss_kib(target.pid)
    return {"connections": ready.get("ready"), "rssBeforeKiB": before, "rssAfterKiB": after,
            "kibPerConnection": round((after - before) / max(1, ready.get("ready") or 1), 1),
            **({"error": ready["error"]} if "error" in ready else {})}, proc


def soak(target: Target, args: argparse.Namespace, prefix: str) -> dict:
    time.sleep(1)
    rss_before, keys_before = rss_kib(target.pid), target.redis_keys()
    result = run_client("soak", target.client_options(
        prefix=prefix, chats=args.soak_chats, members=args.members, messages=args.soak,
        inflight=args.inflight, ack=True), timeout=600)
    time.sleep(1)
    rss_after, keys_after = rss_kib(target.pid), target.redis_keys()
    per = 1000 / max(1, result.get("acked") or 1)
    grown = {k: keys_after.get(k, 0) - keys_before.get(k, 0) for k in keys_after}
    result.update({
        "exactlyOnce": result.get("deliveries") == result.get("expectedDeliveries") and result.get("duplicates") == 0,
        "rssGrowthKiB": rss_after - rss_before, "rssKiBPer1000Messages": round((rss_after - rss_before) * per, 1),
        "redisKeysPer1000Messages": round(sum(grown.values()) * per, 1),
        "redisKeysByPrefix": {k: v for k, v in sorted(grown.items(), key=lambda kv: -kv[1]) if v}})
    return result


def trace(stub_url: str, args: argparse.Namespace, workdir: str) -> None:
    """The traced gateway: heap growth per idle socket, by allocation site."""
    target = Target("traced", stub_url, args.log_level, workdir)
    try:
        time.sleep(1)
        before = target.snapshot()
        result, client = idle(target, args.trace)
        after = target.snapshot()
        n = max(1, result["connections"] or 1)
        filters = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen *>")]
        stats = after.filter_traces(filters).compare_to(before.filter_traces(filters), "lineno")
        total = sum(s.size_diff for s in stats)
        print(f"tracemalloc, {n} idle authenticated websockets: {total / n / 1024:.1f} KiB of Python heap per "
              f"socket (allocation sites of the growth, most first)")
        print(f"  {'bytes/socket':>12} {'blocks/socket':>13}  allocation site")
        for stat in stats[:args.trace_top]:
            frame = stat.traceback[0]
            where = frame.filename.replace(ROOT + "/", "").split("site-packages/")[-1]
            print(f"  {stat.size_diff / n:12.0f} {stat.count_diff / n:13.2f}  {where}:{frame.lineno}")
        by_file: dict[str, int] = {}
        for stat in stats:
            name = stat.traceback[0].filename.split("site-packages/")[-1].replace(ROOT + "/", "")
            by_file[name] = by_file.get(name, 0) + stat.size_diff
        print("  by file: " + ", ".join(f"{name} {size / n:.0f} B" for name, size in
                                        sorted(by_file.items(), key=lambda kv: -kv[1])[:10]))
        client.terminate()
        client.wait(30)
    finally:
        target.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="gateway,node")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--receivers", type=int, default=50)
    parser.add_argument("--inflight", type=int, default=32)
    parser.add_argument("--senders", type=int, default=1,
                        help="sockets the fan-out's in-flight sends are spread over (the gateway keeps each "
                             "socket's events in order, so one socket's sends wait for each other)")
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--ack", action="store_true", help="fan-out receivers ack message:new (receipts on)")
    parser.add_argument("--storm", type=int, default=2000, help="clients of the connect storm (0: skip)")
    parser.add_argument("--storm-chat-size", type=int, default=10, help="members of each chat the storm joins")
    parser.add_argument("--storm-processes", type=int, default=1,
                        help="Node processes that make the storm together (one is the bottleneck on 2 cores)")
    parser.add_argument("--storm-client", choices=("socketio", "wire"), default="socketio",
                        help="socket.io-client, or the lean generator bench/storm_wire.js (the server is the bottleneck)")
    parser.add_argument("--idle", type=int, default=2000, help="idle connections (0: skip)")
    parser.add_argument("--trace", type=int, default=2000, help="idle connections under tracemalloc (0: skip)")
    parser.add_argument("--trace-top", type=int, default=25)
    parser.add_argument("--soak", type=int, default=5000, help="messages of the soak (0: skip)")
    parser.add_argument("--soak-chats", type=int, default=20)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--skip-fanout", action="store_true")
    parser.add_argument("--log-level", default=os.environ.get("BENCH_LOG_LEVEL", "info"))
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    kinds = args.targets.split(",")
    # The reference's packages, and the clients' socket.io-client (tests/js, pinned there).
    for directory in ([NODE_REF] if "node" in kinds else []) + [os.path.join(ROOT, "tests", "js")]:
        if not os.path.isdir(os.path.join(directory, "node_modules")):
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=directory, check=True)
    workdir = tempfile.mkdtemp(prefix="gw-socket-bench.")
    stub_port = free_port()
    stub = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "socket_stub.py"), str(stub_port)])
    wait_for_port(stub_port)
    stub_url = f"http://127.0.0.1:{stub_port}"
    print(f"machine: {os.cpu_count()} cores, load {load()}; NODE_ENV={os.environ.get('BENCH_NODE_ENV', 'production')}"
          f" LOG_LEVEL={args.log_level}; targets {kinds}, {args.rounds} round(s), order reversed every other round")
    summary: dict[str, dict[str, list]] = {k: {} for k in kinds}

    def keep(kind: str, what: str, value: Any) -> None:
        summary[kind].setdefault(what, []).append(value)

    try:
        targets = {k: Target(k, stub_url, args.log_level, workdir) for k in kinds}
        for round_ in range(args.rounds):
            order = kinds if round_ % 2 == 0 else kinds[::-1]
            for kind in [k for k in order if k not in FLOORS] if not args.skip_fanout else ():
                result = fanout(targets[kind], args, f"fan-{round_}-{kind}", stub.pid)
                print(f"fan-out  {kind:8} load {load():5}: {json.dumps(result)}")
                keep(kind, "deliveries/s", result["deliveriesPerSecond"])
                keep(kind, "p99 ms", result["latencyMs"]["p99"])
                keep(kind, "CPU us/delivery", result["serverCpuMicrosPerDelivery"])
                keep(kind, "exactly once", result["exactlyOnce"])
            for kind in order if args.storm else ():
                result = storm(targets[kind], args.storm, f"storm-{round_}-{kind}", args.storm_chat_size, stub.pid,
                               args.storm_processes, args.storm_client)
                print(f"storm    {kind:8} load {load():5}: {json.dumps(result)}")
                keep(kind, "handshakes/s", result["handshakesPerSecond"])
                keep(kind, "storm server CPU s", result["serverCpuSeconds"])
                keep(kind, "storm failures", result["failures"])
        for kind in [k for k in kinds if k not in FLOORS] if args.soak else ():
            result = soak(targets[kind], args, f"soak-{kind}")
            print(f"soak     {kind:8} load {load():5}: {json.dumps(result)}")
            keep(kind, "RSS KiB/1000 msgs", result["rssKiBPer1000Messages"])
            keep(kind, "Redis keys/1000 msgs", result["redisKeysPer1000Messages"])
            keep(kind, "soak exactly once", result["exactlyOnce"])
        for target in targets.values():
            target.stop()
        for kind in kinds if args.idle else ():  # a fresh process each: the heap as a new node has it
            target = Target(kind, stub_url, args.log_level, workdir)
            try:
                result, client = idle(target, args.idle)
                print(f"idle     {kind:8} load {load():5}: {json.dumps(result)}")
                keep(kind, "KiB per idle socket", result["kibPerConnection"])
                client.terminate()
                client.wait(30)
            finally:
                target.stop()
        if args.trace and "gateway" in kinds:
            trace(stub_url, args, workdir)
        print(f"\nsummary (load now {load()}); the ratio is gateway / node (for latency, memory and keys: lower is better)")
        for what in dict.fromkeys(w for k in kinds for w in summary[k]):
            cells = {k: summary[k].get(what, []) for k in kinds}
            line = "  ".join(f"{k} {v}" for k, v in cells.items())
            ratio = ""
            g, n = cells.get("gateway"), cells.get("node")
            if g and n and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in g + n) \
                    and sum(n):
                ratio = f"  ratio {sum(g) / len(g) / (sum(n) / len(n)):.2f}"
                half = len(g) // 2
                if half >= 2 and len(n) == len(g):  # V8 warms up over the rounds: the later half alone
                    ratio += f", later half {sum(g[half:]) / sum(n[half:]):.2f}"
            print(f"  {what:22} {line}{ratio}")
    finally:
        for target in STARTED:
            target.stop()
        stub.terminate()
        stub.wait()


if __name__ == "__main__":
    main()

"""Instructions per connect-storm client (or per fan-out delivery), counted by valgrind's callgrind
(steady from run to run).

One gateway process runs under callgrind in the production configuration (NODE_ENV=production,
LOG_LEVEL=info, a redis-server of its own, bench/socket_stub.py as the chats service) while
bench/socket_fanout.js runs ``--storms`` connect storms one after the other: N clients connect at
once (authenticated websocket), each joins a chat of 10 members, then all close. After each
storm the script waits until the gateway has logged every disconnect. The counters are zeroed
after the first storm (the warm-up: first imports, first code paths) and dumped after the last,
so the figure is the instructions of storms 2..K over their clients: start-up, the warm-up
storm and shut-down are not in it.

    .venv/bin/python bench/storm_instructions.py [--clients 150] [--storms 3] [--log-level info]

``--fanout R``: instead of storms, each run is one sender and R receivers in one chat, the
sender keeping 32 ``message:send`` in flight until ``--messages`` (200) are acked and every
``message:new`` arrived (socket_fanout.js's soak mode); the figure is instructions per
delivery and per message of runs 2..K (connects and closes of the R + 1 sockets included).

Needs valgrind (apt-get install valgrind), redis-server and node (tests/js's socket.io-client,
installed with ``npm ci`` on first use).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from harness import ACCESS_SECRET, ORIGIN, REFRESH_SECRET, RedisServer, free_port, wait_for_port  # noqa: E402

CLIENT = os.path.join(ROOT, "bench", "socket_fanout.js")
WIRE_CLIENT = os.path.join(ROOT, "bench", "storm_wire.js")


def gateway_env(port: int, redis_url: str, stub_url: str, log_level: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""), "NODE_ENV": os.environ.get("BENCH_NODE_ENV", "production"),
        "LOG_LEVEL": log_level, "HOST": "127.0.0.1", "PORT": str(port), "INTERNAL_PORT": "0",
        "ALLOWED_ORIGINS": ORIGIN, "JWT_ACCESS_SECRET": ACCESS_SECRET, "JWT_REFRESH_SECRET": REFRESH_SECRET,
        "REDIS_URL": redis_url, "CHATS_SERVICE_URL": stub_url, "MESSAGES_SERVICE_URL": stub_url,
        "RATE_LIMIT_USER": "1000000000/60", "RATE_LIMIT_IP": "1000000000/60",
        "SOCKET_RATE_MESSAGE": "100000000/1", "SOCKET_RATE_CONNECT": "100000000/1",
        "SOCKET_RATE_JOIN": "100000000/1", "MAX_CONNECTIONS_PER_IP": "0", "MAX_CONNECTIONS_PER_USER": "0",
        "UPSTREAM_TIMEOUT": "600", "UPSTREAM_CONNECT_TIMEOUT": "30", "CIRCUIT_FAILURES": "1000000",
        "PYTHONHASHSEED": "0",
    }


def disconnects_logged(path: str) -> int:
    """The gateway's "socket disconnected" lines so far (JSON written with or without spaces)."""
    with open(path, errors="replace") as f:
        return sum(1 for line in f if '"event":"disconnect"' in line.replace(" ", ""))


def wait_disconnects(log_path: str, expected: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        seen = disconnects_logged(log_path)
        if seen >= expected:
            return seen
        time.sleep(0.5)
    raise RuntimeError(f"only {seen} of {expected} disconnects logged within {timeout:.0f}s")


def callgrind_control(pid: int, option: str) -> None:
    # vgdb names its pipes after $USER and $HOST: those the gateway (HOST=127.0.0.1) runs with
    env = {**os.environ, "HOST": "127.0.0.1"}
    env.pop("USER", None)
    env.pop("LOGNAME", None)
    done = subprocess.run(["callgrind_control", option, str(pid)], capture_output=True, text=True, env=env)
    if done.returncode != 0 or "error" in done.stderr:
        raise RuntimeError(f"callgrind_control {option}: {done.stderr.strip()}")


def storm(args: argparse.Namespace, port: int, chat: str) -> dict:
    options = {"url": f"http://127.0.0.1:{port}", "origin": ORIGIN, "secret": ACCESS_SECRET,
               "chat": chat, "connections": args.clients, "chatSize": 10}
    command = ["node", WIRE_CLIENT] if getattr(args, "client", "socketio") == "wire" else ["node", CLIENT, "storm"]
    out = subprocess.run([*command, json.dumps(options)], capture_output=True, text=True,
                         timeout=900, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def fanout(args: argparse.Namespace, port: int, prefix: str) -> dict:
    options = {"url": f"http://127.0.0.1:{port}", "origin": ORIGIN, "secret": ACCESS_SECRET,
               "prefix": prefix, "chats": 1, "members": args.fanout + 1, "messages": args.messages,
               "inflight": 32}
    out = subprocess.run(["node", CLIENT, "soak", json.dumps(options)], capture_output=True, text=True,
                         timeout=1800, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if result["errors"] or result["duplicates"] or result["deliveries"] != args.messages * args.fanout:
        raise RuntimeError(f"fan-out run not exactly once: {result}")
    return result


def preflight(*tools: str) -> None:
    """Exit with the name of a missing tool (``tools``, redis-server, node); install
    tests/js's socket.io-client with ``npm ci`` on first use."""
    for tool in (*tools, "redis-server", "node"):
        if shutil.which(tool) is None:
            sys.exit(f"missing: {tool}")
    if not os.path.isdir(os.path.join(ROOT, "tests", "js", "node_modules")):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=os.path.join(ROOT, "tests", "js"),
                       check=True)


@contextlib.contextmanager
def storm_gateway(work: str, log_level: str, prefix: Sequence[str] = (),
                  root: str = ROOT) -> Iterator[tuple[subprocess.Popen, int, str]]:
    """A gateway of ``root`` (run behind ``prefix``: valgrind, ...) with a redis-server and the
    stub of its own, production configuration: (process, port, log path); all stopped after."""
    redis = RedisServer().start()
    stub_port = free_port()
    stub = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "socket_stub.py"), str(stub_port)])
    gateway = None
    try:
        wait_for_port(stub_port)
        port = free_port()
        log_path = os.path.join(work, "gateway.log")
        with open(log_path, "wb") as log:
            gateway = subprocess.Popen([*prefix, sys.executable, "-m", "tornado_gateway"],
                                       env=gateway_env(port, redis.url, f"http://127.0.0.1:{stub_port}", log_level),
                                       cwd=root, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(port, timeout=600, proc=gateway)
        yield gateway, port, log_path
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.terminate()
            try:
                gateway.wait(120)
            except subprocess.TimeoutExpired:
                gateway.kill()
                gateway.wait()
        stub.terminate()
        stub.wait()
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=150, help="clients per storm")
    parser.add_argument("--storms", type=int, default=3, help="storms; the first one is the warm-up")
    parser.add_argument("--log-level", default=os.environ.get("BENCH_LOG_LEVEL", "info"))
    parser.add_argument("--keep", action="store_true", help="keep the work directory (callgrind files)")
    parser.add_argument("--fanout", type=int, default=0, metavar="R",
                        help="fan-out runs to R receivers instead of storms (0: storms)")
    parser.add_argument("--messages", type=int, default=200, help="messages per fan-out run")
    parser.add_argument("--client", choices=("socketio", "wire"), default="socketio",
                        help="the storm's client: socket.io-client or the lean bench/storm_wire.js")
    args = parser.parse_args()
    if args.log_level.lower() not in ("debug", "info"):
        parser.error("the disconnect lines at info are how the script knows a storm is over")
    preflight("valgrind", "callgrind_control")
    work = tempfile.mkdtemp(prefix="gw-storm-instr.")
    out_file = os.path.join(work, "callgrind.out")
    valgrind = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}")
    try:
        with storm_gateway(work, args.log_level, valgrind) as (gateway, port, log_path):
            results = []
            disconnects = 0
            for i in range(args.storms):
                if args.fanout:
                    result = fanout(args, port, f"fi{os.getpid()}-{i}")
                    disconnects = wait_disconnects(log_path, disconnects + args.fanout + 1, 900)
                    print(f"fan-out {i + 1}/{args.storms}: {result['deliveries']} deliveries in "
                          f"{result['seconds']} s (under callgrind); load {os.getloadavg()[0]:.2f}", flush=True)
                else:
                    result = storm(args, port, f"si{os.getpid()}-{i}")
                    if result.get("failures"):
                        raise RuntimeError(f"storm {i + 1}: {result['failures']} failures: "
                                           f"{result.get('firstFailures')}")
                    disconnects = wait_disconnects(log_path, disconnects + args.clients, 900)
                    print(f"storm {i + 1}/{args.storms}: {result['joined']} joined in {result['seconds']} s "
                          f"(under callgrind); load {os.getloadavg()[0]:.2f}", flush=True)
                results.append(result)
                if i == 0:
                    callgrind_control(gateway.pid, "--zero")
            callgrind_control(gateway.pid, "--dump")
            time.sleep(1)
        dumps = [p for p in glob.glob(out_file + "*") if p != out_file]
        if not dumps:
            raise RuntimeError("callgrind_control --dump wrote nothing")
        total = 0
        for path in dumps:  # the dump of storms 2..K (one file per thread, if any)
            with open(path) as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("summary:"))
        level = f"NODE_ENV={os.environ.get('BENCH_NODE_ENV', 'production')} LOG_LEVEL={args.log_level}"
        if args.fanout:
            messages = args.messages * (args.storms - 1)
            print(f"{level}: {total:,} instructions over {messages} messages to {args.fanout} receivers "
                  f"({args.storms - 1} runs after a warm-up run)")
            print(f"instructions per delivery: {total / (messages * args.fanout):,.0f}; "
                  f"per message: {total / messages / 1e6:.3f} M")
        else:
            clients = args.clients * (args.storms - 1)
            print(f"{level}: {total:,} instructions over {clients} storm clients "
                  f"({args.storms - 1} storms of {args.clients} after a warm-up storm)")
            print(f"instructions per storm client: {total / clients / 1e6:.3f} M")
        if args.keep:
            print(f"work directory: {work}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Where a connect-storm client's time goes: the gateway's CPU per storm, its Python profile
(py-spy) or its system calls (strace), over storms 2..K.

The same set-up as bench/storm_instructions.py (production configuration, a redis-server of
its own, bench/socket_stub.py as the chats service, bench/socket_fanout.js's storms) but the
gateway runs at full speed:

    .venv/bin/python bench/storm_profile.py [--clients 1000] [--storms 6] [--tool cpu|py-spy|strace|gc]

``cpu`` (the default) prints the gateway's CPU seconds per storm (user + system, from
/proc), for A/B runs of two checkouts (``--root``); ``py-spy`` records storms 2..K at 1,000
samples/s and prints the functions with the most samples, self and inclusive (``--keep``
keeps the collapsed stacks; py-spy samples without pausing the process, so some stacks lose
their outer frames and the inclusive shares of the outermost ones read low); ``strace`` counts the gateway's system calls over storms 2..K
and prints them per client; ``gc`` runs the gateway behind bench/gc_clock.py and prints the
share of its CPU that went to the cycle collector, its collections per generation and the
object types a generation-1 collection scans. The first storm is the warm-up in every mode.

Needs redis-server and node; py-spy (``pip install py-spy``) or strace for those modes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import storm_instructions as shared

HERE = os.path.dirname(os.path.abspath(__file__))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def attach(tool: str, pid: int, out: str) -> subprocess.Popen | None:
    if tool == "py-spy":
        spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        command = [spy, "record", "-p", str(pid), "--rate", "1000", "--format", "raw", "-o", out, "--nonblocking"]
    elif tool == "strace":
        command = ["strace", "-c", "-f", "-o", out, "-p", str(pid)]
    else:
        return None
    with open(out + ".stderr", "wb") as errors:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
    time.sleep(1.5)  # attached before the next storm starts
    if process.poll() is not None:
        with open(out + ".stderr", errors="replace") as f:
            raise RuntimeError(f"{tool} could not attach: {f.read().strip()}")
    return process


def frame_name(frame: str) -> str:
    """``function (path:line)`` without the line."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def print_profile(path: str, top: int) -> None:
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    with open(path, errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not count.isdigit() or not stack:
                continue
            samples = int(count)
            total += samples
            frames = [frame_name(frame) for frame in stack.split(";")]
            own[frames[-1]] += samples
            for name in set(frames):
                inclusive[name] += samples
    print(f"{total} samples")
    for title, counter in (("self", own), ("inclusive", inclusive)):
        print(f"-- {title}")
        for name, samples in counter.most_common(top):
            print(f"{samples / total * 100:6.1f} %  {name}")


def gc_totals(path: str, pid: int) -> dict:
    """bench/gc_clock.py's cumulative figures, once it wrote them again (it does every 0.1 s),
    with the gateway's CPU seconds read at the same moment (``cpu``)."""
    time.sleep(0.3)
    with open(path) as f:
        totals = json.load(f)
    totals["cpu"] = cpu_seconds(pid)
    return totals


def print_gc(before: dict, after: dict, storms: int, top: int) -> None:
    cpu = after["cpu"] - before["cpu"]
    seconds = [b - a for a, b in zip(before["seconds"], after["seconds"])]
    collections_ = [b - a for a, b in zip(before["collections"], after["collections"])]
    print(f"cycle collector: {sum(seconds) / storms:.3f} s per storm, {100 * sum(seconds) / cpu:.1f} % of the "
          f"gateway's CPU over the same time ({cpu / storms:.3f} s per storm, census included)")
    for generation, (count, spent) in enumerate(zip(collections_, seconds)):
        each = f", {1000 * spent / count:.2f} ms each" if count else ""
        print(f"  generation {generation}: {count / storms:.1f} collections per storm, {spent / storms:.3f} s{each}")
    censuses = after["censuses"] - before["censuses"]
    if censuses:
        types = collections.Counter(after["types"])
        types.subtract(before["types"])
        print(f"objects in generation 1 at a generation-1 collection (mean of {censuses} censuses):")
        for name, count in types.most_common(top):
            print(f"{count / censuses:10.0f}  {name}")


def print_syscalls(path: str, clients: int) -> None:
    print(f"system calls per storm client ({clients} clients):")
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                calls, errors = int(parts[3]), int(parts[4]) if len(parts) == 6 else 0
                print(f"{calls / clients:8.2f}  {parts[-1]}" + (f"  ({errors / clients:.2f} failed)" if errors else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000, help="clients per storm")
    parser.add_argument("--storms", type=int, default=6, help="storms; the first one is the warm-up")
    parser.add_argument("--tool", choices=("cpu", "py-spy", "strace", "gc"), default="cpu")
    parser.add_argument("--top", type=int, default=40, help="functions (py-spy) or object types (gc) to print")
    parser.add_argument("--root", default=os.path.dirname(HERE), help="the checkout whose gateway runs")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--client", choices=("socketio", "wire"), default="socketio",
                        help="the storm's client: socket.io-client or the lean bench/storm_wire.js")
    args = parser.parse_args()
    if args.storms < 2:
        parser.error("--storms must be at least 2 (the first one is the warm-up)")
    shared.preflight(*{"py-spy": (), "strace": ("strace",)}.get(args.tool, ()))
    work = tempfile.mkdtemp(prefix="gw-storm-profile.")
    out = os.path.join(work, "profile.txt")
    prefix = [sys.executable, os.path.join(HERE, "gc_clock.py"), out] if args.tool == "gc" else []
    tool, gc_before, gc_after = None, None, None
    try:
        with shared.storm_gateway(work, "info", prefix, root=args.root) as (gateway, port, log_path):
            disconnects, spent = 0, []
            for i in range(args.storms):
                before = cpu_seconds(gateway.pid)
                result = shared.storm(args, port, f"sp{os.getpid()}-{i}")
                if result.get("failures"):
                    raise RuntimeError(f"storm {i + 1}: {result['failures']} failures")
                disconnects = shared.wait_disconnects(log_path, disconnects + args.clients, 300)
                spent.append(cpu_seconds(gateway.pid) - before)
                print(f"storm {i + 1}/{args.storms}: {result['handshakesPerSecond']} handshakes/s, gateway CPU "
                      f"{spent[-1]:.2f} s, RSS {rss_mib(gateway.pid):.1f} MiB; load {os.getloadavg()[0]:.2f}",
                      flush=True)
                if i == 0:
                    tool = attach(args.tool, gateway.pid, out)
                    gc_before = gc_totals(out, gateway.pid) if args.tool == "gc" else None
            if gc_before is not None:
                gc_after = gc_totals(out, gateway.pid)
            if tool is not None:
                tool.send_signal(signal.SIGINT)
                tool.wait(60)
        later = spent[1:]
        print(f"gateway CPU per storm of {args.clients} (storms 2..{args.storms}): mean {sum(later) / len(later):.3f} s, "
              f"min {min(later):.2f}, max {max(later):.2f}" + (f" (under {args.tool})" if tool or prefix else ""))
        if args.tool == "py-spy":
            print_profile(out, args.top)
        elif args.tool == "strace":
            print_syscalls(out, args.clients * (args.storms - 1))
        elif gc_before is not None and gc_after is not None:
            print_gc(gc_before, gc_after, len(later), args.top)
        if args.keep:
            print(f"work directory: {work}")
    finally:
        if tool is not None and tool.poll() is None:
            tool.send_signal(signal.SIGINT)
            tool.wait(60)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

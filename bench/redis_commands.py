"""CPU per Redis command: the gateway's pipelined connection (cluster.pipelined) against the
pooled redis-py client it replaces on the hot path, on a redis-server of the bench's own.

    .venv/bin/python bench/redis_commands.py [--commands 5000] [--concurrency 50]

Prints the process's CPU µs per EVALSHA, one at a time and ``--concurrency`` at once, and
the ratio. CPU time includes the kernel's share of the socket calls.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import redis.asyncio as aioredis  # noqa: E402

from tornado_gateway.cluster.pipelined import PipelinedRedis  # noqa: E402
from tornado_gateway.cluster.redis_link import POOL_MAX_CONNECTIONS, POOL_WAIT, redis_options  # noqa: E402

BODY = "return redis.call('HGET', KEYS[1], ARGV[1])"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def measure(call, commands: int, concurrency: int) -> tuple[float, float]:
    for _ in range(500):
        await call()
    start = time.process_time()
    for _ in range(commands):
        await call()
    one = (time.process_time() - start) / commands * 1e6
    start = time.process_time()
    for _ in range(commands // concurrency):
        await asyncio.gather(*(call() for _ in range(concurrency)))
    many = (time.process_time() - start) / (commands // concurrency * concurrency) * 1e6
    return one, many


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commands", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    options = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port),
                               "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        await asyncio.sleep(0.3)
        pooled = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(
            url, max_connections=POOL_MAX_CONNECTIONS, timeout=POOL_WAIT, **redis_options(url)))
        sha = await pooled.script_load(BODY)
        pipelined = PipelinedRedis(url)
        results = {
            "redis-py pooled": await measure(lambda: pooled.evalsha(sha, 1, "k", "f"),
                                             options.commands, options.concurrency),
            "pipelined": await measure(lambda: pipelined.execute("EVALSHA", sha, 1, "k", "f"),
                                       options.commands, options.concurrency),
        }
        pipelined.close()
        await pooled.aclose()
    finally:
        server.terminate()
        server.wait()
    load = os.getloadavg()[0]
    print(f"CPU µs per EVALSHA ({options.commands} commands, load {load:.2f})")
    print(f"  {'client':18} {'one at a time':>14} {options.concurrency:>4} at once")
    for name, (one, many) in results.items():
        print(f"  {name:18} {one:14.1f} {many:12.1f}")
    (one_a, many_a), (one_b, many_b) = results.values()
    print(f"  ratio pooled/pipelined: {one_a / one_b:.2f}x one at a time, {many_a / many_b:.2f}x at once")


if __name__ == "__main__":
    asyncio.run(main())

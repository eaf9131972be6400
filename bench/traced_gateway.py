"""The gateway under tracemalloc, for bench/socket_bench.py's per-socket memory breakdown.

    python bench/traced_gateway.py SNAPSHOT_PREFIX     (settings from the environment, as usual)

Each SIGUSR1 writes a tracemalloc snapshot to SNAPSHOT_PREFIX.0, .1, ... (then
SNAPSHOT_PREFIX.N.done), so the benchmark can diff the heap before and after N
idle sockets. Tracing costs memory and time: RSS figures come from untraced runs.
"""

import os
import signal
import sys
import tracemalloc

tracemalloc.start(int(os.environ.get("BENCH_TRACE_FRAMES", "6")))
PREFIX = sys.argv[1]
_count = [0]


def _dump(signum, frame) -> None:
    path = f"{PREFIX}.{_count[0]}"
    _count[0] += 1
    tracemalloc.take_snapshot().dump(path)
    open(path + ".done", "w").close()


signal.signal(signal.SIGUSR1, _dump)
sys.argv = sys.argv[:1]
from tornado_gateway.server import main  # noqa: E402  (after tracing started)

main()

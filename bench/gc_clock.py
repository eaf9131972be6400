"""Run a Python module with a clock on its cycle collector: how many collections of each
generation it made and the CPU time they took, kept in a file while it runs.

    python bench/gc_clock.py OUT python -m MODULE [ARGS...]

(the shape of a command prefix, so that bench/storm_instructions.storm_gateway can run the
gateway behind it as it runs it behind valgrind). OUT is rewritten every 0.1 s with one JSON
object: ``{"collections": [gen0, gen1, gen2], "seconds": [gen0, gen1, gen2], "censuses": n,
"types": {type: objects}}``, cumulative; whoever reads it takes differences. ``types`` counts
the objects of each type in generation 1 at the start of every fifth generation-1 collection
(most of what such a collection scans: generation 0 is scanned with it but not counted; the
census's own time is outside ``seconds`` but in the process's CPU). Used by
``bench/storm_profile.py --tool gc``.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import runpy
import sys
import threading
import time


class Clock:
    """Collections and their CPU seconds per generation, from ``gc.callbacks``."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.censuses = 0
        self.types: collections.Counter = collections.Counter()
        self.lock = threading.Lock()  # the writer thread copies what the callback adds to
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            if info["generation"] == 1 and self.collections[1] % 5 == 0:
                self.census()
            self._started = time.thread_time()  # collections run in the thread that allocates
            return
        spent = time.thread_time() - self._started
        generation = info["generation"]
        with self.lock:
            self.collections[generation] += 1
            self.seconds[generation] += spent

    def census(self) -> None:
        found: collections.Counter = collections.Counter()
        for obj in gc.get_objects(1):
            kind = type(obj)
            found[f"{kind.__module__}.{kind.__qualname__}"] += 1
        with self.lock:
            self.censuses += 1
            self.types.update(found)

    def write(self, path: str) -> None:
        with self.lock:
            snapshot = {"collections": list(self.collections), "seconds": list(self.seconds),
                        "censuses": self.censuses, "types": dict(self.types)}
        temporary = path + ".tmp"
        with open(temporary, "w") as f:
            json.dump(snapshot, f)
        os.replace(temporary, path)


def keep_writing(clock: Clock, path: str) -> None:
    while True:
        clock.write(path)
        time.sleep(0.1)


def main() -> None:
    if len(sys.argv) < 5 or sys.argv[3] != "-m":
        raise SystemExit(f"usage: {sys.argv[0]} OUT PYTHON -m MODULE [ARGS...] (PYTHON: only "
                         "the prefix's shape; the module runs in this interpreter)")
    out, python, _, module, *rest = sys.argv[1:]
    clock = Clock()
    gc.callbacks.append(clock)
    threading.Thread(target=keep_writing, args=(clock, out), daemon=True).start()
    sys.argv = [python, *rest]
    sys.path[0] = os.getcwd()  # as ``python -m`` from the working directory
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

"""Thread scaling of kldiv on W1 (batchmean, float32, 1000 x 10000) against the read floor:
medians of interleaved repeats with 1 and N threads, in one process. ``--cols 1000`` gives
W3's shape (1000 x 1000, in cache); ``--quick`` divides the columns by 100, for a smoke run.

    PYTHONPATH=python python benches/scaling.py [--threads 2] [--repeats 15] [--cols 10000]

The read floor is bench.py's (``kldiv._bench.floor_fn``): ``kldiv._kldiv.read_sum(x, t)``, a
read-only kernel of kldiv's own that sums both inputs with kldiv's threads and traversal, here
with 1 and N threads like kldiv. It shows how far more threads can help at all: once kldiv
with N threads runs at the N-thread floor, its speed-up over one thread is capped by memory,
not by the kernel, at (kldiv's 1-thread time) / (the N-thread floor). docs/benchmarks.md wants
kldiv with N threads within 1.3x of the N-thread floor.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see bench.py

import kldiv  # noqa: E402
from kldiv._bench import SETTLE_MS, WORKLOADS, floor_fn, kldiv_fn, make_inputs, spin  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--cols", type=int, default=10_000, help="1000 x cols float32 (10000: W1)")
    ap.add_argument("--quick", action="store_true", help="cols / 100, for a smoke run")
    a = ap.parse_args()
    w = dataclasses.replace(WORKLOADS["W1"], cols=a.cols)
    x, t = make_inputs(w, a.quick)
    loss, floor = kldiv_fn(kldiv, w, x, t, []), floor_fn(x, t)
    assert loss is not None

    def with_threads(fn: Callable[[], Any]) -> Callable[[int], Any]:
        return lambda n: (kldiv.set_num_threads(n), fn())

    fns = {"kldiv": with_threads(loss), "floor": with_threads(floor)}
    threads = sorted({1, a.threads})
    # As bench.py does for W3: several calls per timed repeat for small arrays (10 for 1e6
    # elements). Unlike bench.py, a warm call comes between the 20 ms gap and the timed calls,
    # so that what is timed is the threads' throughput, not also the wake-up of an idle vCPU.
    calls = max(1, 10_000_000 // x.size)
    times: dict[tuple[str, int], list[float]] = {(f, n): [] for f in fns for n in threads}
    for _ in range(a.repeats):
        for name, n in times:
            spin(SETTLE_MS)  # the same gap before each timed block as in bench.py
            fns[name](n)  # sets the threads, and wakes them: the timed calls follow at once
            t0 = time.perf_counter()
            for _ in range(calls):
                fns[name](n)
            times[name, n].append((time.perf_counter() - t0) / calls)
    med = {k: statistics.median(v) / x.size * 1e9 for k, v in times.items()}
    n = a.threads
    for name in fns:
        print(
            f"{x.shape[0]} x {x.shape[1]} {name}, medians of {a.repeats}: "
            + ", ".join(f"{k} thread(s) {med[name, k]:.3f} ns/element" for k in threads)
        )
    print(f"speed-up with {n} threads: {med['kldiv', 1] / med['kldiv', n]:.2f}x")
    print(
        f"at most {med['kldiv', 1] / med['floor', n]:.2f}x with {n} threads "
        f"(kldiv's 1-thread time over the {n}-thread floor); the floor itself "
        f"speeds up {med['floor', 1] / med['floor', n]:.2f}x"
    )
    print(
        f"kldiv with {n} threads takes {med['kldiv', n] / med['floor', n]:.2f}x the {n}-thread "
        "floor (docs/benchmarks.md: within 1.3x)"
    )


if __name__ == "__main__":
    main()

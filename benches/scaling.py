"""Thread scaling of kldiv on W1 (batchmean, float32, 1000 x 10000): medians of interleaved
repeats with 1 and N threads, in one process; with PyTorch installed, the read floor
(``x.sum() + t.sum()``, as in bench.py) with 1 and N threads too, interleaved with kldiv.
``--cols 1000`` gives W3's shape (1000 x 1000, in cache).

    python benches/scaling.py [--threads 2] [--repeats 15] [--cols 10000]

The floor shows how far more threads can help at all: once kldiv with N threads runs at the
N-thread floor, its speed-up over one thread is capped by memory, not by the kernel, at
(kldiv's 1-thread time) / (the N-thread floor).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see bench.py

import numpy as np  # noqa: E402

import kldiv  # noqa: E402
from kldiv._bench import _spin  # noqa: E402


def _torch() -> Any | None:
    try:
        import torch
    except Exception:  # not installed, or broken: no floor
        return None
    return torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--cols", type=int, default=10_000, help="1000 x cols float32 (10000: W1)")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    z = rng.standard_normal((1000, a.cols), dtype=np.float32)
    x = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    z = rng.standard_normal((1000, a.cols), dtype=np.float32)
    t = np.exp(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))
    torch = _torch()
    fns: dict[str, Callable[[int], Any]] = {
        "kldiv": lambda n: (kldiv.set_num_threads(n), kldiv.kl_div(x, t, reduction="batchmean")),
    }
    if torch is not None:
        xt, tt = torch.from_numpy(x), torch.from_numpy(t)
        fns["floor"] = lambda n: (torch.set_num_threads(n), xt.sum() + tt.sum())
    threads = [1, a.threads]
    # As bench.py does for W3: several calls per timed repeat for small arrays (10 for 1e6
    # elements). Unlike bench.py, a warm call comes between the 20 ms gap and the timed calls,
    # so that what is timed is the threads' throughput, not also the wake-up of an idle vCPU.
    calls = max(1, 10_000_000 // x.size)
    times: dict[tuple[str, int], list[float]] = {(f, n): [] for f in fns for n in threads}
    for _ in range(a.repeats):
        for name, n in times:
            _spin(20.0)  # PyTorch's OpenMP threads spin after a call: let them sleep (bench.py)
            fns[name](n)  # sets the threads, and wakes them: the timed calls follow at once
            t0 = time.perf_counter()
            for _ in range(calls):
                fns[name](n)
            times[name, n].append((time.perf_counter() - t0) / calls)
    med = {k: statistics.median(v) / x.size * 1e9 for k, v in times.items()}
    for name in fns:
        print(
            f"1000 x {a.cols} {name}, medians of {a.repeats}: "
            + ", ".join(f"{n} thread(s) {med[name, n]:.3f} ns/element" for n in threads)
        )
    print(f"speed-up with {a.threads} threads: {med['kldiv', 1] / med['kldiv', a.threads]:.2f}x")
    if torch is not None:
        print(
            f"at most {med['kldiv', 1] / med['floor', a.threads]:.2f}x with {a.threads} threads "
            f"(kldiv's 1-thread time over the {a.threads}-thread floor); the floor itself "
            f"speeds up {med['floor', 1] / med['floor', a.threads]:.2f}x"
        )


if __name__ == "__main__":
    main()

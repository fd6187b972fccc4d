"""Thread scaling of kldiv on W1 (batchmean, float32, 1000 x 10000): medians of interleaved
repeats with 1 and N threads, in one process.

    python benches/scaling.py [--threads 2] [--repeats 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see bench.py

import numpy as np  # noqa: E402

import kldiv  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    z = rng.standard_normal((1000, 10_000), dtype=np.float32)
    x = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    z = rng.standard_normal((1000, 10_000), dtype=np.float32)
    t = np.exp(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))
    times: dict[int, list[float]] = {1: [], a.threads: []}
    for _ in range(a.repeats):
        for n in times:
            kldiv.set_num_threads(n)
            kldiv.kl_div(x, t, reduction="batchmean")  # warm
            t0 = time.perf_counter()
            kldiv.kl_div(x, t, reduction="batchmean")
            times[n].append(time.perf_counter() - t0)
    med = {n: statistics.median(v) / x.size * 1e9 for n, v in times.items()}
    print(
        f"W1 kldiv, medians of {a.repeats}: "
        + ", ".join(f"{n} thread(s) {v:.3f} ns/element" for n, v in med.items())
    )
    print(f"speed-up with {a.threads} threads: {med[1] / med[a.threads]:.2f}x")


if __name__ == "__main__":
    main()

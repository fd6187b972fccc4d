"""No leaks: 100,000 calls of each function leave RSS where it was; no copies of contiguous
float inputs (NumPy's allocations traced on a large call)."""

from __future__ import annotations

import os
import tracemalloc
import warnings

import numpy as np
import pytest

import kldiv

CALLS = 100_000


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


X = np.log(np.full((4, 25), 0.04, dtype=np.float32))
T = np.full((4, 25), 0.04, dtype=np.float32)
OUT = np.empty((4, 25), dtype=np.float32)
FUNCTIONS = {
    "kl_div batchmean": lambda: kldiv.kl_div(X, T, "batchmean"),
    "kl_div none out=": lambda: kldiv.kl_div(X, T, "none", out=OUT),
    "kl_div mean (warns)": lambda: kldiv.kl_div(X, T),
    "KLDivLoss": lambda: kldiv.KLDivLoss("sum", log_target=True)(X, T),
    "kl_div_backward": lambda: kldiv.kl_div_backward(1.0, X, T, "sum"),
    "kl_div_and_grad": lambda: kldiv.kl_div_and_grad(X, T, "batchmean"),
    "bad dtype (raises)": lambda: kldiv.kl_div(X.astype(np.int32), T),
    "bad reduction (raises)": lambda: kldiv.kl_div(X, T, "avg"),
    "thread count": lambda: kldiv.get_num_threads(),
}


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
@pytest.mark.parametrize("name", FUNCTIONS)
def test_100k_calls_do_not_grow_rss(name):
    f = FUNCTIONS[name]

    def call() -> None:
        try:
            f()
        except (TypeError, ValueError):
            pass

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(5_000):  # warm: caches, free lists
            call()
        before = rss_bytes()
        for _ in range(CALLS):
            call()
        after = rss_bytes()
    print(f"{name}: RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB over {CALLS} calls")
    assert after - before < 2 << 20, (before, after)


def test_no_copies_of_contiguous_inputs():
    n = 1 << 24
    x = np.full(n, -2.0, dtype=np.float32)
    t = np.full(n, 0.5, dtype=np.float32)
    out = np.empty(n, dtype=np.float32)
    tracemalloc.start()
    try:
        for f in (
            lambda: kldiv.kl_div(x, t, "sum"),
            lambda: kldiv.kl_div(x, t, "none", out=out),
            lambda: kldiv.kl_div_and_grad(x, t, "sum", out=out),
        ):
            tracemalloc.reset_peak()
            f()
            assert tracemalloc.get_traced_memory()[1] < 1 << 20  # nothing input-sized
        tracemalloc.reset_peak()
        kldiv.kl_div_backward(1.0, x, t, "sum")  # allocates its two gradients, nothing else
        assert tracemalloc.get_traced_memory()[1] < 2 * x.nbytes + (1 << 20)
    finally:
        tracemalloc.stop()

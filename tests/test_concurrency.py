"""Many Python threads at once, thread-count changes under load, thread pools and processes
(fork and spawn): every result right, no deadlock."""

from __future__ import annotations

import concurrent.futures
import multiprocessing as mp
import threading
import time
import warnings

import numpy as np
import pytest

import kldiv

SECONDS = 2.0
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # catch_warnings is per process


def case(seed: int):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 200)), int(rng.integers(1, 1500)))
    dtype = (np.float32, np.float64)[seed % 2]
    z = rng.standard_normal(shape)
    x = (z - np.log(np.exp(z).sum(axis=1, keepdims=True))).astype(dtype)
    t = np.exp(rng.standard_normal(shape)).astype(dtype)
    if seed % 3 == 0:
        x = np.asfortranarray(x)
    return x, t


def results(x, t) -> list[bytes]:
    """Every public function's output, as bytes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = [np.asarray(kldiv.kl_div(x, t, r)).tobytes() for r in kldiv.REDUCTIONS]
        out += [np.asarray(kldiv.KLDivLoss("batchmean", log_target=True)(x, t)).tobytes()]
        loss, g = kldiv.kl_div_and_grad(x, t, "batchmean")
        out += [np.asarray(loss).tobytes(), g.tobytes()]
        gx, gt = kldiv.kl_div_backward(0.5, x, t, "sum")
    return out + [gx.tobytes(), gt.tobytes()]


def check_worker(seed: int) -> bool:
    x, t = case(seed)
    return results(x, t) == EXPECTED[seed]


SEEDS = range(16)
EXPECTED = {s: results(*case(s)) for s in SEEDS}


def test_16_threads_call_everything_at_once_while_thread_counts_change(threads):
    errors: list[str] = []
    calls = [0] * len(SEEDS)
    stop = time.monotonic() + SECONDS

    def worker(i: int) -> None:
        x, t = case(i)
        while time.monotonic() < stop:
            if i == 0:
                kldiv.set_num_threads(1 + calls[0] % 3)  # resize the pool under load
            if results(x, t) != EXPECTED[i]:
                errors.append(f"thread {i} got a different result")
                return
            calls[i] += 1

    ts = [threading.Thread(target=worker, args=(i,)) for i in SEEDS]
    for th in ts:
        th.start()
    for th in ts:
        th.join(timeout=60)
        assert not th.is_alive(), "deadlock"
    assert not errors, errors
    assert sum(calls) >= len(SEEDS)
    print(f"{sum(calls)} rounds of {len(EXPECTED[0])} calls in 16 threads")


def test_thread_pool_executor():
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as ex:
        assert all(ex.map(check_worker, list(SEEDS) * 4, timeout=120))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_processes(method):
    big = np.full(300_000, -2.0, np.float32), np.full(300_000, 0.5, np.float32)
    kldiv.kl_div(*big, "sum")  # the parent's pool exists and has run: a fork inherits it
    ctx = mp.get_context(method)
    with ctx.Pool(2) as pool:
        assert all(pool.map_async(check_worker, list(SEEDS)).get(timeout=120))
        got = pool.apply_async(kldiv.kl_div, (*big, "sum")).get(timeout=60)
    assert got == kldiv.kl_div(*big, "sum")

"""Large results' memory is reused once NumPy frees it (src/py.rs, `pool`): never while an
array still uses it, always overwritten with the new result, and bounded."""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest

import kldiv
from helpers import assert_terms_close, reference_scale, reference_terms

POOL_MAX_BYTES = 256 << 20


def pair(shape: tuple[int, ...], dtype: type, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape)
    x = z - np.log(np.exp(z).sum(-1, keepdims=True))
    w = np.exp(rng.standard_normal(shape))
    return x.astype(dtype), (w / w.sum(-1, keepdims=True)).astype(dtype)


def check(got: np.ndarray, x: np.ndarray, t: np.ndarray) -> None:
    assert_terms_close(got, reference_terms(x, t, False), reference_scale(x, t, False))


def address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


REUSE_SCRIPT = """
import resource, sys
import numpy as np
import kldiv
sys.path.insert(0, sys.argv[2])
from test_pool import check, pair

dtype = np.dtype(sys.argv[1])
shape = (2048, 8192 if dtype == np.float32 else 4096)  # 64 MiB
x1, t1 = pair(shape, dtype, 1)
x2, t2 = pair(shape, dtype, 2)

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

f0 = faults()
first = kldiv.kl_div(x1, t1, "none")
f1 = faults()
check(first, x1, t1)
del first
f2 = faults()
second = kldiv.kl_div(x2, t2, "none")
f3 = faults()
check(second, x2, t2)
assert second.flags.c_contiguous and second.flags.writeable and second.flags.aligned
assert second.dtype == dtype and second.shape == shape
print(f1 - f0, f3 - f2)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="counts page faults with getrusage")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_freed_result_is_reused_and_overwritten(dtype):
    # In a fresh process, so that the pool holds nothing from other tests: the first result
    # takes new memory (a page fault per page written), the second reuses it (none).
    here = os.path.dirname(os.path.abspath(__file__))
    run = subprocess.run(
        [sys.executable, "-c", REUSE_SCRIPT, dtype, here],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    first, second = map(int, run.stdout.split())
    print(f"{dtype}: page faults writing 64 MiB: {first} new, {second} reused")
    assert first >= 32  # 16,384 pages of 4 KiB (32 of 2 MiB with transparent huge pages)
    assert second <= first // 16


def test_live_results_never_share_memory():
    x, t = pair((256, 2048), np.float32, 3)
    results = [kldiv.kl_div(x, t, "none") for _ in range(3)]
    _, grad = kldiv.kl_div_and_grad(x, t, "batchmean")
    results.append(grad)
    spans = sorted((address(a), address(a) + a.nbytes) for a in results)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start
    for a in results[:3]:
        np.testing.assert_array_equal(a, results[0])


def test_views_keep_the_memory_alive():
    x, t = pair((256, 2048), np.float32, 4)
    want = kldiv.kl_div(x, t, "none").copy()
    view = kldiv.kl_div(x, t, "none")[::2]  # the array itself is gone, its view is not
    gc.collect()
    other = kldiv.kl_div(*pair((256, 2048), np.float32, 5), "none")
    assert not np.shares_memory(view, other)
    np.testing.assert_array_equal(view, want[::2])


def test_results_pickle_and_convert_like_any_array():
    x, t = pair((256, 2048), np.float32, 6)
    a = kldiv.kl_div(x, t, "none")
    b = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(a, b)
    a[0, 0] = 1.0  # writeable
    assert a[0, 0] == 1.0
    assert np.asarray(a, dtype=np.float64).dtype == np.float64


def test_small_results_are_plain_numpy_arrays():
    x, t = pair((8, 16), np.float32, 7)
    a = kldiv.kl_div(x, t, "none")
    assert a.base is None and a.flags.owndata


def test_threads_get_their_own_memory():
    inputs = [pair((128, 4096), np.float32, 10 + i) for i in range(4)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            x, t = inputs[i]
            for _ in range(15):
                got = kldiv.kl_div(x, t, "none")
                check(got, x, t)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[0]


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_the_pool_keeps_a_bounded_amount():
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    x, t = pair((1024, 4096), np.float32, 8)  # 16 MiB per result
    before = rss()
    live = [kldiv.kl_div(x, t, "none") for _ in range(24)]  # 384 MiB written
    assert rss() - before > 300 << 20
    del live
    gc.collect()
    kept = rss() - before
    print(f"kept after freeing 384 MiB of results: {kept / 2**20:.0f} MiB")
    assert kept <= POOL_MAX_BYTES + (16 << 20)

"""The same bits whatever the thread count and the memory layout."""

import warnings

import numpy as np
import pytest

import kldiv
from helpers import REDUCTIONS, dist_pair

ROWS, COLS = 300, 1001  # 300_300 elements: many blocks, parallel


def data(dtype, log_target=False):
    return dist_pair(np.random.default_rng(7), (ROWS, COLS), dtype, log_target)


def bits(v):
    return np.asarray(v).tobytes()


def call(x, t, reduction, log_target=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return kldiv.kl_div(x, t, reduction=reduction, log_target=log_target)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("log_target", [False, True])
def test_thread_counts_give_the_same_bits(dtype, log_target, threads):
    x, t = data(dtype, log_target)
    results = {}
    for n in (1, 2, 3, 4):
        kldiv.set_num_threads(n)
        assert kldiv.get_num_threads() == n
        results[n] = [bits(call(x, t, r, log_target)) for r in REDUCTIONS]
    assert results[1] == results[2] == results[3] == results[4]


def layouts(a):
    """The same logical array in C, Fortran, strided and negative-stride memory."""
    yield "C", np.ascontiguousarray(a)
    yield "F", np.asfortranarray(a)
    big = np.zeros((a.shape[0] * 2, a.shape[1] * 3), a.dtype)
    big[::2, ::3] = a
    yield "strided", big[::2, ::3]
    rev = np.ascontiguousarray(a[::-1, ::-1])
    yield "negative", rev[::-1, ::-1]
    yield "transposed", np.ascontiguousarray(a.T).T


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_layouts_give_the_same_bits(dtype, reduction, threads):
    kldiv.set_num_threads(2)
    x, t = data(dtype)
    want = bits(call(x, t, reduction))
    for (nx, xl), (nt, tl) in zip(layouts(x), layouts(t)):
        assert bits(call(xl, tl, reduction)) == want, (nx, nt)
    # mixed layouts too
    xf = np.asfortranarray(x)
    assert bits(call(xf, t, reduction)) == want


def test_broadcast_views_give_the_same_bits_as_copies(threads):
    kldiv.set_num_threads(2)
    x, t = data(np.float32)
    row = t[:1]
    materialised = np.ascontiguousarray(np.broadcast_to(row, x.shape))
    for reduction in REDUCTIONS:
        assert bits(call(x, row, reduction)) == bits(call(x, materialised, reduction))
    # the stride-0 view numpy makes, and a scalar target
    assert bits(call(x, np.broadcast_to(row, x.shape), "sum")) == bits(call(x, materialised, "sum"))
    scalar = np.float32(0.001)
    full = np.full(x.shape, scalar)
    assert bits(call(x, scalar, "sum")) == bits(call(x, full, "sum"))


def test_repeated_calls_give_the_same_bits(threads):
    kldiv.set_num_threads(2)
    x, t = data(np.float32)
    first = bits(call(x, t, "batchmean"))
    assert all(bits(call(x, t, "batchmean")) == first for _ in range(10))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("shape", [(37, 9001), (300, 256), (2, 3, 4100), (129, 17, 16)])
def test_transposed_reads_give_the_same_bits(dtype, log_target, shape, threads):
    # Fortran order and .T views take the column-by-column path; rows longer than a block,
    # rows not a multiple of the lane count and partial row groups must not change a bit.
    rng = np.random.default_rng(11)
    x = (-10 * rng.random(shape)).astype(dtype)
    t = rng.random(shape).astype(dtype)
    t.ravel()[::97] = 0.0
    if log_target:
        t = np.log(t + 0.01).astype(dtype)
    for n in (1, 2):
        kldiv.set_num_threads(n)
        for reduction in ("sum", "batchmean"):
            want = bits(call(x, t, reduction, log_target))
            got = bits(call(np.asfortranarray(x), np.asfortranarray(t), reduction, log_target))
            assert got == want, (n, reduction)
            xt, tt = np.ascontiguousarray(x.T).T, np.ascontiguousarray(t.T).T
            assert bits(call(xt, tt, reduction, log_target)) == want

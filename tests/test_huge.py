"""Huge inputs: logical arrays past 2^31 and 2^32 elements (stride-0 broadcasting, no memory)
with exact answers, and a genuinely large real array summed without copies."""

import math
import tracemalloc

import numpy as np
import pytest

import kldiv


def term32(x: float, t: float) -> float:
    """One float32 term as the kernels compute it (ln in float32, the rest in float64)."""
    ln = float(np.log(np.float32(t)))  # NumPy's float32 log is correctly rounded here
    return t * ln - t * x


@pytest.mark.parametrize("shape", [(1 << 15, (1 << 16) + 3), (1 << 15, (1 << 17) + 5)])
def test_logical_arrays_past_2_to_31_and_2_to_32(shape):
    n = math.prod(shape)
    assert n > 1 << 31
    x = np.broadcast_to(np.float32(-2.0), shape)
    t = np.broadcast_to(np.float32(0.5), shape)
    got = kldiv.kl_div(x, t, "sum")
    want = n * term32(-2.0, 0.5)
    assert abs(float(got) - want) <= 1e-6 * want  # float32 result: within its rounding
    s = kldiv.kl_div(x, t, "batchmean")
    assert abs(float(s) - want / shape[0]) <= 1e-6 * want / shape[0]


def test_logical_array_past_2_to_32_in_float64_is_exact_to_1e_14():
    shape = (1 << 15, (1 << 17) + 1)  # 2^32 + 2^15 elements
    x = np.broadcast_to(-2.0, shape)
    t = np.broadcast_to(0.5, shape)
    want = math.prod(shape) * (0.5 * math.log(0.5) + 1.0)
    assert abs(float(kldiv.kl_div(x, t, "sum")) - want) <= 1e-14 * want


def test_a_2_gb_array_is_read_in_place():
    n = (1 << 29) - 5  # 2 GiB of float32 per array
    x = np.full(n, -2.0, dtype=np.float32)
    t = np.full(n, 0.5, dtype=np.float32)
    tracemalloc.start()
    try:
        got = kldiv.kl_div(x, t, "sum")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert abs(float(got) - n * term32(-2.0, 0.5)) <= 1e-6 * n
    # NumPy's allocations are traced: nothing array-sized was made (no copy of the inputs).
    assert peak < 1 << 20, peak

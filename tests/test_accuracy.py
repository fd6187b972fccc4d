"""float32 sums are within 1 ulp of the exact sum of the float64 terms."""

import math

import numpy as np
import pytest

import kldiv
from helpers import dist_pair, reference_terms


def ulps(got, exact: float) -> float:
    exact32 = np.float32(exact)
    return abs(float(got) - float(exact32)) / float(np.spacing(np.abs(exact32)))


@pytest.mark.parametrize("seed", [0, 1])
def test_float32_sum_of_1e7_within_1_ulp(seed):
    rng = np.random.default_rng(seed)
    x, t = dist_pair(rng, (1000, 10_000), np.float32)
    terms = reference_terms(x, t, False)  # float64 terms of the float32 inputs
    exact = math.fsum(terms.ravel())
    got = kldiv.kl_div(x, t, "sum")
    assert got.dtype == np.float32
    assert ulps(got, exact) <= 1.0
    assert ulps(kldiv.kl_div(x, t, "batchmean"), exact / 1000) <= 1.0


def test_float64_sum_relative_error():
    rng = np.random.default_rng(3)
    x, t = dist_pair(rng, (1000, 1000), np.float64)
    exact = math.fsum(reference_terms(x, t, False).ravel())
    got = float(kldiv.kl_div(x, t, "sum"))
    assert abs(got - exact) <= 1e-14 * abs(exact)


def test_cancellation_is_handled_by_float64_accumulation():
    # Terms of +1e8 and -1e8 with small ones between: a float32 accumulator loses them all.
    x = np.array([-1e8, 1e8] * 500 + [-1.0] * 1000, dtype=np.float32)
    t = np.ones_like(x)
    exact = math.fsum(reference_terms(x, t, False))
    assert kldiv.kl_div(x, t, "sum") == np.float32(exact)

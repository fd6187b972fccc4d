"""kldiv against the float64 NumPy reference: shapes, dtypes, reductions, return types."""

import math
import warnings

import numpy as np
import pytest

import kldiv
from helpers import REDUCTIONS, dist, reference, tolerance


def call(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return kldiv.kl_div(*args, **kwargs)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), (100_003,), (300, 700)])
def test_matches_reference(reduction, log_target, dtype, shape):
    rng = np.random.default_rng(0)
    x = dist(rng, shape, log=True, dtype=dtype)
    t = dist(rng, shape, log=log_target, dtype=dtype)
    got = call(x, t, reduction=reduction, log_target=log_target)
    want = reference(x, t, reduction, log_target)
    assert np.asarray(got).dtype == dtype
    np.testing.assert_allclose(got, want, **tolerance(dtype))


def test_return_types():
    x = np.log(np.full((2, 3), 1 / 3, dtype=np.float32))
    t = np.full((2, 3), 1 / 3, dtype=np.float32)
    assert type(kldiv.kl_div(x, t, "sum")) is np.float32
    assert type(kldiv.kl_div(x, t.astype(np.float64), "batchmean")) is np.float64
    out = kldiv.kl_div(x, t, "none")
    assert isinstance(out, np.ndarray) and out.shape == (2, 3) and out.dtype == np.float32
    assert type(kldiv.kl_div(x.astype(np.float16), t.astype(np.float16), "sum")) is np.float16


def test_lists_and_scalars():
    assert kldiv.kl_div([-1.0, -2.0], [0.5, 0.5], "sum") == pytest.approx(
        reference([-1.0, -2.0], [0.5, 0.5], "sum", False)
    )
    assert kldiv.kl_div(-0.5, 0.25, "batchmean") == pytest.approx(0.25 * (math.log(0.25) + 0.5))


def test_float16_is_computed_in_float32_and_rounded_once():
    rng = np.random.default_rng(1)
    x = dist(rng, (4, 50), log=True, dtype=np.float16)
    t = dist(rng, (4, 50), dtype=np.float16)
    got = kldiv.kl_div(x, t, "none")
    assert got.dtype == np.float16
    want32 = kldiv.kl_div(x.astype(np.float32), t.astype(np.float32), "none")
    np.testing.assert_array_equal(got, want32.astype(np.float16))
    s = kldiv.kl_div(x, t, "sum")
    assert s == np.float16(reference(x, t, "sum", False))


def test_mixed_dtypes_promote():
    rng = np.random.default_rng(2)
    x = dist(rng, (3, 4), log=True, dtype=np.float32)
    t = dist(rng, (3, 4), dtype=np.float64)
    got = kldiv.kl_div(x, t, "none")
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, reference(x, t, "none", False), rtol=1e-14)


@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0), (2, 0, 4)])
def test_empty(shape):
    x = np.zeros(shape, np.float32)
    assert call(x, x, "none").shape == shape
    assert call(x, x, "sum") == 0.0
    assert math.isnan(call(x, x, "mean"))
    batchmean = call(x, x, "batchmean")
    assert math.isnan(batchmean) if shape[0] == 0 else batchmean == 0.0


def test_zero_dim():
    x, t = np.float64(-0.7), np.float64(0.4)
    want = 0.4 * (math.log(0.4) + 0.7)
    for reduction in ("sum", "mean", "batchmean"):
        assert call(x, t, reduction) == pytest.approx(want, rel=1e-15)
    assert call(x, t, "none").shape == ()


def test_batchmean_divides_by_input_first_dim():
    rng = np.random.default_rng(3)
    x = dist(rng, (5,), log=True)  # input shape (5,), broadcast to (4, 5)
    t = dist(rng, (4, 5))
    assert kldiv.kl_div(x, t, "batchmean") == pytest.approx(
        reference(x, t, "sum", False) / 5, rel=1e-14
    )


@pytest.mark.parametrize(("xs", "ts"), [((4, 1, 5), (3, 5)), ((4, 5), (1, 5)), ((5,), (4, 5))])
def test_broadcasting_both_ways(xs, ts):
    rng = np.random.default_rng(4)
    x, t = dist(rng, xs, log=True), dist(rng, ts)
    got = kldiv.kl_div(x, t, "none")
    assert got.shape == np.broadcast_shapes(xs, ts)
    np.testing.assert_allclose(got, reference(x, t, "none", False), rtol=1e-14)
    np.testing.assert_allclose(kldiv.kl_div(x, t, "sum"), reference(x, t, "sum", False), rtol=1e-14)


def test_mean_warns_and_points_to_batchmean():
    x = np.log(np.full((2, 2), 0.5))
    with pytest.warns(UserWarning, match="batchmean"):
        kldiv.kl_div(x, np.exp(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kldiv.kl_div(x, np.exp(x), "batchmean")


def test_kldivloss_object():
    loss = kldiv.KLDivLoss(reduction="sum", log_target=True)
    assert repr(loss) == "KLDivLoss(reduction='sum', log_target=True)"
    x = np.log(np.array([[0.2, 0.8]]))
    t = np.log(np.array([[0.5, 0.5]]))
    assert loss(x, t) == kldiv.kl_div(x, t, "sum", log_target=True)
    with pytest.warns(UserWarning):
        kldiv.KLDivLoss()(x, np.exp(t))


def test_no_copy_of_strided_inputs_is_needed():
    # A huge broadcast (stride-0) view costs no memory: a copy of it could not be made.
    x = np.broadcast_to(np.float32(-2.0), (1 << 20, 1 << 20))
    t = np.broadcast_to(np.float32(0.0), (1 << 20, 1 << 20))
    assert kldiv.kl_div(x[:3], t[:3], "sum") == 0.0
    assert kldiv.kl_div(x[:1, :1000], np.float32(0.5), "sum") == pytest.approx(
        1000 * 0.5 * (math.log(0.5) + 2.0), rel=1e-6
    )

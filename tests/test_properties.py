"""Hypothesis: kldiv equals the float64 NumPy reference over random shapes, broadcasting,
strides (negative too), dtypes and special values."""

import math
import warnings

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import kldiv
from helpers import assert_terms_close, reference_scale, reference_terms

SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, -1.0, 1e-30, 1e30]


@st.composite
def operand(draw, shape, dtype):
    """An array of logical ``shape``, possibly a strided (negative-step) view of a larger one."""
    steps = [draw(st.sampled_from([1, 1, 2, -1, -2])) for _ in shape]
    base_shape = tuple(max(1, n * abs(s)) for n, s in zip(shape, steps))
    elements = st.one_of(
        st.floats(-20, 1, width=32),
        st.floats(0, 1, width=32),
        st.sampled_from(SPECIAL),
    )
    base = draw(hnp.arrays(dtype, base_shape, elements=elements))
    if base.ndim >= 2 and draw(st.booleans()):
        base = np.asfortranarray(base)
    view = base[tuple(slice(None, None, s) for s in steps)]
    view = view[tuple(slice(0, n) for n in shape)]
    assert view.shape == tuple(shape)
    return view


@st.composite
def pairs(draw):
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))

    # broadcast: each operand may drop leading axes or have length-1 axes
    def own(shape):
        drop = draw(st.integers(0, len(shape)))
        return tuple(1 if draw(st.integers(0, 3)) == 0 else n for n in shape[drop:])

    xs, ts = own(shape), own(shape)
    dx = draw(st.sampled_from([np.float32, np.float64]))
    dt = draw(st.sampled_from([np.float32, np.float64]))
    return draw(operand(xs, dx)), draw(operand(ts, dt))


def call(x, t, reduction, log_target):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return kldiv.kl_div(x, t, reduction=reduction, log_target=log_target)


@given(pairs(), st.booleans())
def test_none_matches_the_reference(pair, log_target):
    x, t = pair
    got = call(x, t, "none", log_target)
    dtype = np.result_type(x, t)
    want = reference_terms(x, t, log_target)
    assert got.dtype == dtype and got.shape == want.shape
    assert_terms_close(got, want, np.broadcast_to(reference_scale(x, t, log_target), want.shape))


@given(pairs(), st.booleans(), st.sampled_from(["sum", "mean", "batchmean"]))
def test_reductions_match_the_reference(pair, log_target, reduction):
    x, t = pair
    got = call(x, t, reduction, log_target)
    dtype = np.result_type(x, t)
    terms = reference_terms(x, t, log_target)
    assert isinstance(got, np.generic) and got.dtype == dtype
    n = {"sum": 1, "mean": terms.size, "batchmean": x.shape[0] if x.ndim else 1}[reduction]
    if not np.all(np.isfinite(terms)):
        # NaN/inf propagate the way a float64 sum propagates them
        with np.errstate(all="ignore"):
            s = terms.sum()
        assert np.isnan(got) == np.isnan(s)
        if not np.isnan(s):
            assert got == s
        return
    exact = math.fsum(terms.ravel())
    if n == 0:
        assert np.isnan(got) if exact == 0 else np.isinf(got)
        return
    want = exact / n
    # Each term's log/exp is computed in the dtype's precision (as PyTorch does): its rounding
    # is a few ulp of the parts the term is made of, not of the (cancelling) sum.
    parts = np.broadcast_to(reference_scale(x, t, log_target), terms.shape)
    scale = math.fsum(parts.ravel()) / n
    with np.errstate(over="ignore"):
        # a few ulp: each log is within an ulp, and the sum of n terms adds a few more (SPEC:
        # float64 relative error at most 1e-14; float32 1 ulp is tested in test_accuracy.py)
        tol = 4 * float(np.finfo(dtype).eps) * (abs(want) + 2 * scale)
        tol += float(np.finfo(dtype).smallest_subnormal)  # the rounding of a subnormal result
    assert abs(float(got) - want) <= tol or (
        np.isinf(got) and abs(want) > float(np.finfo(dtype).max)
    )


def reference_grads(x, t, log_target, g):
    """Autograd's gradients in float64 (before summing back over broadcast axes), and the
    magnitude of their parts (for the tolerance)."""
    x = np.asarray(x, np.float64)
    t = np.asarray(t, np.float64)
    with np.errstate(all="ignore"):
        if log_target:
            e = np.exp(t)
            gx, gt = -(g * e), (g * (t - x)) * e + g * e
            scale_x, scale_t = abs(g * e), abs(g * e) * (abs(t) + abs(x) + 1)
        else:
            xlogy_arg = np.where(np.isnan(t), np.nan, np.where(t == 0, 0.0, np.log(t)))
            gx, gt = -(g * t), g * xlogy_arg + (g * t) / t + (-g) * x
            scale_x = abs(g * t)
            scale_t = abs(g) * (np.nan_to_num(abs(xlogy_arg), posinf=0) + 1 + abs(x))
    return gx, gt, np.nan_to_num(scale_x, posinf=np.inf), np.nan_to_num(scale_t, posinf=np.inf)


def summed_to(a, shape):
    lead = a.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and a.shape[lead + i] != 1
    )
    with np.errstate(all="ignore"):
        return a.sum(axis=axes).reshape(shape) if axes else a


@given(pairs(), st.booleans(), st.sampled_from(["none", "sum", "mean", "batchmean"]))
# Subnormal gradients rounded to float32 element by element, then summed back over broadcast
# axes: -0.75 * 1e-45 rounds to -1.4e-45 six times, -8.4e-45 in all, as PyTorch gives too.
@example((np.zeros(1, np.float32), np.full((2, 3, 1, 1), 1e-45, np.float32)), False, "none")
def test_gradients_match_the_reference(pair, log_target, reduction):
    x, t = pair
    shape = np.broadcast_shapes(x.shape, t.shape)
    size = int(np.prod(shape))
    divisor = {"none": 1, "sum": 1, "mean": size, "batchmean": x.shape[0] if x.ndim else 1}
    go = np.full(shape, 0.75) if reduction == "none" else 0.75
    gx, gt = kldiv.kl_div_backward(go, x, t, reduction, log_target)
    assert gx.shape == x.shape and gt.shape == t.shape
    assert gx.dtype == x.dtype and gt.dtype == t.dtype
    if size == 0:
        return
    g = 0.75 / divisor[reduction]
    want_x, want_t, sx, st_ = reference_grads(
        np.broadcast_to(x, shape), np.broadcast_to(t, shape), log_target, g
    )
    compute = np.result_type(x, t)
    for got, want, scale, own in ((gx, want_x, sx, x), (gt, want_t, st_, t)):
        if want.shape != own.shape:  # summed back over broadcast axes
            if not np.all(np.isfinite(want)):
                continue  # NaN/inf sums: order-dependent signs, checked without broadcasting
            want, scale = summed_to(want, own.shape), summed_to(scale, own.shape)
        eps = float(np.finfo(compute).eps)
        # Each gradient element is rounded (to a subnormal, at worst) before the sum back over
        # broadcast axes: `count` of them go into each element of the result.
        count = size // max(1, own.size)
        tiny = count * float(np.finfo(own.dtype).smallest_subnormal)
        with np.errstate(all="ignore"):
            err = np.abs(got.astype(np.float64) - want)
            ok = (
                (err <= 8 * eps * scale + 2 * float(np.finfo(own.dtype).eps) * np.abs(want) + tiny)
                | (np.isnan(got) & np.isnan(want))
                | (got == want)
            )
        if own.dtype != compute:  # rounded to the argument's own (narrower) dtype at the end
            with np.errstate(over="ignore"):
                ok |= got == want.astype(own.dtype)
        assert ok.all(), (got[~ok], want[~ok])


@given(pairs(), st.booleans(), st.sampled_from(["none", "sum", "mean", "batchmean"]))
# An empty batch: 0/0, whose NaN must be the kernels' one (x86's own has the sign bit).
@example(
    pair=(np.zeros(0, np.float32), np.zeros(0, np.float32)), log_target=False, reduction="batchmean"
)
def test_fused_equals_forward_and_backward(pair, log_target, reduction):
    x, t = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loss, g = kldiv.kl_div_and_grad(x, t, reduction, log_target)
        want = kldiv.kl_div(x, t, reduction, log_target)
    shape = np.broadcast_shapes(x.shape, t.shape)
    ones = np.ones(shape, np.result_type(x, t)) if reduction == "none" else 1.0
    gx, _ = kldiv.kl_div_backward(ones, x, t, reduction, log_target)
    assert np.asarray(loss).tobytes() == np.asarray(want).tobytes()
    np.testing.assert_array_equal(g, gx)

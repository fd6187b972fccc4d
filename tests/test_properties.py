"""Hypothesis: kldiv equals the float64 NumPy reference over random shapes, broadcasting,
strides (negative too), dtypes and special values."""

import math
import warnings

import numpy as np
from hypothesis import given
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
        tol = float(np.finfo(dtype).eps) * (abs(want) + 2 * scale)
        tol += float(np.finfo(dtype).smallest_subnormal)  # the rounding of a subnormal result
    assert abs(float(got) - want) <= tol or (
        np.isinf(got) and abs(want) > float(np.finfo(dtype).max)
    )

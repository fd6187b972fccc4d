"""Bad and hostile input, one case a row: every case either works (and gives the right answer)
or raises a clear Python exception that says what is wrong. None may crash the interpreter or
return a silently wrong number."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest

import kldiv
from helpers import RaisesInArray, misaligned, readonly, reference

GOOD = np.log(np.full((2, 3), 1 / 3))


@pytest.mark.parametrize("reduction", ["avg", "", "Mean", None, 1, "batch_mean"])
def test_unknown_reduction_lists_the_four(reduction):
    with pytest.raises(ValueError, match="'none', 'sum', 'mean', 'batchmean'"):
        kldiv.kl_div(GOOD, GOOD, reduction=reduction)
    with pytest.raises(ValueError, match="batchmean"):
        kldiv.KLDivLoss(reduction=reduction)


def test_shapes_that_do_not_broadcast_name_both():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4,\)"):
        kldiv.kl_div(GOOD, np.zeros(4), "sum")
    with pytest.raises(ValueError, match=r"\(3, 1, 2\).*\(4, 3\)"):
        kldiv.kl_div(np.zeros((3, 1, 2)), np.zeros((4, 3)), "none")


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 3), dtype=np.int64),
        np.zeros((2, 3), dtype=np.int8),
        np.zeros((2, 3), dtype=np.uint32),
        np.zeros((2, 3), dtype=bool),
        np.zeros((2, 3), dtype=np.complex128),
        np.zeros((2, 3), dtype=object),
        np.array(["a", "b", "c"]),
        np.zeros(3, dtype="datetime64[s]"),
        np.zeros(3, dtype=np.longdouble) if np.dtype(np.longdouble).itemsize > 8 else None,
        [1, 2, 3],
        [True, False, True],
    ],
    ids=lambda b: str(np.asarray(b).dtype) if b is not None else "none",
)
@pytest.mark.parametrize("which", ["input", "target"])
def test_bad_dtypes_name_the_dtype(bad, which):
    if bad is None:
        pytest.skip("longdouble is float64 here")
    dtype = str(np.asarray(bad).dtype)
    args = (bad, GOOD[0]) if which == "input" else (GOOD[0], bad)
    with pytest.raises(TypeError, match=re.escape(f"{which} has dtype {dtype}")):
        kldiv.kl_div(*args, reduction="sum")


@pytest.mark.parametrize(
    "bad", [{"a": 1}, "text", None, object(), RaisesInArray(), [[1.0], [2.0, 3.0]]]
)
def test_non_arrays(bad):
    with pytest.raises(TypeError, match="input"):
        kldiv.kl_div(bad, GOOD, "sum")


@pytest.mark.parametrize("log_target", [None, 1, 0.0, "yes", np.array([True])])
def test_log_target_must_be_bool(log_target):
    with pytest.raises(TypeError, match="log_target must be a bool"):
        kldiv.kl_div(GOOD, GOOD, "sum", log_target=log_target)


def test_numpy_bool_log_target_is_fine():
    assert kldiv.kl_div(GOOD, GOOD, "sum", log_target=np.True_) == kldiv.kl_div(
        GOOD, GOOD, "sum", log_target=True
    )


@pytest.mark.parametrize(
    ("n", "error"),
    [
        (0, ValueError),
        (-2, ValueError),
        (1.5, TypeError),
        ("2", TypeError),
        (True, TypeError),
        (None, TypeError),
    ],
)
def test_bad_thread_counts(n, error, threads):
    with pytest.raises(error, match="threads"):
        kldiv.set_num_threads(n)


def test_big_endian_and_misaligned_arrays_work():
    x = GOOD.astype(">f8")
    t = np.exp(GOOD).astype(">f4")
    want = kldiv.kl_div(GOOD, np.exp(GOOD).astype(np.float32), "sum")
    assert kldiv.kl_div(x, t, "sum") == want
    buf = np.zeros(GOOD.size * 8 + 1, dtype=np.uint8)
    mis = np.frombuffer(buf.data, dtype=np.float64, count=GOOD.size, offset=1).reshape(2, 3)
    assert not mis.flags.aligned
    mis[...] = GOOD
    assert kldiv.kl_div(mis, GOOD, "none").shape == (2, 3)
    assert kldiv.kl_div(mis, np.exp(GOOD), "sum") == kldiv.kl_div(GOOD, np.exp(GOOD), "sum")


def test_read_only_inputs_work():
    x = GOOD.copy()
    x.flags.writeable = False
    assert kldiv.kl_div(x, np.exp(x), "sum") == kldiv.kl_div(GOOD, np.exp(GOOD), "sum")


def test_the_raw_extension_rejects_mismatched_arrays():
    from kldiv import _kldiv

    with pytest.raises(TypeError):
        _kldiv.sum(GOOD, GOOD.astype(np.float32), False)  # two dtypes
    with pytest.raises(TypeError, match="float32 or float64"):
        _kldiv.sum(GOOD.astype(np.float16), GOOD.astype(np.float16), False)
    with pytest.raises(ValueError, match="do not broadcast"):
        _kldiv.sum(GOOD, np.zeros(4), False)
    with pytest.raises(ValueError, match="output has shape"):
        _kldiv.terms(GOOD, GOOD, np.zeros((3, 2)), False)


# ---- hostile inputs: every public function, every bad argument, odd but valid arrays ---------

X = np.log(np.full((3, 4), 0.25))
T = np.full((3, 4), 0.25)


FUNCTIONS = {
    "kl_div": lambda x, t, **kw: kldiv.kl_div(x, t, **kw),
    "KLDivLoss": lambda x, t, reduction="sum", **kw: kldiv.KLDivLoss(reduction, **kw)(x, t),
    "kl_div_backward": lambda x, t, **kw: kldiv.kl_div_backward(1.0, x, t, **kw),
    "kl_div_and_grad": lambda x, t, **kw: kldiv.kl_div_and_grad(x, t, **kw),
}

# (case, input, target, options, expected exception or None, message pattern)
BAD_ARGUMENTS = [
    ("int input", np.ones((3, 4), np.int64), T, {}, TypeError, "input has dtype int64"),
    ("uint8 target", X, np.ones((3, 4), np.uint8), {}, TypeError, "target has dtype uint8"),
    ("bool input", np.ones((3, 4), bool), T, {}, TypeError, "dtype bool"),
    ("complex target", X, T.astype(complex), {}, TypeError, "dtype complex128"),
    ("object input", X.astype(object), T, {}, TypeError, "dtype object"),
    ("str target", X, np.full((3, 4), "a"), {}, TypeError, "dtype <U1"),
    ("bytes input", np.full((3, 4), b"a"), T, {}, TypeError, "dtype |S1"),
    ("datetime input", np.zeros(4, "datetime64[s]"), T, {}, TypeError, "datetime64"),
    ("timedelta target", X, np.zeros(4, "timedelta64[s]"), {}, TypeError, "timedelta64"),
    ("structured input", np.zeros(4, "f4,f4"), T, {}, TypeError, "dtype"),
    ("None input", None, T, {}, TypeError, "input has dtype object"),
    ("dict target", X, {"a": 1}, {}, TypeError, "target has dtype object"),
    ("ragged list", [[1.0], [1.0, 2.0]], T, {}, TypeError, "input cannot be converted"),
    ("raising __array__", RaisesInArray(), T, {}, TypeError, "broken __array__"),
    ("shapes (3, 4) vs (5,)", X, np.ones(5), {}, ValueError, r"\(3, 4\).*\(5,\)"),
    ("shapes (2, 3) vs (3, 2)", np.ones((2, 3)), np.ones((3, 2)), {}, ValueError, "broadcast"),
    ("reduction 'avg'", X, T, {"reduction": "avg"}, ValueError, "'none', 'sum'"),
    ("reduction None", X, T, {"reduction": None}, ValueError, "batchmean"),
    ("reduction list", X, T, {"reduction": ["sum"]}, ValueError, "batchmean"),
    ("log_target 'yes'", X, T, {"log_target": "yes"}, TypeError, "log_target must be a bool"),
    ("log_target None", X, T, {"log_target": None}, TypeError, "log_target must be a bool"),
    ("log_target array", X, T, {"log_target": np.array([True])}, TypeError, "bool"),
]


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize(
    ("case", "x", "t", "options", "error", "match"),
    BAD_ARGUMENTS,
    ids=[r[0] for r in BAD_ARGUMENTS],
)
def test_bad_arguments_raise_clear_errors(name, case, x, t, options, error, match):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(error, match=match):
            FUNCTIONS[name](x, t, **options)


# (case, input, target): all must equal the result on plain C-ordered float64 copies.
ODD_BUT_VALID = [
    ("big-endian input", X.astype(">f8"), T),
    ("big-endian both, float32", X.astype(">f4"), T.astype(">f4")),
    ("misaligned input", misaligned(X), T),
    (
        "misaligned both, float32",
        misaligned(X.astype(np.float32)),
        misaligned(T.astype(np.float32)),
    ),
    ("read-only input", readonly(X), readonly(T)),
    ("Fortran order", np.asfortranarray(X), np.asfortranarray(T)),
    ("negative strides", X[::-1, ::-1].copy()[::-1, ::-1], T),
    ("stride-0 broadcast view", np.broadcast_to(X[:1], (3, 4)), T),
    ("lists", X.tolist(), T.tolist()),
    ("float32 scalar target", X, np.float32(0.25)),
    ("python float target", X, 0.25),
    ("matrix subclass", np.asmatrix(X), np.asmatrix(T)),
    ("float16", X.astype(np.float16), T.astype(np.float16)),
    ("mixed float16 and float64", X.astype(np.float16), T),
    ("non-contiguous sliced", np.repeat(X, 2, axis=1)[:, ::2], T),
]


@pytest.mark.parametrize(("case", "x", "t"), ODD_BUT_VALID, ids=[r[0] for r in ODD_BUT_VALID])
@pytest.mark.parametrize("reduction", ["none", "sum", "batchmean"])
def test_odd_but_valid_inputs_give_the_right_answer(case, x, t, reduction):
    got = kldiv.kl_div(x, t, reduction)
    want = reference(np.asarray(x, np.float64), np.asarray(t, np.float64), reduction, False)
    dtype = np.result_type(np.asarray(x).dtype, np.asarray(t).dtype)
    rtol = {2: 2e-3, 4: 2e-6, 8: 1e-14}[dtype.itemsize]
    # the loss is 0 here: the tolerance is relative to the terms' parts (about 4), not to it
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=rtol * 10)
    gx, gt = kldiv.kl_div_backward(1.0, x, t, reduction="sum")
    assert gx.shape == np.shape(x) and gt.shape == np.shape(t)
    _, g = kldiv.kl_div_and_grad(x, t, reduction="sum")
    np.testing.assert_array_equal(g, gx)


@pytest.mark.parametrize(
    ("xs", "ts"),
    [
        ((0,), (0,)),
        ((0, 5), (1, 5)),
        ((5, 0), (5, 1)),
        ((2, 0, 3), (3,)),
        ((1, 0), (4, 1)),
        ((3, 1, 0), (1, 2, 1)),
        ((), (0,)),
    ],
)
def test_zero_size_dimensions_anywhere(xs, ts):
    x, t = np.zeros(xs), np.ones(ts)
    shape = np.broadcast_shapes(xs, ts)
    assert kldiv.kl_div(x, t, "none").shape == shape
    assert kldiv.kl_div(x, t, "sum") == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert math.isnan(kldiv.kl_div(x, t, "mean"))
    bm = kldiv.kl_div(x, t, "batchmean")
    assert math.isnan(bm) if xs and xs[0] == 0 else bm == 0.0
    gx, gt = kldiv.kl_div_backward(1.0, x, t, "sum")
    assert gx.shape == xs and gt.shape == ts and not gx.any() and not gt.any()


@pytest.mark.parametrize("ndim", [33, 40, 64])
def test_more_than_32_dimensions(ndim):
    shape = (1,) * (ndim - 2) + (2, 3)
    x = np.log(np.full(shape, 0.5))
    t = np.full(shape[-1:], 0.5)
    assert kldiv.kl_div(x, t, "none").shape == shape
    assert kldiv.kl_div(x, t, "sum") == pytest.approx(0.0, abs=1e-15)
    assert kldiv.kl_div_backward(1.0, x, t, "sum")[0].shape == shape
    # A result of more than 1 MiB (kldiv's pool of result memory) too.
    big = shape[:-2] + (1000, 300)
    x, t = np.full(big, -2.0, np.float32), np.full(big[-1:], 0.5, np.float32)
    terms = kldiv.kl_div(x, t, "none")
    assert terms.shape == big and np.allclose(terms, 0.5 * (np.log(0.5) + 2.0), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ndim", [33, 64])
def test_more_than_32_dimensions_of_one_shape(ndim, dtype):
    # Two arrays of one shape and dtype take a shorter way to the kernels: it must drop the
    # axes beyond 32 too (it once handed them to rust-numpy, which panics).
    shape = (1,) * (ndim - 2) + (2, 3)
    x = np.log(np.full(shape, 0.25, dtype))
    t = np.full(shape, 0.5, dtype)
    want = 6 * 0.5 * np.log(2.0)
    assert kldiv.kl_div(x, t, "sum") == pytest.approx(want, rel=1e-6)
    assert kldiv.kl_div(x, t, "batchmean") == pytest.approx(want, rel=1e-6)
    assert kldiv.kl_div(x, t, "none").shape == shape
    loss, gx = kldiv.kl_div_and_grad(x, t, "sum")
    assert loss == pytest.approx(want, rel=1e-6) and gx.shape == shape
    assert kldiv.kl_div_backward(1.0, x, t, "sum")[1].shape == shape
    assert kldiv._loss.partial_sum(x, t) == pytest.approx(want, rel=1e-6)


OUT_CASES = [
    ("wrong shape", lambda: np.empty((4, 3)), ValueError, "shape"),
    ("wrong dtype", lambda: np.empty((3, 4), np.float32), TypeError, "dtype"),
    ("big-endian", lambda: np.empty((3, 4), ">f8"), TypeError, "dtype"),
    ("read-only", lambda: readonly(np.empty((3, 4))), ValueError, "read-only"),
    ("misaligned", lambda: misaligned(np.empty((3, 4))), ValueError, "aligned"),
    ("overlapping input", lambda: X, ValueError, "overlaps"),
    ("overlapping target", lambda: T, ValueError, "overlaps"),
    ("a list", lambda: [[0.0] * 4] * 3, TypeError, "numpy.ndarray"),
    ("a scalar", lambda: np.float64(0), TypeError, "numpy.ndarray"),
]


@pytest.mark.parametrize(
    ("case", "make", "error", "match"), OUT_CASES, ids=[c[0] for c in OUT_CASES]
)
def test_bad_out_arrays(case, make, error, match):
    x, t = X.copy(), T.copy()
    if case.startswith("overlapping"):
        x, t = X, T
    with pytest.raises(error, match=match):
        kldiv.kl_div(x, t, "none", out=make())
    with pytest.raises(error, match=match):
        kldiv.kl_div_and_grad(x, t, "sum", out=make())
    with pytest.raises(error, match=match):
        kldiv.kl_div_backward(1.0, x, t, "sum", out=(make(), np.empty((3, 4))))


def test_good_out_arrays_of_any_strides():
    for out in (np.empty((4, 3)).T, np.empty((3, 8))[:, ::2], np.empty((3, 4))[::-1]):
        r = kldiv.kl_div(X, T, "none", out=out)
        assert r is out
        np.testing.assert_allclose(out, reference(X, T, "none", False))


@pytest.mark.parametrize(
    ("grad_output", "reduction", "error"),
    [
        (np.ones(3), "sum", ValueError),
        ("x", "sum", TypeError),
        (None, "sum", TypeError),
        (np.ones((2, 4)), "none", ValueError),
        (1j, "sum", TypeError),
    ],
)
def test_bad_grad_output(grad_output, reduction, error):
    with pytest.raises(error, match="grad_output"):
        kldiv.kl_div_backward(grad_output, X, T, reduction)


def test_nan_grad_output_propagates():
    gx, gt = kldiv.kl_div_backward(float("nan"), X, T, "sum")
    assert np.isnan(gx).all() and np.isnan(gt).all()


class _Sub(np.ndarray):
    pass


def _pair(dtype, shape=(3, 4), order="C"):
    rng = np.random.default_rng(7)
    x = np.asarray(np.log(rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])), dtype, order=order)
    t = np.asarray(rng.dirichlet(np.ones(shape[-1]), size=shape[:-1]), dtype, order=order)
    return x, t


F32, F64 = _pair(np.float32), _pair(np.float64)
# (case, input, target, reduction, log_target): what kl_div's one-call path in Rust
# (_kldiv.reduce_plain) takes, and what it must leave to the Python checks.
PLAIN_TAKEN = [
    ("float32", *F32, "batchmean", False),
    ("float32 sum log_target", *F32, "sum", True),
    ("float64", *F64, "batchmean", False),
    ("float64 sum log_target", *F64, "sum", True),
    ("Fortran order", *_pair(np.float32, (5, 6), "F"), "batchmean", False),
    ("strided views", F64[0][:, ::2], F64[1][:, 1::2], "batchmean", False),
    ("0-d arrays", np.array(F32[0][0, 0]), np.array(F32[1][0, 0]), "batchmean", False),
    ("empty batch", np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32), "batchmean", False),
    ("read-only", readonly(F32[0].copy()), readonly(F32[1].copy()), "sum", False),
    ("32 dimensions", *_pair(np.float64, (1,) * 30 + (2, 3)), "batchmean", False),
]
PLAIN_DECLINED = [
    ("mean", *F32, "mean", False),
    ("none", *F32, "none", False),
    ("unknown reduction", *F32, "batchsum", False),
    ("reduction not a str", *F32, 3, False),
    ("numpy bool log_target", *F32, "sum", np.bool_(True)),
    ("int log_target", *F32, "sum", 1),
    ("mixed dtypes", F32[0], F64[1], "sum", False),
    ("float16", F32[0].astype(np.float16), F32[1].astype(np.float16), "sum", False),
    ("big-endian", F64[0].astype(">f8"), F64[1].astype(">f8"), "sum", False),
    ("misaligned", misaligned(F64[0]), F64[1], "sum", False),
    ("subclass", F32[0].view(_Sub), F32[1], "sum", False),
    ("list", F64[0].tolist(), F64[1], "sum", False),
    ("numpy scalars", F32[0][0, 0], F32[1][0, 0], "batchmean", False),
    ("broadcast", F32[0], F32[1][:1], "sum", False),
    ("33 dimensions", *_pair(np.float64, (1,) * 31 + (2, 3)), "batchmean", False),
]


def _long_way(x, t, reduction, log_target):
    """kl_div through the Python checks (_Prepared), as before the one-call path."""
    from kldiv import _kldiv, _loss

    p = _loss._Prepared(x, t)
    return _loss._scalar(_kldiv.sum(p.x, p.t, bool(log_target)), p.divisor(reduction), p.result)


@pytest.mark.parametrize(
    ("case", "x", "t", "reduction", "log_target"),
    PLAIN_TAKEN + PLAIN_DECLINED,
    ids=[c[0] for c in PLAIN_TAKEN + PLAIN_DECLINED],
)
def test_one_call_path_takes_only_plain_arrays_and_gives_the_same_bits(
    case, x, t, reduction, log_target
):
    got = kldiv._kldiv.reduce_plain(x, t, reduction, log_target)
    if any(case == c[0] for c in PLAIN_DECLINED):
        assert got is None
        return
    want = _long_way(x, t, reduction, log_target)
    assert type(got) is type(want) and type(got) is np.asarray(x).dtype.type
    assert np.array_equal(got, want, equal_nan=True)  # the same bits, NaN included
    assert np.array_equal(kldiv.kl_div(x, t, reduction, log_target), want, equal_nan=True)
    loss = kldiv.KLDivLoss(reduction, log_target)
    assert np.array_equal(loss(x, t), want, equal_nan=True)

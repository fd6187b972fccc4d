"""Bad input gets a clear Python exception, never a crash and never a silently wrong number."""

import re

import numpy as np
import pytest

import kldiv

GOOD = np.log(np.full((2, 3), 1 / 3))


class RaisesInArray:
    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("no array for you")


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

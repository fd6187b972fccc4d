"""Shared by the tests and scripts/make_fixtures.py: the float64 reference and the views, and
the tests' data: random distributions, awkward arrays, objects that refuse to be arrays."""

from __future__ import annotations

import json
import math
import pathlib
import warnings
from typing import Any, Callable

import numpy as np

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "torch_kl_div.npz"
REDUCTIONS = ("none", "sum", "mean", "batchmean")


def reference_terms(x: Any, t: Any, log_target: bool) -> np.ndarray:
    """PyTorch's unreduced kl_div terms in float64, written with NumPy."""
    x = np.asarray(x, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(all="ignore"):
        if log_target:
            return np.exp(t) * (t - x)
        xlogy = np.where(np.isnan(t), np.nan, np.where(t == 0, 0.0, t * np.log(t)))
        return xlogy - t * x


def reference_scale(x: Any, t: Any, log_target: bool) -> np.ndarray:
    """The magnitude of the parts each term is made of: a term's rounding error (the last ulp
    of a ``log`` or ``exp``, magnified by cancellation) is a few ulp of this, not of the term."""
    x = np.abs(np.asarray(x, dtype=np.float64))
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(all="ignore"):
        if log_target:
            scale = np.exp(t) * (np.abs(t) + x)
        else:
            scale = np.abs(np.where(t == 0, 0.0, t * np.log(np.abs(t)))) + np.abs(t) * x
    return np.nan_to_num(scale, nan=0.0, posinf=np.inf)


def assert_terms_close(got: np.ndarray, want: np.ndarray, scale: np.ndarray, ulps: int = 4) -> None:
    """``got`` equals the float64 ``want`` where it is NaN or infinite, and within ``ulps`` of
    the output dtype's epsilon times ``scale`` elsewhere."""
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    with np.errstate(over="ignore"):
        rounded = want.astype(got.dtype)  # what overflows the output dtype is infinite
    inf = np.isinf(rounded)
    np.testing.assert_array_equal(got[inf], rounded[inf])
    finite = np.isfinite(rounded)
    eps = float(np.finfo(got.dtype).eps)
    err = np.abs(got[finite].astype(np.float64) - want[finite])
    tiny = float(np.finfo(got.dtype).tiny)
    bound = ulps * eps * scale[finite] + tiny
    assert np.all(err <= bound), (got[finite][err > bound], want[finite][err > bound])


def reference(x: Any, t: Any, reduction: str, log_target: bool) -> Any:
    """The float64 reference of kldiv.kl_div: exact sums (math.fsum)."""
    terms = reference_terms(x, t, log_target)
    if reduction == "none":
        return terms
    s = math.fsum(terms.ravel()) if np.all(np.isfinite(terms)) else float(np.sum(terms))
    with np.errstate(all="ignore"):
        if reduction == "sum":
            return np.float64(s)
        if reduction == "mean":
            return np.float64(s) / np.float64(terms.size)
        x = np.asarray(x)
        return np.float64(s) if x.ndim == 0 else np.float64(s) / np.float64(x.shape[0])


def apply_view(a: np.ndarray, view: str) -> np.ndarray:
    """The views the fixtures name: the stored array, transposed, reversed, stepped, F-order."""
    views = {
        "": lambda: a,
        "T": lambda: a.T,
        "rev": lambda: a[::-1, ::2],
        "step": lambda: a[:, ::-3],
        "F": lambda: np.asfortranarray(a),
    }
    return views[view]()


def load_fixtures() -> list[dict[str, Any]]:
    """The PyTorch cases of tests/fixtures/torch_kl_div.npz, one dict each."""
    with np.load(FIXTURES, allow_pickle=False) as z:
        index = json.loads(str(z["index"]))
        cases = []
        for meta in index:
            i = meta["id"]
            case = dict(meta)
            for key in ("input", "target", "loss", "grad_output", "grad_input", "grad_target"):
                case[key] = z[f"c{i}_{key}"]
            cases.append(case)
        return cases


def tolerance(dtype: np.dtype) -> dict[str, float]:
    """rtol/atol for comparing a result of ``dtype`` with PyTorch or the reference."""
    return {
        np.dtype(np.float16): {"rtol": 2e-3, "atol": 1e-3},
        np.dtype(np.float32): {"rtol": 2e-6, "atol": 1e-6},
        np.dtype(np.float64): {"rtol": 1e-13, "atol": 1e-14},
    }[np.dtype(dtype)]


def quiet(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``f(*args, **kwargs)`` with UserWarnings (kl_div's reduction='mean' warning) ignored."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return f(*args, **kwargs)


# ---- test data -------------------------------------------------------------------------------


def dist(
    rng: np.random.Generator, shape: tuple[int, ...], log: bool = False, dtype: Any = np.float64
) -> np.ndarray:
    """Random distributions over the last axis: the log-softmax of ``rng``'s standard normals
    (``log``) or its exponential, computed in float64 and then cast to ``dtype``."""
    a = rng.standard_normal(shape)
    a = a - np.log(np.exp(a).sum(axis=-1, keepdims=True))
    return (a if log else np.exp(a)).astype(dtype)


def dist_pair(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    dtype: Any = np.float64,
    log_target: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """An input (log-probabilities) and then a target (probabilities, or log-probabilities
    with ``log_target``) of ``shape``, both from ``dist``: the input is drawn first."""
    x = dist(rng, shape, log=True, dtype=dtype)
    return x, dist(rng, shape, log=log_target, dtype=dtype)


def misaligned(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` (C order) one byte past an aligned address."""
    buf = np.zeros(a.nbytes + 1, dtype=np.uint8)
    m = np.frombuffer(buf.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    m[...] = a
    assert not m.flags.aligned
    return m


def readonly(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` that cannot be written."""
    a = a.copy()
    a.flags.writeable = False
    return a


class RaisesInArray:
    """Not an array: its ``__array__`` raises RuntimeError("broken __array__")."""

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise RuntimeError("broken __array__")

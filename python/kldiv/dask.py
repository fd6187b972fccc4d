"""kldiv over ``dask.array``: the loss and its gradient, lazily, chunk by chunk.

``kl_div(input, target, reduction, log_target)`` and ``kl_div_and_grad(...)`` take Dask arrays
(or anything ``dask.array.asarray`` takes), broadcast them (unequal chunkings are unified), and
return Dask arrays. The reducing modes go through ``dask.array.reduction``: each chunk's terms
are summed in float64 by kldiv's kernel (which releases the GIL, so the threaded scheduler
runs chunks in parallel), and the float64 partial sums are combined in Dask's fixed tree, so
the same chunking gives the same result on every scheduler. ``"none"`` and the gradient are
computed chunk by chunk. Works on the threaded, processes and distributed schedulers; arrays
can come from Zarr (``da.from_zarr``) or many ``.npy`` files (``da.stack`` of memory maps).

Importing this module needs Dask (``pip install "dask[array]"``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

try:
    import dask.array as da
except ImportError as e:  # pragma: no cover - exercised only without dask
    raise ImportError('kldiv.dask needs Dask: pip install "dask[array]"') from e

from . import _loss

__all__ = ["kl_div", "kl_div_and_grad"]


def _prepare(
    input: Any, target: Any
) -> tuple[da.Array, da.Array, da.Array, da.Array, np.dtype[Any]]:
    x, t = da.asarray(input), da.asarray(target)
    for name, a in (("input", x), ("target", t)):
        _loss.check_dtype(a.dtype, name)
        if any(math.isnan(n) for n in a.shape):
            raise ValueError(
                f"{name} has unknown chunk sizes (shape {a.shape}, as after boolean indexing); "
                f"call {name}.compute_chunk_sizes() first"
            )
    _loss.broadcast_shape(x.shape, t.shape)  # the crate's error if they do not broadcast
    xb, tb = da.broadcast_arrays(x, t)
    tb = tb.rechunk(xb.chunks)  # one chunking for both
    return x, t, xb, tb, np.result_type(x.dtype, t.dtype)


def _chunk_sum(x: np.ndarray, t: np.ndarray, log_target: bool) -> np.ndarray:
    """One chunk's float64 sum, shaped (1, 1, ...) like a block of partial sums."""
    return np.full((1,) * x.ndim, _loss.partial_sum(x, t, log_target), dtype=np.float64)


def _chunk_terms(x: np.ndarray, t: np.ndarray, log_target: bool) -> np.ndarray:
    return _loss.kl_div(x, t, "none", log_target)


def _chunk_grad(x: np.ndarray, t: np.ndarray, divisor: float, log_target: bool) -> np.ndarray:
    return _loss.grad_part(x, t, divisor, log_target)


def _sum(a: np.ndarray, axis: Any = None, keepdims: bool = False) -> np.ndarray:
    return np.sum(a, axis=axis, keepdims=keepdims, dtype=np.float64)


def _total(xb: da.Array, tb: da.Array, log_target: bool) -> da.Array:
    """The float64 sum of all terms: per-chunk sums, then ``dask.array.reduction``."""
    partials = da.map_blocks(
        _chunk_sum,
        xb,
        tb,
        log_target=log_target,
        chunks=tuple((1,) * len(c) for c in xb.chunks),
        dtype=np.float64,
    )
    return da.reduction(partials, chunk=_sum, aggregate=_sum, dtype=np.float64, concatenate=True)


def _finish(total: da.Array, divisor: float, dtype: np.dtype[Any]) -> da.Array:
    """The loss from the float64 total: divided, rounded once to ``dtype``, a NumPy scalar (as
    :func:`kldiv.kl_div` returns it)."""

    def divide(s: np.ndarray) -> np.floating[Any]:
        return _loss._scalar(float(s), divisor, dtype)

    return da.map_blocks(divide, total, dtype=dtype)


def kl_div(input: Any, target: Any, reduction: str = "mean", log_target: bool = False) -> da.Array:
    """:func:`kldiv.kl_div` over Dask arrays, lazily (a 0-d Dask array, or the terms).

    The formula, reductions and dtypes are those of :func:`kldiv.kl_div` (``"mean"`` is not
    the KL divergence; ``"batchmean"`` is). Call ``.compute()`` on the result.
    """
    _loss.check_options(reduction, log_target)
    x, t, xb, tb, dtype = _prepare(input, target)
    if reduction == "none":
        return da.map_blocks(_chunk_terms, xb, tb, log_target=bool(log_target), dtype=dtype)
    divisor = _loss.divisor(reduction, x.shape, t.shape)
    return _finish(_total(xb, tb, bool(log_target)), divisor, dtype)


def kl_div_and_grad(
    input: Any, target: Any, reduction: str = "mean", log_target: bool = False
) -> tuple[da.Array, da.Array]:
    """:func:`kldiv.kl_div_and_grad` over Dask arrays: ``(loss, grad_input)``, both lazy; the
    gradient is computed chunk by chunk (and summed back if ``input`` was broadcast)."""
    _loss.check_options(reduction, log_target)
    x, t, xb, tb, dtype = _prepare(input, target)
    divisor = _loss.divisor(reduction, x.shape, t.shape)
    if reduction == "none":
        loss = da.map_blocks(_chunk_terms, xb, tb, log_target=bool(log_target), dtype=dtype)
    else:
        loss = _finish(_total(xb, tb, bool(log_target)), divisor, dtype)
    # Each chunk's gradient in the compute dtype (float32 for float16), summed over the axes
    # ``input`` was broadcast along, then rounded once to its dtype.
    compute = np.result_type(x.dtype, np.float32)
    grad = da.map_blocks(
        _chunk_grad,
        xb,
        tb,
        divisor=divisor,
        log_target=bool(log_target),
        dtype=compute,
    )
    axes = _loss.sum_axes(x.shape, grad.ndim, grad.shape)
    if axes:
        grad = grad.sum(axis=axes).reshape(x.shape)
    return loss, grad.map_blocks(_loss._cast, x.dtype, dtype=x.dtype)

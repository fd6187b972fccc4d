"""The Python boundary: argument checks, dtype promotion, broadcasting and reductions.

The numerics live in Rust (``src/``); this module turns what a NumPy or PyTorch user passes
into the arrays the kernels take, and the kernels' float64 sums into PyTorch's reductions.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Literal, Union

import numpy as np
import numpy.typing as npt

from . import _kldiv

Reduction = Literal["none", "sum", "mean", "batchmean"]
REDUCTIONS: tuple[str, ...] = ("none", "sum", "mean", "batchmean")
Result = Union[np.floating[Any], npt.NDArray[np.floating[Any]]]

_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_MEAN_WARNING = (
    "reduction='mean' divides the summed loss by the number of elements, not by the batch "
    "size: it is not the KL divergence. Use reduction='batchmean' for the mathematical "
    "definition ('mean' is kept for parity with PyTorch and R torch)."
)
_KERNELS = {
    np.dtype(np.float32): (_kldiv.sum_f32, _kldiv.terms_f32),
    np.dtype(np.float64): (_kldiv.sum_f64, _kldiv.terms_f64),
}


def kl_div(
    input: npt.ArrayLike,
    target: npt.ArrayLike,
    reduction: Reduction = "mean",
    log_target: bool = False,
) -> Result:
    r"""Kullback-Leibler divergence loss, exactly as ``torch.nn.functional.kl_div``.

    With :math:`x` = ``input`` (log-probabilities) and :math:`t` = ``target``, broadcast
    together, the unreduced loss is

    .. math::

        L = t \, (\log t - x)          \quad\text{(written } \operatorname{xlogy}(t, t) - t x)

        L = e^{t} \, (t - x)           \quad\text{if ``log_target`` (} t \text{ holds } \log t)

    with :math:`\operatorname{xlogy}(0, 0) = 0`; IEEE special values follow these expressions
    as in PyTorch (``t < 0`` or NaN gives NaN, ``t = 0`` with ``x = -inf`` gives NaN).

    Parameters
    ----------
    input : array_like
        Log-probabilities :math:`x`, shape ``(N, *)`` (any shape, 0-d included).
    target : array_like
        Probabilities :math:`t` (log-probabilities if ``log_target``), broadcastable
        against ``input`` under NumPy rules.
    reduction : {"none", "sum", "mean", "batchmean"}, default "mean"
        ``"none"``: the array :math:`L`. ``"sum"``: :math:`\sum L` (0 if empty).
        ``"mean"``: :math:`\sum L / L.size` (NaN if empty). ``"batchmean"``:
        :math:`\sum L / N`, ``N = input.shape[0]`` (the sum for a 0-d input): this is the KL
        divergence :math:`D_{KL}(t \,\|\, e^{x})` averaged over the batch.
        The default ``"mean"`` matches PyTorch and R torch, but it also divides by the
        number of classes, so it is *not* the KL divergence; it emits a ``UserWarning``
        saying so. Use ``"batchmean"``.
    log_target : bool, default False
        Whether ``target`` holds log-probabilities.

    Returns
    -------
    numpy.ndarray or numpy scalar
        ``"none"``: an array of the broadcast shape. Otherwise a NumPy scalar. The dtype is
        ``numpy.result_type(input, target)`` (float16, float32 or float64); float16 is
        computed in float32, and every sum is accumulated in float64 and rounded once.

    Raises
    ------
    ValueError
        Unknown ``reduction``, or shapes that do not broadcast.
    TypeError
        A dtype that is not float16/32/64, an object NumPy cannot turn into an array, or a
        non-bool ``log_target``.

    Examples
    --------
    >>> import numpy as np, kldiv
    >>> t = np.array([[0.5, 0.5]])
    >>> x = np.log(np.array([[0.25, 0.75]]))
    >>> float(kldiv.kl_div(x, t, reduction="batchmean"))  # doctest: +ELLIPSIS
    0.1438...
    """
    return _kl_div(input, target, reduction, log_target, stacklevel=3)


def _kl_div(
    input: npt.ArrayLike,
    target: npt.ArrayLike,
    reduction: str,
    log_target: bool,
    stacklevel: int,
) -> Result:
    check_options(reduction, log_target)
    x = _as_float_array(input, "input")
    t = _as_float_array(target, "target")
    shape = _broadcast_shape(x, t)
    result_dtype = np.result_type(x.dtype, t.dtype).newbyteorder("=")
    compute = np.dtype(np.float32) if result_dtype == np.float16 else result_dtype
    x, t = _for_kernel(x, compute), _for_kernel(t, compute)
    total, terms = _KERNELS[compute]

    if reduction == "none":
        out = np.empty(shape, dtype=compute)
        terms(x, t, out, bool(log_target))
        return out.astype(result_dtype, copy=False)

    if reduction == "mean":
        warnings.warn(_MEAN_WARNING, UserWarning, stacklevel=stacklevel)
    s = total(x, t, bool(log_target))
    if reduction == "sum":
        value = s
    elif reduction == "mean":
        value = _divide(s, math.prod(shape))
    else:  # batchmean: input's own first dimension, as PyTorch does
        value = s if x.ndim == 0 else _divide(s, x.shape[0])
    with np.errstate(over="ignore"):  # a sum beyond the dtype's range is +-inf, as in PyTorch
        return result_dtype.type(value)


def _divide(s: float, n: int) -> float:
    """``s / n`` with IEEE semantics for ``n == 0`` (0/0 is NaN), without a warning."""
    if n == 0:
        return math.nan if s == 0 or math.isnan(s) else math.copysign(math.inf, s)
    return s / n


def check_options(reduction: object, log_target: object) -> None:
    """Raises the errors of a bad ``reduction`` or ``log_target``."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(
            f"reduction must be one of {', '.join(repr(r) for r in REDUCTIONS)}; got {reduction!r}"
        )
    if not isinstance(log_target, (bool, np.bool_)):
        raise TypeError(f"log_target must be a bool, got {type(log_target).__name__}")


def _as_float_array(obj: object, name: str) -> npt.NDArray[Any]:
    try:
        a = np.asarray(obj)
    except Exception as e:  # __array__ raising, ragged lists, ...
        raise TypeError(f"{name} cannot be converted to an array: {e}") from e
    if a.dtype.newbyteorder("=") not in _FLOATS:
        raise TypeError(
            f"{name} has dtype {a.dtype}; kldiv computes on float16, float32 or float64 "
            f"arrays (convert it, e.g. with .astype(np.float32))"
        )
    return a


def _broadcast_shape(x: npt.NDArray[Any], t: npt.NDArray[Any]) -> tuple[int, ...]:
    try:
        return np.broadcast_shapes(x.shape, t.shape)
    except ValueError:
        raise ValueError(
            f"input of shape {x.shape} and target of shape {t.shape} do not broadcast together"
        ) from None


def _for_kernel(a: npt.NDArray[Any], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """``a`` as the kernels take it: ``dtype``, native byte order, aligned. No copy of an
    array that already is (whatever its strides)."""
    a = np.asarray(a, dtype=dtype)  # converts dtype and byte order only when they differ
    if not a.flags.aligned:
        a = a.copy()
    return a


class KLDivLoss:
    """The loss as a reusable callable, like ``torch.nn.KLDivLoss``.

    ``KLDivLoss(reduction, log_target)(input, target)`` is
    ``kl_div(input, target, reduction, log_target)``; see :func:`kl_div` for the formula
    and the ``"mean"`` vs ``"batchmean"`` note.

    Parameters
    ----------
    reduction : {"none", "sum", "mean", "batchmean"}, default "mean"
    log_target : bool, default False

    Examples
    --------
    >>> import kldiv
    >>> kldiv.KLDivLoss(reduction="batchmean")
    KLDivLoss(reduction='batchmean', log_target=False)
    """

    __slots__ = ("log_target", "reduction")

    def __init__(self, reduction: Reduction = "mean", log_target: bool = False) -> None:
        check_options(reduction, log_target)
        self.reduction: Reduction = reduction
        self.log_target: bool = bool(log_target)

    def __call__(self, input: npt.ArrayLike, target: npt.ArrayLike) -> Result:
        return _kl_div(input, target, self.reduction, self.log_target, stacklevel=3)

    def __repr__(self) -> str:
        return f"KLDivLoss(reduction={self.reduction!r}, log_target={self.log_target})"


def set_num_threads(n: int) -> None:
    """Sets the number of threads of kldiv's own pool (results do not depend on it).

    Parameters
    ----------
    n : int
        At least 1. The default is the ``KLDIV_NUM_THREADS`` environment variable, else the
        number of CPUs.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"the number of threads must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"the number of threads must be at least 1, got {n}")
    _kldiv.set_num_threads(int(n))


def get_num_threads() -> int:
    """The number of threads kldiv's kernels use."""
    return _kldiv.get_num_threads()


def _check_env() -> None:
    value = os.environ.get("KLDIV_NUM_THREADS")
    if value is not None and not (value.strip().isdigit() and int(value) > 0):
        warnings.warn(
            f"KLDIV_NUM_THREADS={value!r} is not a positive integer; using the number of CPUs",
            RuntimeWarning,
            stacklevel=3,
        )

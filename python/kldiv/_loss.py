"""The Python boundary: what NumPy does better than Rust (``asarray``, dtypes and their
promotion, float16, ``out=`` arrays) and the docstrings.

The numerics and the rules live in Rust (``src/``, exposed by ``_kldiv``): the divisor of each
reduction, the broadcasting rule and its error, the reductions' names, the test for arrays the
kernels take as they are, the check of outputs that share memory. This module turns what a
NumPy or PyTorch user passes into the arrays the kernels take, and the kernels' float64 sums
into results of the right dtype.
"""

from __future__ import annotations

import atexit
import os
import warnings
from typing import Any, Literal, Union

import numpy as np
import numpy.typing as npt

from . import _kldiv

Reduction = Literal["none", "sum", "mean", "batchmean"]
REDUCTIONS: tuple[str, ...] = tuple(_kldiv.REDUCTIONS)
_REDUCTION_SET = frozenset(REDUCTIONS)
Result = Union[np.floating[Any], npt.NDArray[np.floating[Any]]]

_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_MEAN_WARNING = (
    "reduction='mean' divides the summed loss by the number of elements, not by the batch "
    "size: it is not the KL divergence. Use reduction='batchmean' for the mathematical "
    "definition ('mean' is kept for parity with PyTorch and R torch)."
)


def kl_div(
    input: npt.ArrayLike,
    target: npt.ArrayLike,
    reduction: Reduction = "mean",
    log_target: bool = False,
    *,
    out: npt.NDArray[np.floating[Any]] | None = None,
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
    out : numpy.ndarray, optional
        For ``reduction="none"`` only: where to write :math:`L` (the broadcast shape and the
        result dtype, writable, not overlapping the inputs; any strides).

    Returns
    -------
    numpy.ndarray or numpy scalar
        ``"none"``: an array of the broadcast shape (``out`` if given). Otherwise a NumPy
        scalar. The dtype is ``numpy.result_type(input, target)`` (float16, float32 or
        float64); float16 is computed in float32, and every sum is accumulated in float64
        and rounded once.

    Raises
    ------
    ValueError
        Unknown ``reduction``, shapes that do not broadcast, or an unusable ``out``.
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
    return _kl_div(input, target, reduction, log_target, out, stacklevel=3)


def kl_div_backward(
    grad_output: npt.ArrayLike,
    input: npt.ArrayLike,
    target: npt.ArrayLike,
    reduction: Reduction = "mean",
    log_target: bool = False,
    *,
    out: tuple[npt.NDArray[np.floating[Any]], npt.NDArray[np.floating[Any]]] | None = None,
) -> tuple[npt.NDArray[np.floating[Any]], npt.NDArray[np.floating[Any]]]:
    r"""Gradients of :func:`kl_div` with respect to ``input`` and ``target``, as PyTorch's
    autograd computes them.

    With :math:`g` = ``grad_output`` divided by the reduction's divisor (1 for ``"sum"`` and
    ``"none"``, ``L.size`` for ``"mean"``, ``input.shape[0]`` for ``"batchmean"``):

    ========== ======================== ==========================================
    log_target :math:`\partial/\partial x` :math:`\partial/\partial t`
    ========== ======================== ==========================================
    False      :math:`-g\,t`             :math:`g\,(\log t + 1 - x)`
    True       :math:`-g\,e^{t}`         :math:`g\,e^{t}\,(t - x + 1)`
    ========== ======================== ==========================================

    evaluated term by term as autograd does, so special values match PyTorch (the target
    gradient is NaN at :math:`t = 0`, for example). Gradients of broadcast arguments are
    summed back to their own shapes.

    Parameters
    ----------
    grad_output : array_like
        The incoming gradient: a scalar for the reducing modes, an array broadcastable to
        the loss's shape for ``"none"``.
    input, target, reduction, log_target
        As for :func:`kl_div`.
    out : (numpy.ndarray, numpy.ndarray), optional
        Where to write ``(grad_input, grad_target)``: the shapes and dtypes of ``input`` and
        ``target``, writable, not overlapping the inputs.

    Returns
    -------
    grad_input, grad_target : numpy.ndarray
        Shaped like ``input`` and ``target``, each in its argument's dtype (as autograd).
    """
    check_options(reduction, log_target)
    p = _Prepared(input, target)
    g = _grad_output(grad_output, reduction, p)
    if out is not None and (not isinstance(out, tuple) or len(out) != 2):
        raise TypeError("out must be a tuple (grad_input, grad_target) of two arrays")
    gx, gt = out if out is not None else (None, None)
    if out is not None:
        _check_out(gx, p.x_shape, p.x_dtype, "out[0]")
        _check_out(gt, p.t_shape, p.t_dtype, "out[1]")
        _check_overlap(p, [("out[0]", gx), ("out[1]", gt)], grad_output=g)
    grad_input, grad_target = _backward(g, p, reduction, log_target, gx, gt)
    assert grad_input is not None and grad_target is not None
    return grad_input, grad_target


def _backward(
    g: npt.NDArray[Any],
    p: _Prepared,
    reduction: str,
    log_target: bool,
    gx: npt.NDArray[Any] | None = None,
    gt: npt.NDArray[Any] | None = None,
    *,
    need: tuple[bool, bool] = (True, True),
) -> tuple[npt.NDArray[Any] | None, npt.NDArray[Any] | None]:
    """The gradients that ``need`` asks for (input's, target's), as :func:`kl_div_backward`
    computes them, ``g`` already checked and converted (``_grad_output``), ``gx``/``gt`` its
    checked ``out`` arrays or None. The rest are None."""
    gx_loss = _loss_shaped(gx, p, p.x_shape, p.x_dtype) if need[0] else None
    gt_loss = _loss_shaped(gt, p, p.t_shape, p.t_dtype) if need[1] else None
    _kldiv.backward(
        p.view(g),
        p.divisor(reduction),
        p.x,
        p.t,
        None if gx_loss is None else p.view(gx_loss),
        None if gt_loss is None else p.view(gt_loss),
        bool(log_target),
    )
    return (
        None if gx_loss is None else _reduce_to(gx_loss, p.x_shape, p.x_dtype, gx),
        None if gt_loss is None else _reduce_to(gt_loss, p.t_shape, p.t_dtype, gt),
    )


def kl_div_and_grad(
    input: npt.ArrayLike,
    target: npt.ArrayLike,
    reduction: Reduction = "mean",
    log_target: bool = False,
    *,
    out: npt.NDArray[np.floating[Any]] | None = None,
) -> tuple[Result, npt.NDArray[np.floating[Any]]]:
    r"""The loss and its gradient with respect to ``input``, in one pass over the data.

    The same as ``(kl_div(input, target, reduction, log_target),
    kl_div_backward(1.0, input, target, reduction, log_target)[0])`` (with ones as
    ``grad_output`` for ``"none"``), but each element is read once: its term is added to
    the sum and its gradient :math:`-t / d` (:math:`-e^{t} / d` with ``log_target``; :math:`d`
    the reduction's divisor) written in the same loop. This is a training step's hot path.

    Parameters
    ----------
    input, target, reduction, log_target
        As for :func:`kl_div` (``"mean"`` warns the same way).
    out : numpy.ndarray, optional
        Where to write the gradient (``input``'s shape and dtype, writable, not overlapping
        the inputs; any strides).

    Returns
    -------
    loss : numpy scalar or numpy.ndarray
        As :func:`kl_div` returns it.
    grad_input : numpy.ndarray
        Shaped like ``input``, in its dtype.
    """
    check_options(reduction, log_target)
    if reduction == "mean":
        warnings.warn(_MEAN_WARNING, UserWarning, stacklevel=2)
    p = _Prepared(input, target)
    if out is not None:
        _check_out(out, p.x_shape, p.x_dtype, "out")
        _check_overlap(p, [("out", out)])
    gx_loss = _loss_shaped(out, p, p.x_shape, p.x_dtype)
    if reduction == "none":
        loss = _kldiv.empty(p.shape, p.compute)
        _kldiv.terms_and_grad(p.x, p.t, p.view(loss), p.view(gx_loss), bool(log_target))
        value: Result = _cast(loss, p.result)
    else:
        divisor = p.divisor(reduction)
        total = _kldiv.sum_and_grad(p.x, p.t, divisor, p.view(gx_loss), bool(log_target))
        value = _scalar(total, divisor, p.result)
    return value, _reduce_to(gx_loss, p.x_shape, p.x_dtype, out)


class _Prepared:
    """Two arguments made ready for the kernels, with what the results need.

    Attributes: ``x``, ``t`` (the arguments in the compute dtype, native, aligned, any
    strides), ``x_shape``, ``t_shape``, ``x_dtype``, ``t_dtype`` (the arguments' own shapes and
    native dtypes: gradients come back in them), ``shape`` (the loss's broadcast shape),
    ``result`` (``numpy.result_type`` of the two), ``compute`` (float32 or float64).
    """

    __slots__ = (
        "compute",
        "result",
        "shape",
        "t",
        "t_dtype",
        "t_shape",
        "x",
        "x_dtype",
        "x_shape",
    )

    def __init__(self, input: npt.ArrayLike, target: npt.ArrayLike) -> None:
        if _kldiv.is_plain_pair(input, target):
            self.x, self.t = input, target  # type: ignore[assignment]
            self.x_shape = self.t_shape = self.shape = self.x.shape
            self.x_dtype = self.t_dtype = self.result = self.compute = self.x.dtype
            return
        # A Python float or int takes the other argument's dtype (NEP 50's weak scalars, as
        # ``numpy.result_type`` promotes them).
        x = None if _weak(input) else _as_float_array(input, "input")
        t = None if _weak(target) else _as_float_array(target, "target")
        if x is None:
            x = _weak_array(input, t.dtype if t is not None else None, "input")
        if t is None:
            t = _weak_array(target, x.dtype, "target")
        self.x_shape, self.t_shape = x.shape, t.shape
        self.x_dtype = _native(x.dtype)
        self.t_dtype = _native(t.dtype)
        self.shape = x.shape if x.shape == t.shape else broadcast_shape(x.shape, t.shape)
        if self.x_dtype == self.t_dtype:
            self.result = self.x_dtype
        else:
            self.result = _native(np.result_type(self.x_dtype, self.t_dtype))
        self.compute = _F32 if self.result == _F16 else self.result
        self.x = self.view(_for_kernel(x, self.compute))
        self.t = self.view(_for_kernel(t, self.compute))

    def divisor(self, reduction: str) -> float:
        """What ``reduction`` divides the sum by, for these arguments (the crate's rule)."""
        return _kldiv.divisor(reduction, self.x_shape, self.t_shape)

    def view(self, a: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """``a`` as the kernels take it. The extension module (rust-numpy) takes at most
        ``MAX_KERNEL_DIMS`` dimensions, NumPy arrays up to 64: beyond that, the axes of length
        1 in the loss's shape, which change nothing, are dropped (a view, no copy)."""
        if len(self.shape) <= MAX_KERNEL_DIMS:
            return a
        keep = [i for i, n in enumerate(self.shape) if n != 1]
        if len(keep) > MAX_KERNEL_DIMS:
            raise ValueError(
                f"the broadcast shape {self.shape} has more than {MAX_KERNEL_DIMS} dimensions "
                "longer than 1; kldiv supports up to that many"
            )
        full = a.reshape((1,) * (len(self.shape) - a.ndim) + a.shape)
        index = tuple(slice(None) if i in keep else 0 for i in range(len(self.shape)))
        return full[(*index, ...)]  # the Ellipsis keeps a 0-d array an array


_F16, _F32, _F64 = _FLOATS
MAX_KERNEL_DIMS: int = _kldiv.MAX_DIMS


def _native(dtype: np.dtype[Any]) -> np.dtype[Any]:
    return dtype if dtype.isnative else dtype.newbyteorder("=")


def _kl_div(
    input: npt.ArrayLike,
    target: npt.ArrayLike,
    reduction: str,
    log_target: bool,
    out: npt.NDArray[Any] | None,
    stacklevel: int,
) -> Result:
    if out is None:
        # The common case checked in Rust ("sum" or "batchmean" of two plain arrays of one
        # dtype and shape): W4, 1000 float32 elements, in half the time. None for the rest.
        value = _kldiv.reduce_plain(input, target, reduction, log_target)
        if value is not None:
            return value
    check_options(reduction, log_target)
    if out is not None and reduction != "none":
        raise ValueError(f"out= is for reduction='none' only, not {reduction!r}")
    p = _Prepared(input, target)
    if reduction == "none":
        if out is not None:
            _check_out(out, p.shape, p.result, "out")
            _check_overlap(p, [("out", out)])
        dest = (
            out if out is not None and p.result == p.compute else _kldiv.empty(p.shape, p.compute)
        )
        _kldiv.terms(p.x, p.t, p.view(dest), bool(log_target))
        if dest is out:
            return out
        if out is not None:
            with np.errstate(over="ignore"):  # beyond float16's range it is +-inf
                out[...] = dest
            return out
        return _cast(dest, p.result)

    if reduction == "mean":
        warnings.warn(_MEAN_WARNING, UserWarning, stacklevel=stacklevel)
    return _scalar(_kldiv.sum(p.x, p.t, bool(log_target)), p.divisor(reduction), p.result)


def partial_sum(input: npt.ArrayLike, target: npt.ArrayLike, log_target: bool = False) -> float:
    """The float64 sum of the loss terms, not rounded: for sums over parts of larger arrays
    (the command line's blocks, Dask's chunks). Arguments as for :func:`kl_div`."""
    check_options("sum", log_target)
    p = _Prepared(input, target)
    return _kldiv.sum(p.x, p.t, bool(log_target))


def grad_part(
    input: npt.ArrayLike, target: npt.ArrayLike, divisor: float, log_target: bool = False
) -> npt.NDArray[Any]:
    """The input gradient (for a grad_output of 1) of a loss whose sum is divided by
    ``divisor``, over one part of larger arrays of one shape (Dask's chunks), in the compute
    dtype (float32 for float16: the caller sums the parts, then rounds once): the same bits
    as the part of :func:`kl_div_and_grad`'s gradient over the whole arrays."""
    check_options("sum", log_target)
    p = _Prepared(input, target)
    gx = _kldiv.empty(p.shape, p.compute)
    _kldiv.sum_and_grad(p.x, p.t, float(divisor), p.view(gx), bool(log_target))
    return gx


def divisor(reduction: str, input_shape: tuple[int, ...], target_shape: tuple[int, ...]) -> float:
    """What ``reduction`` divides the sum by for arguments of these shapes (1 for "none"):
    the crate's rule, ``Reduction::divisor``."""
    return _kldiv.divisor(reduction, input_shape, target_shape)


def broadcast_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """The broadcast shape of an input of shape ``a`` and a target of shape ``b`` (NumPy's rule,
    any number of dimensions), or the crate's ``ValueError`` naming both shapes."""
    return tuple(_kldiv.broadcast_shape(a, b))


def sum_axes(
    shape: tuple[int, ...], loss_ndim: int, loss_shape: tuple[int, ...]
) -> tuple[int, ...]:
    """The axes of a loss-shaped gradient (``loss_shape``, ``loss_ndim`` dimensions) that are
    summed to give the gradient of an argument of ``shape``: those it was broadcast along."""
    lead = loss_ndim - len(shape)
    return tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and loss_shape[lead + i] != 1
    )


def _scalar(total: float, divisor: float, dtype: np.dtype[Any]) -> np.floating[Any]:
    """A kernel's float64 sum divided by ``divisor`` (0/0 is NaN), rounded once to ``dtype``
    as a NumPy scalar (beyond float16's range it is +-inf, as in PyTorch, without a warning).
    Every NaN is the positive quiet NaN, as the kernels make it (x86's 0/0 has the sign bit)."""
    with np.errstate(all="ignore"):
        quotient = np.float64(total) / np.float64(divisor)
        return dtype.type(np.nan if quotient != quotient else quotient)


def _cast(a: npt.NDArray[Any], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """``a`` in ``dtype`` (no copy if it is already): values beyond the range of ``dtype`` become
    +-inf without a warning, as PyTorch's casts do."""
    with np.errstate(over="ignore"):
        return a.astype(dtype, copy=False)


def _grad_output(grad_output: npt.ArrayLike, reduction: str, p: _Prepared) -> npt.NDArray[Any]:
    try:
        g = np.asarray(grad_output)
    except Exception as e:
        raise TypeError(f"grad_output cannot be converted to an array: {e}") from e
    if g.dtype.kind not in "fiu":
        raise TypeError(f"grad_output has dtype {g.dtype}; it must be a real number or array")
    if reduction != "none" and g.shape != ():
        raise ValueError(
            f"grad_output must be a scalar for reduction={reduction!r}, got shape {g.shape}"
        )
    return _for_kernel(g, p.compute)


def _loss_shaped(
    out: npt.NDArray[Any] | None, p: _Prepared, shape: tuple[int, ...], dtype: np.dtype[Any]
) -> npt.NDArray[Any]:
    """Where a kernel writes a gradient of the loss's shape: ``out`` itself when it has that
    shape and the compute dtype, else a new array."""
    if out is not None and shape == p.shape and dtype == p.compute:
        return out
    return _kldiv.empty(p.shape, p.compute)


def _reduce_to(
    g: npt.NDArray[Any],
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    out: npt.NDArray[Any] | None,
) -> npt.NDArray[Any]:
    """A gradient of the loss's shape summed over the axes its argument was broadcast along,
    in the argument's dtype (into ``out`` if given)."""
    if g is out:
        return out
    axes = sum_axes(shape, g.ndim, g.shape)
    if axes:
        with np.errstate(all="ignore"):  # inf + -inf is NaN, as in PyTorch: no warning
            g = np.asarray(g.sum(axis=axes)).reshape(shape)
    if out is not None:
        with np.errstate(over="ignore"):
            out[...] = g
        return out
    return _cast(g, dtype)


def _check_out(out: object, shape: tuple[int, ...], dtype: np.dtype[Any], name: str) -> None:
    """Raises a clear error for an ``out`` array the result cannot be written into (see also
    :func:`_check_overlap`)."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"{name} has shape {out.shape}; the result has shape {shape}")
    if out.dtype != dtype:
        raise TypeError(f"{name} has dtype {out.dtype}; the result has dtype {dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    if not out.flags.aligned:
        raise ValueError(f"{name} is not aligned")


def _check_overlap(
    p: _Prepared,
    outs: list[tuple[str, npt.NDArray[Any]]],
    grad_output: npt.NDArray[Any] | None = None,
) -> None:
    """Raises ``ValueError`` if an output's elements share memory, or it shares memory with
    another output or an argument (the kernels' own check, with the caller's names)."""
    inputs = [("input", p.x), ("target", p.t)]
    if grad_output is not None:
        inputs.append(("grad_output", grad_output))
    _kldiv.check_outputs(inputs, outs)


def check_options(reduction: object, log_target: object) -> None:
    """Raises the errors of a bad ``reduction`` (the crate's) or ``log_target``."""
    if type(reduction) is str and reduction in _REDUCTION_SET and type(log_target) is bool:
        return  # the common case, cheaply
    _kldiv.check_reduction(reduction)
    if not isinstance(log_target, (bool, np.bool_)):
        raise TypeError(f"log_target must be a bool, got {type(log_target).__name__}")


def _as_float_array(obj: object, name: str) -> npt.NDArray[Any]:
    if type(obj) is np.ndarray and obj.dtype in _FLOATS:
        return obj
    try:
        a = np.asarray(obj)
    except Exception as e:  # __array__ raising, ragged lists, ...
        raise TypeError(f"{name} cannot be converted to an array: {e}") from e
    check_dtype(a.dtype, name)
    return a


def check_dtype(dtype: np.dtype[Any], name: str) -> None:
    """Raises the ``TypeError`` of an argument whose dtype kldiv does not compute on (any but
    float16, float32 and float64, in either byte order)."""
    if dtype.newbyteorder("=") not in _FLOATS:
        raise TypeError(
            f"{name} has dtype {dtype}; kldiv computes on float16, float32 or float64 "
            f"arrays (convert it, e.g. with .astype(np.float32))"
        )


def _weak(obj: object) -> bool:
    """Whether ``obj`` is a Python float or int (not a bool): a weak scalar under NEP 50."""
    return type(obj) is float or type(obj) is int


def _weak_array(obj: Any, dtype: np.dtype[Any] | None, name: str) -> npt.NDArray[Any]:
    """A weak scalar as a 0-d array of ``dtype`` (a float or int by itself: as NumPy makes
    it)."""
    if dtype is None:
        return _as_float_array(obj, name)
    try:
        with np.errstate(over="ignore"):
            return np.asarray(obj, dtype=dtype)
    except OverflowError as e:
        raise ValueError(f"{name} {obj!r} does not fit in {dtype}") from e


def _for_kernel(a: npt.NDArray[Any], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """``a`` as the kernels take it: ``dtype``, native byte order, aligned. No copy of an
    array that already is (whatever its strides)."""
    if a.dtype != dtype:
        a = np.asarray(a, dtype=dtype)  # converts dtype and byte order
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
        return _kl_div(input, target, self.reduction, self.log_target, None, stacklevel=3)

    def __repr__(self) -> str:
        return f"KLDivLoss(reduction={self.reduction!r}, log_target={self.log_target})"


def set_num_threads(n: int) -> None:
    """Sets the number of threads of kldiv's own pool (results do not depend on it).

    Parameters
    ----------
    n : int
        From 1 to ``MAX_THREADS`` (1024). The default is the ``KLDIV_NUM_THREADS`` environment
        variable, else the number of CPUs.

    Raises
    ------
    ValueError
        ``n`` below 1 or above ``MAX_THREADS``.
    RuntimeError
        The operating system would not start the threads (the pool stays as it was).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"the number of threads must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"the number of threads must be at least 1, got {n}")
    if n > MAX_THREADS:
        raise ValueError(f"{n} threads asked for; kldiv runs on at most {MAX_THREADS} threads")
    _kldiv.set_num_threads(int(n))


def get_num_threads() -> int:
    """The number of threads kldiv's kernels use."""
    return _kldiv.get_num_threads()


def simd_level() -> str:
    """The instruction set the kernels run at: ``"scalar"``, ``"avx2"`` or ``"avx512"``.

    The best the CPU supports, unless the ``KLDIV_SIMD`` environment variable (read once, at
    the first call) asks for a lower one. Every level gives the same bits.
    """
    return _kldiv.simd_level()


MAX_THREADS: int = _kldiv.MAX_THREADS
_SIMD_LEVELS = ("scalar", "avx2", "avx512")


def _check_env() -> None:
    """Warns about environment variables that kldiv ignores (and says what it does instead)."""
    value = os.environ.get("KLDIV_NUM_THREADS")
    if value is not None and not (value.strip().isdigit() and 1 <= int(value) <= MAX_THREADS):
        warnings.warn(
            f"KLDIV_NUM_THREADS={value!r} is not an integer from 1 to {MAX_THREADS}; "
            "using the number of CPUs",
            RuntimeWarning,
            stacklevel=3,
        )
    level = os.environ.get("KLDIV_SIMD")
    if level is not None:
        name = level.strip().lower()
        best = _kldiv.detected_simd_level()
        if name not in _SIMD_LEVELS:
            warnings.warn(
                f"KLDIV_SIMD={level!r} is not one of {', '.join(_SIMD_LEVELS)}; using {best}",
                RuntimeWarning,
                stacklevel=3,
            )
        elif _SIMD_LEVELS.index(name) > _SIMD_LEVELS.index(best):
            warnings.warn(
                f"KLDIV_SIMD={level!r}: this CPU supports {best} at best; using {best}",
                RuntimeWarning,
                stacklevel=3,
            )


# Kernel calls still running in daemon threads at interpreter exit stop, and exit waits for
# them: one taking the GIL back during finalization would abort the process.
atexit.register(_kldiv.shutdown)

"""Losses from logits (distillation): the NumPy side of the crate's ``logits`` module.

The kernels take the logits themselves: per row, both softmaxes at temperature ``T``, the
divergence, and the gradient with respect to the student's logits in the same pass over the
row. This module turns what a NumPy user passes into what they take (dtypes, float16 as its
bits) and writes the docstrings; the rules (shapes, options, reductions) are the crate's.
"""

from __future__ import annotations

from typing import Any, Union

import numpy as np
import numpy.typing as npt

from . import _kldiv
from ._loss import Reduction, _cast, _for_kernel, _native, _scalar, check_dtype

Result = Union[np.floating[Any], npt.NDArray[np.floating[Any]]]

_F16, _F32, _F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
_KINDS = {_F16: "float16", _F32: "float32", _F64: "float64"}


class Logits:
    """Logits as the kernels take them: ``array`` (float32/float64, or the uint16 bits of
    float16 and bfloat16 values), ``kind`` (the dtype's name), ``dtype`` (what results in it
    are returned as: a NumPy dtype, or for bfloat16 the caller's own)."""

    __slots__ = ("array", "dtype", "kind")

    def __init__(self, array: npt.NDArray[Any], kind: str, dtype: Any) -> None:
        self.array, self.kind, self.dtype = array, kind, dtype

    @classmethod
    def of(cls, obj: object, name: str) -> Logits:
        """NumPy logits (float16, float32 or float64, any byte order and strides)."""
        try:
            a = np.asarray(obj)
        except Exception as e:
            raise TypeError(f"{name} cannot be converted to an array: {e}") from e
        check_dtype(a.dtype, name)
        dtype = _native(a.dtype)
        a = _for_kernel(a, dtype)
        if a.ndim > _kldiv.MAX_DIMS:
            raise ValueError(f"{name} has {a.ndim} dimensions; kldiv supports {_kldiv.MAX_DIMS}")
        if dtype == _F16:
            return cls(a.view(np.uint16), "float16", dtype)
        return cls(a, _KINDS[dtype], dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def as_float64(self) -> Logits:
        """These logits in float64 (a copy unless they are), for a float64 partner."""
        if self.kind == "float64":
            return self
        if self.kind == "float32":
            return Logits(self.array.astype(np.float64), "float64", _F64)
        raise TypeError(f"{self.kind} logits do not compute with float64 logits")


def _real(value: object, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if isinstance(value, np.complexfloating):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def _ignore_index(value: object) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"ignore_index must be an int, got {type(value).__name__}")
    return int(value)


def _int_array(obj: object, name: str) -> npt.NDArray[np.int64]:
    a = np.asarray(obj)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {a.dtype}")
    return _for_kernel(a, np.dtype(np.int64))


def _float_array(obj: object, name: str) -> npt.NDArray[np.float64]:
    a = np.asarray(obj)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return _for_kernel(a, _F64)


def pair(student: Logits, teacher: Logits) -> tuple[Logits, Logits]:
    """Both logits in kinds that compute in one type: float64 with float64 (the other
    converted), float32/float16/bfloat16 with each other as they are."""
    if (student.kind == "float64") != (teacher.kind == "float64"):
        return student.as_float64(), teacher.as_float64()
    return student, teacher


def call(
    student: Logits,
    teacher: Logits,
    divergence: str,
    beta: float,
    temperature: object,
    labels: object,
    ignore_index: object,
    weights: object,
    reduction: object,
    grad: npt.NDArray[Any] | None = None,
    grad_output: float = 1.0,
    grad_rows: npt.NDArray[Any] | None = None,
) -> tuple[float, npt.NDArray[np.float64] | None, float]:
    """Runs the kernel: the float64 loss (reduced, or the rows' sum for "none"), the rows'
    losses for "none", and the rows' weight ``Σ w_i``; with ``grad`` (uint16 bits for
    float16/bfloat16), the gradient for ``grad_output`` (``grad_rows`` for "none") is
    written into it."""
    _kldiv.check_reduction(reduction)
    t = _real(temperature, "temperature")
    ignore_index = _ignore_index(ignore_index)
    lab = None if labels is None else _int_array(labels, "labels")
    w = None if weights is None else _float_array(weights, "weights")
    rows = None
    if reduction == "none":
        rows = np.empty(tuple(logits_shape(student, teacher)[:-1]), dtype=np.float64)
    value, wsum = _kldiv.logits(
        student.array,
        student.kind,
        teacher.array,
        teacher.kind,
        divergence,
        beta,
        t,
        lab,
        ignore_index,
        w,
        str(reduction),
        rows,
        grad,
        grad_output,
        grad_rows,
    )
    return value, rows, wsum


def logits_shape(student: Logits, teacher: Logits) -> tuple[int, ...]:
    """The gradient's shape: the rows broadcast, then the vocabulary (the crate's rule)."""
    return tuple(_kldiv.logits_shape(student.shape, teacher.shape))


def _loss_result(
    value: float, rows: npt.NDArray[np.float64] | None, dtype: np.dtype[Any]
) -> Result:
    if rows is None:
        return _scalar(value, 1.0, dtype)
    return _cast(rows, dtype)


def _grad_array(student: Logits, shape: tuple[int, ...]) -> npt.NDArray[Any]:
    if student.kind == "float16":
        return _kldiv.empty(shape, np.dtype(np.uint16))
    return _kldiv.empty(shape, student.dtype)


_JSD = object()  # _run's "no reverse given": the JSD's functions


def _run(
    student_logits: npt.ArrayLike,
    teacher_logits: npt.ArrayLike,
    *,
    with_grad: bool,
    reverse: object = _JSD,
    beta: object = 0.0,
    temperature: object,
    labels: object,
    ignore_index: object,
    weights: object,
    reduction: object,
) -> Result | tuple[Result, npt.NDArray[Any]]:
    """A public function's call: the KL (``reverse`` or not), or without ``reverse`` the JSD."""
    divergence = "jsd" if reverse is _JSD else _divergence(reverse)
    beta = _beta(beta)
    s, t = pair(
        Logits.of(student_logits, "student_logits"), Logits.of(teacher_logits, "teacher_logits")
    )
    result = np.result_type(s.dtype, t.dtype)
    grad = _grad_array(s, logits_shape(s, t)) if with_grad else None
    value, rows, _ = call(
        s, t, divergence, beta, temperature, labels, ignore_index, weights, reduction, grad
    )
    loss = _loss_result(value, rows, result)
    if grad is None:
        return loss
    return loss, grad.view(np.float16) if s.kind == "float16" else grad


def _divergence(reverse: object) -> str:
    if not isinstance(reverse, (bool, np.bool_)):
        raise TypeError(f"reverse must be a bool, got {type(reverse).__name__}")
    return "reverse" if reverse else "forward"


def _beta(beta: object) -> float:
    return _real(beta, "beta")


_COMMON = r"""
    Parameters
    ----------
    student_logits, teacher_logits : array_like
        Logits of shape ``(*rows, V)``: the last axis is the vocabulary, every other axis
        indexes rows (tokens). The rows broadcast under NumPy rules; ``V`` must match.
        float16, float32 or float64 (float16 computed in float32; float64 with float32
        computes in float64); any strides, no copy of float32/float64 arrays.
    temperature : float, default 1.0
        ``T > 0``: the logits are divided by it. No ``T**2`` factor (Hinton-style
        distillation multiplies by it itself).
    labels : array_like of int, optional
        Shape ``rows``: rows whose label is ``ignore_index`` do not count (weight 0).
    ignore_index : int, default -100
    weights : array_like of float, optional
        Shape ``rows``: per-row weights ``w_i`` (times 0 where the label is ignored).
    reduction : {"none", "sum", "mean", "batchmean"}, default "mean"
        ``"none"``: the array of ``w_i L_i``, shape ``rows``. ``"sum"``: their sum.
        ``"mean"``: the sum over :math:`\sum_i w_i` (the mean over the rows that count; 0
        when none counts). ``"batchmean"``: the sum over ``student_logits.shape[0]``.
"""


def kl_div_logits(
    student_logits: npt.ArrayLike,
    teacher_logits: npt.ArrayLike,
    *,
    temperature: float = 1.0,
    reverse: bool = False,
    labels: npt.ArrayLike | None = None,
    ignore_index: int = -100,
    weights: npt.ArrayLike | None = None,
    reduction: Reduction = "mean",
) -> Result:
    r"""The KL divergence between a teacher's and a student's softmax, from their logits.

    Per row, with :math:`s = \operatorname{log\_softmax}(z_s / T)`,
    :math:`t = \operatorname{log\_softmax}(z_t / T)`, :math:`P = e^t` (teacher) and
    :math:`Q = e^s` (student):

    .. math::

        L = \sum_v P_v (t_v - s_v) \quad\text{(forward, } KL(P \| Q)\text{)}, \qquad
        L = \sum_v Q_v (s_v - t_v) \quad\text{(``reverse=True``, } KL(Q \| P)\text{)}

    A term whose weighting probability is 0 is 0 (masked entries, logits of -inf, give no
    NaN); a forward KL with :math:`P > 0` where :math:`Q = 0` is +inf. A row holding a NaN,
    or only -inf, is NaN. Sums are float64, the same bits for every thread count, SIMD level
    and memory layout.
    {common}
    reverse : bool, default False
        :math:`KL(Q \| P)` instead of :math:`KL(P \| Q)`.

    Returns
    -------
    numpy scalar or numpy.ndarray
        In ``numpy.result_type`` of the two logits' dtypes.

    Raises
    ------
    ValueError
        Vocabularies that differ, rows that do not broadcast, labels or weights of another
        shape, ``temperature`` not positive and finite, an unknown ``reduction``.
    TypeError
        Logits that are not float16/32/64, labels that are not integers.

    Examples
    --------
    >>> import numpy as np, kldiv
    >>> student = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    >>> teacher = np.array([[1.0, 2.0, 4.0]], dtype=np.float32)
    >>> float(kldiv.kl_div_logits(student, teacher, temperature=2.0))  # doctest: +ELLIPSIS
    0.0301...
    """
    return _run(with_grad=False, **locals())  # type: ignore[return-value]


def kl_div_logits_and_grad(
    student_logits: npt.ArrayLike,
    teacher_logits: npt.ArrayLike,
    *,
    temperature: float = 1.0,
    reverse: bool = False,
    labels: npt.ArrayLike | None = None,
    ignore_index: int = -100,
    weights: npt.ArrayLike | None = None,
    reduction: Reduction = "mean",
) -> tuple[Result, npt.NDArray[Any]]:
    r""":func:`kl_div_logits` and its gradient with respect to ``student_logits``, from one
    pass over each row.

    The gradient of the returned loss (for ``"none"``: of the sum of the rows' losses) is,
    per row, :math:`w_i (Q - P) / T` (forward) or :math:`w_i Q (s - t - L) / T` (reverse),
    divided as the reduction divides; exactly 0 on rows that do not count. It has the
    broadcast shape of the logits and the student's dtype.

    Examples
    --------
    >>> import numpy as np, kldiv
    >>> s = np.zeros((2, 3), dtype=np.float32)
    >>> t = np.array([[0, 0, 0], [0, 0, 1]], dtype=np.float32)
    >>> loss, grad = kldiv.kl_div_logits_and_grad(s, t, reduction="sum")
    >>> grad.shape, grad.dtype
    ((2, 3), dtype('float32'))
    """
    return _run(with_grad=True, **locals())  # type: ignore[return-value]


def jsd_logits(
    student_logits: npt.ArrayLike,
    teacher_logits: npt.ArrayLike,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    labels: npt.ArrayLike | None = None,
    ignore_index: int = -100,
    weights: npt.ArrayLike | None = None,
    reduction: Reduction = "mean",
) -> Result:
    r"""The generalized Jensen-Shannon divergence between a teacher's and a student's softmax,
    from their logits (GKD's loss, as TRL and Liger-Kernel define it).

    Per row, with :math:`P`, :math:`Q` as in :func:`kl_div_logits` and
    :math:`M = \beta P + (1 - \beta) Q`:

    .. math::

        L = \beta\, KL(P \| M) + (1 - \beta)\, KL(Q \| M)

    :math:`\beta = 0` is exactly the forward KL :math:`KL(P \| Q)` and :math:`\beta = 1`
    exactly the reverse KL :math:`KL(Q \| P)`.
    {common}
    beta : float, default 0.5
        :math:`\beta \in [0, 1]`.

    Examples
    --------
    >>> import numpy as np, kldiv
    >>> s = np.array([[0.0, 1.0, 2.0]])
    >>> float(kldiv.jsd_logits(s, s))
    0.0
    """
    return _run(with_grad=False, **locals())  # type: ignore[return-value]


def jsd_logits_and_grad(
    student_logits: npt.ArrayLike,
    teacher_logits: npt.ArrayLike,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    labels: npt.ArrayLike | None = None,
    ignore_index: int = -100,
    weights: npt.ArrayLike | None = None,
    reduction: Reduction = "mean",
) -> tuple[Result, npt.NDArray[Any]]:
    r""":func:`jsd_logits` and its gradient with respect to ``student_logits``, from one pass
    over each row: per row :math:`w_i (1 - \beta) Q (s - m - K) / T` with :math:`m = \ln M`
    and :math:`K = \sum_v Q (s - m)`, divided as the reduction divides.

    Examples
    --------
    >>> import numpy as np, kldiv
    >>> s = np.array([[0.0, 1.0, 2.0]])
    >>> loss, grad = kldiv.jsd_logits_and_grad(s, s + [[0.0, 0.0, 1.0]], beta=0.5)
    >>> bool(abs(grad.sum()) < 1e-15)  # a softmax's gradient sums to 0 over each row
    True
    """
    return _run(with_grad=True, **locals())  # type: ignore[return-value]


for _f in (kl_div_logits, jsd_logits):
    _f.__doc__ = (_f.__doc__ or "").replace("{common}", _COMMON)
del _f

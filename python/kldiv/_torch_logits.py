"""Losses from logits on PyTorch tensors (re-exported by :mod:`kldiv.torch`).

CPU tensors of float32, float64, bfloat16 and float16 are read in place by the crate's kernels
(bfloat16 and float16 as their bits, computed in float32): the forward pass of a student that
requires grad computes the loss and the gradient in one pass over each row, and backward hands
that gradient over. Everything else is computed by :func:`_composite_loss`, PyTorch operations
with the same definitions: other devices, ``torch.func`` transforms, forward-mode AD, tracing,
double backward (``create_graph=True``), and the gradients of a teacher or of weights that
require grad. The drop-ins for TRL and torchtune at the end turn their arguments and
reductions into these.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.overrides import has_torch_function

from . import _kldiv, _logits
from ._logits import Logits

_KINDS = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
}
_BITS = (torch.bfloat16, torch.float16)


class _Spec(NamedTuple):
    """What a call asks for, less the tensors that autograd tracks."""

    divergence: str  # "forward", "reverse", "jsd" or "cross_entropy"
    beta: float
    temperature: float
    labels: Tensor | None
    ignore_index: int
    reduction: str


def _composite(*tensors: Tensor | None) -> bool:
    from .torch import _composite as composite

    return composite(*tensors)


def _fast(*tensors: Tensor | None) -> bool:
    """Whether the kernels read these tensors (else PyTorch's operations compute)."""
    present = [t for t in tensors if t is not None]
    return (
        all(
            type(t) in (Tensor, torch.nn.Parameter)
            and t.device.type == "cpu"
            and t.layout == torch.strided
            for t in present
        )
        and not has_torch_function(present)
        and not _composite(*present)
    )


def _logits_of(x: Tensor) -> Logits:
    """A tensor's memory as the kernels take it, without copying (bits for 16-bit floats)."""
    x = x.detach().resolve_conj().resolve_neg()
    if x.dtype in _BITS:
        return Logits(x.view(torch.int16).numpy().view(np.uint16), _KINDS[x.dtype], x.dtype)
    return Logits(x.numpy(), _KINDS[x.dtype], x.dtype)


def _bits(grad: Tensor) -> np.ndarray:
    return grad.view(torch.int16).numpy().view(np.uint16) if grad.dtype in _BITS else grad.numpy()


def _compute_dtype(student: Tensor, teacher: Tensor) -> torch.dtype:
    """float64 if either logits are float64, else float32 (16-bit floats compute in float32)."""
    f64 = torch.float64 in (student.dtype, teacher.dtype)
    return torch.float64 if f64 else torch.float32


def _result_dtype(student: Tensor, teacher: Tensor) -> torch.dtype:
    return torch.promote_types(student.dtype, teacher.dtype)


def _pair(student: Tensor, teacher: Tensor) -> tuple[Logits, Logits]:
    """Both logits for the kernels: float64 with float64 (the other converted), else as they are."""
    if _compute_dtype(student, teacher) == torch.float64:
        student, teacher = student.to(torch.float64), teacher.to(torch.float64)
    return _logits_of(student), _logits_of(teacher)


def _run(
    student: Tensor,
    teacher: Tensor,
    weights: Tensor | None,
    spec: _Spec,
    grad: Tensor | None = None,
    grad_output: float = 1.0,
    grad_rows: Tensor | None = None,
) -> Tensor:
    """The kernel's loss (reduced, or the rows' for "none") in the result dtype; with ``grad``
    (a C-order tensor of the student's dtype and the broadcast shape), the gradient for
    ``grad_output`` (``grad_rows`` for "none") is written into it."""
    s, t = _pair(student, teacher)
    labels = None if spec.labels is None else spec.labels.detach().to(torch.int64).numpy()
    w = None if weights is None else weights.detach().to(torch.float64).numpy()
    go_rows = None
    if grad_rows is not None:
        go_rows = grad_rows.detach().to(torch.float64).contiguous().numpy()
    value, rows, _ = _logits.call(
        s,
        t,
        spec.divergence,
        spec.beta,
        spec.temperature,
        labels,
        spec.ignore_index,
        w,
        spec.reduction,
        None if grad is None else _bits(grad),
        grad_output,
        go_rows,
    )
    dtype = _result_dtype(student, teacher)
    if rows is None:
        return torch.scalar_tensor(value, dtype=dtype)
    return torch.from_numpy(rows).to(dtype)


_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


def _grad_tensor(student: Tensor, teacher: Tensor) -> Tensor:
    """The student's gradient, from kldiv's pool of result memory: a training step's gradient
    is the size of the last one, and memory already mapped is not faulted in again."""
    shape = tuple(_kldiv.logits_shape(tuple(student.shape), tuple(teacher.shape)))
    if student.dtype in _BITS:
        bits = _kldiv.empty(shape, np.dtype(np.uint16))
        return torch.from_numpy(bits).view(student.dtype)
    return torch.from_numpy(_kldiv.empty(shape, np.dtype(_NUMPY[student.dtype])))


class _LogitsLoss(torch.autograd.Function):
    """A loss from logits by the kernels. With a student that requires grad (and only it) and a
    reduced loss, forward computes the gradient in the same pass and keeps it for backward."""

    @staticmethod
    def forward(
        ctx: Any, student: Tensor, teacher: Tensor, weights: Tensor | None, spec: _Spec
    ) -> Tensor:
        need_s, need_t, need_w = ctx.needs_input_grad[:3]
        fused = need_s and not need_t and not need_w and spec.reduction != "none"
        grad = _grad_tensor(student, teacher) if fused else None
        loss = _run(student, teacher, weights, spec, grad)
        ctx.spec, ctx.grad = spec, grad
        ctx.save_for_backward(student, teacher, weights)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        student, teacher, weights = ctx.saved_tensors
        need = tuple(ctx.needs_input_grad[:3])
        spec: _Spec = ctx.spec
        # Handed over once: autograd may then keep it as .grad without a copy; a second
        # backward (retain_graph=True) computes it again.
        grad, ctx.grad = ctx.grad, None
        # (The saved tensors passed forward's checks; only grad_output is new.)
        if torch.is_grad_enabled() or need[1] or need[2] or _composite(grad_output):
            return (*_composite_grads(student, teacher, weights, spec, grad_output, need), None)
        if not need[0]:
            return None, None, None, None
        if grad is not None:
            go = float(grad_output)
            if go != 1.0:
                grad.mul_(go)
        else:
            grad = _grad_tensor(student, teacher)
            if spec.reduction == "none":
                _run(student, teacher, weights, spec, grad, grad_rows=grad_output)
            else:
                _run(student, teacher, weights, spec, grad, grad_output=float(grad_output))
        if grad.shape != student.shape:
            grad = grad.sum_to_size(student.shape)
        return grad, None, None, None


def _composite_grads(
    student: Tensor,
    teacher: Tensor,
    weights: Tensor | None,
    spec: _Spec,
    grad_output: Tensor,
    need: tuple[bool, ...],
) -> tuple[Tensor | None, ...]:
    """The gradients asked for, by autograd over :func:`_composite_loss`: differentiable
    themselves when backward builds a graph (``create_graph=True``)."""
    create = torch.is_grad_enabled()
    with torch.enable_grad():
        args = [
            x if x is None or create else x.detach().requires_grad_(n)
            for x, n in zip((student, teacher, weights), need)
        ]
        loss = _composite_loss(args[0], args[1], args[2], spec)  # type: ignore[arg-type]
        wrt = [a for a, n in zip(args, need) if n]
        grads = iter(torch.autograd.grad(loss, wrt, grad_output, create_graph=create))
    return tuple(next(grads) if n else None for n in need)


def _safe(keep: Tensor, x: Tensor) -> Tensor:
    """``x`` where ``keep``, else 0: a product with a zero weight is 0 and its gradient too,
    where ``x`` is infinite or NaN (``-inf - -inf`` at a masked entry)."""
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _composite_terms(student: Tensor, teacher: Tensor, spec: _Spec) -> Tensor:
    """The terms of the divergence, shape of the broadcast logits, in the compute dtype."""
    dtype = _compute_dtype(student, teacher)
    temperature = spec.temperature
    s = torch.log_softmax(student.to(dtype) / temperature, -1)
    t = torch.log_softmax(teacher.to(dtype) / temperature, -1)
    divergence, beta = spec.divergence, spec.beta
    if divergence == "jsd" and beta in (0.0, 1.0):
        divergence = "forward" if beta == 0.0 else "reverse"
    if divergence in ("forward", "cross_entropy"):
        p = t.exp()
        keep = p > 0
        if divergence == "cross_entropy":
            return -p * _safe(keep, s)
        return p * _safe(keep, t - s)
    if divergence == "reverse":
        q = s.exp()
        return q * _safe(q > 0, s - t)
    p, q = t.exp(), s.exp()
    # ln M; where both sides are masked, a stand-in (the terms are 0 there): logaddexp's
    # gradient at (-inf, -inf) is NaN.
    either = (p > 0) | (q > 0)
    m = torch.logaddexp(_safe(either, t + math.log(beta)), _safe(either, s + math.log1p(-beta)))
    return beta * p * _safe(p > 0, t - m) + (1 - beta) * q * _safe(q > 0, s - m)


def _composite_loss(
    student: Tensor, teacher: Tensor, weights: Tensor | None, spec: _Spec
) -> Tensor:
    """The loss from PyTorch's operations (any device, differentiable any number of times),
    with the kernels' definitions: rows that do not count give exactly 0."""
    rows = _composite_terms(student, teacher, spec).sum(-1)
    w = None
    if weights is not None:
        w = weights.to(rows.dtype)
    if spec.labels is not None:
        counts = (spec.labels != spec.ignore_index).to(rows.dtype)
        w = counts if w is None else w * counts
    if w is not None:
        w = w.expand(rows.shape)
        rows = _safe(w != 0, rows) * w
    result = _result_dtype(student, teacher)
    if spec.reduction == "none":
        return rows.to(result)
    total = rows.sum()
    if spec.reduction == "mean":
        wsum = rows.new_tensor(float(rows.numel())) if w is None else w.sum()
        nonzero = wsum != 0
        total = _safe(nonzero, total / torch.where(nonzero, wsum, torch.ones_like(wsum)))
    elif spec.reduction == "batchmean":
        total = total / (student.shape[0] if student.dim() else 1)
    return total.to(result)


def _loss(
    student: Tensor,
    teacher: Tensor,
    spec: _Spec,
    weights: Tensor | None,
) -> Tensor:
    for name, x in (("student_logits", student), ("teacher_logits", teacher)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
        if x.dtype not in _KINDS:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if spec.labels is not None and (
        not isinstance(spec.labels, Tensor)
        or spec.labels.dtype.is_floating_point
        or spec.labels.dtype.is_complex
        or spec.labels.dtype == torch.bool
    ):
        raise TypeError("labels must be a tensor of integers")
    if weights is not None and not isinstance(weights, Tensor):
        weights = torch.as_tensor(weights, dtype=torch.float64)
    _kldiv.check_reduction(spec.reduction)
    _kldiv.logits_check(
        tuple(student.shape),
        tuple(teacher.shape),
        None if spec.labels is None else tuple(spec.labels.shape),
        None if weights is None else tuple(weights.shape),
        spec.temperature,
        spec.divergence,
        spec.beta,
    )
    if _fast(student, teacher, weights, spec.labels):
        return _LogitsLoss.apply(student, teacher, weights, spec)  # type: ignore[no-any-return]
    return _composite_loss(student, teacher, weights, spec)


def kl_div_logits(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    reverse: bool = False,
    labels: Tensor | None = None,
    ignore_index: int = -100,
    weights: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""The KL divergence between a teacher's and a student's softmax, from their logits, with
    autograd (see :func:`kldiv.kl_div_logits` for the formulas, shapes and reductions).

    CPU tensors of float32, float64, bfloat16 and float16 are read in place (the 16-bit ones
    computed in float32); a student that requires grad gets its gradient, in its dtype, from
    the forward pass. The loss has the two logits' promoted dtype. A teacher or weights that
    require grad get theirs from PyTorch's operations, as do other devices, ``torch.func``
    and double backward.

    Examples
    --------
    >>> import torch, kldiv.torch
    >>> student = torch.randn(8, 100, requires_grad=True)
    >>> teacher = torch.randn(8, 100)
    >>> kldiv.torch.kl_div_logits(student, teacher, temperature=2.0).backward()
    >>> student.grad.shape
    torch.Size([8, 100])
    """
    spec = _Spec(
        _logits._divergence(reverse),
        0.0,
        _logits._real(temperature, "temperature"),
        labels,
        _logits._ignore_index(ignore_index),
        reduction,
    )
    return _loss(student_logits, teacher_logits, spec, weights)


def jsd_logits(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    ignore_index: int = -100,
    weights: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""The generalized Jensen-Shannon divergence between a teacher's and a student's softmax,
    from their logits, with autograd (see :func:`kldiv.jsd_logits`; tensors as in
    :func:`kl_div_logits`): :math:`\beta KL(P \| M) + (1 - \beta) KL(Q \| M)`,
    :math:`M = \beta P + (1 - \beta) Q`.

    Examples
    --------
    >>> import torch, kldiv.torch
    >>> student = torch.randn(8, 100, requires_grad=True)
    >>> kldiv.torch.jsd_logits(student, torch.randn(8, 100), beta=0.5).backward()
    """
    spec = _Spec(
        "jsd",
        _logits._beta(beta),
        _logits._real(temperature, "temperature"),
        labels,
        _logits._ignore_index(ignore_index),
        reduction,
    )
    return _loss(student_logits, teacher_logits, spec, weights)


class _LogitsModule(torch.nn.Module):
    """A loss from logits as a module: its options are attributes; ``forward(student_logits,
    teacher_logits, labels=None, weights=None)``."""

    def __init__(self, temperature: float, ignore_index: int, reduction: str) -> None:
        super().__init__()
        self.temperature, self.ignore_index, self.reduction = temperature, ignore_index, reduction

    def _options(self) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        labels: Tensor | None = None,
        weights: Tensor | None = None,
    ) -> Tensor:
        fn = jsd_logits if "beta" in self._options() else kl_div_logits
        return fn(  # type: ignore[operator]
            student_logits,
            teacher_logits,
            temperature=self.temperature,
            labels=labels,
            ignore_index=self.ignore_index,
            weights=weights,
            reduction=self.reduction,
            **self._options(),
        )


class KLDivLogitsLoss(_LogitsModule):
    """:func:`kl_div_logits` as a module: ``forward(student_logits, teacher_logits,
    labels=None, weights=None)``.

    Examples
    --------
    >>> import torch, kldiv.torch
    >>> loss_fn = kldiv.torch.KLDivLogitsLoss(temperature=2.0)
    >>> loss_fn(torch.randn(4, 10, requires_grad=True), torch.randn(4, 10)).backward()
    """

    def __init__(
        self,
        temperature: float = 1.0,
        reverse: bool = False,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(temperature, ignore_index, reduction)
        self.reverse = reverse

    def _options(self) -> dict[str, Any]:
        return {"reverse": self.reverse}


class JSDLogitsLoss(_LogitsModule):
    """:func:`jsd_logits` as a module: ``forward(student_logits, teacher_logits, labels=None,
    weights=None)``.

    Examples
    --------
    >>> import torch, kldiv.torch
    >>> loss_fn = kldiv.torch.JSDLogitsLoss(beta=0.5)
    >>> loss_fn(torch.randn(4, 10, requires_grad=True), torch.randn(4, 10)).backward()
    """

    def __init__(
        self,
        beta: float = 0.5,
        temperature: float = 1.0,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(temperature, ignore_index, reduction)
        self.beta = beta

    def _options(self) -> dict[str, Any]:
        return {"beta": self.beta}


# TRL's and torchtune's losses. Their definitions are theirs; where they differ from
# mathematics the difference is kept (and said), so that a script changes one import only.

_TRL_IGNORE = -100  # TRL masks labels == -100, whatever the model's ignore_index


def generalized_jsd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    num_items_in_batch: Any = None,
) -> Tensor:
    r"""TRL's ``GKDTrainer.generalized_jsd_loss``: the same arguments, values and gradients.

    Per token, :math:`\beta KL(P \| M) + (1 - \beta) KL(Q \| M)` (forward KL at
    :math:`\beta = 0`, reverse at 1); tokens whose label is -100 do not count. TRL's
    reductions: ``"batchmean"`` divides the sum by the number of counted tokens with
    ``labels`` (at least 1) and by ``student_logits.shape[0]`` without; ``"sum"``;
    ``"mean"`` divides by the number of terms (tokens times vocabulary); ``"none"`` returns
    the terms themselves (computed as TRL computes them, with PyTorch's operations);
    ``num_items_in_batch`` divides the sum by it, whatever ``reduction`` says.

    Examples
    --------
    >>> import torch, kldiv.torch
    >>> s = torch.randn(2, 5, 50, requires_grad=True)
    >>> t = torch.randn(2, 5, 50)
    >>> labels = torch.tensor([[1, 2, 3, -100, -100], [4, 5, 6, 7, 8]])
    >>> kldiv.torch.generalized_jsd_loss(s, t, labels, beta=0.5).backward()
    """
    beta = _logits._beta(beta)
    spec = _Spec("jsd", beta, _logits._real(temperature, "temperature"), labels, _TRL_IGNORE, "sum")
    if num_items_in_batch is None and reduction == "none":
        return _trl_terms(student_logits, teacher_logits, spec)
    total = _loss(student_logits, teacher_logits, spec, None)
    if num_items_in_batch is not None:
        if isinstance(num_items_in_batch, Tensor):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch
    vocab = student_logits.shape[-1]
    if labels is not None:
        count = int((labels != _TRL_IGNORE).sum())
    else:
        count = math.prod(
            _kldiv.logits_shape(tuple(student_logits.shape), tuple(teacher_logits.shape))[:-1]
        )
    if reduction == "batchmean":
        if labels is not None:
            return total / max(count, 1)
        return total / max(student_logits.shape[0], 1)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / (count * vocab) if count * vocab else total / 0.0
    return _trl_terms(student_logits, teacher_logits, spec)  # TRL's "anything else"


def _trl_terms(student: Tensor, teacher: Tensor, spec: _Spec) -> Tensor:
    """TRL's unreduced terms: the JSD's elementwise terms, the ignored tokens' rows dropped."""
    terms = _composite_terms(student, teacher, spec).to(_result_dtype(student, teacher))
    if spec.labels is not None:
        terms = terms[spec.labels != _TRL_IGNORE]
    return terms


class _TorchtuneKD(torch.nn.Module):
    """torchtune's knowledge-distillation losses: ``forward(student_logits, teacher_logits,
    labels, normalize=True)`` over rows ``(N, V)`` (or any ``(*rows, V)``) and labels of
    ``N`` values; float32 results, the mean over the counted tokens (``normalize``, 0 when
    none counts) or their sum. A subclass names its divergence and torchtune's own formula."""

    _divergence: str

    def __init__(self, ignore_index: int = -100) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        labels: Tensor,
        normalize: bool = True,
    ) -> Tensor:
        rows = student_logits.reshape(-1, student_logits.shape[-1])
        teach = teacher_logits.reshape(-1, teacher_logits.shape[-1])
        spec = _Spec(
            self._divergence,
            0.0,
            1.0,
            labels.reshape(-1),
            int(self.ignore_index),
            "mean" if normalize else "sum",
        )
        loss = _loss(rows, teach, spec, None)
        if not torch.isfinite(loss):
            # A vocabulary entry that one side masks (-inf) and the other does not: torchtune
            # drops the term (masked_fill); the divergence itself is +inf.
            return self._torchtune(rows, teach, spec.labels, normalize)
        return loss.to(torch.float32)

    def _torchtune(self, s: Tensor, t: Tensor, labels: Tensor, normalize: bool) -> Tensor:
        raise NotImplementedError  # pragma: no cover


def _torchtune_reduce(x: Tensor, labels: Tensor, ignore_index: int, normalize: bool) -> Tensor:
    mask = (labels != ignore_index).int().view(-1)
    if not normalize:
        return -torch.sum(x * mask, dim=0)
    if torch.sum(mask, dim=0) == 0:
        return torch.tensor(0.0, device=x.device)
    return -torch.sum(x * mask, dim=0) / torch.sum(mask, dim=0)


class ForwardKLLoss(_TorchtuneKD):
    r"""torchtune's ``ForwardKLLoss``: per token :math:`-\sum_v P_v \log Q_v` (the cross
    entropy, the forward KL plus the teacher's entropy, which has no gradient), over the
    tokens whose label is not ``ignore_index``.

    Examples
    --------
    >>> import torch, kldiv.torch
    >>> s = torch.randn(6, 50, requires_grad=True)
    >>> labels = torch.tensor([1, 2, -100, 3, 4, 5])
    >>> kldiv.torch.ForwardKLLoss()(s, torch.randn(6, 50), labels).backward()
    """

    _divergence = "cross_entropy"

    def _torchtune(self, s: Tensor, t: Tensor, labels: Tensor, normalize: bool) -> Tensor:
        teacher_prob = torch.softmax(t, dim=-1, dtype=torch.float32)
        student_logprob = torch.log_softmax(s, dim=-1, dtype=torch.float32)
        prod = torch.masked_fill(teacher_prob * student_logprob, torch.isinf(s), 0)
        return _torchtune_reduce(prod.sum(-1).view(-1), labels, self.ignore_index, normalize)


class ReverseKLLoss(_TorchtuneKD):
    r"""torchtune's ``ReverseKLLoss``: per token :math:`KL(Q \| P) = \sum_v Q_v (\log Q_v -
    \log P_v)`, over the tokens whose label is not ``ignore_index``.

    Examples
    --------
    >>> import torch, kldiv.torch
    >>> s = torch.randn(6, 50, requires_grad=True)
    >>> labels = torch.tensor([1, 2, -100, 3, 4, 5])
    >>> kldiv.torch.ReverseKLLoss()(s, torch.randn(6, 50), labels).backward()
    """

    _divergence = "reverse"

    def _torchtune(self, s: Tensor, t: Tensor, labels: Tensor, normalize: bool) -> Tensor:
        student_prob = torch.softmax(s, dim=-1, dtype=torch.float32)
        student_logprob = torch.log_softmax(s, dim=-1, dtype=torch.float32)
        teacher_logprob = torch.log_softmax(t, dim=-1, dtype=torch.float32)
        inf = torch.isinf(s) | torch.isinf(t)
        prod = torch.masked_fill(student_prob * teacher_logprob, inf, 0)
        prod = prod - torch.masked_fill(student_prob * student_logprob, inf, 0)
        return _torchtune_reduce(prod.sum(-1).view(-1), labels, self.ignore_index, normalize)


class SymmetricKLLoss(torch.nn.Module):
    r"""torchtune's ``SymmetricKLLoss``: ``sym_kd_ratio`` times :class:`ForwardKLLoss` plus
    ``1 - sym_kd_ratio`` times :class:`ReverseKLLoss`.

    Examples
    --------
    >>> import torch, kldiv.torch
    >>> s = torch.randn(6, 50, requires_grad=True)
    >>> labels = torch.tensor([1, 2, -100, 3, 4, 5])
    >>> kldiv.torch.SymmetricKLLoss(0.5)(s, torch.randn(6, 50), labels).backward()
    """

    def __init__(self, sym_kd_ratio: float = 0.5, ignore_index: int = -100) -> None:
        super().__init__()
        if sym_kd_ratio < 0.0 or sym_kd_ratio > 1.0:
            raise ValueError("sym_kd_ratio must be in the range [0, 1]")
        self.ignore_index = ignore_index
        self.sym_kd_ratio = sym_kd_ratio
        self.fkl = ForwardKLLoss(ignore_index)
        self.rkl = ReverseKLLoss(ignore_index)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        labels: Tensor,
        normalize: bool = True,
    ) -> Tensor:
        return self.sym_kd_ratio * self.fkl(student_logits, teacher_logits, labels, normalize) + (
            1 - self.sym_kd_ratio
        ) * self.rkl(student_logits, teacher_logits, labels, normalize)

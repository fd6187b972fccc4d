"""PyTorch drop-ins: :func:`kl_div` and :class:`KLDivLoss`, backed by kldiv's kernels.

``kldiv.torch.kl_div`` and ``kldiv.torch.KLDivLoss`` take the arguments of
``torch.nn.functional.kl_div`` and ``torch.nn.KLDivLoss`` and return the same numbers, with
autograd. CPU float32/float64 tensors (any strides) go through kldiv without copies: when the
input requires a gradient, the forward pass runs the fused loss-and-gradient kernel (one pass)
and the backward pass only scales that gradient; the target's gradient, when it is needed, is
computed by kldiv too. Anything else (CUDA or other devices, bfloat16, float16, integer
tensors) goes to PyTorch's own ``kl_div``, unchanged.

Importing this module needs PyTorch; the rest of kldiv does not.
"""

from __future__ import annotations

import warnings
from typing import Any

try:
    import torch
    from torch import Tensor
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "kldiv.torch needs PyTorch (pip install torch); kldiv.kl_div works without it"
    ) from e

import numpy as np

from . import _loss
from ._loss import kl_div_and_grad, kl_div_backward

__all__ = ["KLDivLoss", "kl_div"]

_FAST_DTYPES = (torch.float32, torch.float64)


def _fast(input: Tensor, target: Tensor) -> bool:
    """Whether kldiv's kernels take these tensors (else PyTorch's own kl_div does)."""
    return (
        isinstance(input, Tensor)
        and isinstance(target, Tensor)
        and input.device.type == "cpu"
        and target.device.type == "cpu"
        and input.dtype in _FAST_DTYPES
        and target.dtype in _FAST_DTYPES
        and input.layout == torch.strided
        and target.layout == torch.strided
    )


def _numpy(t: Tensor) -> np.ndarray:
    """The tensor's memory as a NumPy array, without copying (strides kept)."""
    return t.detach().resolve_conj().resolve_neg().numpy()


class _KLDiv(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, input: Tensor, target: Tensor, reduction: str, log_target: bool
    ) -> Tensor:
        x, t = _numpy(input), _numpy(target)
        # A reduced loss's input gradient is known up to grad_output's scalar factor: compute
        # it in the same pass as the loss. For "none", backward does it (grad_output is an
        # array that must multiply in before any summing over broadcast axes).
        ctx.fused = ctx.needs_input_grad[0] and reduction != "none"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # kl_div below warned already
            if ctx.fused:
                loss, grad = kl_div_and_grad(x, t, reduction, log_target)
                ctx.grad_input = torch.from_numpy(grad)
            else:
                loss = _loss.kl_div(x, t, reduction, log_target)
        ctx.reduction, ctx.log_target = reduction, log_target
        if ctx.needs_input_grad[1] or not ctx.fused:
            ctx.save_for_backward(input, target)
        return torch.from_numpy(np.asarray(loss))

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        grad_input = grad_target = None
        if ctx.fused:  # the gradient for grad_output = 1, from the forward pass: scale it
            grad_input = ctx.grad_input * grad_output
        if ctx.needs_input_grad[1] or (ctx.needs_input_grad[0] and not ctx.fused):
            input, target = ctx.saved_tensors
            gx, gt = kl_div_backward(
                _numpy(grad_output), _numpy(input), _numpy(target), ctx.reduction, ctx.log_target
            )
            if ctx.needs_input_grad[0] and not ctx.fused:
                grad_input = torch.from_numpy(gx)
            if ctx.needs_input_grad[1]:
                grad_target = torch.from_numpy(gt)
        return grad_input, grad_target, None, None


def kl_div(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    log_target: bool = False,
) -> Tensor:
    r"""``torch.nn.functional.kl_div``, computed by kldiv for CPU float32/float64 tensors.

    The loss is :math:`t (\log t - x)` (``xlogy(t, t) - t * x``), or :math:`e^{t} (t - x)`
    with ``log_target``, reduced by ``reduction`` (``"none" | "sum" | "mean" |
    "batchmean"``); see :func:`kldiv.kl_div`. ``"mean"`` is PyTorch's default, and as PyTorch
    does this warns that it is not the KL divergence (``"batchmean"`` is).
    ``size_average`` and ``reduce`` are PyTorch's deprecated arguments, handled as it does.
    """
    if size_average is not None or reduce is not None:
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)
    if not _fast(input, target):
        return torch.nn.functional.kl_div(input, target, reduction=reduction, log_target=log_target)
    _loss.check_options(reduction, log_target)
    if reduction == "mean":
        warnings.warn(_loss._MEAN_WARNING, UserWarning, stacklevel=2)
    return _KLDiv.apply(input, target, reduction, bool(log_target))


class KLDivLoss(torch.nn.Module):
    """``torch.nn.KLDivLoss``, computed by kldiv (see :func:`kl_div`).

    Examples
    --------
    >>> import torch, kldiv.torch
    >>> loss_fn = kldiv.torch.KLDivLoss(reduction="batchmean")
    >>> x = torch.randn(4, 10, requires_grad=True).log_softmax(dim=1)
    >>> t = torch.randn(4, 10).softmax(dim=1)
    >>> loss_fn(x, t).backward()
    """

    def __init__(
        self,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
        log_target: bool = False,
    ) -> None:
        super().__init__()
        if size_average is not None or reduce is not None:
            reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)
        _loss.check_options(reduction, log_target)
        self.reduction = reduction
        self.log_target = log_target

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return kl_div(input, target, reduction=self.reduction, log_target=self.log_target)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, log_target={self.log_target}"

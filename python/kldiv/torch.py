"""PyTorch drop-ins: :func:`kl_div` and :class:`KLDivLoss`, backed by kldiv's kernels; and the
losses from logits (:func:`kl_div_logits`, :func:`jsd_logits`, their modules, and the drop-ins
for TRL's ``generalized_jsd_loss`` and torchtune's ``ForwardKLLoss``, ``ReverseKLLoss``,
``SymmetricKLLoss``: see ``kldiv._torch_logits``, whose names this module exports).

``kldiv.torch.kl_div`` and ``kldiv.torch.KLDivLoss`` take the arguments of
``torch.nn.functional.kl_div`` and ``torch.nn.KLDivLoss`` and return the same numbers, with
autograd: the same warnings and errors, PyTorch's dtype promotion, PyTorch's checks of tensors
modified in place between forward and backward. CPU float32/float64 tensors (any strides) go
through kldiv without copies: the forward pass computes the loss, the backward pass the
gradients that are needed, each in one pass. Everything else goes to PyTorch's own ``kl_div``,
unchanged: other devices and dtypes (CUDA, bfloat16, float16, integers; a target whose dtype is
not the result's, as PyTorch computes on it in its own dtype), tensor subclasses with
``__torch_function__``, ``torch.func`` transforms (``vmap``, ``grad``, ``jvp``), forward-mode AD
(dual tensors), TorchScript, tracing and ``torch.compile``. Higher-order gradients
(``create_graph=True``) are built from PyTorch's own operations, as PyTorch's backward is.

Importing this module needs PyTorch; the rest of kldiv does not.
"""

from __future__ import annotations

import math
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
import torch.autograd.forward_ad as _forward_ad
from torch.nn import _reduction
from torch.overrides import has_torch_function_variadic

from . import _loss

__all__ = [
    "ForwardKLLoss",
    "JSDLogitsLoss",
    "KLDivLogitsLoss",
    "KLDivLoss",
    "ReverseKLLoss",
    "SymmetricKLLoss",
    "generalized_jsd_loss",
    "jsd_logits",
    "kl_div",
    "kl_div_logits",
]

# PyTorch's own function and module, as they are when kldiv.torch is imported: the fallbacks
# call these, so that code that replaces torch.nn.functional.kl_div with kldiv's still works.
_torch_kl_div = torch.nn.functional.kl_div
_TorchKLDivLoss = torch.nn.KLDivLoss

_FAST_DTYPES = (torch.float32, torch.float64)
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_REDUCTION_NAMES = {0: "none", 1: "mean", 2: "sum"}
# torch.nn.functional.kl_div's own warning, word for word (filters keyed on it keep working).
_MEAN_WARNING = (
    "reduction: 'mean' divides the total loss by both the batch size and the support size."
    "'batchmean' divides only by the batch size, and aligns with the KL div math definition."
    "'mean' will be changed to behave the same as 'batchmean' in the next major release."
)

_functorch = getattr(torch._C, "_functorch", None)
# torch.func's wrapped tensors, and the batched tensors of autograd's is_grads_batched.
_WRAPPED = tuple(
    getattr(_functorch, name)
    for name in ("is_functorch_wrapped_tensor", "is_legacy_batchedtensor")
    if hasattr(_functorch, name)
)


def _is_functorch_wrapped(t: Tensor) -> bool:
    return any(wrapped(t) for wrapped in _WRAPPED)


def _is_dual(t: Tensor) -> bool:
    """Whether ``t`` carries a forward-mode tangent at the current dual level."""
    return _forward_ad._current_level >= 0 and _forward_ad.unpack_dual(t).tangent is not None


def _composite(*tensors: Tensor | None) -> bool:
    """Whether PyTorch's own operations must compute with these tensors: ``torch.func``'s
    wrapped tensors, dual tensors, tracing, scripting or ``torch.compile``."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return True
    return any(t is not None and (_is_functorch_wrapped(t) or _is_dual(t)) for t in tensors)


def _fast(input: Any, target: Any) -> bool:
    """Whether kldiv's kernels take these arguments (else PyTorch's own kl_div does).

    The target must have the result's dtype: PyTorch takes ``xlogy(t, t)`` (``exp(t)``) in
    the target's own dtype before promoting, which kldiv, computing in the result's dtype,
    would not round the same way (a float32 target against a float64 input, a 0-d float64
    target against a float32 input, a float16 target). PyTorch converts the input to the
    result's dtype, as kldiv does."""
    return (
        type(input) in (Tensor, torch.nn.Parameter)
        and type(target) in (Tensor, torch.nn.Parameter)
        and input.device.type == "cpu"
        and target.device.type == "cpu"
        and input.layout == torch.strided
        and target.layout == torch.strided
        and input.dtype in _FLOAT_DTYPES
        and target.dtype in _FAST_DTYPES
        and torch.result_type(input, target) == target.dtype
        and not has_torch_function_variadic(input, target)
        and not _composite(input, target)
    )


def _numpy(t: Tensor) -> np.ndarray:
    """The tensor's memory as a NumPy array, without copying (strides kept)."""
    return t.detach().resolve_conj().resolve_neg().numpy()


def _tensor(a: Any) -> Tensor:
    """A NumPy result (array or scalar) as a tensor, without copying an array."""
    return torch.from_numpy(np.asarray(a))


class _KLDiv(torch.autograd.Function):
    """kldiv's loss over two CPU tensors of one dtype (float32 or float64), ``reduction`` one of
    kldiv's four. It saves for backward what PyTorch's own graph keeps of the arguments, so
    that changing one in place between forward and backward raises where PyTorch raises."""

    @staticmethod
    def forward(
        ctx: Any, input: Tensor, target: Tensor, reduction: str, log_target: bool
    ) -> Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # kl_div below warned already
            loss = _loss.kl_div(_numpy(input), _numpy(target), reduction, log_target)
        ctx.reduction, ctx.log_target = reduction, log_target
        ctx.shapes = (tuple(input.shape), tuple(target.shape))
        need_x, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # PyTorch's `xlogy(t, t) - t * x` keeps t for either gradient and x for t's;
        # `exp(t) * (t - x)` keeps what it computes from them: checked here the same way.
        ctx.save_for_backward(input if need_t else None, target if need_x or need_t else None)
        return _tensor(loss)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        input, target = ctx.saved_tensors
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        if torch.is_grad_enabled() or _composite(grad_output, input, target):
            # create_graph=True, torch.func, forward-mode AD: PyTorch's operations.
            gx, gt = _backward_composite(ctx, grad_output, input, target, need)
            return gx, gt, None, None
        x_shape, _ = ctx.shapes
        t = _numpy(target)
        # Only t's gradient reads x: without it, a stand-in of x's shape (stride 0).
        x = _numpy(input) if input is not None else np.broadcast_to(t.dtype.type(0), x_shape)
        p = _loss._Prepared(x, t)
        g = _loss._grad_output(_numpy(grad_output), ctx.reduction, p)
        gx, gt = _loss._backward(g, p, ctx.reduction, ctx.log_target, need=need)
        return (
            None if gx is None else _tensor(gx),
            None if gt is None else _tensor(gt),
            None,
            None,
        )


def _backward_composite(
    ctx: Any,
    grad_output: Tensor,
    input: Tensor | None,
    target: Tensor,
    need: tuple[bool, bool],
) -> tuple[Tensor | None, Tensor | None]:
    """The gradients as PyTorch's autograd builds them for its ``kl_div`` (the backward
    formulas of ``sum``/``mean``/``div``, ``xlogy``, ``mul``, ``sub`` and ``exp``), from
    differentiable operations: their own gradients are PyTorch's higher-order ones."""
    x_shape, t_shape = ctx.shapes
    shape = torch.broadcast_shapes(x_shape, t_shape)
    g = grad_output
    if ctx.reduction == "batchmean" and x_shape:
        g = g / x_shape[0]
    if ctx.reduction != "none":
        g = g.expand(shape)
    if ctx.reduction == "mean":
        g = g / math.prod(shape)
    t = target
    gx = gt = None
    if ctx.log_target:
        e = t.exp()
        if need[0]:
            gx = (-(g * e)).sum_to_size(x_shape)
        if need[1]:
            assert input is not None
            gt = ((g * (t - input)) * e + g * e).sum_to_size(t_shape)
    else:
        if need[0]:
            gx = ((-g) * t).sum_to_size(x_shape)
        if need[1]:
            assert input is not None
            g_t = g.sum_to_size(t_shape)
            xlogy = torch.xlogy(g_t, t).masked_fill((t == 0) & (t <= 0), 0)
            gt = xlogy + g_t * t / t + ((-g) * input).sum_to_size(t_shape)
    return gx, gt


def _reduction_name(reduction: str) -> str:
    """PyTorch's check of ``reduction`` (its error, its ``elementwise_mean`` warning)."""
    return _REDUCTION_NAMES[_reduction.get_enum(reduction)]


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
    does this warns that it is not the KL divergence (``"batchmean"`` is), in PyTorch's words.
    ``size_average`` and ``reduce`` are PyTorch's deprecated arguments, resolved as it does.
    Arguments kldiv does not compute on go to PyTorch's own ``kl_div`` (see the module).

    Examples
    --------
    >>> import torch, kldiv.torch
    >>> x = torch.randn(4, 10, requires_grad=True).log_softmax(dim=1)
    >>> t = torch.randn(4, 10).softmax(dim=1)
    >>> kldiv.torch.kl_div(x, t, reduction="batchmean").backward()
    """
    if (
        not _fast(input, target)
        or type(log_target) is not bool
        or _broadcast(input, target) is None
    ):
        # PyTorch computes, or raises its own error (a non-bool log_target, shapes that do not
        # broadcast), with its own warnings.
        return _torch_kl_div(input, target, size_average, reduce, reduction, log_target)
    if size_average is not None or reduce is not None:
        name = _REDUCTION_NAMES[_reduction.legacy_get_enum(size_average, reduce)]
    else:
        if reduction == "mean":
            warnings.warn(_MEAN_WARNING, stacklevel=2)
        name = "batchmean" if reduction == "batchmean" else _reduction_name(reduction)
    dtype = torch.result_type(input, target)
    loss = _KLDiv.apply(input.to(dtype), target.to(dtype), name, log_target)
    if reduction == "batchmean" and name != "batchmean" and input.dim() != 0:
        loss = loss / input.size()[0]  # reduce=False with "batchmean", as PyTorch divides
    return loss


def _broadcast(input: Tensor, target: Tensor) -> tuple[int, ...] | None:
    """The broadcast shape, or None if the shapes do not broadcast."""
    try:
        return _loss.broadcast_shape(tuple(input.shape), tuple(target.shape))
    except ValueError:
        return None


class KLDivLoss(_TorchKLDivLoss):
    """``torch.nn.KLDivLoss``, computed by kldiv (see :func:`kl_div`).

    A subclass of ``torch.nn.KLDivLoss``: the same arguments, attributes, ``repr`` and
    ``state_dict``; a scripted module (``torch.jit.script``) runs PyTorch's ``kl_div``.

    Examples
    --------
    >>> import torch, kldiv.torch
    >>> loss_fn = kldiv.torch.KLDivLoss(reduction="batchmean")
    >>> x = torch.randn(4, 10, requires_grad=True).log_softmax(dim=1)
    >>> t = torch.randn(4, 10).softmax(dim=1)
    >>> loss_fn(x, t).backward()
    """

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return _torch_kl_div(
                input, target, reduction=self.reduction, log_target=self.log_target
            )
        return self._kldiv(input, target)

    @torch.jit.unused
    def _kldiv(self, input: Tensor, target: Tensor) -> Tensor:
        return kl_div(input, target, reduction=self.reduction, log_target=self.log_target)


# Losses from logits and the TRL/torchtune drop-ins (imported last: they use _composite above).
from ._torch_logits import (  # noqa: E402
    ForwardKLLoss,
    JSDLogitsLoss,
    KLDivLogitsLoss,
    ReverseKLLoss,
    SymmetricKLLoss,
    generalized_jsd_loss,
    jsd_logits,
    kl_div_logits,
)

"""kldiv.torch against PyTorch itself: same numbers, same gradients, gradcheck, a training
loop. Needs PyTorch (skipped, with the reason shown, where it is not installed)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed: kldiv.torch untested")
import torch.nn.functional as F  # noqa: E402

import kldiv.torch as kt  # noqa: E402

REDUCTIONS = ("none", "sum", "mean", "batchmean")


def pair(shape, dtype=torch.float64, log_target=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype).log_softmax(-1)
    t = torch.randn(shape, generator=g, dtype=dtype).log_softmax(-1)
    return x, (t if log_target else t.exp())


def quiet(f, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f(*a, **k)


def close(a, b):
    tol = {torch.float32: 2e-6, torch.float64: 1e-13}[b.dtype]
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("grads", [(True, False), (False, True), (True, True), (False, False)])
def test_loss_and_gradients_match_pytorch(reduction, log_target, dtype, grads):
    x, t = pair((6, 7), dtype, log_target)
    xs = [x.clone().requires_grad_(grads[0]) for _ in range(2)]
    ts = [t.clone().requires_grad_(grads[1]) for _ in range(2)]
    ours = quiet(kt.kl_div, xs[0], ts[0], reduction=reduction, log_target=log_target)
    theirs = quiet(F.kl_div, xs[1], ts[1], reduction=reduction, log_target=log_target)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    close(ours.detach(), theirs.detach())
    if any(grads):
        go = torch.rand_like(theirs) + 0.5
        ours.backward(go)
        theirs.backward(go)
        for a, b, needed in ((xs[0], xs[1], grads[0]), (ts[0], ts[1], grads[1])):
            if needed:
                close(a.grad, b.grad)


def test_special_values_match_pytorch():
    vals = torch.tensor([-1.5, 0.0, -float("inf"), float("inf"), float("nan"), 2.0])
    tv = torch.tensor([0.0, 0.3, -0.5, float("inf"), float("nan"), 1.0])
    x, t = torch.meshgrid(vals, tv, indexing="ij")
    for lt in (False, True):
        for r in REDUCTIONS:
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ta, tb = t.clone().requires_grad_(), t.clone().requires_grad_()
            a = quiet(kt.kl_div, xa, ta, reduction=r, log_target=lt)
            b = quiet(F.kl_div, xb, tb, reduction=r, log_target=lt)
            close(a.detach(), b.detach())
            a.sum().backward()
            b.sum().backward()
            close(xa.grad, xb.grad)
            close(ta.grad, tb.grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True])
def test_gradcheck_float64(reduction, log_target):
    x, t = pair((3, 5), torch.float64, log_target, seed=1)
    x.requires_grad_()
    t.requires_grad_()
    f = lambda a, b: quiet(kt.kl_div, a, b, reduction=reduction, log_target=log_target)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, t))


def test_strided_and_broadcast_tensors():
    x, t = pair((8, 6), torch.float32)
    xs = x.t()  # a transposed (strided) view, read without a copy
    ts = t.t()
    close(kt.kl_div(xs, ts, reduction="sum"), F.kl_div(xs, ts, reduction="sum"))
    row = t[:1]
    xg = x.clone().requires_grad_()
    xr = x.clone().requires_grad_()
    quiet(kt.kl_div, xg, row, reduction="batchmean").backward()
    quiet(F.kl_div, xr, row.expand_as(xr), reduction="batchmean").backward()
    close(xg.grad, xr.grad)


def test_other_tensors_go_to_pytorch_unchanged():
    x, t = pair((4, 5), torch.float64)
    for a, b in ((x.half(), t.half()), (x.bfloat16(), t.bfloat16())):
        close(
            quiet(kt.kl_div, a, b, reduction="sum").float(),
            quiet(F.kl_div, a, b, reduction="sum").float(),
        )


def test_module_and_errors():
    loss = kt.KLDivLoss(reduction="batchmean", log_target=True)
    assert repr(loss) == repr(torch.nn.KLDivLoss(reduction="batchmean", log_target=True))
    bad = kt.KLDivLoss(reduction="avg")  # as PyTorch: checked when called, not when made
    with pytest.raises(ValueError, match="avg is not a valid value for reduction"):
        bad(*pair((2, 3)))
    with pytest.warns(UserWarning, match="batchmean"):
        kt.kl_div(*pair((2, 3)))
    with pytest.warns(UserWarning, match="deprecated"):
        legacy = kt.KLDivLoss(size_average=False)  # PyTorch's deprecated spelling of "sum"
    assert legacy.reduction == "sum"


def test_a_distillation_training_loop_matches_pytorch():
    torch.manual_seed(0)
    teacher = torch.nn.Linear(20, 10)
    data = torch.randn(64, 20)
    with torch.no_grad():
        target = teacher(data).softmax(dim=1)
    params = []
    for loss_fn in (kt.KLDivLoss(reduction="batchmean"), torch.nn.KLDivLoss(reduction="batchmean")):
        torch.manual_seed(1)
        student = torch.nn.Linear(20, 10)
        opt = torch.optim.SGD(student.parameters(), lr=0.5)
        for _ in range(20):
            opt.zero_grad()
            loss = loss_fn(student(data).log_softmax(dim=1), target)
            loss.backward()
            opt.step()
        params.append([p.detach().clone() for p in student.parameters()])
    for a, b in zip(*params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert loss.item() < 0.5


def test_numpy_interop_is_zero_copy():
    x, t = pair((50, 40), torch.float32)
    assert np.shares_memory(kt._numpy(x), x.numpy())

"""kldiv.torch's losses from logits against PyTorch composites, and its drop-ins against the
real TRL and torchtune (PyPI): values, gradients, gradcheck, double backward, torch.func,
bfloat16 in place. Skipped (with the reason shown) where a package is not installed."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed: kldiv.torch untested")
import torch.nn.functional as F  # noqa: E402

import kldiv.torch as kt  # noqa: E402
from kldiv._torch_logits import _composite_loss, _Spec  # noqa: E402

REDUCTIONS = ("none", "sum", "mean", "batchmean")


def pair(shape, dtype=torch.float32, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    t = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    return s, t


def composite(s, t, divergence, beta=0.5, temperature=1.0):
    """Per-row losses from PyTorch's operations, as a user writes them."""
    ls = F.log_softmax(s / temperature, -1)
    lt = F.log_softmax(t / temperature, -1)
    if divergence == "forward":
        return F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)
    if divergence == "reverse":
        return F.kl_div(lt, ls, reduction="none", log_target=True).sum(-1)
    m = torch.logsumexp(torch.stack([ls + np.log1p(-beta), lt + np.log(beta)]), 0)
    kp = F.kl_div(m, lt, reduction="none", log_target=True).sum(-1)
    kq = F.kl_div(m, ls, reduction="none", log_target=True).sum(-1)
    return beta * kp + (1 - beta) * kq


def ours(s, t, divergence, beta=0.5, **kw):
    if divergence == "jsd":
        return kt.jsd_logits(s, t, beta=beta, **kw)
    return kt.kl_div_logits(s, t, reverse=divergence == "reverse", **kw)


def value_and_grad(fn, s, t, go=1.0):
    s = s.detach().requires_grad_()
    loss = fn(s, t)
    loss.backward(torch.full_like(loss, go))
    return loss.detach(), s.grad


@pytest.mark.parametrize("divergence", ["forward", "reverse", "jsd"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_values_and_gradients_match_a_float64_composite(divergence, reduction):
    s, t = pair((3, 5, 400), torch.float32, seed=1)
    labels = torch.randint(-1, 3, (3, 5), generator=torch.Generator().manual_seed(2))
    weights = torch.rand(3, 5, generator=torch.Generator().manual_seed(3))

    def reduce(rows, s):
        w = weights.double() * (labels != -1)
        rows = rows * w
        return {
            "none": rows,
            "sum": rows.sum(),
            "mean": rows.sum() / w.sum(),
            "batchmean": rows.sum() / s.shape[0],
        }[reduction]

    kw = dict(temperature=2.0, labels=labels, ignore_index=-1, weights=weights, reduction=reduction)
    loss, grad = value_and_grad(lambda a, b: ours(a, b, divergence, 0.3, **kw), s, t, 0.7)
    want, want_grad = value_and_grad(
        lambda a, b: reduce(composite(a, b, divergence, 0.3, 2.0), a), s.double(), t.double(), 0.7
    )
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    torch.testing.assert_close(loss.double(), want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad.double(), want_grad, rtol=5e-7, atol=1e-9)


@pytest.mark.parametrize("divergence", ["forward", "reverse", "jsd"])
def test_gradcheck_and_gradgradcheck_float64(divergence):
    s, t = pair((2, 3, 9), torch.float64, seed=4, scale=1.0)
    s.requires_grad_()
    t.requires_grad_()
    w = torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[0, -100, 1], [2, 3, -100]])
    for reduction in REDUCTIONS:

        def f(s, t, w, reduction=reduction):
            return ours(
                s,
                t,
                divergence,
                0.4,
                temperature=1.7,
                labels=labels,
                weights=w,
                reduction=reduction,
            )

        assert torch.autograd.gradcheck(f, (s, t, w))
        assert torch.autograd.gradcheck(lambda s: f(s, t.detach(), w.detach()), (s,))
        assert torch.autograd.gradgradcheck(f, (s, t, w))


def test_bfloat16_is_read_in_place_and_gives_its_gradient_in_bfloat16():
    s, t = pair((6, 1000), torch.bfloat16, seed=5)
    loss, grad = value_and_grad(lambda a, b: kt.kl_div_logits(a, b, temperature=2.0), s, t)
    want, want_grad = value_and_grad(
        lambda a, b: composite(a, b, "forward", temperature=2.0).mean(), s.double(), t.double()
    )
    assert loss.dtype == torch.bfloat16 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double(), want, rtol=2**-8, atol=0)
    torch.testing.assert_close(grad.double(), want_grad, rtol=2**-8, atol=1e-12)
    # in place: a strided bfloat16 view computes the same as its contiguous copy
    wide = torch.zeros(6, 2000, dtype=torch.bfloat16)
    wide[:, ::2] = s
    same, same_grad = value_and_grad(
        lambda a, b: kt.kl_div_logits(a[:, ::2], b, temperature=2.0), wide, t
    )
    assert torch.equal(same, loss) and torch.equal(same_grad[:, ::2], grad)


def test_float16_and_mixed_dtypes():
    s, t = pair((4, 300), torch.float16, seed=6)
    loss, grad = value_and_grad(lambda a, b: kt.jsd_logits(a, b), s, t)
    want, want_grad = value_and_grad(lambda a, b: kt.jsd_logits(a, b), s.float(), t.float())
    assert grad.dtype == torch.float16 and loss == want.half()
    torch.testing.assert_close(grad.float(), want_grad, rtol=2**-10, atol=2**-24)
    mixed = kt.kl_div_logits(s.float(), t.to(torch.bfloat16))
    assert mixed.dtype == torch.float32


def test_double_backward_matches_the_composite():
    s, t = pair((3, 20), torch.float64, seed=7)
    for divergence in ("forward", "reverse", "jsd"):
        a = s.clone().requires_grad_()
        b = s.clone().requires_grad_()
        (g1,) = torch.autograd.grad(ours(a, t, divergence, reduction="sum"), a, create_graph=True)
        (g2,) = torch.autograd.grad(composite(b, t, divergence).sum(), b, create_graph=True)
        torch.testing.assert_close(g1, g2)
        (h1,) = torch.autograd.grad(g1.square().sum(), a)
        (h2,) = torch.autograd.grad(g2.square().sum(), b)
        torch.testing.assert_close(h1, h2)


def test_torch_func_and_other_paths_use_the_composite():
    s, t = pair((4, 30), torch.float64, seed=8)
    want = torch.func.grad(lambda x: composite(x, t, "reverse").mean())(s)
    got = torch.func.grad(lambda x: kt.kl_div_logits(x, t, reverse=True))(s)
    torch.testing.assert_close(got, want)
    batched = torch.func.vmap(lambda x: kt.kl_div_logits(x, t, reduction="sum"))(
        s[None].expand(2, 4, 30)
    )
    torch.testing.assert_close(batched, kt.kl_div_logits(s, t, reduction="sum").expand(2))


def test_teacher_and_weights_get_gradients():
    s, t = pair((3, 40), torch.float64, seed=9)
    w = torch.rand(3, dtype=torch.float64)
    args = [x.clone().requires_grad_() for x in (s, t, w)]
    ours(*args[:2], "jsd", weights=args[2], reduction="sum").backward()
    ref = [x.clone().requires_grad_() for x in (s, t, w)]
    (composite(*ref[:2], "jsd") * ref[2]).sum().backward()
    for a, b in zip(args, ref):
        torch.testing.assert_close(a.grad, b.grad)


def test_retain_graph_and_repeated_backward_give_the_same_gradient():
    s, t = pair((5, 100), seed=10)
    s.requires_grad_()
    loss = kt.kl_div_logits(s, t, temperature=3.0)
    loss.backward(retain_graph=True)
    first = s.grad.clone()
    loss.backward()
    torch.testing.assert_close(s.grad, 2 * first)


def test_masked_entries_give_no_nan_gradient():
    s, t = pair((2, 10), seed=11)
    s[:, 3] = t[:, 3] = -float("inf")
    for divergence in ("forward", "reverse", "jsd"):
        for fast in (True, False):
            x = s.clone().requires_grad_()
            if fast:
                loss = ours(x, t, divergence)
            else:  # the composite (other devices, torch.func)
                spec = _Spec(divergence, 0.5, 1.0, None, -100, "mean")
                loss = _composite_loss(x, t, None, spec)
            loss.backward()
            assert torch.isfinite(loss) and torch.all(torch.isfinite(x.grad)), divergence
            assert torch.all(x.grad[:, 3] == 0)


def test_errors_are_clear():
    s, t = pair((2, 10), seed=12)
    with pytest.raises(ValueError, match="temperature"):
        kt.kl_div_logits(s, t, temperature=-1.0)
    with pytest.raises(ValueError, match="beta"):
        kt.jsd_logits(s, t, beta=2.0)
    with pytest.raises(ValueError):
        kt.kl_div_logits(s, t[:, :9])
    with pytest.raises(TypeError, match="labels"):
        kt.kl_div_logits(s, t, labels=torch.zeros(2))
    with pytest.raises(TypeError, match="float16"):
        kt.kl_div_logits(s.int(), t)
    with pytest.raises(ValueError, match="reduction"):
        kt.kl_div_logits(s, t, reduction="avg")


def test_modules():
    s, t = pair((4, 10), seed=13)
    labels = torch.tensor([1, -100, 2, 3])
    m = kt.KLDivLogitsLoss(temperature=2.0, reverse=True, reduction="sum")
    assert torch.equal(
        m(s, t, labels),
        kt.kl_div_logits(s, t, temperature=2.0, reverse=True, labels=labels, reduction="sum"),
    )
    j = kt.JSDLogitsLoss(beta=0.2)
    assert torch.equal(j(s, t), kt.jsd_logits(s, t, beta=0.2))


# The drop-ins against the libraries themselves.


def _trl():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer", reason="trl not installed")
    return gkd.GKDTrainer.generalized_jsd_loss


def _torchtune():
    """torchtune's kd_losses.py, loaded by itself (the package import wants a torchao of its
    own era; this file needs only torch)."""
    spec = importlib.util.find_spec("torchtune")
    if spec is None or spec.origin is None:
        pytest.skip("torchtune not installed")
    path = pathlib.Path(spec.origin).parent / "modules" / "loss" / "kd_losses.py"
    mod_spec = importlib.util.spec_from_file_location("torchtune_kd_losses", path)
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def assert_same(ours_fn, theirs_fn, s, t, rtol):
    """Values and gradients equal to the library's within ``rtol``, the gradients beyond the
    library's own rounding error: torchtune computes in float32 whatever the logits' dtype, and
    its rounding differs between CPUs (PyTorch's kernels follow the SIMD width); on an AVX2 CPU
    its reverse KL's gradient here is 1.5e-6 of the largest away from the float64 value. That
    error is measured against ours in float64 (itself checked against a float64 composite
    above), and ours must be within ``rtol`` of that value."""
    a, ga = value_and_grad(ours_fn, s, t)
    b, gb = value_and_grad(theirs_fn, s, t)
    assert a.shape == b.shape and a.dtype == b.dtype
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * 1e-2, equal_nan=True)
    scale = gb.abs().max()
    _, exact = value_and_grad(ours_fn, s.double(), t.double())
    theirs_error = float((gb.double() - exact).abs().max())
    torch.testing.assert_close(ga.double(), exact, rtol=rtol, atol=rtol * float(scale))
    torch.testing.assert_close(ga, gb, rtol=rtol, atol=rtol * scale + theirs_error)


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("with_labels", [False, True])
def test_generalized_jsd_loss_equals_trl(dtype, rtol, reduction, beta, with_labels):
    trl_loss = _trl()
    s, t = pair((2, 6, 300), dtype, seed=14, scale=2.0)
    labels = (
        torch.tensor([[1, 2, -100, 3, 4, -100], [-100, 5, 6, 7, 8, 9]]) if with_labels else None
    )
    kw = dict(labels=labels, beta=beta, temperature=1.5, reduction=reduction)
    assert_same(
        lambda a, b: kt.generalized_jsd_loss(a, b, **kw),
        lambda a, b: trl_loss(a, b, **kw),
        s,
        t,
        rtol,
    )


def test_generalized_jsd_loss_num_items_and_empty_labels_equal_trl():
    trl_loss = _trl()
    s, t = pair((2, 3, 50), torch.float64, seed=15)
    labels = torch.full((2, 3), -100)
    for kw in (
        dict(num_items_in_batch=7),
        dict(labels=labels),
        dict(labels=labels, reduction="sum"),
    ):
        a = kt.generalized_jsd_loss(s, t, **kw)
        b = trl_loss(s, t, **kw)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["ForwardKLLoss", "ReverseKLLoss", "SymmetricKLLoss"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("normalize", [True, False])
def test_torchtune_losses_equal_torchtune(name, dtype, normalize):
    tt = _torchtune()
    s, t = pair((12, 500), dtype, seed=16)
    labels = torch.tensor([1, -100, 2, 3, -100, 4, 5, 6, 7, 8, 9, -100])
    args = (0.3,) if name == "SymmetricKLLoss" else ()
    ours_m, theirs_m = getattr(kt, name)(*args), getattr(tt, name)(*args)
    # bfloat16: both gradients are bfloat16 (8 bits): equal to their last bit's rounding
    assert_same(
        lambda a, b: ours_m(a, b, labels, normalize),
        lambda a, b: theirs_m(a, b, labels, normalize),
        s,
        t,
        1e-6 if dtype != torch.bfloat16 else 1e-2,
    )


def test_torchtune_masked_vocabulary_and_no_counted_token():
    tt = _torchtune()
    s, t = pair((4, 20), seed=17)
    s[:, :3] = -float("inf")
    t[:, 5] = -float("inf")  # the teacher masks an entry the student does not
    labels = torch.tensor([1, 2, -100, 3])
    for name in ("ForwardKLLoss", "ReverseKLLoss"):
        a = getattr(kt, name)()(s, t, labels)
        b = getattr(tt, name)()(s, t, labels)
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7)
        none = torch.full((4,), -100)
        assert getattr(kt, name)()(s, t, none) == getattr(tt, name)()(s, t, none) == 0


def test_docstring_examples_run():
    import doctest

    import kldiv._torch_logits

    result = doctest.testmod(kldiv._torch_logits, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0

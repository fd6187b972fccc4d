"""kldiv.torch against PyTorch itself: same numbers, same gradients, gradcheck, a training
loop. Needs PyTorch (skipped, with the reason shown, where it is not installed)."""

from __future__ import annotations

import contextlib
import math
import warnings
from fractions import Fraction

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


# --- The autograd and argument contract, each test against torch.nn.functional.kl_div ---------

LOG_TARGETS = (False, True)
INF, NAN = float("inf"), float("nan")


def both_fns():
    return (kt.kl_div, F.kl_div)


def loss_and_grads(fn, x, t, go=None, needs=(True, True), **kw):
    """``fn``'s loss and the gradients of fresh leaf copies of ``x`` and ``t`` (those ``needs``
    asks for, else None) for the incoming gradient ``go`` (a scalar, broadcast to the loss)."""
    xs = x.detach().clone().requires_grad_(needs[0])
    ts = t.detach().clone().requires_grad_(needs[1])
    loss = quiet(fn, xs, ts, **kw)
    if any(needs):
        g = torch.ones_like(loss) if go is None else torch.full_like(loss, go)
        loss.backward(g)
    return loss.detach(), xs.grad, ts.grad


def assert_same(a, b, rtol=None, atol=None):
    """``a`` equals PyTorch's ``b``: dtype, shape, values (NaN where NaN) and, where both are
    zero, the sign of zero."""
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, equal_nan=True)
    zero = (a == 0) & (b == 0)
    assert torch.equal(a.signbit()[zero], b.signbit()[zero]), "signs of zero differ"


def linear_pair(log_target, seed=0):
    """Two Linear layers, x (log-probabilities) and t (probabilities or log-probabilities)
    computed from their parameters: gradients reach every parameter through x and t."""
    torch.manual_seed(seed)
    a, b = torch.nn.Linear(4, 5).double(), torch.nn.Linear(4, 5).double()
    data = torch.randn(3, 4, dtype=torch.float64)
    x = a(data).log_softmax(-1)
    t = b(data).log_softmax(-1)
    return [*a.parameters(), *b.parameters()], x, (t if log_target else t.exp())


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", LOG_TARGETS)
def test_double_backward_matches_pytorch(reduction, log_target):
    grads = []
    for fn in both_fns():
        params, x, t = linear_pair(log_target)
        loss = quiet(fn, x, t, reduction=reduction, log_target=log_target)
        if reduction == "none":
            loss = (
                loss * torch.linspace(-1, 2, loss.numel(), dtype=loss.dtype).view_as(loss)
            ).sum()
        (gx,) = torch.autograd.grad(loss, x, create_graph=True)
        assert gx.grad_fn is not None
        (gx.pow(2).sum() + loss).backward()
        grads.append([p.grad for p in params])
    for a, b in zip(*grads):
        close(a, b)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", LOG_TARGETS)
def test_gradgradcheck_float64(reduction, log_target):
    x, t = pair((2, 3), torch.float64, log_target, seed=2)
    args = (x.requires_grad_(), t.requires_grad_())
    f = lambda a, b: quiet(kt.kl_div, a, b, reduction=reduction, log_target=log_target)  # noqa: E731
    assert torch.autograd.gradgradcheck(f, args)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", LOG_TARGETS)
def test_forward_ad_and_torch_func_match_pytorch(reduction, log_target):
    import torch.autograd.forward_ad as fwad

    x, t = pair((3, 4), torch.float64, log_target, seed=3)
    g = torch.Generator().manual_seed(4)
    tx, tt = (torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(2))
    results = []
    for fn in both_fns():
        f = lambda a, b, fn=fn: quiet(fn, a, b, reduction=reduction, log_target=log_target)  # noqa: E731
        with fwad.dual_level():
            primal, tangent = fwad.unpack_dual(f(fwad.make_dual(x, tx), fwad.make_dual(t, tt)))
            dual = (primal.clone(), tangent.clone())
        results.append(
            [
                *dual,
                *torch.func.jvp(f, (x, t), (tx, tt)),
                torch.func.vmap(f)(x, t),
                torch.func.vmap(f, in_dims=(0, None))(x, t[0]),
                *torch.func.grad(lambda a, b, f=f: f(a, b).sum(), argnums=(0, 1))(x, t),
            ]
        )
    for a, b in zip(*results):
        assert_same(a, b, rtol=1e-13, atol=1e-13)
    args = (x.clone().requires_grad_(), t.clone().requires_grad_())
    f = lambda a, b: quiet(kt.kl_div, a, b, reduction=reduction, log_target=log_target)  # noqa: E731
    assert torch.autograd.gradcheck(f, args, check_batched_grad=True, check_forward_ad=True)


def inplace_trial(fn, reduction, log_target, modify, needs, nonleaf=True):
    """The loss of x and t (each requiring a gradient where ``needs`` says, else a plain
    tensor; those that do are non-leaf ``leaf * 1`` if ``nonleaf``, else the leaves), then
    ``modify`` ("x" or "t") changed in place (a leaf under ``no_grad``), then backward: the
    leaves' gradients, or "inplace" if autograd raised its in-place error."""
    x0, t0 = pair((3, 4), torch.float64, log_target, seed=5)
    leaves = [x0.clone().requires_grad_(needs[0]), t0.clone().requires_grad_(needs[1])]
    x, t = (v * 1 if nonleaf and v.requires_grad else v for v in leaves)
    loss = quiet(fn, x, t, reduction=reduction, log_target=log_target)
    changed = x if modify == "x" else t
    with torch.no_grad() if changed.is_leaf else contextlib.nullcontext():
        changed.mul_(2.0)
    try:
        loss.sum().backward()
    except RuntimeError as e:
        assert "modified by an inplace operation" in str(e)
        return "inplace"
    return [v.grad for v in leaves]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("needs", [(True, False), (False, True), (True, True)])
def test_inplace_target_change_raises_as_pytorch(reduction, needs):
    for modify in ("t", "x") if needs[1] else ("t",):
        # xlogy(t, t) - t * x keeps t (and x for t's gradient): PyTorch raises, kldiv too.
        for fn in both_fns():
            assert inplace_trial(fn, reduction, False, modify, needs) == "inplace", (fn, modify)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", LOG_TARGETS)
@pytest.mark.parametrize("nonleaf", [True, False])
def test_inplace_input_change_proceeds_as_pytorch(reduction, log_target, nonleaf):
    # Only x requires a gradient and nothing that kl_div keeps is x: PyTorch proceeds (the
    # gradient does not depend on x), and so must kldiv, with the same gradient.
    ours, theirs = (
        inplace_trial(fn, reduction, log_target, "x", (True, False), nonleaf) for fn in both_fns()
    )
    assert isinstance(theirs, list) and isinstance(ours, list)
    close(ours[0], theirs[0])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "modify, needs", [("t", (True, False)), ("t", (False, True)), ("x", (False, True))]
)
def test_inplace_change_with_log_target(reduction, modify, needs):
    # PyTorch's exp(t) * (t - x) keeps exp(t) and t - x, copies of its own: changing t or x in
    # place after the forward goes unseen there, and the gradients use the old values. kldiv
    # keeps t (and x for t's gradient) themselves, so it raises PyTorch's in-place error
    # instead: never a gradient computed from the changed values.
    theirs = inplace_trial(F.kl_div, reduction, True, modify, needs)
    assert isinstance(theirs, list)
    assert inplace_trial(kt.kl_div, reduction, True, modify, needs) == "inplace"


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", LOG_TARGETS)
@pytest.mark.parametrize("scalar", ["input", "target"])
def test_zero_dim_argument_broadcast_with_gradients(reduction, log_target, scalar):
    x, t = pair((3, 4), torch.float64, log_target, seed=6)
    if scalar == "input":
        x = x[1, 2].clone()
    else:
        t = t[1, 2].clone()
    go = 0.75 if reduction != "none" else None
    ours, theirs = (
        loss_and_grads(fn, x, t, go, reduction=reduction, log_target=log_target)
        for fn in both_fns()
    )
    for a, b in zip(ours, theirs):
        assert_same(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", LOG_TARGETS)
@pytest.mark.parametrize(
    "x_dtype, t_dtype, t_shape, result",
    [
        (torch.float32, torch.float64, (), torch.float32),  # a 0-d tensor does not promote
        (torch.float32, torch.float64, (3, 4), torch.float64),
        (torch.float64, torch.float32, (), torch.float64),
        (torch.float64, torch.float32, (3, 4), torch.float64),
        (torch.float32, torch.float16, (3, 4), torch.float32),  # PyTorch's xlogy in float16
        (torch.bfloat16, torch.float32, (3, 4), torch.float32),
    ],
)
def test_dtype_promotion_as_pytorch(reduction, log_target, x_dtype, t_dtype, t_shape, result):
    x, t = pair((3, 4), torch.float64, log_target, seed=7)
    x, t = x.to(x_dtype), t.to(t_dtype)
    if t_shape == ():
        t = t[1, 2].clone()
    ours, theirs = (
        loss_and_grads(fn, x, t, reduction=reduction, log_target=log_target) for fn in both_fns()
    )
    assert ours[0].dtype == theirs[0].dtype == result
    assert (ours[1].dtype, ours[2].dtype) == (x_dtype, t_dtype)  # each argument's own dtype
    tol = 2e-6 if result == torch.float32 else 1e-13
    for a, b in zip(ours, theirs):
        assert_same(a, b, rtol=tol, atol=tol)


def recorded(f, *args, **kwargs):
    """``f``'s result and the warnings it emitted: (category, message, file name) each."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = f(*args, **kwargs)
    return out, [(r.category, str(r.message), r.filename) for r in w]


@pytest.mark.parametrize("size_average", [None, True, False])
@pytest.mark.parametrize("reduce", [None, True, False])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_legacy_size_average_and_reduce(size_average, reduce, reduction):
    # With either legacy argument given, they pick the reduction, and "batchmean" still
    # divides by input.size(0) afterwards (reduce=False: each term): as PyTorch does.
    x, t = pair((3, 4), torch.float64, seed=8)
    results = []
    for fn in both_fns():
        xs, ts = x.clone().requires_grad_(), t.clone().requires_grad_()
        loss, warned = recorded(fn, xs, ts, size_average, reduce, reduction)
        loss.sum().backward()
        results.append((loss.detach(), xs.grad, ts.grad, warned))
    (*ours, ours_warned), (*theirs, theirs_warned) = results
    for a, b in zip(ours, theirs):
        assert_same(a, b, rtol=1e-13, atol=1e-13)
    assert ours_warned == theirs_warned


def test_module_is_pytorchs_kldivloss():
    import pickle

    ours = kt.KLDivLoss(reduction="batchmean", log_target=True)
    theirs = torch.nn.KLDivLoss(reduction="batchmean", log_target=True)
    assert isinstance(ours, torch.nn.KLDivLoss) and isinstance(ours, torch.nn.Module)
    assert repr(ours) == repr(theirs) and repr(kt.KLDivLoss()) == repr(torch.nn.KLDivLoss())
    assert ours.state_dict() == theirs.state_dict()
    ours.load_state_dict(theirs.state_dict())
    copy = pickle.loads(pickle.dumps(ours))
    assert type(copy) is kt.KLDivLoss
    assert (copy.reduction, copy.log_target) == ("batchmean", True)
    x, t = pair((3, 4), torch.float64, log_target=True, seed=9)
    assert_same(copy(x, t), theirs(x, t), rtol=1e-13, atol=1e-13)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        scripted = torch.jit.script(ours)
    assert_same(scripted(x, t), theirs(x, t), rtol=1e-13, atol=1e-13)
    for reduction in REDUCTIONS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.script(kt.KLDivLoss(reduction=reduction))
        want = quiet(torch.nn.KLDivLoss(reduction=reduction), x, t.exp())
        assert_same(quiet(scripted, x, t.exp()), want, rtol=1e-13, atol=1e-13)


def test_mean_warning_is_pytorchs_word_for_word():
    x, t = pair((3, 4))
    _, ours = recorded(kt.kl_div, x, t)
    _, theirs = recorded(F.kl_div, x, t)
    assert ours == theirs and len(ours) == 1  # same category, text and (caller's) file
    _, ours = recorded(kt.KLDivLoss(), x, t)
    _, theirs = recorded(torch.nn.KLDivLoss(), x, t)
    assert [w[:2] for w in ours] == [w[:2] for w in theirs] and len(ours) == 1
    for fn in both_fns():  # no 'mean' warning for the other reductions
        for reduction in ("none", "sum", "batchmean"):
            assert recorded(fn, x, t, reduction=reduction)[1] == []


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", LOG_TARGETS)
@pytest.mark.parametrize("t_shape", [(), (2, 4)])
def test_mixed_dtypes_overflowing_float32_without_numpy_warnings(reduction, log_target, t_shape):
    # float32 input, float64 target beyond float32's range: a 0-d target becomes +-inf in
    # float32 (the result's dtype), a (2, 4) one keeps float64 and the float32 input's gradient
    # overflows to +-inf: as in PyTorch, and without a NumPy "overflow encountered" warning.
    x = torch.tensor([[-1.0, -2.0, 0.5, -1e30], [-3.0, 0.0, -0.5, 1e30]], dtype=torch.float32)
    big = 90.0 if log_target else 1e280
    t = torch.tensor([[big, 0.5, 4e38, 1e-300], [2.0, big, -big, 3.5e38]], dtype=torch.float64)
    t = t[0, 2].clone() if t_shape == () else t
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for go in (1.0, 1e20):
            ours, theirs = (
                loss_and_grads(fn, x, t, go, reduction=reduction, log_target=log_target)
                for fn in both_fns()
            )
            for a, b in zip(ours, theirs):
                assert_same(a, b, rtol=2e-6, atol=0)


SPECIAL = {
    # dtype: (x values, t values): IEEE specials, tiny (subnormal) and huge magnitudes
    torch.float32: (
        [-1.5, 0.0, -0.0, -INF, INF, NAN, 1e-30, -1e-30, 1e-45, 1e30, -1e30, 3e38, -3e38],
        [0.0, -0.0, 0.3, -0.5, 2.0, -80.0, INF, -INF, NAN, 1e-45, 1e-30, 1e30, 3e38],
    ),
    torch.float64: (
        [-1.5, 0.0, -0.0, -INF, INF, NAN, 1e-300, -1e-300, 5e-324, 1e300, -1e300, 1e308, -1e308],
        [0.0, -0.0, 0.3, -0.5, 2.0, -700.0, INF, -INF, NAN, 5e-324, 1e-300, 1e300, 1e308],
    ),
}
GRAD_OUTPUTS = (0.0, -0.0, 1e-30, 1e30, INF, NAN, -1.0)


def elementwise_grad_output(go, reduction, shape, dtype):
    """The incoming gradient of each term, as PyTorch's backward of the reduction makes it."""
    g = torch.tensor(go, dtype=dtype)
    if reduction == "mean":
        g = g / math.prod(shape)
    elif reduction == "batchmean":
        g = g / shape[0]
    return g.expand(shape)


def rounding_escapes(x, t, g, log_target):
    """Where one of the float operations of PyTorch's target gradient overflows to +-inf or
    underflows to 0 in the tensors' dtype: ``g * t`` of ``xlogy``'s ``g * t / t`` (or, with
    ``log_target`` and float32, ``g * (t - x)`` and its product with ``exp(t)``). kldiv's
    kernels take ``g * t / t`` as ``g`` and compute float32's products in float64: there its
    gradient differs from PyTorch's (see ``test_kernel_numbers_differ_from_pytorch``)."""

    def escapes(a, b, r):
        zero = (r == 0) & (a != 0) & (b != 0)
        inf = r.isinf() & a.isfinite() & b.isfinite()
        return zero | inf

    if not log_target:
        return escapes(g, t, g * t)
    if x.dtype == torch.float64:  # kldiv's float64 operations are PyTorch's
        return torch.zeros_like(t, dtype=torch.bool)
    gd = g * (t - x)
    return escapes(g, t - x, gd) | escapes(gd, t.exp(), gd * t.exp())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", LOG_TARGETS)
def test_grad_output_edge_values_match_pytorch(dtype, reduction, log_target):
    xv, tv = SPECIAL[dtype]
    x, t = torch.meshgrid(
        torch.tensor(xv, dtype=dtype), torch.tensor(tv, dtype=dtype), indexing="ij"
    )
    rtol = 2e-6 if dtype == torch.float32 else 1e-13
    for go in GRAD_OUTPUTS:
        ours, theirs = (
            loss_and_grads(fn, x, t, go, reduction=reduction, log_target=log_target)
            for fn in both_fns()
        )
        assert_same(ours[1], theirs[1], rtol=rtol, atol=0)  # the input's gradient: all of it
        g = elementwise_grad_output(go, reduction, x.shape, dtype)
        keep = ~rounding_escapes(x, t, g, log_target)
        assert_same(ours[2][keep], theirs[2][keep], rtol=rtol, atol=0)
        if go == 0:  # no NaN where PyTorch's is 0: negative targets included
            assert (ours[1].isnan() == theirs[1].isnan()).all()
            assert (ours[2].isnan() == theirs[2].isnan()).all()
        if reduction == "sum" and go in (1e-30, -1.0) and not log_target:
            assert keep[t < 0].all()  # the negative targets' gradients were all compared


def with_terms_at(n, placed, dtype=torch.float64):
    """x, t of shape (1, n), zero but for ``placed`` {index: x}, where t = 1: terms -x."""
    x, t = torch.zeros(1, n, dtype=dtype), torch.zeros(1, n, dtype=dtype)
    for i, v in placed.items():
        x[0, i], t[0, i] = v, 1.0
    return x, t


@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sums_of_infinite_and_zero_terms_as_pytorch(reduction, dtype):
    cases = [
        (with_terms_at(40, {3: -INF}), False),  # a +inf term: +inf
        (with_terms_at(40, {3: INF, 19: -1.0}), False),  # a -inf term: -inf
        (with_terms_at(40, {3: -INF, 19: -INF, 35: -1e30}), False),  # in one lane: still +inf
        (with_terms_at(40, {3: -INF, 4: INF}), False),  # both infinities: NaN
        ((torch.full((2, 40), -1.0), torch.full((2, 40), INF)), False),  # inf + 1 * inf: inf
        ((torch.tensor([[-INF, 0.0, 1.0]]), torch.tensor([[90.0, 0.0, -INF]])), True),  # inf
    ]
    rtol = 2e-6 if dtype == torch.float32 else 1e-13
    for (x, t), log_target in cases:
        ours, theirs = (
            loss_and_grads(fn, x.to(dtype), t.to(dtype), reduction=reduction, log_target=log_target)
            for fn in both_fns()
        )
        assert theirs[0].isinf() or theirs[0].isnan()
        assert_same(ours[0], theirs[0], rtol=0, atol=0)
        for a, b in zip(ours[1:], theirs[1:]):
            assert_same(a, b, rtol=rtol, atol=0)
    # Sums of terms that are all -0.0 (exp(-0) * (-0 - 0)): +0.0, as PyTorch's sum starts at +0
    for shape in [(3,), (2, 40), (0, 3)]:
        x, t = torch.zeros(shape, dtype=dtype), torch.full(shape, -0.0, dtype=dtype)
        ours, theirs = (
            loss_and_grads(fn, x, t, reduction=reduction, log_target=True) for fn in both_fns()
        )
        for a, b in zip(ours, theirs):
            assert_same(a, b, rtol=0, atol=0)
        if shape[0] and reduction != "mean":
            assert ours[0].item() == 0 and not ours[0].signbit()


def test_sums_of_huge_terms_that_pytorch_adds_without_overflow():
    # float64 terms of +-1e308 (t = 1, x = -+1e308), 16 apart: each alternation keeps every
    # partial sum of PyTorch's (and of kldiv's lane) finite: the same finite sum
    for placed in [
        {0: -1e308, 16: 1e308, 32: -1e308, 48: 1e308},
        {0: -1e308, 16: 1e308, 32: -1e308},
        {0: -1e308, 32: -1e308, 1: 1e308, 16: 1e308},
    ]:
        x, t = with_terms_at(64, placed)
        for reduction in ("sum", "mean", "batchmean"):
            ours, theirs = (quiet(fn, x, t, reduction=reduction) for fn in both_fns())
            assert torch.isfinite(theirs)
            assert_same(ours, theirs, rtol=0, atol=0)


def test_target_gradient_at_smallest_subnormal_summed_over_broadcast_axes():
    n, c = 4, 3
    x = pair((n, c), torch.float64, seed=10)[0]
    t = torch.full((1, c), 5e-324, dtype=torch.float64)
    ours, theirs = (loss_and_grads(fn, x, t, reduction="batchmean") for fn in both_fns())
    assert_same(ours[0], theirs[0], rtol=1e-13, atol=1e-320)  # a subnormal loss: to an ulp
    for a, b in zip(ours[1:], theirs[1:]):
        assert_same(a, b, rtol=1e-13, atol=0)
    # d/dt of sum(t * (log t - x)) / n: log t + 1 - mean of x over the batch
    exact = [math.log(5e-324) + 1 - math.fsum(x[:, j].tolist()) / n for j in range(c)]
    torch.testing.assert_close(ours[2], torch.tensor([exact], dtype=torch.float64))


def test_errors_as_pytorch():
    x, t = pair((3, 4))
    for fn in both_fns():
        with pytest.raises(RuntimeError) as e:
            fn(x, t[:2], reduction="sum")
        want = pytest.raises(RuntimeError, F.kl_div, x, t[:2], reduction="sum").value
        assert str(e.value) == str(want)
        with pytest.raises(TypeError) as e:
            fn(x, t, reduction="sum", log_target=np.bool_(True))
        want = pytest.raises(TypeError, F.kl_div, x, t, reduction="sum", log_target=np.bool_(1))
        assert str(e.value) == str(want.value)  # "argument 'log_target' must be bool, not ..."
        with pytest.raises(ValueError, match="^avg is not a valid value for reduction$"):
            fn(x, t, reduction="avg")
        loss, warned = recorded(fn, x, t, reduction="elementwise_mean")
        assert [w[:2] for w in warned] == [
            (
                UserWarning,
                "reduction='elementwise_mean' is deprecated. Please use reduction='mean' instead.",
            )
        ]
        close(loss, quiet(F.kl_div, x, t, reduction="mean"))
    for cls in (kt.KLDivLoss, torch.nn.KLDivLoss):
        loss_fn = cls(reduction="avg")  # made without an error: it is checked when called
        with pytest.raises(ValueError, match="^avg is not a valid value for reduction$"):
            loss_fn(x, t)
        with pytest.raises(TypeError, match="log_target"):
            cls(reduction="sum", log_target=np.bool_(True))(x, t)


def test_flush_to_zero_gives_the_same_values(threads):
    import kldiv

    x = torch.randn(128, 1024, generator=torch.Generator().manual_seed(11)).log_softmax(-1)
    t = torch.full((128, 1024), 1e-40)  # subnormal in float32
    t[:, ::5] = 0.2
    t[:, 1::5] = 1.2e-38  # just above the smallest normal float32
    xn, tn = x.numpy(), t.numpy()

    def forty_calls():
        values = set()
        for _ in range(40):
            values.add(kt.kl_div(x, t, reduction="sum").item())
            values.add(float(kldiv.kl_div(xn, tn, reduction="sum")))
        return values

    kldiv.set_num_threads(2)
    off = forty_calls()
    assert len(off) == 1 and not math.isnan(*off)
    close(torch.tensor(*off, dtype=torch.float32), F.kl_div(x, t, reduction="sum"))
    try:
        assert torch.set_flush_denormal(True)
        kldiv.set_num_threads(1)
        kldiv.set_num_threads(2)  # the pool's threads started with FTZ on, too
        on = forty_calls()
        theirs = F.kl_div(x, t, reduction="sum")
    finally:
        torch.set_flush_denormal(False)  # PyTorch's default (it has no getter)
    assert on == off
    close(torch.tensor(*on, dtype=torch.float32), theirs)


def test_subclasses_go_to_pytorchs_dispatch():
    seen = []

    class Logged(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            seen.append(func)
            return super().__torch_function__(func, types, args, kwargs or {})

    x, t = pair((3, 4))
    for args in ((x.as_subclass(Logged), t), (x, t.as_subclass(Logged))):
        seen.clear()
        out = kt.kl_div(*args, reduction="sum")
        assert type(out) is Logged and seen[0] is kt._torch_kl_div
        close(out.as_subclass(torch.Tensor), F.kl_div(x, t, reduction="sum"))


def test_monkeypatched_pytorch_does_not_recurse(monkeypatch):
    torch_kl_div = F.kl_div
    monkeypatch.setattr(torch.nn.functional, "kl_div", kt.kl_div)
    x, t = pair((3, 4))
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        a, b = x.to(dtype), t.to(dtype)
        want = torch_kl_div(a, b, reduction="sum")
        # float64: kldiv's sum, in another order than PyTorch's, whose order follows its SIMD
        # width (1 ulp apart on an AVX2 CPU, equal on an AVX-512 one).
        tol = {"rtol": 4e-16, "atol": 0} if dtype == torch.float64 else {"rtol": 0, "atol": 0}
        assert_same(F.kl_div(a, b, reduction="sum"), want, **tol)
        assert_same(torch.nn.KLDivLoss(reduction="sum")(a, b), want, **tol)
        assert_same(kt.KLDivLoss(reduction="sum")(a, b), want, **tol)


def exact(value: Fraction, dtype: torch.dtype) -> torch.Tensor:
    """An exact rational value rounded to ``dtype`` (+-inf beyond its range)."""
    try:
        v = float(value)
    except OverflowError:
        v = INF if value > 0 else -INF
    with np.errstate(over="ignore"):
        return torch.tensor(v, dtype=torch.float64).to(dtype).reshape(1)


# Where PyTorch's own intermediates overflow or underflow in the element type, kldiv gives the
# value of the formula itself (its terms are one product of a rounded difference, its sums of
# finite terms never overflow halfway, its gradients are taken in float64 and `(g * t) / t` is
# `g`): the exact value, rounded once. PyTorch's value (in the comments) depends on where its
# intermediates lose range.
# id, dtype, reduction, log_target, x (or {index: x} with t = 1 there), t, go, which, exact
Q = Fraction
EXACT_WHERE_PYTORCH_LOSES_RANGE = [
    # terms 1e308, 1e308, -1e308 at 0, 16, 32 (PyTorch: inf)
    (
        "sum",
        torch.float64,
        "sum",
        False,
        {0: -1e308, 16: -1e308, 32: 1e308},
        None,
        1.0,
        0,
        Q(1e308),
    ),
    # terms 1e308 at 0, 16, -1e308 at 1, 17 (PyTorch: NaN, inf - inf)
    (
        "sum-to-0",
        torch.float64,
        "sum",
        False,
        {0: -1e308, 16: -1e308, 1: 1e308, 17: 1e308},
        None,
        1.0,
        0,
        Q(0),
    ),
    # t (ln t - x) = 3e38 (88.6 - 100): below -float32's max (PyTorch: NaN, inf - inf)
    (
        "term-f32",
        torch.float32,
        "none",
        False,
        [100.0],
        [3e38],
        1.0,
        0,
        Q(3e38) * (Q(math.log(3e38)) - 100),
    ),
    (
        "term-f64",
        torch.float64,
        "none",
        False,
        [1e300],
        [1e308],
        1.0,
        0,
        Q(1e308) * (Q(math.log(1e308)) - Q(1e300)),
    ),
    # g ln t + g - g x (PyTorch: -6.7578e-29, g * t underflows)
    (
        "grad-t-tiny",
        torch.float32,
        "none",
        False,
        [-1.5],
        [1e-30],
        1e-30,
        2,
        Q(1e-30) * (Q(math.log(float(np.float32(1e-30)))) + 1 + Q(1.5)),
    ),
    # (PyTorch: inf, g * t overflows)
    (
        "grad-t-huge-f32",
        torch.float32,
        "none",
        False,
        [-1.5],
        [1e30],
        1e30,
        2,
        Q(1e30) * (Q(math.log(float(np.float32(1e30)))) + 1 + Q(1.5)),
    ),
    (
        "grad-t-huge-f64",
        torch.float64,
        "none",
        False,
        [-1.5],
        [1e300],
        1e30,
        2,
        Q(1e30) * (Q(math.log(1e300)) + 1 + Q(1.5)),
    ),
    # (g (t - x) + g) e^t (PyTorch: inf, g * (t - x) overflows in float32)
    (
        "grad-t-log-target",
        torch.float32,
        "none",
        True,
        [-1e30],
        [-80.0],
        1e30,
        2,
        (Q(1e30) * (Q(-80) - Q(float(np.float32(-1e30)))) + Q(1e30)) * Q(math.exp(-80.0)),
    ),
    # t (ln t - x), one rounding: -742.94 of the smallest subnormal, so -743 (PyTorch: -742)
    (
        "subnormal-term",
        torch.float64,
        "none",
        False,
        [-1.5],
        [5e-324],
        1.0,
        0,
        Q(5e-324) * (Q(math.log(5e-324)) + Q(1.5)),
    ),
]


@pytest.mark.parametrize(
    "dtype, reduction, log_target, x, t, go, which, want",
    [pytest.param(*case[1:], id=case[0]) for case in EXACT_WHERE_PYTORCH_LOSES_RANGE],
)
def test_exact_where_pytorchs_intermediates_lose_range(
    dtype, reduction, log_target, x, t, go, which, want
):
    if isinstance(x, dict):
        x, t = with_terms_at(64, x, dtype)
    else:
        x, t = torch.tensor(x, dtype=dtype), torch.tensor(t, dtype=dtype)
    ours = loss_and_grads(kt.kl_div, x, t, go, reduction=reduction, log_target=log_target)
    rtol = 2e-6 if dtype == torch.float32 else 1e-13
    got = ours[which].reshape(-1)[:1]
    torch.testing.assert_close(got, exact(want, dtype), rtol=rtol, atol=0)

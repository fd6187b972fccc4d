"""Gradients: PyTorch's autograd fixtures, finite differences, the fused kernel, out=."""

import numpy as np
import pytest

import kldiv
from helpers import REDUCTIONS, apply_view, dist, load_fixtures, quiet, reference_terms, tolerance

CASES = load_fixtures()


def assert_like_torch(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    np.testing.assert_allclose(got, want, equal_nan=True, **tolerance(want.dtype))


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{c['name']}-{c['reduction']}-lt{int(c['log_target'])}" for c in CASES]
)
def test_gradients_match_pytorch_autograd(case):
    x = apply_view(case["input"], case["view"])
    t = apply_view(case["target"], case["view"])
    gx, gt = kldiv.kl_div_backward(
        case["grad_output"], x, t, reduction=case["reduction"], log_target=case["log_target"]
    )
    assert_like_torch(gx, case["grad_input"])
    assert_like_torch(gt, case["grad_target"])


def loss_value(x, t, reduction, log_target, go):
    v = quiet(kldiv.kl_div, x, t, reduction, log_target)
    return float(np.sum(np.asarray(v) * go))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True])
def test_central_differences_float64(reduction, log_target):
    rng = np.random.default_rng(11)
    x, t = dist(rng, (3, 4), log=True), dist(rng, (3, 4), log=log_target)
    go = rng.uniform(0.5, 1.5, size=(3, 4)) if reduction == "none" else 0.8
    gx, gt = kldiv.kl_div_backward(go, x, t, reduction, log_target)
    h = 1e-6
    for which, grad in ((0, gx), (1, gt)):
        for idx in np.ndindex(3, 4):
            args = [x.copy(), t.copy()]
            args[which][idx] += h
            up = loss_value(*args, reduction, log_target, go)
            args[which][idx] -= 2 * h
            down = loss_value(*args, reduction, log_target, go)
            assert (up - down) / (2 * h) == pytest.approx(grad[idx], rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shapes", [((200, 700), (200, 700)), ((200, 700), (1, 700))])
def test_fused_equals_forward_and_backward(reduction, log_target, dtype, shapes):
    rng = np.random.default_rng(12)
    x = dist(rng, shapes[0], log=True).astype(dtype)
    t = dist(rng, shapes[1], log=log_target).astype(dtype)
    loss, gx = quiet(kldiv.kl_div_and_grad, x, t, reduction, log_target)
    want_loss = quiet(kldiv.kl_div, x, t, reduction, log_target)
    ones = np.ones(np.broadcast_shapes(x.shape, t.shape), dtype) if reduction == "none" else 1.0
    want_gx = kldiv.kl_div_backward(ones, x, t, reduction, log_target)[0]
    assert np.asarray(loss).tobytes() == np.asarray(want_loss).tobytes()
    assert type(loss) is type(want_loss)
    assert gx.dtype == dtype and gx.shape == x.shape
    np.testing.assert_array_equal(gx, want_gx)


def test_fused_gradient_is_minus_target_over_divisor():
    rng = np.random.default_rng(13)
    x, t = dist(rng, (8, 5), log=True), dist(rng, (8, 5))
    _, gx = kldiv.kl_div_and_grad(x, t, "batchmean")
    np.testing.assert_array_equal(gx, -(t * (1 / 8)))
    loss, gx = kldiv.kl_div_and_grad(x, t, "none")
    np.testing.assert_allclose(loss, reference_terms(x, t, False), rtol=1e-14)
    np.testing.assert_array_equal(gx, -t)


def test_broadcast_gradients_are_summed_back():
    rng = np.random.default_rng(14)
    x, t = dist(rng, (4, 1, 5), log=True), dist(rng, (3, 5))
    gx, gt = kldiv.kl_div_backward(1.0, x, t, "sum")
    assert gx.shape == x.shape and gt.shape == t.shape
    np.testing.assert_allclose(gx, np.broadcast_to(-t, (4, 3, 5)).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(gt, (np.log(t) + 1 - x).sum(axis=0), rtol=1e-13)


def test_mixed_dtypes_give_each_gradient_its_own_dtype():
    rng = np.random.default_rng(15)
    x = dist(rng, (3, 4), log=True).astype(np.float32)
    t = dist(rng, (3, 4))
    gx, gt = kldiv.kl_div_backward(1.0, x, t, "sum")
    assert gx.dtype == np.float32 and gt.dtype == np.float64
    _, gx = kldiv.kl_div_and_grad(x, t, "sum")
    assert gx.dtype == np.float32


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_gradients_do_not_depend_on_threads(n, threads):
    rng = np.random.default_rng(16)
    x = dist(rng, (300, 1001), log=True).astype(np.float32)
    t = dist(rng, (300, 1001)).astype(np.float32)
    kldiv.set_num_threads(1)
    want = [a.tobytes() for a in kldiv.kl_div_backward(0.5, x, t, "batchmean")]
    want_fused = [np.asarray(a).tobytes() for a in kldiv.kl_div_and_grad(x, t, "batchmean")]
    kldiv.set_num_threads(n)
    assert [a.tobytes() for a in kldiv.kl_div_backward(0.5, x, t, "batchmean")] == want
    got_fused = [np.asarray(a).tobytes() for a in kldiv.kl_div_and_grad(x, t, "batchmean")]
    assert got_fused == want_fused


def test_out_arrays_are_used_and_checked():
    rng = np.random.default_rng(17)
    x, t = dist(rng, (6, 5), log=True), dist(rng, (6, 5))
    out = np.empty((6, 5))
    assert kldiv.kl_div(x, t, "none", out=out) is out
    np.testing.assert_array_equal(out, kldiv.kl_div(x, t, "none"))
    strided = np.zeros((6, 10))[:, ::-2]
    kldiv.kl_div(x, t, "none", out=strided)
    np.testing.assert_array_equal(strided, out)
    gi, gt = np.empty((6, 5)), np.empty((6, 5))
    r = kldiv.kl_div_backward(1.0, x, t, "sum", out=(gi, gt))
    assert r[0] is gi and r[1] is gt
    _, g = kldiv.kl_div_and_grad(x, t, "sum", out=np.empty((6, 5)))
    np.testing.assert_array_equal(g, gi)

    with pytest.raises(ValueError, match="shape"):
        kldiv.kl_div(x, t, "none", out=np.empty((5, 6)))
    with pytest.raises(TypeError, match="dtype"):
        kldiv.kl_div(x, t, "none", out=np.empty((6, 5), np.float32))
    ro = np.empty((6, 5))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        kldiv.kl_div(x, t, "none", out=ro)
    with pytest.raises(ValueError, match="overlaps"):
        kldiv.kl_div(x, t, "none", out=x)
    with pytest.raises(ValueError, match="overlaps"):
        kldiv.kl_div_and_grad(x, t, "sum", out=t)
    with pytest.raises(ValueError, match="reduction='none' only"):
        kldiv.kl_div(x, t, "sum", out=out)
    with pytest.raises(TypeError, match="tuple"):
        kldiv.kl_div_backward(1.0, x, t, "sum", out=gi)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        kldiv.kl_div_and_grad(x, t, "sum", out=[0.0] * 30)


def test_grad_output_is_checked():
    x = np.log(np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="scalar"):
        kldiv.kl_div_backward(np.ones(2), x, np.exp(x), "sum")
    with pytest.raises(ValueError, match="does not broadcast"):
        kldiv.kl_div_backward(np.ones(4), x, np.exp(x), "none")
    with pytest.raises(ValueError, match="does not broadcast"):
        kldiv.kl_div_backward(np.ones((5, 2, 3)), x, np.exp(x), "none")
    with pytest.raises(TypeError, match="grad_output has dtype"):
        kldiv.kl_div_backward("1", x, np.exp(x), "sum")
    gx, _ = kldiv.kl_div_backward(1, x, np.exp(x), "sum")  # an int is fine
    np.testing.assert_allclose(gx, -np.exp(x))
    gx, _ = kldiv.kl_div_backward(np.ones(3), x, np.exp(x), "none")  # broadcast grad_output
    np.testing.assert_allclose(gx, -np.exp(x))

"""Losses from logits (kldiv.kl_div_logits, kldiv.jsd_logits and their _and_grad twins) against
a float64 NumPy evaluation of SPEC's formulas: values, gradients, masks, reductions, dtypes,
layouts, thread counts and errors. Needs only NumPy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import kldiv

REDUCTIONS = ("none", "sum", "mean", "batchmean")
DIVERGENCES = ("forward", "reverse", "jsd")


def log_softmax(z: np.ndarray) -> np.ndarray:
    m = np.max(z, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return z - m - np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True))


def reference(s, t, divergence, beta=0.5, temperature=1.0, w=None, reduction="mean"):
    """(loss, gradient) in float64 from the formulas of SPEC's "From logits"."""
    s = np.asarray(s, dtype=np.float64) / temperature
    t = np.asarray(t, dtype=np.float64) / temperature
    s, t = np.broadcast_arrays(s, t)
    ls, lt = log_softmax(s), log_softmax(t)
    p, q = np.exp(lt), np.exp(ls)
    if divergence == "jsd" and beta in (0.0, 1.0):
        divergence = "forward" if beta == 0.0 else "reverse"
    with np.errstate(all="ignore"):
        if divergence == "forward":
            rows = np.where(p > 0, p * (lt - ls), 0.0).sum(-1)
            grad = q - p
        elif divergence == "reverse":
            rows = np.where(q > 0, q * (ls - lt), 0.0).sum(-1)
            grad = np.where(q > 0, q * (ls - lt - rows[..., None]), 0.0)
        else:
            m = np.log(beta * p + (1 - beta) * q)
            kp = np.where(p > 0, p * (lt - m), 0.0).sum(-1)
            kq = np.where(q > 0, q * (ls - m), 0.0).sum(-1)
            rows = beta * kp + (1 - beta) * kq
            grad = (1 - beta) * np.where(q > 0, q * (ls - m - kq[..., None]), 0.0)
    w = np.ones(rows.shape) if w is None else np.broadcast_to(np.asarray(w, np.float64), rows.shape)
    rows = np.where(w != 0, rows * w, 0.0)
    grad = np.where(w[..., None] != 0, grad * w[..., None], 0.0) / temperature
    if reduction == "none":
        return rows, grad
    div = {"sum": 1.0, "mean": w.sum(), "batchmean": float(s.shape[0])}[reduction]
    if div == 0:
        return 0.0, grad * 0
    return float(np.sum(rows)) / div, grad / div


def call(divergence, s, t, beta=0.5, grad=True, **kw):
    if divergence == "jsd":
        f = kldiv.jsd_logits_and_grad if grad else kldiv.jsd_logits
        return f(s, t, beta=beta, **kw)
    f = kldiv.kl_div_logits_and_grad if grad else kldiv.kl_div_logits
    return f(s, t, reverse=divergence == "reverse", **kw)


def logits(shape, dtype=np.float32, seed=0, scale=3.0):
    g = np.random.default_rng(seed)
    return (g.standard_normal(shape) * scale).astype(dtype), (
        g.standard_normal(shape) * scale
    ).astype(dtype)


def assert_grad_close(got, want, dtype):
    """Within 4 ulp of the dtype at the reference's magnitude, or 1e-9 absolute."""
    eps = np.finfo(dtype).eps
    err = np.abs(got.astype(np.float64) - want)
    bound = 4 * eps * np.abs(want) + 1e-9
    assert np.all(err <= bound), (err - bound).max()


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("vocab", [7, 1000, 32000])
def test_float32_matches_float64_evaluation(divergence, reduction, vocab):
    s, t = logits((6, vocab), seed=vocab)
    labels = np.array([1, -100, 2, 3, -100, 4])
    weights = np.linspace(0.5, 2.0, 6)
    kw = dict(temperature=2.0, labels=labels, weights=weights, reduction=reduction)
    loss, grad = call(divergence, s, t, beta=0.3, **kw)
    want, want_grad = reference(s, t, divergence, 0.3, 2.0, weights * (labels != -100), reduction)
    assert np.asarray(loss).dtype == np.float32 and grad.dtype == np.float32
    np.testing.assert_allclose(np.asarray(loss, np.float64), want, rtol=1e-6, atol=1e-7)
    assert_grad_close(grad, want_grad, np.float32)
    assert np.all(grad[[1, 4]] == 0)  # rows that do not count: exactly 0


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_float64_is_exact_to_float64_rounding(divergence):
    s, t = logits((5, 300), np.float64, seed=3)
    loss, grad = call(divergence, s, t, beta=0.7, reduction="sum")
    want, want_grad = reference(s, t, divergence, 0.7, reduction="sum")
    np.testing.assert_allclose(loss, want, rtol=1e-13)
    # Q (s - t - L) cancels where s - t is near L: the bound is at the gradient's scale.
    np.testing.assert_allclose(grad, want_grad, rtol=1e-11, atol=1e-12 * np.abs(want_grad).max())


def test_loss_alone_equals_loss_with_gradient():
    s, t = logits((9, 513), seed=4)
    for divergence in DIVERGENCES:
        for reduction in REDUCTIONS:
            a = call(divergence, s, t, grad=False, reduction=reduction)
            b, _ = call(divergence, s, t, reduction=reduction)
            np.testing.assert_array_equal(a, b)


def test_jsd_at_beta_0_and_1_is_exactly_forward_and_reverse_kl():
    s, t = logits((4, 200), seed=5)
    for beta, reverse in ((0.0, False), (1.0, True)):
        a, ga = kldiv.jsd_logits_and_grad(s, t, beta=beta, temperature=1.5)
        b, gb = kldiv.kl_div_logits_and_grad(s, t, reverse=reverse, temperature=1.5)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ga, gb)


def test_masked_entries_give_no_nan_and_mathematics_elsewhere():
    inf = np.inf
    s = np.array([[0.0, 1.0, -inf, 2.0], [0.0, -inf, 1.0, 1.0]], dtype=np.float32)
    t = np.array([[1.0, 0.0, -inf, -inf], [0.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    rows, grad = kldiv.kl_div_logits_and_grad(s, t, reduction="none")
    assert np.isfinite(rows[0]) and np.all(np.isfinite(grad[0]))
    assert rows[1] == np.inf  # P > 0 where Q = 0
    assert kldiv.kl_div_logits(s[:1], t[:1], reverse=True) == np.inf  # Q > 0 where P = 0
    both = s[:1].copy()
    both[0, 3] = -inf  # both masked alike: every divergence finite
    for divergence, student in (("reverse", both), ("jsd", s[:1]), ("jsd", both)):
        r, g = call(divergence, student, t[:1], reduction="none")
        want, want_grad = reference(student, t[:1], divergence, reduction="none")
        np.testing.assert_allclose(r, want, rtol=1e-6)
        assert_grad_close(g, want_grad, np.float32)


def test_nan_rows_and_all_masked_rows_are_nan():
    s = np.array([[0.0, np.nan, 1.0], [-np.inf] * 3, [0.0, 1.0, 2.0]], dtype=np.float32)
    t = np.zeros((3, 3), dtype=np.float32)
    for divergence in DIVERGENCES:
        rows = call(divergence, s, t, grad=False, reduction="none")
        assert np.isnan(rows[0]) and np.isnan(rows[1]) and np.isfinite(rows[2])
        # a row that does not count is 0 whatever its logits hold
        loss = call(divergence, s, t, grad=False, labels=[-100, -100, 1], reduction="sum")
        assert np.isfinite(loss)


def test_reductions_divide_as_spec_says():
    s, t = logits((3, 4, 50), seed=6)
    rows = kldiv.kl_div_logits(s, t, reduction="none")
    assert rows.shape == (3, 4)
    total = np.sum(rows, dtype=np.float64)
    np.testing.assert_allclose(kldiv.kl_div_logits(s, t, reduction="sum"), total, rtol=1e-6)
    np.testing.assert_allclose(kldiv.kl_div_logits(s, t), total / 12, rtol=1e-6)
    np.testing.assert_allclose(
        kldiv.kl_div_logits(s, t, reduction="batchmean"), total / 3, rtol=1e-6
    )
    none_counts = np.full((3, 4), -100)
    assert kldiv.kl_div_logits(s, t, labels=none_counts) == 0.0


def test_broadcast_rows_and_strided_views_give_the_same_bits():
    s, t = logits((8, 2, 301), np.float32, seed=7)
    base, g = kldiv.kl_div_logits_and_grad(s, t, reduction="sum")
    sf, tf = np.asfortranarray(s), t[::-1][::-1]
    a, ga = kldiv.kl_div_logits_and_grad(sf, tf, reduction="sum")
    assert a == base and np.array_equal(ga, g)
    big = np.zeros((8, 2, 602), np.float32)
    big[..., ::2] = s
    a, ga = kldiv.kl_div_logits_and_grad(big[..., ::2], t, reduction="sum")
    assert a == base and np.array_equal(ga, g)
    # a teacher row broadcast over the student's rows
    one = t[:1, :1]
    a, ga = kldiv.kl_div_logits_and_grad(s, one, reduction="sum")
    b, gb = kldiv.kl_div_logits_and_grad(s, np.broadcast_to(one, s.shape).copy(), reduction="sum")
    assert a == b and np.array_equal(ga, gb)


def test_same_bits_for_every_thread_count(threads):
    s, t = logits((37, 4001), seed=8)
    results = []
    for n in (1, 2, 3):
        kldiv.set_num_threads(n)
        results.append([call(d, s, t, reduction="mean") for d in DIVERGENCES])
    for r in results[1:]:
        for (a, ga), (b, gb) in zip(results[0], r):
            assert a == b and np.array_equal(ga, gb)


def test_float16_computes_in_float32():
    s, t = logits((5, 333), np.float16, seed=9)
    for divergence in DIVERGENCES:
        a, ga = call(divergence, s, t, reduction="sum")
        b, gb = call(divergence, s.astype(np.float32), t.astype(np.float32), reduction="sum")
        assert np.asarray(a).dtype == np.float16 and ga.dtype == np.float16
        assert a == np.float16(b)
        np.testing.assert_allclose(ga.astype(np.float32), gb, rtol=2**-10, atol=2**-24)


def test_float64_with_float32_computes_in_float64():
    s, t = logits((3, 40), np.float64, seed=10)
    a = kldiv.kl_div_logits(s, t.astype(np.float32))
    b = kldiv.kl_div_logits(s, t.astype(np.float32).astype(np.float64))
    assert np.asarray(a).dtype == np.float64 and a == b


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature=float("inf")), ValueError, "temperature"),
        (dict(temperature="2"), TypeError, "temperature"),
        (dict(reduction="avg"), ValueError, "reduction"),
        (dict(labels=np.zeros(3)), TypeError, "labels"),
        (dict(labels=np.zeros(5, dtype=int)), ValueError, "labels"),
        (dict(weights=np.ones(5)), ValueError, "weights"),
        (dict(ignore_index=1.5), TypeError, "ignore_index"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    s, t = logits((4, 10), seed=11)
    with pytest.raises(error, match=match):
        kldiv.kl_div_logits(s, t, **kwargs)


def test_bad_logits_raise_clear_errors():
    s, t = logits((4, 10), seed=12)
    with pytest.raises(ValueError, match="vocabular|shape"):
        kldiv.kl_div_logits(s, t[:, :9])
    with pytest.raises(ValueError, match="shape"):
        kldiv.kl_div_logits(s, t[:3])
    with pytest.raises(TypeError):
        kldiv.kl_div_logits(s.astype(np.int32), t)
    with pytest.raises(ValueError, match="beta"):
        kldiv.jsd_logits(s, t, beta=1.5)
    with pytest.raises(TypeError, match="reverse"):
        kldiv.kl_div_logits(s, t, reverse=1)


@given(
    rows=st.integers(1, 6),
    vocab=st.integers(1, 70),
    divergence=st.sampled_from(DIVERGENCES),
    beta=st.floats(0.0, 1.0),
    temperature=st.floats(0.25, 4.0),
    seed=st.integers(0, 2**31),
)
def test_property_matches_reference(rows, vocab, divergence, beta, temperature, seed):
    s, t = logits((rows, vocab), np.float64, seed=seed, scale=5.0)
    loss, grad = call(divergence, s, t, beta=beta, temperature=temperature, reduction="sum")
    want, want_grad = reference(s, t, divergence, beta, temperature, reduction="sum")
    np.testing.assert_allclose(loss, want, rtol=1e-10, atol=1e-14)
    # the reverse KL's Q (s - t - L) cancels: its rounding is at the scale of s and t
    scale = (np.abs(s).max() + np.abs(t).max()) / temperature**2
    np.testing.assert_allclose(grad, want_grad, rtol=1e-8, atol=1e-14 * scale)
    assert loss >= -1e-12  # a divergence is not negative


def test_docstring_examples_run():
    import doctest

    import kldiv._logits

    result = doctest.testmod(kldiv._logits, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_llama3_vocabulary_rows(divergence):
    """Rows of 128,256 float32 logits (Llama 3's vocabulary), peaked and flat."""
    g = np.random.default_rng(13)
    s = (g.standard_normal((3, 128_256)) * np.array([[1.0], [4.0], [0.1]])).astype(np.float32)
    t = (s + g.standard_normal(s.shape)).astype(np.float32)
    loss, grad = call(divergence, s, t, beta=0.5, temperature=1.5, reduction="sum")
    want, want_grad = reference(s, t, divergence, 0.5, 1.5, reduction="sum")
    np.testing.assert_allclose(float(loss), want, rtol=1e-6, atol=1e-7)
    assert_grad_close(grad, want_grad, np.float32)

"""kldiv.dask: the in-memory answer on the threaded and processes schedulers and on a real
distributed.LocalCluster (worker processes on this machine, loopback only)."""

from __future__ import annotations

import numpy as np
import pytest

da = pytest.importorskip("dask.array", reason="Dask is not installed: kldiv.dask untested")
import dask  # noqa: E402

import kldiv  # noqa: E402
import kldiv.dask as kd  # noqa: E402
from helpers import REDUCTIONS, quiet  # noqa: E402


def data(rows=2000, cols=300, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, cols))
    x = (z - np.log(np.exp(z).sum(axis=1, keepdims=True))).astype(dtype)
    t = np.exp(rng.standard_normal((rows, cols))).astype(dtype)
    return x, (t / t.sum(axis=1, keepdims=True)).astype(dtype)


def check(got, want):
    got = np.asarray(got)
    assert got.dtype == np.asarray(want).dtype
    tol = 1e-5 if got.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * 1e-3)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threaded_scheduler_unequal_chunks(reduction, log_target, dtype):
    x, t = data(dtype=dtype)
    if log_target:
        t = np.log(t)
    X, T = da.from_array(x, chunks=(300, 70)), da.from_array(t, chunks=(250, 100))
    with dask.config.set(scheduler="threads"):
        check(
            kd.kl_div(X, T, reduction, log_target).compute(),
            quiet(kldiv.kl_div, x, t, reduction, log_target),
        )
        loss, grad = kd.kl_div_and_grad(X, T, reduction, log_target)
        want_loss, want_grad = quiet(kldiv.kl_div_and_grad, x, t, reduction, log_target)
        check(loss.compute(), want_loss)
        np.testing.assert_array_equal(grad.compute(), want_grad)


def test_same_chunking_same_bits_on_every_scheduler():
    x, t = data()
    X, T = da.from_array(x, chunks=(128, 100)), da.from_array(t, chunks=(128, 100))
    results = {
        s: kd.kl_div(X, T, "batchmean").compute(scheduler=s).tobytes()
        for s in ("threads", "sync", "processes")
    }
    assert len(set(results.values())) == 1, results


def test_broadcasting_both_ways():
    x, t = data(rows=400)
    X = da.from_array(x[:, None, :], chunks=(100, 1, 150))
    T = da.from_array(t[:3], chunks=(2, 100))
    check(
        kd.kl_div(X, T, "sum").compute(scheduler="threads"),
        kldiv.kl_div(x[:, None, :], t[:3], "sum"),
    )
    loss, grad = kd.kl_div_and_grad(da.from_array(t[:1]), X, "sum")
    want_loss, want_grad = kldiv.kl_div_and_grad(t[:1], x[:, None, :], "sum")
    check(loss.compute(), want_loss)
    np.testing.assert_allclose(grad.compute(), want_grad, rtol=1e-5)


def test_errors():
    X = da.ones((4, 5), chunks=2)
    with pytest.raises(ValueError, match="batchmean"):
        kd.kl_div(X, X, "avg")
    with pytest.raises(ValueError, match="do not broadcast"):
        kd.kl_div(X, da.ones(4), "sum")
    with pytest.raises(TypeError, match="int64"):
        kd.kl_div(da.ones((4, 5), dtype=int, chunks=2), X, "sum")


def test_local_cluster_with_processes():
    distributed = pytest.importorskip("distributed")
    x, t = data(rows=20_000, cols=500)  # 10,000,000 elements in 200 chunks
    X, T = da.from_array(x, chunks=(1000, 50)), da.from_array(t, chunks=(1000, 50))
    assert X.npartitions == 200  # an array 200 times larger than one chunk
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        got = client.compute(kd.kl_div(X, T, "batchmean")).result()
        loss, grad = client.gather(client.compute(list(kd.kl_div_and_grad(X, T, "batchmean"))))
    check(got, kldiv.kl_div(x, t, "batchmean"))
    check(loss, kldiv.kl_div(x, t, "batchmean"))
    np.testing.assert_array_equal(grad, kldiv.kl_div_and_grad(x, t, "batchmean")[1])


def test_reductions_are_numpy_scalars_as_kldiv_kl_div_gives():
    x, t = data(200, 30)
    for reduction in ("sum", "mean", "batchmean"):
        got = quiet(kd.kl_div, da.from_array(x, chunks=50), da.from_array(t, chunks=50), reduction)
        got = got.compute(scheduler="threads")
        want = quiet(kldiv.kl_div, x, t, reduction)
        assert type(got) is type(want) is np.float32, (type(got), type(want))
    loss, _ = kd.kl_div_and_grad(da.from_array(x, chunks=50), t, "sum")
    assert type(loss.compute(scheduler="threads")) is np.float32


def test_float16_gradient_of_a_broadcast_input_is_summed_then_rounded_once():
    # One input row against 400 target rows: the gradient is the float32 sum of 400 rows,
    # rounded once to float16, as kldiv.kl_div_and_grad gives it.
    rng = np.random.default_rng(3)
    x = np.log(rng.dirichlet(np.ones(64), 1)).astype(np.float16)
    t = rng.dirichlet(np.ones(64), 400).astype(np.float16)
    _, want = kldiv.kl_div_and_grad(x, t, "sum")
    _, got = kd.kl_div_and_grad(da.from_array(x), da.from_array(t, chunks=(50, 64)), "sum")
    got = got.compute(scheduler="threads")
    assert got.dtype == np.float16 and got.shape == x.shape
    # The same float32 sums in another order: at most one float16 rounding apart.
    ulp = np.spacing(np.abs(want.astype(np.float32)).astype(np.float16)).astype(np.float32)
    assert np.all(np.abs(got.astype(np.float32) - want.astype(np.float32)) <= ulp)
    exact = -t.astype(np.float64).sum(axis=0, keepdims=True)  # d/dx of the sum: -sum of t
    err = np.abs(got.astype(np.float64) - exact)
    assert np.all(err <= np.spacing(np.abs(exact).astype(np.float16)).astype(np.float64))


def test_unknown_chunk_sizes_say_so():
    x, t = data(100, 20)
    dx = da.from_array(x, chunks=25)
    masked = dx[dx[:, 0] < 0]  # boolean indexing: unknown chunk sizes
    with pytest.raises(ValueError, match=r"unknown chunk sizes.*compute_chunk_sizes\(\)"):
        kd.kl_div(masked, t[:1], "sum")

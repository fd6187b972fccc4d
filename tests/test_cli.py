"""The command line: kldiv loss on .npy/.npz files (block by block, memory-mapped), errors as
one line with exit status 2, and bounded memory on files larger than a block."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import kldiv


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kldiv", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3000, 1000)).astype(np.float32)
    x = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    t = np.exp(rng.standard_normal((3000, 1000)).astype(np.float32))
    t /= t.sum(axis=1, keepdims=True)
    np.save(d / "x.npy", x)
    np.save(d / "t.npy", t)
    np.save(d / "row.npy", t[:1])
    np.save(d / "xf.npy", np.asfortranarray(x))
    np.savez(d / "xt.npz", x=x, t=t)
    np.save(d / "ints.npy", np.arange(10))
    (d / "junk.npy").write_bytes(b"not an array")
    return d, x, t


@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean"])
def test_loss_equals_the_in_memory_call(files, reduction, monkeypatch):
    d, x, t = files
    r = run("loss", str(d / "x.npy"), str(d / "t.npy"), "--reduction", reduction)
    assert r.returncode == 0, r.stderr
    want = (
        kldiv.kl_div(x, t, reduction) if reduction != "mean" else kldiv.kl_div(x, t, "sum") / x.size
    )
    assert float(r.stdout) == pytest.approx(float(want), rel=1e-6)
    assert reduction in r.stderr  # says what the number means


def test_npz_fortran_broadcast_and_log_target(files):
    d, x, t = files
    r = run("loss", str(d / "xt.npz"), str(d / "xt.npz"), "--input-key", "x", "--target-key", "t")
    assert float(r.stdout) == pytest.approx(float(kldiv.kl_div(x, t, "batchmean")), rel=1e-6)
    r = run("loss", str(d / "xf.npy"), str(d / "t.npy"))
    assert float(r.stdout) == pytest.approx(float(kldiv.kl_div(x, t, "batchmean")), rel=1e-6)
    r = run("loss", str(d / "x.npy"), str(d / "row.npy"), "--log-target")
    want = kldiv.kl_div(x, t[:1], "batchmean", log_target=True)
    assert float(r.stdout) == pytest.approx(float(want), rel=1e-6)


def test_none_writes_the_terms(files, tmp_path):
    d, x, t = files
    out = tmp_path / "terms.npy"
    r = run("loss", str(d / "x.npy"), str(d / "t.npy"), "--reduction", "none", "--out", str(out))
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(out), kldiv.kl_div(x, t, "none"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.npy", "t.npy"], "missing.npy: no such file"),
        (["x.npy", "junk.npy"], "junk.npy: not a NumPy"),
        (["x.npy", "ints.npy"], "target has dtype int64"),
        (["x.npy", "row.npy", "--reduction", "none"], "give --out"),
        (["x.npy", "xt.npz", "--target-key", "nope"], "no array 'nope'"),
        (["ints.npy", "xt.npz", "--target-key", "t"], "input has dtype int64"),
        (["x.npy", "xt.npz", "--target-key", "x", "--reduction", "avg"], "invalid choice"),
    ],
)
def test_errors_are_one_line(files, args, message):
    d, _, _ = files
    args = [str(d / a) if a.endswith((".npy", ".npz")) else a for a in args]
    r = run("loss", *args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_shape_mismatch_is_one_line(files, tmp_path):
    d, x, _ = files
    np.save(tmp_path / "small.npy", x[:, :7])
    r = run("loss", str(d / "x.npy"), str(tmp_path / "small.npy"))
    assert r.returncode == 2 and "do not broadcast" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="peak RSS from /proc/self/status")
def test_bounded_memory_and_a_progress_bar(tmp_path):
    # 2 x 512 MiB of input: far more than a block (64 MiB per input); the peak RSS of the
    # child stays near one block's worth, and a progress bar is drawn.
    rows, cols = 1 << 14, 1 << 13
    for name, fill in (("x", -2.0), ("t", 0.5)):
        m = np.lib.format.open_memmap(tmp_path / f"{name}.npy", "w+", np.float32, (rows, cols))
        m[...] = fill
        m.flush()
        del m
    # VmHWM: this process's peak RSS (ru_maxrss would include the forking parent's)
    code = (
        "import sys; from kldiv.cli import main; rc = main(sys.argv[1:]); "
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
        "print(hwm.split()[1], file=sys.stderr); sys.exit(rc)"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "loss",
            str(tmp_path / "x.npy"),
            str(tmp_path / "t.npy"),
            "--progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    peak_kib = int(r.stderr.strip().splitlines()[-1])
    assert "100.0%" in r.stderr  # the progress bar finished
    term = 0.5 * float(np.log(np.float32(0.5))) + 1.0
    assert float(r.stdout) == pytest.approx(cols * term, rel=1e-6)
    print(f"peak RSS {peak_kib / 1024:.0f} MiB for 1024 MiB of input")
    assert peak_kib < 300 * 1024


def test_bench_smoke(tmp_path):
    r = run(
        "bench",
        "--quick",
        "--workloads",
        "W1,W4",
        "--impls",
        "kldiv,numpy",
        "--repeats",
        "3",
        "--json",
        str(tmp_path / "b.json"),
        "--png",
        str(tmp_path / "b.png"),
    )
    assert r.returncode == 0, r.stderr
    assert "W1" in r.stdout and "kldiv" in r.stdout
    assert (tmp_path / "b.json").exists()


def test_bench_times_w1_in_turns_with_the_workloads_measured_against_it():
    from kldiv import _bench

    res = _bench.run(["W4", "W8"], threads=1, repeats=1, quick=True, impls=["kldiv"])
    rows = {(r["workload"], r["impl"]): r for r in res["results"]}
    assert ("W4", _bench.IN_TURNS_W1) not in rows  # W4's target is not a ratio to W1
    w1 = rows["W8", _bench.IN_TURNS_W1]
    x1, _ = _bench.make_inputs(_bench.WORKLOADS["W1"], quick=True)
    assert w1["elements"] == x1.size
    assert w1["ns_per_element"] == w1["ns_per_call"] / x1.size
    assert "W8 takes" in _bench.format_table(res)
    assert not any("DIFFERS" in n for n in res["notes"])

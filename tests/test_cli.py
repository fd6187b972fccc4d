"""The command line: kldiv loss on .npy/.npz files (block by block, memory-mapped), errors as
one line with exit status 2, and bounded memory on files larger than a block."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

import kldiv


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m kldiv ARGS``, its output decoded as is (text=True would turn carriage
    returns into newlines)."""
    r = subprocess.run([sys.executable, "-m", "kldiv", *args], capture_output=True, timeout=timeout)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())


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
        str(tmp_path / "out" / "b.json"),
        "--png",
        str(tmp_path / "charts" / "b.png"),
    )
    assert r.returncode == 0, r.stderr
    assert "W1" in r.stdout and "kldiv" in r.stdout
    # exactly where --json says, its folder created
    assert f"json: {tmp_path / 'out' / 'b.json'}" in r.stdout
    res = json.loads((tmp_path / "out" / "b.json").read_text())
    assert {row["workload"] for row in res["results"]} == {"W1", "W4"}
    assert str(tmp_path / "charts" / "b.png") in r.stdout  # the chart, or why there is none


def test_bench_writes_no_file_unless_asked_and_its_floor_is_read_sum(tmp_path):
    """Without --json and --png nothing is written (not into ./bench-results either), and the
    floor row is kldiv's own read of both inputs, kldiv._kldiv.read_sum."""
    r = subprocess.run(
        [sys.executable, "-m", "kldiv", "bench", "--quick", "--workloads", "W1,W6"]
        + ["--impls", "kldiv,floor", "--repeats", "1", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert list(tmp_path.iterdir()) == []
    assert "json:" not in r.stdout and "chart" not in r.stdout
    floor_rows = [line for line in r.stdout.splitlines() if re.match(r"W[16]\s+floor\s", line)]
    assert len(floor_rows) == 2, r.stdout
    assert "x the floor" in floor_rows[0]
    assert "writes the gradient" in floor_rows[1]  # W6: the floor only reads
    assert "floor: kldiv._kldiv.read_sum(x, t)" in r.stdout


def test_bench_floor_calls_read_sum_on_the_workload_arrays(monkeypatch, threads):
    from kldiv import _bench, _kldiv

    calls = []
    read_sum = _kldiv.read_sum

    def recording(x, t):
        s = read_sum(x, t)
        calls.append((x, t, s))
        return s

    monkeypatch.setattr(_kldiv, "read_sum", recording)
    res = _bench.run(["W8", "W9"], threads=2, repeats=1, quick=True, impls=["kldiv", "floor"])
    assert res["config"]["floor"] == _bench.FLOOR_WHAT and "read_sum" in _bench.FLOOR_WHAT
    rows = {(r["workload"], r["impl"]) for r in res["results"]}
    assert {("W8", "floor"), ("W9", "floor")} <= rows
    for wid in ("W8", "W9"):
        x, t = _bench.make_inputs(_bench.WORKLOADS[wid], quick=True)
        mine = [c for c in calls if c[0].shape == x.shape and c[1].shape == t.shape]
        assert mine, wid  # the workload's arrays as they are: views, broadcast target
        got_x, got_t, s = mine[0]
        assert got_x.strides == x.strides and got_t.strides == t.strides
        want = float(
            np.sum(x, dtype=np.float64) + np.sum(np.broadcast_to(t, x.shape), dtype=np.float64)
        )
        assert s == pytest.approx(want, rel=1e-5)
    assert "x the floor" in _bench.format_table(res)


def test_bench_times_w1_in_turns_with_the_workloads_measured_against_it(threads):
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


# The contract of "Never destroy a file from the command line": each test below failed on the
# command line before it (except where a comment says otherwise).


def fails_in_one_line(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit status 2, nothing on stdout (no number, so no silent nan), one line on stderr."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kldiv: error: "), r.stderr
    assert "Traceback" not in r.stderr and "\r" not in r.stderr
    for needle in needles:
        assert needle in r.stderr


@pytest.fixture
def small(tmp_path):
    rng = np.random.default_rng(1)
    z = rng.standard_normal((64, 16)).astype(np.float32)
    x = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    t = np.exp(x[::-1])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "t.npy", t)
    return tmp_path, x, t


@pytest.mark.parametrize("how", ["same path", "another path", "symlink", "hard link", "target"])
def test_out_is_never_an_input(small, how):
    d, _, _ = small
    (d / "sub").mkdir()
    out = {
        "same path": d / "x.npy",
        "another path": d / "sub" / ".." / "x.npy",
        "symlink": d / "sub" / "link.npy",
        "hard link": d / "sub" / "hard.npy",
        "target": d / "sub" / "hard.npy",
    }[how]
    if how == "symlink":
        os.symlink(d / "x.npy", out)
    elif how != "same path" and how != "another path":
        os.link(d / ("t.npy" if how == "target" else "x.npy"), out)
    before = {p.name: p.read_bytes() for p in d.glob("*.npy")}
    listing = sorted(os.listdir(d / "sub"))
    r = run("loss", str(d / "x.npy"), str(d / "t.npy"), "--reduction", "none", "--out", str(out))
    fails_in_one_line(r, "--out")
    assert {p.name: p.read_bytes() for p in d.glob("*.npy")} == before
    assert sorted(os.listdir(d / "sub")) == listing  # no temporary file either


@pytest.mark.parametrize("existing", [False, True])
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_run_leaves_no_output_and_a_good_one_replaces_it(
    small, monkeypatch, capsys, existing, error
):
    from kldiv import _loss, cli

    d, x, t = small
    folder = d / "out"
    folder.mkdir()
    out = folder / "terms.npy"
    earlier = b"an earlier run's terms"
    if existing:
        out.write_bytes(earlier)
        out.chmod(0o664)
    monkeypatch.setattr(cli, "BLOCK_BYTES", 1024)  # blocks of 8 of the 64 rows
    kl_div, calls = _loss.kl_div, []

    def fails_after_the_first_block(*args, **kwargs):
        calls.append(args)
        if len(calls) > 1:
            raise error("the second block failed")
        return kl_div(*args, **kwargs)

    monkeypatch.setattr(_loss, "kl_div", fails_after_the_first_block)
    argv = ["loss", str(d / "x.npy"), str(d / "t.npy"), "--reduction", "none", "--out", str(out)]
    try:
        rc = cli.main(argv)
    except (RuntimeError, KeyboardInterrupt):
        rc = None  # escaped main
    assert len(calls) == 2
    assert os.listdir(folder) == (["terms.npy"] if existing else [])  # no partial nor temp file
    if existing:
        assert out.read_bytes() == earlier
    assert rc == (2 if error is RuntimeError else 130)
    if error is RuntimeError:
        assert capsys.readouterr().err == "kldiv: error: the second block failed\n"

    monkeypatch.setattr(_loss, "kl_div", kl_div)
    umask = os.umask(0o022)
    try:
        rc = cli.main(argv)
    finally:
        os.umask(umask)
    assert rc == 0
    assert os.listdir(folder) == ["terms.npy"]
    np.testing.assert_array_equal(np.load(out), kldiv.kl_div(x, t, "none"))
    # the old file's mode, else the umask's (not the temporary file's 0600)
    assert stat.S_IMODE(out.stat().st_mode) == (0o664 if existing else 0o644)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_members_named_input_and_target(small, save):
    d, x, t = small
    save(d / "pair.npz", target=t, input=x)
    r = run("loss", str(d / "pair.npz"), str(d / "pair.npz"))
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) == pytest.approx(float(kldiv.kl_div(x, t, "batchmean")), rel=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["xt.npz", "xt.npz"], "--input-key"),
        (["xt.npz", "xt.npz", "--input-key", "x"], "--target-key"),
        (["xt.npz", "xt.npz", "--input-key", "x", "--target-key", "x"], "'x'"),
        (["xt.npz", "same.npz", "--input-key", "t", "--target-key", "t"], "'t'"),  # hard link
        (["one.npz", "one.npz"], "'x'"),  # the only member, for both
    ],
)
def test_npz_members_are_never_guessed(small, args, message):
    d, x, t = small
    np.savez(d / "xt.npz", x=x, t=t)
    os.link(d / "xt.npz", d / "same.npz")
    np.savez(d / "one.npz", x=x)
    fails_in_one_line(
        run("loss", *[str(d / a) if a.endswith(".npz") else a for a in args]), message
    )


@pytest.mark.parametrize(
    "options", [[], ["--progress"], ["--reduction", "none", "--out", "terms.npy"]]
)
@pytest.mark.parametrize("which", ["x.npy", "t.npy"])
def test_a_truncated_npy_is_refused_before_any_work(small, which, options):
    d, _, _ = small
    data = (d / which).read_bytes()
    (d / which).write_bytes(data[: len(data) - 100])  # the last rows are missing
    folder = d / "out"
    folder.mkdir()
    options = [str(folder / o) if o.endswith(".npy") else o for o in options]
    r = run("loss", str(d / "x.npy"), str(d / "t.npy"), *options)
    fails_in_one_line(r, str(d / which), "truncated")
    assert "%" not in r.stderr  # no progress bar
    assert os.listdir(folder) == []


@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean"])
def test_out_without_reduction_none_is_an_error(small, reduction):
    d, _, _ = small
    out = d / "terms.npy"
    r = run("loss", str(d / "x.npy"), str(d / "t.npy"), "--reduction", reduction, "--out", str(out))
    fails_in_one_line(r, "--out")
    assert not out.exists()


# 1000000000 was a one-line error before too: the cap is in kldiv.set_num_threads
@pytest.mark.parametrize("threads", ["0", "1000000000"])
def test_threads_out_of_range(small, threads):
    d, _, _ = small
    t0 = time.monotonic()
    r = run("loss", str(d / "x.npy"), str(d / "t.npy"), "--threads", threads)
    assert time.monotonic() - t0 < 5
    fails_in_one_line(r, threads)


def test_version():
    r = run("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"kldiv {kldiv.__version__}"


def test_a_progress_bar_only_on_a_terminal_or_asked_for(tmp_path):
    rows, cols = (1 << 15) + 8, 1 << 10  # 2 x 128 MiB and a bit: enough for a bar
    for name, fill in (("x", -2.0), ("t", 0.5)):
        m = np.lib.format.open_memmap(tmp_path / f"{name}.npy", "w+", np.float32, (rows, cols))
        m[...] = fill
        m.flush()
        del m
    term = 0.5 * float(np.log(np.float32(0.5))) + 1.0
    files = str(tmp_path / "x.npy"), str(tmp_path / "t.npy")
    r = run("loss", *files)  # stderr is a pipe
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) == pytest.approx(cols * term, rel=1e-6)
    assert "\r" not in r.stderr and "%" not in r.stderr
    assert r.stderr.startswith("# batchmean")
    r = run("loss", *files, "--progress")
    assert r.returncode == 0, r.stderr
    assert "\r" in r.stderr and "100.0%" in r.stderr


@pytest.mark.parametrize(
    ("x_shape", "t_shape", "words", "divisor"),
    [
        ((37,), (37,), "divided by", 37),  # 1-D: the sum over the 37 elements / 37
        ((1, 8), (5, 8), "divided by", 1),  # broadcast along the first axis: the sum / 1
        ((5, 8), (5, 8), "averaged over", 5),  # the mean of the 5 rows' divergences
    ],
)
def test_batchmean_says_what_it_divides_by(tmp_path, x_shape, t_shape, words, divisor):
    rng = np.random.default_rng(3)
    x = -np.abs(rng.standard_normal(x_shape)).astype(np.float32)
    t = rng.uniform(0.1, 1.0, t_shape).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "t.npy", t)
    r = run("loss", str(tmp_path / "x.npy"), str(tmp_path / "t.npy"))
    assert r.returncode == 0, r.stderr
    want = kldiv.kl_div(x, t, "sum") / divisor
    assert float(r.stdout) == pytest.approx(float(want), rel=1e-6)
    (line,) = [line for line in r.stderr.splitlines() if line.startswith("# ")]
    meaning = line.split("; shape")[0]
    assert re.search(rf"{words}\D*\b{divisor}\b", meaning), line
    if words == "divided by":
        assert "averaged over" not in meaning and "each row" not in meaning, line


def _npz_claiming_2_to_the_40(path):
    """An .npz whose member's header says (2**20, 2**20) float32 (4 TiB), holding 16 floats."""
    np.savez(path, x=np.zeros((4, 4), np.float32))
    with zipfile.ZipFile(path) as z:
        body = z.read("x.npy")[-64:]
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 20, 1 << 20)}
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", header.getvalue() + body)


@pytest.mark.parametrize(
    "bad",
    [
        "random.npz",  # was a one-line error before too (NumPy took it for a pickle)
        "random-zip.npz",
        "half.npz",
        "huge.npz",
        "fifo.npy",
        "fifo.npz",
        "folder.npy",  # was a one-line error before too
        "folder.npz",  # was a one-line error before too
    ],
)
@pytest.mark.parametrize("role", ["input", "target"])
def test_unreadable_inputs_are_one_line_errors(small, bad, role):
    d, x, _ = small
    path = d / bad
    rng = np.random.default_rng(4)
    if bad == "random.npz":
        path.write_bytes(rng.bytes(4096))
    elif bad == "random-zip.npz":
        path.write_bytes(b"PK\x03\x04" + rng.bytes(4096))
    elif bad == "half.npz":
        np.savez(d / "whole.npz", input=x)
        data = (d / "whole.npz").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif bad == "huge.npz":
        _npz_claiming_2_to_the_40(path)
    elif bad.startswith("fifo"):
        os.mkfifo(path)  # no writer: opening it would block
    else:
        path.mkdir()
    files = [str(path), str(d / "t.npy")] if role == "input" else [str(d / "x.npy"), str(path)]
    r = run("loss", *files, timeout=20)  # a FIFO must not hang it
    fails_in_one_line(r, str(path))


def test_keys_are_for_npz_files_and_out_folders_must_exist(small):
    d, _, _ = small
    r = run("loss", str(d / "x.npy"), str(d / "t.npy"), "--input-key", "zz")
    fails_in_one_line(r, "--input-key", "x.npy is not one")
    out = d / "missing" / "o.npy"
    r = run("loss", str(d / "x.npy"), str(d / "t.npy"), "--reduction", "none", "--out", str(out))
    fails_in_one_line(r, f"--out {out}: cannot write in {out.parent}")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM")
def test_sigterm_leaves_no_partial_output(tmp_path):
    # 2 x 512 MiB on one thread: long enough to be stopped while the terms are written.
    rows, cols = 1 << 14, 1 << 13
    for name, fill in (("x", -2.0), ("t", 0.5)):
        m = np.lib.format.open_memmap(tmp_path / f"{name}.npy", "w+", np.float32, (rows, cols))
        m[...] = fill
        m.flush()
        del m
    args = [str(tmp_path / "x.npy"), str(tmp_path / "t.npy"), "--reduction", "none"]
    out = ["--out", str(tmp_path / "o.npy"), "--threads", "1"]
    p = subprocess.Popen([sys.executable, "-m", "kldiv", "loss", *args, *out])
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    assert p.wait(60) == 128 + signal.SIGTERM
    assert sorted(f.name for f in tmp_path.iterdir()) == ["t.npy", "x.npy"]


@pytest.fixture(scope="module")
def logit_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("logits")
    g = np.random.default_rng(5)
    s = (g.standard_normal((40, 3, 257)) * 3).astype(np.float32)
    t = (s + g.standard_normal(s.shape)).astype(np.float32)
    labels = g.integers(-1, 4, (40, 3))
    for name, a in (("s", s), ("t", t), ("labels", labels), ("row", s[0, 0]), ("tr", t[0, 0])):
        np.save(d / f"{name}.npy", a)
    np.save(d / "s16.npy", s.astype(np.float16))
    return d, s, t, labels


@pytest.mark.parametrize(
    "options, call",
    [
        ((), lambda s, t, lab: kldiv.kl_div_logits(s, t)),
        (
            ("--temperature", "2", "--reverse", "--reduction", "sum"),
            lambda s, t, lab: kldiv.kl_div_logits(
                s, t, temperature=2.0, reverse=True, reduction="sum"
            ),
        ),
        (
            ("--beta", "0.3", "--reduction", "batchmean"),
            lambda s, t, lab: kldiv.jsd_logits(s, t, beta=0.3, reduction="batchmean"),
        ),
        (
            ("--labels", "{d}/labels.npy", "--ignore-index", "-1"),
            lambda s, t, lab: kldiv.kl_div_logits(s, t, labels=lab, ignore_index=-1),
        ),
    ],
)
def test_loss_from_logits_equals_the_in_memory_call(
    logit_files, monkeypatch, capsys, options, call
):
    from kldiv import cli

    d, s, t, labels = logit_files
    monkeypatch.setattr(cli, "BLOCK_BYTES", 20_000)  # blocks of a few rows: streamed
    argv = ["loss", "--from-logits", str(d / "s.npy"), str(d / "t.npy")]
    argv += [o.format(d=d) for o in options]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert float(out) == pytest.approx(float(call(s, t, labels)), rel=1e-6)
    assert "per row" in err


def test_loss_from_logits_writes_each_rows_loss_and_reads_float16(logit_files, tmp_path):
    d, s, t, labels = logit_files
    out = tmp_path / "rows.npy"
    r = run(
        "loss",
        "--from-logits",
        str(d / "s.npy"),
        str(d / "t.npy"),
        "--reduction",
        "none",
        "--out",
        str(out),
        "--temperature",
        "1.5",
    )
    assert r.returncode == 0, r.stderr
    want = kldiv.kl_div_logits(s, t, temperature=1.5, reduction="none")
    np.testing.assert_array_equal(np.load(out), want)
    assert os.listdir(tmp_path) == ["rows.npy"]
    r = run("loss", "--from-logits", str(d / "s16.npy"), str(d / "t.npy"))
    assert r.returncode == 0, r.stderr
    want = kldiv.kl_div_logits(s.astype(np.float16).astype(np.float32), t)
    assert float(r.stdout) == pytest.approx(float(want), rel=1e-6)
    r = run("loss", "--from-logits", str(d / "row.npy"), str(d / "tr.npy"), "--reduction", "sum")
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) == pytest.approx(float(kldiv.kl_div_logits(s[0, 0], t[0, 0])), rel=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--labels", "{d}/s.npy"), "labels must be integers"),
        (("--labels", "{d}/row.npy"), "labels"),
        (("--temperature", "0"), "temperature must be positive"),
        (("--beta", "2"), "beta must be in [0, 1]"),
        (("--beta", "0.5", "--reverse"), "--reverse is for the KL"),
        (("--log-target",), "--log-target is for probabilities"),
        (("--reduction", "none"), "give --out"),
    ],
)
def test_loss_from_logits_errors_are_one_line(logit_files, args, message):
    d, *_ = logit_files
    r = run(
        "loss", "--from-logits", str(d / "s.npy"), str(d / "t.npy"), *[a.format(d=d) for a in args]
    )
    fails_in_one_line(r, message)


def test_logits_options_without_from_logits_are_errors(logit_files):
    d, *_ = logit_files
    r = run("loss", str(d / "s.npy"), str(d / "t.npy"), "--temperature", "2")
    fails_in_one_line(r, "--temperature is for --from-logits")
    r = run("loss", "--from-logits", str(d / "s.npy"), str(d / "labels.npy"))
    fails_in_one_line(r, "teacher logits must be float16/32/64")

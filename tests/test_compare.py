"""kldiv.compare, kldiv.write_kld_base and ``kldiv compare`` / ``kldiv kld-base`` against the
case computed by llama.cpp's own code (tests/fixtures/llamacpp/, see its README) and against
a float64 NumPy evaluation."""

from __future__ import annotations

import doctest
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import kldiv
from kldiv import _compare

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "llamacpp")


def fix(name: str) -> str:
    return os.path.join(FIX, name)


def llama_block() -> str:
    text = open(fix("stats.txt"), encoding="utf-8").read()
    return text[text.index("====== Perplexity statistics ======") :]


def test_llamacpp_statistics_block_is_reproduced_line_for_line() -> None:
    report = kldiv.compare(fix("base.kld"), fix("other_logits.npy"))
    assert report.mode == "llama.cpp"
    assert report.to_text() == llama_block()


def test_llamacpp_per_token_values_are_its_own_to_the_bit() -> None:
    report = kldiv.compare(fix("base.kld"), fix("other_logits.npy"))
    ref = np.loadtxt(fix("per_token.tsv"))
    assert len(report) == len(ref) == 248
    np.testing.assert_array_equal(ref[:, 0], np.arange(248))
    # KLD as llama.cpp's double; the others are its floats, printed with 9 digits.
    np.testing.assert_array_equal(report.kld, ref[:, 1])
    for got, col in ((report.delta_p, 2), (report.nll, 4), (report.nll_base, 5)):
        np.testing.assert_array_equal(got.astype(np.float32), ref[:, col].astype(np.float32))
    np.testing.assert_array_equal(report.same_top, ref[:, 3] == 1)


def test_kld_base_is_written_byte_for_byte(tmp_path) -> None:
    out = tmp_path / "base.kld"
    kldiv.write_kld_base(fix("base_logits.npy"), fix("tokens.npy"), 64, out)
    assert out.read_bytes() == open(fix("base.kld"), "rb").read()
    # The (windows, n_ctx, V) layout and in-memory arrays write the same file.
    z = np.load(fix("base_logits.npy")).reshape(8, 64, -1)
    kldiv.write_kld_base(z, np.load(fix("tokens.npy")), 64, tmp_path / "b2.kld")
    assert (tmp_path / "b2.kld").read_bytes() == out.read_bytes()


def reference(base: np.ndarray, other: np.ndarray, tokens: np.ndarray, n_ctx: int) -> dict:
    """The exact per-token values in float64 NumPy."""
    first = n_ctx // 2
    rows = np.concatenate(
        [np.arange(c * n_ctx + first, c * n_ctx + n_ctx - 1) for c in range(len(tokens) // n_ctx)]
    )
    b, o = base[rows].astype(np.float64), other[rows].astype(np.float64)
    tok = np.asarray(tokens)[rows + 1]

    def log_softmax(z: np.ndarray) -> np.ndarray:
        m = z.max(-1, keepdims=True)
        return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))

    lb, lo = log_softmax(b), log_softmax(o)
    p = np.exp(lb)
    kld = np.where(p > 0, p * (lb - lo), 0.0).sum(-1)
    i = np.arange(len(rows))
    nll, nll_base = -lo[i, tok], -lb[i, tok]
    top_b = b.argmax(-1)
    at = o[i, top_b][:, None]
    idx = np.arange(o.shape[1])[None, :]
    rank = ((o > at) | ((o == at) & (idx < top_b[:, None]))).sum(-1)
    return {
        "kld": kld,
        "delta_p": np.exp(-nll) - np.exp(-nll_base),
        "nll": nll,
        "nll_base": nll_base,
        "same_top": top_b == o.argmax(-1),
        "top5": rank < 5,
        "top10": rank < 10,
    }


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_exact_mode_matches_float64(dtype: str) -> None:
    rng = np.random.default_rng(1)
    n_ctx, chunks, vocab = 32, 3, 300
    base = (rng.standard_normal((chunks * n_ctx, vocab)) * 3).astype(dtype)
    other = (base.astype(np.float64) + 0.3 * rng.standard_normal(base.shape)).astype(dtype)
    tokens = rng.integers(0, vocab, chunks * n_ctx)
    r = kldiv.compare(base, other, tokens, n_ctx=n_ctx)
    ref = reference(base, other, tokens, n_ctx)
    assert r.mode == "exact" and len(r) == chunks * (n_ctx - 1 - n_ctx // 2)
    for key in ("kld", "nll", "nll_base"):
        np.testing.assert_allclose(getattr(r, key), ref[key], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(r.delta_p, ref["delta_p"], rtol=1e-6, atol=1e-12)
    for key in ("same_top", "top5", "top10"):
        np.testing.assert_array_equal(getattr(r, key), ref[key])


def test_exact_mode_masked_entries() -> None:
    """A -inf entry where the base has mass gives an infinite KL; where both are -inf, none."""
    base = np.zeros((4, 5), np.float32)
    other = np.zeros((4, 5), np.float32)
    base[2, 2] = other[2, 2] = -np.inf  # row 2 is the one scored (n_ctx 4)
    r = kldiv.compare(base, other, [0, 1, 3, 4], n_ctx=4)
    assert len(r) == 1 and r.kld[0] == 0.0
    other[2, 4] = -np.inf  # the next token, where the base has mass
    r = kldiv.compare(base, other, [0, 1, 3, 4], n_ctx=4)
    assert r.kld[0] == np.inf and np.isinf(r.nll[0])


def test_exact_and_llama_agree_where_nothing_is_cut() -> None:
    """Logits within 16 of their maximum: llama.cpp's quantised base differs from the exact
    statistics by its rounding only."""
    rng = np.random.default_rng(2)
    n_ctx, vocab = 16, 50
    base = rng.uniform(-5, 5, (2 * n_ctx, vocab)).astype(np.float32)
    other = base + rng.uniform(-0.5, 0.5, base.shape).astype(np.float32)
    tokens = rng.integers(0, vocab, 2 * n_ctx)
    exact = kldiv.compare(base, other, tokens, n_ctx=n_ctx)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"kldiv-test-{os.getpid()}.kld")
    try:
        kldiv.write_kld_base(base, tokens, n_ctx, path)
        llama = kldiv.compare(path, other)
    finally:
        os.unlink(path)
    np.testing.assert_allclose(llama.kld, exact.kld, atol=2e-4)
    np.testing.assert_allclose(llama.nll_base, exact.nll_base, atol=2e-4)
    np.testing.assert_allclose(llama.nll, exact.nll, rtol=1e-6)


def test_summary_and_json(tmp_path) -> None:
    r = kldiv.compare(fix("base.kld"), fix("other_logits.npy"))
    s = r.summary()
    assert s["count"] == 248
    assert s["kld"][0] == pytest.approx(r.kld.mean(), rel=1e-12)
    assert s["same_top"][0] == pytest.approx(r.same_top.mean())
    assert s["top5"] is None
    doc = json.loads(r.to_json(tmp_path / "r.json"))
    assert json.loads((tmp_path / "r.json").read_text()) == doc
    assert doc["per_token"]["kld"] == r.kld.tolist()
    assert "248 tokens" in repr(r)


def test_bad_inputs_are_one_line_errors(tmp_path) -> None:
    raw = open(fix("base.kld"), "rb").read()
    (tmp_path / "short.kld").write_bytes(raw[:-1])
    with pytest.raises(ValueError, match="truncated"):
        kldiv.compare(str(tmp_path / "short.kld"), fix("other_logits.npy"))
    (tmp_path / "long.kld").write_bytes(raw + b"\0")
    with pytest.raises(ValueError, match="longer than its header"):
        kldiv.compare(str(tmp_path / "long.kld"), fix("other_logits.npy"))
    other = np.load(fix("other_logits.npy"))
    with pytest.raises(ValueError, match="do not match"):
        kldiv.compare(fix("base.kld"), other[:, :999])
    with pytest.raises(ValueError, match="do not match"):
        kldiv.compare(fix("base.kld"), other[:-64])
    with pytest.raises(ValueError, match="pass neither"):
        kldiv.compare(fix("base.kld"), other, n_ctx=64)
    with pytest.raises(ValueError, match="not a whole number of windows"):
        kldiv.compare(other, other, np.zeros(512, int), n_ctx=100)
    with pytest.raises(ValueError, match="pass tokens and n_ctx"):
        kldiv.compare(other, other)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        kldiv.compare(other, other, np.full(512, 1000), n_ctx=64)
    with pytest.raises(ValueError, match="n_ctx >= 3"):
        kldiv.compare(other, other, np.zeros(512, int), n_ctx=2)
    with pytest.raises(TypeError, match="float32"):
        kldiv.compare(np.zeros((512, 1000), int), other, np.zeros(512, int), n_ctx=64)
    with pytest.raises(ValueError, match="tokens must lie"):
        kldiv.write_kld_base(other, np.full(512, -1), 64, tmp_path / "x.kld")
    assert sorted(os.listdir(tmp_path)) == ["long.kld", "short.kld"]  # no temporary left


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kldiv", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_compare_and_kld_base(tmp_path) -> None:
    out = cli(
        "compare", fix("base.kld"), fix("other_logits.npy"), "--json", str(tmp_path / "r.json")
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == llama_block()
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["count"] == 248
    kld = tmp_path / "b.kld"
    out = cli("kld-base", fix("base_logits.npy"), fix("tokens.npy"), "--ctx", "64", "-o", str(kld))
    assert out.returncode == 0, out.stderr
    assert kld.read_bytes() == open(fix("base.kld"), "rb").read()
    # The same file again through the exact mode's arguments.
    out = cli(
        "compare",
        fix("base_logits.npy"),
        fix("other_logits.npy"),
        "--tokens",
        fix("tokens.npy"),
        "--ctx",
        "64",
    )
    assert out.returncode == 0 and "Top-10 p" in out.stdout


def test_cli_errors_leave_files_alone(tmp_path) -> None:
    shutil.copy(fix("base.kld"), tmp_path / "b.kld")
    before = (tmp_path / "b.kld").read_bytes()
    out = cli(
        "kld-base",
        fix("base_logits.npy"),
        fix("tokens.npy"),
        "--ctx",
        "100",
        "-o",
        str(tmp_path / "b.kld"),
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "not a whole number of windows" in out.stderr
    assert (tmp_path / "b.kld").read_bytes() == before
    assert os.listdir(tmp_path) == ["b.kld"]
    out = cli("compare", str(tmp_path / "missing.kld"), fix("other_logits.npy"))
    assert out.returncode == 2 and "No such file" in out.stderr


def test_docstring_examples() -> None:
    failed, tried = doctest.testmod(_compare, optionflags=doctest.ELLIPSIS)
    assert tried >= 2 and failed == 0


def write_safetensors(path, arrays: dict, dtype: str) -> None:
    """A ``.safetensors`` file by its format (8-byte header length, JSON header, data), so
    that the test needs no package; ``dtype`` BF16 stores float32 values' top halves."""
    header, blobs, at = {"__metadata__": {"format": "pt"}}, [], 0
    for name, a in arrays.items():
        if dtype == "BF16":
            raw = (np.ascontiguousarray(a, np.float32).view(np.uint32) >> 16).astype("<u2")
        else:
            raw = np.ascontiguousarray(a, {"F32": "<f4", "F16": "<f2"}[dtype])
        data = raw.tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(a.shape),
            "data_offsets": [at, at + len(data)],
        }
        blobs.append(data)
        at += len(data)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + b"".join(blobs))


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_safetensors_logits(tmp_path, dtype: str) -> None:
    other = np.load(fix("other_logits.npy"))
    path = tmp_path / "other.safetensors"
    write_safetensors(path, {"logits": other.reshape(8, 64, -1), "extra": np.zeros(3)}, dtype)
    r = kldiv.compare(fix("base.kld"), str(path))
    if dtype == "F32":
        assert r.to_text() == llama_block()
    else:  # the same as float32 logits holding the 16-bit values
        if dtype == "F16":
            widened = other.astype(np.float16).astype(np.float32)
        else:
            widened = ((other.view(np.uint32) >> 16) << 16).view(np.float32)
        same = kldiv.compare(fix("base.kld"), widened)
        np.testing.assert_array_equal(r.kld, same.kld)
        np.testing.assert_array_equal(r.delta_p, same.delta_p)
    # and as a base of logits (exact mode), and to write a .kld
    exact = kldiv.compare(str(path), str(path), fix("tokens.npy"), n_ctx=64)
    assert np.all(exact.kld == 0)
    kldiv.write_kld_base(str(path), fix("tokens.npy"), 64, tmp_path / "b.kld")
    if dtype == "F32":
        assert (tmp_path / "b.kld").stat().st_size == os.path.getsize(fix("base.kld"))


def test_safetensors_errors(tmp_path) -> None:
    other = np.load(fix("other_logits.npy"))
    path = tmp_path / "two.safetensors"
    write_safetensors(path, {"a": other, "b": other}, "F32")
    with pytest.raises(ValueError, match="its only tensor or the one named 'logits'"):
        kldiv.compare(fix("base.kld"), str(path))
    raw = path.read_bytes()
    (tmp_path / "short.safetensors").write_bytes(raw[:-4])
    write_safetensors(tmp_path / "one.safetensors", {"x": other}, "F32")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "one.safetensors").read_bytes()[:-4])
    with pytest.raises(ValueError, match="truncated"):
        kldiv.compare(fix("base.kld"), str(tmp_path / "cut.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="not a safetensors file"):
        kldiv.compare(fix("base.kld"), str(tmp_path / "junk.safetensors"))


def test_float16_npy_and_progress(tmp_path) -> None:
    other = np.load(fix("other_logits.npy")).astype(np.float16)
    np.save(tmp_path / "o16.npy", other)
    seen = []
    r = kldiv.compare(
        fix("base.kld"), str(tmp_path / "o16.npy"), on_window=lambda d, n: seen.append((d, n))
    )
    same = kldiv.compare(fix("base.kld"), other.astype(np.float32))
    np.testing.assert_array_equal(r.kld, same.kld)
    assert seen == [(i, 8) for i in range(1, 9)]


def test_truncated_npy_is_an_error(tmp_path) -> None:
    raw = open(fix("other_logits.npy"), "rb").read()
    (tmp_path / "cut.npy").write_bytes(raw[:-4000])
    with pytest.raises(ValueError, match="is truncated: its header says"):
        kldiv.compare(fix("base.kld"), str(tmp_path / "cut.npy"))


def test_outputs_take_the_targets_mode(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    r = kldiv.compare(fix("base.kld"), fix("other_logits.npy"))
    png = tmp_path / "p.png"
    r.plot(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    umask = os.umask(0)
    os.umask(umask)
    assert (png.stat().st_mode & 0o777) == 0o666 & ~umask
    os.chmod(png, 0o640)
    r.plot(png)
    assert (png.stat().st_mode & 0o777) == 0o640
    assert os.listdir(tmp_path) == ["p.png"]


LEVELS_SCRIPT = r"""
import hashlib, json, sys
import numpy as np
import kldiv

kldiv.set_num_threads(int(sys.argv[2]))
d = sys.argv[1]
r = kldiv.compare(d + "/base.kld", d + "/other_logits.npy")
e = kldiv.compare(d + "/base_logits.npy", d + "/other_logits.npy", d + "/tokens.npy", n_ctx=64)
digest = hashlib.sha256()
for rep in (r, e):
    for a in (rep.kld, rep.delta_p, rep.nll, rep.nll_base, rep.same_top):
        digest.update(a.tobytes())
print(json.dumps({"level": kldiv.simd_level(), "digest": digest.hexdigest(),
                  "text": r.to_text()}))
"""


@pytest.mark.parametrize("level", ["scalar", "avx2", "avx512"])
@pytest.mark.parametrize("threads", [1, 2])
def test_same_bits_at_every_simd_level_and_thread_count(level: str, threads: int) -> None:
    """llama.cpp's numbers at every SIMD level (the scalar one takes the C library's fma for
    glibc's fused steps) and thread count."""
    env = {**os.environ, "KLDIV_SIMD": level}
    out = subprocess.run(
        [sys.executable, "-c", LEVELS_SCRIPT, FIX, str(threads)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    got = json.loads(out.stdout)
    ref = subprocess.run(
        [sys.executable, "-c", LEVELS_SCRIPT, FIX, "1"],
        env={**os.environ, "KLDIV_SIMD": "scalar"},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert got["text"] == llama_block()
    assert got["digest"] == json.loads(ref.stdout)["digest"]


def test_blocks_of_rows_give_the_same_bits(monkeypatch) -> None:
    """Windows read in blocks of a few rows (memory bounded whatever n_ctx and V)."""
    whole = kldiv.compare(fix("base.kld"), fix("other_logits.npy"))
    exact = kldiv.compare(
        fix("base_logits.npy"), fix("other_logits.npy"), fix("tokens.npy"), n_ctx=64
    )
    monkeypatch.setattr(_compare, "BLOCK_BYTES", 3 * 4000)  # 3 rows of 1000 float32
    seen: list[tuple[int, int]] = []
    blocks = kldiv.compare(
        fix("base.kld"), fix("other_logits.npy"), on_window=lambda d, n: seen.append((d, n))
    )
    assert seen == [(i, 8) for i in range(1, 9)]
    for a, b in (
        (whole, blocks),
        (
            exact,
            kldiv.compare(
                fix("base_logits.npy"), fix("other_logits.npy"), fix("tokens.npy"), n_ctx=64
            ),
        ),
    ):
        for key in ("kld", "delta_p", "nll", "nll_base", "same_top"):
            np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert blocks.to_text() == llama_block()


def test_kld_against_kld(tmp_path) -> None:
    """Two .kld files: the other's stored log-probabilities taken as its logits."""
    same = kldiv.compare(fix("base.kld"), fix("base.kld"))
    assert same.mode == "llama.cpp" and len(same) == 248
    assert np.all(np.abs(same.kld) < 0.01) and same.same_top.all()
    np.testing.assert_allclose(same.nll, same.nll_base, atol=0.01)
    other = tmp_path / "other.kld"
    kldiv.write_kld_base(fix("other_logits.npy"), fix("tokens.npy"), 64, other)
    r = kldiv.compare(fix("base.kld"), str(other))
    direct = kldiv.compare(fix("base.kld"), fix("other_logits.npy"))
    assert abs(r.summary()["kld"][0] - direct.summary()["kld"][0]) < 1e-3
    np.testing.assert_array_equal(r.same_top, direct.same_top)
    tokens = np.load(fix("tokens.npy"))
    tokens[5] += 1
    kldiv.write_kld_base(fix("other_logits.npy"), tokens, 64, tmp_path / "t.kld")
    with pytest.raises(ValueError, match="different tokens"):
        kldiv.compare(fix("base.kld"), str(tmp_path / "t.kld"))
    kldiv.write_kld_base(fix("other_logits.npy"), tokens, 32, tmp_path / "c.kld")
    with pytest.raises(ValueError, match="the .kld files differ"):
        kldiv.compare(fix("base.kld"), str(tmp_path / "c.kld"))
    with pytest.raises(ValueError, match="compares only with a .kld base"):
        kldiv.compare(fix("base_logits.npy"), str(other), fix("tokens.npy"), n_ctx=64)


def test_nothing_to_compare_and_nan_logits(tmp_path) -> None:
    empty = tmp_path / "z.kld"
    empty.write_bytes(b"_logits_" + np.array([8, 10, 0], "<i4").tobytes())
    with pytest.raises(ValueError, match="holds no windows"):
        kldiv.compare(str(empty), np.zeros((0, 10), np.float32))
    rng = np.random.default_rng(0)
    base = rng.standard_normal((16, 10)).astype(np.float32)
    other = base.copy()
    other[5, 3] = np.nan  # window 0's row 5 is its 2nd scored row (n_ctx 8: rows 4, 5, 6)
    tokens = rng.integers(0, 10, 16)
    kldiv.write_kld_base(base, tokens, 8, tmp_path / "b.kld")
    for r in (
        kldiv.compare(str(tmp_path / "b.kld"), other),
        kldiv.compare(base, other, tokens, n_ctx=8),
    ):
        assert np.isnan(r.kld[1]) and np.isnan(r.nll[1])
        assert np.isfinite(np.delete(r.kld, 1)).all()


def test_exact_summary_matches_numpy() -> None:
    """The summary's formulas (exact mode: all in float64) against NumPy: means with their
    standard errors, the correlation, quantiles by linear interpolation, rates."""
    from kldiv import _kldiv

    rng = np.random.default_rng(7)
    n = 1001
    nll = rng.gamma(2.0, 2.0, n)
    nll_base = nll + 0.1 * rng.standard_normal(n)
    kld = rng.exponential(0.05, n)
    dp = 0.02 * rng.standard_normal(n)
    top = rng.integers(0, 8, n).astype(np.uint8)
    s = _kldiv.compare_summary(kld, dp, top, nll, nll_base, False)

    def se(x: np.ndarray) -> float:
        return float(np.sqrt((np.mean(x * x) - np.mean(x) ** 2) / (len(x) - 1)))

    assert s["count"] == n
    assert s["ppl"][0] == pytest.approx(np.exp(nll.mean()), rel=1e-12)
    assert s["ppl"][1] == pytest.approx(np.exp(nll.mean()) * se(nll), rel=1e-9)
    cov = (np.mean(nll * nll_base) - nll.mean() * nll_base.mean()) / (n - 1)
    assert s["cor"] == pytest.approx(cov / (se(nll) * se(nll_base)), rel=1e-9)
    assert s["cor"] == pytest.approx(np.corrcoef(nll, nll_base)[0, 1], rel=1e-6)
    assert s["kld"][0] == pytest.approx(kld.mean(), rel=1e-12)
    assert s["kld"][1] == pytest.approx(se(kld), rel=1e-9)
    for fraction, value in s["kld_quantiles"]:
        assert value == pytest.approx(np.quantile(kld, fraction), rel=1e-12), fraction
    for fraction, value in s["delta_p_quantiles"]:
        assert value == pytest.approx(np.quantile(dp, fraction), rel=1e-12, abs=1e-15), fraction
    assert s["delta_p_rms"][0] == pytest.approx(np.sqrt(np.mean(dp * dp)), rel=1e-12)
    for key, bit in (("same_top", 1), ("top5", 2), ("top10", 4)):
        p = np.mean((top & bit) != 0)
        assert s[key][0] == pytest.approx(p, rel=1e-12)
        assert s[key][1] == pytest.approx(np.sqrt(p * (1 - p) / (n - 1)), rel=1e-12)

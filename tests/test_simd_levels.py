"""Every SIMD level (KLDIV_SIMD=scalar|avx2|avx512) gives the same bits for every function."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import hashlib, json, warnings
import numpy as np
import kldiv

warnings.simplefilter("ignore")
rng = np.random.default_rng(3)
digest = hashlib.sha256()
for dtype in (np.float32, np.float64):
    x = (-20 * rng.random((97, 1013))).astype(dtype)
    t = (rng.random((97, 1013)) ** 2).astype(dtype)
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, -1.0, 1e-310, 1e-40]
    x.ravel()[:8] = specials
    t.ravel()[100:108] = specials
    for log_target in (False, True):
        tt = np.log(t) if log_target else t
        views = ((x, tt), (x.T.copy().T, tt[:, ::-1][:, ::-1]), (x[::2, ::-3], tt[::2, ::-3]))
        for xv, tv in views:
            for reduction in ("none", "sum", "mean", "batchmean"):
                digest.update(np.asarray(kldiv.kl_div(xv, tv, reduction, log_target)).tobytes())
                loss, g = kldiv.kl_div_and_grad(xv, tv, reduction, log_target)
                digest.update(np.asarray(loss).tobytes() + g.tobytes())
            gx, gt = kldiv.kl_div_backward(0.5, xv, tv, "batchmean", log_target)
            digest.update(gx.tobytes() + gt.tobytes())
print(json.dumps({"level": kldiv.simd_level(), "digest": digest.hexdigest()}))
"""


def run_at(level: str) -> dict:
    env = {**os.environ, "KLDIV_SIMD": level}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_every_level_gives_the_same_bits():
    results = {level: run_at(level) for level in ("scalar", "avx2", "avx512")}
    ran = {r["level"] for r in results.values()}
    assert "scalar" in ran
    digests = {r["level"]: r["digest"] for r in results.values()}
    assert len(set(digests.values())) == 1, digests
    if len(ran) < 3:
        pytest.skip(f"only {sorted(ran)} run on this CPU; they agree")


def test_simd_level_is_reported():
    import kldiv

    assert kldiv.simd_level() in ("scalar", "avx2", "avx512")

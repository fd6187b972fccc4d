"""Generates the PyTorch reference fixtures in tests/fixtures/ (run once; the files are committed).

Needs PyTorch, in a separate virtualenv (the tests themselves do not):

    python -m venv /tmp/venv-torch && /tmp/venv-torch/bin/pip install torch numpy
    /tmp/venv-torch/bin/python scripts/make_fixtures.py

Each case stores its arrays and metadata (reduction, log_target, the view to take of the
stored arrays) plus what PyTorch returns: the loss of ``torch.nn.functional.kl_div`` and the
gradients autograd gives for both arguments, for a given ``grad_output``.
"""

from __future__ import annotations

import json
import pathlib
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from helpers import FIXTURES as OUT  # noqa: E402
from helpers import REDUCTIONS, apply_view  # noqa: E402

rng = np.random.default_rng(20261125)


def log_softmax(a: np.ndarray) -> np.ndarray:
    a = a - a.max(axis=-1, keepdims=True)
    return a - np.log(np.exp(a).sum(axis=-1, keepdims=True))


def dist(shape, log, dtype=np.float64) -> np.ndarray:
    """A random (log-)probability array of ``shape`` (softmax over the last axis)."""
    if not shape or shape[-1] == 0:
        v = rng.uniform(0.05, 1.0, size=shape)
        return (np.log(v) if log else v).astype(dtype)
    ls = log_softmax(rng.standard_normal(shape))
    return (ls if log else np.exp(ls)).astype(dtype)


def grids() -> tuple[np.ndarray, np.ndarray]:
    """Every pair of special values: x in rows, t in columns."""
    xs = np.array([-1.5, 0.0, -np.inf, np.inf, np.nan, 2.0, -0.0])
    ts = np.array([0.0, 0.3, -0.5, np.inf, -np.inf, np.nan, 1.0, -0.0, 1e-300])
    x, t = np.meshgrid(xs, ts, indexing="ij")
    return x.copy(), t.copy()


def cases():
    for log_target in (False, True):
        for dtype in (np.float64, np.float32):
            x, t = dist((4, 5), True, dtype), dist((4, 5), log_target, dtype)
            yield "random", x, t, log_target, ""
        x, t = grids()
        yield "special", x, t, log_target, ""
        yield "special_f32", x.astype(np.float32), t.astype(np.float32), log_target, ""
        # zeros in the target with finite inputs: finite sums
        t = dist((3, 6), False)
        t[:, ::2] = 0.0
        yield "target_zeros", dist((3, 6), True), (np.log(t) if log_target else t), log_target, ""
        yield "zero_dim", np.array(-0.7), np.array(0.4 if not log_target else -0.9), log_target, ""
        yield "zero_dim_input", np.array(-0.7), dist((3,), log_target), log_target, ""
        for shape in [(0,), (0, 3), (3, 0), (2, 0, 4)]:
            yield f"empty{shape}", np.zeros(shape), np.zeros(shape), log_target, ""
        yield "bcast_target_row", dist((4, 5), True), dist((1, 5), log_target), log_target, ""
        yield "bcast_both", dist((4, 1, 5), True), dist((3, 5), log_target), log_target, ""
        yield "bcast_input_1d", dist((5,), True), dist((4, 5), log_target), log_target, ""
        yield (
            "mixed_f32_f64",
            dist((3, 4), True, np.float32),
            dist((3, 4), log_target, np.float64),
            log_target,
            "",
        )
        yield (
            "float16",
            dist((3, 4), True, np.float16),
            dist((3, 4), log_target, np.float16),
            log_target,
            "",
        )
        for view in ("T", "rev", "step", "F"):
            x, t = dist((6, 8), True, np.float32), dist((6, 8), log_target, np.float32)
            yield f"view_{view}", x, t, log_target, view


def torch_case(x, t, reduction, log_target, grad_output):
    xt = torch.tensor(x, requires_grad=True)
    tt = torch.tensor(t, requires_grad=True)
    loss = F.kl_div(xt, tt, reduction=reduction, log_target=log_target)
    go = torch.tensor(grad_output, dtype=loss.dtype)
    gx, gt = torch.autograd.grad(loss, (xt, tt), go, allow_unused=True)
    return loss.detach().numpy(), gx.numpy(), gt.numpy()


def main() -> None:
    warnings.simplefilter("ignore")
    arrays: dict[str, np.ndarray] = {}
    index = []
    for name, x, t, log_target, view in cases():
        # np.array, not np.ascontiguousarray: that one turns 0-d arrays into shape (1,)
        xv, tv = np.array(apply_view(x, view), order="C"), np.array(apply_view(t, view), order="C")
        for reduction in REDUCTIONS:
            i = len(index)
            shape = np.broadcast_shapes(xv.shape, tv.shape)
            dtype = np.result_type(xv, tv)
            grad_output = (
                rng.uniform(0.5, 1.5, size=shape).astype(dtype)
                if reduction == "none"
                else np.array(0.75, dtype=dtype)
            )
            loss, gx, gt = torch_case(xv, tv, reduction, log_target, grad_output)
            arrays.update(
                {
                    f"c{i}_input": x,
                    f"c{i}_target": t,
                    f"c{i}_loss": loss,
                    f"c{i}_grad_output": grad_output,
                    f"c{i}_grad_input": gx,
                    f"c{i}_grad_target": gt,
                }
            )
            index.append(
                {
                    "id": i,
                    "name": name,
                    "reduction": reduction,
                    "log_target": log_target,
                    "view": view,
                }
            )
    arrays["index"] = np.array(json.dumps(index))
    arrays["torch_version"] = np.array(torch.__version__)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(
        f"{len(index)} cases from torch {torch.__version__} -> {OUT} ({OUT.stat().st_size} bytes)"
    )


if __name__ == "__main__":
    main()

"""One distillation step's loss from a (rows, cols) float32 batch of student and teacher
logits, forward and backward to the student's logits: kldiv.torch.kl_div_logits against
PyTorch's composite (log_softmax of both at temperature T, kl_div with log_target=True,
batchmean) and against the composite with kldiv.torch.kl_div in place of PyTorch's kl_div.
Interleaved repeats, medians, same threads.

    PYTHONPATH=python python benches/bench_torch_step.py [--shapes 64x10,256x1000,1000x10000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see bench.py

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import kldiv  # noqa: E402
import kldiv.torch as kt  # noqa: E402

T = 2.0


def losses() -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    def composite(kl_div: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            ls, lt = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
            return kl_div(ls, lt, reduction="batchmean", log_target=True)

        return loss

    def from_logits(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return kt.kl_div_logits(s, t, temperature=T, reduction="batchmean")

    return {
        "kl_div_logits": from_logits,
        "torch": composite(F.kl_div),
        "kl_div + torch": composite(kt.kl_div),
    }


def run(rows: int, cols: int, repeats: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(rows, cols, generator=g) * 3).requires_grad_()
    teacher = logits.detach() + torch.randn(rows, cols, generator=g)
    fns = losses()

    def step(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> float:
        logits.grad = None
        t0 = time.perf_counter()
        fn(logits, teacher).backward()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        step(fn)  # warm
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(step(fn))
    return {name: statistics.median(v) * 1e3 for name, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="64x10,256x1000,1000x10000")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=21)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    kldiv.set_num_threads(a.threads)
    print(
        f"distillation step (loss + backward to the student's logits), float32, T = {T}, "
        f"{a.threads} threads, medians of {a.repeats}, ms:"
    )
    for shape in a.shapes.split(","):
        rows, cols = (int(x) for x in shape.split("x"))
        med = run(rows, cols, a.repeats)
        cells = "  ".join(f"{name} {ms:8.3f}" for name, ms in med.items())
        print(
            f"  {rows:5d} x {cols:<6d} {cells}   kl_div_logits is "
            f"{med['torch'] / med['kl_div_logits']:.2f}x torch's step"
        )


if __name__ == "__main__":
    main()

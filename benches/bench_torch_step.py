"""One training step's loss, kldiv.torch.KLDivLoss against torch.nn.KLDivLoss: the loss on
log_softmax(logits) of a (rows, cols) float32 batch, forward and backward to the logits.
Interleaved repeats, medians, same threads.

    PYTHONPATH=python python benches/bench_torch_step.py [--rows 1000] [--cols 10000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see bench.py

import torch  # noqa: E402

import kldiv  # noqa: E402
import kldiv.torch as kt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--cols", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=9)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    kldiv.set_num_threads(a.threads)
    torch.manual_seed(0)
    logits = torch.randn(a.rows, a.cols, requires_grad=True)
    target = torch.randn(a.rows, a.cols).softmax(dim=1)
    losses = {
        "kldiv.torch": kt.KLDivLoss(reduction="batchmean"),
        "torch": torch.nn.KLDivLoss(reduction="batchmean"),
    }

    def step(loss_fn: torch.nn.Module) -> float:
        logits.grad = None
        t0 = time.perf_counter()
        loss = loss_fn(logits.log_softmax(dim=1), target)
        loss.backward()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {name: [] for name in losses}
    for fn in losses.values():
        step(fn)  # warm
    for _ in range(a.repeats):
        for name, fn in losses.items():
            times[name].append(step(fn))
    med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
    print(
        f"training step (log_softmax + loss + backward), {a.rows} x {a.cols} float32, "
        f"{a.threads} threads, medians of {a.repeats}:"
    )
    for name, ms in med.items():
        print(f"  {name:12s} {ms:8.2f} ms")
    print(f"  kldiv.torch is {med['torch'] / med['kldiv.torch']:.2f}x faster per step")


if __name__ == "__main__":
    main()

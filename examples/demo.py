"""The main job, in a few lines: a distillation-style KL loss with kldiv, and what it means.

Run with ``make demo`` (or ``python examples/demo.py`` once kldiv is installed).
"""

import time

import numpy as np

import kldiv


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


rng = np.random.default_rng(0)
rows, cols = 1000, 10_000
teacher = np.exp(log_softmax(rng.standard_normal((rows, cols)))).astype(np.float32)  # target t
student = log_softmax(rng.standard_normal((rows, cols))).astype(np.float32)  # input x = log q

start = time.perf_counter()
loss = kldiv.kl_div(student, teacher, reduction="batchmean")
ms = (time.perf_counter() - start) * 1e3

print(f"kldiv {kldiv.__version__}, {kldiv.get_num_threads()} threads")
print(f"input x: log-probabilities, shape {student.shape}, {student.dtype}")
print(f"target t: probabilities,    shape {teacher.shape}, {teacher.dtype}")
print()
print(f"kl_div(x, t, reduction='batchmean') = {loss:.6f}   ({ms:.1f} ms)")
print("  = (1/N) * sum over rows and classes of t * (log t - x)")
print("  = the KL divergence KL(t || exp(x)) of each row, averaged over the N rows")
print()
one_row = float(kldiv.kl_div(student[:1], teacher[:1], reduction="sum"))
print(f"row 0 alone: KL = {one_row:.6f} nats (0 only when the two rows are equal)")
print(f"identical rows: KL = {kldiv.kl_div(np.log(teacher), teacher, reduction='batchmean'):.2e}")

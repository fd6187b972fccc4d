"""kldiv: PyTorch's Kullback-Leibler divergence loss on the CPU, exact and fast.

>>> import numpy as np, kldiv
>>> x = np.log(np.full((2, 4), 0.25))          # input: log-probabilities
>>> t = np.full((2, 4), 0.25)                   # target: probabilities
>>> float(kldiv.kl_div(x, t, reduction="batchmean"))
0.0

The loss term is ``t * (log t - x)``; see :func:`kl_div`. The work runs in a Rust kernel, in
parallel, with float64 accumulation and the same bits for every thread count and layout.
"""

from ._compare import CompareReport, compare, write_kld_base
from ._kldiv import __version__
from ._logits import jsd_logits, jsd_logits_and_grad, kl_div_logits, kl_div_logits_and_grad
from ._loss import (
    MAX_THREADS,
    REDUCTIONS,
    KLDivLoss,
    _check_env,
    get_num_threads,
    kl_div,
    kl_div_and_grad,
    kl_div_backward,
    set_num_threads,
    simd_level,
)

__all__ = [
    "CompareReport",
    "MAX_THREADS",
    "REDUCTIONS",
    "KLDivLoss",
    "__version__",
    "compare",
    "get_num_threads",
    "jsd_logits",
    "jsd_logits_and_grad",
    "kl_div",
    "kl_div_and_grad",
    "kl_div_backward",
    "kl_div_logits",
    "kl_div_logits_and_grad",
    "set_num_threads",
    "simd_level",
    "write_kld_base",
]

_check_env()

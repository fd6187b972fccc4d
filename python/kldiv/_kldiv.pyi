"""Type stub of the Rust extension module ``kldiv._kldiv`` (see ``src/py.rs``).

The rules (divisors, broadcasting, reductions, the arrays the kernels take, outputs that share
memory) and the raw kernels. The kernels take aligned, native-order float32 or float64 arrays
of one dtype and any strides (outputs of the loss's shape), broadcast under NumPy rules. Use
:func:`kldiv.kl_div`, which converts and checks its arguments.
"""

from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.typing import NDArray

__version__: str
MAX_DIMS: int
MAX_THREADS: int
REDUCTIONS: list[str]

Floats = npt.NDArray[np.float32] | npt.NDArray[np.float64]

def sum(input: Floats, target: Floats, log_target: bool) -> float:
    """The float64 sum of the terms, not rounded."""

def read_sum(input: Floats, target: Floats) -> float:
    """The sum of both arrays' values with kldiv's threads: the benchmarks' read floor."""

def reduce_plain(
    input: object, target: object, reduction: object, log_target: object
) -> np.float32 | np.float64 | None:
    """``kl_div(input, target, reduction, log_target)`` for "sum" or "batchmean" of two
    ``numpy.ndarray`` (exactly) of one native float32 or float64 dtype and one shape (at most
    ``MAX_DIMS`` dimensions), aligned, with a bool ``log_target``, as a NumPy scalar; None for
    any other arguments (nothing checked, nothing raised)."""

def is_plain_pair(input: object, target: object) -> bool:
    """Whether the kernels take ``input`` and ``target`` as they are (see reduce_plain)."""

def terms(input: Floats, target: Floats, out: Floats, log_target: bool) -> None:
    """The loss terms, written into ``out``."""

def backward(
    grad_output: Floats,
    divisor: float,
    input: Floats,
    target: Floats,
    grad_input: Floats | None,
    grad_target: Floats | None,
    log_target: bool,
) -> None:
    """The gradients asked for (an array, not None), for ``grad_output / divisor``."""

def sum_and_grad(
    input: Floats, target: Floats, divisor: float, grad_input: Floats, log_target: bool
) -> float:
    """The float64 sum of the terms, not rounded, with the input gradient for
    ``1 / divisor`` written in the same pass."""

def terms_and_grad(
    input: Floats, target: Floats, loss: Floats, grad_input: Floats, log_target: bool
) -> None:
    """The loss terms and the input gradient (for ones) in one pass."""

def empty(
    shape: tuple[int, ...],
    dtype: np.dtype[np.float32] | np.dtype[np.float64] | np.dtype[np.uint16],
) -> npt.NDArray[np.float32] | npt.NDArray[np.float64] | npt.NDArray[np.uint16]:
    """A result array (C order, contents unspecified; uint16 holds 16-bit floats' bits)."""

def divisor(reduction: str, input_shape: tuple[int, ...], target_shape: tuple[int, ...]) -> float:
    """What ``reduction`` divides the sum by for arguments of these shapes (1 for "none")."""

def check_reduction(reduction: object) -> None:
    """Raises ValueError unless ``reduction`` is one of REDUCTIONS."""

def broadcast_shape(input: tuple[int, ...], target: tuple[int, ...]) -> list[int]:
    """The broadcast shape, or ValueError naming both shapes."""

def logits(
    student: npt.NDArray[np.generic],
    student_kind: str,
    teacher: npt.NDArray[np.generic],
    teacher_kind: str,
    divergence: str,
    beta: float,
    temperature: float,
    labels: npt.NDArray[np.int64] | None,
    ignore_index: int,
    weights: npt.NDArray[np.float64] | None,
    reduction: str,
    rows_out: npt.NDArray[np.float64] | None,
    grad: npt.NDArray[np.generic] | None,
    grad_output: float,
    grad_rows: npt.NDArray[np.float64] | None,
) -> tuple[float, float]:
    """A loss from logits in float64, not rounded, and the rows' weight ``Σ w_i``: the reduced
    loss, or for "none" the rows' ``w_i L_i`` written into ``rows_out`` (their sum returned).
    With ``grad``, the gradient with respect to the student's logits for ``grad_output``
    (``grad_rows`` for "none") is written into it. Kinds: "float32", "float64", "bfloat16",
    "float16" (the last two as uint16 bits); divergence: "forward", "reverse", "jsd" (with
    ``beta``), "cross_entropy"."""

def logits_reduce(
    reduction: str, total: float, wsum: float, student_shape: tuple[int, ...]
) -> float:
    """The reduced loss from ``Σ w_i L_i`` and ``Σ w_i`` summed over several "sum" calls."""

def logits_shape(student: tuple[int, ...], teacher: tuple[int, ...]) -> list[int]:
    """The gradient's shape for logits of these shapes, or ValueError naming both."""

def set_num_threads(n: int) -> None:
    """Raises ValueError above MAX_THREADS, RuntimeError if the threads do not start."""

def get_num_threads() -> int: ...
def simd_level() -> str: ...
def detected_simd_level() -> str: ...
def check_outputs(
    inputs: list[tuple[str, npt.NDArray[np.generic]]],
    outputs: list[tuple[str, npt.NDArray[np.generic]]],
) -> None:
    """Raises ValueError if an output has elements that share memory, or shares memory with
    another output or an input (judged on the memory ranges they span)."""

def shutdown() -> None:
    """Readies kernel calls for interpreter exit (atexit): see src/py.rs."""

def kld_header(head: bytes, file_len: int) -> tuple[int, int, int, int, int, int, int]:
    """(n_ctx, n_vocab, n_chunk, row_len, first, scored, rows_offset) of a llama.cpp .kld file."""

def kld_header_bytes(n_ctx: int, n_vocab: int, n_chunk: int) -> tuple[list[int], int]:
    """The header bytes of a .kld file for these sizes, and the file's total length."""

def kld_log_probs(stored: NDArray[np.uint16], out: NDArray[np.float32]) -> None:
    """The log-probabilities of .kld rows (rows, row_len) into out (rows, V)."""

def kld_base_rows(logits: NDArray[np.float32], out: NDArray[np.uint16]) -> None:
    """.kld rows of float32 logits (rows, V) into out (rows, row_len)."""

_PerTokenOut = tuple[
    NDArray[np.float64],
    NDArray[np.float64],
    NDArray[np.uint8],
    NDArray[np.float64],
    NDArray[np.float64],
]

def compare_kld(
    other: NDArray[Any],
    kind: str,
    base: NDArray[np.uint16],
    next: NDArray[np.int64],
    outs: tuple[
        NDArray[np.float64],
        NDArray[np.float64],
        NDArray[np.uint8],
        NDArray[np.float64],
        NDArray[np.float64],
    ],
) -> None:
    """Scores logits against a .kld base's rows, llama.cpp's way, into the per-token outputs."""

def compare_logits(
    base: NDArray[Any],
    base_kind: str,
    other: NDArray[Any],
    other_kind: str,
    next: NDArray[np.int64],
    outs: tuple[
        NDArray[np.float64],
        NDArray[np.float64],
        NDArray[np.uint8],
        NDArray[np.float64],
        NDArray[np.float64],
    ],
) -> None:
    """Scores logits against a base's logits exactly, into the per-token outputs."""

def compare_summary(
    kld: NDArray[np.float64],
    delta_p: NDArray[np.float64],
    top: NDArray[np.uint8],
    nll: NDArray[np.float64],
    nll_base: NDArray[np.float64],
    llama: bool,
) -> dict[str, Any]:
    """llama.cpp's final statistics of per-token values."""

"""Type stub of the Rust extension module ``kldiv._kldiv`` (see ``src/py.rs``).

These are the raw kernels: same-dtype, aligned, native-order arrays of any strides, broadcast
by the kernel under NumPy rules. Use :func:`kldiv.kl_div`, which checks its arguments.
"""

import numpy as np
import numpy.typing as npt

__version__: str
MAX_DIMS: int
MAX_THREADS: int

def sum_f32(
    input: npt.NDArray[np.float32], target: npt.NDArray[np.float32], log_target: bool
) -> float:
    """The float64 sum of the terms, not rounded."""

def sum_f64(
    input: npt.NDArray[np.float64], target: npt.NDArray[np.float64], log_target: bool
) -> float: ...
def reduce_plain(
    input: object, target: object, reduction: object, log_target: object
) -> np.float32 | np.float64 | None:
    """``kl_div(input, target, reduction, log_target)`` for "sum" or "batchmean" of two
    ``numpy.ndarray`` (exactly) of one native float32 or float64 dtype and one shape (at most
    ``MAX_DIMS`` dimensions), aligned, with a bool ``log_target``, as a NumPy scalar; None for
    any other arguments (nothing checked, nothing raised)."""

def terms_f32(
    input: npt.NDArray[np.float32],
    target: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32],
    log_target: bool,
) -> None: ...
def terms_f64(
    input: npt.NDArray[np.float64],
    target: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64],
    log_target: bool,
) -> None: ...
def backward_f32(
    grad_output: npt.NDArray[np.float32],
    divisor: float,
    input: npt.NDArray[np.float32],
    target: npt.NDArray[np.float32],
    grad_input: npt.NDArray[np.float32] | None,
    grad_target: npt.NDArray[np.float32] | None,
    log_target: bool,
) -> None:
    """The gradients asked for (an array, not None), for ``grad_output / divisor``."""

def backward_f64(
    grad_output: npt.NDArray[np.float64],
    divisor: float,
    input: npt.NDArray[np.float64],
    target: npt.NDArray[np.float64],
    grad_input: npt.NDArray[np.float64] | None,
    grad_target: npt.NDArray[np.float64] | None,
    log_target: bool,
) -> None: ...
def sum_and_grad_f32(
    input: npt.NDArray[np.float32],
    target: npt.NDArray[np.float32],
    divisor: float,
    grad_input: npt.NDArray[np.float32],
    log_target: bool,
) -> float:
    """The float64 sum of the terms, not rounded, with the input gradient for
    ``1 / divisor`` written in the same pass."""

def sum_and_grad_f64(
    input: npt.NDArray[np.float64],
    target: npt.NDArray[np.float64],
    divisor: float,
    grad_input: npt.NDArray[np.float64],
    log_target: bool,
) -> float: ...
def terms_and_grad_f32(
    input: npt.NDArray[np.float32],
    target: npt.NDArray[np.float32],
    loss: npt.NDArray[np.float32],
    grad_input: npt.NDArray[np.float32],
    log_target: bool,
) -> None: ...
def terms_and_grad_f64(
    input: npt.NDArray[np.float64],
    target: npt.NDArray[np.float64],
    loss: npt.NDArray[np.float64],
    grad_input: npt.NDArray[np.float64],
    log_target: bool,
) -> None: ...
def empty_f32(shape: tuple[int, ...]) -> npt.NDArray[np.float32]: ...
def empty_f64(shape: tuple[int, ...]) -> npt.NDArray[np.float64]: ...
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
    """Stops kernel calls for interpreter exit and waits for the running ones (atexit)."""

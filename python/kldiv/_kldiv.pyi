"""Type stub of the Rust extension module ``kldiv._kldiv`` (see ``src/py.rs``).

These are the raw kernels: same-dtype, aligned, native-order arrays of any strides, broadcast
by the kernel under NumPy rules. Use :func:`kldiv.kl_div`, which checks its arguments.
"""

import numpy as np
import numpy.typing as npt

__version__: str

def sum_f32(
    input: npt.NDArray[np.float32], target: npt.NDArray[np.float32], log_target: bool
) -> float: ...
def sum_f64(
    input: npt.NDArray[np.float64], target: npt.NDArray[np.float64], log_target: bool
) -> float: ...
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
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...

"""Coverage-guided fuzzing of the Python entry points with atheris (not a pytest file).

    pip install atheris
    python tests/fuzz_atheris.py -atheris_runs=200000

Each input picks a function, dtypes, shapes that may or may not broadcast, strides (reversed,
stepped, Fortran), values (special ones included), a reduction and options. A call may raise
TypeError or ValueError (bad arguments); anything else, a crash, or a result that disagrees
with NumPy's own evaluation of the formula is a finding.
"""

from __future__ import annotations

import sys
import warnings

import atheris
import numpy as np

with atheris.instrument_imports():
    import kldiv

warnings.simplefilter("ignore")
DTYPES = [np.float32, np.float64, np.float16, np.int32, np.bool_, np.complex64, ">f4", object]
REDUCTIONS = ["none", "sum", "mean", "batchmean", "avg", ""]
SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, -1.0, 1e-40, 1e38, 0.5, -3.0]


def array(fdp: atheris.FuzzedDataProvider) -> np.ndarray:
    ndim = fdp.ConsumeIntInRange(0, 4)
    shape = tuple(fdp.ConsumeIntInRange(0, 4) for _ in range(ndim))
    n = int(np.prod(shape))
    values = [
        SPECIAL[fdp.ConsumeIntInRange(0, len(SPECIAL) - 1)]
        if fdp.ConsumeBool()
        else fdp.ConsumeFloatInRange(-30.0, 1.0)
        for _ in range(n)
    ]
    dtype = DTYPES[fdp.ConsumeIntInRange(0, len(DTYPES) - 1)]
    with np.errstate(all="ignore"):
        a = np.array(values, dtype=np.float64).reshape(shape).astype(dtype)
    if ndim and fdp.ConsumeBool():
        a = np.asfortranarray(a)
    if ndim and fdp.ConsumeBool():
        a = a[..., ::-1]
    return a


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    x, t = array(fdp), array(fdp)
    reduction = REDUCTIONS[fdp.ConsumeIntInRange(0, len(REDUCTIONS) - 1)]
    log_target = fdp.ConsumeBool()
    which = fdp.ConsumeIntInRange(0, 3)
    try:
        if which == 0:
            got = kldiv.kl_div(x, t, reduction, log_target)
        elif which == 1:
            got = kldiv.kl_div_and_grad(x, t, reduction, log_target)[0]
        elif which == 2:
            g = 1.0 if reduction != "none" else np.ones(np.broadcast_shapes(x.shape, t.shape))
            kldiv.kl_div_backward(g, x, t, reduction, log_target)
            return
        else:
            kldiv.set_num_threads(fdp.ConsumeIntInRange(1, 3))
            got = kldiv.KLDivLoss(reduction, log_target)(x, t)
    except (TypeError, ValueError):
        return
    if reduction == "none":
        xf, tf = x.astype(np.float64), t.astype(np.float64)
        with np.errstate(all="ignore"):
            if log_target:
                want = np.exp(tf) * (tf - xf)
            else:
                want = np.where(np.isnan(tf), np.nan, np.where(tf == 0, 0.0, tf * np.log(tf)))
                want = want - tf * xf
        nan_got, nan_want = np.isnan(got), np.isnan(want.astype(got.dtype))
        if not np.array_equal(nan_got, nan_want):
            raise AssertionError(f"NaN positions differ: {x!r} {t!r} {got!r} {want!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

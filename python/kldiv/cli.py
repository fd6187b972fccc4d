"""The command line: ``kldiv loss INPUT TARGET`` and ``kldiv bench`` (also ``python -m kldiv``).

``loss`` reads two ``.npy`` files memory-mapped, a block of rows at a time (so a pair of
10 GB files needs about one block of memory, not 20 GB), sums the terms of each block in
float64 with kldiv's kernels, and prints the reduced loss; with ``--reduction none`` it writes
the terms to ``--out FILE.npy`` block by block. ``.npz`` members are read whole (a zip member
cannot be memory-mapped). Errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from . import _loss
from ._loss import REDUCTIONS

BLOCK_BYTES = 64 << 20  # about this much of each input per block
PROGRESS_BYTES = 256 << 20  # show a progress bar from this much input on


class CliError(Exception):
    """An error reported as one line, without a traceback."""


class _Source:
    """An input file read a block of rows at a time: each block of a C-ordered ``.npy`` file is
    a fresh memory map of just its bytes, unmapped when done, so memory stays bounded whatever
    the file's size. Fortran-ordered ``.npy`` files are mapped whole; ``.npz`` members are read
    whole (a zip member cannot be memory-mapped)."""

    def __init__(self, path: str, key: str | None) -> None:
        if not os.path.exists(path):
            raise CliError(f"{path}: no such file")
        self.path, self.whole = path, None
        try:
            if path.endswith(".npz"):
                with np.load(path, allow_pickle=False) as z:
                    names = list(z.files)
                    if not names:
                        raise CliError(f"{path}: no arrays in this .npz")
                    name = key if key is not None else names[0]
                    if name not in names:
                        raise CliError(f"{path}: no array {name!r} (it has {', '.join(names)})")
                    self.whole = z[name]
                self.shape, self.dtype = self.whole.shape, self.whole.dtype
                return
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                self.shape, fortran, self.dtype = read(f)
                self.offset = f.tell()
            if fortran or len(self.shape) < 2 or self.shape[0] <= 1 or self.dtype.hasobject:
                self.whole = np.load(path, mmap_mode="r", allow_pickle=False)
        except CliError:
            raise
        except (OSError, ValueError) as e:
            raise CliError(f"{path}: not a NumPy .npy/.npz file ({e})") from None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def rows(self, ndim: int, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as seen in ``ndim`` dimensions (broadcast arrays whole)."""
        if not self.shape or len(self.shape) < ndim or self.shape[0] == 1:
            if self.whole is None:  # broadcast along the blocked axis: needed whole
                self.whole = np.load(self.path, mmap_mode="r", allow_pickle=False)
            return self.whole
        if self.whole is not None:
            return self.whole[start:stop]
        row = math.prod(self.shape[1:]) * self.dtype.itemsize
        return np.memmap(
            self.path,
            dtype=self.dtype,
            mode="r",
            offset=self.offset + start * row,
            shape=(stop - start, *self.shape[1:]),
        )


def _blocks(n: int, row_bytes: int) -> Iterator[tuple[int, int]]:
    step = max(1, BLOCK_BYTES // max(1, row_bytes))
    for start in range(0, n, step):
        yield start, min(n, start + step)


class _Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.t0 = total, enabled, time.monotonic()

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        frac = done / self.total if self.total else 1.0
        bar = "#" * int(30 * frac)
        rate = done / max(1e-9, time.monotonic() - self.t0) / 2**30
        print(
            f"\r[{bar:<30}] {100 * frac:5.1f}%  {done / 2**30:.2f}/{self.total / 2**30:.2f} GiB"
            f"  {rate:.2f} GiB/s",
            end="",
            file=sys.stderr,
            flush=True,
        )
        if done >= self.total:
            print(file=sys.stderr)


def loss(a: argparse.Namespace) -> int:
    x, t = _Source(a.input, a.input_key), _Source(a.target, a.target_key)
    for name, src in (("input", x), ("target", t)):
        if src.dtype.kind != "f" or src.dtype.itemsize not in (2, 4, 8):
            raise CliError(f"{name} has dtype {src.dtype}; kldiv needs float16/32/64 arrays")
    shape = _loss._broadcast_shapes(x.shape, t.shape)
    if shape is None:
        raise CliError(f"input of shape {x.shape} and target of shape {t.shape} do not broadcast")
    if a.threads:
        _loss.set_num_threads(a.threads)
    ndim = len(shape)
    n = shape[0] if ndim else 1
    total_bytes = x.nbytes + t.nbytes
    progress = _Progress(total_bytes, not a.quiet and total_bytes >= PROGRESS_BYTES)
    result = np.result_type(x.dtype, t.dtype).newbyteorder("=")
    out = None
    if a.reduction == "none":
        if not a.out:
            raise CliError("--reduction none writes the terms to a file: give --out FILE.npy")
        out = np.lib.format.open_memmap(a.out, mode="w+", dtype=result, shape=shape)
    total = 0.0
    for start, stop in _blocks(n, total_bytes // max(1, n)):
        xb, tb = x.rows(ndim, start, stop), t.rows(ndim, start, stop)
        if out is not None:
            _loss.kl_div(xb, tb, "none", a.log_target, out=out[start:stop] if ndim else out)
            out.flush()
        else:
            total += _loss.partial_sum(xb, tb, a.log_target)
        del xb, tb  # unmap the block
        progress.update(int(stop / n * total_bytes))
    if out is not None:
        print(f"wrote the {a.reduction} loss, shape {shape}, {result}, to {a.out}")
        return 0
    size = math.prod(shape)
    divisor = {"sum": 1, "mean": size, "batchmean": x.shape[0] if x.shape else 1}[a.reduction]
    with np.errstate(all="ignore"):
        value = result.type(np.float64(total) / np.float64(divisor))
    meaning = {
        "sum": "the sum of t * (log t - x) over all elements",
        "mean": "that sum divided by the number of elements (not the KL divergence)",
        "batchmean": "the KL divergence of each row, averaged over the rows",
    }[a.reduction]
    print(value)
    print(f"# {a.reduction}: {meaning}; shape {shape}, {result}", file=sys.stderr)
    return 0


def bench(a: argparse.Namespace, rest: list[str]) -> int:
    from . import _bench

    return _bench.main(rest)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kldiv", description="KL divergence loss (PyTorch's kl_div)")
    sub = p.add_subparsers(dest="command", required=True)
    lp = sub.add_parser("loss", help="the loss of two .npy/.npz files")
    lp.add_argument("input", help="log-probabilities x (.npy, memory-mapped, or .npz)")
    lp.add_argument("target", help="probabilities t (or log-probabilities with --log-target)")
    lp.add_argument(
        "--reduction",
        choices=REDUCTIONS,
        default="batchmean",
        help="default batchmean (the KL divergence per row); mean is PyTorch's default",
    )
    lp.add_argument("--log-target", action="store_true", help="target holds log-probabilities")
    lp.add_argument("--out", help="with --reduction none: the .npy file to write the terms to")
    lp.add_argument("--input-key", help=".npz member of the input (default: the first)")
    lp.add_argument("--target-key", help=".npz member of the target (default: the first)")
    lp.add_argument("--threads", type=int, default=0, help="threads (default: all CPUs)")
    lp.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.add_parser("bench", help="the benchmark table; options: kldiv bench --help", add_help=False)
    args, rest = p.parse_known_args(argv)
    try:
        if args.command == "bench":
            return bench(args, rest)
        if rest:
            p.error(f"unrecognized arguments: {' '.join(rest)}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the help says what mean is
            return loss(args)
    except (CliError, TypeError, ValueError, OSError) as e:
        print(f"kldiv: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _entry() -> Any:
    sys.exit(main())

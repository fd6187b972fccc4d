"""The command line: ``kldiv loss INPUT TARGET``, ``kldiv loss --from-logits STUDENT TEACHER``
and ``kldiv bench`` (also ``python -m kldiv``).

``loss`` reads two ``.npy`` files memory-mapped, a block of rows at a time (so a pair of
10 GB files needs about one block of memory, not 20 GB), sums the terms of each block in
float64 with kldiv's kernels, and prints the reduced loss; with ``--reduction none`` it writes
the terms to ``--out FILE.npy`` block by block, into a temporary file in the same folder that
replaces ``FILE.npy`` only once it is complete. ``.npz`` members are read whole (a zip member
cannot be memory-mapped). Every file is checked (a regular file, its header against its size)
before any work. Errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import stat
import sys
import tempfile
import time
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

import numpy as np

from . import _files, _loss
from ._kldiv import __version__
from ._loss import REDUCTIONS

BLOCK_BYTES = 64 << 20  # about this much of each input per block
PROGRESS_BYTES = 256 << 20  # show a progress bar from this much input on


class CliError(Exception):
    """An error reported as one line, without a traceback."""


def _header(f: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """The shape, Fortran order and dtype of the ``.npy`` data that ``f`` starts with."""
    version = np.lib.format.read_magic(f)
    read = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    return read(f)


class _Source:
    """An input file read a block of rows at a time: each block of a C-ordered ``.npy`` file is
    a fresh memory map of just its bytes, unmapped when done, so memory stays bounded whatever
    the file's size. Fortran-ordered ``.npy`` files are mapped whole; ``.npz`` members are read
    whole (a zip member cannot be memory-mapped): the member named ``key``, else the one named
    ``role`` (``input`` or ``target``), else the only one."""

    def __init__(self, path: str, key: str | None, role: str) -> None:
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise CliError(f"{path}: no such file") from None
        if not stat.S_ISREG(mode):
            raise CliError(f"{path}: not a regular file")
        self.path, self.whole, self.member = path, None, None
        try:
            if path.endswith(".npz"):
                self._npz(key, role)
            else:
                self._npy()
        except CliError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise CliError(f"{path}: not a NumPy .npy/.npz file ({e})") from None
        except MemoryError:
            raise CliError(f"{path}: {self.nbytes} bytes do not fit in memory") from None

    def _npy(self) -> None:
        with open(self.path, "rb") as f:
            self.shape, fortran, self.dtype = _header(f)
            self.offset = f.tell()
        size = os.path.getsize(self.path)
        if size < self.offset + self.nbytes:
            raise CliError(
                f"{self.path}: truncated: its header says {self.shape} {self.dtype} "
                f"({self.offset + self.nbytes} bytes), the file has {size} bytes"
            )
        if fortran or len(self.shape) < 2 or self.shape[0] <= 1 or self.dtype.hasobject:
            self.whole = np.load(self.path, mmap_mode="r", allow_pickle=False)

    def _npz(self, key: str | None, role: str) -> None:
        with zipfile.ZipFile(self.path) as z:
            names = [n[: -len(".npy")] for n in z.namelist() if n.endswith(".npy")]
            if not names:
                raise CliError(f"{self.path}: no arrays in this .npz")
            if key is not None and key not in names:
                raise CliError(f"{self.path}: no array {key!r} (it has {', '.join(names)})")
            name = key if key is not None else role if role in names else None
            if name is None and len(names) == 1:
                name = names[0]
            if name is None:
                raise CliError(
                    f"{self.path} holds {len(names)} arrays ({', '.join(names)}): name the "
                    f"{role}'s with --{role}-key, or store it as {role!r}"
                )
            info = z.getinfo(name + ".npy")
            with z.open(info) as f:
                self.shape, _, self.dtype = _header(f)
                header = f.tell()
            if info.file_size != header + self.nbytes:
                raise CliError(
                    f"{self.path}: member {name!r} is truncated or corrupt: its header says "
                    f"{self.shape} {self.dtype} ({header + self.nbytes} bytes), it holds "
                    f"{info.file_size}"
                )
            with z.open(info) as f:
                self.whole = np.lib.format.read_array(f, allow_pickle=False)
            self.member = name

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
    """A progress bar on stderr (by default drawn only when stderr is a terminal)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.t0 = total, time.monotonic()
        self.enabled = enabled
        self.drawn = False

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
        self.drawn = True

    def close(self) -> None:
        """Ends the bar's line (so that what follows, an error included, starts a new one)."""
        if self.drawn:
            print(file=sys.stderr)
            self.drawn = False


class _Output:
    """The ``.npy`` file ``--out`` names, written as a temporary file in the same folder and
    renamed into place by :meth:`commit`: a failure leaves the old file, or none."""

    def __init__(self, path: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
        folder = os.path.dirname(os.path.abspath(path))
        try:
            fd, self.temp = tempfile.mkstemp(
                dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
            )
        except OSError as e:
            raise CliError(f"--out {path}: cannot write in {folder} ({e.strerror})") from None
        os.close(fd)
        self.path = path
        try:
            self.array = np.lib.format.open_memmap(self.temp, mode="w+", dtype=dtype, shape=shape)
        except BaseException:
            self.discard()
            raise

    def commit(self) -> None:
        self.array.flush()
        del self.array
        _files.commit(self.temp, self.path)

    def discard(self) -> None:
        self.__dict__.pop("array", None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp)


def _check_out_path(out: str, inputs: Sequence[str]) -> None:
    """Refuses an ``--out`` that is (or links to) an input, or is not a regular file."""
    if not os.path.lexists(out):
        return
    try:
        mode = os.stat(out).st_mode
    except FileNotFoundError:  # a dangling link: the temporary file replaces it
        return
    if not stat.S_ISREG(mode):
        raise CliError(f"--out {out}: not a regular file")
    for path in inputs:
        if os.path.samefile(out, path):
            raise CliError(f"--out {out} is the input file {path}; write the terms elsewhere")


def _stream(n: int, total_bytes: int, shown: bool, out: _Output | None, block: Any) -> None:
    """Calls ``block(start, stop)`` over the ``n`` rows a block at a time (each block's maps
    are released when it returns), with the progress bar; commits ``out`` once every block is
    done, and removes it on any failure (Ctrl-C included)."""
    progress = _Progress(total_bytes, shown)
    try:
        for start, stop in _blocks(n, total_bytes // max(1, n)):
            block(start, stop)
            progress.update(int(stop / n * total_bytes))
        if out is not None:
            out.commit()
    except BaseException:
        if out is not None:
            out.discard()
        raise
    finally:
        progress.close()


def _meaning(reduction: str, x_shape: tuple[int, ...], shape: tuple[int, ...]) -> str:
    """What the printed number is, for these shapes."""
    if reduction == "sum":
        return "the sum of t * (log t - x) over all elements"
    if reduction == "mean":
        return "that sum divided by the number of elements (not the KL divergence)"
    if not x_shape:
        return "the sum of t * (log t - x) (a 0-d input has no batch)"
    n = x_shape[0]
    if len(x_shape) >= 2 and len(x_shape) == len(shape) and n == shape[0]:
        return f"the KL divergence of each row, averaged over the {n} rows"
    return (
        f"the sum of t * (log t - x) divided by the input's first dimension, {n} (not a mean "
        "over rows: the input is 1-D or was broadcast along its first axis)"
    )


def loss(a: argparse.Namespace) -> int:
    if a.threads is not None and a.threads < 1:
        raise CliError(f"--threads must be at least 1, got {a.threads}")
    if a.reduction != "none" and a.out:
        raise CliError(f"--out is for --reduction none; {a.reduction} prints one number")
    if a.reduction == "none" and not a.out:
        raise CliError("--reduction none writes the terms to a file: give --out FILE.npy")
    for role, path, key in (("input", a.input, a.input_key), ("target", a.target, a.target_key)):
        if key is not None and not path.endswith(".npz"):
            raise CliError(f"--{role}-key names a member of an .npz file; {path} is not one")
    x = _Source(a.input, a.input_key, "input")
    t = _Source(a.target, a.target_key, "target")
    if x.member is not None and x.member == t.member and os.path.samefile(a.input, a.target):
        raise CliError(
            f"input and target are both member {x.member!r} of {a.input}; "
            "name them with --input-key and --target-key"
        )
    for name, src in (("input", x), ("target", t)):
        _loss.check_dtype(src.dtype, name)
    shape = _loss.broadcast_shape(x.shape, t.shape)
    if a.out:
        _check_out_path(a.out, (a.input, a.target))
    if a.threads is not None:
        _loss.set_num_threads(a.threads)
    ndim = len(shape)
    n = shape[0] if ndim else 1
    total_bytes = x.nbytes + t.nbytes
    shown = _shown(a, total_bytes)
    result = np.result_type(x.dtype, t.dtype).newbyteorder("=")
    out = _Output(a.out, result, shape) if a.out else None
    total = 0.0

    def block(start: int, stop: int) -> None:
        nonlocal total
        xb, tb = x.rows(ndim, start, stop), t.rows(ndim, start, stop)
        if out is not None:
            dest = out.array[start:stop] if ndim else out.array
            _loss.kl_div(xb, tb, "none", a.log_target, out=dest)
        else:
            total += _loss.partial_sum(xb, tb, a.log_target)

    _stream(n, total_bytes, shown, out, block)
    if out is not None:
        print(f"wrote the {a.reduction} loss, shape {shape}, {result}, to {a.out}")
        return 0
    divisor = _loss.divisor(a.reduction, x.shape, t.shape)
    print(_loss._scalar(total, divisor, result))
    print(
        f"# {a.reduction}: {_meaning(a.reduction, x.shape, shape)}; shape {shape}, {result}",
        file=sys.stderr,
    )
    return 0


def loss_from_logits(a: argparse.Namespace) -> int:
    """``kldiv loss --from-logits STUDENT TEACHER``: the loss of :func:`kldiv.kl_div_logits`
    (``--beta``: :func:`kldiv.jsd_logits`) over two logits files, streamed a block of rows
    at a time along the first axis; ``--reduction none`` writes each row's loss to ``--out``."""
    from . import _kldiv, _logits

    for flag, given in (
        ("--log-target", a.log_target),
        ("--input-key", a.input_key),
        ("--target-key", a.target_key),
    ):
        if given:
            raise CliError(f"{flag} is for probabilities; --from-logits reads logits")
    if a.beta is not None and a.reverse:
        raise CliError("--reverse is for the KL divergence; --beta asks for the JSD")
    reduction = a.reduction or "mean"
    if reduction != "none" and a.out:
        raise CliError(f"--out is for --reduction none; {reduction} prints one number")
    if reduction == "none" and not a.out:
        raise CliError("--reduction none writes each row's loss to a file: give --out FILE.npy")
    if a.threads is not None and a.threads < 1:
        raise CliError(f"--threads must be at least 1, got {a.threads}")
    s = _Source(a.input, None, "student")
    t = _Source(a.target, None, "teacher")
    labels = _Source(a.labels, None, "labels") if a.labels else None
    for name, src in (("student", s), ("teacher", t)):
        if src.dtype.kind != "f" or src.dtype.itemsize not in (2, 4, 8):
            raise CliError(f"{src.path}: {name} logits must be float16/32/64, not {src.dtype}")
    if labels is not None and labels.dtype.kind not in "iu":
        raise CliError(f"{labels.path}: labels must be integers, not {labels.dtype}")
    divergence = "jsd" if a.beta is not None else "reverse" if a.reverse else "forward"
    beta = 0.0 if a.beta is None else a.beta
    rows = _kldiv.logits_check(
        s.shape,
        t.shape,
        None if labels is None else labels.shape,
        None,
        a.temperature,
        divergence,
        beta,
    )
    if a.out:
        _check_out_path(a.out, [p for p in (a.input, a.target, a.labels) if p])
    if a.threads is not None:
        _loss.set_num_threads(a.threads)
    ndim = len(rows) + 1
    n = rows[0] if rows else 1
    total_bytes = s.nbytes + t.nbytes
    shown = _shown(a, total_bytes)
    result = np.result_type(s.dtype, t.dtype).newbyteorder("=")
    out = _Output(a.out, result, tuple(rows)) if a.out else None
    total = wsum = 0.0

    def block(start: int, stop: int) -> None:
        nonlocal total, wsum
        # rows of logits along the first axis; one row (V,) whole
        sb = _logits.Logits.of(s.rows(ndim, start, stop) if rows else s.whole, "student")
        tb = _logits.Logits.of(t.rows(ndim, start, stop) if rows else t.whole, "teacher")
        lb = None if labels is None else labels.rows(ndim - 1, start, stop)
        sb, tb = _logits.pair(sb, tb)
        value, block_rows, w = _logits.call(
            sb,
            tb,
            divergence,
            beta,
            a.temperature,
            lb,
            a.ignore_index,
            None,
            "none" if out is not None else "sum",
        )
        if out is not None and block_rows is not None:
            dest = out.array[start:stop] if rows else out.array
            dest[...] = block_rows
        total += value
        wsum += w

    _stream(n, total_bytes, shown, out, block)
    if out is not None:
        print(f"wrote each row's loss, shape {tuple(rows)}, {result}, to {a.out}")
        return 0
    value = _kldiv.logits_reduce(reduction, total, wsum, s.shape)
    print(_loss._scalar(value, 1.0, result))
    what = {
        "jsd": f"generalized JSD (beta {beta})",
        "reverse": "reverse KL(Q||P)",
        "forward": "forward KL(P||Q)",
    }[divergence]
    print(
        f"# {reduction} of the {what} per row, T = {a.temperature}; rows {tuple(rows)}, {result}",
        file=sys.stderr,
    )
    return 0


def bench(a: argparse.Namespace, rest: list[str]) -> int:
    """``kldiv bench``: the benchmark table of docs/benchmarks.md (see :mod:`kldiv._bench`);
    it writes files only where ``--json`` and ``--png`` say."""
    from . import _bench

    return _bench.main(rest, prog="kldiv bench")


def compare(a: argparse.Namespace) -> int:
    """``kldiv compare BASE OTHER``: llama.cpp's KL-divergence statistics (see
    :func:`kldiv.compare`), printed as llama.cpp prints them; ``--json`` writes the summary and
    the per-token values (through a temporary file)."""
    from . import _compare, _loss

    for path in (a.base, a.other, a.tokens):
        if path is not None:
            _check_input(path)
    if a.threads is not None:
        _loss.set_num_threads(a.threads)
    total = sum(os.path.getsize(p) for p in (a.base, a.other))
    progress = _Progress(total, _shown(a, total))

    def on_window(done: int, windows: int) -> None:
        progress.update(total * done // windows)

    try:
        report = _compare.compare(a.base, a.other, a.tokens, n_ctx=a.ctx, on_window=on_window)
    finally:
        progress.close()
    print(report.to_text(), end="")
    if a.json:
        report.to_json(a.json)
    if a.plot:
        report.plot(a.plot)
    return 0


def kld_base(a: argparse.Namespace) -> int:
    """``kldiv kld-base LOGITS TOKENS --ctx N -o BASE.kld``: a llama.cpp base file, byte for
    byte as llama.cpp writes it (see :func:`kldiv.write_kld_base`)."""
    from . import _compare

    for path in (a.logits, a.tokens):
        _check_input(path)
    _compare.write_kld_base(a.logits, a.tokens, a.ctx, a.output)
    return 0


def _shown(a: argparse.Namespace, total_bytes: int) -> bool:
    """Whether to draw the progress bar: ``--progress``, or a terminal and a large input."""
    return bool(
        a.progress or (not a.quiet and total_bytes >= PROGRESS_BYTES and sys.stderr.isatty())
    )


def _check_input(path: str) -> None:
    """A readable regular file, or a one-line error."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise CliError(f"{path}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise CliError(f"{path}: not a regular file")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kldiv", description="KL divergence loss (PyTorch's kl_div)")
    p.add_argument("--version", action="version", version=f"kldiv {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    lp = sub.add_parser("loss", help="the loss of two .npy/.npz files")
    lp.add_argument("input", help="log-probabilities x (.npy, memory-mapped, or .npz)")
    lp.add_argument("target", help="probabilities t (or log-probabilities with --log-target)")
    lp.add_argument(
        "--reduction",
        choices=REDUCTIONS,
        help="default batchmean (the KL divergence per row; mean is PyTorch's default); "
        "with --from-logits, default mean (over the rows that count)",
    )
    lg = lp.add_argument_group(
        "from logits",
        "kldiv loss --from-logits STUDENT TEACHER: the files hold logits "
        "(*rows, V); the loss of kldiv.kl_div_logits, or with --beta of kldiv.jsd_logits",
    )
    lg.add_argument("--from-logits", action="store_true", help="the files hold logits")
    lg.add_argument("--temperature", type=float, default=1.0, help="T > 0 (default 1)")
    lg.add_argument("--reverse", action="store_true", help="KL(Q||P) instead of KL(P||Q)")
    lg.add_argument("--beta", type=float, help="the generalized JSD with this beta in [0, 1]")
    lg.add_argument(
        "--labels", help=".npy of integers, shape rows: rows labelled --ignore-index do not count"
    )
    lg.add_argument("--ignore-index", type=int, default=-100, help="default -100")
    lp.add_argument("--log-target", action="store_true", help="target holds log-probabilities")
    lp.add_argument("--out", help="with --reduction none: the .npy file to write the terms to")
    lp.add_argument(
        "--input-key", help=".npz member of the input (default: 'input', or the only member)"
    )
    lp.add_argument(
        "--target-key", help=".npz member of the target (default: 'target', or the only member)"
    )
    lp.add_argument("--threads", type=int, help="threads (default: all CPUs)")
    bar = lp.add_mutually_exclusive_group()
    bar.add_argument("--quiet", action="store_true", help="no progress bar")
    bar.add_argument(
        "--progress", action="store_true", help="a progress bar even when stderr is not a terminal"
    )
    cp = sub.add_parser(
        "compare", help="llama.cpp's KL-divergence statistics of two models' logits"
    )
    cp.add_argument("base", help="a llama.cpp .kld base file, or the base model's logits (.npy)")
    cp.add_argument("other", help="the other model's logits (.npy), every position of every window")
    cp.add_argument("--tokens", help="the tokens (.npy), for logits on both sides")
    cp.add_argument("--ctx", type=int, help="n_ctx, the window length, for logits on both sides")
    cp.add_argument("--json", help="write the summary and per-token values to this JSON file")
    cp.add_argument("--plot", help="draw the KLD and Δp distributions to this PNG (matplotlib)")
    cp.add_argument("--threads", type=int, help="threads (default: all CPUs)")
    cbar = cp.add_mutually_exclusive_group()
    cbar.add_argument("--quiet", action="store_true", help="no progress bar")
    cbar.add_argument(
        "--progress", action="store_true", help="a progress bar even when stderr is not a terminal"
    )
    kp = sub.add_parser("kld-base", help="write a llama.cpp .kld base file from logits")
    kp.add_argument("logits", help="the base model's logits (.npy), every position of every window")
    kp.add_argument("tokens", help="the tokens (.npy)")
    kp.add_argument("--ctx", type=int, required=True, help="n_ctx, the window length")
    kp.add_argument("-o", "--output", required=True, help="the .kld file to write")
    sub.add_parser(
        "bench",
        help="the benchmark table (writes no file unless --json/--png); kldiv bench --help",
        add_help=False,
    )
    args, rest = p.parse_known_args(argv)
    try:
        if args.command == "bench":
            return bench(args, rest)
        if rest:
            p.error(f"unrecognized arguments: {' '.join(rest)}")
        if args.command == "compare":
            return compare(args)
        if args.command == "kld-base":
            return kld_base(args)
        if args.from_logits:
            return loss_from_logits(args)
        for flag in ("temperature", "reverse", "beta", "labels", "ignore_index"):
            if getattr(args, flag) != lp.get_default(flag):
                raise CliError(f"--{flag.replace('_', '-')} is for --from-logits")
        args.reduction = args.reduction or "batchmean"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the help says what mean is
            return loss(args)
    except (CliError, TypeError, ValueError, OSError, RuntimeError, ImportError) as e:
        print(f"kldiv: error: {e}", file=sys.stderr)
        return 2
    except MemoryError as e:
        print(f"kldiv: error: out of memory ({e})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM ends the run as Ctrl-C does (the temporary output file is removed), with the
    exit status of a process that SIGTERM ended."""
    raise SystemExit(128 + signum)


def _entry() -> Any:
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())

"""Comparing two models' next-token distributions: llama.cpp's ``--kl-divergence`` statistics.

The numbers come from the crate (``kldiv._kldiv.compare_kld``, ``compare_logits``,
``compare_summary``, ``kld_base_rows``); this module opens the files, walks the windows and
formats llama.cpp's text (with ``%`` formats: they are C's ``printf`` formats, as llama.cpp
prints them).
"""
# ruff: noqa: UP031

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from . import _files, _kldiv

PathOrArray = Union[str, "os.PathLike[str]", np.ndarray]

__all__ = ["CompareReport", "compare", "write_kld_base"]


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _is_kld(path: Any) -> bool:
    """Whether the file at ``path`` starts as a ``.kld`` base does."""
    with open(path, "rb") as f:
        return f.read(8) == b"_logits_"


class _Rows:
    """Rows of a 2-D array, read a block at a time: from a file (``np.fromfile`` at the rows'
    offset, so that memory holds one block, whatever the file's size; a memory map would
    count every page read in the process's resident memory) or from an array. ``kind`` is the
    logits' type as the crate takes it (bfloat16 read as its ``uint16`` bits)."""

    def __init__(
        self,
        shape: tuple[int, int],
        kind: str,
        path: Any = None,
        offset: int = 0,
        array: np.ndarray | None = None,
    ) -> None:
        self.shape, self.kind, self.path, self.offset, self.array = (
            shape,
            kind,
            path,
            offset,
            array,
        )
        self.dtype = np.dtype(_READ_AS[kind])
        self._buffers: dict[int, np.ndarray] = {}
        self._maps: dict[int, mmap.mmap] = {}

    @property
    def row_bytes(self) -> int:
        return self.shape[1] * self.dtype.itemsize

    def read(self, rows: slice, slot: int | None = None) -> np.ndarray:
        """The rows ``rows``: a view of an array, or from the file. With a ``slot`` (a block
        read ahead, see :func:`_read_ahead`), a memory map of just the block, populated when
        made (``MAP_POPULATE``: the page cache's own pages, no copy; 0.36 s for W13 instead of
        0.58 s with reads into a buffer) and unmapped once the slot's next block replaces it
        and its arrays are gone, so that memory holds two blocks; where Linux's
        ``MAP_POPULATE`` is missing, read into the slot's reused buffer. Without a slot, read
        into a new array."""
        if self.array is not None:
            return self.array[rows]
        start, stop, _ = rows.indices(self.shape[0])
        width = self.shape[1]
        count = (stop - start) * width
        offset = self.offset + start * width * self.dtype.itemsize
        with open(self.path, "rb", buffering=0) as f:
            if slot is not None and hasattr(mmap, "MAP_POPULATE"):
                aligned = offset - offset % mmap.ALLOCATIONGRANULARITY
                length = offset - aligned + count * self.dtype.itemsize
                if os.fstat(f.fileno()).st_size < aligned + length:  # shrunk since opened
                    raise ValueError(
                        f"{os.fspath(self.path)}: the file is shorter than its header says"
                    )
                flags = mmap.MAP_SHARED | mmap.MAP_POPULATE
                m = mmap.mmap(f.fileno(), length, flags=flags, prot=mmap.PROT_READ, offset=aligned)
                self._maps[slot] = m  # the slot's previous map goes when its arrays do
                block = np.frombuffer(m, dtype=self.dtype, count=count, offset=offset - aligned)
                return block.reshape(stop - start, width)
            buffer = self._buffers.get(slot) if slot is not None else None
            if buffer is None or buffer.size < count:
                buffer = np.empty(count, dtype=self.dtype)
                if slot is not None:
                    self._buffers[slot] = buffer
            block = buffer[:count]
            got = os.preadv(f.fileno(), [memoryview(block).cast("B")], offset)
        if got != block.nbytes:  # shrunk while being read
            raise ValueError(f"{os.fspath(self.path)}: the file is shorter than its header says")
        return block.reshape(stop - start, width)


# How each kind of logits is read from a file (little-endian; bfloat16 as its bits).
_READ_AS = {"float32": "<f4", "float64": "<f8", "float16": "<f2", "bfloat16": "<u2", "u16": "<u2"}
# safetensors' dtype names.
_SAFETENSORS = {"F32": "float32", "F64": "float64", "F16": "float16", "BF16": "bfloat16"}


@dataclass(frozen=True)
class _Kld:
    """A ``.kld`` base file: its sizes, tokens and stored rows."""

    n_ctx: int
    n_vocab: int
    n_chunk: int
    scored: int
    tokens: np.ndarray
    rows: _Rows

    @classmethod
    def open(cls, path: Any) -> _Kld:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(20)
        try:
            n_ctx, n_vocab, n_chunk, row_len, _, scored, offset = _kldiv.kld_header(head, size)
        except ValueError as e:
            raise ValueError(f"{os.fspath(path)}: {e}") from None
        tokens = np.fromfile(path, dtype="<i4", count=n_chunk * n_ctx, offset=20)
        rows = _Rows((n_chunk * scored, row_len), "u16", path, offset)
        return cls(n_ctx, n_vocab, n_chunk, scored, tokens, rows)


def _logits(x: PathOrArray, name: str) -> _Rows:
    """Float logits as rows (rows, vocabulary): a C-ordered ``.npy`` file or a
    ``.safetensors`` file (its only tensor, or the one named ``logits``) read a block at a
    time, or an array; ``(n_chunk, n_ctx, V)`` is taken as its rows."""
    array = None
    if _is_path(x) and os.fspath(x).endswith(".safetensors"):
        shape, kind, offset = _safetensors_header(x, name)
    elif _is_path(x):
        with open(x, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read(f)
            offset = f.tell()
        if fortran and len(shape) > 1:
            raise ValueError(
                f"{name}: {os.fspath(x)} is in Fortran order; kldiv reads rows "
                "of C-ordered .npy files"
            )
        if dtype.byteorder == ">":
            raise ValueError(f"{name}: {os.fspath(x)} is big-endian")
        kind = dtype.name
    else:
        array = np.asarray(x)
        shape, kind, offset = array.shape, array.dtype.name, 0
    if len(shape) not in (2, 3) or shape[-1] == 0:
        raise ValueError(
            f"{name}: logits are (rows, vocabulary) or (windows, n_ctx, "
            f"vocabulary); got shape {tuple(shape)}"
        )
    if kind not in ("float32", "float64", "float16", "bfloat16"):
        raise TypeError(f"{name}: logits are float32, float64, float16 or bfloat16; got {kind}")
    rows = (int(np.prod(shape[:-1])), int(shape[-1]))
    if array is None:
        need = offset + rows[0] * rows[1] * np.dtype(_READ_AS[kind]).itemsize
        have = os.path.getsize(x)
        if have < need:
            raise ValueError(
                f"{name}: {os.fspath(x)} is truncated: its header says "
                f"{need} bytes, the file has {have}"
            )
    else:
        array = array.reshape(rows)
    return _Rows(rows, kind, x if array is None else None, offset, array)


def _safetensors_header(path: Any, name: str) -> tuple[tuple[int, ...], str, int]:
    """The shape, kind and data offset of the logits in a ``.safetensors`` file: an 8-byte
    little-endian header length, a JSON header, the data (read here a block at a time, so
    bfloat16 needs no conversion and memory stays bounded)."""
    where = f"{name}: {os.fspath(path)}"
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or 8 + n > size:
            raise ValueError(f"{where} is not a safetensors file")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise ValueError(f"{where} is not a safetensors file") from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if len(tensors) == 1:
        (t,) = tensors.values()
    elif "logits" in tensors:
        t = tensors["logits"]
    else:
        raise ValueError(
            f"{where} holds {sorted(tensors)}: kldiv reads its only tensor or "
            "the one named 'logits'"
        )
    kind = _SAFETENSORS.get(t["dtype"])
    if kind is None:
        raise TypeError(f"{where}: logits are F32, F64, F16 or BF16; got {t['dtype']}")
    begin, end = t["data_offsets"]
    shape = tuple(t["shape"])
    if end - begin != int(np.prod(shape)) * np.dtype(_READ_AS[kind]).itemsize or 8 + n + end > size:
        raise ValueError(
            f"{where}: the tensor's size does not match its shape, or the file is truncated"
        )
    return shape, kind, 8 + n + begin


def _kind(a: np.ndarray, kind: str, llama: bool) -> tuple[np.ndarray, str]:
    """A block of logits as the crate takes it: float32 or float64 as they are (float64 as
    float32 against a ``.kld`` base, as llama.cpp sees logits), 16-bit ones as their bits."""
    if kind in ("float16", "bfloat16"):
        return np.ascontiguousarray(a).view(np.uint16), kind
    if kind == "float64" and llama:
        return a.astype(np.float32), "float32"
    return np.ascontiguousarray(a), kind


def _float32(a: np.ndarray, kind: str) -> np.ndarray:
    """A block of logits as float32 (llama.cpp's logits), bfloat16 widened from its bits."""
    if kind == "bfloat16" and a.dtype == np.uint16:
        return (a.astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(a, dtype=np.float32)


# Each input is read a block of rows of at most this many bytes at a time, two blocks in
# memory (one computed, the next read), whatever the file's size, n_ctx or vocabulary.
BLOCK_BYTES = 16 << 20


@dataclass(frozen=True)
class _Block:
    """A block of a window's scored rows: llama.cpp scores positions ``n_ctx/2 .. n_ctx-2``
    of each window, row ``j`` predicting token ``j + 1``."""

    window: int
    rows: slice  # in the logits (every position of every window)
    scored: slice  # among the scored tokens (the outputs, a .kld file's stored rows)
    tokens: slice  # the tokens they predict
    last: bool  # the window's last block


def _blocks(n_chunk: int, n_ctx: int, row_bytes: int) -> list[_Block]:
    first, scored = n_ctx // 2, n_ctx - 1 - n_ctx // 2
    per = max(1, BLOCK_BYTES // max(1, row_bytes))
    blocks = []
    for c in range(n_chunk):
        for a in range(0, scored, per):
            b = min(a + per, scored)
            r = c * n_ctx + first + a
            blocks.append(
                _Block(
                    c,
                    slice(r, r + b - a),
                    slice(c * scored + a, c * scored + b),
                    slice(r + 1, r + 1 + b - a),
                    b == scored,
                )
            )
    return blocks


def _read_ahead(
    blocks: list[_Block], read: Callable[[_Block, int], Any]
) -> Iterator[tuple[_Block, Any]]:
    """Each block and ``read(block, slot)``, the next block read on a second thread while the
    caller computes this one (file reads release the GIL, as kldiv's kernels do), into the
    other of two slots of buffers."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(read, blocks[0], 0) if blocks else None
        for i, block in enumerate(blocks):
            assert ahead is not None
            data = ahead.result()
            if i + 1 < len(blocks):
                ahead = pool.submit(read, blocks[i + 1], (i + 1) % 2)
            yield block, data


class CompareReport:
    """Per-token values and the summary of a comparison (see :func:`kldiv.compare`).

    Attributes
    ----------
    kld : numpy.ndarray
        float64, the KL divergence ``Σ_v P(v) (ln P(v) - ln Q(v))`` from the base's
        next-token distribution ``P`` to the other's ``Q``, one a scored token.
    delta_p : numpy.ndarray
        float64, ``Δp = Q(token) - P(token)`` for the actual next token.
    same_top : numpy.ndarray
        bool, whether both models' most likely tokens agree.
    nll, nll_base : numpy.ndarray
        float64, ``-ln Q(token)`` and ``-ln P(token)``.
    top5, top10 : numpy.ndarray or None
        bool, whether the base's most likely token is among the other's 5 (10) most likely
        (float logits on both sides only).
    mode : str
        ``"llama.cpp"`` (a ``.kld`` base: llama.cpp's definitions, including its cut of base
        log-probabilities below -16) or ``"exact"`` (float logits on both sides).
    """

    def __init__(self, values: tuple[np.ndarray, ...], mode: str, n_ctx: int, n_vocab: int):
        kld, delta_p, top, nll, nll_base = values
        self.kld = kld
        self.delta_p = delta_p
        self.same_top = (top & 1).astype(bool)
        self.nll = nll
        self.nll_base = nll_base
        exact = mode == "exact"
        self.top5 = (top & 2).astype(bool) if exact else None
        self.top10 = (top & 4).astype(bool) if exact else None
        self.mode = mode
        self.n_ctx = n_ctx
        self.n_vocab = n_vocab
        self._top = top
        self._summary: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.kld)

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"CompareReport({self.mode}, {s['count']} tokens, mean KLD {s['kld'][0]:.6f}, "
            f"same top {100 * s['same_top'][0]:.3f}%)"
        )

    def summary(self) -> dict[str, Any]:
        """llama.cpp's final statistics as a dict: ``count``; ``(value, uncertainty)`` pairs
        ``ppl``, ``ppl_base``, ``log_ppl_ratio``, ``ppl_ratio``, ``ppl_diff``, ``kld``,
        ``delta_p``, ``delta_p_rms``, ``same_top`` (and ``top5``, ``top10``, or None); ``cor``;
        ``kld_quantiles`` and ``delta_p_quantiles`` as ``(fraction, value)`` pairs (1 the
        maximum, 0.5 the median, 0 the minimum). Uncertainties are one standard error, as
        llama.cpp computes them."""
        if self._summary is None:
            self._summary = _kldiv.compare_summary(
                self.kld,
                self.delta_p,
                self._top,
                self.nll,
                self.nll_base,
                self.mode == "llama.cpp",
            )
        return dict(self._summary)

    def to_text(self) -> str:
        """llama.cpp's final statistics block (the three ``======`` sections), line for line
        and digit for digit; in ``exact`` mode two lines more, the top-5 and top-10 rates.
        (llama.cpp itself prints no block for fewer than 100 tokens.)"""
        s = self.summary()

        def pm(key: str) -> tuple[float, float]:
            v, u = s[key]
            return v, u

        lines = ["====== Perplexity statistics ======"]
        lines.append("Mean PPL(Q)                   : %10.6f ± %10.6f" % pm("ppl"))
        lines.append("Mean PPL(base)                : %10.6f ± %10.6f" % pm("ppl_base"))
        lines.append("Cor(ln(PPL(Q)), ln(PPL(base))): %6.2f%%" % (100.0 * s["cor"]))
        lines.append("Mean ln(PPL(Q)/PPL(base))     : %10.6f ± %10.6f" % pm("log_ppl_ratio"))
        lines.append("Mean PPL(Q)/PPL(base)         : %10.6f ± %10.6f" % pm("ppl_ratio"))
        lines.append("Mean PPL(Q)-PPL(base)         : %10.6f ± %10.6f" % pm("ppl_diff"))
        lines.append("")
        lines.append("====== KL divergence statistics ======")
        lines.append("Mean    KLD: %10.6f ± %10.6f" % pm("kld"))
        for fraction, value in s["kld_quantiles"]:
            lines.append("%s KLD: %10.6f" % (_label(fraction), value))
        lines.append("")
        lines.append("====== Token probability statistics ======")
        v, u = s["delta_p"]
        lines.append("Mean    Δp: %6.3f ± %5.3f %%" % (100.0 * v, 100.0 * u))
        for fraction, value in s["delta_p_quantiles"]:
            lines.append("%s Δp: %6.3f%%" % (_label(fraction), 100.0 * value))
        v, u = s["delta_p_rms"]
        lines.append("RMS Δp    : %6.3f ± %5.3f %%" % (100.0 * v, 100.0 * u))
        v, u = s["same_top"]
        lines.append("Same top p: %6.3f ± %5.3f %%" % (100.0 * v, 100.0 * u))
        for key, label in (("top5", "Top-5 p   "), ("top10", "Top-10 p  ")):
            if s[key] is not None:
                v, u = s[key]
                lines.append("%s: %6.3f ± %5.3f %%" % (label, 100.0 * v, 100.0 * u))
        return "\n".join(lines) + "\n"

    def plot(self, path: str | os.PathLike[str]) -> None:
        """Draw the distributions of the per-token KLD (log scale) and of Δp to a PNG file
        (through a temporary file), with the summary above them. Needs matplotlib."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("the plot needs matplotlib: pip install matplotlib") from None
        s = self.summary()
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        kld = self.kld[np.isfinite(self.kld)]
        positive = kld[kld > 0]
        if positive.size:
            lo, hi = positive.min(), positive.max()
            bins = np.geomspace(lo, hi if hi > lo else lo * 10, 60)
            left.hist(positive, bins=bins, color="#3b6ea8")
            left.set_xscale("log")
        for fraction, value in s["kld_quantiles"]:
            if fraction in (0.5, 0.99) and value > 0:
                left.axvline(value, color="#c44", lw=1, ls="--")
        left.set_xlabel("KL divergence per token (nats, log scale)")
        left.set_ylabel("tokens")
        rest = len(self.kld) - positive.size
        left.set_title(
            "KLD: median and 99% dashed"
            + (f"; {rest} tokens at or below 0 not shown" if rest else ""),
            fontsize=9,
        )
        right.hist(100.0 * self.delta_p, bins=80, color="#5a9a5a")
        right.set_yscale("log")
        right.set_xlabel("Δp = p(other) - p(base) of the next token (%)")
        right.set_ylabel("tokens (log scale)")
        right.set_title(f"RMS Δp {100 * s['delta_p_rms'][0]:.3f}%", fontsize=9)
        fig.suptitle(
            f"kldiv compare ({self.mode}): {s['count']} tokens, mean KLD "
            f"{s['kld'][0]:.6f} ± {s['kld'][1]:.6f}, same top {100 * s['same_top'][0]:.2f}%, "
            f"PPL(Q)/PPL(base) {s['ppl_ratio'][0]:.4f} ± {s['ppl_ratio'][1]:.4f}",
            fontsize=10,
        )
        fig.tight_layout()
        try:
            with _files.replacing(path, ".png") as tmp:
                fig.savefig(tmp, dpi=110, format="png")
        finally:
            plt.close(fig)

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The summary and the per-token arrays as JSON (written to ``path`` through a
        temporary file, when given); returns the text. Non-finite values (a NaN logit's row, an
        infinite KL where the other model gives a token no mass) are written as Python's
        ``json`` writes them: ``NaN``, ``Infinity``."""
        doc = {
            "mode": self.mode,
            "n_ctx": self.n_ctx,
            "n_vocab": self.n_vocab,
            "summary": self.summary(),
            "per_token": {
                "kld": self.kld.tolist(),
                "delta_p": self.delta_p.tolist(),
                "same_top": self.same_top.tolist(),
                "nll": self.nll.tolist(),
                "nll_base": self.nll_base.tolist(),
                **({} if self.top5 is None else {"top5": self.top5.tolist()}),
                **({} if self.top10 is None else {"top10": self.top10.tolist()}),
            },
        }
        text = json.dumps(doc)
        if path is not None:
            with _files.replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
        return text


def _label(fraction: float) -> str:
    """llama.cpp's label of a quantile line (``Maximum``, ``99.9%  ``, ``Median ``, ...)."""
    if fraction >= 1.0:
        return "Maximum"
    if fraction <= 0.0:
        return "Minimum"
    if fraction == 0.5:
        return "Median "
    return "%4.1f%%  " % (100.0 * fraction)


def compare(
    base: PathOrArray,
    other: PathOrArray,
    tokens: PathOrArray | None = None,
    *,
    n_ctx: int | None = None,
    on_window: Callable[[int, int], None] | None = None,
) -> CompareReport:
    """Compare a model's next-token distributions with a base model's, token by token, as
    llama.cpp's ``llama-perplexity --kl-divergence`` does.

    Per scored token, with ``P`` the base's distribution and ``Q`` the other's:

    ``KLD = Σ_v P(v) (ln P(v) - ln Q(v))``, ``Δp = Q(tok) - P(tok)``,
    ``nll = -ln Q(tok)``, ``nll_base = -ln P(tok)``, same top = ``argmax P == argmax Q``;

    then the summary: ``PPL = exp(mean nll)`` of each model, their ratio and difference with
    uncertainties, the KLD's and Δp's mean, percentiles and extremes, Δp's RMS, the same-top
    rate (see :meth:`CompareReport.summary`).

    Parameters
    ----------
    base : path or array
        A llama.cpp ``.kld`` base file (``--kl-divergence-base``; it holds ``n_ctx`` and the
        tokens), or the base model's float logits (``.npy`` or an array).
    other : path or array
        The other model's float logits at every position of every window, shape
        ``(n_chunk * n_ctx, V)`` or ``(n_chunk, n_ctx, V)``; float32, float64, float16 or
        bfloat16; ``.npy`` or ``.safetensors`` files are read a block of rows at a time.
        With a ``.kld`` base, also another ``.kld`` file of the same tokens (its stored
        log-probabilities taken as the other model's).
    tokens : path or array, optional
        The tokens (``n_chunk * n_ctx`` integers), for float logits on both sides.
    n_ctx : int, optional
        The window length, for float logits on both sides. As llama.cpp does, positions
        ``n_ctx/2 .. n_ctx-2`` of each window are scored, row ``i`` predicting token ``i + 1``.
    on_window : callable, optional
        Called as ``on_window(done, windows)`` after each window (a progress bar).

    Returns
    -------
    CompareReport
        With a ``.kld`` base, llama.cpp's definitions exactly (its uint16 quantisation, its
        cut of base log-probabilities below -16, so a token's KLD can be negative; its float
        arithmetic): the same per-token values and the same printed block. With float logits
        on both sides, the exact KL over the whole vocabulary, and top-5/top-10 agreement.

    Examples
    --------
    >>> import numpy as np, kldiv
    >>> rng = np.random.default_rng(0)
    >>> base = rng.standard_normal((2 * 64, 100), dtype=np.float32) * 3
    >>> other = base.astype(np.float16)          # a "quantized" model
    >>> tokens = rng.integers(0, 100, 2 * 64)
    >>> r = kldiv.compare(base, other, tokens, n_ctx=64)
    >>> len(r), r.mode
    (62, 'exact')
    >>> bool(r.summary()["kld"][0] < 1e-5)
    True
    """
    if _is_path(base) and _is_kld(base):
        if tokens is not None or n_ctx is not None:
            raise ValueError("a .kld base holds its tokens and n_ctx: pass neither")
        kld = _Kld.open(base)
        if kld.n_chunk == 0:
            raise ValueError(f"{os.fspath(base)} holds no windows: there is nothing to compare")
        if _is_path(other) and _is_kld(other):
            o: _Rows | _Kld = _Kld.open(other)
            _check_same_kld(kld, o)
            row_bytes = kld.n_vocab * 4
        else:
            o = _logits(other, "other")
            _check_rows(o, kld.n_chunk * kld.n_ctx, kld.n_vocab, "other")
            row_bytes = o.row_bytes

        def read(blk: _Block, slot: int) -> tuple[np.ndarray, str, np.ndarray]:
            if isinstance(o, _Kld):  # its stored log-probabilities, as llama.cpp reads them
                log_probs = np.empty((blk.scored.stop - blk.scored.start, kld.n_vocab), np.float32)
                _kldiv.kld_log_probs(o.rows.read(blk.scored, slot), log_probs)
                block, kind = log_probs, "float32"
            else:
                block, kind = _kind(o.read(blk.rows, slot), o.kind, llama=True)
            return block, kind, kld.rows.read(blk.scored, slot)

        out = _outputs(kld.n_chunk * kld.scored)
        blocks = _blocks(kld.n_chunk, kld.n_ctx, row_bytes)
        for blk, (block, kind, stored) in _read_ahead(blocks, read):
            next_tokens = np.asarray(kld.tokens[blk.tokens], dtype=np.int64)
            part = tuple(a[blk.scored] for a in out)
            _kldiv.compare_kld(block, kind, stored, next_tokens, part)
            if blk.last and on_window is not None:
                on_window(blk.window + 1, kld.n_chunk)
        return CompareReport(out, "llama.cpp", kld.n_ctx, kld.n_vocab)
    if tokens is None or n_ctx is None:
        raise ValueError("with float logits on both sides, pass tokens and n_ctx")
    if _is_path(other) and _is_kld(other):
        raise ValueError("a .kld file compares only with a .kld base")
    b = _logits(base, "base")
    o = _logits(other, "other")
    toks = np.load(tokens, mmap_mode="r") if _is_path(tokens) else np.asarray(tokens)
    toks = toks.reshape(-1)
    n_chunk = _chunks(len(toks), n_ctx)
    _check_rows(b, len(toks), b.shape[1], "base")
    _check_rows(o, len(toks), b.shape[1], "other")

    def read_both(blk: _Block, slot: int) -> tuple[np.ndarray, str, np.ndarray, str]:
        bb, bk = _kind(b.read(blk.rows, slot), b.kind, llama=False)
        ob, ok = _kind(o.read(blk.rows, slot), o.kind, llama=False)
        if (bk == "float64") != (ok == "float64"):  # one compute type: float64 for both
            bb, bk = (bb.astype(np.float64), "float64") if ok == "float64" else (bb, bk)
            ob, ok = (ob.astype(np.float64), "float64") if bk == "float64" else (ob, ok)
        return bb, bk, ob, ok

    out = _outputs(n_chunk * (n_ctx - 1 - n_ctx // 2))
    blocks = _blocks(n_chunk, n_ctx, max(b.row_bytes, o.row_bytes))
    for blk, (bb, bk, ob, ok) in _read_ahead(blocks, read_both):
        part = tuple(a[blk.scored] for a in out)
        _kldiv.compare_logits(bb, bk, ob, ok, np.asarray(toks[blk.tokens], dtype=np.int64), part)
        if blk.last and on_window is not None:
            on_window(blk.window + 1, n_chunk)
    return CompareReport(out, "exact", n_ctx, b.shape[1])


def _check_same_kld(base: _Kld, other: _Kld) -> None:
    """Two .kld files compare only where they score the same tokens of the same windows."""
    mine = (base.n_ctx, base.n_vocab, base.n_chunk)
    theirs = (other.n_ctx, other.n_vocab, other.n_chunk)
    if mine != theirs:
        raise ValueError(f"the .kld files differ: n_ctx, vocabulary, windows {mine} and {theirs}")
    if not np.array_equal(base.tokens, other.tokens):
        raise ValueError("the .kld files hold different tokens")


def _chunks(n_tokens: int, n_ctx: int) -> int:
    _kldiv.kld_header_bytes(n_ctx, 1, 0)  # checks n_ctx
    if n_tokens == 0 or n_tokens % n_ctx:
        raise ValueError(f"{n_tokens} tokens are not a whole number of windows of n_ctx {n_ctx}")
    return n_tokens // n_ctx


def _check_rows(a: _Rows, rows: int, vocab: int, name: str) -> None:
    if a.shape != (rows, vocab):
        raise ValueError(
            f"{name}: logits of shape {a.shape} do not match {rows} positions "
            f"(windows x n_ctx) of a vocabulary of {vocab}"
        )


def _outputs(n: int) -> tuple[np.ndarray, ...]:
    return (np.zeros(n), np.zeros(n), np.zeros(n, np.uint8), np.zeros(n), np.zeros(n))


def write_kld_base(
    logits: PathOrArray,
    tokens: PathOrArray,
    n_ctx: int,
    path: str | os.PathLike[str],
) -> None:
    """Write a llama.cpp ``.kld`` base file (``llama-perplexity --kl-divergence-base``) from a
    base model's logits at every position of every window and the tokens: byte for byte what
    llama.cpp writes. Through a temporary file in the same folder, renamed at the end.

    Per scored row: the maximum ``M``, ``m = max(min, M - 16)``, the scale ``(M - m)/65535``
    and ``m - M - ln Σ e^(z - M)`` as two float32, then ``round((z - m)/scale)`` (0 below
    ``m``) as uint16.

    Examples
    --------
    >>> import numpy as np, kldiv, tempfile, os
    >>> rng = np.random.default_rng(0)
    >>> logits = rng.standard_normal((2 * 16, 10), dtype=np.float32)
    >>> path = os.path.join(tempfile.mkdtemp(), "base.kld")
    >>> kldiv.write_kld_base(logits, rng.integers(0, 10, 32), 16, path)
    >>> os.path.getsize(path)
    540
    """
    z = _logits(logits, "logits")
    toks = np.load(tokens, mmap_mode="r") if _is_path(tokens) else np.asarray(tokens)
    toks = toks.reshape(-1)
    n_chunk = _chunks(len(toks), n_ctx)
    _check_rows(z, len(toks), z.shape[1], "logits")
    if toks.size and (toks.min() < 0 or toks.max() >= z.shape[1]):
        raise ValueError(f"tokens must lie in [0, {z.shape[1]})")
    head, total = _kldiv.kld_header_bytes(n_ctx, z.shape[1], n_chunk)
    row_len = _kldiv.kld_header(bytes(head), total)[3]
    with _files.replacing(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(bytes(head))
            f.write(np.asarray(toks, dtype="<i4").tobytes())
            for blk in _blocks(n_chunk, n_ctx, z.shape[1] * 4):
                block = _float32(z.read(blk.rows), z.kind)
                out = np.zeros((len(block), row_len), dtype="<u2")
                _kldiv.kld_base_rows(block, out)
                f.write(out.tobytes())
        if os.path.getsize(tmp) != total:
            raise RuntimeError("kldiv: the .kld file came out the wrong size")

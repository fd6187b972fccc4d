"""Comparing two models' next-token distributions: llama.cpp's ``--kl-divergence`` statistics.

The numbers come from the crate (``kldiv._kldiv.compare_kld``, ``compare_logits``,
``compare_summary``, ``kld_base_rows``); this module opens the files, walks the windows and
formats llama.cpp's text (with ``%`` formats: they are C's ``printf`` formats, as llama.cpp
prints them).
"""
# ruff: noqa: UP031

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from . import _kldiv

PathOrArray = Union[str, "os.PathLike[str]", np.ndarray]

__all__ = ["CompareReport", "compare", "write_kld_base"]


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _is_kld(path: Any) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"_logits_"


@dataclass(frozen=True)
class _Kld:
    """A ``.kld`` base file, memory-mapped: its sizes, tokens and stored rows."""

    n_ctx: int
    n_vocab: int
    n_chunk: int
    first: int
    scored: int
    tokens: np.ndarray
    rows: np.ndarray

    @classmethod
    def open(cls, path: Any) -> _Kld:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(20)
        try:
            n_ctx, n_vocab, n_chunk, row_len, first, scored, offset = _kldiv.kld_header(head, size)
        except ValueError as e:
            raise ValueError(f"{os.fspath(path)}: {e}") from None
        tokens = np.memmap(path, dtype="<i4", mode="r", offset=20, shape=(n_chunk * n_ctx,))
        rows = np.memmap(
            path, dtype="<u2", mode="r", offset=offset, shape=(n_chunk * scored, row_len)
        )
        return cls(n_ctx, n_vocab, n_chunk, first, scored, tokens, rows)


def _logits(x: PathOrArray, name: str) -> np.ndarray:
    """Float logits as a 2-D array (rows, vocabulary): a ``.npy`` file memory-mapped, or an
    array; ``(n_chunk, n_ctx, V)`` is taken as its rows."""
    a = np.load(x, mmap_mode="r") if _is_path(x) else np.asarray(x)
    if a.ndim == 3:
        a = a.reshape(-1, a.shape[-1])
    if a.ndim != 2 or a.shape[-1] == 0:
        raise ValueError(
            f"{name}: logits are (rows, vocabulary) or (windows, n_ctx, vocabulary); "
            f"got shape {a.shape}"
        )
    if a.dtype.name not in ("float32", "float64", "float16", "bfloat16"):
        raise TypeError(f"{name}: logits are float32, float64, float16 or bfloat16; got {a.dtype}")
    return a


def _kind(a: np.ndarray, llama: bool) -> tuple[np.ndarray, str]:
    """A block of logits as the crate takes it: float32 or float64 as they are (float64 as
    float32 against a ``.kld`` base, as llama.cpp sees logits), 16-bit ones as their bits."""
    name = a.dtype.name
    if name in ("float16", "bfloat16"):
        return np.ascontiguousarray(a).view(np.uint16), name
    if name == "float64" and llama:
        return a.astype(np.float32), "float32"
    return np.ascontiguousarray(a), name


def _windows(n_chunk: int, n_ctx: int) -> Iterator[tuple[int, slice, slice]]:
    """Each window's index, its scored rows and the tokens they predict (llama.cpp scores
    positions ``n_ctx/2 .. n_ctx-2``, row ``j`` predicting token ``j + 1``)."""
    first = n_ctx // 2
    for c in range(n_chunk):
        start = c * n_ctx
        yield c, slice(start + first, start + n_ctx - 1), slice(start + first + 1, start + n_ctx)


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

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The summary and the per-token arrays as JSON (written to ``path`` through a
        temporary file, when given); returns the text."""
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
            _write_atomically(path, text.encode())
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


def _write_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".kldiv-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def compare(
    base: PathOrArray,
    other: PathOrArray,
    tokens: PathOrArray | None = None,
    *,
    n_ctx: int | None = None,
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
        bfloat16. ``.npy`` files are memory-mapped and read a window at a time.
    tokens : path or array, optional
        The tokens (``n_chunk * n_ctx`` integers), for float logits on both sides.
    n_ctx : int, optional
        The window length, for float logits on both sides. As llama.cpp does, positions
        ``n_ctx/2 .. n_ctx-2`` of each window are scored, row ``i`` predicting token ``i + 1``.

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
        o = _logits(other, "other")
        _check_rows(o, kld.n_chunk * kld.n_ctx, kld.n_vocab, "other")
        n = kld.n_chunk * kld.scored
        out = _outputs(n)
        for c, rows, toks in _windows(kld.n_chunk, kld.n_ctx):
            block, kind = _kind(o[rows], llama=True)
            next_tokens = np.asarray(kld.tokens[toks], dtype=np.int64)
            stored = np.asarray(kld.rows[c * kld.scored : (c + 1) * kld.scored])
            part = tuple(a[c * kld.scored : (c + 1) * kld.scored] for a in out)
            _kldiv.compare_kld(block, kind, stored, next_tokens, part)
        return CompareReport(out, "llama.cpp", kld.n_ctx, kld.n_vocab)
    if tokens is None or n_ctx is None:
        raise ValueError("with float logits on both sides, pass tokens and n_ctx")
    b = _logits(base, "base")
    o = _logits(other, "other")
    toks = np.load(tokens, mmap_mode="r") if _is_path(tokens) else np.asarray(tokens)
    toks = toks.reshape(-1)
    n_chunk = _chunks(len(toks), n_ctx)
    _check_rows(b, len(toks), b.shape[1], "base")
    _check_rows(o, len(toks), b.shape[1], "other")
    scored = n_ctx - 1 - n_ctx // 2
    out = _outputs(n_chunk * scored)
    for c, rows, nxt in _windows(n_chunk, n_ctx):
        bb, bk = _kind(b[rows], llama=False)
        ob, ok = _kind(o[rows], llama=False)
        if (bk == "float64") != (ok == "float64"):
            bb, bk = (bb.astype(np.float64), "float64") if ok == "float64" else (bb, bk)
            ob, ok = (ob.astype(np.float64), "float64") if bk == "float64" else (ob, ok)
        part = tuple(a[c * scored : (c + 1) * scored] for a in out)
        _kldiv.compare_logits(bb, bk, ob, ok, np.asarray(toks[nxt], dtype=np.int64), part)
    return CompareReport(out, "exact", n_ctx, b.shape[1])


def _chunks(n_tokens: int, n_ctx: int) -> int:
    _kldiv.kld_header_bytes(n_ctx, 1, 0)  # checks n_ctx
    if n_tokens == 0 or n_tokens % n_ctx:
        raise ValueError(f"{n_tokens} tokens are not a whole number of windows of n_ctx {n_ctx}")
    return n_tokens // n_ctx


def _check_rows(a: np.ndarray, rows: int, vocab: int, name: str) -> None:
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
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".kldiv-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(head))
            f.write(np.asarray(toks, dtype="<i4").tobytes())
            for _, rows, _ in _windows(n_chunk, n_ctx):
                block = np.ascontiguousarray(z[rows], dtype=np.float32)
                out = np.zeros((len(block), row_len), dtype="<u2")
                _kldiv.kld_base_rows(block, out)
                f.write(out.tobytes())
        if os.path.getsize(tmp) != total:
            raise RuntimeError("kldiv: the .kld file came out the wrong size")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise

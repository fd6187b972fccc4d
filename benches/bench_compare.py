"""W13 of BENCHMARKS (docs/benchmarks.md): ``kldiv compare`` of a llama.cpp ``.kld`` base
against float32 logits, from the page cache, against the time to read both inputs with the
same threads; and the peak resident memory of the comparison (a fresh process).

    PYTHONPATH=python python benches/bench_compare.py [--dir DIR] [--windows 32] [--ctx 514]
        [--vocab 32000] [--threads 2] [--repeats 5] [--keep]

The defaults make W13's 8,192 scored tokens (32 windows of 514 positions, 256 scored each)
x 32,000 entries: a 2.1 GB ``.npy`` of the other model's logits (every position of every
window) and a 0.5 GB ``.kld`` base written by ``kldiv.write_kld_base`` from the base's logits
(base = 3 x standard normals, other = base + 0.3 x standard normals, as BENCHMARKS' logits).
With ``--windows`` large enough the inputs exceed memory (RSS stays bounded: read a window at a
time); the base repeats its first 8 windows' rows then, to keep the files quick to make.
The read floor: each thread reads its share of the windows' scored rows of both files (the
bytes kldiv reads), by ``np.fromfile`` or by a populated memory map summed as words; the
faster is the floor. llama.cpp's own per-token
code is not run here (it is not installed); BENCHMARKS puts it at about 10 ns per entry, and
docs/performance.md has it measured on one machine (13.2-13.4 ns per entry on one thread).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

UNIQUE = 8  # windows of distinct logits; more windows repeat them


def make_inputs(d: str, windows: int, n_ctx: int, vocab: int) -> tuple[str, str]:
    import kldiv

    base_npy, other_npy, kld = (os.path.join(d, n) for n in ("base.npy", "other.npy", "base.kld"))
    rows = windows * n_ctx
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, rows).astype(np.int32)
    unique = min(windows, UNIQUE)
    base = np.lib.format.open_memmap(base_npy, "w+", np.float32, (unique * n_ctx, vocab))
    other = np.lib.format.open_memmap(other_npy, "w+", np.float32, (rows, vocab))
    for w in range(windows):
        g = np.random.default_rng(1 + w % unique)
        b = g.standard_normal((n_ctx, vocab), dtype=np.float32) * 3
        if w < unique:
            base[w * n_ctx : (w + 1) * n_ctx] = b
        other[w * n_ctx : (w + 1) * n_ctx] = b + 0.3 * g.standard_normal(b.shape, np.float32)
    base.flush()
    other.flush()
    del base, other
    # The base's .kld of the unique windows, then its rows repeated for the others.
    small = os.path.join(d, "small.kld")
    kldiv.write_kld_base(base_npy, tokens[: unique * n_ctx], n_ctx, small)
    header = 20 + 4 * unique * n_ctx
    with open(small, "rb") as f:
        head = bytearray(f.read(header))
        body = f.read()
    head[16:20] = np.int32(windows).tobytes()
    per_window = len(body) // unique
    with open(kld, "wb") as f:
        f.write(bytes(head[:20]))
        f.write(np.tile(tokens[: unique * n_ctx], windows // unique + 1)[:rows].tobytes())
        for w in range(windows):
            f.write(body[(w % unique) * per_window : (w % unique + 1) * per_window])
    os.unlink(small)
    os.unlink(base_npy)
    return kld, other_npy


def read_floor(
    kld: str, other: str, n_ctx: int, vocab: int, windows: int, threads: int, way: str
) -> None:
    """Reads the bytes kldiv reads (each window's scored rows of both files), the windows
    split over ``threads`` threads, one of two ways: ``fromfile`` (a copy from the page
    cache), or ``map``, a populated memory map (``MAP_POPULATE``, as kldiv maps its blocks)
    whose bytes are then summed as 64-bit words (NumPy releases the GIL in both)."""
    first, scored = n_ctx // 2, n_ctx - 1 - n_ctx // 2
    row_len = 2 * ((vocab + 1) // 2) + 4
    with open(other, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        data = f.tell()
    rows_at = 20 + 4 * windows * n_ctx
    spans = [
        span
        for w in range(windows)
        for span in (
            (other, data + (w * n_ctx + first) * vocab * 4, scored * vocab * 4),
            (kld, rows_at + w * scored * row_len * 2, scored * row_len * 2),
        )
    ]

    def by_fromfile(part: list[tuple[str, int, int]]) -> None:
        for path, offset, n in part:
            np.fromfile(path, np.uint8, n, offset=offset)

    def by_map(part: list[tuple[str, int, int]]) -> None:
        for path, offset, n in part:
            aligned = offset - offset % mmap.ALLOCATIONGRANULARITY
            with open(path, "rb") as f:
                m = mmap.mmap(
                    f.fileno(),
                    offset - aligned + n,
                    prot=mmap.PROT_READ,
                    flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                    offset=aligned,
                )
            words = np.frombuffer(m, np.uint64, (offset - aligned + n) // 8)
            words.sum()
            del words
            m.close()

    work = by_fromfile if way == "fromfile" else by_map
    ts = [threading.Thread(target=work, args=(spans[i::threads],)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def peak_rss(kld: str, other: str, threads: int) -> float:
    code = (
        f"import kldiv, sys; kldiv.set_num_threads({threads}); "
        "kldiv.compare(sys.argv[1], sys.argv[2]); "
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, kld, other], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip()) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", help="where to make the files (default: a temporary folder)")
    p.add_argument("--windows", type=int, default=32)
    p.add_argument("--ctx", type=int, default=514)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--keep", action="store_true", help="keep the files")
    p.add_argument("--json", help="write the results here")
    p.add_argument(
        "--rss-only", action="store_true", help="only the peak RSS (inputs larger than RAM)"
    )
    a = p.parse_args()
    import kldiv
    from kldiv._bench import seconds_per_step

    kldiv.set_num_threads(a.threads)
    d = a.dir or tempfile.mkdtemp(prefix="kldiv-w13-")
    os.makedirs(d, exist_ok=True)
    kld, other = os.path.join(d, "base.kld"), os.path.join(d, "other.npy")
    if not (os.path.exists(kld) and os.path.exists(other)):
        t0 = time.perf_counter()
        kld, other = make_inputs(d, a.windows, a.ctx, a.vocab)
        print(f"made the inputs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    size = os.path.getsize(kld) + os.path.getsize(other)
    scored = a.windows * (a.ctx - 1 - a.ctx // 2)
    entries = scored * a.vocab
    if a.rss_only:
        t0 = time.perf_counter()
        rss = peak_rss(kld, other, a.threads)
        print(
            f"W13 memory: inputs {size / 2**30:.2f} GiB, a compare's peak RSS {rss:.0f} MiB "
            f"({time.perf_counter() - t0:.0f} s)"
        )
        return
    fns = {
        "kldiv compare": lambda: kldiv.compare(kld, other),
        "read (fromfile)": lambda: read_floor(
            kld, other, a.ctx, a.vocab, a.windows, a.threads, "fromfile"
        ),
        "read (map)": lambda: read_floor(kld, other, a.ctx, a.vocab, a.windows, a.threads, "map"),
    }
    for fn in fns.values():
        fn()  # the page cache, where it fits
    times = seconds_per_step(fns, a.repeats)
    rss = peak_rss(kld, other, a.threads)
    print(
        f"W13: {scored} scored tokens x {a.vocab}, {a.threads} threads, inputs "
        f"{size / 2**30:.2f} GiB, SIMD {kldiv.simd_level()}, medians of {a.repeats} (min-max)"
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, v in times.items():
        print(
            f"  {name:16s} {med[name]:7.3f} s ({min(v):.3f}-{max(v):.3f})  "
            f"{med[name] * 1e9 / entries:6.3f} ns/entry"
        )
    floor = min(med["read (fromfile)"], med["read (map)"])
    print(
        f"  kldiv / read floor (the faster read): {med['kldiv compare'] / floor:.2f}x;"
        f" peak RSS of a compare: {rss:.0f} MiB"
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"times": times, "entries": entries, "rss_mib": rss, "bytes": size}, f)
    if not a.keep and not a.dir:
        for f in (kld, other):
            os.unlink(f)
        os.rmdir(d)


if __name__ == "__main__":
    main()

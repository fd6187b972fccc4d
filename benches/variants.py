"""kldiv's W7, W8 and W9 (and W5) against its own W1, interleaved in one process.

    PYTHONPATH=python python benches/variants.py [--threads 2] [--repeats 15] [--quick]

docs/benchmarks.md wants W7, W8 and W9 within 1.5x of W1's time. bench.py times each workload
after the one before, minutes apart (it also times kldiv on W1's arrays in turns with W7-W9,
the "kldiv@W1" rows), and this VM's speed drifts from minute to minute; here all the workloads
take turns inside every repeat (order rotating, the same 20 ms gap before each, as in
bench.py), so that each ratio compares times taken under the same conditions. The inputs, the
calls and the timing are bench.py's (``kldiv._bench``).
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see bench.py

import kldiv  # noqa: E402
from kldiv._bench import SETTLE_MS, WORKLOADS, kldiv_fn, make_inputs, time_interleaved  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--workloads", default="W1,W5,W7,W8,W9")
    ap.add_argument("--quick", action="store_true", help="sizes / 100, for a smoke run")
    a = ap.parse_args()
    kldiv.set_num_threads(a.threads)
    ids = [s.strip().upper() for s in a.workloads.split(",") if s.strip()]
    unknown = [i for i in ids if i not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    if "W1" not in ids:
        ids.insert(0, "W1")
    notes: list[str] = []
    fns, sizes = {}, {}
    for wid in ids:
        w = WORKLOADS[wid]
        x, t = make_inputs(w, quick=a.quick)
        fn = kldiv_fn(kldiv, w, x, t, notes)
        assert fn is not None
        fn()  # warm
        fns[wid], sizes[wid] = fn, x.size
    timed = time_interleaved(fns, calls=1, repeats=a.repeats, settle_ms=SETTLE_MS)
    ns = {wid: timed[wid]["ns_per_call"] / sizes[wid] for wid in ids}
    quick = ", quick sizes" if a.quick else ""
    print(f"kldiv, {a.threads} thread(s), medians of {a.repeats} interleaved repeats{quick}:")
    for wid in ids:
        spread = sorted(s / sizes[wid] for s in timed[wid]["samples_ns_per_call"])
        q1, _, q3 = statistics.quantiles(spread, n=4)
        print(
            f"{wid} {WORKLOADS[wid].what:45s} {ns[wid]:.3f} ns/element "
            f"(quartiles {q1:.3f}-{q3:.3f}), {ns[wid] / ns['W1']:.2f}x W1"
        )


if __name__ == "__main__":
    main()

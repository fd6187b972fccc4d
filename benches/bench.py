"""The benchmark table of BENCHMARKS.md (W1-W9) against the peers that are installed.

    PYTHONPATH=python python benches/bench.py [--workloads W1,W3] [--threads 2] [--quick]

The harness lives in the package (``kldiv._bench``) so that ``kldiv bench`` runs it too; this
script sets ``OPENBLAS_NUM_THREADS=1`` before NumPy loads (see ``kldiv._bench``).
"""

import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from kldiv._bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

"""The benchmark table of docs/benchmarks.md (W1-W9) against the peers that are installed.

    PYTHONPATH=python python benches/bench.py [--workloads W1,W3] [--threads 2] [--quick]
        [--json PATH] [--png PATH]

The same as ``kldiv bench``: the harness lives in the package (``kldiv._bench``), and this
script only sets ``OPENBLAS_NUM_THREADS=1`` before NumPy loads (see ``kldiv._bench``). It
writes no file unless ``--json`` or ``--png`` says where.
"""

import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from kldiv._bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

"""kldiv against its peers on the workloads W1-W9 of docs/benchmarks.md.

``kldiv bench`` runs it, and so does ``benches/bench.py`` from a checkout::

    kldiv bench --quick                                            # sizes / 100: a smoke run
    PYTHONPATH=python python benches/bench.py                      # all of W1-W9, 2 threads
    PYTHONPATH=python python benches/bench.py --workloads W1,W3 --threads 1 --repeats 11
    kldiv bench --json out/bench.json --png out/bench.png          # also keep the results

It prints a table (median ns per element, microseconds per call, how many times faster kldiv
is than each peer, kldiv's time over the read floor, and "cpu": the process CPU time over the
wall time, summed over the repeats, a rough count of the cores an implementation kept busy;
the kernel accounts CPU time coarsely, so it is only meaningful for calls of a millisecond or
more; for W7, W8 and W9, whose target is a ratio to W1's time, kldiv on W1's arrays is timed in
turns with them, as "kldiv@W1", and the ratio printed). It writes nothing unless asked:
``--json PATH`` writes the results as JSON to PATH, ``--png PATH`` a bar chart (needs
matplotlib) to PATH, each creating the folders above it.

The rule (docs/benchmarks.md): same arrays, same number of threads, at least 7 timed repeats
after a warm-up, the implementations interleaved inside each repeat (their order rotates from
repeat to repeat), the median reported. Each timed block starts after a 20 ms gap
(``--settle-ms``, the main thread busy-waits): PyTorch's OpenMP workers spin for milliseconds
after each call and would otherwise steal a core from whatever runs next. Peers, each only if
it imports: PyTorch (``torch.nn.functional.kl_div``, forward + ``torch.autograd.grad`` for W6),
JAX (the same expression under ``jax.jit``, arrays put on the device once), NumPy/SciPy
(``(xlogy(t, t) - t * x).sum() / n``, single-threaded by nature).

The read floor is ``kldiv._kldiv.read_sum(x, t)``: a read-only kernel of kldiv's own that sums
the values of both inputs, with kldiv's threads (``kldiv.set_num_threads``, the same number as
every implementation) and kldiv's traversal of the two arrays (their strides, a broadcast
target read as the kernels read it). It is the time to read both inputs once, which no kernel
over them can beat; it needs nothing but kldiv. For W5 and W6 it stays a read of both inputs,
although their kernels also write an array (the terms, the gradient).

Threads: ``torch.set_num_threads(N)`` and ``kldiv.set_num_threads(N)``. XLA has no flag for
the size of its CPU thread pool; it sizes the pool from the CPUs the process may run on, so the
script restricts the process's CPU affinity to N CPUs while JAX creates its CPU client and
restores it right after (JAX's pool threads keep the N-CPU mask). With N = 1 it also sets
``--xla_cpu_multi_thread_eigen=false``. This only works if JAX was not imported before;
otherwise the output says JAX's threads are not limited. ``JAX_PLATFORMS`` is set to ``cpu``.

``run(workloads, threads, repeats, quick)`` returns the results as a dict. The scripts in
``benches/`` import what they share with this harness from here (``WORKLOADS``,
``make_inputs``, ``kldiv_fn``, ``floor_fn``, ``time_interleaved``, ``seconds_per_step``,
``SETTLE_MS``, ``spin``); what only they use lives in ``benches/``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# OpenBLAS's idle threads (NumPy's and SciPy's) yield-spin and take CPU from whatever runs
# next; no workload here calls BLAS, so one BLAS thread changes nothing but the noise. OpenBLAS
# reads it when it loads: the scripts in benches/ set it before importing NumPy; importing
# kldiv loads NumPy, so for ``kldiv bench`` it is set here too late for NumPy's OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

Array = npt.NDArray[Any]
Fn = Callable[[], Any]

PEERS = ("torch", "jax", "numpy")
FLOOR = "floor"
# kldiv on W1's arrays, timed in turns with the workloads whose target is a ratio to W1's time
# (W7, W8, W9): the ratio then compares times taken under the same conditions, where W1's own
# row was timed minutes earlier, and this VM's speed drifts in between.
IN_TURNS_W1 = "kldiv@W1"
IMPLS = ("kldiv", *PEERS, FLOOR)
FLOOR_WHAT = (
    "kldiv._kldiv.read_sum(x, t): the sum of both inputs' values, read once by kldiv's own "
    "kernel with the same threads and traversal; no kernel over them can be faster"
)
ENV_VARS = (
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "KMP_BLOCKTIME",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
)
ENV_VARS += ("KLDIV_NUM_THREADS", "RAYON_NUM_THREADS", "XLA_FLAGS", "JAX_PLATFORMS")
MIN_REPEATS = 7  # docs/benchmarks.md: at least 7 timed repeats
# After a parallel region PyTorch's OpenMP (libgomp) workers spin for several milliseconds
# (measured: ~7 ms on the 2-core dev box); whatever runs next would share the cores with them.
# So each implementation's timed block starts after this gap (untimed, busy-waited).
SETTLE_MS = 20.0


@dataclass(frozen=True)
class Workload:
    """One row of the table of docs/benchmarks.md."""

    id: str
    what: str
    rows: int
    cols: int
    dtype: type[np.floating[Any]] = np.float32
    reduction: str = "batchmean"
    log_target: bool = False
    transposed: bool = False  # x and t are .T views of (cols, rows) C-order arrays
    broadcast: bool = False  # t has shape (1, cols)
    grad: bool = False  # loss and gradient w.r.t. the input
    calls: int = 1  # calls per timed repeat (timer resolution / call overhead)
    versus_w1: bool = False  # target: within 1.5x of W1's time (timed in turns with W1)


WORKLOADS: dict[str, Workload] = {
    w.id: w
    for w in (
        Workload("W1", "batchmean, float32", 1000, 10_000),
        Workload("W2", "batchmean, float64", 1000, 10_000, dtype=np.float64),
        Workload("W3", "batchmean, float32, fits in cache", 1000, 1000, calls=10),
        Workload("W4", "batchmean, float32, call overhead", 1, 1000, calls=1000),
        Workload("W5", 'reduction "none", float32', 1000, 10_000, reduction="none"),
        Workload("W6", "loss + grad w.r.t. input, float32", 1000, 10_000, grad=True),
        Workload("W7", "log_target=True, float32", 1000, 10_000, log_target=True, versus_w1=True),
        Workload(
            "W8",
            "transposed (Fortran-order) views, float32",
            1000,
            10_000,
            transposed=True,
            versus_w1=True,
        ),
        Workload(
            "W9",
            "target broadcast from one row (1, cols)",
            1000,
            10_000,
            broadcast=True,
            versus_w1=True,
        ),
    )
}


# --------------------------------------------------------------------------- setup


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _import(name: str) -> Any | None:
    try:
        return importlib.import_module(name)
    except Exception:  # not installed, or broken: the peer is left out
        return None


def _setup_jax(threads: int, notes: list[str]) -> Any | None:
    """Imports JAX (CPU) with its intra-op pool limited to ``threads`` CPUs if it can be."""
    already = "jax" in sys.modules
    os.environ["JAX_PLATFORMS"] = "cpu"
    if threads == 1 and "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
        flags = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        os.environ["XLA_FLAGS"] = flags.strip()
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = not already and 0 < threads < len(allowed)
    try:
        if pin:
            os.sched_setaffinity(0, allowed[:threads])
        try:
            import jax

            jax.config.update("jax_enable_x64", True)  # W2 is float64
            jax.devices()  # creates the CPU client (and its thread pool) now
        finally:
            if pin:
                os.sched_setaffinity(0, allowed)
    except Exception as e:
        notes.append(f"jax: not available ({type(e).__name__}: {e})")
        return None
    if already:
        notes.append("jax: imported before the benchmark, its thread pool is NOT limited")
    elif pin:
        notes.append(
            f"jax: thread pool limited to {threads} CPU(s) by CPU affinity at client creation "
            f"(CPUs {allowed[:threads]})"
        )
    else:
        notes.append(f"jax: {len(allowed)} CPU(s) available, thread pool not restricted further")
    return jax


def _cpu_busy(seconds: float = 0.3) -> float | None:
    """Fraction of all CPUs busy (with other processes: this one sleeps) over ``seconds``."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(n) for n in f.readline().split()[1:]]
        return sum(v[:8]), v[3] + v[4]  # total, idle + iowait

    try:
        (t0, i0), _, (t1, i1) = sample(), time.sleep(seconds), sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def _machine(threads: int, mods: dict[str, Any]) -> dict[str, Any]:
    model, flags = "unknown", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value
    except OSError:
        pass
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": model,
        "cpu_flags": [f for f in ("avx2", "fma", "avx512f", "avx512bw") if f in flags.split()],
        "cores": os.cpu_count(),
        "cores_allowed": allowed,
        "python": platform.python_version(),
        "threads": threads,
    }
    for name, mod in mods.items():
        info[name] = getattr(mod, "__version__", None) if mod is not None else None
    info["kldiv_file"] = getattr(mods.get("kldiv"), "__file__", None)
    return info


# --------------------------------------------------------------------------- inputs


def _log_softmax(z: Array, axis: int) -> Array:
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def make_inputs(w: Workload, quick: bool, seed: int = 0) -> tuple[Array, Array]:
    """``x`` = log_softmax, ``t`` = softmax (log_softmax if ``log_target``) of standard
    normals, over the class axis, in ``w.dtype``; views as the workload says."""
    rng = np.random.default_rng(seed)
    rows, cols = w.rows, (max(1, w.cols // 100) if quick else w.cols)
    t_rows = 1 if w.broadcast else rows
    if w.transposed:  # (cols, rows) C-order arrays, normalised along axis 0, passed as .T
        x = _log_softmax(rng.standard_normal((cols, rows), dtype=w.dtype), 0).T
        lt = _log_softmax(rng.standard_normal((cols, t_rows), dtype=w.dtype), 0).T
    else:
        x = _log_softmax(rng.standard_normal((rows, cols), dtype=w.dtype), 1)
        lt = _log_softmax(rng.standard_normal((t_rows, cols), dtype=w.dtype), 1)
    t = lt if w.log_target else np.exp(lt)
    return x, t


# --------------------------------------------------------------------------- implementations


def kldiv_fn(kd: Any, w: Workload, x: Array, t: Array, notes: list[str]) -> Fn | None:
    if w.grad:
        if not hasattr(kd, "kl_div_and_grad"):
            notes.append(f"{w.id} kldiv: skipped, kldiv has no kl_div_and_grad")
            return None
        f = kd.kl_div_and_grad
        return lambda: f(x, t, reduction="batchmean")
    f, red, lt = kd.kl_div, w.reduction, w.log_target
    return lambda: f(x, t, reduction=red, log_target=lt)


def _torch_fn(torch: Any, w: Workload, x: Array, t: Array) -> Fn:
    kl_div = torch.nn.functional.kl_div
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)  # no copies, strides kept
    red, lt = w.reduction, w.log_target
    if w.grad:
        xr = xt.detach().requires_grad_(True)
        grad = torch.autograd.grad

        def fwd_bwd() -> Any:
            loss = kl_div(xr, tt, reduction=red, log_target=lt)
            (g,) = grad(loss, xr)  # no accumulation into xr.grad
            return loss.detach(), g

        return fwd_bwd
    return lambda: kl_div(xt, tt, reduction=red, log_target=lt)


def _jax_fn(jax: Any, w: Workload, x: Array, t: Array) -> Fn:
    jnp = jax.numpy
    xlogy = jax.scipy.special.xlogy
    rows, log_target, red = x.shape[0], w.log_target, w.reduction

    def loss(a: Any, b: Any) -> Any:
        terms = jnp.exp(b) * (b - a) if log_target else xlogy(b, b) - b * a
        return terms if red == "none" else jnp.sum(terms) / rows

    f = jax.jit(jax.value_and_grad(loss) if w.grad else loss)
    xd, td = jax.device_put(x), jax.device_put(t)  # once; a .T view lands C-order
    jax.block_until_ready((xd, td))
    block = jax.block_until_ready
    return lambda: block(f(xd, td))


def _numpy_fn(special: Any, w: Workload, x: Array, t: Array) -> Fn:
    xlogy, rows = special.xlogy, x.shape[0]

    def terms() -> Array:
        return np.exp(t) * (t - x) if w.log_target else xlogy(t, t) - t * x

    if w.reduction == "none":
        return terms
    return lambda: terms().sum() / rows


def floor_fn(x: Array, t: Array) -> Fn:
    """The read floor on ``x`` and ``t``: ``kldiv._kldiv.read_sum(x, t)``, the sum of both
    arrays' values by a read-only kernel with kldiv's threads and traversal (strides and
    broadcasting as the loss kernels take them). No kernel over the same arrays with the same
    threads can be faster. It writes nothing: for W5 and W6, whose kernels also write an array
    (the terms, the gradient), it is still the time to read both inputs."""
    from ._kldiv import read_sum

    return lambda: read_sum(x, t)


def _to_numpy(value: Any) -> list[Array]:
    items = value if isinstance(value, (tuple, list)) else (value,)
    out = []
    for v in items:
        if hasattr(v, "detach"):  # torch
            v = v.detach().numpy()
        out.append(np.asarray(v, dtype=np.float64))
    return out


def _agrees(got: Any, ref: Any, dtype: type[np.floating[Any]]) -> bool:
    rtol = 1e-3 if dtype == np.float32 else 1e-9
    a, b = _to_numpy(got), _to_numpy(ref)
    if len(a) != len(b):
        return False
    for u, v in zip(a, b):
        if u.shape != v.shape and u.size != v.size:
            return False
        scale = float(np.max(np.abs(v))) if v.size else 0.0
        if not np.allclose(u.reshape(v.shape), v, rtol=rtol, atol=rtol * 1e-2 * scale):
            return False
    return True


# --------------------------------------------------------------------------- timing


def spin(ms: float) -> None:
    """Waits ``ms`` busy, not asleep: the core stays out of idle states, its caches warm."""
    end = time.perf_counter_ns() + int(ms * 1e6)
    while time.perf_counter_ns() < end:
        pass


def seconds_per_step(fns: dict[str, Fn], repeats: int) -> dict[str, list[float]]:
    """Each implementation's seconds per step, ``repeats`` of them, by the protocol of
    docs/benchmarks.md: one call a timed step, the order rotating, ``SETTLE_MS`` before each."""
    timed = time_interleaved(fns, calls=1, repeats=repeats, settle_ms=SETTLE_MS)
    return {name: [ns / 1e9 for ns in t["samples_ns_per_call"]] for name, t in timed.items()}


def time_interleaved(
    fns: dict[str, Fn], calls: int, repeats: int, settle_ms: float
) -> dict[str, dict[str, Any]]:
    """Medians of ``repeats`` timed repeats; implementations interleaved in each repeat, each
    timed block after a ``settle_ms`` gap."""
    names = list(fns)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu = dict.fromkeys(names, 0)  # process CPU time, all threads, summed over the repeats
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for rep in range(repeats):
            k = rep % len(names)
            for name in names[k:] + names[:k]:  # rotate the order: no fixed position
                fn = fns[name]
                spin(settle_ms)
                c0, t0 = time.process_time_ns(), time.perf_counter_ns()
                for _ in range(calls):
                    fn()
                t1, c1 = time.perf_counter_ns(), time.process_time_ns()
                wall[name].append((t1 - t0) / calls)
                cpu[name] += c1 - c0
    finally:
        if was_enabled:
            gc.enable()
    return {
        n: {
            "ns_per_call": float(np.median(wall[n])),
            "cpu_util": cpu[n] / max(1.0, sum(wall[n]) * calls),
            "samples_ns_per_call": wall[n],
        }
        for n in names
    }


# --------------------------------------------------------------------------- driver


def check_args(
    workloads: Sequence[str] | None, impls: Sequence[str] | None, threads: int, repeats: int
) -> tuple[list[str], set[str]]:
    """The workload ids and the set of implementations to run; ValueError if one is unknown."""
    want = set(IMPLS) if not impls else {s.strip().lower() for s in impls}
    if want - set(IMPLS):
        raise ValueError(f"unknown impl(s) {sorted(want - set(IMPLS))}; choose from {IMPLS}")
    ids = list(WORKLOADS) if not workloads else [s.strip().upper() for s in workloads]
    unknown = [i for i in ids if i not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    if threads < 1 or repeats < 1:
        raise ValueError("threads and repeats must be at least 1")
    return ids, want


def run(
    workloads: Sequence[str] | None = None,
    threads: int = 2,
    repeats: int = 9,
    quick: bool = False,
    seed: int = 0,
    impls: Sequence[str] | None = None,
    settle_ms: float = SETTLE_MS,
) -> dict[str, Any]:
    """Runs the workloads (ids ``"W1"``..``"W9"``; all if None) with the implementations
    ``impls`` (a subset of ``IMPLS``; all that import if None) and returns a dict with
    ``machine``, ``config``, ``notes`` and ``results`` (one entry per workload and
    implementation: median ns per call and per element, ``time_over_kldiv`` (> 1: kldiv is
    that many times faster; for the floor, 1 / (kldiv's time over the floor)), CPU
    utilisation, raw samples). The floor is ``floor_fn`` (``kldiv._kldiv.read_sum``), with
    kldiv's threads, set to ``threads`` like every implementation's.
    ``settle_ms``: gap before each timed block (see ``SETTLE_MS``)."""
    ids, want = check_args(workloads, impls, threads, repeats)
    notes: list[str] = []
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    busy = _cpu_busy()
    if busy is not None and busy > 0.15:
        notes.append(
            f"other processes kept {busy:.0%} of the CPUs busy at the start: the machine is not "
            "quiet, timings (PyTorch's OpenMP threads especially) may be distorted"
        )
    if repeats < MIN_REPEATS:
        notes.append(f"only {repeats} repeats: docs/benchmarks.md asks for at least {MIN_REPEATS}")

    # JAX first: it must create its thread pool before the other libraries start threads
    jax = _setup_jax(threads, notes) if "jax" in want else None
    import kldiv

    torch, special = _import("torch"), _import("scipy.special")
    kldiv.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    elif "torch" in want:
        notes.append("torch: not available, PyTorch peer left out")
    if "numpy" in want and special is None:
        notes.append("numpy/scipy: scipy not available, NumPy/SciPy peer left out")
    elif "numpy" in want:
        notes.append("numpy/scipy: single-threaded (NumPy ufuncs do not use threads)")
    mods = {"numpy": np, "scipy": _import("scipy"), "torch": torch, "jax": jax, "kldiv": kldiv}

    results: list[dict[str, Any]] = []
    for i, wid in enumerate(ids):
        w = WORKLOADS[wid]
        _log(f"[{'#' * (i + 1)}{'.' * (len(ids) - i - 1)}] {i + 1}/{len(ids)}")
        calls = max(1, w.calls // 10) if quick else w.calls
        x, t = make_inputs(w, quick, seed)
        n = int(np.prod(np.broadcast_shapes(x.shape, t.shape)))
        _log(f"{wid}: {w.what}, x {x.shape} {x.dtype}, t {t.shape}, {calls} call(s)/repeat")

        fns: dict[str, Fn] = {}
        kfn = kldiv_fn(kldiv, w, x, t, notes) if "kldiv" in want else None
        if kfn is not None:
            fns["kldiv"] = kfn
        w1_elements = n
        if kfn is not None and w.versus_w1:
            x1, t1 = make_inputs(WORKLOADS["W1"], quick, seed)
            w1_elements = x1.size
            fns[IN_TURNS_W1] = kldiv_fn(kldiv, WORKLOADS["W1"], x1, t1, notes)
            del x1, t1  # kept alive by the function
        if torch is not None and "torch" in want:
            fns["torch"] = _torch_fn(torch, w, x, t)
        if jax is not None:
            fns["jax"] = _jax_fn(jax, w, x, t)
            if w.transposed:
                notes.append(f"{wid} jax: device_put makes C-order copies (timed: contiguous)")
        if special is not None and "numpy" in want:
            if w.grad:
                notes.append(f"{wid} numpy: left out (no autograd)")
            else:
                fns["numpy"] = _numpy_fn(special, w, x, t)
        if FLOOR in want:
            fns[FLOOR] = floor_fn(x, t)
        fns = {k: f for k, f in fns.items() if k in want or k == IN_TURNS_W1}

        # warm-up (JIT compiles here), then a check that all compute the same thing
        outs: dict[str, Any] = {}
        for name, fn in list(fns.items()):
            try:
                for _ in range(max(2, min(calls, 50))):
                    outs[name] = fn()
            except Exception as e:  # a broken build or peer: leave it out, keep going
                notes.append(f"{wid} {name}: failed, left out ({type(e).__name__}: {e})")
                del fns[name]
        ref_name = next((n for n in ("kldiv", "torch") if n in outs), None)
        for name, out in outs.items():
            if ref_name and name not in (ref_name, FLOOR, IN_TURNS_W1):
                if not _agrees(out, outs[ref_name], w.dtype):
                    notes.append(f"{wid} {name}: result DIFFERS from {ref_name}")
        del outs
        if not fns:
            continue

        timed = time_interleaved(fns, calls, repeats, settle_ms)
        k = timed["kldiv"]["ns_per_call"] if "kldiv" in timed else None
        for name, r in timed.items():
            elements = w1_elements if name == IN_TURNS_W1 else n
            results.append(
                {
                    "workload": wid,
                    "impl": name,
                    "elements": elements,
                    "ns_per_element": r["ns_per_call"] / elements,
                    "us_per_call": r["ns_per_call"] / 1e3,
                    "time_over_kldiv": r["ns_per_call"] / k if k else None,
                    **r,
                }
            )
        del fns, x, t
        gc.collect()

    return {
        "machine": _machine(threads, mods),
        "config": {
            "workloads": ids,
            "threads": threads,
            "repeats": repeats,
            "quick": quick,
            "seed": seed,
            "impls": [i for i in IMPLS if i in want],
            "floor": FLOOR_WHAT if FLOOR in want else None,
            "settle_ms": settle_ms,
            "cpu_busy_start": busy,
            "loadavg_start": load,
            "loadavg_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "env": {v: os.environ[v] for v in ENV_VARS if v in os.environ},
        },
        "notes": notes,
        "results": results,
    }


# --------------------------------------------------------------------------- output


def _median(res: dict[str, Any], wid: str, impl: str) -> float | None:
    for r in res["results"]:
        if r["workload"] == wid and r["impl"] == impl:
            return float(r["ns_per_call"])
    return None


def _floor_caveat(w: Workload) -> str:
    """What kldiv's kernel writes on ``w`` and the floor (a read of both inputs) does not."""
    if w.grad:
        return " (a read of x and t; kldiv also writes the gradient)"
    if w.reduction == "none":
        return " (a read of x and t; kldiv also writes the terms)"
    return ""


def format_table(res: dict[str, Any]) -> str:
    """The results as a text table, with ratios against kldiv; the floor is
    ``kldiv._kldiv.read_sum`` on the same arrays with the same threads (see ``floor_fn``)."""
    head = f"{'id':<4} {'impl':<8} {'ns/elem':>10} {'us/call':>11} {'cpu':>5}  vs kldiv"
    lines = [head, "-" * len(head)]
    for wid in res["config"]["workloads"]:
        k = _median(res, wid, "kldiv")
        for r in (r for r in res["results"] if r["workload"] == wid):
            ns = r["ns_per_call"]
            if r["impl"] == "kldiv" or k is None:
                cmp = ""
            elif r["impl"] == FLOOR:
                cmp = f"kldiv takes {k / ns:.2f}x the floor{_floor_caveat(WORKLOADS[wid])}"
            elif r["impl"] == IN_TURNS_W1:
                cmp = f"{wid} takes {k / ns:.2f}x W1's time, in turns"
            elif ns >= k:
                cmp = f"kldiv is {ns / k:.1f}x faster"
            else:
                cmp = f"kldiv is {k / ns:.1f}x SLOWER"
            lines.append(
                f"{wid:<4} {r['impl']:<8} {r['ns_per_element']:>10.3f} {r['us_per_call']:>11.1f}"
                f" {r['cpu_util']:>5.2f}  {cmp}"
            )
    return "\n".join(lines)


def write_json(res: dict[str, Any], path: Path) -> None:
    """Writes ``res`` as JSON to ``path`` (exactly there), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")


def plot_png(res: dict[str, Any], path: Path) -> str:
    """Bar chart of ns per element, log scale: one group per workload, one bar per impl,
    written to ``path`` (exactly there, its folder created); returns a line to print."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return f"matplotlib not importable: no chart written to {path}"
    wids = res["config"]["workloads"]
    impls = [i for i in ("kldiv", *PEERS, FLOOR) if any(r["impl"] == i for r in res["results"])]
    width = 0.8 / max(1, len(impls))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(wids) + 2), 4.5))
    for j, impl in enumerate(impls):
        xs, ys = [], []
        for i, wid in enumerate(wids):
            ns = _median(res, wid, impl)
            if ns is not None:
                n = next(r["elements"] for r in res["results"] if r["workload"] == wid)
                xs.append(i + (j - (len(impls) - 1) / 2) * width)
                ys.append(ns / n)
        ax.bar(xs, ys, width, label=impl)
    ax.set_yscale("log")
    ax.set_xticks(range(len(wids)), wids)
    ax.set_ylabel("ns per element (median, lower is better)")
    m = res["machine"]
    quick = ", quick sizes" if res["config"]["quick"] else ""
    ax.set_title(f"kl_div, {m['threads']} thread(s), {m['cpu_model']}{quick}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"chart: {path}"


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """The command line of ``kldiv bench`` and ``benches/bench.py``: prints the table; writes
    the JSON and the chart only where ``--json`` and ``--png`` say."""
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n\n")[0],
        epilog=f"The floor: {FLOOR_WHAT}. Protocol and targets: docs/benchmarks.md.",
    )
    p.add_argument("--workloads", default="", help="comma-separated ids, e.g. W1,W3 (all)")
    p.add_argument("--threads", type=int, default=2, help="threads for every impl (2)")
    p.add_argument("--repeats", type=int, default=9, help="timed repeats, median taken (9)")
    p.add_argument("--quick", action="store_true", help="sizes / 100, for a smoke run")
    p.add_argument("--impls", default="", help=f"comma-separated subset of {','.join(IMPLS)}")
    p.add_argument(
        "--settle-ms", type=float, default=SETTLE_MS, help="gap before each timed block (20)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (0)")
    p.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="write the results as JSON to PATH, creating its folder (default: no file)",
    )
    p.add_argument(
        "--png",
        type=Path,
        metavar="PATH",
        help="draw a bar chart to PATH, creating its folder; needs matplotlib (default: no file)",
    )
    a = p.parse_args(argv)
    wl = [s for s in a.workloads.split(",") if s.strip()] or None
    im = [s for s in a.impls.split(",") if s.strip()] or None
    try:
        check_args(wl, im, a.threads, a.repeats)
    except ValueError as e:
        p.error(str(e))
    res = run(wl, a.threads, a.repeats, a.quick, a.seed, im, a.settle_ms)

    m = res["machine"]
    versions = ", ".join(f"{k} {m[k]}" for k in ("numpy", "torch", "jax", "kldiv") if m[k])
    print(f"{m['cpu_model']} ({m['cores']} cores), {m['platform']}, Python {m['python']}")
    print(f"{versions}; {a.threads} thread(s), {a.repeats} repeats, medians")
    print(format_table(res))
    for note in res["notes"]:
        print(f"note: {note}")
    if FLOOR in res["config"]["impls"]:
        print(f"floor: {FLOOR_WHAT}")
    if a.json is not None:
        write_json(res, a.json)
        print(f"json: {a.json}")
    if a.png is not None:
        print(plot_png(res, a.png))
    return 0


if __name__ == "__main__":
    sys.exit(main())

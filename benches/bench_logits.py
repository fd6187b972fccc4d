"""Losses from logits, W10-W12 of BENCHMARKS (docs/benchmarks.md): kldiv against PyTorch's
composite, JAX's jit(value_and_grad) and TRL's generalized_jsd_loss, with the floor (reading
both logits once and writing the gradient once: ``torch.add(s, t, out=g)``), and the peak
memory each takes beyond its inputs and the gradient.

    PYTHONPATH=python python benches/bench_logits.py [--rows 2048] [--vocab 32000]
        [--threads 2] [--repeats 5] [--workloads W10,W11,W12] [--no-memory]

Logits as BENCHMARKS says: ``s`` = 3 x standard normals, ``t`` = ``s`` + standard normals,
float32 (W12: bfloat16), T = 2, mean (TRL: batchmean), loss + gradient with respect to ``s``.
Each implementation's step allocates its gradient and frees its own last one, as a training
step does (PyTorch, JAX and TRL allocate theirs too); "kldiv (out=)" writes into a gradient
allocated once, the floor's conditions. Implementations run in turns as docs/benchmarks.md says
(the order rotates, a 20 ms gap before each step), medians of ``--repeats`` with the spread
(min-max).
Peers not installed are left out, and said so. Memory: each implementation in a fresh process,
the peak resident memory (VmHWM, reset after the inputs exist) less the gradient's size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any, Callable

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


T = 2.0
BETA = 0.5


def inputs(rows: int, vocab: int, dtype: Any) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    s = torch.randn(rows, vocab, generator=g) * 3
    t = s + torch.randn(rows, vocab, generator=g)
    return s.to(dtype), t.to(dtype)


def implementations(
    workload: str, s: Any, t: Any, notes: list[str]
) -> dict[str, Callable[[], Any]]:
    """name -> a step (loss and gradient), for ``workload`` on the tensors ``s`` and ``t``."""
    import torch
    import torch.nn.functional as F

    import kldiv
    import kldiv.torch as kt

    fns: dict[str, Callable[[], Any]] = {}

    def backward(loss_fn: Callable[[Any, Any], Any]) -> Callable[[], Any]:
        # A student of its own: each step frees the gradient of its own last step, as in a
        # training loop (a shared one had each step free another's, up to 262 MB unmapped).
        student = s.detach().clone().requires_grad_()

        def step() -> Any:
            student.grad = None
            loss_fn(student, t).backward()
            return student.grad

        return step

    def pytorch(a: Any, b: Any) -> Any:
        return F.kl_div(
            F.log_softmax(a / T, -1),
            F.log_softmax(b / T, -1),
            log_target=True,
            reduction="mean",
        )

    if workload in ("W10", "W12"):
        fns["kldiv.torch"] = backward(lambda a, b: kt.kl_div_logits(a, b, temperature=T))
        if workload == "W10":
            sn, tn = s.numpy(), t.numpy()
            fns["kldiv (NumPy)"] = lambda: kldiv.kl_div_logits_and_grad(sn, tn, temperature=T)
        fns["PyTorch"] = backward(pytorch)
        if workload == "W10":
            jax_fn = _jax(s, t, notes)
            if jax_fn is not None:
                fns["JAX"] = jax_fn
    else:
        fns["kldiv.torch"] = backward(
            lambda a, b: kt.generalized_jsd_loss(a, b, beta=BETA, temperature=T)
        )
        trl = _trl(notes)
        if trl is not None:
            fns["TRL"] = backward(lambda a, b: trl(a, b, beta=BETA, temperature=T))
    grad = torch.zeros_like(s)  # mapped now, with the inputs
    if workload != "W11":
        fns["kldiv (out=)"] = _kldiv_out(s, t, grad)
    fns["floor"] = lambda: torch.add(s, t, out=grad)
    return fns


def _kldiv_out(s: Any, t: Any, grad: Any) -> Callable[[], Any]:
    """kldiv's kernel writing into a gradient allocated once (the floor's conditions)."""
    from kldiv import _logits
    from kldiv._torch_logits import _bits, _pair

    a, b = _pair(s, t)
    g = _bits(grad)

    def step() -> Any:
        return _logits.call(a, b, "forward", 0.0, T, None, -100, None, "mean", g)

    return step


def _jax(s: Any, t: Any, notes: list[str]) -> Callable[[], Any] | None:
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        notes.append("JAX is not installed: left out")
        return None

    def loss(a: Any, b: Any) -> Any:
        ls = jax.nn.log_softmax(a / T, -1)
        lt = jax.nn.log_softmax(b / T, -1)
        return jnp.mean(jnp.exp(lt) * (lt - ls))

    f = jax.jit(jax.value_and_grad(loss))
    a, b = jnp.asarray(s.numpy()), jnp.asarray(t.numpy())

    def step() -> Any:
        value, grad = f(a, b)
        return grad.block_until_ready()

    return step


def _trl(notes: list[str]) -> Callable[..., Any] | None:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        from trl.experimental.gkd.gkd_trainer import GKDTrainer
    except Exception as e:  # ImportError, or TRL's own import-time errors
        notes.append(f"TRL is not installed or does not import ({type(e).__name__}): left out")
        return None
    return GKDTrainer.generalized_jsd_loss  # type: ignore[no-any-return]


def timings(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds per step of each implementation: the protocol of docs/benchmarks.md (turns whose
    order rotates, each step after a 20 ms gap in which the last one's spinning worker threads,
    PyTorch's or XLA's, go idle)."""
    from kldiv._bench import seconds_per_step

    for fn in fns.values():
        fn()  # warm (JAX compiles, pages are mapped)
    return seconds_per_step(fns, repeats)


def _hwm_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def memory_child(workload: str, name: str, rows: int, vocab: int, threads: int) -> None:
    """In a fresh process: the peak memory of one step of ``name`` beyond the inputs, in MiB
    (printed as JSON), less the gradient it returns."""
    import torch

    import kldiv

    torch.set_num_threads(threads)
    kldiv.set_num_threads(threads)
    dtype = torch.bfloat16 if workload == "W12" else torch.float32
    s, t = inputs(rows, vocab, dtype)
    fns = implementations(workload, s, t, [])
    fn = fns[name]
    grad_bytes = s.numel() * s.element_size()
    if name in ("kldiv (out=)", "floor"):
        grad_bytes = 0  # allocated before the reset, with the inputs
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _rss_kib()
    fn()
    peak = _hwm_kib()
    extra = (peak - before) * 1024 - grad_bytes
    print(json.dumps({"extra_mib": extra / 2**20}))


def memory(workload: str, names: list[str], a: argparse.Namespace) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in names:
        r = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-child",
                workload,
                name,
                "--rows",
                str(a.rows),
                "--vocab",
                str(a.vocab),
                "--threads",
                str(a.threads),
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if r.returncode == 0:
            out[name] = json.loads(r.stdout.strip().splitlines()[-1])["extra_mib"]
        else:
            out[name] = float("nan")
            print(f"  memory of {name}: failed: {r.stderr.strip().splitlines()[-1:]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workloads", default="W10,W11,W12")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-child", nargs=2, metavar=("WORKLOAD", "NAME"))
    a = ap.parse_args()
    if a.memory_child:
        memory_child(*a.memory_child, a.rows, a.vocab, a.threads)
        return
    import torch

    import kldiv

    torch.set_num_threads(a.threads)
    kldiv.set_num_threads(a.threads)
    n = a.rows * a.vocab
    print(
        f"{a.rows} x {a.vocab}, {a.threads} threads, SIMD {kldiv.simd_level()}, "
        f"torch {torch.__version__}, medians of {a.repeats} (spread min-max), ns/element"
    )
    for workload in a.workloads.split(","):
        dtype = torch.bfloat16 if workload == "W12" else torch.float32
        s, t = inputs(a.rows, a.vocab, dtype)
        notes: list[str] = []
        fns = implementations(workload, s, t, notes)
        times = timings(fns, a.repeats)
        del fns
        med = {k: statistics.median(v) * 1e9 / n for k, v in times.items()}
        mem = {} if a.no_memory else memory(workload, list(times), a)
        print(f"{workload} ({'bfloat16' if workload == 'W12' else 'float32'}):")
        ours = med["kldiv.torch"]
        for name, v in times.items():
            lo, hi = min(v) * 1e9 / n, max(v) * 1e9 / n
            ratio = med[name] / ours
            extra = f"  extra memory {mem[name]:7.1f} MiB" if name in mem else ""
            print(
                f"  {name:14s} {med[name]:7.2f} ({lo:.2f}-{hi:.2f})  {ratio:6.2f}x kldiv.torch"
                f"{extra}"
            )
        for note in notes:
            print(f"  note: {note}")


if __name__ == "__main__":
    main()

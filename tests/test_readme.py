"""The README's examples (and docs/compare.md's), run as tests.

Each ```python block runs in a fresh namespace, in a temporary working directory (a block that
imports PyTorch or Dask is skipped, with the reason, where that is not installed). The ``kldiv``
command lines of the ```sh blocks run as ``python -m kldiv ...`` on the files they name, which
the test makes first, and their answers are compared with the Python API's. The one
```rust block is compiled and run by ``cargo test`` (a doctest of ``src/lib.rs``).
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import kldiv

README = Path(__file__).resolve().parent.parent / "README.md"
DOCS = [README, README.parent / "docs" / "compare.md"]  # whose examples run here
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "llamacpp"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
LANGUAGES = {"python", "sh", "text", "rust"}
OPTIONAL = {"torch": "PyTorch", "dask": "Dask"}  # what a block may need that may be missing


def fenced(doc: Path = README) -> list[tuple[str, int, str]]:
    """A document's fenced blocks: (language, line of the opening fence, body)."""
    text = doc.read_text(encoding="utf-8")
    return [(m[1], text.count("\n", 0, m.start()) + 1, m[2]) for m in FENCE.finditer(text)]


def blocks(language: str) -> list[pytest.param]:
    """The documents' blocks in ``language`` as test parameters (document, line, body)."""
    return [
        pytest.param(doc, line, body, id=f"{doc.name}:{line}")
        for doc in DOCS
        for lang, line, body in fenced(doc)
        if lang == language
    ]


def needs(code: str) -> set[str]:
    """The optional packages (``OPTIONAL``) that ``code`` imports, directly or through
    ``kldiv.torch`` / ``kldiv.dask``."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    found = set()
    for name in names:
        parts = name.split(".")
        top = parts[1] if parts[0] == "kldiv" and len(parts) > 1 else parts[0]
        if top in OPTIONAL:
            found.add(top)
    return found


def test_fences():
    blocks = fenced()
    assert blocks, "no fenced blocks found in the README"
    for lang, line, _ in blocks:
        assert lang in LANGUAGES, f"README.md:{line}: a ```{lang} block (use one of {LANGUAGES})"
    rust = [body for lang, _, body in blocks if lang == "rust"]
    assert len(rust) == 1, "the README keeps exactly one ```rust block (a doctest of src/lib.rs)"
    assert "fn main()" in rust[0], "the ```rust block is a complete program"
    assert [lang for lang, _, _ in blocks].count("python") >= 4
    assert cli_lines(), "no `kldiv loss` command lines in a ```sh block"


def test_links_resolve():
    """Every relative link of the README points into this repository."""
    text = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (README.parent / target).exists(), f"README links to a missing {target}"


@pytest.mark.parametrize(("doc", "line", "code"), blocks("python"))
def test_python_block(doc, line, code, tmp_path, monkeypatch, threads):
    for package in sorted(needs(code)):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{OPTIONAL[package]} is not installed (pip install .[{package}])")
    monkeypatch.chdir(tmp_path)
    # Padded so that a traceback names the document's own line numbers.
    exec(compile("\n" * line + code, str(doc), "exec"), {"__name__": "__readme__"})


def cli_lines() -> list[list[str]]:
    """The ``kldiv`` commands of the documents' ```sh blocks, as argument lists."""
    lines = []
    for doc in DOCS:
        for lang, _, body in fenced(doc):
            if lang == "sh":
                for line in body.splitlines():
                    args = shlex.split(line, comments=True)
                    if args and args[0] == "kldiv" and args not in lines:
                        lines.append(args)
    return lines


@pytest.fixture
def files(tmp_path):
    """The files the command-line block reads: a batch of log-probabilities, one of
    probabilities, and both in one .npz."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((300, 40)).astype(np.float32)
    x = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    t = rng.dirichlet(np.ones(40), size=300).astype(np.float32)
    np.save(tmp_path / "input.npy", x)
    np.save(tmp_path / "target.npy", t)
    np.savez(tmp_path / "pair.npz", input=x, target=t)
    np.save(tmp_path / "student.npy", z)  # logits
    np.save(tmp_path / "teacher.npy", z + rng.standard_normal(z.shape).astype(np.float32))
    np.save(tmp_path / "labels.npy", rng.integers(-100, 40, 300))
    for name in ("base_logits.npy", "other_logits.npy", "tokens.npy", "base.kld"):
        shutil.copy(FIXTURES / name, tmp_path / name)  # llama.cpp's case, for kldiv compare
    return tmp_path, x, t


def expected(args: list[str], d: Path, x: np.ndarray, t: np.ndarray) -> object:
    """What ``kldiv`` should answer for these command-line arguments (``kldiv compare``: its
    text; ``kldiv kld-base``: the file's bytes)."""
    value = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}
    if args[1] == "compare":
        tokens = d / value["--tokens"] if "--tokens" in value else None
        ctx = int(value["--ctx"]) if "--ctx" in value else None
        return kldiv.compare(d / args[2], d / args[3], tokens, n_ctx=ctx).to_text()
    if args[1] == "kld-base":
        return (FIXTURES / "base.kld").read_bytes()
    reduction = value.get("--reduction")
    if "--from-logits" in args:
        at = args.index("--from-logits")
        student, teacher = np.load(d / args[at + 1]), np.load(d / args[at + 2])
        labels = np.load(d / value["--labels"]) if "--labels" in value else None
        return kldiv.kl_div_logits(
            student,
            teacher,
            temperature=float(value.get("--temperature", 1.0)),
            labels=labels,
            reduction=reduction or "mean",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "mean" warns; the numbers are what is compared
        return kldiv.kl_div(x, t, reduction or "batchmean", "--log-target" in args)


@pytest.mark.parametrize("args", cli_lines(), ids=shlex.join)
def test_cli_line(args, files):
    d, x, t = files
    out = args[args.index("--out") + 1] if "--out" in args else None
    for name in args:
        if name.endswith((".npy", ".npz")) and name != out:
            assert (d / name).exists(), f"the README's command reads {name}; make it in files()"
    r = subprocess.run(
        [sys.executable, "-m", "kldiv", *args[1:]],
        cwd=d,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    want = expected(args, d, x, t)
    if args[1] == "compare":
        assert r.stdout == want
        for flag in ("--json", "--plot"):
            if flag in args:
                assert (d / args[args.index(flag) + 1]).stat().st_size > 0
    elif args[1] == "kld-base":
        assert (d / args[args.index("-o") + 1]).read_bytes() == want
    elif out is not None:
        np.testing.assert_allclose(np.load(d / out), want, rtol=1e-6)
    else:
        assert float(r.stdout) == pytest.approx(float(want), rel=1e-6)

# The habits: `make demo`, `make test`, `make lint`, `make bench`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export CARGO_BUILD_JOBS ?= 2

.PHONY: demo build-dev test test-rust test-python test-torch test-exhaustive test-long miri lint format bench bench-rust fixtures wheel clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

## Build the wheel's contents, install kldiv into .venv, run the demo.
demo: $(BIN)/python
	$(BIN)/python -m pip install -q .
	$(BIN)/python examples/demo.py

## Editable install (maturin develop, release build) with the test tools.
build-dev: $(BIN)/python
	$(BIN)/python -m pip install -q "maturin>=1.9.3,<2" numpy pytest hypothesis "ruff==0.17.*" matplotlib \
		"dask[array,distributed]"
	$(BIN)/maturin develop --release -q

## Every test: the crate alone (cargo test), then the Python package (pytest, which lists the
## tests it skips and why: PyTorch's without PyTorch, say); then says what else there is.
test: build-dev test-rust test-python
	@echo "make test: done. Not run by it: make test-torch (installs PyTorch: kldiv.torch and"
	@echo "  PyTorch's own kl_div suites), make test-exhaustive (ln/exp on all 2^32 float32"
	@echo "  inputs), make miri (Miri over the unsafe code), make test-long (long fuzzing)."

test-rust:
	cargo test -j2
	cargo test -j2 --release --test simd_levels --test soundness

## kldiv.torch against PyTorch, PyTorch's own kl_div test suites (OpInfo, ModuleInfo,
## common_nn) run with kldiv.torch in its place, and the distillation drop-ins against TRL and
## torchtune themselves: installs them and expecttest from PyPI into .venv (a large download,
## kept in pip's cache); if an install fails (no network, no disk), says so loudly and skips
## only what needs it.
test-torch: build-dev
	@if $(BIN)/python -m pip install -q torch expecttest; then \
		if ! $(BIN)/python -m pip install -q trl torchtune; then \
			echo "!!! test-torch: TRL/torchtune could not be installed: drop-ins NOT tested !!!" >&2; \
		fi; \
		$(BIN)/python -m pytest -q -rs tests/test_torch.py tests/test_torch_suites.py \
			tests/test_torch_logits.py; \
	else \
		echo "!!! test-torch: PyTorch could not be installed: kldiv.torch was NOT tested !!!" >&2; \
	fi

## Miri (Tree Borrows) over the crate's unit tests and tests/small_layouts.rs: the pool, the
## walks, the tiles, the reductions and the rows from logits, at the scalar level, with small blocks (see
## parallel.rs) so that small arrays reach several threads. Needs rustup's nightly toolchain;
## adds its miri component. Leaks are not reported (the pool's threads outlive the tests), and
## integer-to-pointer casts are allowed (rayon's crossbeam-epoch makes them).
miri:
	rustup component add --toolchain nightly miri rust-src
	MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-ignore-leaks -Zmiri-permissive-provenance" \
		cargo +nightly miri test -j2 --lib --test small_layouts

## ln and exp over all 2^32 float32 inputs, at each SIMD level the CPU has, the softmax's
## exp over all its inputs, and the comparison's glibc expf against the C library's (release
## mode).
test-exhaustive:
	cargo test -j2 --release --lib -- --ignored expf_is_glibcs exp_f32_unit_on_every
	KLDIV_SIMD=avx2 cargo test -j2 --release --test exhaustive -- --ignored
	KLDIV_SIMD=avx512 cargo test -j2 --release --test exhaustive -- --ignored

test-python:
	$(BIN)/python -m pytest -q -rs tests

lint: build-dev
	cargo fmt --check
	cargo clippy -j2 --all-targets -- -D warnings
	cargo clippy -j2 --all-targets --features python -- -D warnings
	$(BIN)/ruff check python tests scripts benches examples
	$(BIN)/ruff format --check python tests scripts benches examples

format:
	cargo fmt
	$(BIN)/ruff format python tests scripts benches examples

## Long runs before a release: hypothesis at 100x its examples, 200,000 proptest cases, atheris.
test-long: build-dev
	HYPOTHESIS_PROFILE=long $(BIN)/python -m pytest -q tests/test_properties.py
	PROPTEST_CASES=200000 cargo test -j2 --release --test proptest_api
	$(BIN)/python -m pip install -q atheris
	$(BIN)/python tests/fuzz_atheris.py -atheris_runs=300000

## The Python benchmark table (peers that are installed in .venv), its JSON and chart in
## bench-results/; and the criterion benches.
bench: build-dev
	$(BIN)/python benches/bench.py --json bench-results/bench.json --png bench-results/bench.png

bench-rust:
	cargo bench -j2 --bench kernels

## The wheel to distribute: abi3, manylinux2014 (glibc 2.17 and later), built with zig (the
## ziglang package from PyPI) into dist/, then installed into a fresh venv and imported there.
wheel: $(BIN)/python
	$(BIN)/python -m pip install -q "maturin>=1.9.3,<2" ziglang
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/maturin build -q --release --zig \
		--compatibility manylinux2014 -o dist
	rm -rf dist/venv-check && $(PYTHON) -m venv dist/venv-check
	dist/venv-check/bin/python -m pip install -q dist/kldiv-*manylinux2014*.whl
	cd dist && venv-check/bin/python -c "import numpy as np, kldiv; \
		x = np.log(np.full((2, 4), 0.25)); \
		assert kldiv.kl_div(x, np.exp(x), 'batchmean') == 0; \
		print('the manylinux2014 wheel installs and runs:', kldiv.__version__)"

## Regenerate tests/fixtures/ (needs PyTorch: TORCH_PYTHON=/path/to/venv/bin/python).
fixtures:
	$(or $(TORCH_PYTHON),$(BIN)/python) scripts/make_fixtures.py

clean:
	rm -rf $(VENV) target dist

# One place for the incantations; README and .ci/run call these targets.
PY ?= python
export SATISFICE_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install build test test-rust test-py lint bench demo

install:            ## the package with its dev/test dependencies, built from source
	$(PY) -m pip install -q -e ".[dev]"

build:              ## rebuild the Rust extension after editing rust/
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

test: install test-rust test-py

test-rust:
	cargo test --release --quiet

test-py:
	$(PY) -m pytest

lint:
	cargo clippy --release --all-targets -- -D warnings
	cargo clippy --release --features python -- -D warnings
	$(PY) -m ruff check python tests benches scripts
	$(PY) -m ruff format --check python tests benches scripts
	$(PY) -m mypy
	$(PY) -m mypy.stubtest satisfice._core

bench:              ## benchmarks side by side with the alternatives (not part of `test`)
	$(PY) -m pytest benches --benchmark-enable --benchmark-only --benchmark-json=.benchmarks/bench.json --benchmark-save-data
	$(PY) benches/report.py .benchmarks/bench.json
	$(PY) benches/bench_overhead.py

demo:
	satisfice demo

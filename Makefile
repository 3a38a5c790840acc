# One place for the incantations; README and .ci/run call these targets.
PY ?= python
export SATISFICE_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install build test test-rust test-py lint bench demo

# Stamps: the dependencies are installed once (the only step that needs the network), the
# extension is rebuilt only when rust/ or the build files change, never on every `make test`.
DEPS := .make/deps
EXT := .make/ext

$(DEPS): pyproject.toml
	$(PY) -m pip install -q -e ".[dev]"
	@mkdir -p .make && touch $@ $(EXT)

$(EXT): $(DEPS) Cargo.toml Cargo.lock $(wildcard rust/*.rs)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	@touch $@

install: $(EXT)     ## the package with its dev/test dependencies, built from source

build:              ## rebuild the Rust extension now (no network)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	@mkdir -p .make && touch $(EXT)

test: install test-rust test-py

test-rust:
	cargo test --release --quiet

test-py:
	$(PY) -m pytest

lint:
	cargo fmt --check
	cargo clippy --release --all-targets -- -D warnings
	cargo clippy --release --features python -- -D warnings
	$(PY) -m ruff check python tests benches scripts
	$(PY) -m ruff format --check python tests benches scripts
	$(PY) -m mypy
	$(PY) -m mypy.stubtest satisfice._core

bench:              ## benchmarks side by side with the alternatives (not part of `test`)
	$(PY) -m pytest benches/bench_*.py --benchmark-enable --benchmark-only --benchmark-json=.benchmarks/bench.json --benchmark-save-data
	$(PY) benches/report.py .benchmarks/bench.json
	cd benches && $(PY) bench_stream.py --n 1000
	$(PY) benches/bench_overhead.py
	cd benches && $(PY) bench_scale.py

demo:
	satisfice demo

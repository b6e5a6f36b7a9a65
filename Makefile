# MoEKit: `make demo` and `make test` work on a fresh Debian machine (they install what is missing).
SHELL := /bin/bash
SWIFT ?= swift
PYTHON ?= python3
VENV := .venv
VENV_PY := $(VENV)/bin/python
# Tests are built optimised (numeric code in debug builds is very slow) but with @testable access.
RELEASE_FLAGS := -c release -Xswiftc -enable-testing
MOEKIT := .build/release/moekit
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_DIR := demo-out

.PHONY: all deps venv build test swift-test interop-test fuzz fuzz-test demo demo-model trace-demo example-log clean bench-baseline bench-check bench-build

all: build

# System libraries: OpenBLAS and HDF5 (and pkg-config, which SwiftPM uses to find them).
deps:
	@if ! command -v pkg-config >/dev/null || ! pkg-config --exists openblas hdf5; then \
		echo "Installing libopenblas-dev libhdf5-dev pkg-config"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libopenblas-dev libhdf5-dev pkg-config; \
	fi

# Python clients that prove interoperability: safetensors, numpy, h5py, pytest, Jupyter's nbconvert,
# moekit_routing (python/); then PyTorch, transformers and accelerate without dependency resolution
# (requirements-torch.txt explains why: the CUDA wheel's libraries, without triton and the rest).
$(VENV)/.installed: Tests/Interop/requirements.txt Tests/Interop/requirements-torch.txt python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install -q --upgrade pip
	$(VENV_PY) -m pip install -q -r Tests/Interop/requirements.txt
	$(VENV_PY) -m pip install -q --no-deps -r Tests/Interop/requirements-torch.txt
	touch $@

venv: $(VENV)/.installed

build: deps
	$(SWIFT) build $(RELEASE_FLAGS) --product moekit

test: deps venv
	$(SWIFT) build $(RELEASE_FLAGS) --build-tests
	$(MAKE) swift-test interop-test fuzz-test

swift-test:
	$(SWIFT) test $(RELEASE_FLAGS) --skip-build

interop-test:
	MOEKIT=$(abspath $(MOEKIT)) $(VENV_PY) -m pytest -q Tests/Interop

# Coverage-guided fuzzing (libFuzzer, address sanitizer) of every parser of outside input; see
# Fuzz/fuzz.sh. `make fuzz` runs each target FUZZ_SECONDS; `make test` runs a short pass of
# FUZZ_TEST_SECONDS per target. Both fail on a crash, a sanitizer report, an input running longer
# than FUZZ_TIMEOUT seconds or memory beyond FUZZ_RSS_MB.
FUZZ_SECONDS ?= 300
FUZZ_TEST_SECONDS ?= 10

fuzz: build
	Fuzz/fuzz.sh run $(FUZZ_SECONDS)

fuzz-test: build
	Fuzz/fuzz.sh run $(FUZZ_TEST_SECONDS)

# The main job on the embedded default: `moekit demo` upcycles Notebooks-data/demo-dense (a tiny
# dense MiniCPM trained by MoEKit) to 8 experts top-2, trains it further with the load-balancing loss
# on a fresh synthetic multi-domain corpus while logging, trains the dense model the same steps as a
# baseline, and prints loss, expert load with domain specialisation, throughput and the files.
demo: build
	$(MOEKIT) demo --out $(DEMO_DIR) --force

# Regenerates the shipped demo model (Notebooks-data/demo-dense and its training log); ~5 min.
demo-model: build
	@mkdir -p build
	$(MOEKIT) init build/demo-init --preset tiny --seed 0 --force
	$(MOEKIT) corpus build/demo-corpus.bin --tokens 2000000 --seed 1 --force
	$(MOEKIT) train build/demo-init --data build/demo-corpus.bin --steps 600 --batch 8 --seq 128 --lr 0.01 \
		--validation-fraction 0.02 --eval-every 100 --out Notebooks-data/demo-dense --log Notebooks-data/demo-dense-train.h5 --force
	rm -rf Notebooks-data/demo-dense/training_state

# The routing pipeline of earlier versions: trace the upcycled demo model over demo-tokens.txt and
# inspect it (terminal heatmap + SVG).
trace-demo: build
	@rm -rf $(DEMO_DIR)/trace && mkdir -p $(DEMO_DIR)/trace
	$(MOEKIT) init $(DEMO_DIR)/trace/dense --preset tiny --seed 0
	$(MOEKIT) upcycle $(DEMO_DIR)/trace/dense $(DEMO_DIR)/moe --experts 8 --top-k 2 --seed 0 --force
	$(MOEKIT) trace $(DEMO_DIR)/moe --tokens-file Notebooks-data/demo-tokens.txt --log $(DEMO_DIR)/routing.h5 --per-token --batch-tokens 256 --force
	$(MOEKIT) inspect $(DEMO_DIR)/routing.h5 --svg $(DEMO_DIR)/heatmap.svg

# Regenerates the committed example log from the demo's pipeline.
example-log: trace-demo
	$(MOEKIT) trace $(DEMO_DIR)/moe --tokens-file Notebooks-data/demo-tokens.txt --log Notebooks-data/example-routing.h5 --per-token --batch-tokens 256 --force --quiet

# package-benchmark suites (Benchmarks/, its own package): save a baseline, then check a later run
# against it (fails on a regression beyond the thresholds in the suite). BENCH_BASELINE names it;
# BENCH_ARGS passes more options, e.g. BENCH_ARGS="--filter 'layer moe.*'".
BENCH_BASELINE ?= local

bench-baseline: deps
	cd Benchmarks && $(SWIFT) package --allow-writing-to-package-directory benchmark baseline update $(BENCH_BASELINE) --no-progress $(BENCH_ARGS)

# NOTE: `swift package` exits 1 both on a regression and when some case is only faster than the
# baseline beyond the thresholds (the plugin's benchmarkThresholdImprovement); the second is no
# regression, so it passes here with a note to take a new baseline. A regression anywhere still fails.
bench-check: deps
	@echo "cd Benchmarks && $(SWIFT) package benchmark baseline check $(BENCH_BASELINE) --no-progress $(BENCH_ARGS)"; \
	log=$$(mktemp) && trap 'rm -f "$$log"' EXIT; \
	(cd Benchmarks && $(SWIFT) package benchmark baseline check $(BENCH_BASELINE) --no-progress $(BENCH_ARGS)) 2>&1 | tee "$$log"; \
	status=$${PIPESTATUS[0]}; \
	if [ "$$status" != 0 ] && grep -q 'error: benchmarkThresholdImprovement' "$$log"; then \
		echo "bench-check: no regression; faster than baseline '$(BENCH_BASELINE)' beyond the thresholds (make bench-baseline to keep it tight)"; \
		status=0; \
	fi; \
	exit $$status

# Compiles the suites without running them, so a change to MoEKit's public API that breaks them is
# caught (the suites import MoEKit without @testable, so they see only its public API). Not part of
# `make test`: from a fresh clone it compiles MoEKit again plus package-benchmark and its
# dependencies, about 4 minutes on 2 cores; run it after changing what Benchmarking/ makes public.
bench-build: deps
	cd Benchmarks && $(SWIFT) build -c release

clean:
	rm -rf .build $(VENV) $(DEMO_DIR) build

#!/usr/bin/env bash
# MoEKit against PyTorch and llama.cpp in one run (see README.md and peers.py).
#   Benchmarks/peers/run.sh [--rounds N] [--repeats N] [--json out.json] ...
# The first run makes Benchmarks/peers/.venv (never touched by `make test`): PyTorch, and llama.cpp
# built from the llama-cpp-python sdist (~10-30 min on 2 cores), then MoEKit's release build if it
# is missing.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${PEERS_VENV:-$HERE/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_CPU_VERSION=2.13.0+cpu
TORCH_VERSION=2.15.0
LLAMA_CPP_PYTHON_VERSION=0.3.36

if [ ! -f "$VENV/.installed" ]; then
    echo "peers: making $VENV" >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q numpy gguf
    # PyPI's Linux torch wheel is a CUDA build: even its libtorch_cpu.so needs libcudart and
    # libcupti, so `--no-deps` does not import. A CPU build is used where pip finds one (machines of
    # this project's kind ship torch 2.13.0+cpu in pip's find-links); else PyPI's wheel with the
    # CUDA packages it names (gigabytes, unused on a CPU).
    if ! "$VENV/bin/pip" install -q "torch==$TORCH_CPU_VERSION" 2>/dev/null; then
        echo "peers: no torch $TORCH_CPU_VERSION wheel here; installing PyPI's torch $TORCH_VERSION with its CUDA packages" >&2
        "$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
    fi
    "$VENV/bin/python" -c "import torch; torch.ones(2) @ torch.ones(2)"
    # llama.cpp from source (the sdist vendors it), native ISA, no multimodal or server parts.
    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "$VENV/bin/pip" install -q --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
    "$VENV/bin/python" -c "import llama_cpp; print('llama.cpp:', llama_cpp.llama_print_system_info().decode())" >&2
    touch "$VENV/.installed"
fi

MOEKIT="${MOEKIT:-$ROOT/.build/release/moekit}"
if [ ! -x "$MOEKIT" ]; then
    (cd "$ROOT" && make build)
fi
exec "$VENV/bin/python" "$HERE/peers.py" --moekit "$MOEKIT" "$@"

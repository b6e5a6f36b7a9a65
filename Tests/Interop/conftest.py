"""Shared fixtures for the interop tests: the moekit binary (MOEKIT) and helpers to run it.

The tests never skip: without MOEKIT the run stops with an error saying how to set it.
"""
import json
import os
import subprocess

import pytest

BLAS_RESTART_PREFIX = "moekit: OpenBLAS chose its generic "


def _moekit_path():
    path = os.environ.get("MOEKIT")
    if not path:
        raise pytest.UsageError(
            "MOEKIT is not set: build the CLI (`swift build --product moekit`) and run "
            "`MOEKIT=$PWD/.build/debug/moekit .venv/bin/python -m pytest -q Tests/Interop` (or `make test`)")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise pytest.UsageError(f"MOEKIT={path} is not an executable file; build it with `swift build --product moekit`")
    return path


def pytest_configure(config):
    _moekit_path()


@pytest.fixture(scope="session")
def moekit():
    return _moekit_path()


@pytest.fixture(scope="session")
def run_moekit(moekit):
    """Runs `moekit ARGS…`, returns the CompletedProcess (text mode, never raises on exit status)."""
    def run(*args, check=True):
        result = subprocess.run([moekit, *map(str, args)], capture_output=True, text=True, timeout=300)
        # On a machine where OpenBLAS picks generic kernels, moekit restarts itself with better ones
        # and says so first (test_blas_kernels.py tests that line); the other tests read what follows.
        result.stderr = "".join(line for line in result.stderr.splitlines(keepends=True)
                                if not line.startswith(BLAS_RESTART_PREFIX))
        if check and result.returncode != 0:
            raise AssertionError(f"moekit {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}")
        return result
    return run


@pytest.fixture(scope="session")
def show_json(run_moekit):
    """`moekit show PATH --json --values` parsed: {tensor name: entry}, plus the whole document."""
    def show(path):
        document = json.loads(run_moekit("show", path, "--json", "--values").stdout)
        return {entry["name"]: entry for entry in document["tensors"]}, document
    return show


@pytest.fixture(scope="session")
def fixtures_dir():
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Fixtures")

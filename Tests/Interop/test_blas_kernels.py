"""moekit's OpenBLAS kernel check at start-up (docs/blas-kernels.md), end to end.

OPENBLAS_CORETYPE is never set here: the restart is driven through MOEKIT_TEST_PRETEND_BLAS_CORE,
which makes the first start judge a pretended generic core; the restarted process then reports the
core OpenBLAS really loaded with the OPENBLAS_CORETYPE moekit chose.
"""
import json
import os
import subprocess

from conftest import BLAS_RESTART_PREFIX

# The variable is only named here, never set for any process (the restart is driven by MOEKIT_TEST_PRETEND_BLAS_CORE).
CORE_VARIABLE = "OPENBLAS_CORETYPE"


def cpu_flags():
    vendor, flags = "", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "vendor_id" and not vendor:
                vendor = value.strip()
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
    return vendor, flags


def expected_core():
    """The table of docs/blas-kernels.md, from this machine's /proc/cpuinfo."""
    vendor, flags = cpu_flags()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"} <= flags:
        return "Cooperlake" if "avx512_bf16" in flags else "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Zen" if vendor in ("AuthenticAMD", "HygonGenuine") else "Haswell"
    return None


def run(moekit, *args, **extra_env):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "MOEKIT_KEEP_BLAS_CORE", "MOEKIT_BLAS_REEXECUTED", "MOEKIT_TEST_PRETEND_BLAS_CORE")}
    env.update(extra_env)
    return subprocess.run([moekit, *map(str, args)], capture_output=True, text=True, timeout=120, env=env)


def version_core(stdout):
    """The core named on --version's OpenBLAS line: "OpenBLAS 0.3.21, core Cooperlake [...]"."""
    line = next(l for l in stdout.splitlines() if l.startswith("OpenBLAS "))
    return line.split(", core ", 1)[1].split(" ", 1)[0]


def test_version_names_openblas_version_and_core(moekit):
    result = run(moekit, "--version")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "0.1.0"
    assert lines[1].startswith("OpenBLAS 0.") and ", core " in lines[1] and "DYNAMIC_ARCH" in lines[1], lines


def test_generic_core_restarts_once_with_the_better_one(moekit):
    better = expected_core()
    result = run(moekit, "--version", MOEKIT_TEST_PRETEND_BLAS_CORE="Prescott")
    assert result.returncode == 0, result.stderr
    if better is None:  # an old CPU: nothing better to restart with
        assert result.stderr == ""
        return
    stderr = result.stderr.splitlines()
    assert len(stderr) == 1, result.stderr
    assert stderr[0].startswith(BLAS_RESTART_PREFIX + "Prescott kernels; restarting with " + CORE_VARIABLE + "=" + better)
    # The restarted process runs the core moekit asked for, set in its environment by moekit (and
    # printed nothing more: no second restart).
    assert version_core(result.stdout) == better
    assert f"({CORE_VARIABLE}={better} set by moekit)" in result.stdout


def test_quiet_restarts_silently(moekit, tmp_path):
    result = run(moekit, "init", tmp_path / "model", "--preset", "tiny", "--layers", "1", "--quiet",
                 MOEKIT_TEST_PRETEND_BLAS_CORE="Core2")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert (tmp_path / "model" / "config.json").exists()


def test_opt_out_keeps_the_chosen_core(moekit):
    default = version_core(run(moekit, "--version").stdout)
    result = run(moekit, "--version", MOEKIT_TEST_PRETEND_BLAS_CORE="Prescott", MOEKIT_KEEP_BLAS_CORE="1")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert version_core(result.stdout) == default


def test_bench_reports_ceilings_core_and_repeats(moekit, tmp_path):
    path = tmp_path / "bench.json"
    result = run(moekit, "bench", "--level", "training", "--preset", "tiny", "--layers", "1", "--batch", "1", "--seq", "16",
                 "--repeats", "2", "--json", path)
    assert result.returncode == 0, result.stderr
    document = json.loads(path.read_text())
    assert document["repeats"] == 2
    ceilings = document["ceilings"]
    assert ceilings["sgemm_n"] == 2048 and ceilings["sgemm_gflops"] > 0
    assert ceilings["openblas_core"] == document["machine"]["openblas_core"] == version_core(run(moekit, "--version").stdout)
    assert isinstance(ceilings["generic_core"], bool) and isinstance(ceilings["flags"], list)
    if ceilings["peak_gflops"] is not None:
        assert ceilings["peak_gflops"] > 0
        for r in document["results"]:
            if r["gflops"] is not None:
                assert abs(r["share_of_peak"] - r["gflops"]["median"] / ceilings["peak_gflops"]) < 1e-9
                assert abs(r["share_of_sgemm"] - r["gflops"]["median"] / ceilings["sgemm_gflops"]) < 1e-9
    assert "ceilings: FMA peak" in result.stdout and f"core {ceilings['openblas_core']}" in result.stdout

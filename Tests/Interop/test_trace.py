"""`moekit trace` writes live SWMR routing logs that outside readers can trust.

A tiny dense checkpoint is upcycled to 8 experts (top-2) and traced over synthetic token data.
- kill -9 mid-run: the file still opens with h5py (swmr=True) and every completed step satisfies
  Σ expert_counts = tokens·k − dropped;
- a concurrent h5py reader polling while trace runs sees the step count grow, never shrink, and
  only consistent rows;
- --append continues the step axis, --force replaces, an existing log is refused otherwise.
"""
import os
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest

STEP_DATASETS = ["routing/expert_counts", "routing/prob_mean", "routing/aux_loss", "routing/z_loss",
                 "routing/entropy", "routing/dropped", "routing/coactivation",
                 "steps/step", "steps/tokens", "steps/loss", "steps/lr"]


@pytest.fixture(scope="module")
def moe(tmp_path_factory, run_moekit):
    root = tmp_path_factory.mktemp("trace")
    run_moekit("init", root / "dense", "--preset", "tiny", "--quiet")
    run_moekit("upcycle", root / "dense", root / "moe", "--experts", 8, "--top-k", 2, "--quiet")
    rng = np.random.default_rng(0)
    tokens = root / "tokens.txt"
    tokens.write_text("\n".join(" ".join(map(str, rng.integers(0, 1024, 200))) for _ in range(300)) + "\n")
    return root / "moe", tokens


def complete_rows(f):
    """Rows present in every step dataset (a killed writer may have extended some but not all)."""
    for name in STEP_DATASETS:
        f[name].refresh()
    return min(f[name].shape[0] for name in STEP_DATASETS)


def check_rows(f, rows):
    k = int(f.attrs["top_k"])
    steps = f["steps/step"][:rows]
    assert list(steps) == list(range(rows)), "steps are 0, 1, 2, … with no gap"
    counts = f["routing/expert_counts"][:rows]
    dropped = f["routing/dropped"][:rows]
    tokens = f["steps/tokens"][:rows]
    assert np.array_equal(counts.sum(axis=2), tokens[:, None] * k - dropped), "invariant Σ counts = tokens·k − dropped"


def start_trace(moekit, moe, log, *extra):
    model, tokens = moe
    return subprocess.Popen([moekit, "trace", str(model), "--tokens-file", str(tokens), "--log", str(log),
                             "--batch-tokens", "64", "--threads", "1", "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_steps(log, minimum, process, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, f"trace ended before {minimum} steps: {process.stderr.read()}"
        if log.exists():
            try:
                with h5py.File(log, "r", libver="latest", swmr=True) as f:
                    if complete_rows(f) >= minimum:
                        return
            except OSError:
                pass  # the file is being published: try again
        time.sleep(0.05)
    raise AssertionError(f"no {minimum} steps within {timeout}s")


def test_kill_9_keeps_every_completed_step(moekit, moe, tmp_path):
    log = tmp_path / "killed.h5"
    process = start_trace(moekit, moe, log)
    try:
        wait_for_steps(log, 3, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    with h5py.File(log, "r", libver="latest", swmr=True) as f:
        rows = complete_rows(f)
        assert rows >= 3
        check_rows(f, rows)
    # MoEKit's own reader opens the killed log too.
    result = subprocess.run([moekit, "inspect", str(log), "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_concurrent_reader_sees_consistent_growing_data(moekit, moe, tmp_path):
    log = tmp_path / "live.h5"
    process = start_trace(moekit, moe, log)
    seen = []
    try:
        wait_for_steps(log, 1, process)
        # MoEKit's own reader works on the live file too (SWMR read).
        live = subprocess.run([moekit, "inspect", str(log), "--json"], capture_output=True, text=True)
        assert live.returncode == 0, live.stderr
        assert process.poll() is None, "inspect ran while trace was still writing"
        with h5py.File(log, "r", libver="latest", swmr=True) as f:
            while process.poll() is None:
                rows = complete_rows(f)
                check_rows(f, rows)
                seen.append(rows)
                time.sleep(0.02)
            rows = complete_rows(f)
            check_rows(f, rows)
            seen.append(rows)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    assert process.returncode == 0, process.stderr.read()
    assert seen == sorted(seen), "the step count never goes down"
    assert len(set(seen)) >= 3, f"growth visible while the writer runs: {sorted(set(seen))[:10]}"
    assert seen[-1] == (300 * 200) // 64 + 1


def test_existing_log_needs_force_or_append(run_moekit, moe, tmp_path):
    model, _ = moe
    tokens = tmp_path / "short.txt"
    tokens.write_text("1 2 3 4 5 6 7 8\n9 10 11\n")
    log = tmp_path / "routing.h5"
    run_moekit("trace", model, "--tokens-file", tokens, "--log", log, "--batch-tokens", 4, "--quiet")
    refused = run_moekit("trace", model, "--tokens-file", tokens, "--log", log, "--quiet", check=False)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and str(log) in refused.stderr
    run_moekit("trace", model, "--tokens-file", tokens, "--log", log, "--batch-tokens", 4, "--append", "--quiet")
    with h5py.File(log, "r") as f:
        assert list(f["steps/step"][:]) == list(range(6))
        check_rows(f, 6)
    run_moekit("trace", model, "--tokens-file", tokens, "--log", log, "--batch-tokens", 8, "--force", "--quiet")
    with h5py.File(log, "r") as f:
        assert f["steps/step"].shape[0] == 2


def test_trace_refuses_a_dense_model(run_moekit, moe, tmp_path):
    model, tokens = moe
    result = run_moekit("trace", model.parent / "dense", "--tokens-file", tokens, "--log", tmp_path / "x.h5", check=False)
    assert result.returncode == 1 and "MiniCPM-MoE" in result.stderr
    assert not (tmp_path / "x.h5").exists()


def test_relu_router_trace_is_schema_3_with_active_experts(moe, run_moekit, tmp_path):
    """`trace --router remoe --per-token`: ReLU routing writes schema 3 (variable_k), every layer row's
    active-experts histogram counts the step's tokens and gives Σ n·h_n = Σ counts, the per-token
    rows have E slots whose filled entries are exactly the positive-weight ones, and inspect reports
    the realised active experts."""
    model, tokens = moe
    log = tmp_path / "relu.h5"
    run_moekit("trace", model, "--tokens-file", tokens, "--log", log, "--batch-tokens", 256, "--per-token",
               "--router", "remoe", "--quiet")
    with h5py.File(log, "r", swmr=True) as f:
        assert int(f.attrs["version"]) == 3 and int(f.attrs["variable_k"]) == 1 and int(f.attrs["top_k"]) == 2
        E = int(f.attrs["num_experts"])
        histogram = f["routing/active_experts"][:]                     # [S, L, E + 1]
        counts = f["routing/expert_counts"][:]
        steps_tokens = f["steps/tokens"][:]
        assert np.array_equal(histogram.sum(axis=2), np.broadcast_to(steps_tokens[:, None], histogram.shape[:2]))
        assert np.array_equal((histogram * np.arange(E + 1)).sum(axis=2), counts.sum(axis=2))
        experts, weights = f["tokens/experts"][:], f["tokens/weights"][:]
        assert experts.shape[2] == E
        assert np.array_equal(experts >= 0, weights > 0)
        per_token = (experts[:, 0, :] >= 0).sum(axis=1)                # layer 0, tokens of every step
        assert np.array_equal(np.bincount(per_token, minlength=E + 1), histogram[:, 0, :].sum(axis=0))
    report = run_moekit("inspect", log).stdout
    assert "active experts per token (target k = 2 of 8" in report

"""moekit_routing's HDF5 writer (python/): the schema `moekit inspect` reads, refused steps, and a log
read live (SWMR) while its writer runs and after the writer is killed with SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))

from moekit_routing import LayerRow, RoutingLogError, RoutingLogWriter, StepRow  # noqa: E402


def row(step, counts, tokens):
    layers = []
    for c in counts:
        c = np.asarray(c, np.int64)
        layers.append(LayerRow(expert_counts=c, prob_mean=np.full(len(c), 1 / len(c), np.float32), aux_loss=1.0,
                               z_loss=2.0, entropy=1.3, coactivation=np.zeros((len(c), len(c)), np.int64)))
    return StepRow(step=step, tokens=tokens, layers=layers, loss=3.0, lr=1e-3, lm_loss=2.9, grad_norm=0.5)


def test_writer_schema_is_read_by_moekit_inspect_and_refuses_bad_steps(tmp_path, run_moekit):
    path = str(tmp_path / "log.h5")
    with RoutingLogWriter(path, 2, 4, 2, router="top-2 softmax", model_config='{"model_type": "mixtral"}') as writer:
        writer.append(row(1, [[3, 5, 4, 4], [8, 0, 4, 4]], tokens=8))
        with pytest.raises(RoutingLogError, match="step 2, layer 1"):
            writer.append(row(2, [[4, 4, 4, 4], [4, 4, 4, 5]], tokens=8))  # 17 ≠ 8·2
        with pytest.raises(RoutingLogError, match="not after"):
            writer.append(row(1, [[4, 4, 4, 4], [4, 4, 4, 4]], tokens=8))
        writer.append(row(2, [[4, 4, 4, 4], [4, 4, 4, 4]], tokens=8))
    with pytest.raises(RoutingLogError, match="already exists"):
        RoutingLogWriter(path, 2, 4, 2)
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "moekit-routing" and f.attrs["version"] == 2 and f.attrs["training"] == 1
        assert f["routing/expert_counts"].shape == (2, 2, 4) and f["routing/coactivation"].shape == (2, 2, 4, 4)
        assert f["steps/step"][:].tolist() == [1, 2] and f["steps/lm_loss"].dtype == np.float32
        assert f["routing/expert_counts"].compression == "gzip"
    summary = json.loads(run_moekit("inspect", path, "--json").stdout)
    assert len(summary["layers"]) == 2 and summary["training"]
    assert "top-2 softmax" in run_moekit("inspect", path).stdout


def test_variable_k_log_is_version_3_and_inspect_reports_active_experts(tmp_path, run_moekit):
    """A ReLU-routed (variable-k) log: 4 tokens, 4 experts, target k = 1; per layer the active-experts
    histogram must count the tokens and Σ n·h_n must equal the expert counts' sum."""
    path = str(tmp_path / "relu.h5")
    E = 4

    def relu_row(step, counts, histogram):
        layer = row(step, [counts], tokens=4).layers[0]
        layer.active_experts = np.asarray(histogram, np.int64)
        return StepRow(step=step, tokens=4, layers=[layer], loss=3.0, lr=1e-3, lm_loss=2.9, grad_norm=0.5)

    with RoutingLogWriter(path, 1, E, 1, router="remoe", variable_k=True) as writer:
        writer.append(relu_row(0, [2, 2, 1, 1], [0, 2, 2, 0, 0]))  # 2 tokens × 1 + 2 × 2 = 6
        with pytest.raises(RoutingLogError, match="Σ n·active_experts"):
            writer.append(relu_row(1, [2, 2, 1, 1], [0, 4, 0, 0, 0]))
        with pytest.raises(RoutingLogError, match="does not count 4 tokens"):
            writer.append(relu_row(1, [1, 1, 1, 1], [0, 3, 0, 0, 0]))
        writer.append(relu_row(1, [1, 1, 1, 1], [0, 4, 0, 0, 0]))
    with h5py.File(path, "r") as f:
        assert f.attrs["version"] == 3 and f.attrs["variable_k"] == 1
        assert f["routing/active_experts"].shape == (2, 1, E + 1)
    summary = json.loads(run_moekit("inspect", path, "--json").stdout)
    assert summary["variable_k"] is True and summary["version"] == 3
    active = summary["active_experts"][0]
    assert active["histogram"] == [0, 6, 2, 0, 0]
    assert active["mean_per_step"] == [1.5, 1.0]
    assert abs(active["sparsity"] - (1 - 1.25 / 4)) < 1e-12
    assert "active experts per token" in run_moekit("inspect", path).stdout


WRITER = """
import sys, time
import numpy as np
sys.path.insert(0, sys.argv[2])
from moekit_routing import LayerRow, RoutingLogWriter, StepRow
w = RoutingLogWriter(sys.argv[1], 1, 2, 1)
for step in range(1, 1000):
    c = np.array([step % 3, 4 - step % 3], np.int64)
    w.append(StepRow(step=step, tokens=4, layers=[LayerRow(c, np.array([.5, .5], np.float32), 1.0, 0.5, 0.69)]))
    print(step, flush=True)
    if step >= 3:
        time.sleep(60)
"""


def test_log_is_live_readable_and_survives_sigkill(tmp_path, run_moekit):
    path = str(tmp_path / "live.h5")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, path, str(REPO / "python")], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):
            assert writer.stdout.readline().strip()
        with h5py.File(path, "r", libver="latest", swmr=True) as f:
            assert f["steps/step"][:].tolist() == [1, 2, 3]
        live = json.loads(run_moekit("inspect", path, "--json").stdout)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
        after = json.loads(run_moekit("inspect", path, "--json").stdout)
        assert live == after
        with h5py.File(path, "r", libver="latest", swmr=True) as f:
            assert f["routing/expert_counts"][:, 0].tolist() == [[1, 3], [2, 2], [0, 4]]
    finally:
        if writer.poll() is None:
            writer.kill()

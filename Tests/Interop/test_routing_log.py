"""Outside tools read MoEKit routing logs (schema v1, docs/routing-log.md).

Every test runs on two logs: one `moekit trace` writes now (tiny preset upcycled to 8 experts,
per-token trace, over Notebooks-data/demo-tokens.txt; or $MOEKIT_ROUTING_LOG when set), so the
schema, the writer and the notebook cannot drift apart, and the committed example
Notebooks-data/example-routing.h5.
"""
import json
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_LOG = REPO / "Notebooks-data" / "example-routing.h5"

STEP_DATASETS = {
    "routing/expert_counts": (np.int64, ("L", "E")),
    "routing/prob_mean": (np.float32, ("L", "E")),
    "routing/aux_loss": (np.float32, ("L",)),
    "routing/z_loss": (np.float32, ("L",)),
    "routing/entropy": (np.float32, ("L",)),
    "routing/dropped": (np.int64, ("L",)),
    "routing/coactivation": (np.int64, ("L", "E", "E")),
    "steps/step": (np.int64, ()),
    "steps/tokens": (np.int64, ()),
    "steps/loss": (np.float32, ()),
    "steps/lr": (np.float32, ()),
}
TOKEN_DATASETS = {
    "tokens/ids": (np.int32, ()),
    "tokens/sequence": (np.int32, ()),
    "tokens/position": (np.int32, ()),
    "tokens/experts": (np.int16, ("L", "k")),
    "tokens/weights": (np.float32, ("L", "k")),
}


@pytest.fixture(scope="module")
def fresh_log(tmp_path_factory, run_moekit):
    if os.environ.get("MOEKIT_ROUTING_LOG"):
        return Path(os.environ["MOEKIT_ROUTING_LOG"])
    root = tmp_path_factory.mktemp("fresh-log")
    run_moekit("init", root / "dense", "--preset", "tiny", "--quiet")
    run_moekit("upcycle", root / "dense", root / "moe", "--experts", 8, "--top-k", 2, "--quiet")
    run_moekit("trace", root / "moe", "--tokens-file", REPO / "Notebooks-data" / "demo-tokens.txt",
               "--log", root / "routing.h5", "--per-token", "--batch-tokens", 256, "--quiet")
    return root / "routing.h5"


@pytest.fixture(scope="module", params=["fresh", "example"])
def log_path(request):
    path = request.getfixturevalue("fresh_log") if request.param == "fresh" else EXAMPLE_LOG
    assert path.exists(), f"{path} missing (see Notebooks-data/README.md)"
    return path


@pytest.fixture(scope="module")
def log(log_path):
    with h5py.File(log_path, "r", libver="latest", swmr=True) as f:
        yield f


def sizes(f):
    return {"L": int(f.attrs["num_layers"]), "E": int(f.attrs["num_experts"]), "k": int(f.attrs["top_k"])}


def test_root_attributes_follow_schema_v1(log):
    assert log.attrs["format"] == "moekit-routing"
    assert int(log.attrs["version"]) == 1
    for name in ("router", "model_config", "source", "created"):
        assert isinstance(log.attrs[name], str)
    s = sizes(log)
    assert s["L"] >= 1 and s["E"] >= 1 and 1 <= s["k"] <= s["E"]


def test_datasets_have_schema_types_shapes_and_are_extendible(log):
    s = sizes(log)
    steps = log["steps/step"].shape[0]
    assert steps > 0
    expected = dict(STEP_DATASETS)
    if "tokens" in log:
        expected.update(TOKEN_DATASETS)
    for name, (dtype, trailing) in expected.items():
        dataset = log[name]
        dataset.refresh()
        assert dataset.dtype == dtype, name
        assert dataset.shape[1:] == tuple(s[a] for a in trailing), name
        assert dataset.maxshape[0] is None, f"{name} is not extendible"
        assert dataset.chunks is not None and dataset.compression == "gzip", name
        if name.startswith(("routing/", "steps/")):
            assert dataset.shape[0] == steps, name


def test_invariant_and_coactivation_hold(log):
    s = sizes(log)
    counts = log["routing/expert_counts"][:]
    tokens = log["steps/tokens"][:]
    dropped = log["routing/dropped"][:]
    assert np.array_equal(counts.sum(axis=2), tokens[:, None] * s["k"] - dropped)
    coactivation = log["routing/coactivation"][:]
    assert np.array_equal(coactivation, coactivation.transpose(0, 1, 3, 2))
    assert not coactivation[:, :, np.arange(s["E"]), np.arange(s["E"])].any()
    assert np.all(np.diff(log["steps/step"][:]) > 0)


def test_per_token_trace_matches_step_tokens(log):
    if "tokens" not in log:
        pytest.skip("log has no per-token trace")
    s = sizes(log)
    tokens = log["steps/tokens"][:]
    experts = log["tokens/experts"][:]
    assert experts.shape[0] == tokens.sum()
    assert experts.min() >= -1 and experts.max() < s["E"]
    # The first step's per-token choices reproduce its expert counts.
    first = experts[: tokens[0]]
    counts = log["routing/expert_counts"][0]
    for layer in range(s["L"]):
        chosen = first[:, layer, :].ravel()
        assert np.array_equal(np.bincount(chosen[chosen >= 0], minlength=s["E"]), counts[layer])


def test_inspect_json_matches_numpy(log, log_path, moekit, tmp_path):
    binary = moekit
    svg = tmp_path / "heatmap.svg"
    result = subprocess.run([binary, "inspect", str(log_path), "--json", "--svg", str(svg)], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    s = sizes(log)
    counts = log["routing/expert_counts"][:].sum(axis=0)
    total_tokens = int(log["steps/tokens"][:].sum())
    assert report["tokens"] == total_tokens
    for layer in report["layers"]:
        c = counts[layer["layer"]]
        assert layer["expert_counts"] == c.tolist()
        assert math.isclose(layer["cv"], c.std() / c.mean(), rel_tol=1e-9)
        ideal = total_tokens * s["k"] / s["E"]
        assert np.allclose(layer["share_of_ideal"], c / ideal)
        assert layer["dead_experts"] == np.flatnonzero(c == 0).tolist()
    root = ElementTree.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    cells = root.findall(".//{http://www.w3.org/2000/svg}g[@id='cells']/{http://www.w3.org/2000/svg}rect")
    assert len(cells) == s["L"] * s["E"]


def test_inspect_refuses_non_logs(moekit, tmp_path):
    binary = moekit
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all" * 100)
    result = subprocess.run([binary, "inspect", str(garbage)], capture_output=True, text=True)
    assert result.returncode == 1 and "not an HDF5 file" in result.stderr
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    result = subprocess.run([binary, "inspect", str(foreign)], capture_output=True, text=True)
    assert result.returncode == 1 and "not a MoEKit routing log" in result.stderr


def test_notebook_executes_headlessly(log_path, tmp_path):
    notebook = REPO / "Notebooks-data" / "routing-analysis.ipynb"
    environment = dict(os.environ, MOEKIT_ROUTING_LOG=str(log_path), MPLBACKEND="Agg")
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                    "--ExecutePreprocessor.timeout=300", "--output-dir", str(tmp_path), str(notebook)],
                   check=True, env=environment, capture_output=True)
    executed = json.loads((tmp_path / "routing-analysis.ipynb").read_text())
    images = [o for c in executed["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3

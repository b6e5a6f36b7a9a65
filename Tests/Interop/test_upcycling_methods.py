"""moekit upcycle --method drop, --weight-scale auto and moekit merge, checked with numpy on what the
safetensors package reads: the neurons the report lists are the only ones redrawn, w2 carries E/K
under unnormalised routing, and a BTX merge holds each model's FFN as an expert and the mean of
every other tensor; models of different shapes are refused in one line naming the field."""
import json
import os
import subprocess

import numpy as np
from safetensors.numpy import load_file

MOEKIT = os.environ.get("MOEKIT", ".build/release/moekit")


def run(*args, check=True):
    return subprocess.run([MOEKIT, *args], check=check, capture_output=True, text=True)


def load_dir(directory):
    with open(os.path.join(directory, "model.safetensors.index.json")) as f:
        index = json.load(f)
    tensors = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(os.path.join(directory, shard)))
    return tensors


def test_drop_redraws_exactly_the_reported_neurons(tmp_path):
    dense, moe = str(tmp_path / "dense"), str(tmp_path / "moe")
    run("init", dense, "--preset", "tiny", "--dtype", "f32", "--layers", "2", "--quiet")
    run("upcycle", dense, moe, "--experts", "4", "--top-k", "2", "--method", "drop", "--drop-ratio", "0.25", "--seed", "3", "--quiet")
    source = load_file(os.path.join(dense, "model.safetensors"))
    upcycled = load_dir(moe)
    report = json.loads((tmp_path / "moe" / "upcycle-report.json").read_text())
    intermediate = source["model.layers.0.mlp.gate_proj.weight"].shape[0]
    assert report["drop"]["neurons_per_expert"] == int(0.25 * intermediate)
    assert report["options"]["router_init"] == "uniform-std" and report["options"]["router_std"] == 0.02
    subsets = set()
    for entry in report["drop"]["redrawn"]:
        layer, expert, neurons = entry["layer"], entry["expert"], entry["neurons"]
        subsets.add(tuple(neurons))
        prefix = f"model.layers.{layer}.mlp."
        kept = np.setdiff1d(np.arange(intermediate), neurons)
        for new, old, axis in (("w1", "gate_proj", 0), ("w3", "up_proj", 0), ("w2", "down_proj", 1)):
            a = upcycled[f"{prefix}experts.{expert}.{new}.weight"]
            b = source[prefix + old + ".weight"]
            assert np.array_equal(np.take(a, kept, axis=axis), np.take(b, kept, axis=axis))
            replaced = np.take(b, neurons, axis=axis)
            drawn = np.take(a, neurons, axis=axis)
            assert not np.any(drawn == replaced)
            stats = entry["statistics"][new]
            assert abs(stats["mean"] - replaced.mean()) < 1e-6 and abs(stats["std"] - replaced.std(ddof=1)) < 1e-6
            assert abs(drawn.std() / replaced.std(ddof=1) - 1) < 0.2
    assert len(subsets) == 8
    router = upcycled["model.layers.0.mlp.gate.weight"]
    assert np.abs(router).max() <= np.sqrt(3) * 0.02 + 1e-7


def test_weight_scale_auto_puts_e_over_k_on_w2(tmp_path):
    dense, moe = str(tmp_path / "dense"), str(tmp_path / "moe")
    run("init", dense, "--preset", "tiny", "--dtype", "f32", "--layers", "1", "--quiet")
    run("upcycle", dense, moe, "--experts", "8", "--top-k", "2", "--router", "switch", "--weight-scale", "auto", "--quiet")
    source = load_file(os.path.join(dense, "model.safetensors"))
    upcycled = load_dir(moe)
    for expert in range(8):
        assert np.allclose(upcycled[f"model.layers.0.mlp.experts.{expert}.w2.weight"], 4 * source["model.layers.0.mlp.down_proj.weight"], rtol=1e-6)
        assert np.array_equal(upcycled[f"model.layers.0.mlp.experts.{expert}.w1.weight"], source["model.layers.0.mlp.gate_proj.weight"])
    config = json.loads((tmp_path / "moe" / "config.json").read_text())
    assert config["moekit_router"]["weighting"] == "unnormalized"


def test_btx_merge_takes_each_ffn_and_averages_the_rest(tmp_path):
    models = [str(tmp_path / f"dense{i}") for i in range(3)]
    for i, model in enumerate(models):
        run("init", model, "--preset", "tiny", "--dtype", "f32", "--layers", "2", "--seed", str(i), "--quiet")
    out = str(tmp_path / "btx")
    run("merge", *models, out, "--top-k", "2", "--quiet")
    sources = [load_file(os.path.join(m, "model.safetensors")) for m in models]
    merged = load_dir(out)
    config = json.loads((tmp_path / "btx" / "config.json").read_text())
    assert config["num_experts"] == 3 and config["num_experts_per_tok"] == 2
    for layer in range(2):
        prefix = f"model.layers.{layer}.mlp."
        assert merged[prefix + "gate.weight"].shape == (3, 128)
        for expert in range(3):
            for new, old in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
                assert np.array_equal(merged[f"{prefix}experts.{expert}.{new}.weight"], sources[expert][prefix + old + ".weight"])
    for name in sources[0]:
        if ".mlp." not in name:
            mean = (sources[0][name].astype(np.float64) + sources[1][name] + sources[2][name]) / 3
            assert np.allclose(merged[name], mean, rtol=1e-6, atol=1e-7), name

    other = str(tmp_path / "one-layer")
    run("init", other, "--preset", "tiny", "--dtype", "f32", "--layers", "1", "--quiet")
    refused = run("merge", models[0], other, str(tmp_path / "never"), check=False)
    assert refused.returncode != 0 and not (tmp_path / "never").exists()
    message = refused.stderr.strip().splitlines()
    assert len(message) == 1 and "num_hidden_layers" in message[0] and "one-layer" in message[0]

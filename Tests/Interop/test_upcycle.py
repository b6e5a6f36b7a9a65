"""moekit upcycle, read by outside clients: the safetensors package and numpy see MiniCPM-MoE-8x2B's
tensor names, exact expert copies and a complete index; `moekit forward` on the dense and the
upcycled (copy) models gives the same logits."""
import json
import os
import subprocess

import numpy as np
from safetensors.numpy import load_file

MOEKIT = os.environ.get("MOEKIT", ".build/release/moekit")


def run(*args):
    return subprocess.run([MOEKIT, *args], check=True, capture_output=True, text=True)


def load_dir(directory):
    with open(os.path.join(directory, "model.safetensors.index.json")) as f:
        index = json.load(f)
    tensors = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(os.path.join(directory, shard)))
    assert set(tensors) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors.values())
    return tensors


def test_copy_upcycle_is_read_by_safetensors_and_preserves_logits(tmp_path):
    dense, moe = str(tmp_path / "dense"), str(tmp_path / "moe")
    run("init", dense, "--preset", "tiny", "--dtype", "f32", "--layers", "2", "--quiet")
    (tmp_path / "dense" / "tokenizer_config.json").write_text('{"x": 1}')
    run("upcycle", dense, moe, "--experts", "4", "--top-k", "2", "--shard-size", "1MB", "--quiet")
    config = json.loads((tmp_path / "moe" / "config.json").read_text())
    assert config["num_experts"] == 4 and config["num_experts_per_tok"] == 2
    assert config["architectures"] == ["MiniCPMForCausalLM"] and config["torch_dtype"] == "float32"
    assert "rope_theta" in config and "tie_word_embeddings" in config
    assert (tmp_path / "moe" / "tokenizer_config.json").read_text() == '{"x": 1}'
    source = load_file(os.path.join(dense, "model.safetensors"))
    upcycled = load_dir(moe)
    for layer in range(2):
        prefix = f"model.layers.{layer}.mlp."
        assert upcycled[prefix + "gate.weight"].shape == (4, 128)
        for expert in range(4):
            for new, old in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
                assert np.array_equal(upcycled[f"{prefix}experts.{expert}.{new}.weight"], source[prefix + old + ".weight"])
    for name, value in source.items():
        if ".mlp." not in name:
            assert np.array_equal(upcycled[name], value)

    tokens = tmp_path / "tokens.txt"
    tokens.write_text("1 2 3 4 5 6 7 8\n9 10 11\n")
    run("forward", dense, "--tokens-file", str(tokens), "--output", str(tmp_path / "dense.safetensors"))
    run("forward", moe, "--tokens-file", str(tokens), "--output", str(tmp_path / "moe.safetensors"))
    a = load_file(str(tmp_path / "dense.safetensors"))["logits"]
    b = load_file(str(tmp_path / "moe.safetensors"))["logits"]
    assert np.abs(a - b).max() / np.abs(a).max() <= 1e-5

    report = json.loads((tmp_path / "moe" / "upcycle-report.json").read_text())
    assert report["verification"]["passed"] is True and report["verification"]["tokens"] == 16


def test_shared_experts_upcycle_is_read_and_traced_as_routed_experts_only(tmp_path):
    """--shared-experts 2: DeepSeek's mlp.shared_experts.* of 2·I neurons (two copies of the dense MLP,
    down × 1/3, as every routed w2), n_shared_experts in config.json, the dense logits kept; a trace
    log and inspect count the 4 routed experts only (Σ counts = tokens · k)."""
    dense, moe = str(tmp_path / "dense"), str(tmp_path / "moe")
    run("init", dense, "--preset", "tiny", "--dtype", "f32", "--layers", "2", "--quiet")
    run("upcycle", dense, moe, "--experts", "4", "--top-k", "2", "--shared-experts", "2", "--quiet")
    config = json.loads((tmp_path / "moe" / "config.json").read_text())
    assert config["n_shared_experts"] == 2 and config["num_experts"] == 4
    source, upcycled = load_file(os.path.join(dense, "model.safetensors")), load_dir(moe)
    gate, down = source["model.layers.1.mlp.gate_proj.weight"], source["model.layers.1.mlp.down_proj.weight"]
    assert np.array_equal(upcycled["model.layers.1.mlp.shared_experts.gate_proj.weight"], np.concatenate([gate, gate]))
    third = np.float32(1) / np.float32(3)
    assert np.array_equal(upcycled["model.layers.1.mlp.shared_experts.down_proj.weight"], np.concatenate([down * third, down * third], axis=1))
    assert np.array_equal(upcycled["model.layers.1.mlp.experts.2.w2.weight"], down * third)
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("1 5 9 33 2 17 60 8\n1 40 22 7\n")
    for name, directory in (("dense", dense), ("moe", moe)):
        run("forward", directory, "--tokens-file", str(tokens), "--output", str(tmp_path / f"{name}.safetensors"))
    a, b = load_file(str(tmp_path / "dense.safetensors"))["logits"], load_file(str(tmp_path / "moe.safetensors"))["logits"]
    assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(a))
    run("trace", moe, "--tokens-file", str(tokens), "--log", str(tmp_path / "trace.h5"), "--quiet")
    summary = json.loads(run("inspect", str(tmp_path / "trace.h5"), "--json").stdout)
    assert summary["num_experts"] == 4 and summary["top_k"] == 2
    assert all(sum(layer["expert_counts"]) == 12 * 2 and len(layer["expert_counts"]) == 4 for layer in summary["layers"])


def test_bad_input_leaves_no_output(tmp_path):
    dense, moe = str(tmp_path / "dense"), str(tmp_path / "moe")
    run("init", dense, "--preset", "tiny", "--layers", "1", "--quiet")
    result = subprocess.run([MOEKIT, "upcycle", dense, moe, "--experts", "4", "--top-k", "5"], capture_output=True, text=True)
    assert result.returncode != 0 and "--top-k" in result.stderr
    assert not os.path.exists(moe)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_interrupted_upcycle_leaves_nothing_behind(tmp_path):
    """SIGINT mid-write: no OUT_DIR appears and the temporary directory beside it is removed."""
    import signal
    import time
    dense, moe = str(tmp_path / "dense"), str(tmp_path / "moe")
    run("init", dense, "--preset", "minicpm-1.2b", "--layers", "2", "--quiet")
    # 16 experts: about 3 GB to write, seconds of work, so the interrupt lands early in the run.
    process = subprocess.Popen([MOEKIT, "upcycle", dense, moe, "--experts", "16", "--top-k", "2", "--verify", "0", "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    temporary = []
    while time.time() < deadline and process.poll() is None:
        temporary = [n for n in os.listdir(tmp_path) if ".tmp-" in n]
        if temporary and os.listdir(tmp_path / temporary[0]):
            break
        time.sleep(0.005)
    assert process.poll() is None, "upcycle finished before it could be interrupted"
    assert temporary, "upcycle writes into a temporary directory beside OUT_DIR"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "interrupted" in stderr
    assert not os.path.exists(moe)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]

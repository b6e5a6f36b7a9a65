"""Checkpoints used in their stored dtype: `forward --batch-tokens` batches whole sequences and gives
the logits of one batch, and `bench --dense-model/--moe-model` times the model level on mapped
checkpoints (both or neither, model level only)."""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file


@pytest.fixture(scope="module")
def models(tmp_path_factory, run_moekit):
    root = tmp_path_factory.mktemp("mapped")
    run_moekit("init", root / "dense", "--preset", "tiny", "--dtype", "bf16", "--quiet")
    run_moekit("upcycle", root / "dense", root / "moe", "--experts", 4, "--top-k", 2, "--quiet")
    return root / "dense", root / "moe"


def test_forward_batches_give_the_logits_of_one_batch(run_moekit, models, tmp_path):
    _, moe = models
    rng = np.random.default_rng(1)
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("\n".join(" ".join(map(str, rng.integers(0, 1024, n))) for n in (7, 30, 3, 12)) + "\n")
    run_moekit("forward", moe, "--tokens-file", tokens, "--output", tmp_path / "one.safetensors")
    run_moekit("forward", moe, "--tokens-file", tokens, "--output", tmp_path / "batched.safetensors", "--batch-tokens", 10)
    one, batched = load_file(str(tmp_path / "one.safetensors"))["logits"], load_file(str(tmp_path / "batched.safetensors"))["logits"]
    assert one.shape == batched.shape == (52, 1024)
    assert np.abs(one - batched).max() <= 1e-5 * np.abs(one).max()
    refused = run_moekit("forward", moe, "--tokens-file", tokens, "--batch-tokens", 0, check=False)
    assert refused.returncode != 0 and "--batch-tokens" in refused.stderr


def test_bench_times_mapped_checkpoints(run_moekit, models, tmp_path):
    dense, moe = models
    report = tmp_path / "bench.json"
    result = run_moekit("bench", "--level", "model", "--dense-model", dense, "--moe-model", moe, "--tokens", 16,
                        "--routing", "learned", "--repeats", 1, "--decode", 2, "--json", report)
    assert "weights mapped in their stored dtype" in result.stdout
    results = json.loads(report.read_text())["results"]
    kinds = {(r["kind"], r["phase"]) for r in results}
    assert kinds == {("dense", "prefill"), ("moe", "prefill"), ("dense", "decode"), ("moe", "decode")}
    assert all(r["tokens_per_s"]["median"] > 0 for r in results)
    assert all(r["experts"] == 4 for r in results if r["kind"] == "moe")
    alone = run_moekit("bench", "--level", "model", "--dense-model", dense, check=False)
    assert alone.returncode != 0 and "--dense-model and --moe-model go together" in alone.stderr
    layer = run_moekit("bench", "--level", "layer", "--dense-model", dense, "--moe-model", moe, check=False)
    assert layer.returncode != 0 and "--level model" in layer.stderr

"""moekit export, checked with transformers' own classes (no remote code): the exported Llama,
Mixtral and Qwen2-MoE (unnormalised top-k) give MoEKit's MiniCPM logits to 1e-5 relative in f32; a Mixtral that transformers wrote
itself is read by every moekit command (forward, trace, inspect, train, bench, export back)."""
import json
import os

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import (AutoModelForCausalLM, Glm4MoeForCausalLM, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM,
                          Qwen2MoeForCausalLM)

from scale_out_models import TOKENS, moekit_logits, relative_difference, write_minicpm


def transformers_logits(model_dir, cls):
    model = cls.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    outputs = []
    with torch.no_grad():
        for sequence in TOKENS:
            outputs.append(model(torch.tensor([sequence])).logits[0].numpy())
    return np.concatenate(outputs), model


CLASSES = {"llama": LlamaForCausalLM, "mixtral": MixtralForCausalLM, "qwen2_moe": Qwen2MoeForCausalLM,
           "glm4_moe": Glm4MoeForCausalLM}
# What each MoE format carries beyond Mixtral: Qwen2-MoE softmax → top-k without renormalising;
# GLM-4.5-MoE DeepSeek-V3's sigmoid scoring with the auxiliary-loss-free selection bias and a scale.
ROUTERS = {"qwen2_moe": {"weighting": "unnormalized"},
           "glm4_moe": {"scoring": "sigmoid", "aux_loss_free_balancing": True, "weight_scale": 2.5}}


@pytest.mark.parametrize("kind,experts,tied", [("llama", None, False), ("llama", None, True),
                                               ("mixtral", 4, False), ("mixtral", 4, True), ("qwen2_moe", 4, False),
                                               ("glm4_moe", 4, False)])
def test_export_loads_in_transformers_with_minicpm_logits(tmp_path, run_moekit, kind, experts, tied):
    source = write_minicpm(str(tmp_path / "minicpm"), experts=experts, tied=tied, seed=3, router=ROUTERS.get(kind),
                           selection_bias=kind == "glm4_moe")
    out = str(tmp_path / kind)
    printed = run_moekit("export", source, out, "--format", kind, "--dtype", "f32", "--quiet").stdout
    assert "fold embed_tokens × scale_emb" in printed and "rounding in float32" in printed
    config = json.loads((tmp_path / kind / "config.json").read_text())
    assert config["model_type"] == kind and config["tie_word_embeddings"] is False
    for key in ("rope_theta", "rms_norm_eps", "head_dim", "num_key_value_heads", "max_position_embeddings"):
        assert key in config
    if kind == "mixtral":
        assert config["sliding_window"] is None and config["num_local_experts"] == 4 and config["num_experts_per_tok"] == 2
        assert "router_aux_loss_coef" in config
    if kind == "qwen2_moe":
        assert config["norm_topk_prob"] is False and config["qkv_bias"] is False and config["num_experts"] == 4
    if kind == "glm4_moe":
        assert config["n_routed_experts"] == 4 and config["routed_scaling_factor"] == 2.5 and config["first_k_dense_replace"] == 0
    assert os.path.exists(tmp_path / kind / "generation_config.json")

    expected = moekit_logits(run_moekit, source, tmp_path, "minicpm")
    cls = CLASSES[kind]
    actual, model = transformers_logits(out, cls)
    assert type(model).__name__ == cls.__name__
    assert relative_difference(actual, expected) <= 1e-5
    # MoEKit reads the export back (neutral scalars) with the same logits.
    assert relative_difference(moekit_logits(run_moekit, out, tmp_path, "reimported"), expected) <= 1e-5


@pytest.mark.parametrize("kind", ["qwen2_moe", "glm4_moe"])
def test_shared_experts_export_with_minicpm_logits(tmp_path, run_moekit, kind):
    """MoEKit's shared experts (n_shared_experts 2, DeepSeek's mlp.shared_experts.*) exported: Qwen2-MoE's
    sigmoid-gated shared expert (gate 0, down × 2) and GLM-4.5-MoE's shared experts give MoEKit's logits."""
    source = write_minicpm(str(tmp_path / "minicpm"), experts=4, seed=5, router=ROUTERS.get(kind), shared_experts=2)
    out = str(tmp_path / kind)
    run_moekit("export", source, out, "--format", kind, "--dtype", "f32", "--quiet")
    config = json.loads((tmp_path / kind / "config.json").read_text())
    if kind == "qwen2_moe":
        assert config["shared_expert_intermediate_size"] == 2 * 48
    else:
        assert config["n_shared_experts"] == 2
    expected = moekit_logits(run_moekit, source, tmp_path, "minicpm")
    actual, _ = transformers_logits(out, CLASSES[kind])
    assert relative_difference(actual, expected) <= 1e-5
    # Without the shared experts the logits differ: the comparison can fail.
    plain = write_minicpm(str(tmp_path / "plain"), experts=4, seed=5, router=ROUTERS.get(kind))
    assert relative_difference(moekit_logits(run_moekit, plain, tmp_path, "plain"), expected) > 1e-3


def test_mixtral_written_by_transformers_runs_in_every_moekit_command(tmp_path, run_moekit):
    config = MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=128,
                           tie_word_embeddings=False, sliding_window=None, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    model = MixtralForCausalLM(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2) if parameter.dim() > 1 else parameter.copy_(1 + 0.1 * torch.randn_like(parameter))
    hf_dir = str(tmp_path / "hf-mixtral")
    model.save_pretrained(hf_dir)
    expected, _ = transformers_logits(hf_dir, MixtralForCausalLM)
    assert relative_difference(moekit_logits(run_moekit, hf_dir, tmp_path, "hf"), expected) <= 1e-5

    tokens = tmp_path / "trace.txt"
    tokens.write_text("\n".join(" ".join(str((7 * i + j) % 64) for j in range(16)) for i in range(8)) + "\n")
    run_moekit("trace", hf_dir, "--tokens-file", str(tokens), "--log", str(tmp_path / "trace.h5"), "--quiet")
    summary = json.loads(run_moekit("inspect", str(tmp_path / "trace.h5"), "--json").stdout)
    assert len(summary["layers"]) == 2

    data = tmp_path / "train.txt"
    data.write_text("\n".join(" ".join(str((3 * i + 5 * j) % 64) for j in range(40)) for i in range(40)) + "\n")
    trained = str(tmp_path / "trained")
    run_moekit("train", hf_dir, "--data", str(data), "--steps", "3", "--batch", "2", "--seq", "16", "--lr", "0.001",
               "--out", trained, "--log", str(tmp_path / "train.h5"))
    written = json.loads((tmp_path / "trained" / "config.json").read_text())
    assert written["model_type"] == "mixtral" and written["num_local_experts"] == 4 and "num_experts" not in written
    names = load_file(os.path.join(trained, "model.safetensors")).keys()
    assert "model.layers.0.block_sparse_moe.experts.3.w2.weight" in names and not any(".mlp." in n for n in names)
    after, _ = transformers_logits(trained, MixtralForCausalLM)
    assert relative_difference(moekit_logits(run_moekit, trained, tmp_path, "trained"), after) <= 1e-5
    assert json.loads(run_moekit("inspect", str(tmp_path / "train.h5"), "--json").stdout)

    bench = run_moekit("bench", "--model", hf_dir, "--level", "layer", "--tokens", "16", "--repeats", "1",
                       "--routing", "learned", "--decode", "0").stdout
    assert "(MixtralForCausalLM) hidden 32, intermediate 48; MoE 4 experts, top-2" in bench

    back, again = str(tmp_path / "back"), str(tmp_path / "again")
    run_moekit("export", hf_dir, back, "--format", "minicpm", "--quiet")
    run_moekit("export", back, again, "--format", "mixtral", "--quiet")
    original = load_file(os.path.join(hf_dir, "model.safetensors"))
    for name, value in load_file(os.path.join(again, "model.safetensors")).items():
        assert np.array_equal(value, original[name]), name
    assert AutoModelForCausalLM.from_pretrained(again).__class__.__name__ == "MixtralForCausalLM"

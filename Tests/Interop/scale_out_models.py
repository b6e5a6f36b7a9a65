"""Tiny MiniCPM checkpoints written with numpy (MiniCPM's scalars, GQA, tied or untied head) for the
export and distributed-logging interop tests, and the logits comparison they share."""
import json
import os

import numpy as np
from safetensors.numpy import save_file, load_file

HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS, VOCAB = 32, 48, 2, 4, 2, 64


def write_minicpm(directory, *, experts=None, top_k=2, tied=False, seed=0, router=None, selection_bias=False, shared_experts=0):
    """A MiniCPM (-MoE) with random weights in f32: scale_emb 12, scale_depth 1.4, dim_model_base 8; with
    shared_experts S, DeepSeek-style mlp.shared_experts.* of S·intermediate neurons and n_shared_experts S."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory)
    kv = KV_HEADS * HIDDEN // HEADS

    def matrix(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    def norm():
        return (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)

    tensors = {"model.embed_tokens.weight": matrix(VOCAB, HIDDEN), "model.norm.weight": norm()}
    if not tied:
        tensors["lm_head.weight"] = matrix(VOCAB, HIDDEN)
    for layer in range(LAYERS):
        p = f"model.layers.{layer}."
        tensors.update({p + "input_layernorm.weight": norm(), p + "post_attention_layernorm.weight": norm(),
                        p + "self_attn.q_proj.weight": matrix(HIDDEN, HIDDEN), p + "self_attn.k_proj.weight": matrix(kv, HIDDEN),
                        p + "self_attn.v_proj.weight": matrix(kv, HIDDEN), p + "self_attn.o_proj.weight": matrix(HIDDEN, HIDDEN)})
        if experts:
            tensors[p + "mlp.gate.weight"] = matrix(experts, HIDDEN) * 5
            if selection_bias:  # MoEKit's auxiliary-loss-free bias (f32)
                tensors[p + "mlp.gate.moekit_bias"] = (0.2 * rng.standard_normal(experts)).astype(np.float32)
            for e in range(experts):
                tensors[p + f"mlp.experts.{e}.w1.weight"] = matrix(INTERMEDIATE, HIDDEN)
                tensors[p + f"mlp.experts.{e}.w3.weight"] = matrix(INTERMEDIATE, HIDDEN)
                tensors[p + f"mlp.experts.{e}.w2.weight"] = matrix(HIDDEN, INTERMEDIATE)
            if shared_experts:
                tensors[p + "mlp.shared_experts.gate_proj.weight"] = matrix(shared_experts * INTERMEDIATE, HIDDEN)
                tensors[p + "mlp.shared_experts.up_proj.weight"] = matrix(shared_experts * INTERMEDIATE, HIDDEN)
                tensors[p + "mlp.shared_experts.down_proj.weight"] = matrix(HIDDEN, shared_experts * INTERMEDIATE)
        else:
            tensors[p + "mlp.gate_proj.weight"] = matrix(INTERMEDIATE, HIDDEN)
            tensors[p + "mlp.up_proj.weight"] = matrix(INTERMEDIATE, HIDDEN)
            tensors[p + "mlp.down_proj.weight"] = matrix(HIDDEN, INTERMEDIATE)
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    config = {"architectures": ["MiniCPMForCausalLM"], "model_type": "minicpm", "hidden_size": HIDDEN,
              "intermediate_size": INTERMEDIATE, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
              "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "max_position_embeddings": 128, "scale_emb": 12, "scale_depth": 1.4, "dim_model_base": 8,
              "tie_word_embeddings": tied, "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2}
    if experts:
        config.update(num_experts=experts, num_experts_per_tok=top_k)
        if shared_experts:
            config["n_shared_experts"] = shared_experts
    if router:
        config["moekit_router"] = router
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(directory, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2}, f)
    return directory


TOKENS = [[1, 5, 9, 33, 2, 17, 60, 8, 41, 3], [1, 40, 22, 7, 7, 13]]


def moekit_logits(run_moekit, model_dir, tmp_path, name="logits"):
    tokens = tmp_path / f"{name}-tokens.txt"
    tokens.write_text("\n".join(" ".join(map(str, s)) for s in TOKENS) + "\n")
    out = tmp_path / f"{name}.safetensors"
    run_moekit("forward", model_dir, "--tokens-file", str(tokens), "--output", str(out))
    return load_file(str(out))["logits"]


def relative_difference(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max() / np.abs(np.asarray(b, np.float64)).max())

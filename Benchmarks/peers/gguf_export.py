"""Write a MoEKit MiniCPM model directory (dense or MoE) as a llama-architecture GGUF for llama.cpp.

MiniCPM is a llama with three scalars, folded into the weights so that llama.cpp's plain `llama`
graph computes the same function (our own fold; llama.cpp's converter keeps them as
`minicpm.embedding_scale`/`residual_scale`/`logit_scale` metadata instead):
- embeddings × scale_emb                             (token_embd.weight)
- o_proj and down_proj (every expert's w2) × scale_depth/√L   (the residual branches)
- lm_head ÷ (hidden_size/dim_model_base)             (output.weight; MiniCPM ties it to the
  embeddings, so it is written as its own tensor)
q_proj and k_proj rows are permuted from Hugging Face's rotate-half layout to GGML's interleaved
RoPE pairs, as llama.cpp's converter does for llama. The MoE layer (MiniCPM-MoE: top-k of the router
logits, softmax over the k — the same as Mixtral's softmax, top-k, renormalise) is written in the
Mixtral layout: ffn_gate_inp [E, H] and stacked experts ffn_{gate,up,down}_exps.

Tensors are streamed to the file one at a time (a 4-layer MoE at 2.4B shapes is 7 GB in f32).
Token ids are placeholders ("<unk>", "<s>", "</s>", "<t3>", ...): the benchmark feeds ids, never text.
"""
import math
import os

import gguf
import numpy as np

from safetensors_numpy import SafetensorsDirectory


def to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns, round to nearest even (NaN-free inputs)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def permute_rope(weights: np.ndarray, heads: int) -> np.ndarray:
    """HF rotate-half rows (per head: first halves, then second halves) → GGML's interleaved pairs."""
    out_features = weights.shape[0]
    return (weights.reshape(heads, 2, out_features // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def export(model_dir: str, path: str, dtype: str) -> str:
    """Writes `path` (via a temporary file renamed at the end); dtype is "f32" or "bf16"."""
    st = SafetensorsDirectory(model_dir)
    c = st.config
    hidden, layers = c["hidden_size"], c["num_hidden_layers"]
    heads, kv_heads = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    experts = c.get("num_experts") or 0
    top_k = c.get("num_experts_per_tok") or 0
    residual_scale = c["scale_depth"] / math.sqrt(layers)
    logit_divisor = hidden / c["dim_model_base"]
    vocab = c["vocab_size"]

    # name → (numpy shape, producer of float32 data)
    tensors = []

    def weight(name, shape, make):
        tensors.append((name, tuple(shape), make))

    embed = "model.embed_tokens.weight"
    head = "lm_head.weight" if "lm_head.weight" in st else embed
    weight("token_embd.weight", (vocab, hidden), lambda: st.f32(embed) * np.float32(c["scale_emb"]))
    for i in range(layers):
        p = f"model.layers.{i}."
        b = f"blk.{i}."
        weight(b + "attn_norm.weight", (hidden,), lambda p=p: st.f32(p + "input_layernorm.weight"))
        q = st.entries[p + "self_attn.q_proj.weight"][2]
        k = st.entries[p + "self_attn.k_proj.weight"][2]
        weight(b + "attn_q.weight", q, lambda p=p: permute_rope(st.f32(p + "self_attn.q_proj.weight"), heads))
        weight(b + "attn_k.weight", k, lambda p=p: permute_rope(st.f32(p + "self_attn.k_proj.weight"), kv_heads))
        weight(b + "attn_v.weight", k, lambda p=p: st.f32(p + "self_attn.v_proj.weight"))
        weight(b + "attn_output.weight", (hidden, q[0]),
               lambda p=p: st.f32(p + "self_attn.o_proj.weight") * np.float32(residual_scale))
        weight(b + "ffn_norm.weight", (hidden,), lambda p=p: st.f32(p + "post_attention_layernorm.weight"))
        if experts:
            inter = st.entries[p + "mlp.experts.0.w1.weight"][2][0]
            weight(b + "ffn_gate_inp.weight", (experts, hidden), lambda p=p: st.f32(p + "mlp.gate.weight"))
            for gguf_name, hf, scale in (("ffn_gate_exps", "w1", 1.0), ("ffn_up_exps", "w3", 1.0),
                                         ("ffn_down_exps", "w2", residual_scale)):
                shape = (experts, hidden, inter) if hf == "w2" else (experts, inter, hidden)
                weight(b + gguf_name + ".weight", shape,
                       lambda p=p, hf=hf, scale=scale: np.stack(
                           [st.f32(f"{p}mlp.experts.{e}.{hf}.weight") for e in range(experts)]) * np.float32(scale))
        else:
            inter = st.entries[p + "mlp.gate_proj.weight"][2][0]
            weight(b + "ffn_gate.weight", (inter, hidden), lambda p=p: st.f32(p + "mlp.gate_proj.weight"))
            weight(b + "ffn_up.weight", (inter, hidden), lambda p=p: st.f32(p + "mlp.up_proj.weight"))
            weight(b + "ffn_down.weight", (hidden, inter),
                   lambda p=p: st.f32(p + "mlp.down_proj.weight") * np.float32(residual_scale))
    weight("output_norm.weight", (hidden,), lambda: st.f32("model.norm.weight"))
    weight("output.weight", (vocab, hidden), lambda: st.f32(head) / np.float32(logit_divisor))

    temporary = path + ".tmp"
    writer = gguf.GGUFWriter(temporary, arch="llama")
    writer.add_name(os.path.basename(model_dir.rstrip("/")))
    writer.add_context_length(c.get("max_position_embeddings", 4096))
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(c["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(float(c.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(c["rms_norm_eps"]))
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if dtype == "bf16" else gguf.LlamaFileType.ALL_F32)
    if experts:
        writer.add_expert_count(experts)
        writer.add_expert_used_count(top_k)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>"] + [f"<t{i}>" for i in range(3, vocab)])
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
                           + [gguf.TokenType.NORMAL] * (vocab - 3))
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    def stored(name, shape):
        # Norms (1-D) and the router stay f32, as llama.cpp's converter keeps them.
        return dtype == "bf16" and len(shape) >= 2 and "ffn_gate_inp" not in name

    for name, shape, _ in tensors:
        count = int(np.prod(shape))
        if stored(name, shape):
            writer.add_tensor_info(name, shape, np.dtype(np.uint16), count * 2, raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            writer.add_tensor_info(name, shape, np.dtype(np.float32), count * 4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name, shape, make in tensors:
        data = np.ascontiguousarray(make(), dtype=np.float32)
        assert data.shape == shape, (name, data.shape, shape)
        writer.write_tensor_data(to_bf16_bits(data) if stored(name, shape) else data)
        del data
    writer.close()
    os.replace(temporary, path)
    return path

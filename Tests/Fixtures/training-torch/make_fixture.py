#!/usr/bin/env python3
"""Writes the PyTorch training fixture that PyTorchTrainingFixtureTests compares MoEKit against.

As llm.c's test_gpt2.c does for GPT-2: an independent implementation (plain PyTorch, autograd, float64)
of what `moekit train` computes, run on two tiny models and one fixed batch, pinning
  - the loss, its language-model part and the router's auxiliary losses per MoE layer;
  - every parameter's gradient, under its checkpoint name;
  - the loss before and after each of a few AdamW steps, the pre-clip gradient norms, and the
    final values of a few tensors.

The model is the published MiniCPM / MiniCPM-MoE modeling code:
    h = embed(tokens) * scale_emb
    per layer:  h += attn(rms_norm(h)) * scale_depth / sqrt(L)      (GQA, RoPE rotate_half, causal)
                h += mlp(rms_norm(h))  * scale_depth / sqrt(L)      (SwiGLU, or the MoE below)
    logits = lm_head(rms_norm(h) / (hidden_size / dim_model_base))  (lm_head = embed when tied)
    loss = mean cross-entropy over targets >= 0  +  sum over MoE layers of the router's aux loss
MoE (MiniCPM-MoE's router): p = softmax(x W_gate^T); the top-k of p, renormalised to sum to 1, weight
the chosen experts' SwiGLU outputs (expert e: w2(silu(w1 x) * w3 x)). Aux loss per layer, over the
batch's N tokens: c_lb * E * sum_i f_i P_i (Switch; f_i = count_i / (N k), a constant; P_i = mean_t p_t,i)
+ c_z * mean_t logsumexp(z_t)^2 (ST-MoE z-loss), with the coefficients of config.json's
`moekit_router`.

Optimiser: torch.optim.AdamW (beta 0.9/0.95, eps 1e-8) after torch.nn.utils.clip_grad_norm_(max 1.0),
with MoEKit's defaults: MiniCPM's tensor-program rule (matrices inside model.layers.* train at
lr / (hidden_size / dim_model_base), the rest at lr) and weight decay 0.1 on tensors of rank >= 2 only.

Models (`dense/`, `moe/`, f32 safetensors + config.json) are made here from a fixed seed, in MiniCPM's
initialisation (matrices N(0, (0.1 / sqrt(hidden / dim_model_base))^2)) but with norm gains 1 + N(0, 0.1^2),
so their gradients matter, and a router drawn from N(0, 0.1^2) over independent experts, so routing
and the router's gradient are not degenerate. The dense model has a tied head and 4 query heads over
2 key/value heads; the MoE model an untied head, 4 experts top-2 and 4 query heads over 1 key/value head.
They are kept small so the fixture stays well under a few MB.

The script checks that every top-k choice it makes, at every step, has a margin far above f32 rounding
(so MoEKit in f32 must choose the same experts), and prints how far a float32 run of the same code is
from the float64 fixture (the scale of the differences a correct f32 implementation shows).

Run (needs torch, safetensors, numpy; MoEKit's tests need none of them):
    python Tests/Fixtures/training-torch/make_fixture.py [--remake-models]
"""
import argparse
import json
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))

# The fixed batch: B sequences of T tokens; targets are the next tokens, some ignored (-1).
BATCH, LENGTH, SEED = 3, 12, 1234
IGNORED = [(0, 3), (1, 8), (1, 9), (1, 10), (1, 11), (2, 0)]
# AdamW: one base learning rate per step (a short warmup), MoEKit's AdamWOptions defaults.
LEARNING_RATES = [4e-3, 8e-3, 1.2e-2, 1.2e-2]
BETAS, EPSILON, WEIGHT_DECAY, MAX_GRADIENT_NORM = (0.9, 0.95), 1e-8, 0.1, 1.0
# Tensors whose values after the last step are pinned too. Not the tied embedding, the head or q_proj:
# at step 1 Adam moves every element by about lr whatever its gradient's size, so elements whose gradient
# is rounding-sized (most of a tied embedding's rows) differ by about lr between two correct f32 runs.
FINAL_TENSORS = {
    "dense": ["model.layers.1.mlp.down_proj.weight", "model.layers.1.post_attention_layernorm.weight", "model.norm.weight"],
    "moe": ["model.embed_tokens.weight", "model.layers.0.mlp.gate.weight", "model.layers.1.mlp.gate.weight",
            "model.layers.1.mlp.experts.2.w1.weight", "model.layers.0.input_layernorm.weight", "model.norm.weight"],
}
# Smallest allowed gap between the k-th and (k+1)-th router probability of any token (f32 rounding is ~1e-7).
MINIMUM_TOP_K_MARGIN = 1e-4


def base_config(**overrides):
    config = {
        "architectures": ["MiniCPMForCausalLM"], "model_type": "minicpm", "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2, "vocab_size": 256, "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64,
        "scale_emb": 12, "dim_model_base": 32, "scale_depth": 1.4, "torch_dtype": "float32",
    }
    config.update(overrides)
    return config


MODEL_CONFIGS = {
    "dense": base_config(intermediate_size=128, num_key_value_heads=2, tie_word_embeddings=True),
    "moe": base_config(intermediate_size=96, num_key_value_heads=1, tie_word_embeddings=False,
                       num_experts=4, num_experts_per_tok=2,
                       moekit_router={"load_balancing_coefficient": 0.01, "z_loss_coefficient": 0.001}),
}


def layout(c):
    """(name, shape) of every parameter, in MoEKit's layout order."""
    hidden, head_dim = c["hidden_size"], c["hidden_size"] // c["num_attention_heads"]
    kv, inter = c["num_key_value_heads"] * head_dim, c["intermediate_size"]
    entries = [("model.embed_tokens.weight", (c["vocab_size"], hidden))]
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        entries += [(p + "input_layernorm.weight", (hidden,)), (p + "self_attn.q_proj.weight", (hidden, hidden)),
                    (p + "self_attn.k_proj.weight", (kv, hidden)), (p + "self_attn.v_proj.weight", (kv, hidden)),
                    (p + "self_attn.o_proj.weight", (hidden, hidden)), (p + "post_attention_layernorm.weight", (hidden,))]
        if "num_experts" in c:
            entries.append((p + "mlp.gate.weight", (c["num_experts"], hidden)))
            for e in range(c["num_experts"]):
                entries += [(p + f"mlp.experts.{e}.w1.weight", (inter, hidden)), (p + f"mlp.experts.{e}.w3.weight", (inter, hidden)),
                            (p + f"mlp.experts.{e}.w2.weight", (hidden, inter))]
        else:
            entries += [(p + "mlp.gate_proj.weight", (inter, hidden)), (p + "mlp.up_proj.weight", (inter, hidden)),
                        (p + "mlp.down_proj.weight", (hidden, inter))]
    entries.append(("model.norm.weight", (hidden,)))
    if not c["tie_word_embeddings"]:
        entries.append(("lm_head.weight", (c["vocab_size"], hidden)))
    return entries


def make_model(kind, seed):
    c = MODEL_CONFIGS[kind]
    generator = torch.Generator().manual_seed(seed)
    std = 0.1 / math.sqrt(c["hidden_size"] / c["dim_model_base"])
    tensors = {}
    for name, shape in layout(c):
        if len(shape) == 1:
            tensors[name] = 1 + 0.1 * torch.randn(shape, generator=generator)
        elif name.endswith("mlp.gate.weight"):
            tensors[name] = 0.1 * torch.randn(shape, generator=generator)
        else:
            tensors[name] = std * torch.randn(shape, generator=generator)
    directory = os.path.join(HERE, kind)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
        f.write("\n")
    save_file({k: v.float().contiguous() for k, v in tensors.items()}, os.path.join(directory, "model.safetensors"))


def load_model(kind, dtype):
    directory = os.path.join(HERE, kind)
    with open(os.path.join(directory, "config.json")) as f:
        c = json.load(f)
    tensors = load_file(os.path.join(directory, "model.safetensors"))
    names = [name for name, _ in layout(c)]
    assert sorted(names) == sorted(tensors), f"{kind}: checkpoint tensors differ from the layout"
    return c, {name: tensors[name].to(dtype).clone().requires_grad_(True) for name in names}


# --- The model ------------------------------------------------------------------------------------

def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope(x, theta):
    """x [B, heads, T, d]: MiniCPM's rotary embedding (cat(freqs, freqs), rotate_half), positions 0..T-1."""
    d, T = x.shape[-1], x.shape[-2]
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1).to(x.dtype)
    return x * emb.cos() + rotate_half(x) * emb.sin()


def attention(x, p, prefix, c):
    """x [B, T, H] -> [B, T, H]: grouped-query causal self-attention."""
    B, T, H = x.shape
    heads, kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
    d = H // heads
    q = (x @ p[prefix + "q_proj.weight"].T).view(B, T, heads, d).transpose(1, 2)
    k = (x @ p[prefix + "k_proj.weight"].T).view(B, T, kv_heads, d).transpose(1, 2)
    v = (x @ p[prefix + "v_proj.weight"].T).view(B, T, kv_heads, d).transpose(1, 2)
    q, k = rope(q, c["rope_theta"]), rope(k, c["rope_theta"])
    k = k.repeat_interleave(heads // kv_heads, dim=1)  # HF repeat_kv: query head h reads kv head h // (heads / kv_heads)
    v = v.repeat_interleave(heads // kv_heads, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1), float("-inf"))
    context = torch.softmax(scores, dim=-1) @ v
    return context.transpose(1, 2).reshape(B, T, H) @ p[prefix + "o_proj.weight"].T


def swiglu(x, gate, up, down):
    return (F.silu(x @ gate.T) * (x @ up.T)) @ down.T


def mixture(x, p, prefix, c):
    """x [N, H] -> (y [N, H], aux-loss terms, smallest top-k margin)."""
    router = c.get("moekit_router", {})
    experts, k = c["num_experts"], c["num_experts_per_tok"]
    N = x.shape[0]
    logits = x @ p[prefix + "gate.weight"].T
    probabilities = torch.softmax(logits, dim=-1)
    top_probabilities, chosen = torch.topk(probabilities, k, dim=-1)
    weights = top_probabilities / top_probabilities.sum(dim=-1, keepdim=True)
    ranked = torch.sort(probabilities.detach(), dim=-1, descending=True).values
    margin = (ranked[:, k - 1] - ranked[:, k]).min().item() if k < experts else float("inf")
    y = torch.zeros_like(x)
    for e in range(experts):
        token, slot = (chosen == e).nonzero(as_tuple=True)
        if token.numel() == 0:
            continue
        out = swiglu(x[token], p[prefix + f"experts.{e}.w1.weight"], p[prefix + f"experts.{e}.w3.weight"],
                     p[prefix + f"experts.{e}.w2.weight"])
        y = y.index_add(0, token, out * weights[token, slot].unsqueeze(-1))
    counts = F.one_hot(chosen, experts).sum(dim=(0, 1)).to(x.dtype)  # a constant: no gradient through the choice
    load_balancing = experts * ((counts / (N * k)) * probabilities.mean(dim=0)).sum()
    z_loss = torch.logsumexp(logits, dim=-1).pow(2).mean()
    total = router.get("load_balancing_coefficient", 0.01) * load_balancing + router.get("z_loss_coefficient", 0.0) * z_loss
    return y, (total, load_balancing, z_loss), margin


def model_loss(c, p, inputs, targets):
    B, T = inputs.shape
    H, L, eps = c["hidden_size"], c["num_hidden_layers"], c["rms_norm_eps"]
    residual = c["scale_depth"] / math.sqrt(L)
    h = p["model.embed_tokens.weight"][inputs] * c["scale_emb"]
    aux, margin = [], float("inf")
    for layer in range(L):
        prefix = f"model.layers.{layer}."
        h = h + attention(rms_norm(h, p[prefix + "input_layernorm.weight"], eps), p, prefix + "self_attn.", c) * residual
        x = rms_norm(h, p[prefix + "post_attention_layernorm.weight"], eps)
        if "num_experts" in c:
            y, terms, layer_margin = mixture(x.reshape(B * T, H), p, prefix + "mlp.", c)
            y = y.view(B, T, H)
            aux.append(terms)
            margin = min(margin, layer_margin)
        else:
            y = swiglu(x, p[prefix + "mlp.gate_proj.weight"], p[prefix + "mlp.up_proj.weight"], p[prefix + "mlp.down_proj.weight"])
        h = h + y * residual
    head = p["model.embed_tokens.weight"] if c["tie_word_embeddings"] else p["lm_head.weight"]
    logits = (rms_norm(h, p["model.norm.weight"], eps) / (H / c["dim_model_base"])) @ head.T
    lm_loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T), ignore_index=-1)
    loss = lm_loss + sum(terms[0] for terms in aux) if aux else lm_loss
    return loss, lm_loss, aux, margin


# --- The optimiser --------------------------------------------------------------------------------

def optimizer_for(c, p):
    """torch AdamW with MoEKit's groups: μP lr multiplier for matrices in model.layers.*, decay on rank >= 2."""
    width = c["hidden_size"] / c["dim_model_base"]
    groups = {}
    for name, tensor in p.items():
        multiplier = 1 / width if tensor.dim() == 2 and name.startswith("model.layers.") else 1.0
        decay = WEIGHT_DECAY if tensor.dim() >= 2 else 0.0
        groups.setdefault((multiplier, decay), []).append(tensor)
    param_groups = [{"params": tensors, "multiplier": m, "weight_decay": wd} for (m, wd), tensors in groups.items()]
    return torch.optim.AdamW(param_groups, lr=1.0, betas=BETAS, eps=EPSILON, weight_decay=0.0)


def run(kind, dtype, inputs, targets):
    c, p = load_model(kind, dtype)
    out = {}
    loss, lm_loss, aux, margin = model_loss(c, p, inputs, targets)
    loss.backward()
    out["loss"] = loss.detach().reshape(1)
    out["lm_loss"] = lm_loss.detach().reshape(1)
    if aux:
        out["aux_loss"] = torch.stack([t[0].detach() for t in aux])
        out["load_balancing_loss"] = torch.stack([t[1].detach() for t in aux])
        out["z_loss"] = torch.stack([t[2].detach() for t in aux])
    for name, tensor in p.items():
        out["grad." + name] = tensor.grad.detach().clone()
    margins = [margin]

    optimizer = optimizer_for(c, p)
    losses, lm_losses, norms = [loss.item()], [lm_loss.item()], []
    for lr in LEARNING_RATES:
        norms.append(torch.nn.utils.clip_grad_norm_(list(p.values()), MAX_GRADIENT_NORM).item())
        for group in optimizer.param_groups:
            group["lr"] = lr * group["multiplier"]
        optimizer.step()
        optimizer.zero_grad()
        loss, lm_loss, _, margin = model_loss(c, p, inputs, targets)
        loss.backward()
        losses.append(loss.item())
        lm_losses.append(lm_loss.item())
        margins.append(margin)
    out["adamw.losses"] = torch.tensor(losses)
    out["adamw.lm_losses"] = torch.tensor(lm_losses)
    out["adamw.gradient_norms"] = torch.tensor(norms)
    for name in FINAL_TENSORS[kind]:
        out["adamw.final." + name] = p[name].detach().clone()
    return out, min(margins)


def make_batch():
    generator = torch.Generator().manual_seed(SEED)
    stream = torch.randint(0, MODEL_CONFIGS["dense"]["vocab_size"], (BATCH, LENGTH + 1), generator=generator)
    inputs, targets = stream[:, :-1].clone(), stream[:, 1:].clone()
    for b, t in IGNORED:
        targets[b, t] = -1
    return inputs, targets


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--remake-models", action="store_true", help="write dense/ and moe/ anew from the seed")
    args = parser.parse_args()
    for kind, seed in (("dense", 11), ("moe", 12)):
        if args.remake_models or not os.path.exists(os.path.join(HERE, kind, "model.safetensors")):
            make_model(kind, seed)
    torch.use_deterministic_algorithms(True)
    inputs, targets = make_batch()
    fixture = {"inputs": inputs.to(torch.int64), "targets": targets.to(torch.int64),
               "learning_rates": torch.tensor(LEARNING_RATES, dtype=torch.float32)}
    for kind in ("dense", "moe"):
        exact, margin = run(kind, torch.float64, inputs, targets)
        assert margin > MINIMUM_TOP_K_MARGIN, f"{kind}: a top-k choice is within {margin:.2e}; pick another seed"
        single, _ = run(kind, torch.float32, inputs, targets)
        worst = max((single[key].double() - value).abs().max().item() / max(value.abs().max().item(), 1e-30)
                    for key, value in exact.items())
        print(f"{kind}: loss {exact['loss'].item():.6f}, losses over the steps {[round(x, 6) for x in exact['adamw.losses'].tolist()]}, "
              f"gradient norms {[round(x, 4) for x in exact['adamw.gradient_norms'].tolist()]}, smallest top-k margin {margin:.2e}, "
              f"float32 run's largest relative difference {worst:.2e}")
        fixture.update({f"{kind}.{key}": value.to(torch.float32).contiguous() for key, value in exact.items()})
    save_file(fixture, os.path.join(HERE, "expected.safetensors"))
    print(f"wrote {os.path.join(HERE, 'expected.safetensors')}: {len(fixture)} tensors")


if __name__ == "__main__":
    main()

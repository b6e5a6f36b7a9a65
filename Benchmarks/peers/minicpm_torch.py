"""The PyTorch peers: MiniCPM in eager PyTorch, written the way Hugging Face's modeling files are.

- `SparseMoE`: the HF-style MoE block (Mixtral/MiniCPM-MoE): router logits, softmax, top-k,
  renormalise over the k, then a Python loop over experts, each gathering its tokens, running its
  SwiGLU MLP and `index_add_`-ing the weighted result back.
- `GroupedMoE`: the same layer through `torch._grouped_mm` (tokens sorted by expert, one grouped
  GEMM per projection), when the installed PyTorch has it on CPU.
- `MiniCPM`: embeddings × scale_emb, pre-norm blocks with `F.scaled_dot_product_attention`
  (causal, GQA by repeating K/V heads), residual branches × scale_depth/√L, final RMSNorm, the tied
  head ÷ (hidden/dim_model_base), cross-entropy — for the training-step peer (with torch.optim.AdamW).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, size, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden, intermediate):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SparseMoE(nn.Module):
    """x [T, H] → [T, H]; HF's loop over experts."""

    def __init__(self, hidden, intermediate, experts, top_k):
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(hidden, experts, bias=False)
        self.experts = nn.ModuleList([MLP(hidden, intermediate) for _ in range(experts)])

    def route(self, x):
        probabilities = F.softmax(self.gate(x), dim=-1, dtype=torch.float)
        weights, selected = torch.topk(probabilities, self.top_k, dim=-1)
        return (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype), selected

    def forward(self, x):
        weights, selected = self.route(x)
        out = torch.zeros_like(x)
        expert_mask = F.one_hot(selected, num_classes=len(self.experts)).permute(2, 1, 0)
        for index, expert in enumerate(self.experts):
            slot, token = torch.where(expert_mask[index])
            if token.numel() == 0:
                continue
            out.index_add_(0, token, expert(x[token]) * weights[token, slot, None])
        return out


def grouped_mm_function():
    """torch._grouped_mm (or torch.nn.functional.grouped_mm) when present, else None."""
    return getattr(torch, "_grouped_mm", None) or getattr(F, "grouped_mm", None)


class GroupedMoE(nn.Module):
    """The same layer with the experts' weights stacked and one grouped GEMM per projection."""

    def __init__(self, moe: SparseMoE):
        super().__init__()
        self.moe = moe
        self.top_k = moe.top_k
        self.w_gate = torch.stack([e.gate_proj.weight.t() for e in moe.experts]).contiguous()  # [E, H, I]
        self.w_up = torch.stack([e.up_proj.weight.t() for e in moe.experts]).contiguous()
        self.w_down = torch.stack([e.down_proj.weight.t() for e in moe.experts]).contiguous()  # [E, I, H]
        self.grouped_mm = grouped_mm_function()

    def forward(self, x):
        weights, selected = self.moe.route(x)
        flat = selected.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token = order // self.top_k
        counts = torch.bincount(flat, minlength=len(self.moe.experts))
        offsets = torch.cumsum(counts, 0).to(torch.int32)
        gathered = x[token]
        hidden = F.silu(self.grouped_mm(gathered, self.w_gate, offs=offsets)) * self.grouped_mm(gathered, self.w_up, offs=offsets)
        expert_out = self.grouped_mm(hidden, self.w_down, offs=offsets) * weights.reshape(-1)[order, None]
        return torch.zeros_like(x).index_add_(0, token, expert_out)


class Attention(nn.Module):
    def __init__(self, hidden, heads, kv_heads, theta):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)
        self.theta = theta

    def rope(self, x, positions):
        half = self.head_dim // 2
        frequencies = 1.0 / (self.theta ** (torch.arange(0, half, dtype=torch.float32) / half))
        angles = positions[:, None].float() * frequencies[None, :]
        cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
        rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos + rotated * sin

    def forward(self, x):
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        positions = torch.arange(length)
        q, k = self.rope(q, positions), self.rope(k, positions)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(batch, length, -1))


class Block(nn.Module):
    def __init__(self, c, experts, top_k):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.self_attn = Attention(c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["rope_theta"])
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.mlp = SparseMoE(c["hidden_size"], c["intermediate_size"], experts, top_k) if experts else MLP(c["hidden_size"], c["intermediate_size"])
        self.residual_scale = c["scale_depth"] / math.sqrt(c["num_hidden_layers"])

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x)) * self.residual_scale
        h = self.post_attention_layernorm(x)
        if isinstance(self.mlp, SparseMoE):
            shape = h.shape
            m = self.mlp(h.reshape(-1, shape[-1])).reshape(shape)
        else:
            m = self.mlp(h)
        return x + m * self.residual_scale


class MiniCPM(nn.Module):
    def __init__(self, c, experts=0, top_k=2, std=0.02):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList([Block(c, experts, top_k) for _ in range(c["num_hidden_layers"])])
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        for name, parameter in self.named_parameters():
            if parameter.dim() >= 2:
                nn.init.normal_(parameter, std=std)

    def forward(self, tokens, targets):
        c = self.c
        x = self.embed_tokens(tokens) * c["scale_emb"]
        for layer in self.layers:
            x = layer(x)
        logits = F.linear(self.norm(x), self.embed_tokens.weight) / (c["hidden_size"] / c["dim_model_base"])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

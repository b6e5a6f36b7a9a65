"""Router statistics from PyTorch, accumulated per optimizer step and written by rank 0.

The formulas are MoEKit's (docs/routing-log.md), for a layer whose router produced logits z
`[T, E]` over a step's T tokens (all micro-batches and all ranks):

    p = softmax(z)                          (f32)
    chosen = top-k of p                     (torch.topk; ties by index)
    expert_counts[i] = #{(t, slot): chosen[t, slot] = i}
    prob_mean[i]     = Σ_t p[t, i] / T
    aux_loss         = E · Σ_i f_i · prob_mean[i],   f_i = expert_counts[i] / (T · k)   (balanced: 1)
    z_loss           = Σ_t logsumexp(z[t])² / T
    entropy          = Σ_t (−Σ_i p[t, i] log p[t, i]) / T
    coactivation[i, j] = #{t: i and j both chosen}, i ≠ j

Only sums are accumulated (counts, Σp, Σ lse², Σ entropy, coactivation, T, Σ loss), so the
statistics of a step are exact whatever the micro-batching: under `torch.distributed` one
all-reduce (SUM) of those sums at `end_step` gives the global step, and rank 0 writes it.
"""

from __future__ import annotations

import json
import math
from typing import Iterable, Optional

import numpy as np
import torch

from .writer import LayerRow, RoutingLogWriter, StepRow


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class RoutingRecorder:
    """The plain hook API: `record(layer, logits)` for every MoE layer's router logits of every
    micro-batch, `end_step(step, ...)` once per optimizer step.

    Usable from any loop that sees router logits: a forward hook on a router module
    (`hook_module`), a wrapped Megatron-Core `TopKRouter.gating` (docs/scale-out.md), or direct
    calls. Every rank must call `end_step` (it all-reduces); only rank 0 opens and writes `path`.
    """

    def __init__(self, path: str, num_layers: int, num_experts: int, top_k: int, *, router: str = "",
                 model_config: str = "{}", source: str = "", mode: str = "create", process_group=None):
        self.path = path
        self.num_layers, self.num_experts, self.top_k = num_layers, num_experts, top_k
        self.process_group = process_group
        self.rank = torch.distributed.get_rank(process_group) if _distributed() else 0
        self.writer: Optional[RoutingLogWriter] = None
        if self.rank == 0:
            self.writer = RoutingLogWriter(path, num_layers, num_experts, top_k, router=router or f"top-{top_k} softmax",
                                           model_config=model_config, source=source, mode=mode)
        self._reset()

    def _reset(self) -> None:
        L, E = self.num_layers, self.num_experts
        self._counts = torch.zeros(L, E, dtype=torch.float64)
        self._prob_sum = torch.zeros(L, E, dtype=torch.float64)
        self._z_sum = torch.zeros(L, dtype=torch.float64)
        self._entropy_sum = torch.zeros(L, dtype=torch.float64)
        self._coactivation = torch.zeros(L, E, E, dtype=torch.float64)
        self._layer_tokens = torch.zeros(L, dtype=torch.float64)
        self._loss_sum = 0.0
        self._loss_count = 0.0
        self._lm_loss_sum = 0.0
        self._ce_sum = 0.0
        self._ce_tokens = 0.0
        self._aux_sum = 0.0
        self._aux_count = 0.0

    @torch.no_grad()
    def record(self, layer: int, logits: torch.Tensor, mask: Optional[torch.Tensor] = None) -> None:
        """Adds one micro-batch of router logits `[..., E]` of `layer`; `mask` (same leading
        shape, nonzero = real token) leaves out padding."""
        z = logits.detach().reshape(-1, self.num_experts).float()
        if mask is not None:
            z = z[mask.reshape(-1).to(z.device) != 0]
        if z.shape[0] == 0:
            return
        p = torch.softmax(z, dim=-1)
        chosen = torch.topk(p, self.top_k, dim=-1).indices
        onehot = torch.zeros_like(p).scatter_(1, chosen, 1.0)
        lse = torch.logsumexp(z, dim=-1)
        entropy = -(p * torch.log(p.clamp_min(torch.finfo(torch.float32).tiny))).sum(-1)
        co = onehot.T.double() @ onehot.double()
        co.fill_diagonal_(0)
        self._counts[layer] += onehot.sum(0).double().cpu()
        self._prob_sum[layer] += p.double().sum(0).cpu()
        self._z_sum[layer] += (lse.double() ** 2).sum().cpu()
        self._entropy_sum[layer] += entropy.double().sum().cpu()
        self._coactivation[layer] += co.cpu()
        self._layer_tokens[layer] += z.shape[0]

    def record_loss(self, loss: float, lm_loss: Optional[float] = None) -> None:
        """Adds one micro-batch's training loss (and language-model loss, without router terms);
        the step's are their means over micro-batches and ranks."""
        self._loss_sum += float(loss)
        self._lm_loss_sum += float(loss if lm_loss is None else lm_loss)
        self._loss_count += 1

    def record_token_loss(self, cross_entropy_sum: float, tokens: int, aux_loss: Optional[float] = None,
                          aux_coefficient: float = 0.0) -> None:
        """Adds one micro-batch's summed next-token cross-entropy over `tokens` predicted tokens
        (and its router auxiliary loss). The step's lm_loss is Σ cross-entropy / Σ tokens over
        micro-batches and ranks (the exact mean of the global batch, however it is sharded), its
        loss lm_loss + aux_coefficient · mean aux_loss. Takes precedence over `record_loss`."""
        self._ce_sum += float(cross_entropy_sum)
        self._ce_tokens += float(tokens)
        if aux_loss is not None:
            self._aux_sum += float(aux_loss)
            self._aux_count += 1
        self._aux_coefficient = float(aux_coefficient)

    def hook_module(self, module: torch.nn.Module, layer: int):
        """Registers a forward hook taking `module`'s output (or its first element) as the router
        logits of `layer`, recorded in training mode only. Returns the hook handle."""
        def hook(mod, inputs, output):
            if mod.training:
                self.record(layer, output[0] if isinstance(output, (tuple, list)) else output)
        return module.register_forward_hook(hook)

    def end_step(self, step: int, *, lr: float = float("nan"), grad_norm: float = float("nan"),
                 val_loss: float = float("nan"), write: bool = True) -> Optional[StepRow]:
        """All-reduces the step's sums (every rank must call it), and on rank 0 writes one row
        (with `write=False` only returns it, for `write_row` once more columns are known).
        Returns the row (rank 0) or None."""
        L, E = self.num_layers, self.num_experts
        flat = torch.cat([self._counts.flatten(), self._prob_sum.flatten(), self._z_sum, self._entropy_sum,
                          self._coactivation.flatten(), self._layer_tokens,
                          torch.tensor([self._loss_sum, self._loss_count, self._lm_loss_sum, self._ce_sum, self._ce_tokens,
                                        self._aux_sum, self._aux_count], dtype=torch.float64)])
        if _distributed():
            torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM, group=self.process_group)
        aux_coefficient = getattr(self, "_aux_coefficient", 0.0)
        self._reset()
        if self.rank != 0:
            return None
        values = flat.numpy()
        offset = 0

        def take(n, shape):
            nonlocal offset
            part = values[offset:offset + n].reshape(shape)
            offset += n
            return part

        counts = take(L * E, (L, E))
        prob_sum = take(L * E, (L, E))
        z_sum = take(L, (L,))
        entropy_sum = take(L, (L,))
        co = take(L * E * E, (L, E, E))
        layer_tokens = take(L, (L,))
        loss_sum, loss_count, lm_loss_sum, ce_sum, ce_tokens, aux_sum, aux_count = take(7, (7,))
        if ce_tokens > 0:
            lm_loss = ce_sum / ce_tokens
            loss = lm_loss + (aux_coefficient * aux_sum / aux_count if aux_count else 0.0)
        elif loss_count:
            loss, lm_loss = loss_sum / loss_count, lm_loss_sum / loss_count
        else:
            loss = lm_loss = float("nan")
        tokens = int(round(layer_tokens.max())) if L else 0
        if np.any(np.round(layer_tokens) != tokens):
            raise ValueError(f"{self.path}: step {step}: layers saw different token counts {layer_tokens.tolist()}")
        layers = []
        for l in range(L):
            T = max(tokens, 1)
            c = np.round(counts[l]).astype(np.int64)
            prob_mean = prob_sum[l] / T
            f = c / (T * self.top_k)
            layers.append(LayerRow(expert_counts=c, prob_mean=prob_mean.astype(np.float32),
                                   aux_loss=float(E * np.sum(f * prob_mean)), z_loss=float(z_sum[l] / T),
                                   entropy=float(entropy_sum[l] / T), dropped=0,
                                   coactivation=np.round(co[l]).astype(np.int64)))
        row = StepRow(step=step, tokens=tokens, layers=layers, loss=float(loss), lr=lr, lm_loss=float(lm_loss),
                      grad_norm=grad_norm, val_loss=val_loss)
        if write:
            self.write_row(row)
        return row

    def write_row(self, row: StepRow) -> None:
        """Appends a row `end_step(write=False)` returned (rank 0 only)."""
        assert self.writer is not None, "only rank 0 writes"
        self.writer.append(row)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

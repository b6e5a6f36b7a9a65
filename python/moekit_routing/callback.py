"""A transformers `TrainerCallback` that logs Mixtral-style routing to MoEKit's HDF5 schema."""

from __future__ import annotations

import json
import math
from typing import Optional

import torch
from transformers import TrainerCallback

from .recorder import RoutingRecorder


def _unwrap(model):
    while hasattr(model, "module") and isinstance(getattr(model, "module"), torch.nn.Module):
        model = model.module
    return model


class RoutingLogCallback(TrainerCallback):
    """Logs every optimizer step's routing to `path` (MoEKit's routing-log schema, version 2).

    Reads the router logits Mixtral (and Qwen-MoE, OLMoE, …) return with `output_router_logits`:
    on `on_train_begin` it sets `model.config.output_router_logits = True` (which also adds
    `router_aux_loss_coef · aux_loss` to the training loss, as Mixtral trains) and registers a
    forward hook on the model that records `outputs.router_logits` (one `[tokens, experts]` tensor
    per layer; padding left out through `attention_mask`), the cross-entropy of `outputs.logits`
    against `labels` and `outputs.aux_loss` of every training micro-batch. At `on_step_end` the
    sums are all-reduced over `torch.distributed` and rank 0 appends one row: step =
    `state.global_step`, lm_loss = Σ next-token cross-entropy / Σ tokens of the step's global batch,
    loss = lm_loss + router_aux_loss_coef · mean aux_loss, lr = the rate the step used, grad_norm
    the Trainer's (before clipping) when it logs that step (`logging_steps=1` logs every step; other
    steps get NaN). A row is written at its step's `on_log`, else at the next step: a killed run
    loses at most the last step.
    """

    def __init__(self, path: str, *, mode: str = "create"):
        self.path = path
        self.mode = mode
        self.recorder: Optional[RoutingRecorder] = None
        self._handle = None
        self._lr = float("nan")
        self._pending = None
        self._aux_coef = 0.0

    # MARK: hooks

    def _forward_hook(self, module, args, kwargs, output):
        if not module.training or self.recorder is None:
            return
        logits = getattr(output, "router_logits", None)
        if logits is None:
            return
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() != 2:
            mask = None  # a 4-D attention bias: no per-token padding mask to apply
        for layer, z in enumerate(logits):
            if z is None:
                continue
            if isinstance(z, (tuple, list)):
                z = z[0]
            self.recorder.record(layer, z, mask)
        # The step's loss from the logits: under DDP transformers divides each rank's summed loss by
        # the token count of all ranks (average_tokens_across_devices), so outputs.loss alone is
        # not the batch mean; Σ cross-entropy / Σ tokens over micro-batches and ranks is.
        labels = kwargs.get("labels")
        output_logits = getattr(output, "logits", None)
        aux = getattr(output, "aux_loss", None)
        aux = float(aux.detach()) if isinstance(aux, torch.Tensor) else None
        if labels is not None and output_logits is not None and output_logits.shape[:-1] == labels.shape:
            with torch.no_grad():
                shifted_logits = output_logits[..., :-1, :].reshape(-1, output_logits.shape[-1]).float()
                shifted_labels = labels[..., 1:].reshape(-1).to(shifted_logits.device)
                valid = shifted_labels != -100
                total = torch.nn.functional.cross_entropy(shifted_logits[valid], shifted_labels[valid], reduction="sum")
            self.recorder.record_token_loss(float(total), int(valid.sum()), aux, self._aux_coef)
        elif getattr(output, "loss", None) is not None:
            value = float(output.loss.detach())
            self.recorder.record_loss(value, value - self._aux_coef * aux if aux is not None else value)

    # MARK: TrainerCallback

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model = _unwrap(model)
        config = model.config
        config.output_router_logits = True
        experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
        top_k = getattr(config, "num_experts_per_tok", None)
        if not experts or not top_k:
            raise ValueError(f"{self.path}: the model's config has no num_local_experts/num_experts and num_experts_per_tok; not an MoE")
        self._aux_coef = float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0)
        layers = config.num_hidden_layers
        router = f"top-{top_k} softmax ({type(model).__name__}), router_aux_loss_coef {self._aux_coef}"
        self.recorder = RoutingRecorder(self.path, layers, int(experts), int(top_k), router=router,
                                        model_config=config.to_json_string(), source=str(getattr(config, "_name_or_path", "")),
                                        mode=self.mode)
        self._handle = model.register_forward_hook(self._forward_hook, with_kwargs=True)

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        # The rate this step used (the Trainer logs it the same way, before the scheduler steps).
        if optimizer is not None and optimizer.param_groups:
            self._lr = float(optimizer.param_groups[0]["lr"])

    def on_step_end(self, args, state, control, **kwargs):
        if self.recorder is None:
            return
        self._flush()
        row = self.recorder.end_step(state.global_step, lr=self._lr, write=False)
        self._lr = float("nan")
        self._pending = row  # written at this step's on_log (which brings grad_norm) or the next step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending is not None and self._pending.step == state.global_step and logs and "grad_norm" in logs:
            self._pending.grad_norm = float(logs["grad_norm"])
        self._flush()

    def _flush(self):
        if self._pending is not None and self.recorder is not None:
            self.recorder.write_row(self._pending)
        self._pending = None

    def on_train_end(self, args, state, control, **kwargs):
        self._flush()
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None

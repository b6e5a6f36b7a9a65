"""MoEKit's routing-log HDF5 file, written with h5py (schema: docs/routing-log.md).

The file is written as MoEKit's own `RoutingLogWriter` writes it: the latest HDF5 format, every
dataset created (chunked, deflate level 1, unlimited first axis) before SWMR writing starts, and
after each step every dataset extended by one row, written and the file flushed, `/steps/*` last.
A reader opening it with SWMR (`h5py.File(p, "r", swmr=True)`, `moekit inspect`) sees every
completed step; a killed writer loses at most the step in flight. A new log is prepared under a
temporary name beside the target and moved into place before the first step.
"""

from __future__ import annotations

import datetime
import json
import os
import random
from dataclasses import dataclass, field
from typing import Optional, Sequence

import h5py
import numpy as np

FORMAT = "moekit-routing"
VERSION = 2
# Version 3: routers whose active experts vary per token (ReLU routing), `variable_k` = 1.
VARIABLE_K_VERSION = 3

# name, dtype, trailing shape (in terms of L, E), as RoutingLogSchema.datasets lists them.
_ROUTING = [
    ("routing/expert_counts", "<i8", ("L", "E")),
    ("routing/prob_mean", "<f4", ("L", "E")),
    ("routing/aux_loss", "<f4", ("L",)),
    ("routing/z_loss", "<f4", ("L",)),
    ("routing/entropy", "<f4", ("L",)),
    ("routing/dropped", "<i8", ("L",)),
    ("routing/coactivation", "<i8", ("L", "E", "E")),
]
_STEPS = [
    ("steps/step", "<i8", ()),
    ("steps/tokens", "<i8", ()),
    ("steps/loss", "<f4", ()),
    ("steps/lr", "<f4", ()),
    ("steps/lm_loss", "<f4", ()),
    ("steps/grad_norm", "<f4", ()),
    ("steps/val_loss", "<f4", ()),
]


class RoutingLogError(Exception):
    """A step that breaks the schema (names the file, step and layer), or a file that is not a log."""


@dataclass
class LayerRow:
    """One MoE layer's statistics for one step (see docs/routing-log.md for each formula)."""

    expert_counts: np.ndarray  # [E] int64, assignments after drops
    prob_mean: np.ndarray  # [E] float32, mean router probability
    aux_loss: float  # Switch loss E·Σ f_i·P_i, f_i = count_i/(T·k); balanced = 1
    z_loss: float  # mean over tokens of logsumexp(logits)²
    entropy: float  # mean per-token entropy of the probabilities, nats
    dropped: int = 0
    coactivation: Optional[np.ndarray] = None  # [E, E] int64, symmetric, diagonal 0
    # [E + 1] int64: tokens with exactly n active experts; required exactly in variable-k logs (v3)
    active_experts: Optional[np.ndarray] = None


@dataclass
class StepRow:
    step: int
    tokens: int
    layers: Sequence[LayerRow]
    loss: float = float("nan")
    lr: float = float("nan")
    lm_loss: float = float("nan")
    grad_norm: float = float("nan")
    val_loss: float = float("nan")


def _chunk_rows(trailing: Sequence[int], element_bytes: int) -> int:
    """About 8 KiB per chunk, at most 64 step rows (RoutingLogSchema.chunkRows)."""
    row = max(1, int(np.prod(trailing, dtype=np.int64)) * element_bytes) if trailing else element_bytes
    return max(1, min(64, 8192 // row))


class RoutingLogWriter:
    """Writes a training routing log (schema version 2, `training` = 1) one step at a time.

    `mode`: "create" refuses an existing path, "replace" replaces it. `variable_k=True` (a router
    whose active experts vary per token, e.g. ReMoE's ReLU routing) writes schema version 3: `top_k`
    is then the target k, and each layer row carries its `active_experts` histogram.
    """

    def __init__(self, path: str, num_layers: int, num_experts: int, top_k: int, *, router: str = "",
                 model_config: str = "{}", source: str = "", mode: str = "create", variable_k: bool = False):
        if not (num_layers >= 1 and 1 <= num_experts <= 32767 and 1 <= top_k <= num_experts):
            raise RoutingLogError(f"{path}: {num_layers} layers, {num_experts} experts, top-{top_k} is not a valid MoE shape")
        if mode not in ("create", "replace"):
            raise ValueError(f"mode must be 'create' or 'replace', got {mode!r}")
        if mode == "create" and os.path.exists(path):
            raise RoutingLogError(f"{path}: already exists")
        self.path = path
        self.num_layers, self.num_experts, self.top_k = num_layers, num_experts, top_k
        self.variable_k = variable_k
        self.last_step: Optional[int] = None
        self.step_count = 0
        directory, name = os.path.split(os.path.abspath(path))
        temporary = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{random.getrandbits(32)}")
        sizes = {"L": num_layers, "E": num_experts, "E+1": num_experts + 1}
        try:
            self._file = h5py.File(temporary, "w", libver=("v110", "v110"))
            attrs = self._file.attrs
            attrs["format"] = FORMAT
            attrs["version"] = np.int64(VARIABLE_K_VERSION if variable_k else VERSION)
            attrs["num_layers"] = np.int64(num_layers)
            attrs["num_experts"] = np.int64(num_experts)
            attrs["top_k"] = np.int64(top_k)
            attrs["router"] = router
            attrs["model_config"] = model_config
            attrs["source"] = source
            attrs["created"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            attrs["training"] = np.int64(1)
            if variable_k:
                attrs["variable_k"] = np.int64(1)
            self._file.create_group("routing")
            self._file.create_group("steps")
            self._datasets = []
            extra = [("routing/active_experts", "<i8", ("L", "E+1"))] if variable_k else []
            for dataset_name, dtype, axes in _ROUTING + extra + _STEPS:
                trailing = tuple(sizes[a] for a in axes)
                element = np.dtype(dtype).itemsize
                dataset = self._file.create_dataset(
                    dataset_name, shape=(0,) + trailing, maxshape=(None,) + trailing, dtype=dtype,
                    chunks=(_chunk_rows(trailing, element),) + trailing, compression="gzip", compression_opts=1)
                self._datasets.append(dataset)
            self._file.swmr_mode = True
            self._file.flush()
            if mode == "replace":
                os.replace(temporary, path)
            else:
                os.link(temporary, path)  # refuses an existing destination atomically
                os.unlink(temporary)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise

    def validate(self, row: StepRow) -> None:
        """Checks sizes and the invariant Σ_i expert_counts[l, i] = tokens·k − dropped[l]; in a
        variable-k log Σ_i expert_counts[l, i] = Σ_n n·active_experts[l, n] with Σ_n active_experts[l, n] = tokens."""
        L, E, k = self.num_layers, self.num_experts, self.top_k
        if self.last_step is not None and row.step <= self.last_step:
            raise RoutingLogError(f"{self.path}: step {row.step} is not after the last step {self.last_step}")
        if row.tokens < 0:
            raise RoutingLogError(f"{self.path}: step {row.step}: negative token count {row.tokens}")
        if len(row.layers) != L:
            raise RoutingLogError(f"{self.path}: step {row.step}: {len(row.layers)} layers of statistics, the log has {L}")
        for index, layer in enumerate(row.layers):
            counts = np.asarray(layer.expert_counts)
            if counts.shape != (E,) or np.asarray(layer.prob_mean).shape != (E,):
                raise RoutingLogError(f"{self.path}: step {row.step}, layer {index}: expected {E} experts")
            if self.variable_k:
                if layer.active_experts is None or np.asarray(layer.active_experts).shape != (E + 1,):
                    raise RoutingLogError(f"{self.path}: step {row.step}, layer {index}: a variable-k log needs active_experts of {E + 1} values")
                histogram = np.asarray(layer.active_experts, dtype=np.int64)
                if np.any(histogram < 0) or int(histogram.sum()) != row.tokens:
                    raise RoutingLogError(f"{self.path}: step {row.step}, layer {index}: active_experts does not count {row.tokens} tokens")
                expected = int((np.arange(E + 1) * histogram).sum())
                what = "Σ n·active_experts[n]"
            else:
                if layer.active_experts is not None:
                    raise RoutingLogError(f"{self.path}: step {row.step}, layer {index}: active_experts given, but the log is not variable-k")
                expected = row.tokens * k - int(layer.dropped)
                what = "tokens·k − dropped"
            if int(counts.sum()) != expected:
                raise RoutingLogError(f"{self.path}: step {row.step}, layer {index}: expert counts sum to {int(counts.sum())}, "
                                      f"expected {what} = {expected}")
            if layer.coactivation is not None:
                co = np.asarray(layer.coactivation)
                if co.shape != (E, E) or np.any(np.diag(co) != 0):
                    raise RoutingLogError(f"{self.path}: step {row.step}, layer {index}: coactivation must be [{E}, {E}] with a zero diagonal")

    def append(self, row: StepRow) -> None:
        """Validates the step, appends one row to every dataset (`/steps/*` last) and flushes."""
        self.validate(row)
        L, E = self.num_layers, self.num_experts
        layers = row.layers
        values = {
            "routing/expert_counts": np.stack([np.asarray(l.expert_counts, dtype=np.int64) for l in layers]),
            "routing/prob_mean": np.stack([np.asarray(l.prob_mean, dtype=np.float32) for l in layers]),
            "routing/aux_loss": np.array([l.aux_loss for l in layers], dtype=np.float32),
            "routing/z_loss": np.array([l.z_loss for l in layers], dtype=np.float32),
            "routing/entropy": np.array([l.entropy for l in layers], dtype=np.float32),
            "routing/dropped": np.array([l.dropped for l in layers], dtype=np.int64),
            "routing/coactivation": np.stack([np.zeros((E, E), np.int64) if l.coactivation is None
                                              else np.asarray(l.coactivation, dtype=np.int64) for l in layers]),
            **({"routing/active_experts": np.stack([np.asarray(l.active_experts, dtype=np.int64) for l in layers])}
               if self.variable_k else {}),
            "steps/step": np.int64(row.step),
            "steps/tokens": np.int64(row.tokens),
            "steps/loss": np.float32(row.loss),
            "steps/lr": np.float32(row.lr),
            "steps/lm_loss": np.float32(row.lm_loss),
            "steps/grad_norm": np.float32(row.grad_norm),
            "steps/val_loss": np.float32(row.val_loss),
        }
        n = self.step_count
        for dataset in self._datasets:
            key = dataset.name.lstrip("/")
            dataset.resize(n + 1, axis=0)
            dataset[n] = values[key]
        self._file.flush()
        self.step_count = n + 1
        self.last_step = row.step

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

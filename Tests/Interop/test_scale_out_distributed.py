"""Routing logs from distributed training: `torchrun --nproc_per_node 2` (CPU, gloo on loopback) runs HF
Trainer on the exported tiny Mixtral with moekit_routing.RoutingLogCallback. The log's counts equal a
single-process recomputation over the same batches from the same weights (and the language-model
loss the batch mean of both ranks' tokens), its schema is MoEKit's (h5py with SWMR), and `moekit
inspect` and both notebooks read it."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import torch
from transformers import MixtralForCausalLM

from scale_out_models import write_minicpm
from test_train import execute_notebook

REPO = Path(__file__).resolve().parents[2]
STEPS = 3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference_statistics(logits, top_k):
    """MoEKit's per-layer statistics (docs/routing-log.md) in numpy float64, from router logits [T, E]."""
    z = logits.astype(np.float64)
    shifted = z - z.max(1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
    chosen = np.argsort(-p, axis=1, kind="stable")[:, :top_k]
    T, E = p.shape
    counts = np.bincount(chosen.reshape(-1), minlength=E)
    prob_mean = p.mean(0)
    aux = E * np.sum(counts / (T * top_k) * prob_mean)
    lse = np.log(np.exp(shifted).sum(1)) + z.max(1)
    entropy = -(p * np.log(p)).sum(1).mean()
    return counts, prob_mean, aux, (lse ** 2).mean(), entropy


def test_torchrun_two_ranks_log_equals_single_process_recomputation(tmp_path, run_moekit):
    source = write_minicpm(str(tmp_path / "minicpm"), experts=4, top_k=2, seed=5)
    mixtral = str(tmp_path / "mixtral")
    run_moekit("export", source, mixtral, "--format", "mixtral", "--dtype", "f32", "--quiet")
    log, out = tmp_path / "routing.h5", tmp_path / "run"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1",
               PYTHONPATH=os.pathsep.join([str(REPO / "python"), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               str(REPO / "Tests/Interop/scale_out_train.py"), "--model", mixtral, "--routing-log", str(log), "--out", str(out),
               "--steps", str(STEPS)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]

    with h5py.File(log, "r", libver="latest", swmr=True) as f:
        assert f.attrs["format"] == "moekit-routing" and f.attrs["version"] == 2 and f.attrs["training"] == 1
        L, E, k = (int(f.attrs[a]) for a in ("num_layers", "num_experts", "top_k"))
        assert (L, E, k) == (2, 4, 2)
        assert json.loads(f.attrs["model_config"])["model_type"] == "mixtral"
        steps = f["steps/step"][:]
        tokens = f["steps/tokens"][:]
        counts = f["routing/expert_counts"][:]
        prob_mean = f["routing/prob_mean"][:]
        aux, z_loss, entropy = f["routing/aux_loss"][:], f["routing/z_loss"][:], f["routing/entropy"][:]
        coactivation = f["routing/coactivation"][:]
        loss, lr, lm_loss = f["steps/loss"][:], f["steps/lr"][:], f["steps/lm_loss"][:]
        for name in ("routing/dropped", "steps/grad_norm", "steps/val_loss"):
            assert f[name].shape[0] == STEPS
    assert steps.tolist() == list(range(1, STEPS + 1))
    assert np.all(np.isfinite(loss)) and np.all(lm_loss < loss) and np.all(np.isfinite(lr)) and lr[0] > lr[-1] > 0

    # Single process: the weights each step started from, both ranks' batches together.
    for s in range(1, STEPS + 1):
        ids = np.concatenate([np.load(out / f"inputs-{s}-r{rank}.npy") for rank in (0, 1)])
        assert tokens[s - 1] == ids.size == 2 * 2 * 16
        model = MixtralForCausalLM.from_pretrained(mixtral, dtype=torch.float32)
        model.load_state_dict(torch.load(out / f"weights-{s}.pt"))
        model.eval()
        with torch.no_grad():
            router_logits = model(torch.tensor(ids), output_router_logits=True).router_logits
            cross_entropy = model(torch.tensor(ids), labels=torch.tensor(ids), output_router_logits=False).loss
        assert np.isclose(lm_loss[s - 1], float(cross_entropy), rtol=1e-5)
        for layer in range(L):
            c, p, a, zl, h = reference_statistics(router_logits[layer].numpy(), k)
            assert counts[s - 1, layer].tolist() == c.tolist(), (s, layer)
            assert np.allclose(prob_mean[s - 1, layer], p, rtol=1e-5, atol=1e-6)
            assert np.isclose(aux[s - 1, layer], a, rtol=1e-5)
            assert np.isclose(z_loss[s - 1, layer], zl, rtol=1e-5)
            assert np.isclose(entropy[s - 1, layer], h, rtol=1e-5)
            assert coactivation[s - 1, layer].sum() == ids.size * k * (k - 1)  # each token's k(k−1) ordered pairs
            assert np.array_equal(coactivation[s - 1, layer], coactivation[s - 1, layer].T)

    summary = json.loads(run_moekit("inspect", str(log), "--json").stdout)
    assert len(summary["layers"]) == L and summary["training"]
    assert "MixtralForCausalLM" in run_moekit("inspect", str(log)).stdout

    # Both notebooks read it (the training one without domains plots loss and load, not specialisation).
    images, text = execute_notebook("training-analysis.ipynb", {"MOEKIT_TRAINING_LOG": str(log),
                                                                "MOEKIT_DENSE_LOG": str(tmp_path / "absent.h5")}, tmp_path)
    assert len(images) == 2 and "invariants hold" in text and "no domain counts" in text
    images, text = execute_notebook("routing-analysis.ipynb", {"MOEKIT_ROUTING_LOG": str(log)}, tmp_path)
    assert len(images) == 3 and f"{STEPS} complete steps" in text


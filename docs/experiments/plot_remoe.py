"""Table and figure of docs/experiments/remoe.md from remoe.sh's logs.

usage: python plot_remoe.py RUN_DIR FIGURE_PATH

Reads RUN_DIR/{topk-8e-k2,remoe-8e-k2}.h5 (MoEKit training logs; the ReMoE one is schema 3 with
/routing/active_experts). Prints per run the training loss (20-step means), the validation losses,
and for ReMoE the realised sparsity 1 − (mean active experts per token)/E, mean over the MoE layers,
at a few steps and over the last 25, against the target 1 − k/E. Plots realised sparsity per step
(left) and the training-loss difference ReMoE − top-k (right).
"""
import sys
import h5py
import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from experiment_stats import smooth

run_dir, figure_path = sys.argv[1], sys.argv[2]


def load(name):
    with h5py.File(f"{run_dir}/{name}.h5", "r") as f:
        d = {k: f["steps/" + k][:] for k in ("step", "tokens", "lm_loss", "val_loss")}
        d["version"] = int(f.attrs["version"])
        d["E"], d["k"] = int(f.attrs["num_experts"]), int(f.attrs["top_k"])
        if "routing/active_experts" in f:
            h = f["routing/active_experts"][:].astype(float)  # [S, L, E + 1]
            n = np.arange(h.shape[2])
            mean_active = (h * n).sum(axis=2) / h.sum(axis=2)  # [S, L]
            d["active"] = mean_active.mean(axis=1)
            d["sparsity"] = 1 - d["active"] / d["E"]
            d["zero_active"] = h[:, :, 0].sum(axis=1) / h.sum(axis=(1, 2))  # share of (token, layer) with no expert
    return d


runs = {name: load(name) for name in ("topk-8e-k2", "remoe-8e-k2")}
print("| run | schema | train loss, first / last 20 steps | validation (steps) |")
print("| --- | --- | --- | --- |")
for name, d in runs.items():
    v, ev = d["val_loss"], ~np.isnan(d["val_loss"])
    val = " / ".join(f"{x:.4f}" for x in v[ev]) + " (" + ", ".join(str(int(s)) for s in d["step"][ev]) + ")"
    print(f"| {name} | {d['version']} | {smooth(d['lm_loss'])[0]:.4f} / {smooth(d['lm_loss'])[-1]:.4f} | {val} |")
r = runs["remoe-8e-k2"]
target = 1 - r["k"] / r["E"]
print()
print(f"ReMoE realised sparsity (target 1 − k/E = {target:.3f}); mean active experts per token in brackets")
marks = [s for s in (0, 10, 25, 50, 75, 100, 125) if s < len(r["step"])] + [len(r["step"]) - 1]
print("| step | " + " | ".join(str(int(r["step"][i])) for i in marks) + " | last 25 steps |")
print("| --- |" + " --- |" * (len(marks) + 1))
print("| sparsity | " + " | ".join(f"{r['sparsity'][i]:.3f} ({r['active'][i]:.2f})" for i in marks)
      + f" | {r['sparsity'][-25:].mean():.3f} ({r['active'][-25:].mean():.2f}) |")
print(f"tokens with no active expert, last 25 steps: {100 * r['zero_active'][-25:].mean():.1f} % of (token, layer)")

fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
left.plot(r["step"], r["sparsity"], label="ReMoE realised sparsity (mean over layers)")
left.axhline(target, color="grey", linestyle="--", label=f"target 1 − k/E = {target:.2f}")
left.set(xlabel="step", ylabel="fraction of zero gates", title="ReMoE: realised sparsity per step", ylim=(0, 1))
left.legend(fontsize=8)
t = runs["topk-8e-k2"]
right.plot(r["step"][19:], smooth(r["lm_loss"] - t["lm_loss"]), label="ReMoE − top-2 (20-step mean)")
ev = ~np.isnan(r["val_loss"])
right.plot(r["step"][ev], r["val_loss"][ev] - t["val_loss"][ev], "o", label="validation")
right.axhline(0, color="grey", linewidth=0.8)
right.set(xlabel="step", ylabel="loss difference (nats/token)", title="language-model loss at equal steps")
right.legend(fontsize=8)
fig.tight_layout()
fig.savefig(figure_path, dpi=110)

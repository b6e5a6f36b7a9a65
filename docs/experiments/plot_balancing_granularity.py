"""Figure and table of docs/experiments/balancing-granularity.md from balancing-granularity.sh's logs.

usage: python plot_balancing_granularity.py RUN_DIR FIGURE_PATH

Reads RUN_DIR/{micro,global}-aux<c>.h5 (MoEKit training logs, schema 2) for every coefficient c
found. Per run it prints the training loss (20-step means at the start and the end), the
validation losses, the global batch's load balance (coefficient of variation of the expert
counts per step, mean over steps and layers: 0 is perfectly balanced) and I(domain; expert) in
bits over 25-step windows, computed from /routing/domain_counts as `moekit inspect` computes it.
"""
import os
import sys
import h5py
import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from experiment_stats import mutual_information, smooth

run_dir, figure_path = sys.argv[1], sys.argv[2]
WINDOW = 25


def load(name):
    with h5py.File(f"{run_dir}/{name}.h5", "r") as f:
        d = {k: f["steps/" + k][:] for k in ("step", "lm_loss", "val_loss")}
        dc = f["routing/domain_counts"][:].astype(float)   # [S, L, D, E]
        counts = f["routing/expert_counts"][:].astype(float)  # [S, L, E]
    steps, layers = dc.shape[0], dc.shape[1]
    windows = [(s, min(s + WINDOW, steps)) for s in range(0, steps, WINDOW)]
    d["mi_steps"] = np.array([d["step"][b - 1] for _, b in windows])
    d["mi"] = np.array([[mutual_information(dc[a:b, l].sum(axis=0)) for l in range(layers)] for a, b in windows])
    d["cv"] = (counts.std(axis=2) / counts.mean(axis=2)).mean(axis=1)  # per step, mean over layers
    return d


coefficients = sorted({f[len("micro-aux"):-3] for f in os.listdir(run_dir) if f.startswith("micro-aux") and f.endswith(".h5")}, key=float)
runs = {}
for c in coefficients:
    for balance in ("micro", "global"):
        name = f"{balance}-aux{c}"
        if os.path.exists(f"{run_dir}/{name}.h5"):
            runs[name] = load(name)

print("| run | train loss, first / last 20 steps | validation (steps) | load CV of the global batch, first / last 25 steps | I(domain; expert) bits, first / last 25 steps |")
print("| --- | --- | --- | --- | --- |")
for name, d in runs.items():
    v, ev = d["val_loss"], ~np.isnan(d["val_loss"])
    val = " / ".join(f"{x:.4f}" for x in v[ev]) + " (" + ", ".join(str(int(s)) for s in d["step"][ev]) + ")"
    print(f"| {name} | {smooth(d['lm_loss'])[0]:.4f} / {smooth(d['lm_loss'])[-1]:.4f} | {val} | "
          f"{d['cv'][:25].mean():.3f} / {d['cv'][-25:].mean():.3f} | {d['mi'][0].mean():.3f} / {d['mi'][-1].mean():.3f} |")
print()
for name, d in runs.items():
    print(f"{name}: I(domain; expert) per layer, last window: " + ", ".join(f"{x:.3f}" for x in d["mi"][-1])
          + "; mean over layers per window: " + ", ".join(f"{int(s)}:{x:.3f}" for s, x in zip(d["mi_steps"], d["mi"].mean(axis=1))))

fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4))
for name, d in runs.items():
    style = "-" if name.startswith("global") else "--"
    left.plot(d["mi_steps"], d["mi"].mean(axis=1), "o" + style, label=name)
    middle.plot(d["step"][:len(smooth(d["cv"]))], smooth(d["cv"]), style, label=name)
for c in coefficients:
    g, m = runs.get(f"global-aux{c}"), runs.get(f"micro-aux{c}")
    if g is not None and m is not None:
        right.plot(g["step"][19:], smooth(g["lm_loss"] - m["lm_loss"]), label=f"global − micro, aux {c}")
right.axhline(0, color="grey", linewidth=0.8)
left.set(xlabel="step", ylabel="I(domain; expert), bits (mean over layers)", title=f"expert specialisation, {WINDOW}-step windows")
middle.set(xlabel="step", ylabel="CV of expert counts (global batch)", title="load balance of the global batch (20-step mean)")
right.set(xlabel="step", ylabel="training loss difference (nats/token)", title="global minus micro (same batches), 20-step mean")
for axis in (left, middle, right):
    axis.legend(fontsize=7)
fig.tight_layout()
fig.savefig(figure_path, dpi=110)

"""Table and figure of docs/experiments/shared-experts.md from shared-experts.sh's logs.

usage: python plot_shared_experts.py RUN_DIR FIGURE_PATH

Reads RUN_DIR/{routed8-top2,shared1-routed7-top1}-sS.h5 (MoEKit training logs, schema 2). Prints per
run the training loss (20-step means), the validation losses, the routed experts' load balance
(CV of the expert counts per step, mean over steps and layers) and I(domain; expert) over the
routed experts in bits (25-step windows, from /routing/domain_counts as `moekit inspect`
computes it). Shared experts are not routed, so they appear in none of the routing figures.
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
        dc = f["routing/domain_counts"][:].astype(float)
        counts = f["routing/expert_counts"][:].astype(float)
    steps, layers = dc.shape[0], dc.shape[1]
    windows = [(s, min(s + WINDOW, steps)) for s in range(0, steps, WINDOW)]
    d["mi_steps"] = np.array([d["step"][b - 1] for _, b in windows])
    d["mi"] = np.array([[mutual_information(dc[a:b, l].sum(axis=0)) for l in range(layers)] for a, b in windows])
    d["cv"] = (counts.std(axis=2) / counts.mean(axis=2)).mean(axis=1)
    return d


names = sorted(f[:-3] for f in os.listdir(run_dir) if f.endswith(".h5") and (f.startswith("routed8") or f.startswith("shared1")))
runs = {name: load(name) for name in names}
print("| run | train loss, first / last 20 steps | validation (steps) | load CV, last 25 steps | I(domain; routed expert) bits, first / last 25 steps |")
print("| --- | --- | --- | --- | --- |")
for name, d in runs.items():
    v, ev = d["val_loss"], ~np.isnan(d["val_loss"])
    val = " / ".join(f"{x:.4f}" for x in v[ev]) + " (" + ", ".join(str(int(s)) for s in d["step"][ev]) + ")"
    print(f"| {name} | {smooth(d['lm_loss'])[0]:.4f} / {smooth(d['lm_loss'])[-1]:.4f} | {val} | {d['cv'][-25:].mean():.3f} | "
          f"{d['mi'][0].mean():.3f} / {d['mi'][-1].mean():.3f} |")

fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
seeds = sorted({n.rsplit("-s", 1)[1] for n in names})
for seed in seeds:
    a, b = runs.get(f"shared1-routed7-top1-s{seed}"), runs.get(f"routed8-top2-s{seed}")
    if a is not None and b is not None:
        line, = left.plot(a["step"][19:], smooth(a["lm_loss"] - b["lm_loss"]), label=f"shared 1 + top-1 of 7 − top-2 of 8, seed {seed}")
        ev = ~np.isnan(a["val_loss"])
        left.plot(a["step"][ev], a["val_loss"][ev] - b["val_loss"][ev], "o", color=line.get_color())
for name, d in runs.items():
    right.plot(d["mi_steps"], d["mi"].mean(axis=1), "o-", label=name)
left.axhline(0, color="grey", linewidth=0.8)
left.set(xlabel="step", ylabel="loss difference (nats/token)", title="training (20-step mean) and validation (dots)")
right.set(xlabel="step", ylabel="I(domain; routed expert), bits", title=f"routed experts' specialisation, {WINDOW}-step windows")
left.legend(fontsize=7)
right.legend(fontsize=7)
fig.tight_layout()
fig.savefig(figure_path, dpi=110)

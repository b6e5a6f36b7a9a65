"""Figures and numbers of docs/training.md from the logs training-experiments.sh writes.

usage: python plot_training_experiments.py DENSE_WSD.h5 MOE_AUX.h5 MOE_NOAUX.h5 OUT_DIR
"""
import sys
import h5py
import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from experiment_stats import smooth


def load(path):
    with h5py.File(path, "r") as f:
        d = {name: f["steps/" + name][:] for name in ("step", "loss", "lm_loss", "lr", "val_loss")}
        if "routing" in f:
            counts = f["routing/expert_counts"][:].astype(float)
            d["cv"] = counts.std(axis=2) / counts.mean(axis=2)
    return d


dense, aux, noaux, out = load(sys.argv[1]), load(sys.argv[2]), load(sys.argv[3]), sys.argv[4]

fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(dense["step"][19:], smooth(dense["lm_loss"]), label="training loss (20-step mean)")
evaluated = ~np.isnan(dense["val_loss"])
ax.plot(dense["step"][evaluated], dense["val_loss"][evaluated], "o-", label="validation loss")
ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title="WSD: the decay phase (last 10%) lowers the loss", ylim=(1.8, 3.0))
twin = ax.twinx()
twin.plot(dense["step"], dense["lr"], color="grey", linestyle="--", label="learning rate")
twin.set_ylabel("learning rate")
ax.legend(loc="upper right")
fig.tight_layout()
fig.savefig(f"{out}/wsd-dense.png", dpi=110)

fig, ax = plt.subplots(figsize=(7, 4))
for d, label in ((aux, "load-balancing loss 0.01"), (noaux, "no balancing loss")):
    ax.plot(d["step"][9:], smooth(d["cv"].mean(axis=1), 10), label=label)
ax.set(xlabel="step", ylabel="CV of expert counts (mean over layers, 10-step mean)", title="Upcycled 8x top-2: expert load balance")
ax.legend()
fig.tight_layout()
fig.savefig(f"{out}/balance-cv.png", dpi=110)

for name, d in (("dense WSD", dense), ("MoE aux 0.01", aux), ("MoE aux 0", noaux)):
    v = d["val_loss"]
    print(name, "validation:", ", ".join(f"step {int(s)} {x:.4f} (lr {lr:.2e})" for s, x, lr in zip(d["step"][~np.isnan(v)], v[~np.isnan(v)], d["lr"][~np.isnan(v)])))
    if "cv" in d:
        print(f"  CV first 10 steps {d['cv'][:10].mean():.3f}, last 20 steps per layer {np.round(d['cv'][-20:].mean(axis=0), 3)} (mean {d['cv'][-20:].mean():.3f})")

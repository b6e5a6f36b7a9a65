"""Figures and tables of docs/experiments/upcycling-methods.md from upcycling-methods.sh's logs.

usage: python plot_upcycling_methods.py RUN_DIR FIGURE_DIR

Reads RUN_DIR/{copy8, copy8-u002-sS, drop8-sS, btx5-sS, copy5-sS}.h5 for the seeds S found
(MoEKit training logs, schema 2). For each run it prints the training loss (20-step mean) and the
validation loss at the evaluated steps, and I(domain; expert) in bits per layer over windows of
25 steps, computed from /routing/domain_counts as `moekit inspect` computes it:
I = Σ p(d,e) log2(p(d,e) / (p(d) p(e))) over assignments. For the BTX runs it also prints, per
window, the share of each domain's assignments that go to the expert branched on that domain
(1/5 when routing ignores the domain).
"""
import sys
import h5py
import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from experiment_stats import mutual_information, smooth

run_dir, figure_dir = sys.argv[1], sys.argv[2]
WINDOW = 25


def load(name):
    with h5py.File(f"{run_dir}/{name}.h5", "r") as f:
        d = {k: f["steps/" + k][:] for k in ("step", "lm_loss", "val_loss")}
        dc = f["routing/domain_counts"][:].astype(float)  # [S, L, D, E]
    steps, layers = dc.shape[0], dc.shape[1]
    windows = [(s, min(s + WINDOW, steps)) for s in range(0, steps, WINDOW)]
    d["mi_steps"] = np.array([d["step"][b - 1] for _, b in windows])
    d["mi"] = np.array([[mutual_information(dc[a:b, l].sum(axis=0)) for l in range(layers)] for a, b in windows])
    d["mi_last"] = d["mi"][-1]
    # share of domain d's assignments to expert d, mean over layers, per window (BTX: expert d = branch d)
    if dc.shape[2] == dc.shape[3]:
        d["own_share"] = np.array([[np.mean([dc[a:b, l, i, i].sum() / dc[a:b, l, i].sum() for l in range(layers)])
                                    for i in range(dc.shape[2])] for a, b in windows])
    return d


def report(title, runs):
    print(f"== {title}")
    for name, label in runs:
        d = RUNS[name]
        v = d["val_loss"]
        ev = ~np.isnan(v)
        print(f"{name} ({label}): train loss (20-step mean) first {smooth(d['lm_loss'])[0]:.4f}, last {smooth(d['lm_loss'])[-1]:.4f}; "
              f"step-0 loss {d['lm_loss'][0]:.4f}")
        print("   validation: " + ", ".join(f"step {int(s)} {x:.4f}" for s, x in zip(d["step"][ev], v[ev])))
        print("   I(domain; expert) bits per layer, last window: " + ", ".join(f"{x:.3f}" for x in d["mi_last"])
              + f"  (mean {d['mi_last'].mean():.3f})")
        print("   I(domain; expert) mean over layers per window: " + ", ".join(f"{int(s)}:{x:.3f}" for s, x in zip(d["mi_steps"], d["mi"].mean(axis=1))))
        if "own_share" in d and name.startswith("btx"):
            print("   share of each domain's assignments to its own branch's expert (arithmetic, brackets, copy, reverse, grammar; 0.2 = none):")
            for s, row in zip(d["mi_steps"][[0, -1]], d["own_share"][[0, -1]]):
                print(f"     window ending step {int(s)}: " + ", ".join(f"{x:.3f}" for x in row))


def figure(path, title, runs, pairs):
    """Left: each run's loss minus its reference's (same batches, so the batch noise cancels);
    right: I(domain; expert) of every run."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colours = {}
    for name, label in runs:
        d = RUNS[name]
        base = name.rsplit("-s", 1)[0]
        style = ":" if name.endswith("-s1") else "-"
        kwargs = {"color": colours[base]} if base in colours else {}
        line, = right.plot(d["mi_steps"], d["mi"].mean(axis=1), "o" + style, label=label, **kwargs)
        colours.setdefault(base, line.get_color())
    for name, reference, label in pairs:
        d, r = RUNS[name], RUNS[reference]
        style = ":" if name.endswith("-s1") else "-"
        colour = colours[name.rsplit("-s", 1)[0]]
        left.plot(d["step"][19:], smooth(d["lm_loss"] - r["lm_loss"]), style, color=colour, label=label)
        ev = ~np.isnan(d["val_loss"])
        left.plot(d["step"][ev], d["val_loss"][ev] - r["val_loss"][ev], "o" + style, color=colour, markersize=4)
    left.axhline(0, color="grey", linewidth=0.8)
    left.set(xlabel="step", ylabel="loss difference (nats/token)", title=title + "\ntraining (20-step mean, lines) and validation (dots)")
    left.legend(fontsize=7)
    right.set(xlabel="step", ylabel="I(domain; expert), bits (mean over layers)",
              title=f"expert specialisation, {WINDOW}-step windows (max log2 5 = 2.32)")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


import os
seeds = sorted({int(f.rsplit("-s", 1)[1][:-3]) for f in os.listdir(run_dir) if f.startswith("drop8-s") and f.endswith(".h5")})
drop_runs = [("copy8", "copy, router N(0,0.1²)")]
btx_runs = []
for seed in seeds:
    drop_runs += [(f"copy8-u002-s{seed}", f"copy, router U(±√3·0.02), seed {seed}"), (f"drop8-s{seed}", f"drop r=0.5, router U(±√3·0.02), seed {seed}")]
    btx_runs += [(f"copy5-s{seed}", f"copy upcycling, seed {seed}"), (f"btx5-s{seed}", f"BTX merge of 5 branches, seed {seed}")]
RUNS = {name: load(name) for name, _ in drop_runs + btx_runs if os.path.exists(f"{run_dir}/{name}.h5")}
drop_runs = [r for r in drop_runs if r[0] in RUNS]
btx_runs = [r for r in btx_runs if r[0] in RUNS]
report("Drop-Upcycling vs copy (8 experts, top-2)", drop_runs)
report("BTX vs copy (5 experts, top-2)", btx_runs)
figure(f"{figure_dir}/drop-vs-copy.png", "drop r=0.5 minus copy (same router U(±√3·0.02), same seed)", drop_runs,
       [(f"drop8-s{seed}", f"copy8-u002-s{seed}", f"drop − copy, seed {seed}") for seed in seeds])
figure(f"{figure_dir}/btx-vs-copy.png", "BTX minus copy upcycling (same router N(0,0.1²), same seed)", btx_runs,
       [(f"btx5-s{seed}", f"copy5-s{seed}", f"BTX − copy, seed {seed}") for seed in seeds])

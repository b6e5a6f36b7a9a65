"""`moekit train` and `moekit demo` end to end, read by outside tools (h5py, safetensors, nbconvert).

Tiny models (the tiny preset, upcycled to 4 experts, top-2), a 20,000-token synthetic corpus and a few
steps of 2–4 sequences of 16–128 tokens, one OpenBLAS thread: the whole module runs in well under a
minute. Training logs follow docs/routing-log.md (schema 2), the schedule docs/training-optimizer.md.
"""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parents[2]

# 10 steps: warmup W = 3, decay D = round(0.2 · 10) = 2 (T = 8), final ratio r = 0.1; evaluations
# every 4 steps and after the last.
PEAK, STEPS, WARMUP, DECAY_FRACTION, FINAL_RATIO, EVAL_EVERY = 0.01, 10, 3, 0.2, 0.1, 4
RUN_OPTIONS = ["--steps", STEPS, "--batch", 2, "--seq", 16, "--lr", PEAK, "--warmup", WARMUP,
               "--decay-fraction", DECAY_FRACTION, "--final-lr-ratio", FINAL_RATIO, "--schedule", "wsd",
               "--validation-fraction", 0.1, "--eval-every", EVAL_EVERY, "--val-batches", 2, "--threads", 1, "--quiet"]
STEP_COLUMNS = ["step", "tokens", "loss", "lr", "lm_loss", "grad_norm", "val_loss"]


def wsd(step, peak=PEAK, steps=STEPS, warmup=WARMUP, decay_fraction=DECAY_FRACTION, ratio=FINAL_RATIO):
    """docs/training-optimizer.md, `wsd` (exponential)."""
    decay = round(decay_fraction * steps)
    stable_end = steps - decay
    if step < warmup:
        return peak * (step + 1) / warmup
    if step < stable_end:
        return peak
    return peak * ratio ** ((step - stable_end + 1) / decay)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, run_moekit):
    """Tiny dense model (f32), its 4-expert top-2 upcycle and a corpus with domain sidecars."""
    root = tmp_path_factory.mktemp("train")
    run_moekit("init", root / "dense", "--preset", "tiny", "--dtype", "f32", "--quiet")
    run_moekit("upcycle", root / "dense", root / "moe", "--experts", 4, "--top-k", 2, "--verify", 0, "--quiet")
    run_moekit("corpus", root / "corpus.bin", "--tokens", 20000, "--seed", 0)
    return root


def train(run_moekit, workspace, model, name, *extra):
    out, log = workspace / f"{name}-out", workspace / f"{name}.h5"
    result = run_moekit("train", workspace / model, "--data", workspace / "corpus.bin", *RUN_OPTIONS, *extra,
                        "--out", out, "--log", log)
    return out, log, result


@pytest.fixture(scope="module")
def dense_run(workspace, run_moekit):
    return train(run_moekit, workspace, "dense", "dense")


@pytest.fixture(scope="module")
def moe_run(workspace, run_moekit):
    return train(run_moekit, workspace, "moe", "moe")


def read_log(path):
    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        attrs = dict(f.attrs)
        data = {}
        for group in ("steps", "routing"):
            for name in f.get(group, {}):
                f[f"{group}/{name}"].refresh()
                data[name] = f[f"{group}/{name}"][:]
        groups = set(f.keys())
    return attrs, data, groups


def check_training_columns(attrs, data):
    assert attrs["format"] == "moekit-routing"
    assert int(attrs["version"]) == 2 and int(attrs["training"]) == 1
    for name in STEP_COLUMNS:
        assert data[name].shape == (STEPS,), name
    assert np.array_equal(data["step"], np.arange(STEPS))
    assert np.all(data["tokens"] == 2 * 16)
    for name in ("loss", "lr", "lm_loss", "grad_norm"):
        assert data[name].dtype == np.float32 and np.all(np.isfinite(data[name])), name
    assert np.all(data["grad_norm"] > 0)
    evaluated = np.isfinite(data["val_loss"])
    assert np.flatnonzero(evaluated).tolist() == [3, 7, 9]          # (step + 1) % 4 == 0, and the last step
    assert np.all(data["val_loss"][evaluated] > 0)
    expected_lr = np.array([wsd(s) for s in range(STEPS)], dtype=np.float32)
    assert np.allclose(data["lr"], expected_lr, rtol=1e-6, atol=0)
    assert np.isclose(data["lr"][0], PEAK / WARMUP, rtol=1e-6)        # warmup starts at η/W …
    assert data["lr"][WARMUP - 1] == np.float32(PEAK)                  # … reaches η at its last step
    assert np.isclose(data["lr"][-1], FINAL_RATIO * PEAK, rtol=1e-6)   # the decay lands on r·η


def test_dense_training_log(dense_run):
    _, log, result = dense_run
    assert "train: steps 0…9" in result.stdout
    attrs, data, groups = read_log(log)
    check_training_columns(attrs, data)
    assert (int(attrs["num_layers"]), int(attrs["num_experts"]), int(attrs["top_k"])) == (0, 0, 0)
    assert "routing" not in groups
    assert np.array_equal(data["loss"], data["lm_loss"])               # no auxiliary losses in a dense model


def test_moe_training_log(moe_run, workspace):
    _, log, _ = moe_run
    attrs, data, groups = read_log(log)
    check_training_columns(attrs, data)
    L, E, k = (int(attrs[a]) for a in ("num_layers", "num_experts", "top_k"))
    assert (L, E, k) == (4, 4, 2)
    domains = json.loads((workspace / "corpus.domains.json").read_text())["domains"]
    assert json.loads(attrs["domains"]) == domains
    counts, domain_counts = data["expert_counts"], data["domain_counts"]
    assert counts.shape == (STEPS, L, E) and domain_counts.shape == (STEPS, L, len(domains), E)
    assert domain_counts.dtype == np.int64
    assert np.array_equal(counts.sum(axis=2), data["tokens"][:, None] * k - data["dropped"])
    assert np.array_equal(domain_counts.sum(axis=2), counts)
    # The total minimised is lm_loss + 0.01 · Σ_layers Switch aux loss (the router's default
    # coefficient and loss; z-loss 0).
    assert np.all(np.isfinite(data["aux_loss"])) and np.all(data["aux_loss"] > 0)
    assert np.allclose(data["loss"], data["lm_loss"] + 0.01 * data["aux_loss"].sum(axis=1), rtol=1e-5, atol=1e-6)


def expected_shapes(config):
    """Tensor name → shape of a (MoE) MiniCPM checkpoint with tied embeddings, from config.json."""
    H, I, V = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    head = H // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head
    shapes = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes.update({p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
                       p + "self_attn.q_proj.weight": (H, H), p + "self_attn.k_proj.weight": (kv, H),
                       p + "self_attn.v_proj.weight": (kv, H), p + "self_attn.o_proj.weight": (H, H)})
        if "num_experts" in config:
            shapes[p + "mlp.gate.weight"] = (config["num_experts"], H)
            for e in range(config["num_experts"]):
                q = f"{p}mlp.experts.{e}."
                shapes.update({q + "w1.weight": (I, H), q + "w2.weight": (H, I), q + "w3.weight": (I, H)})
        else:
            shapes.update({p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H),
                           p + "mlp.down_proj.weight": (H, I)})
    return shapes


def load_model(directory):
    tensors = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


@pytest.mark.parametrize("model", ["dense", "moe"])
def test_out_dir_is_a_trained_f32_checkpoint(model, dense_run, moe_run, workspace):
    out = (dense_run if model == "dense" else moe_run)[0]
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "float32"
    assert ("moekit_router" in config) == (model == "moe")
    trained = load_file(out / "model.safetensors")
    assert {name: tensor.shape for name, tensor in trained.items()} == expected_shapes(config)
    assert all(tensor.dtype == np.float32 for tensor in trained.values())
    start = load_model(workspace / model)
    assert start.keys() == trained.keys()
    assert all(np.all(np.isfinite(tensor)) for tensor in trained.values())
    assert all(not np.array_equal(trained[name], start[name]) for name in trained), "a tensor did not change"
    state = json.loads((out / "training_state" / "trainer_state.json").read_text())
    assert state["completed_steps"] == STEPS and state["tokens_seen"] == STEPS * 2 * 16
    optimizer = load_file(out / "training_state" / "optimizer.safetensors")
    assert optimizer and all(np.all(np.isfinite(t)) for t in optimizer.values())


def test_aux_free_router_saves_its_bias(workspace, run_moekit):
    out = workspace / "aux-free-out"
    run_moekit("train", workspace / "moe", "--data", workspace / "corpus.bin", "--steps", 3, "--batch", 2, "--seq", 16,
               "--lr", PEAK, "--router", "aux-free", "--threads", 1, "--quiet", "--out", out)
    config = json.loads((out / "config.json").read_text())
    assert config["moekit_router"]["aux_loss_free_balancing"] is True
    trained = load_file(out / "model.safetensors")
    for layer in range(config["num_hidden_layers"]):
        bias = trained.pop(f"model.layers.{layer}.mlp.gate.moekit_bias")
        assert bias.dtype == np.float32 and bias.shape == (config["num_experts"],)
        assert np.any(bias != 0)                          # b += u · sign(mean load − load) after every step
    assert {name: tensor.shape for name, tensor in trained.items()} == expected_shapes(config)


def test_relu_router_trains_with_adaptive_l1_and_logs_active_experts(workspace, run_moekit):
    """--router remoe: the log is schema 3 with the active-experts histogram (Σ n·h_n = Σ counts),
    trainer_state.json holds λ = λ0 · 1.2^(±1 per step) ≠ λ0 after 3 steps, --balance sequence and
    --aux-loss are refused."""
    out, log = workspace / "remoe-out", workspace / "remoe.h5"
    options = ["--data", workspace / "corpus.bin", "--steps", 3, "--batch", 2, "--seq", 16, "--lr", PEAK,
               "--router", "remoe:l1-init=1e-4", "--threads", 1, "--quiet"]
    run_moekit("train", workspace / "moe", *options, "--out", out, "--log", log)
    with h5py.File(log, "r") as f:
        assert int(f.attrs["version"]) == 3 and int(f.attrs["variable_k"]) == 1
        h = f["routing/active_experts"][:]
        assert np.array_equal((h * np.arange(h.shape[2])).sum(axis=2), f["routing/expert_counts"][:].sum(axis=2))
        assert np.all(h.sum(axis=2) == 32)
    state = json.loads((out / "training_state" / "trainer_state.json").read_text())
    exponent = math.log(state["relu_l1_coefficient"] / 1e-4, 1.2)
    assert abs(exponent - round(exponent)) < 1e-4 and round(exponent) in (-3, -1, 1, 3)
    config = json.loads((out / "config.json").read_text())
    assert config["moekit_router"]["mode"] == "relu"
    result = run_moekit("train", workspace / "moe", *options, "--balance", "sequence", "--out", workspace / "remoe-seq", check=False)
    assert result.returncode != 0 and "--balance" in result.stderr
    result = run_moekit("train", workspace / "moe", *options, "--aux-loss", 0.01, "--out", workspace / "remoe-aux", check=False)
    assert result.returncode != 0 and "--aux-loss" in result.stderr and "l1-init" in result.stderr


def test_accumulated_global_balancing_run_logs_the_global_batch(workspace, run_moekit):
    """--accumulate 2 --balance global: one log row per optimiser step covering all 4 sequences; the
    state records both options, and a resume with another --balance is refused by name."""
    out, log = workspace / "global-out", workspace / "global.h5"
    options = ["--data", workspace / "corpus.bin", "--steps", 3, "--batch", 4, "--seq", 16, "--lr", PEAK,
               "--accumulate", 2, "--balance", "global", "--threads", 1, "--quiet"]
    run_moekit("train", workspace / "moe", *options, "--out", out, "--log", log)
    with h5py.File(log, "r") as f:
        assert list(f["steps/step"][:]) == [0, 1, 2]
        assert all(t == 64 for t in f["steps/tokens"][:])
        assert np.all(f["routing/expert_counts"][:].sum(axis=2) == 64 * 2)
    state = json.loads((out / "training_state" / "trainer_state.json").read_text())
    assert "accumulate" in json.dumps(state) and "global" in json.dumps(state)
    changed = [o if o != "global" else "micro" for o in options]
    line = error_line(run_moekit("train", workspace / "moe", *changed, "--out", out, "--resume", check=False))
    assert "--balance" in line
    odd = ["--data", workspace / "corpus.bin", "--steps", 3, "--batch", 4, "--seq", 16, "--lr", PEAK, "--accumulate", 3, "--quiet"]
    result = run_moekit("train", workspace / "moe", *odd, "--out", workspace / "e-acc", check=False)
    assert result.returncode not in (0, 1) and "--accumulate" in result.stderr


def test_resumed_run_matches_uninterrupted_run_bitwise(workspace, run_moekit, moekit):
    """Run A: 4 steps. Run C: the same with saves every 2 steps, killed (SIGKILL) right after the step-2
    save; resumed with --resume it must end with A's weights and optimiser state, bit for bit."""
    options = ["--data", workspace / "corpus.bin", "--steps", 4, "--batch", 4, "--seq", 128, "--lr", PEAK,
               "--decay-fraction", 0.5, "--validation-fraction", 0.1, "--eval-every", 2, "--val-batches", 4,
               "--threads", 1]
    options = [str(o) for o in options]
    a_out, a_log = workspace / "resume-a", workspace / "resume-a.h5"
    run_moekit("train", workspace / "moe", *options, "--quiet", "--out", a_out, "--log", a_log)

    c_out, c_log = workspace / "resume-c", workspace / "resume-c.h5"
    # Progress lines go to stderr; "step 2/4 … saved" is printed right after the step-2 save (an
    # evaluation step, so it is always printed). This process wakes on that line and kills the run
    # while it is still in step 3: two training steps, an evaluation and a save of CPU work away
    # from its next save, against a pipe read here.
    child = subprocess.Popen([moekit, "train", str(workspace / "moe"), *options, "--save-every", "2",
                              "--out", str(c_out), "--log", str(c_log)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in child.stderr:
        seen.append(line)
        if line.startswith("step 2/4") and line.rstrip().endswith("saved"):
            child.kill()
            break
    child.wait(timeout=60)
    child.stderr.close()
    assert child.returncode == -9, f"run C was not interrupted after its step-2 save: {''.join(seen)}"
    state = json.loads((c_out / "training_state" / "trainer_state.json").read_text())
    assert state["completed_steps"] == 2, "run C got past its next save before it could be killed"

    # The killed writer's log keeps its completed steps, identical to A's.
    _, a_data, _ = read_log(a_log)
    _, killed, _ = read_log(c_log)
    done = len(killed["step"])
    assert 2 <= done <= 4
    for name in ("lm_loss", "lr", "grad_norm", "expert_counts"):
        assert np.array_equal(killed[name], a_data[name][:done]), name

    # The killed writer left the log marked open; --resume clears the mark (as `h5clear -s` does)
    # and continues it: rows the log already holds are not written twice, the rest follow, and the
    # whole log equals the uninterrupted run's.
    resumed = run_moekit("train", workspace / "moe", *options, "--save-every", "2", "--out", c_out,
                         "--log", c_log, "--resume", "--quiet")
    assert "resuming after step 2 of 4" in resumed.stdout
    _, c_data, _ = read_log(c_log)
    assert c_data["step"].tolist() == [0, 1, 2, 3]
    for name in ("loss", "lm_loss", "lr", "grad_norm", "val_loss", "expert_counts", "domain_counts"):
        assert np.array_equal(c_data[name], a_data[name], equal_nan=name == "val_loss"), name

    for relative in ("model.safetensors", "training_state/optimizer.safetensors"):
        a, c = load_file(a_out / relative), load_file(c_out / relative)
        assert a.keys() == c.keys()
        for name in a:
            assert np.array_equal(a[name].view(np.uint32), c[name].view(np.uint32)), f"{relative}: {name}"
    a_state = json.loads((a_out / "training_state" / "trainer_state.json").read_text())
    c_state = json.loads((c_out / "training_state" / "trainer_state.json").read_text())
    assert c_state["completed_steps"] == a_state["completed_steps"] == 4
    assert c_state["tokens_seen"] == a_state["tokens_seen"]


def error_line(result):
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moekit: error: "), result.stderr
    return lines[0]


def test_refusals(workspace, run_moekit, dense_run):
    small = ["--steps", 2, "--batch", 2, "--seq", 16, "--lr", PEAK, "--threads", 1, "--quiet"]
    data = ["--data", workspace / "corpus.bin"]
    line = error_line(run_moekit("train", workspace / "dense", "--data", workspace / "missing.bin", *small,
                                 "--out", workspace / "e-missing", check=False))
    assert "missing.bin" in line
    line = error_line(run_moekit("train", workspace / "dense", *data, *small, "--aux-loss", 0.01,
                                 "--out", workspace / "e-aux", check=False))
    assert "--aux-loss" in line and "dense" in line
    assert not (workspace / "e-aux").exists()
    # The dense run trained with --batch 2; resuming it with --batch 4 is refused by name.
    out = dense_run[0]
    line = error_line(run_moekit("train", workspace / "dense", *data, *RUN_OPTIONS, "--batch", 4, "--out", out,
                                 "--resume", check=False))
    assert "--batch" in line
    (workspace / "e-empty").mkdir()
    for target in ("e-nothing", "e-empty"):
        line = error_line(run_moekit("train", workspace / "dense", *data, *small, "--out", workspace / target,
                                     "--resume", check=False))
        assert "trainer_state.json" in line and "nothing to resume" in line
    line = error_line(run_moekit("train", workspace / "dense", *data, *small, "--out", out, check=False))
    assert str(out) in line and "--force" in line
    result = run_moekit("train", workspace / "dense", *data, *small, "--schedule", "sometimes",
                        "--out", workspace / "e-schedule", check=False)
    assert result.returncode not in (0, 1) and "--schedule" in result.stderr and "Usage:" in result.stderr
    assert not (workspace / "e-schedule").exists()


@pytest.fixture(scope="module")
def demo(tmp_path_factory, moekit):
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    result = subprocess.run([moekit, "demo", "--steps", "4", "--out", str(out), "--threads", "1", "--quiet"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def mutual_information_bits(joint):
    p = joint / joint.sum()
    outer = p.sum(axis=1, keepdims=True) * p.sum(axis=0, keepdims=True)
    nonzero = p > 0
    return float((p[nonzero] * np.log2(p[nonzero] / outer[nonzero])).sum())


def test_demo_reports_and_writes_its_files(demo):
    out, stdout = demo
    for section in ("Language-model loss at equal steps", "Expert load", "domain specialisation", "Throughput", "Files"):
        assert section in stdout, section
    files = stdout[stdout.index("\nFiles"):].splitlines()[1:]
    listed = [m.group(1) for line in files if (m := re.match(r"\s+(/\S+): ", line))]
    assert len(listed) >= 6 and all(Path(path).exists() for path in listed), listed
    for name in ("moe-train.h5", "dense-train.h5", "moe-trained/model.safetensors", "dense-trained/model.safetensors"):
        assert (out / name).exists(), name

    # The printed numbers are the logs' numbers: losses at equal steps, I(domain; expert) per layer
    # over the last quarter of the steps.
    _, moe, _ = read_log(out / "moe-train.h5")
    _, dense, _ = read_log(out / "dense-train.h5")
    rows = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)$", stdout, re.MULTILINE)
    assert [int(r[0]) for r in rows] == list(range(4))
    for step, dense_loss, moe_loss in rows:
        assert math.isclose(float(dense_loss), dense["lm_loss"][int(step)], abs_tol=6e-5)
        assert math.isclose(float(moe_loss), moe["lm_loss"][int(step)], abs_tol=6e-5)
    printed = [float(x) for x in re.findall(r"layer \d+: I = ([\d.]+) bits", stdout)]
    table = moe["domain_counts"][-1:].sum(axis=0)
    assert len(printed) == table.shape[0]
    for layer, value in enumerate(printed):
        assert math.isclose(value, mutual_information_bits(table[layer]), abs_tol=6e-4)


def execute_notebook(name, environment, output_dir):
    environment = dict(os.environ, MPLBACKEND="Agg", **environment)
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                    "--ExecutePreprocessor.timeout=300", "--output-dir", str(output_dir), str(REPO / "Notebooks-data" / name)],
                   check=True, env=environment, capture_output=True)
    executed = json.loads((output_dir / name).read_text())
    outputs = [o for c in executed["cells"] for o in c.get("outputs", [])]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    text = "".join("".join(o.get("text", "")) for o in outputs)
    return images, text


def test_training_notebook_executes_on_demo_logs(demo, tmp_path):
    out, stdout = demo
    images, text = execute_notebook("training-analysis.ipynb", {"MOEKIT_TRAINING_LOG": str(out / "moe-train.h5"),
                                                                "MOEKIT_DENSE_LOG": str(out / "dense-train.h5")}, tmp_path)
    assert len(images) == 3
    assert "invariants hold" in text and "dense: final lm loss" in text
    printed = re.findall(r"layer (\d+): I\(domain; expert\) = ([\d.]+) bits", text)
    assert printed == re.findall(r"layer (\d+): I = ([\d.]+) bits", stdout)   # the demo's own numbers


def test_training_notebook_runs_without_dense_log(demo, tmp_path):
    out, _ = demo
    images, text = execute_notebook("training-analysis.ipynb", {"MOEKIT_TRAINING_LOG": str(out / "moe-train.h5"),
                                                                "MOEKIT_DENSE_LOG": str(tmp_path / "absent.h5")}, tmp_path)
    assert len(images) == 3 and "not found" in text and "dense: final" not in text


def test_routing_notebook_reads_moe_training_log(demo, tmp_path):
    out, _ = demo
    images, _ = execute_notebook("routing-analysis.ipynb", {"MOEKIT_ROUTING_LOG": str(out / "moe-train.h5")}, tmp_path)
    assert len(images) == 3

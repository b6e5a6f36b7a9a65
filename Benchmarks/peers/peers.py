#!/usr/bin/env python3
"""MoEKit against PyTorch and llama.cpp: same machine, same shapes, one run, round-robin (issue 14).

Run it through `Benchmarks/peers/run.sh` (which makes the peers' venv on first use). Every round
runs every case group once, in the same order — MoEKit's layer bench, PyTorch's layers, MoEKit's
model bench, llama.cpp, MoEKit's training bench, PyTorch's training step — so drift in the
machine's speed (other load, clocks) hits MoEKit and its peers alike; each figure is the median
over rounds of each round's median. MoEKit's side is `moekit bench --json`; its weights are random
with the shapes below, and the peers' are MoEKit's own `moekit init` (+ `moekit upcycle`) weights
(llama.cpp: written as GGUF by gguf_export.py) — speed does not depend on the values.

Shapes: MiniCPM-2.4B (hidden 2304, intermediate 5760, 36 heads), MoE E = 8, top-2.
- MoE layer, T = 128 and 512: MoEKit (learned routing) vs PyTorch's HF loop over experts, and
  torch._grouped_mm where the installed PyTorch runs it on CPU.
- dense FFN GFLOP/s vs the best sgemm on the machine (n = 2048; OpenBLAS via MoEKit, MKL via PyTorch).
- prefill pp512 and decode (after 128 prompt tokens), 4 layers, dense and MoE, vs llama.cpp
  on f32 GGUF (prefill, decode) and bf16 GGUF (decode); MoEKit's decode also on the same weights
  stored as bf16 (`moekit convert --dtype bf16`, read mapped), against llama.cpp's bf16 GGUF.
- with AVX512-BF16: the MoE layer with `--compute bf16` vs the same PyTorch HF loop (f32), and
  prefill pp512 with `--compute bf16` (opt-in arithmetic: bf16 activations × bf16 weights, f32
  sums) vs llama.cpp on the f32 GGUF and on the bf16 GGUF (whose prefill also multiplies bf16 by
  bf16 with vdpbf16ps on this CPU: the like-for-like comparison), and decode on the bf16
  checkpoints with `--compute bf16` (llama.cpp's bf16 decode arithmetic) vs llama.cpp bf16.
- training step (forward + backward + AdamW): tiny 4 layers 8×128 and minicpm-1.2b 2 layers
  2×128, dense and MoE, vs eager PyTorch (SDPA, the HF MoE loop, torch.optim.AdamW).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import minicpm_torch as mt  # noqa: E402

EXPERTS, TOP_K = 8, 2


def log(message):
    print(message, file=sys.stderr, flush=True)


def median(values):
    return statistics.median(values) if values else float("nan")


class Recorder:
    """case name → list of per-round medians (tokens/s or GFLOP/s)."""

    def __init__(self):
        self.samples = {}

    def add(self, name, value):
        self.samples.setdefault(name, []).append(value)

    def get(self, name):
        return median(self.samples.get(name, []))

    def report(self, comparisons):
        """For the before/after scripts: every case's median over rounds (and the rounds), then one
        line per (label, binary, our case, peer's case, peer) with both medians and their ratio."""
        for key in sorted(self.samples):
            print(f"{key}: {self.get(key):.2f} tokens/s (rounds: {', '.join(f'{v:.2f}' for v in self.samples[key])})")
        for label, binary, ours, theirs, peer in comparisons:
            print(f"{label}: {binary} {self.get(ours):.2f} vs {peer} {self.get(theirs):.2f} tokens/s -> {self.get(ours) / self.get(theirs):.2f}")


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_family_model():
    fields = {}
    for line in open("/proc/cpuinfo"):
        if ":" in line:
            key, value = line.split(":", 1)
            fields.setdefault(key.strip(), value.strip())
    return f"{fields.get('vendor_id', '?')} family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"


# MARK: MoEKit


def run_moekit(moekit, arguments, env=None):
    result = subprocess.run([moekit] + arguments, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"moekit {' '.join(arguments)} failed:\n{result.stderr}")
    return result


def moekit_bench(moekit, arguments, repeats):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        path = handle.name
    try:
        run_moekit(moekit, ["bench", "--repeats", str(repeats), "--json", path] + arguments)
        return json.load(open(path))
    finally:
        os.unlink(path)


def find(results, **criteria):
    for r in results:
        if all(r.get(k) == v for k, v in criteria.items()):
            return r
    raise KeyError(f"no bench result with {criteria}")


def prepare_models(moekit, work):
    """MoEKit's own weights: a 4-layer dense MiniCPM-2.4B (f32), its 8-expert top-2 upcycling, and
    their GGUFs (f32, bf16); configs of the training shapes."""
    import gguf_export

    os.makedirs(work, exist_ok=True)
    paths = {}
    dense = os.path.join(work, "minicpm-2.4b-4l-dense")
    moe = os.path.join(work, "minicpm-2.4b-4l-moe")
    if not os.path.exists(os.path.join(dense, "config.json")):
        log("moekit init (MiniCPM-2.4B shapes, 4 layers, f32)")
        run_moekit(moekit, ["init", dense, "--preset", "minicpm-2.4b", "--layers", "4", "--dtype", "f32", "--seed", "0", "--force", "--quiet"])
    if not os.path.exists(os.path.join(moe, "config.json")):
        log("moekit upcycle (8 experts, top-2)")
        run_moekit(moekit, ["upcycle", dense, moe, "--experts", str(EXPERTS), "--top-k", str(TOP_K), "--dtype", "keep",
                            "--verify", "0", "--force", "--quiet"])
    for kind, directory in (("dense", dense), ("moe", moe)):
        converted = os.path.join(work, f"minicpm-2.4b-4l-{kind}-bf16")
        if not os.path.exists(os.path.join(converted, "config.json")):
            log(f"moekit convert {kind} → bf16")
            run_moekit(moekit, ["convert", directory, converted, "--dtype", "bf16", "--quiet"])
        paths[(kind, "bf16 checkpoint")] = converted
        for dtype in ("f32", "bf16"):
            path = os.path.join(work, f"minicpm-2.4b-4l-{kind}-{dtype}.gguf")
            if not os.path.exists(path):
                log(f"writing {path}")
                gguf_export.export(directory, path, dtype)
            paths[(kind, dtype)] = path
    for name, preset, layers in (("tiny", "tiny", 4), ("minicpm-1.2b-2l", "minicpm-1.2b", 2)):
        directory = os.path.join(work, f"config-{name}")
        if not os.path.exists(os.path.join(directory, "config.json")):
            run_moekit(moekit, ["init", directory, "--preset", preset, "--layers", str(layers), "--dtype", "bf16", "--force", "--quiet"])
        paths[name] = json.load(open(os.path.join(directory, "config.json")))
    paths["config-2.4b"] = json.load(open(os.path.join(dense, "config.json")))
    return paths


def check_export(moekit, work, threads):
    """The GGUF computes MoEKit's function: llama.cpp's logits of a tiny dense model and its MoE
    upcycling (different routers than copies would give: the router is random) against `moekit
    forward` on the same tokens. Returns the largest |Δlogit| / max|logit| per model."""
    import gguf_export
    import llama_peer
    from safetensors_numpy import SafetensorsDirectory

    directory = os.path.join(work, "check")
    os.makedirs(directory, exist_ok=True)
    dense, moe = os.path.join(directory, "dense"), os.path.join(directory, "moe")
    run_moekit(moekit, ["init", dense, "--preset", "tiny", "--layers", "2", "--dtype", "f32", "--seed", "3", "--force", "--quiet"])
    run_moekit(moekit, ["upcycle", dense, moe, "--experts", str(EXPERTS), "--top-k", str(TOP_K), "--dtype", "keep",
                        "--router-std", "0.5", "--noise-std", "0.1", "--method", "noise", "--verify", "0", "--force", "--quiet"])
    tokens = [(t * 37 + 11) % 1000 for t in range(24)]
    tokens_path = os.path.join(directory, "tokens.txt")
    with open(tokens_path, "w") as handle:
        handle.write(" ".join(map(str, tokens)) + "\n")
    errors = {}
    for name, model_dir in (("dense", dense), ("moe", moe)):
        logits_path = os.path.join(directory, f"{name}-logits.safetensors")
        run_moekit(moekit, ["forward", model_dir, "--tokens-file", tokens_path, "--output", logits_path])
        ours = np.asarray(SafetensorsDirectory.single(logits_path, "logits")).reshape(len(tokens), -1)
        path = gguf_export.export(model_dir, os.path.join(directory, f"{name}.gguf"), "f32")
        model = llama_peer.LlamaModel(path, threads, context=64, batch=64)
        try:
            theirs = model.logits(tokens)
        finally:
            model.close()
        errors[name] = float(np.abs(ours - theirs).max() / np.abs(ours).max())
    return errors


# MARK: PyTorch


def timed(body, repeats, warmups=1):
    for _ in range(warmups):
        body()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        body()
        seconds.append(time.perf_counter() - start)
    return seconds


def torch_layers(c, tokens_list, repeats, recorder):
    torch.manual_seed(0)
    hidden, intermediate = c["hidden_size"], c["intermediate_size"]
    with torch.inference_mode():
        moe = mt.SparseMoE(hidden, intermediate, EXPERTS, TOP_K)
        for module in moe.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=0.1 if module is moe.gate else 0.02)
        dense = mt.MLP(hidden, intermediate)
        grouped = mt.GroupedMoE(moe) if mt.grouped_mm_function() else None
        for tokens in tokens_list:
            x = torch.randn(tokens, hidden)
            recorder.add(f"torch moe-hf T={tokens}", tokens / median(timed(lambda: moe(x), repeats)))
            flops = 6 * tokens * hidden * intermediate
            recorder.add(f"torch dense-ffn GFLOP/s T={tokens}", flops / median(timed(lambda: dense(x), repeats)) * 1e-9)
            if grouped is not None:
                try:
                    reference = moe(x)
                    error = (grouped(x) - reference).abs().max().item() / reference.abs().max().item()
                    if error > 1e-3:
                        raise RuntimeError(f"grouped_mm MoE differs from the HF loop by {error:.2e}")
                    recorder.add(f"torch moe-grouped_mm T={tokens}", tokens / median(timed(lambda: grouped(x), repeats)))
                except RuntimeError as error:
                    log(f"torch grouped_mm unavailable on CPU: {str(error).splitlines()[0]}")
                    grouped = None
        n = 2048
        a, b = torch.randn(n, n), torch.randn(n, n)
        recorder.add("torch sgemm GFLOP/s n=2048", 2 * n ** 3 / min(timed(lambda: a @ b, repeats + 1)) * 1e-9)


def torch_training(name, c, batch, length, experts, repeats, recorder):
    torch.manual_seed(0)
    model = mt.MiniCPM(c, experts=experts, top_k=TOP_K)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    tokens = torch.randint(0, c["vocab_size"], (batch, length + 1))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        optimizer.step()

    seconds = timed(step, repeats)
    recorder.add(f"torch train {name} {'moe' if experts else 'dense'}", batch * length / median(seconds))


# MARK: llama.cpp


def llama_cases(paths, threads, decode_steps, repeats, recorder):
    import llama_peer

    for kind in ("dense", "moe"):
        for dtype in ("f32", "bf16"):
            model = llama_peer.LlamaModel(paths[(kind, dtype)], threads)
            try:
                model.prefill_seconds(64)  # warm-up: page the weights in
                prefill = [model.prefill_seconds(512) for _ in range(repeats)]
                recorder.add(f"llama.cpp {kind} {dtype} pp512", 512 / median(prefill))
                if decode_steps > 0:
                    decode = [model.decode_seconds_per_token(decode_steps) for _ in range(max(1, repeats // 2))]
                    recorder.add(f"llama.cpp {kind} {dtype} decode", 1 / median(decode))
            finally:
                model.close()


# MARK: The run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moekit", default=os.path.join(HERE, "..", "..", ".build", "release", "moekit"))
    parser.add_argument("--work", default=os.path.join(HERE, "work"), help="weights and GGUF files (reused between runs)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case per round")
    parser.add_argument("--decode", type=int, default=16, help="decode steps after the 128-token prompt")
    parser.add_argument("--skip-llama", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args()
    moekit = os.path.abspath(args.moekit)
    threads = int(os.environ.get("OPENBLAS_NUM_THREADS") or os.cpu_count())
    torch.set_num_threads(threads)

    version = run_moekit(moekit, ["--version"])
    moekit_version = version.stdout.strip()
    restart_line = version.stderr.strip()
    log(f"moekit: {moekit_version.replace(chr(10), '; ')}" + (f" [{restart_line}]" if restart_line else ""))
    paths = prepare_models(moekit, args.work)
    c24 = paths["config-2.4b"]
    llama_info = ""
    if not args.skip_llama:
        import llama_peer
        llama_info = llama_peer.system_info()

    if not args.skip_llama:
        errors = check_export(moekit, args.work, threads)
        log(f"GGUF check, max |Δlogit| / max|logit| of llama.cpp vs moekit forward: {errors}")
        if max(errors.values()) > 1e-3:
            raise SystemExit(f"peers: the GGUF export does not compute MoEKit's function ({errors})")
        llama_info += f"; GGUF check max rel. logit error dense {errors['dense']:.1e}, MoE {errors['moe']:.1e}"

    recorder = Recorder()
    moekit_json = {}
    bf16_dot_product = "avx512_bf16" in open("/proc/cpuinfo").read()
    trainings = [("tiny", paths["tiny"], 8, 128, 4), ("minicpm-1.2b-2l", paths["minicpm-1.2b-2l"], 2, 128, 2)]
    for round_index in range(args.rounds):
        log(f"round {round_index + 1}/{args.rounds}")
        layer = moekit_bench(moekit, ["--level", "layer", "--preset", "minicpm-2.4b", "--tokens", "128,512", "--routing", "learned",
                                      "--experts", str(EXPERTS), "--top-k", str(TOP_K)], args.repeats)
        moekit_json["layer"] = layer
        for tokens in (128, 512):
            recorder.add(f"moekit moe T={tokens}", find(layer["results"], level="layer", kind="moe", tokens=tokens)["tokens_per_s"]["median"])
            recorder.add(f"moekit dense-ffn GFLOP/s T={tokens}", find(layer["results"], level="layer", kind="dense", tokens=tokens)["gflops"]["median"])
            recorder.add(f"moekit moe GFLOP/s T={tokens}", find(layer["results"], level="layer", kind="moe", tokens=tokens)["gflops"]["median"])
        if bf16_dot_product:
            layer_bf16 = moekit_bench(moekit, ["--level", "layer", "--preset", "minicpm-2.4b", "--tokens", "128,512", "--routing", "learned",
                                               "--experts", str(EXPERTS), "--top-k", str(TOP_K), "--compute", "bf16"], args.repeats)
            moekit_json["layer bf16"] = layer_bf16
            for tokens in (128, 512):
                recorder.add(f"moekit moe bf16 T={tokens}", find(layer_bf16["results"], level="layer", kind="moe", tokens=tokens)["tokens_per_s"]["median"])
        recorder.add("moekit sgemm GFLOP/s n=2048", layer["ceilings"]["sgemm_gflops"])
        recorder.add("moekit FMA peak GFLOP/s", layer["ceilings"]["peak_gflops"] or float("nan"))
        log("  torch layers")
        torch_layers(c24, (128, 512), args.repeats, recorder)

        model = moekit_bench(moekit, ["--level", "model", "--preset", "minicpm-2.4b", "--layers", "4", "--tokens", "512", "--routing", "learned",
                                      "--decode", str(args.decode), "--experts", str(EXPERTS), "--top-k", str(TOP_K)], args.repeats)
        moekit_json["model"] = model
        for kind in ("dense", "moe"):
            recorder.add(f"moekit {kind} pp512", find(model["results"], level="model", kind=kind, phase="prefill", tokens=512)["tokens_per_s"]["median"])
            if args.decode > 0:
                recorder.add(f"moekit {kind} decode", find(model["results"], level="model", kind=kind, phase="decode")["tokens_per_s"]["median"])
        if bf16_dot_product:
            model_bf16 = moekit_bench(moekit, ["--level", "model", "--preset", "minicpm-2.4b", "--layers", "4", "--tokens", "512",
                                               "--routing", "learned", "--decode", "0", "--experts", str(EXPERTS), "--top-k", str(TOP_K),
                                               "--compute", "bf16"], args.repeats)
            moekit_json["model bf16"] = model_bf16
            for kind in ("dense", "moe"):
                recorder.add(f"moekit {kind} pp512 bf16", find(model_bf16["results"], level="model", kind=kind, phase="prefill",
                                                               tokens=512)["tokens_per_s"]["median"])
        mapped = moekit_bench(moekit, ["--level", "model", "--dense-model", paths[("dense", "bf16 checkpoint")],
                                       "--moe-model", paths[("moe", "bf16 checkpoint")], "--tokens", "512", "--decode", str(args.decode)], args.repeats)
        moekit_json["model bf16 weights"] = mapped
        for kind in ("dense", "moe"):
            if args.decode > 0:
                recorder.add(f"moekit {kind} decode bf16 weights", find(mapped["results"], level="model", kind=kind, phase="decode")["tokens_per_s"]["median"])
        if bf16_dot_product and args.decode > 0:
            mapped_bf16 = moekit_bench(moekit, ["--level", "model", "--dense-model", paths[("dense", "bf16 checkpoint")],
                                                "--moe-model", paths[("moe", "bf16 checkpoint")], "--tokens", "16", "--decode", str(args.decode),
                                                "--compute", "bf16"], args.repeats)
            moekit_json["model bf16 weights bf16 compute"] = mapped_bf16
            for kind in ("dense", "moe"):
                recorder.add(f"moekit {kind} decode bf16 compute", find(mapped_bf16["results"], level="model", kind=kind,
                                                                         phase="decode")["tokens_per_s"]["median"])
        if not args.skip_llama:
            log("  llama.cpp")
            llama_cases(paths, threads, args.decode, args.repeats, recorder)

        if not args.skip_training:
            for name, c, batch, length, layers in trainings:
                preset = "tiny" if name == "tiny" else "minicpm-1.2b"
                training = moekit_bench(moekit, ["--level", "training", "--preset", preset, "--layers", str(layers), "--batch", str(batch),
                                                 "--seq", str(length), "--experts", str(EXPERTS), "--top-k", str(TOP_K)], args.repeats)
                moekit_json[f"training {name}"] = training
                for kind in ("dense", "moe"):
                    recorder.add(f"moekit train {name} {kind}", find(training["results"], kind=kind)["tokens_per_s"]["median"])
            log("  torch training")
            for name, c, batch, length, layers in trainings:
                for experts in (0, EXPERTS):
                    torch_training(name, c, batch, length, experts, args.repeats, recorder)

    # MARK: Report
    get = recorder.get
    best_sgemm = max(get("moekit sgemm GFLOP/s n=2048"), get("torch sgemm GFLOP/s n=2048"))
    rows = []

    def ratio(label, ours, theirs, peer):
        a, b = get(ours), get(theirs) if isinstance(theirs, str) else theirs
        rows.append((label, a, b, a / b if b else float("nan"), peer))

    for tokens in (128, 512):
        ratio(f"MoE layer T={tokens}, tokens/s", f"moekit moe T={tokens}", f"torch moe-hf T={tokens}", "PyTorch HF loop")
        if f"torch moe-grouped_mm T={tokens}" in recorder.samples:
            ratio(f"MoE layer T={tokens}, tokens/s", f"moekit moe T={tokens}", f"torch moe-grouped_mm T={tokens}", "PyTorch _grouped_mm")
        if f"moekit moe bf16 T={tokens}" in recorder.samples:
            ratio(f"MoE layer T={tokens} --compute bf16, tokens/s", f"moekit moe bf16 T={tokens}", f"torch moe-hf T={tokens}", "PyTorch HF loop")
    for tokens in (128, 512):
        ratio(f"dense FFN T={tokens} GFLOP/s / best sgemm", f"moekit dense-ffn GFLOP/s T={tokens}", best_sgemm, "best sgemm n=2048")
        ratio(f"MoE / dense FFN GFLOP/s T={tokens}", f"moekit moe GFLOP/s T={tokens}", f"moekit dense-ffn GFLOP/s T={tokens}", "MoEKit dense FFN")
    if not args.skip_llama:
        for kind in ("dense", "moe"):
            ratio(f"{kind} prefill pp512 (4 layers), tokens/s", f"moekit {kind} pp512", f"llama.cpp {kind} f32 pp512", "llama.cpp f32")
            if f"moekit {kind} pp512 bf16" in recorder.samples:
                for dtype in ("f32", "bf16"):
                    ratio(f"{kind} prefill pp512 --compute bf16, tokens/s", f"moekit {kind} pp512 bf16", f"llama.cpp {kind} {dtype} pp512",
                          f"llama.cpp {dtype}")
        for kind in ("dense", "moe") if args.decode > 0 else ():
            for dtype in ("f32", "bf16"):
                ratio(f"{kind} decode (MoEKit f32), tokens/s", f"moekit {kind} decode", f"llama.cpp {kind} {dtype} decode", f"llama.cpp {dtype}")
            ratio(f"{kind} decode (both bf16 weights), tokens/s", f"moekit {kind} decode bf16 weights", f"llama.cpp {kind} bf16 decode", "llama.cpp bf16")
            if f"moekit {kind} decode bf16 compute" in recorder.samples:
                ratio(f"{kind} decode (bf16 weights, --compute bf16), tokens/s", f"moekit {kind} decode bf16 compute", f"llama.cpp {kind} bf16 decode",
                      "llama.cpp bf16")
    if not args.skip_training:
        for name, *_ in trainings:
            for kind in ("dense", "moe"):
                ratio(f"training step {name} {kind}, tokens/s", f"moekit train {name} {kind}", f"torch train {name} {kind}", "PyTorch eager")

    ceilings = moekit_json["layer"]["ceilings"]
    header = [
        f"date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"command: {' '.join([os.path.relpath(sys.argv[0])] + sys.argv[1:])}",
        f"cpu: {cpu_model()} ({cpu_family_model()}), {os.cpu_count()} cores, {threads} threads",
        f"moekit: {moekit_version.replace(chr(10), '; ')}",
        f"ceilings (MoEKit): FMA peak {get('moekit FMA peak GFLOP/s'):.1f} GFLOP/s ({ceilings['peak_isa']}), "
        f"OpenBLAS sgemm n=2048 {get('moekit sgemm GFLOP/s n=2048'):.1f}, PyTorch sgemm n=2048 {get('torch sgemm GFLOP/s n=2048'):.1f}",
        f"flags: {'; '.join(ceilings['flags']) or 'none'}",
        f"pytorch: {torch.__version__}, {torch.get_num_threads()} threads, MKL {torch.backends.mkl.is_available()}, "
        f"grouped_mm {'yes' if mt.grouped_mm_function() else 'no'}",
    ]
    if llama_info:
        header.append(f"llama.cpp: llama-cpp-python {__import__('llama_cpp').__version__}; {llama_info}")
    header.append(f"rounds {args.rounds} × {args.repeats} repeats; figures are medians")
    print("\n".join(header))
    print(f"{'case':<56}{'MoEKit':>12}{'peer':>12}{'ratio':>8}  peer")
    for label, ours, theirs, value, peer in rows:
        print(f"{label:<56}{ours:>12.2f}{theirs:>12.2f}{value:>8.2f}  {peer}")
    if args.json:
        document = {"header": header, "rows": [dict(zip(("case", "moekit", "peer_value", "ratio", "peer"), row)) for row in rows],
                    "samples": recorder.samples, "moekit_bench": moekit_json}
        temporary = args.json + ".tmp"
        with open(temporary, "w") as handle:
            json.dump(document, handle, indent=1)
        os.replace(temporary, args.json)


if __name__ == "__main__":
    main()

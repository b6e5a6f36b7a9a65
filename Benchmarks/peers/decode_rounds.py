"""The decode rows alone, for before/after comparisons: each MoEKit binary given (`moekit bench
--level model` on the bf16 checkpoints, mapped) and llama.cpp (`llama_peer`, bf16 GGUFs of the same
weights), round-robin over rounds, on the peers' models (MiniCPM-2.4B shapes, 4 layers, dense and its
8-expert top-2 upcycling; `peers.prepare_models`). Decode is memory-bound and this machine's memory
bandwidth moves with its other tenants from minute to minute, so many short rounds say more than a
few long ones. Prints medians over rounds and every binary's ratio to llama.cpp; `--compute f32,bf16`
times each binary in both arithmetics (bf16: the same `vdpbf16ps` dot products as llama.cpp's).

    /work/peers-venv/bin/python Benchmarks/peers/decode_rounds.py --rounds 8 \\
        --work /tmp/decode-peers OLD/moekit NEW/moekit
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import llama_peer  # noqa: E402
import peers  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binaries", nargs="+", help="moekit executables, timed in this order")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=16, help="decode steps per case per round (after a 128-token prompt)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--compute", default="f32", help="MoEKit's arithmetic, comma-separated: f32 (default), bf16 (`--compute bf16`)")
    parser.add_argument("--work", default=os.path.join(HERE, "work"), help="models and GGUFs (made once, ~9 GB)")
    args = parser.parse_args()
    paths = peers.prepare_models(args.binaries[0], args.work)
    recorder = peers.Recorder()
    computes = args.compute.split(",")
    # (binary, name): each binary in each arithmetic, named "binary" for f32, "binary --compute bf16" for bf16.
    sides = [(binary, binary if compute == "f32" else f"{binary} --compute {compute}") for binary in args.binaries for compute in computes]
    compute_flags = {name: [] if name == binary else ["--compute", name.rsplit(" ", 1)[1]] for binary, name in sides}
    for round_index in range(args.rounds):
        for kind in ("dense", "moe"):
            model = llama_peer.LlamaModel(paths[(kind, "bf16")], args.threads)
            model.decode_seconds_per_token(2)
            recorder.add(f"llama.cpp {kind}", 1 / model.decode_seconds_per_token(args.steps))
            model.close()
        for binary, name in sides:
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                subprocess.run([binary, "bench", "--level", "model", "--dense-model", paths[("dense", "bf16 checkpoint")],
                                "--moe-model", paths[("moe", "bf16 checkpoint")], "--tokens", "16", "--decode", str(args.steps),
                                "--repeats", "2", "--json", out.name] + compute_flags[name], check=True, capture_output=True)
                results = json.load(open(out.name))["results"]
            for kind in ("dense", "moe"):
                value = peers.find(results, level="model", kind=kind, phase="decode")["tokens_per_s"]["median"]
                recorder.add(f"{name} {kind}", value)
        print(f"round {round_index + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.2f}", flush=True)
    recorder.report([(f"{kind} decode, both on bf16 weights", name, f"{name} {kind}", f"llama.cpp {kind}", "llama.cpp")
                     for kind in ("dense", "moe") for _, name in sides])


if __name__ == "__main__":
    main()

"""The decode rows alone, for before/after comparisons: each MoEKit binary given (`moekit bench
--level model` on the bf16 checkpoints, mapped) and llama.cpp (`llama_peer`, bf16 GGUFs of the same
weights), round-robin over rounds, on the peers' models (MiniCPM-2.4B shapes, 4 layers, dense and its
8-expert top-2 upcycling; `peers.prepare_models`). Decode is memory-bound and this machine's memory
bandwidth moves with its other tenants from minute to minute, so many short rounds say more than a
few long ones. Prints medians over rounds and every binary's ratio to llama.cpp.

    /work/peers-venv/bin/python Benchmarks/peers/decode_rounds.py --rounds 8 \\
        --work /tmp/decode-peers OLD/moekit NEW/moekit
"""
import argparse
import json
import os
import statistics
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
    parser.add_argument("--work", default=os.path.join(HERE, "work"), help="models and GGUFs (made once, ~9 GB)")
    args = parser.parse_args()
    paths = peers.prepare_models(args.binaries[0], args.work)
    values = {}
    for round_index in range(args.rounds):
        for kind in ("dense", "moe"):
            model = llama_peer.LlamaModel(paths[(kind, "bf16")], args.threads)
            model.decode_seconds_per_token(2)
            values.setdefault(f"llama.cpp {kind}", []).append(1 / model.decode_seconds_per_token(args.steps))
            model.close()
        for binary in args.binaries:
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                subprocess.run([binary, "bench", "--level", "model", "--dense-model", paths[("dense", "bf16 checkpoint")],
                                "--moe-model", paths[("moe", "bf16 checkpoint")], "--tokens", "16", "--decode", str(args.steps),
                                "--repeats", "2", "--json", out.name], check=True, capture_output=True)
                results = json.load(open(out.name))["results"]
            for kind in ("dense", "moe"):
                value = peers.find(results, level="model", kind=kind, phase="decode")["tokens_per_s"]["median"]
                values.setdefault(f"{binary} {kind}", []).append(value)
        print(f"round {round_index + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.2f}", flush=True)
    medians = {key: statistics.median(v) for key, v in values.items()}
    for key in sorted(medians):
        print(f"{key}: {medians[key]:.2f} tokens/s (rounds: {', '.join(f'{v:.1f}' for v in values[key])})")
    for kind in ("dense", "moe"):
        theirs = medians[f"llama.cpp {kind}"]
        for binary in args.binaries:
            ours = medians[f"{binary} {kind}"]
            print(f"{kind} decode, both on bf16 weights: {binary} {ours:.2f} vs llama.cpp {theirs:.2f} tokens/s -> {ours / theirs:.2f}")


if __name__ == "__main__":
    main()

"""The training-step rows alone, for before/after comparisons: each MoEKit binary given
(`moekit bench --level training`) and PyTorch eager (`peers.torch_training`), round-robin over
rounds, on the peers' training shapes (tiny 4 layers 8×128, minicpm-1.2b 2 layers 2×128; MoE 8
experts, top-2). Prints medians over rounds and every binary's ratio to PyTorch.

    /work/peers-venv/bin/python Benchmarks/peers/training_rounds.py --rounds 2 --repeats 3 \\
        --work /tmp/training-peers OLD/moekit NEW/moekit
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import peers  # noqa: E402
import torch  # noqa: E402

CASES = [("tiny", "tiny", 4, 8, 128), ("minicpm-1.2b-2l", "minicpm-1.2b", 2, 2, 128)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binaries", nargs="+", help="moekit executables, timed in this order")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per case per round")
    parser.add_argument("--work", default=os.path.join(HERE, "work"), help="configs of the training shapes (made once)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OPENBLAS_NUM_THREADS") or os.cpu_count()))
    os.makedirs(args.work, exist_ok=True)
    configs = {}
    for name, preset, layers, _, _ in CASES:
        directory = os.path.join(args.work, f"config-{name}")
        if not os.path.exists(os.path.join(directory, "config.json")):
            subprocess.run([args.binaries[0], "init", directory, "--preset", preset, "--layers", str(layers), "--dtype", "bf16", "--force", "--quiet"],
                           check=True)
        configs[name] = json.load(open(os.path.join(directory, "config.json")))
    recorder = peers.Recorder()
    for round_index in range(args.rounds):
        for name, preset, layers, batch, length in CASES:
            for binary in args.binaries:
                with tempfile.NamedTemporaryFile(suffix=".json") as out:
                    subprocess.run([binary, "bench", "--level", "training", "--preset", preset, "--layers", str(layers), "--batch", str(batch),
                                    "--seq", str(length), "--experts", str(peers.EXPERTS), "--top-k", str(peers.TOP_K),
                                    "--repeats", str(args.repeats), "--json", out.name], check=True, capture_output=True)
                    results = json.load(open(out.name))["results"]
                for kind in ("dense", "moe"):
                    value = next(x for x in results if x["kind"] == kind)["tokens_per_s"]["median"]
                    recorder.add(f"{binary} {name} {kind}", value)
            for experts in (0, peers.EXPERTS):
                peers.torch_training(name, configs[name], batch, length, experts, args.repeats, recorder)
        print(f"round {round_index + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.2f}", flush=True)
    recorder.report([(f"training step {name} {kind}", binary, f"{binary} {name} {kind}", f"torch train {name} {kind}", "PyTorch eager")
                     for name, *_ in CASES for kind in ("dense", "moe") for binary in args.binaries])


if __name__ == "__main__":
    main()

"""Held-out mutation run against the release CLI (issue 16): damaged and hostile inputs must never
crash moekit (a signal), hang it (more than 10 s) or delete a user's file.

    MOEKIT=.build/release/moekit .venv/bin/python scripts/mutation_run.py [--cases 3500] [--seed 1] [--jobs 2]

Base inputs are made fresh (tiny dense and MoE models as safetensors and as a PyTorch .bin, routing
and training logs — finished and of a killed writer —, token files .txt/.npy/.bin, a tokenizer),
then each case mutates one of them (byte flips, overwritten runs, truncation, duplicated or
inserted chunks, JSON values replaced by extreme ones, keys dropped, nesting) or draws extreme
option values, and runs the commands that read it. Every output and input directory holds a
`keep.txt` that must survive, and the inputs' bytes must be unchanged. The counts are printed at
the end; the exit status is 1 when any crash, hang or deletion was seen. This is not part of
`make test` (it takes several minutes); it is the judge the fuzz targets and tests are built for.
"""
import argparse
import concurrent.futures
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "Tests", "Fixtures")
HANG_SECONDS = 10
EXTREME_NUMBERS = [0, -1, 1, 2, 3, 7, 2**31 - 2, 2**31, 2**32 + 1, 2**53, 2**63 - 1, -(2**63), 10**30, 1e308, -1e308, 1e-320, 0.5,
                   100_000_000, 65536, 1 << 20]
# Option values: malformed or out of any range, or small valid ones (so a valid draw finishes quickly:
# a legitimately long run is not a hang), and for size options also large values that must be
# refused by the option's range or the memory estimate.
BAD_OPTION_TEXT = ["-1", "9223372036854775807", "-9223372036854775808", "18446744073709551616", "1e308", "nan", "inf", "-inf", "", "abc",
                   "0x10", "1,2"]
SMALL_OPTION_TEXT = ["0", "1", "2", "3", "8", "1.5", "0.01"]
HUGE_SIZE_TEXT = ["100000000", "4294967296", "2147483647", "1000000000000"]


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Bases:
    """The unmutated inputs, made once."""

    def __init__(self, root, moekit):
        self.root, self.moekit = root, moekit
        run = lambda *a: subprocess.run([moekit, *map(str, a)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tiny = os.path.join(FIXTURES, "minicpm-tiny-torch")
        self.dense = os.path.join(root, "dense")
        shutil.copytree(tiny, self.dense, ignore=shutil.ignore_patterns("pytorch_model.bin", "expected_logits.safetensors"))
        self.torch = os.path.join(root, "torch")
        shutil.copytree(tiny, self.torch, ignore=shutil.ignore_patterns("model.safetensors", "expected_logits.safetensors"))
        shutil.copy(os.path.join(FIXTURES, "tokenizer-bpe-bytefallback", "tokenizer.json"), os.path.join(self.dense, "tokenizer.json"))
        self.moe = os.path.join(root, "moe")
        run("upcycle", self.dense, self.moe, "--experts", 4, "--top-k", 2, "--verify", 0, "--quiet")
        self.tokens_txt = os.path.join(root, "tokens.txt")
        rng = np.random.default_rng(0)
        with open(self.tokens_txt, "w") as f:
            f.write("\n".join(" ".join(map(str, rng.integers(3, 300, 40))) for _ in range(6)) + "\n")
        self.tokens_npy = os.path.join(root, "tokens.npy")
        np.save(self.tokens_npy, rng.integers(3, 300, 64).astype(np.int32))
        self.tokens_bin = os.path.join(root, "tokens.bin")
        rng.integers(3, 300, 4000).astype(np.uint16).tofile(self.tokens_bin)
        self.text = os.path.join(root, "text.txt")
        with open(self.text, "w") as f:
            f.write("Hello world, this is a test.\nhéllo wörld 123 <s> a b\n")
        self.log = os.path.join(root, "routing.h5")
        run("trace", self.moe, "--tokens-file", self.tokens_txt, "--log", self.log, "--batch-tokens", 32, "--per-token", "--threads", 1, "--quiet")
        self.train_log = os.path.join(root, "train.h5")
        run("train", self.moe, "--data", self.tokens_bin, "--steps", 2, "--batch", 2, "--seq", 16, "--lr", 0.01, "--out",
            os.path.join(root, "trained"), "--log", self.train_log, "--threads", 1, "--quiet")
        self.killed_log = os.path.join(root, "killed.h5")
        process = subprocess.Popen([moekit, "trace", self.moe, "--tokens-file", self.tokens_txt, "--log", self.killed_log, "--batch-tokens", "4",
                                    "--per-token", "--threads", "1", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and (not os.path.exists(self.killed_log) or os.path.getsize(self.killed_log) < 30_000):
            time.sleep(0.02)
        process.kill()
        process.wait()


def mutate_bytes(data, rng):
    data = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0 or not data:  # flip a few random bytes
        for _ in range(rng.randint(1, 20)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:  # overwrite a run with one value or random bytes
        start = rng.randrange(len(data))
        length = rng.randint(1, 64)
        fill = bytes([rng.choice([0, 0xFF, 0x7F, 0x80])]) * length if rng.random() < 0.5 else os.urandom(length)
        data[start:start + length] = fill
    elif kind == 2:  # truncate
        data = data[:rng.randrange(len(data))]
    elif kind == 3:  # duplicate a chunk
        start = rng.randrange(len(data))
        chunk = data[start:start + rng.randint(1, 256)]
        position = rng.randrange(len(data))
        data[position:position] = chunk * rng.randint(1, 4)
    elif kind == 4:  # insert random bytes
        position = rng.randrange(len(data))
        data[position:position] = os.urandom(rng.randint(1, 32))
    else:  # little-endian integers near a random position set to extremes (lengths, offsets, counts)
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(max(1, len(data) - 8))
            value = rng.choice([0, 0xFFFFFFFF, 0x7FFFFFFF, 2**63 - 1, 2**64 - 1, 1 << 40, len(data), len(data) + 1])
            data[position:position + 8] = value.to_bytes(8, "little")
    return bytes(data)


def mutate_json(value, rng, depth=0):
    """Replaces, drops or nests values of a JSON document."""
    if isinstance(value, dict) and value:
        value = dict(value)
        for key in rng.sample(sorted(value), k=min(len(value), rng.randint(1, 3))):
            action = rng.random()
            if action < 0.15:
                del value[key]
            elif action < 0.85:
                value[key] = mutate_json(value[key], rng, depth + 1)
            else:
                value[key] = rng.choice([None, "x", [], {}, True, [value[key]] * 3, {"type": "Sequence", "normalizers": []}])
        return value
    if isinstance(value, list) and value:
        value = list(value)
        action = rng.random()
        if action < 0.3:
            index = rng.randrange(len(value))
            value[index] = mutate_json(value[index], rng, depth + 1)
        elif action < 0.5:
            value = value * rng.randint(2, 40)
        elif action < 0.7:
            del value[rng.randrange(len(value))]
        else:
            value = [value]
        return value
    if isinstance(value, bool):
        return rng.choice([not value, 0, "true", None])
    if isinstance(value, (int, float)):
        return rng.choice(EXTREME_NUMBERS)
    if isinstance(value, str):
        return rng.choice(["", value * rng.randint(2, 50), "\u2581" * 5, value + "\u0000", "a", "<s>", "\ud7ff" * 3])
    return rng.choice(EXTREME_NUMBERS + ["", None, []])


def nested_json(depth):
    return "[" * depth + "]" * depth


class Case:
    def __init__(self, name, commands, inputs, outputs):
        self.name, self.commands, self.inputs, self.outputs = name, commands, inputs, outputs


def make_case(index, bases, work, rng):
    """One mutated input (or option draw) in its own directory and the commands that read it."""
    directory = os.path.join(work, f"case{index}")
    os.makedirs(directory)
    out = os.path.join(directory, "out")
    os.makedirs(out)
    with open(os.path.join(out, "keep.txt"), "w") as f:
        f.write("user data")
    kind = rng.choice(["safetensors", "safetensors", "torch", "torch", "config", "config", "moe-config", "log", "log", "killed-log",
                       "train-log", "tokens-txt", "tokens-npy", "tokens-bin", "tokenizer", "tokenizer", "text", "options", "options",
                       "options", "overwrite"])
    model = os.path.join(directory, "model")
    source_model = {"torch": bases.torch, "moe-config": bases.moe}.get(kind, bases.dense)
    shutil.copytree(source_model, model)
    with open(os.path.join(model, "keep.txt"), "w") as f:
        f.write("user data")
    tokens, text = bases.tokens_txt, bases.text
    out_model = os.path.join(out, "result")
    commands = []
    if kind == "safetensors":
        path = os.path.join(model, "model.safetensors")
        data = open(path, "rb").read()
        # mutate mostly the header: that is where the parser works
        header = 8 + int.from_bytes(data[:8], "little")
        cut = rng.choice([header, header, len(data)])
        open(path, "wb").write(mutate_bytes(data[:cut], rng) + data[cut:])
        commands = [["show", model], ["show", model, "--json", "--values"], ["forward", model, "--tokens-file", tokens, "--output", out + "/l.safetensors"],
                    ["upcycle", model, out_model, "--experts", 2, "--top-k", 1, "--verify", 4, "--quiet"], ["convert", model, out_model, "--quiet"]]
    elif kind == "torch":
        path = os.path.join(model, "pytorch_model.bin")
        data = open(path, "rb").read()
        position = rng.choice(["pickle", "directory", "anywhere"])
        if position == "pickle":
            start = data.find(b"data.pkl") + 8
            prefix, rest = data[:start], data[start:]
            open(path, "wb").write(prefix + mutate_bytes(rest[:2000], rng) + rest[2000:])
        elif position == "directory":
            split = data.rfind(b"PK\x01\x02", 0, len(data))
            open(path, "wb").write(data[:split] + mutate_bytes(data[split:], rng))
        else:
            open(path, "wb").write(mutate_bytes(data, rng))
        commands = [["show", model], ["forward", model, "--tokens-file", tokens, "--output", out + "/l.safetensors"],
                    ["convert", model, out_model, "--quiet"]]
    elif kind in ("config", "moe-config"):
        path = os.path.join(model, "config.json")
        config = json.load(open(path))
        roll = rng.random()
        if roll < 0.75:
            text_config = json.dumps(mutate_json(config, rng))
        elif roll < 0.85:
            text_config = nested_json(rng.choice([10, 600, 100_000]))
        else:
            text_config = mutate_bytes(json.dumps(config).encode(), rng).decode("latin-1")
        open(path, "w").write(text_config)
        commands = [["show", model], ["forward", model, "--tokens-file", tokens, "--output", out + "/l.safetensors"],
                    ["upcycle", model, "--experts", 4, "--top-k", 2, "--dry-run"]]
        if kind == "moe-config":
            commands.append(["trace", model, "--tokens-file", tokens, "--no-log", "--quiet"])
    elif kind in ("log", "killed-log", "train-log"):
        source = {"log": bases.log, "killed-log": bases.killed_log, "train-log": bases.train_log}[kind]
        path = os.path.join(directory, "log.h5")
        open(path, "wb").write(mutate_bytes(open(source, "rb").read(), rng))
        commands = [["inspect", path], ["inspect", path, "--json"], ["inspect", path, "--last", 2, "--svg", out + "/h.svg"]]
        if kind == "log":
            appended = os.path.join(out, "append.h5")
            shutil.copy(path, appended)
            commands.append(["trace", bases.moe, "--tokens-file", tokens, "--log", appended, "--append", "--quiet"])
    elif kind in ("tokens-txt", "tokens-npy", "tokens-bin"):
        source = {"tokens-txt": bases.tokens_txt, "tokens-npy": bases.tokens_npy, "tokens-bin": bases.tokens_bin}[kind]
        path = os.path.join(directory, os.path.basename(source))
        data = open(source, "rb").read()
        if kind == "tokens-npy" and rng.random() < 0.5:
            header_end = data.index(b"\n") + 1
            header = data[:header_end].decode("latin-1")
            header = header.replace(str(64), rng.choice(["4611686018427387913", "-1", "0", "1, 2", "(", "2**64", "99999999999999999999"]))
            data = header.encode("latin-1") + data[header_end:]
        else:
            data = mutate_bytes(data, rng)
        open(path, "wb").write(data)
        if kind == "tokens-bin":
            commands = [["train", model, "--data", path, "--steps", 1, "--batch", 1, "--seq", 8, "--lr", 0.01, "--out", out_model, "--quiet",
                         "--threads", 1]]
        else:
            commands = [["forward", model, "--tokens-file", path, "--output", out + "/l.safetensors"],
                        ["trace", bases.moe, "--tokens-file", path, "--no-log", "--quiet"],
                        ["train", model, "--data", path, "--steps", 1, "--batch", 1, "--seq", 4, "--lr", 0.01, "--out", out_model, "--quiet",
                         "--threads", 1]]
    elif kind == "tokenizer":
        path = os.path.join(model, "tokenizer.json")
        tokenizer = json.load(open(path))
        roll = rng.random()
        if roll < 0.6:
            for section in rng.sample(["normalizer", "pre_tokenizer", "decoder", "added_tokens", "post_processor", "model"], k=rng.randint(1, 2)):
                tokenizer[section] = mutate_json(tokenizer[section], rng) if tokenizer.get(section) is not None else rng.choice(
                    [{"type": "Sequence", "normalizers": [{"type": "Replace", "pattern": {"String": "a"}, "content": "aa"}] * 40},
                     {"type": "NFKD"}, {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}])
            data = json.dumps(tokenizer).encode()
        elif roll < 0.75:
            tokenizer["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Replace", "pattern": {"String": " "},
                                                                            "content": "  " * rng.randint(1, 8)}] * rng.randint(1, 60)}
            data = json.dumps(tokenizer).encode()
        else:
            data = mutate_bytes(json.dumps(tokenizer).encode(), rng)
        open(path, "wb").write(data)
        commands = [["tokenize", model, "--text", text], ["tokenize", model, "--text", text, "--tokens"],
                    ["forward", model, "--text", text, "--output", out + "/l.safetensors"]]
    elif kind == "text":
        path = os.path.join(directory, "text.txt")
        open(path, "wb").write(mutate_bytes(open(text, "rb").read() * rng.randint(1, 20), rng))
        commands = [["tokenize", model, "--text", path, "--tokens"], ["forward", model, "--text", path, "--output", out + "/l.safetensors"]]
    elif kind == "overwrite":
        # outputs that must never replace inputs or user files
        link = os.path.join(directory, "link")
        os.symlink(model, link)
        # the input itself (directly, through a link or ..), a directory holding it, or a user's file
        target = rng.choice([model, link, model + "/../model", directory, os.path.join(out, "keep.txt")])
        keep = os.path.join(out, "keep.txt")
        commands = [rng.choice([["upcycle", model, target, "--experts", 2, "--top-k", 1, "--verify", 0, "--force", "--quiet"],
                                ["convert", model, target, "--force", "--quiet"],
                                # the demo in a non-empty directory without --force, or on a file with or without it
                                ["demo", "--out", rng.choice([out, directory, model]), "--steps", 4, "--quiet"],
                                ["demo", "--out", keep, "--steps", 4, "--quiet", "--force"],
                                ["init", target, "--preset", "tiny", "--layers", 1, "--quiet"],
                                ["corpus", keep, "--tokens", 100]])]
    else:  # options
        value = lambda: rng.choice(BAD_OPTION_TEXT + SMALL_OPTION_TEXT)
        size = lambda: rng.choice(BAD_OPTION_TEXT + SMALL_OPTION_TEXT + HUGE_SIZE_TEXT)
        choices = [
            ["upcycle", model, out_model, "--experts", size(), "--top-k", value(), "--verify", size(), "--quiet"],
            ["upcycle", model, "--experts", value(), "--top-k", "1", "--dry-run", "--granularity", value(), "--method", "granular"],
            ["upcycle", model, out_model, "--experts", "4", "--top-k", "2", "--router-std", value(), "--noise-std", value(), "--method", "noise",
             "--verify", "0", "--quiet"],
            ["upcycle", model, out_model, "--experts", "4", "--top-k", "2", "--shard-size", value() + rng.choice(["", "GB", "B", "KiB"]),
             "--verify", "0", "--quiet"],
            ["train", model, "--data", bases.tokens_bin, "--steps", value(), "--batch", size(), "--seq", size(), "--lr", value(),
             "--out", out_model, "--quiet", "--threads", "1"],
            ["train", model, "--data", bases.tokens_bin, "--steps", "2", "--batch", "1", "--seq", "8", "--lr", "0.01", "--warmup", value(),
             "--decay-fraction", value(), "--validation-fraction", value(), "--eval-every", value(), "--val-batches", value(),
             "--save-every", value(), "--aux-loss", value(), "--z-loss", value(), "--clip", value(), "--weight-decay", value(),
             "--final-lr-ratio", value(), "--out", out_model, "--quiet", "--threads", value()],
            ["bench", "--layers", value(), "--experts", value(), "--top-k", value(), "--tokens", value(), "--repeats", "1", "--decode", value(),
             "--threads", value(), "--preset", "tiny", "--level", "layer"],
            ["bench", "--layers", size(), "--experts", size(), "--tokens", size(), "--repeats", "1", "--threads", size(), "--preset", "tiny"],
            ["bench", "--level", "training", "--batch", size(), "--seq", size(), "--preset", "tiny", "--repeats", "1", "--threads", "1"],
            ["trace", bases.moe, "--tokens-file", tokens, "--no-log", "--batch-tokens", size(), "--threads", size(), "--quiet"],
            ["trace", bases.moe, "--tokens-file", tokens, "--no-log", "--quiet", "--router",
             rng.choice(["topk", "expert-choice", "softmax-topk", "switch", "sigmoid"]) + ":" + rng.choice(["cf", "scale", "jitter", "z", "noise"])
             + "=" + value()],
            ["forward", model, "--tokens-file", tokens, "--output", out + "/l.safetensors", "--threads", value()],
            ["inspect", bases.log, "--layer", value(), "--step", value()],
            ["inspect", bases.log, "--last", value()],
            ["init", out_model, "--preset", "tiny", "--layers", size(), "--seed", value(), "--quiet"],
            # (--tokens 100000000 is valid and takes tens of seconds: a long run, not a hang)
            ["corpus", out + "/c.bin", "--tokens", value(), "--seed", value()],
            ["demo", "--out", out_model, "--steps", rng.choice(BAD_OPTION_TEXT + ["0", "1", "3"]), "--experts", size(), "--top-k", value(), "--quiet"],
        ]
        commands = [rng.choice(choices)]
    inputs = [os.path.join(model, name) for name in sorted(os.listdir(model))]
    return Case(f"{index}:{kind}", commands, {path: sha(path) for path in inputs if os.path.isfile(path)},
                [os.path.join(out, "keep.txt"), os.path.join(model, "keep.txt")])


def run_case(case, moekit):
    results = []
    for command in case.commands:
        arguments = [moekit, *map(str, command)]
        start = time.monotonic()
        process = subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace",
                                   start_new_session=True)
        try:
            _, stderr = process.communicate(timeout=HANG_SECONDS)
            status = process.returncode
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            status, stderr = "hang", ""
        seconds = time.monotonic() - start
        if status == "hang":
            outcome = "hang"
        elif status < 0 or status >= 128 or "Fatal error" in stderr or "AddressSanitizer" in stderr:
            outcome = "crash"
        elif status == 0:
            outcome = "ok"
        else:
            lines = stderr.strip().split("\n")
            outcome = "error" if status in (1, 64) else f"status {status}"
            if status == 1 and not (len(lines) == 1 and lines[0].startswith("moekit: error: ")):
                outcome = "multi-line error"
        results.append((command, outcome, status, seconds, stderr.strip()[-300:]))
    deleted = [path for path in case.outputs if not os.path.exists(path)]
    changed = [path for path, digest in case.inputs.items() if not os.path.exists(path) or sha(path) != digest]
    return case.name, results, deleted, changed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=3500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    moekit = os.path.abspath(os.environ.get("MOEKIT", os.path.join(ROOT, ".build", "release", "moekit")))
    work = tempfile.mkdtemp(prefix="moekit-mutation-")
    started = time.time()
    try:
        bases = Bases(os.path.join(work, "bases"), moekit)
        rng = random.Random(args.seed)
        counts = {}
        failures = []
        runs = 0
        by_kind = {}
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            pending = set()
            index = 0
            while index < args.cases or pending:
                while index < args.cases and len(pending) < args.jobs * 2:
                    case = make_case(index, bases, os.path.join(work, "cases"), rng)
                    pending.add(pool.submit(run_case, case, moekit))
                    index += 1
                done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    name, results, deleted, changed = future.result()
                    kind = name.split(":")[1]
                    by_kind[kind] = by_kind.get(kind, 0) + 1
                    for command, outcome, status, seconds, stderr in results:
                        runs += 1
                        counts[outcome] = counts.get(outcome, 0) + 1
                        if outcome in ("crash", "hang", "multi-line error") or outcome.startswith("status"):
                            failures.append((name, outcome, status, f"{seconds:.1f}s", " ".join(map(str, command[:6])), stderr))
                    if deleted:
                        counts["deleted user file"] = counts.get("deleted user file", 0) + len(deleted)
                        failures.append((name, "deleted", deleted))
                    if changed:
                        counts["changed input"] = counts.get("changed input", 0) + len(changed)
                        failures.append((name, "changed input", changed))
                    shutil.rmtree(os.path.join(work, "cases", f"case{name.split(':')[0]}"), ignore_errors=True)
                if index % 250 == 0 and index:
                    print(f"  {index} cases, {runs} runs, {time.time() - started:.0f}s: {counts}", flush=True)
        print(f"mutation run: {args.cases} mutated inputs ({', '.join(f'{k} {v}' for k, v in sorted(by_kind.items()))}), "
              f"{runs} moekit runs in {time.time() - started:.0f}s, seed {args.seed}")
        print(f"  outcomes: {counts}")
        crashes, hangs = counts.get("crash", 0), counts.get("hang", 0)
        deletions = counts.get("deleted user file", 0) + counts.get("changed input", 0)
        print(f"  crashes (signals) {crashes}, hangs over {HANG_SECONDS}s {hangs}, deleted or changed user files {deletions}")
        for failure in failures[:40]:
            print("  ", failure)
        return 1 if crashes or hangs or deletions else 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

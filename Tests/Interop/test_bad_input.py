"""Damaged and hostile inputs never hang, crash or destroy data (issue 16).

Every test here is one of the issue's reproducers: the command must end within a few seconds with
a one-line error (or a usage error) and no signal, and no user file may disappear.
"""
import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import time

import numpy as np
import pytest

from torch_format import write_zip

INT64_MAX = str(2**63 - 1)


def run(moekit, *args, timeout=30):
    """Runs moekit; returns (CompletedProcess, seconds). A timeout is a test failure (a hang)."""
    start = time.monotonic()
    try:
        result = subprocess.run([moekit, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        raise AssertionError(f"moekit {' '.join(map(str, args))} hung for more than {timeout}s") from expired
    return result, time.monotonic() - start


def assert_clean_failure(result, *needles, usage=False):
    """Exit 1 with one `moekit: error:` line (or ArgumentParser's exit 64 for a usage error), no signal."""
    assert result.returncode >= 0, f"killed by signal {-result.returncode}: {result.stderr[-2000:]}"
    assert "Fatal error" not in result.stderr and "Segmentation" not in result.stderr, result.stderr
    if usage:
        assert result.returncode == 64, (result.returncode, result.stderr)
        assert result.stderr.startswith("Error: "), result.stderr
    else:
        assert result.returncode == 1, (result.returncode, result.stderr)
        lines = result.stderr.strip("\n").split("\n")
        assert len(lines) == 1 and lines[0].startswith("moekit: error: "), result.stderr
    for needle in needles:
        assert str(needle) in result.stderr, (needle, result.stderr)


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
    return os.path.join(fixtures_dir, "minicpm-tiny-torch")


@pytest.fixture(scope="module")
def moe_log(tmp_path_factory, run_moekit):
    """A MoE model and a finished per-token routing log of it."""
    root = tmp_path_factory.mktemp("badlog")
    run_moekit("init", root / "dense", "--preset", "tiny", "--layers", 2, "--quiet")
    run_moekit("upcycle", root / "dense", root / "moe", "--experts", 4, "--top-k", 2, "--verify", 0, "--quiet")
    rng = np.random.default_rng(0)
    tokens = root / "tokens.txt"
    tokens.write_text("\n".join(" ".join(map(str, rng.integers(0, 1024, 64))) for _ in range(40)) + "\n")
    log = root / "routing.h5"
    run_moekit("trace", root / "moe", "--tokens-file", tokens, "--log", log, "--batch-tokens", 64, "--per-token",
               "--threads", 1, "--quiet")
    return root, log, tokens


def damaged_copies(log, directory, count, seed=0, flips=20):
    data = log.read_bytes()
    rng = random.Random(seed)
    for index in range(count):
        damaged = bytearray(data)
        for _ in range(flips):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        path = directory / f"damaged-{index}.h5"
        path.write_bytes(bytes(damaged))
        yield path


# 1. Routing logs

def test_damaged_finished_logs_fail_fast(moekit, moe_log, tmp_path):
    """20 random bytes overwritten: inspect answers (report or one-line error naming the file) within 5 s."""
    _, log, _ = moe_log
    for path in damaged_copies(log, tmp_path, 12):
        result, seconds = run(moekit, "inspect", path, "--json", timeout=20)
        assert seconds < 5, f"{path.name}: {seconds:.1f}s"
        if result.returncode != 0:
            assert_clean_failure(result, path)


def test_damaged_log_of_a_killed_writer_fails_fast(moekit, moe_log, tmp_path):
    """A log still marked open for writing is read as SWMR, with bounded metadata retries."""
    root, _, tokens = moe_log
    log = tmp_path / "live.h5"
    process = subprocess.Popen([moekit, *map(str, ["trace", root / "moe", "--tokens-file", tokens, "--log", log, "--batch-tokens", 8,
                                                   "--per-token", "--threads", 1, "--quiet"])],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and (not log.exists() or log.stat().st_size < 40_000):
        time.sleep(0.05)
    process.kill()
    process.wait()
    intact, seconds = run(moekit, "inspect", log, "--json")
    assert intact.returncode == 0 and seconds < 5, intact.stderr
    for path in damaged_copies(log, tmp_path, 8, seed=1):
        result, seconds = run(moekit, "inspect", path, "--json", timeout=30)
        assert seconds < 5, f"{path.name}: {seconds:.1f}s"
        if result.returncode != 0:
            assert_clean_failure(result, path)


# 2. Signals

def end_with_sigterm(moekit, arguments, delay):
    process = subprocess.Popen([moekit, *map(str, arguments)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    process.send_signal(signal.SIGTERM)
    try:
        status = process.wait(timeout=3)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"moekit {arguments[0]} did not end within 3 s of SIGTERM (deadlock)")
    return status, process.stderr.read()


def test_sigterm_ends_a_process_blocked_inside_hdf5(moekit, tmp_path):
    """`inspect` on a FIFO blocks inside HDF5 (H5Fis_hdf5 opening it, with HDF5's library lock
    held) until a writer appears. SIGTERM must end it: the handler used to call exit(), whose
    H5_term_library atexit handler then waited for that lock forever."""
    fifo = tmp_path / "log.h5"
    os.mkfifo(fifo)
    # inspect reads in a child process; MOEKIT_LOG_READER_CHILD makes this process the reader.
    environment = dict(os.environ, MOEKIT_LOG_READER_CHILD="1")
    for _ in range(2):
        process = subprocess.Popen([moekit, "inspect", str(fifo)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   env=environment)
        # Wait until the process sleeps in open() of the FIFO, called by HDF5 (wchan fifo_open's wait).
        deadline = time.time() + 20
        while time.time() < deadline and "wait_for_partner" not in open(f"/proc/{process.pid}/wchan").read():
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError("inspect did not end within 3 s of SIGTERM (deadlock)")
        stderr = process.stderr.read()
        assert status == 128 + signal.SIGTERM, (status, stderr)
        assert "interrupted" in stderr
    # Without it, SIGTERM to inspect ends its reader child too.
    process = subprocess.Popen([moekit, "inspect", str(fifo)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    children = open(f"/proc/{process.pid}/task/{process.pid}/children").read().split()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=3) == 128 + signal.SIGTERM
    time.sleep(0.2)
    assert children and not any(os.path.exists(f"/proc/{child}") and "zombie" not in open(f"/proc/{child}/status").read().lower()
                                for child in children)


def test_sigterm_ends_trace_and_removes_its_temporary_files(moekit, moe_log, tmp_path):
    """SIGTERM at many points of a trace that spends much of its time writing HDF5 (per-token
    logging every 8 tokens): the process always ends within 3 s and leaves no temporary file."""
    root, _, tokens = moe_log
    for index, delay in enumerate([0.2, 0.35, 0.5, 0.65, 0.8, 1.0]):
        arguments = ["trace", root / "moe", "--tokens-file", tokens, "--log", tmp_path / f"t{index}.h5", "--batch-tokens", 8, "--per-token",
                     "--threads", 1, "--quiet"]
        status, stderr = end_with_sigterm(moekit, arguments, delay)
        assert status in (0, 128 + signal.SIGTERM, -signal.SIGTERM), (status, stderr)
    assert not [name for name in os.listdir(tmp_path) if ".tmp" in name]


# 3. Outputs never replace what they should not

def test_demo_refuses_a_non_empty_directory_and_a_file(moekit, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result, _ = run(moekit, "demo", "--out", out, "--steps", 4)
    assert_clean_failure(result, out, "--force")
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    existing = tmp_path / "a-file"
    existing.write_text("mine")
    for force in [[], ["--force"]]:
        result, _ = run(moekit, "demo", "--out", existing, "--steps", 4, *force)
        assert_clean_failure(result, existing, "not a directory")
        assert existing.read_text() == "mine"


def digest(directory):
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in sorted(os.listdir(directory))}


def test_outputs_never_replace_their_input_or_a_file(moekit, tiny, tmp_path):
    source = tmp_path / "dense"
    shutil.copytree(tiny, source)
    (tmp_path / "link").symlink_to(source)
    before = digest(source)
    for output in [source, tmp_path / "link", tmp_path / "dense" / ".." / "dense", tmp_path]:
        result, _ = run(moekit, "upcycle", source, output, "--experts", 2, "--top-k", 1, "--verify", 0, "--force", "--quiet")
        assert_clean_failure(result, "the output")
        result, _ = run(moekit, "convert", source, output, "--force", "--quiet")
        assert_clean_failure(result, "the output")
    assert digest(source) == before
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for arguments in [["upcycle", source, notes, "--experts", 2, "--top-k", 1, "--verify", 0], ["convert", source, notes],
                      ["init", notes, "--preset", "tiny", "--layers", 1]]:
        result, _ = run(moekit, *arguments, "--force", "--quiet")
        assert_clean_failure(result, notes, "not a directory")
        assert notes.read_text() == "mine"


# 4. Deeply nested pickles

@pytest.mark.parametrize("depth", [30_000, 50_000, 200_000])
def test_deeply_nested_pickle_is_an_error_not_a_crash(moekit, tiny, tmp_path, depth):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(os.path.join(tiny, "config.json"), model / "config.json")
    pickle = b"\x80\x02N" + b"\x85" * depth + b"."
    write_zip(model / "pytorch_model.bin", [("archive/data.pkl", pickle), ("archive/byteorder", b"little")])
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("1 2 3\n")
    for arguments in [["show", model], ["forward", model, "--tokens-file", tokens, "--output", tmp_path / "logits.safetensors"]]:
        result, _ = run(moekit, *arguments)
        assert_clean_failure(result, model / "pytorch_model.bin")


# 5. Hostile config.json values

@pytest.mark.parametrize("field,value", [("num_hidden_layers", 2147483646), ("num_experts", 2147483646),
                                         ("max_position_embeddings", 2147483646), ("max_position_embeddings", 100_000_000),
                                         ("vocab_size", 2147483646), ("hidden_size", 1 << 30), ("intermediate_size", 2147483646)])
def test_absurd_config_sizes_are_refused_before_allocating(moekit, tiny, tmp_path, field, value):
    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    config = json.loads((model / "config.json").read_text())
    config[field] = value
    if field == "num_experts":
        config["num_experts_per_tok"] = 2
    (model / "config.json").write_text(json.dumps(config))
    for arguments in [["show", model], ["forward", model, "--tokens-file", model / "tokens.txt", "--output", tmp_path / "l.safetensors"],
                      ["upcycle", model, "--experts", 4, "--top-k", 2, "--dry-run"]]:
        result, seconds = run(moekit, *arguments)
        assert_clean_failure(result, model / "config.json", field)
        assert seconds < 5


# 6. Tokenizer normaliser chains

def test_tokenizer_replace_chain_that_doubles_text_fails_clearly(moekit, fixtures_dir, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    tokenizer = json.loads(open(os.path.join(fixtures_dir, "tokenizer-bpe-bytefallback", "tokenizer.json")).read())
    tokenizer["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Replace", "pattern": {"String": "a"}, "content": "aa"}] * 40}
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    text = tmp_path / "text.txt"
    text.write_text("a banana\n")
    result, seconds = run(moekit, "tokenize", model, "--text", text)
    assert_clean_failure(result, model / "tokenizer.json", "normalizer")
    assert seconds < 5
    tokenizer["normalizer"] = None
    tokenizer["decoder"] = {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": "a", "content": "aa"}] * 40}
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    result, seconds = run(moekit, "tokenize", model, "--text", text, "--tokens")
    assert_clean_failure(result, model / "tokenizer.json", "decoder")


# 7. Option values

@pytest.mark.parametrize("arguments", [
    ["upcycle", "{tiny}", "{out}", "--experts", 4, "--top-k", 2, "--verify", INT64_MAX],
    ["upcycle", "{tiny}", "{out}", "--experts", INT64_MAX, "--top-k", 2],
    ["upcycle", "{tiny}", "--experts", INT64_MAX, "--top-k", 2, "--dry-run"],
    ["train", "{tiny}", "--data", "{tiny}/tokens.txt", "--steps", 1, "--batch", INT64_MAX, "--seq", 8, "--lr", 0.01, "--out", "{out}"],
    ["train", "{tiny}", "--data", "{tiny}/tokens.txt", "--steps", 1, "--batch", 1, "--seq", INT64_MAX, "--lr", 0.01, "--out", "{out}"],
    ["train", "{tiny}", "--data", "{tiny}/tokens.txt", "--steps", 1, "--batch", 1, "--seq", 8, "--lr", 0.01, "--out", "{out}", "--threads", INT64_MAX],
    ["bench", "--layers", INT64_MAX],
    ["bench", "--experts", INT64_MAX],
    ["bench", "--tokens", INT64_MAX],
    ["bench", "--threads", INT64_MAX],
    ["trace", "{tiny}", "--tokens-file", "{tiny}/tokens.txt", "--log", "{out}.h5", "--threads", INT64_MAX],
    ["trace", "{tiny}", "--tokens-file", "{tiny}/tokens.txt", "--log", "{out}.h5", "--batch-tokens", INT64_MAX],
    ["init", "{out}", "--preset", "tiny", "--layers", INT64_MAX],
    ["corpus", "{out}.bin", "--tokens", INT64_MAX],
    ["demo", "--out", "{out}", "--experts", INT64_MAX],
])
def test_huge_option_values_are_usage_errors(moekit, tiny, tmp_path, arguments):
    values = [str(a).format(tiny=tiny, out=tmp_path / "out") for a in arguments]
    result, seconds = run(moekit, *values)
    assert_clean_failure(result, usage=True)
    assert seconds < 5 and not (tmp_path / "out").exists()


def test_bench_tokens_beyond_memory_are_refused(moekit):
    result, seconds = run(moekit, "bench", "--tokens", 1_000_000, "--threads", 1)
    assert_clean_failure(result, "memory")
    assert seconds < 5


def test_expert_choice_capacity_factor_1e308_routes(moekit, moe_log, tmp_path):
    root, _, tokens = moe_log
    result, _ = run(moekit, "trace", root / "moe", "--tokens-file", tokens, "--no-log", "--router", "topk:cf=1e308", "--threads", 1, "--quiet",
                    timeout=120)
    assert result.returncode == 0, result.stderr
    result, _ = run(moekit, "forward", root / "moe", "--tokens-file", tokens, "--output", tmp_path / "l.safetensors", "--router",
                    "expert-choice:cf=1e308", "--threads", 1, timeout=120)
    assert result.returncode == 0, result.stderr


# 8. Errors that say what the input is

def test_config_that_is_not_a_regular_file_is_named_for_what_it_is(moekit, tiny, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    os.remove(model / "config.json")
    (model / "config.json").mkdir()
    result, _ = run(moekit, "show", model)
    assert_clean_failure(result, model / "config.json", "is a directory")
    os.rmdir(model / "config.json")
    os.mkfifo(model / "config.json")
    result, seconds = run(moekit, "show", model, timeout=10)
    assert_clean_failure(result, model / "config.json", "is a FIFO")
    assert seconds < 5
    os.remove(model / "config.json")
    os.symlink("/dev/zero", model / "config.json")
    result, _ = run(moekit, "show", model, timeout=10)
    assert_clean_failure(result, model / "config.json", "character device")


def test_npy_whose_shape_overflows_says_so(moekit, tiny, tmp_path):
    header = "{'descr': '<i8', 'fortran_order': False, 'shape': (4611686018427387913,), }"
    header += " " * ((-(10 + len(header) + 1)) % 64) + "\n"
    path = tmp_path / "tokens.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\x00" * 36)
    result, _ = run(moekit, "forward", tiny, "--tokens-file", path, "--output", tmp_path / "l.safetensors")
    assert_clean_failure(result, path, "overflows")


def test_log_on_which_hdf5_itself_loops_gives_an_error(moekit, fixtures_dir, moe_log, tmp_path):
    """Found by the routing-log fuzz target: a damaged global heap makes HDF5's H5Aread of a string
    attribute spin forever, or crash with SIGSEGV (inside libhdf5, which cannot be interrupted or
    recovered). inspect reads in a child process under a read deadline and answers with one error
    line naming the file, in about 4 s."""
    log = os.path.join(fixtures_dir, "damaged-logs", "global-heap-loop.h5")
    result, seconds = run(moekit, "inspect", log, timeout=20)
    assert_clean_failure(result, log, "did not finish")
    assert seconds < 8
    crash = os.path.join(fixtures_dir, "damaged-logs", "global-heap-crash.h5")
    result, seconds = run(moekit, "inspect", crash, timeout=20)
    assert_clean_failure(result, crash, "crashed")
    for arguments in [["trace", moe_log[0] / "moe", "--tokens-file", moe_log[2], "--log"], ["train", moe_log[0] / "moe", "--data", moe_log[2],
                      "--steps", 2, "--batch", 1, "--seq", 8, "--lr", 0.01, "--out", tmp_path / "out", "--resume", "--log"]]:
        copy = tmp_path / "copy.h5"
        shutil.copy(crash, copy)
        result, _ = run(moekit, *arguments, copy, *(["--append"] if arguments[0] == "trace" else []), "--quiet", timeout=30)
        assert_clean_failure(result, copy)
    appended = tmp_path / "append.h5"
    shutil.copy(log, appended)
    root, _, tokens = moe_log
    result, seconds = run(moekit, "trace", root / "moe", "--tokens-file", tokens, "--log", appended, "--append", "--quiet", timeout=20)
    assert_clean_failure(result, appended)
    assert seconds < 8


def test_names_with_line_breaks_stay_on_one_error_line(moekit, tmp_path):
    """A damaged file's tensor or entry name quoted in an error may hold control characters."""
    header = json.dumps({"a\nb\r\u2028c\x0bd": {"dtype": "XX", "shape": [1], "data_offsets": [0, 4]}}).encode()
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    result, _ = run(moekit, "show", path)
    assert_clean_failure(result, path)

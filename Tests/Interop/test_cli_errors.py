"""The CLI turns every input error into one line on stderr naming the file, and exit status 1."""
import os
import shutil

import numpy as np
from safetensors.numpy import save_file


def assert_one_line_error(result, *needles):
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.strip("\n").split("\n")
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("moekit: error: "), lines[0]
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    assert "Fatal error" not in result.stderr


def test_truncated_file(tmp_path, run_moekit):
    path = tmp_path / "whole.safetensors"
    save_file({"w": np.arange(64, dtype=np.float32)}, str(path))
    data = path.read_bytes()
    for cut, name in [(len(data) - 10, "data.safetensors"), (20, "header.safetensors"), (5, "length.safetensors")]:
        truncated = tmp_path / name
        truncated.write_bytes(data[:cut])
        assert_one_line_error(run_moekit("show", truncated, check=False), truncated)
        assert_one_line_error(run_moekit("show", truncated, "--json", "--values", check=False), truncated)


def test_bad_json_config(tmp_path, fixtures_dir, run_moekit):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(os.path.join(fixtures_dir, "minicpm-tiny-torch", "model.safetensors"), model / "model.safetensors")
    (model / "config.json").write_text('{"hidden_size": 64,')
    assert_one_line_error(run_moekit("show", model, check=False), model / "config.json", "invalid JSON")
    (model / "config.json").write_text('{"intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 300}')
    assert_one_line_error(run_moekit("show", model, check=False), model / "config.json", "hidden_size")


def test_missing_directory(tmp_path, run_moekit):
    missing = tmp_path / "no-such-model"
    assert_one_line_error(run_moekit("show", missing, check=False), missing)


def test_malicious_pickle_is_refused_unrun(fixtures_dir, run_moekit):
    """The pickle calls posix.system: refused by name, nothing executed (more in test_pytorch_checkpoint)."""
    directory = os.path.join(fixtures_dir, "refuse-me")
    assert_one_line_error(run_moekit("show", directory, check=False), os.path.join(directory, "pytorch_model.bin"), "posix.system")
    assert not os.path.exists("/tmp/moekit-pwned")


def test_init_refuses_an_existing_directory(tmp_path, run_moekit):
    existing = tmp_path / "model"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert_one_line_error(run_moekit("init", existing, "--preset", "tiny", "--layers", "1", "--quiet", check=False), existing, "already exists")
    assert sorted(os.listdir(tmp_path)) == ["model"] and os.listdir(existing) == ["keep.txt"]


def test_bad_thread_count_is_refused(tmp_path, fixtures_dir, run_moekit):
    """--threads below 1 is a usage error, before any model is loaded."""
    model = os.path.join(fixtures_dir, "minicpm-tiny-torch")
    result = run_moekit("forward", model, "--tokens-file", os.path.join(model, "tokens.txt"),
                        "--output", tmp_path / "logits.safetensors", "--threads", 0, check=False)
    assert result.returncode != 0 and "--threads must be in 1...1024, got 0" in result.stderr
    assert not (tmp_path / "logits.safetensors").exists()

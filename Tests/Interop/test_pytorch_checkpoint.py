"""PyTorch `.bin` model directories through the CLI, checked by outside readers.

- `moekit convert` of the torch-written fixture gives safetensors that the `safetensors` package
  reads back to exactly the bytes of the fixture's own `model.safetensors`; config and other files
  are copied;
- `moekit forward` on a `.bin` directory (single file, or shards with an index written the way
  torch.save lays them out) reproduces the published logits;
- `moekit upcycle` reads a `.bin` dense model, and `moekit trace` on the MoE saved as `.bin` logs
  the same routing as on its safetensors;
- the malicious pickle and every damaged or crafted variant are one-line errors; nothing runs.
"""
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import safetensors

import torch_format
from test_cli_errors import assert_one_line_error

try:
    import ml_dtypes
    BF16 = ml_dtypes.bfloat16
except ImportError:  # pragma: no cover
    BF16 = None


def tensors_of(path):
    """{name: (dtype, shape, bytes)} as the safetensors package deserializes the file."""
    return {name: (info["dtype"], list(info["shape"]), bytes(info["data"])) for name, info in safetensors.deserialize(path.read_bytes())}


def as_numpy(dtype, shape, data):
    numpy_dtype = {"BF16": BF16, "F16": np.float16, "F32": np.float32}[dtype]
    return np.frombuffer(data, dtype=numpy_dtype).reshape(shape)


def bin_model(tmp_path, fixtures_dir, name="bin"):
    directory = tmp_path / name
    directory.mkdir()
    tiny = os.path.join(fixtures_dir, "minicpm-tiny-torch")
    shutil.copy(os.path.join(tiny, "config.json"), directory)
    shutil.copy(os.path.join(tiny, "pytorch_model.bin"), directory)
    return directory


def logits(path):
    (dtype, shape, data), = tensors_of(path).values()
    return np.frombuffer(data, dtype=np.float32).reshape(shape)


def test_convert_gives_the_fixture_safetensors_bitwise(tmp_path, fixtures_dir, run_moekit):
    source = bin_model(tmp_path, fixtures_dir)
    (source / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    result = run_moekit("convert", source, tmp_path / "out", "--quiet")
    assert "from PyTorch .bin" in result.stdout
    converted = tensors_of(tmp_path / "out" / "model.safetensors")
    original = tensors_of(Path(fixtures_dir, "minicpm-tiny-torch", "model.safetensors"))
    assert converted == original
    assert (tmp_path / "out" / "config.json").read_bytes() == (source / "config.json").read_bytes()
    assert (tmp_path / "out" / "tokenizer.json").read_text() == '{"model": {"type": "BPE"}}'
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors", "tokenizer.json"]

    # --dtype f32: the same values widened, torch_dtype updated.
    run_moekit("convert", source, tmp_path / "f32", "--dtype", "f32", "--quiet")
    widened = tensors_of(tmp_path / "f32" / "model.safetensors")
    for name, (dtype, shape, data) in original.items():
        assert widened[name][0] == "F32" and widened[name][1] == shape
        expected = (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        np.testing.assert_array_equal(np.frombuffer(widened[name][2], dtype="<f4"), expected, err_msg=name)
    assert json.loads((tmp_path / "f32" / "config.json").read_text())["torch_dtype"] == "float32"


def test_forward_on_bin_matches_the_published_logits(tmp_path, fixtures_dir, run_moekit):
    tiny = os.path.join(fixtures_dir, "minicpm-tiny-torch")
    expected = logits(Path(tiny, "expected_logits.safetensors"))
    source = bin_model(tmp_path, fixtures_dir)
    run_moekit("forward", source, "--tokens-file", os.path.join(tiny, "tokens.txt"), "--output", tmp_path / "bin.safetensors")
    ours = logits(tmp_path / "bin.safetensors")
    assert np.max(np.abs(ours - expected)) <= 1e-4 * np.max(np.abs(expected))

    # Three shards plus pytorch_model.bin.index.json, written as torch.save lays them out.
    original = tensors_of(Path(tiny, "model.safetensors"))
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(os.path.join(tiny, "config.json"), sharded)
    names = sorted(original)
    weight_map = {}
    for index, part in enumerate([names[0::3], names[1::3], names[2::3]], 1):
        shard = f"pytorch_model-{index:05d}-of-00003.bin"
        torch_format.save_state_dict(sharded / shard, {name: as_numpy(*original[name]) for name in part})
        weight_map.update({name: shard for name in part})
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    run_moekit("forward", sharded, "--tokens-file", os.path.join(tiny, "tokens.txt"), "--output", tmp_path / "sharded.safetensors")
    np.testing.assert_array_equal(logits(tmp_path / "sharded.safetensors"), ours)
    assert "PyTorch .bin weights" in run_moekit("show", sharded).stdout


def test_upcycle_and_trace_read_bin_directories(tmp_path, fixtures_dir, run_moekit):
    source = bin_model(tmp_path, fixtures_dir)
    run_moekit("upcycle", source, tmp_path / "moe", "--experts", 4, "--top-k", 2, "--quiet")
    # The MoE saved as a .bin (transposed views included, as torch keeps them) traces as its safetensors does.
    moe_bin = tmp_path / "moe-bin"
    moe_bin.mkdir()
    shutil.copy(tmp_path / "moe" / "config.json", moe_bin)
    state = {}
    for shard in sorted((tmp_path / "moe").glob("*.safetensors")):
        for name, info in tensors_of(shard).items():
            array = as_numpy(*info)
            if array.ndim == 2:  # store the matrix as the transpose view of its transpose
                transposed = np.ascontiguousarray(array.T)
                state[name] = torch_format.View(transposed, 0, array.shape, (1, array.shape[0]))
            else:
                state[name] = array
    torch_format.save_state_dict(moe_bin / "pytorch_model.bin", state)
    rng = np.random.default_rng(0)
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("\n".join(" ".join(map(str, rng.integers(0, 300, 40))) for _ in range(6)) + "\n")
    for model in ("moe", "moe-bin"):
        run_moekit("trace", tmp_path / model, "--tokens-file", tokens, "--log", tmp_path / f"{model}.h5", "--batch-tokens", 64, "--quiet")
    # The same values, but not the same kernels: the safetensors model's bf16 weights stay mapped
    # (experts with at most 16 rows go through the bf16 GEMV, summing in its own order) while the
    # .bin's transposed views are read into f32, so the statistics agree to f32 rounding.
    with h5py.File(tmp_path / "moe.h5", "r") as a, h5py.File(tmp_path / "moe-bin.h5", "r") as b:
        np.testing.assert_array_equal(a["routing/expert_counts"][:], b["routing/expert_counts"][:])
        for name in ("routing/prob_mean", "routing/aux_loss"):
            np.testing.assert_allclose(a[name][:], b[name][:], rtol=1e-6, atol=0, err_msg=name)


def test_malicious_and_damaged_checkpoints_are_one_line_errors(tmp_path, fixtures_dir, run_moekit):
    refuse = os.path.join(fixtures_dir, "refuse-me")
    for command in (["show", refuse], ["convert", refuse, tmp_path / "out"],
                    ["forward", refuse, "--tokens-file", os.path.join(fixtures_dir, "minicpm-tiny-torch", "tokens.txt"), "--output", tmp_path / "l.safetensors"],
                    ["upcycle", refuse, tmp_path / "moe", "--experts", 2, "--top-k", 1]):
        assert_one_line_error(run_moekit(*command, check=False), os.path.join(refuse, "pytorch_model.bin"), "posix.system")
    assert not os.path.exists("/tmp/moekit-pwned")
    assert sorted(os.listdir(tmp_path)) == []

    variants = os.path.join(fixtures_dir, "torch-variants")
    for name in sorted(os.listdir(variants)):
        if name.endswith(".bin") and name not in ("layouts.bin", "zip64.bin"):
            path = os.path.join(variants, name)
            assert_one_line_error(run_moekit("show", path, check=False), path)
    data = open(os.path.join(fixtures_dir, "minicpm-tiny-torch", "pytorch_model.bin"), "rb").read()
    for cut in (10, 1000, len(data) // 2, len(data) - 30):
        directory = tmp_path / f"cut{cut}"
        directory.mkdir()
        shutil.copy(os.path.join(fixtures_dir, "minicpm-tiny-torch", "config.json"), directory)
        (directory / "pytorch_model.bin").write_bytes(data[:cut])
        assert_one_line_error(run_moekit("show", directory, check=False), directory / "pytorch_model.bin")

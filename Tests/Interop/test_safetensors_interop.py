"""Interop with Hugging Face's `safetensors` package, both directions.

MoEKit → Python: checkpoints written by `moekit init` (bf16, f16, f32) pass the Rust validator
(`safetensors.deserialize`) and `safe_open`, and decode to the values MoEKit reports.
Python → MoEKit: files the package writes (bf16, f16, f32, f64, i8, i16, i32, i64, u8, bool) and a
sharded checkpoint with an index are read by `moekit show --json --values` with equal values.
"""
import json
import math
import os
import shutil

import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy
from safetensors import safe_open
from safetensors.numpy import save_file

NUMPY_DTYPE = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64,
               "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64, "U8": np.uint8, "BOOL": np.bool_}


def decode(dtype, shape, data):
    """Raw little-endian bytes of a safetensors tensor as a float32 numpy array."""
    array = np.frombuffer(data, dtype=np.dtype(NUMPY_DTYPE[dtype]).newbyteorder("<"))
    return array.astype(np.float32).reshape(shape)


def moekit_values(entry):
    """A tensor's values from `moekit show --json --values` (non-finite values are strings)."""
    special = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
    values = [special[v] if isinstance(v, str) else v for v in entry["values"]]
    return np.array(values, dtype=np.float32).reshape(entry["shape"])


def as_float32(array):
    """numpy's cast to f32 (f64 values beyond f32's range become ±Inf, as in MoEKit)."""
    with np.errstate(over="ignore"):
        return array.astype(np.float32)


def assert_same(python_values, moekit_entry, name):
    ours = moekit_values(moekit_entry)
    assert ours.shape == python_values.shape, name
    # Bit-for-bit after both sides convert to f32 (NaN compared as NaN).
    np.testing.assert_array_equal(ours, python_values, err_msg=name)


@pytest.mark.parametrize("cli_dtype,st_dtype,torch_dtype", [("bf16", "BF16", "bfloat16"), ("f16", "F16", "float16"), ("f32", "F32", "float32")])
def test_moekit_checkpoint_loads_in_python_with_equal_values(tmp_path, run_moekit, show_json, cli_dtype, st_dtype, torch_dtype):
    model = tmp_path / "model"
    run_moekit("init", model, "--preset", "tiny", "--layers", "1", "--dtype", cli_dtype, "--seed", "5", "--quiet")
    path = model / "model.safetensors"
    raw = path.read_bytes()

    # The Rust validator accepts the file; the header is 8-byte aligned with PyTorch's metadata.
    header_length = int.from_bytes(raw[:8], "little")
    assert header_length % 8 == 0
    tensors = dict(safetensors.deserialize(raw))
    with safe_open(str(path), framework="numpy") as handle:
        assert handle.metadata() == {"format": "pt"}
        assert sorted(handle.keys()) == sorted(tensors)

    config = json.loads((model / "config.json").read_text())
    assert config["torch_dtype"] == torch_dtype
    assert config["hidden_size"] == 128 and config["num_hidden_layers"] == 1

    ours, document = show_json(str(model))
    assert document["unexpected"] == []
    assert sorted(ours) == sorted(tensors)
    for name, info in tensors.items():
        assert info["dtype"] == st_dtype, name
        values = decode(info["dtype"], info["shape"], info["data"])
        if st_dtype == "BF16":
            # Independent decoding: a bf16 is the top half of an f32.
            widened = (np.frombuffer(info["data"], dtype="<u2").astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])
            np.testing.assert_array_equal(values, widened, err_msg=name)
        assert_same(values, ours[name], name)
        if name.endswith("norm.weight"):
            assert np.all(values == 1), name
        else:
            # MiniCPM init: std 0.1 / sqrt(hidden / dim_model_base) = 0.1 / sqrt(128 / 32) = 0.05.
            assert abs(values.std() - 0.05) < 0.002, name
            assert abs(values.mean()) < 0.003, name

    if st_dtype != "BF16":  # numpy has no bfloat16: only the other two go through load_file
        from safetensors.numpy import load_file
        loaded = load_file(str(path))
        for name, array in loaded.items():
            assert_same(as_float32(array), ours[name], name)


def python_written_tensors():
    """One tensor per dtype, with edge values where the dtype has them."""
    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, 1.0, -2.5, np.inf, -np.inf, np.nan, 65504.0, 6e-8, 1e-3], dtype=np.float32)
    return {
        "float32": np.concatenate([special, rng.standard_normal(22).astype(np.float32)]).reshape(4, 8),
        "float16": np.concatenate([special, rng.standard_normal(14).astype(np.float32)]).astype(np.float16).reshape(2, 3, 4),
        "bfloat16": np.concatenate([special, rng.standard_normal(6).astype(np.float32) * 1e30]).astype(ml_dtypes.bfloat16).reshape(16),
        "float64": np.array([[1.5, -2.25], [1e-300, 1e300], [np.pi, -np.e]], dtype=np.float64),
        "int8": np.array([-128, -1, 0, 127], dtype=np.int8),
        "int16": np.array([-32768, -300, 0, 32767], dtype=np.int16),
        "int32": np.array([[-2147483648, -7], [123456, 16777216]], dtype=np.int32),
        "int64": np.array([-5, 1 << 40, 0, -(1 << 50)], dtype=np.int64),
        "uint8": np.arange(0, 256, 17, dtype=np.uint8),
        "bool": np.array([[True, False, True], [False, False, True]]),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float16),
    }


def test_python_written_file_loads_in_moekit(tmp_path, show_json):
    tensors = python_written_tensors()
    path = tmp_path / "python.safetensors"
    # numpy's save_file writes bfloat16 through ml_dtypes (dtype name "bfloat16" → "BF16").
    save_file(tensors, str(path), metadata={"format": "np", "source": "pytest"})
    stored = {name: info["dtype"] for name, info in safetensors.deserialize(path.read_bytes())}
    assert stored["bfloat16"] == "BF16" and stored["float16"] == "F16" and stored["bool"] == "BOOL"
    ours, document = show_json(str(path))
    assert document["metadata"] == {"format": "np", "source": "pytest"}
    assert sorted(ours) == sorted(tensors)
    for name, array in tensors.items():
        assert list(array.shape) == ours[name]["shape"], name
        assert_same(as_float32(array), ours[name], name)
    assert ours["bfloat16"]["dtype"] == "BF16" and ours["bool"]["dtype"] == "BOOL" and ours["int64"]["dtype"] == "I64"

    # The same tensors as raw bytes through the Rust serializer's byte path, one file per dtype.
    for name, array in tensors.items():
        single = tmp_path / f"{name}.safetensors"
        single.write_bytes(safetensors.numpy.save({name: array}))
        ours, _ = show_json(str(single))
        assert_same(as_float32(array), ours[name], name)


def test_torch_written_fixture_loads_in_moekit(fixtures_dir, show_json):
    directory = os.path.join(fixtures_dir, "minicpm-tiny-torch")
    ours, document = show_json(directory)
    assert document["unexpected"] == []
    assert document["config"]["hidden_size"] == 64
    tensors = dict(safetensors.deserialize(open(os.path.join(directory, "model.safetensors"), "rb").read()))
    assert sorted(ours) == sorted(tensors)
    for name, info in tensors.items():
        assert_same(decode(info["dtype"], info["shape"], info["data"]), ours[name], name)


def test_python_sharded_checkpoint_loads_in_moekit(tmp_path, fixtures_dir, show_json):
    """The torch fixture split into three shards with a Hugging Face index reads back equal."""
    source = os.path.join(fixtures_dir, "minicpm-tiny-torch")
    tensors = dict(safetensors.deserialize(open(os.path.join(source, "model.safetensors"), "rb").read()))
    names = sorted(tensors)
    shards = [names[0::3], names[1::3], names[2::3]]
    model = tmp_path / "sharded"
    model.mkdir()
    shutil.copy(os.path.join(source, "config.json"), model / "config.json")
    weight_map = {}
    for index, shard in enumerate(shards, start=1):
        shard_name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        arrays = {name: np.frombuffer(tensors[name]["data"], dtype=NUMPY_DTYPE[tensors[name]["dtype"]]).reshape(tensors[name]["shape"]) for name in shard}
        save_file(arrays, str(model / shard_name), metadata={"format": "pt"})
        weight_map.update({name: shard_name for name in shard})
    total = sum(len(info["data"]) for info in tensors.values())
    (model / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))

    ours, document = show_json(str(model))
    assert document["unexpected"] == []
    for name, info in tensors.items():
        assert ours[name]["file"] == weight_map[name]
        assert_same(decode(info["dtype"], info["shape"], info["data"]), ours[name], name)

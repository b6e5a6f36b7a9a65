"""Regenerates the PyTorch checkpoint variants in this directory (needs torch, safetensors, numpy, ml_dtypes).

    python Tests/Fixtures/torch-variants/generate.py

Written by real `torch.save` (torch 2.x):
- layouts.bin: one tensor per storage type MoEKit reads, and views torch keeps as views: a transpose,
  a slice with a storage offset, a step slice, an expanded (stride 0) view, a permuted 3-D tensor, a
  bf16 transpose, a scalar, an empty tensor and an nn.Parameter, in an OrderedDict with `_metadata`
  as `state_dict()` returns it. layouts.safetensors holds the same tensors made contiguous.
- sharded/: the minicpm-tiny-torch state dict in two shards plus pytorch_model.bin.index.json, as
  transformers' save_pretrained(safe_serialization=False) lays them out.
- legacy.bin: the pre-1.6 format (`_use_new_zipfile_serialization=False`), to be refused.

Re-zipped from layouts.bin's records (Tests/Interop/torch_format.py): zip64.bin (ZIP64 extra fields
for every size and offset, ZIP64 end record), deflated.bin (compressed records) and bigendian.bin
(byteorder "big"). Hand-built pickles that must be refused, each in a torch-style zip: see CRAFTED.
"""
import collections
import json
import os
import shutil
import sys
import tempfile
import zipfile

import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "Interop"))
import torch_format  # noqa: E402

TINY = os.path.join(HERE, "..", "minicpm-tiny-torch")


def layouts():
    generator = torch.Generator().manual_seed(0)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = collections.OrderedDict()
    sd["f32"] = torch.randn(3, 5, generator=generator)
    sd["f32.transposed"] = base.t()
    sd["f32.slice"] = base[1:, 2:4]
    sd["f32.step"] = base[:, ::2]
    sd["f32.expanded"] = torch.arange(3, dtype=torch.float32).expand(4, 3)
    sd["f32.permuted"] = torch.randn(2, 3, 4, generator=generator).permute(2, 0, 1)
    sd["bf16"] = torch.randn(5, 7, generator=generator).to(torch.bfloat16)
    sd["bf16.transposed"] = torch.randn(6, 4, generator=generator).to(torch.bfloat16).t()
    sd["f16"] = torch.randn(3, 5, generator=generator).to(torch.float16)
    sd["f64"] = torch.randn(4, generator=generator, dtype=torch.float64)
    sd["i64"] = torch.tensor([-(2**40), -1, 0, 7, 2**40], dtype=torch.int64)
    sd["i32"] = torch.tensor([-(2**31), -5, 3, 2**31 - 1], dtype=torch.int32)
    sd["i16"] = torch.tensor([-300, 0, 300], dtype=torch.int16)
    sd["i8"] = torch.tensor([-128, -1, 0, 127], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 1, 255], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["scalar"] = torch.tensor(3.5)
    sd["empty"] = torch.zeros(0, 3)
    sd["param"] = torch.nn.Parameter(torch.full((2,), -2.25))
    sd._metadata = collections.OrderedDict({"": {"version": 1}})
    torch.save(sd, os.path.join(HERE, "layouts.bin"))
    save_file({name: tensor.detach().contiguous().clone() for name, tensor in sd.items()}, os.path.join(HERE, "layouts.safetensors"))
    return sd


def sharded():
    directory = os.path.join(HERE, "sharded")
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    sd = torch.load(os.path.join(TINY, "pytorch_model.bin"), weights_only=True)
    names = list(sd)
    halves = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    total = 0
    for index, part in enumerate(halves, 1):
        shard = f"pytorch_model-{index:05d}-of-{len(halves):05d}.bin"
        torch.save({name: sd[name] for name in part}, os.path.join(directory, shard))
        for name in part:
            weight_map[name] = shard
            total += sd[name].numel() * sd[name].element_size()
    with open(os.path.join(directory, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
    shutil.copy(os.path.join(TINY, "config.json"), directory)


def rezipped():
    with zipfile.ZipFile(os.path.join(HERE, "layouts.bin")) as archive:
        records = [(info.filename, archive.read(info)) for info in archive.infolist()]
    torch_format.write_zip(os.path.join(HERE, "zip64.bin"), records, zip64=True)
    torch_format.write_zip(os.path.join(HERE, "deflated.bin"), records, compress=True)
    big = [(name, b"big" if name.endswith("/byteorder") else data) for name, data in records]
    torch_format.write_zip(os.path.join(HERE, "bigendian.bin"), big)


def pickle_only(body):
    return b"\x80\x02" + body


def string(text):
    raw = text.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw


W = np.arange(12, dtype=np.float32)
STATE = torch_format.state_dict_pickle({"w": torch_format.View(W, 0, (3, 4), (4, 1))}, {"w": "0"})

# name → (tensors written as storages, data.pkl bytes)
CRAFTED = {
    # protocol 4 STACK_GLOBAL of builtins.eval, called on a string
    "forbidden-stack-global": ({}, b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x0bprint('hi')\x85R."),
    # INST instantiates os.system with the marked arguments
    "forbidden-inst": ({}, pickle_only(b"(" + string("touch /tmp/moekit-pwned") + b"ios\nsystem\n.")),
    # an allowed global called as a function
    "call-storage": ({}, pickle_only(b"ctorch\nFloatStorage\n)R.")),
    # NEWOBJ (cls.__new__) is never accepted
    "newobj": ({}, pickle_only(b"ccollections\nOrderedDict\n)\x81.")),
    "unknown-opcode": ({}, pickle_only(b"}\xff.")),
    "truncated-pickle": ({"w": W}, STATE[:-20]),
    "not-a-dict": ({}, pickle_only(b"]K\x01a.")),
    "non-tensor-value": ({}, pickle_only(b"}" + string("w") + b"K\x01s.")),
    # a (3, 5) view of a 12-element storage
    "storage-too-small": ({"w": W}, torch_format.state_dict_pickle({"w": torch_format.View(W, 0, (3, 5), (5, 1))}, {"w": "0"})),
    # an offset that pushes a whole-storage view past the end
    "offset-past-end": ({"w": W}, torch_format.state_dict_pickle({"w": torch_format.View(W, 1, (3, 4), (4, 1))}, {"w": "0"})),
    # the pickle says 16 elements, the record holds 12
    "storage-size-mismatch": ({"w": W}, torch_format.state_dict_pickle({"w": torch_format.View(np.zeros(16, np.float32), 0, (16,), (1,))}, {"w": "0"})),
    "missing-storage": ({"w": W}, torch_format.state_dict_pickle({"w": torch_format.View(W, 0, (12,), (1,))}, {"w": "7"})),
    "negative-stride": ({"w": W}, torch_format.state_dict_pickle({"w": torch_format.View(W, 11, (12,), (-1,))}, {"w": "0"})),
    "complex-storage": ({"w": W}, STATE.replace(b"FloatStorage", b"ComplexFloatStorage")),
    # BUILD (setstate) on a tensor
    "build-on-tensor": ({"w": W}, STATE[:-2] + b"}b" + STATE[-2:]),
}


def crafted():
    for name, (tensors, data) in CRAFTED.items():
        torch_format.save_state_dict(os.path.join(HERE, name + ".bin"), tensors, archive=name, pickle_bytes=data)


def check_emulator(sd):
    """torch.load reads what torch_format writes (and the re-zipped ZIP64 file) as torch wrote it."""
    path = os.path.join(tempfile.mkdtemp(), "emulated.bin")
    import ml_dtypes
    values = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([1.5, -2], dtype=np.float32).astype(ml_dtypes.bfloat16),
        "t": torch_format.View(np.arange(6, dtype=np.int64), 1, (2, 2), (1, 3)),
        "big": np.array([2**40, -3], dtype=np.int64),
    }
    for zip64 in (False, True):
        torch_format.save_state_dict(path, values, zip64=zip64)
        loaded = torch.load(path, weights_only=True)
        assert torch.equal(loaded["a"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
        assert torch.equal(loaded["b"], torch.tensor([1.5, -2]).to(torch.bfloat16))
        assert torch.equal(loaded["t"], torch.tensor([[1, 4], [2, 5]]))
        assert torch.equal(loaded["big"], torch.tensor([2**40, -3]))
    os.remove(path)
    reloaded = torch.load(os.path.join(HERE, "zip64.bin"), weights_only=True)
    assert all(torch.equal(reloaded[name], tensor) for name, tensor in sd.items())


if __name__ == "__main__":
    sd = layouts()
    sharded()
    torch.save({"w": torch.ones(2)}, os.path.join(HERE, "legacy.bin"), _use_new_zipfile_serialization=False)
    rezipped()
    crafted()
    check_emulator(sd)
    print("ok")

"""Read a model directory's safetensors files as numpy arrays mapped from disk (no copy until used).

Only what the peers need: F32, BF16 and F16 tensors, every *.safetensors file in the directory.
"""
import glob
import json
import os
import struct

import numpy as np


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns → float32 (exact)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


class SafetensorsDirectory:
    @staticmethod
    def single(path: str, name: str) -> np.ndarray:
        """One tensor of one .safetensors file, as float32."""
        reader = SafetensorsDirectory(path, files=[path])
        return reader.f32(name)

    def __init__(self, directory: str, files=None):
        self.directory = directory
        self.entries = {}  # name -> (path, dtype, shape, begin, end)
        files = files or sorted(glob.glob(os.path.join(directory, "*.safetensors")))
        if not files:
            raise FileNotFoundError(f"{directory}: no *.safetensors file")
        for path in files:
            with open(path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
            base = 8 + length
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                begin, end = info["data_offsets"]
                self.entries[name] = (path, info["dtype"], tuple(info["shape"]), base + begin, base + end)
        config = os.path.join(directory, "config.json")
        self.config = json.load(open(config)) if os.path.isfile(config) else {}

    def names(self):
        return list(self.entries)

    def __contains__(self, name):
        return name in self.entries

    def f32(self, name: str) -> np.ndarray:
        """The tensor as float32 (a read-only map for F32, a converted copy otherwise)."""
        path, dtype, shape, begin, end = self.entries[name]
        count = int(np.prod(shape)) if shape else 1
        if dtype == "F32":
            return np.memmap(path, dtype=np.float32, mode="r", offset=begin, shape=(count,)).reshape(shape)
        if dtype == "BF16":
            raw = np.memmap(path, dtype=np.uint16, mode="r", offset=begin, shape=(count,))
            return bf16_to_f32(raw).reshape(shape)
        if dtype == "F16":
            raw = np.memmap(path, dtype=np.float16, mode="r", offset=begin, shape=(count,))
            return raw.astype(np.float32).reshape(shape)
        raise ValueError(f"{path}: tensor {name} has dtype {dtype}; the peers read F32, BF16 and F16")

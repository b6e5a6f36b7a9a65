#!/usr/bin/env python3
"""Compare two `moekit forward` outputs: prints max|a − b| / max|b| of their `logits` tensors and
exits 1 when it exceeds the tolerance (default 1e-5). Reads safetensors with the standard library
and numpy only."""
import json
import struct
import sys

import numpy as np


def logits(path):
    with open(path, "rb") as handle:
        header_length = struct.unpack("<Q", handle.read(8))[0]
        header = json.loads(handle.read(header_length))
        entry = header["logits"]
        begin, end = entry["data_offsets"]
        handle.seek(8 + header_length + begin)
        return np.frombuffer(handle.read(end - begin), dtype=np.float32).reshape(entry["shape"])


def main(argv):
    if len(argv) < 2:
        sys.exit("usage: compare_logits.py A.safetensors B.safetensors [tolerance]")
    tolerance = float(argv[2]) if len(argv) > 2 else 1e-5
    a, b = logits(argv[0]), logits(argv[1])
    if a.shape != b.shape:
        sys.exit(f"shapes differ: {a.shape} vs {b.shape}")
    relative = float(np.abs(a - b).max() / max(np.abs(b).max(), np.finfo(np.float32).tiny))
    print(f"max relative difference {relative:.3e} over {a.shape[0]} tokens × {a.shape[1]} logits (tolerance {tolerance:g})")
    return 0 if relative <= tolerance else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

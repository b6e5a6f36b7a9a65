"""Statistics the experiment plot scripts share (imported from the scripts' own directory)."""
import numpy as np


def mutual_information(counts):
    """counts: [D, E] assignment counts -> I(D; E) in bits."""
    p = counts / counts.sum()
    pd, pe = p.sum(axis=1, keepdims=True), p.sum(axis=0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log2(p[nz] / (pd @ pe)[nz])).sum())


def smooth(x, n=20):
    """Moving average over n steps (the valid part only)."""
    return np.convolve(x, np.ones(n) / n, mode="valid")

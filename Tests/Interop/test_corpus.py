"""`moekit corpus` writes files NumPy reads as documented in docs/training-data.md: a uint16 .bin,
one uint8 domain label per token, and the domain names in JSON."""
import json

import numpy as np


def test_corpus_files_read_with_numpy(tmp_path, run_moekit):
    out = tmp_path / "corpus.bin"
    printed = run_moekit("corpus", out, "--tokens", 5000, "--seed", 3).stdout
    ids = np.fromfile(out, dtype="<u2")
    labels = np.fromfile(tmp_path / "corpus.domains.bin", dtype=np.uint8)
    sidecar = json.loads((tmp_path / "corpus.domains.json").read_text())

    assert ids.shape == (5000,) and labels.shape == (5000,)
    assert sidecar["format"] == "moekit-domains" and sidecar["version"] == 1 and sidecar["token_dtype"] == "uint16"
    assert sidecar["domains"] == ["arithmetic", "brackets", "copy", "reverse", "grammar"]
    assert ids.max() < 259 and labels.max() < len(sidecar["domains"])

    # Documents end with </s> (id 2) and carry one label each; the text is bytes shifted by 3.
    ends = np.flatnonzero(ids == 2)
    start = 0
    for end in ends[:50]:
        assert len(set(labels[start:end + 1])) == 1
        text = bytes((ids[start:end] - 3).astype(np.uint8)).decode("ascii")
        name = sidecar["domains"][labels[end]]
        if name == "copy":
            left, right = text.split(":")
            assert left == right
        elif name == "reverse":
            left, right = text.split("|")
            assert left[::-1] == right
        elif name == "arithmetic":
            for equation in text.split(" "):
                expression, result = equation.split("=")
                assert eval(expression) == int(result)
        start = end + 1

    # The per-domain counts printed are those of the labels.
    for index, name in enumerate(sidecar["domains"]):
        count = int((labels == index).sum())
        assert f"{count:,} tokens" in printed.split(name, 1)[1].splitlines()[0]

    # Same seed, same bytes; the existing output is refused without --force.
    again = run_moekit("corpus", out, "--tokens", 5000, "--seed", 3, check=False)
    assert again.returncode == 1 and "pass --force" in again.stderr
    run_moekit("corpus", tmp_path / "again.bin", "--tokens", 5000, "--seed", 3)
    assert (tmp_path / "again.bin").read_bytes() == out.read_bytes()

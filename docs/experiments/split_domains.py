"""Writes one token file per domain of a `moekit corpus` file, for BTX's branches.

usage: python3 split_domains.py CORPUS.bin OUT_PREFIX

For every domain d named in CORPUS.domains.json, OUT_PREFIX-<name>.bin holds the corpus's tokens
labelled d, in corpus order (documents are contiguous, so they stay whole), with its own
.domains.bin / .domains.json sidecars. Standard library only.
"""
import json
import sys
from array import array
from pathlib import Path

corpus, prefix = Path(sys.argv[1]), sys.argv[2]
base = corpus.with_suffix("")
tokens = array("H", corpus.read_bytes())
labels = Path(f"{base}.domains.bin").read_bytes()
sidecar = json.loads(Path(f"{base}.domains.json").read_text())
names = sidecar["domains"]
assert len(tokens) == len(labels), f"{len(tokens)} tokens but {len(labels)} labels"
for index, name in enumerate(names):
    keep = [i for i, label in enumerate(labels) if label == index]
    out = Path(f"{prefix}-{name}.bin")
    array("H", (tokens[i] for i in keep)).tofile(out.open("wb"))
    Path(f"{prefix}-{name}.domains.bin").write_bytes(bytes(labels[i] for i in keep))
    Path(f"{prefix}-{name}.domains.json").write_text(json.dumps(sidecar))
    print(f"{out}: {len(keep)} tokens of {name}")

"""Reorders a `moekit corpus` file into single-domain blocks, for the balancing-granularity experiment.

usage: python3 block_domains.py CORPUS.bin OUT.bin BLOCK_TOKENS

The corpus's documents (each ends with </s>, id 2) are grouped by domain and laid out in blocks
of about BLOCK_TOKENS tokens, cycling arithmetic, brackets, copy, reverse, grammar, … until every
document is placed; a block ends at a document boundary. A training window shorter than a block
then mostly holds one domain, as a micro-batch drawn from one data source does in the setting
of Qwen's global-batch balancing (arXiv 2501.11873). Writes OUT.bin with .domains.bin /
.domains.json sidecars. Standard library only.
"""
import json
import sys
from array import array
from pathlib import Path

corpus, out, block = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
base = corpus.with_suffix("")
tokens = array("H", corpus.read_bytes())
labels = Path(f"{base}.domains.bin").read_bytes()
sidecar = json.loads(Path(f"{base}.domains.json").read_text())
assert len(tokens) == len(labels), f"{len(tokens)} tokens but {len(labels)} labels"

documents = [[] for _ in sidecar["domains"]]
start = 0
for i, token in enumerate(tokens):
    if token == 2 or i == len(tokens) - 1:
        documents[labels[i]].append((start, i + 1))
        start = i + 1
cursor = [0] * len(documents)
out_tokens, out_labels = array("H"), bytearray()
while any(cursor[d] < len(documents[d]) for d in range(len(documents))):
    for d in range(len(documents)):
        placed = 0
        while placed < block and cursor[d] < len(documents[d]):
            a, b = documents[d][cursor[d]]
            out_tokens.extend(tokens[a:b])
            out_labels.extend(labels[a:b])
            placed += b - a
            cursor[d] += 1
assert len(out_tokens) == len(tokens)
out_tokens.tofile(out.open("wb"))
stem = out.with_suffix("")
Path(f"{stem}.domains.bin").write_bytes(bytes(out_labels))
Path(f"{stem}.domains.json").write_text(json.dumps(sidecar))
print(f"{out}: {len(out_tokens)} tokens in blocks of ~{block}")

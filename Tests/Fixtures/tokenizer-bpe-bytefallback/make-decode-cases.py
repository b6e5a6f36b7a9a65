"""Writes decode-cases.json: random id sequences and what Hugging Face `tokenizers` decodes them to
with this directory's tokenizer.json, as is and with a Metaspace decoder (prepend_scheme first and
never), skipping special tokens and keeping them. Byte tokens are frequent, so invalid UTF-8 runs
are common. Run: .venv/bin/python Tests/Fixtures/tokenizer-bpe-bytefallback/make-decode-cases.py
"""
import copy
import json
import os
import random

from tokenizers import Tokenizer

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "tokenizer.json"), encoding="utf-8") as f:
    base = json.load(f)
decoders = {"fixture": base["decoder"]}
for scheme in ["first", "never"]:
    decoders[f"metaspace-{scheme}"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": True}

rng = random.Random(0)
size = len(base["model"]["vocab"])
sequences = []
for _ in range(200):
    ids = []
    for _ in range(rng.randint(1, 24)):
        r = rng.random()
        ids.append(rng.randint(0, 2) if r < 0.1 else rng.randint(3, 258) if r < 0.5 else 340 if r < 0.6 else rng.randint(0, size - 1))
    sequences.append(ids)

cases = {}
for name, decoder in decoders.items():
    document = copy.deepcopy(base)
    document["decoder"] = decoder
    tokenizer = Tokenizer.from_str(json.dumps(document))
    cases[name] = {"decoder": decoder, "cases": [{"ids": ids, "skip_special": tokenizer.decode(ids), "keep_special": tokenizer.decode(ids, skip_special_tokens=False)} for ids in sequences]}
with open(os.path.join(here, "decode-cases.json"), "w", encoding="utf-8") as f:
    json.dump(cases, f, ensure_ascii=False)

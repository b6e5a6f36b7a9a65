"""Tokeniser throughput: `moekit tokenize` against Hugging Face `tokenizers` on ~10 MB of generated
mixed English/Chinese text (one document per line), checking that both give the same ids.

    MOEKIT=.build/release/moekit .venv/bin/python Benchmarks/tokenizer-throughput.py [MB] [TOKENIZER_DIR]

TOKENIZER_DIR defaults to the fixture (Tests/Fixtures/tokenizer-bpe-bytefallback: no pre-tokeniser,
so every line is one BPE word, as with MiniCPM's tokenizer.json). Prints wall and CPU seconds and
MB/s (MB = 10^6 bytes of UTF-8 input); CPU time is the fairer figure on a shared machine.
"""
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Interop"))
import mixed_text  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

megabytes = float(sys.argv[1]) if len(sys.argv) > 1 else 10
directory = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures", "tokenizer-bpe-bytefallback")
moekit = os.environ.get("MOEKIT", ".build/release/moekit")

documents = mixed_text.documents(int(megabytes * 1e6), seed=0)
size = sum(len(d.encode()) + 1 for d in documents)
with tempfile.TemporaryDirectory() as tmp:
    text = os.path.join(tmp, "mixed.txt")
    with open(text, "w", encoding="utf-8") as f:
        f.write("\n".join(documents) + "\n")

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    output = subprocess.run([moekit, "tokenize", directory, "--text", text], check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    moekit_ids = [[int(x) for x in line.split()] for line in output.split("\n")[:-1]]

hf = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
cpu_start, start = time.process_time(), time.perf_counter()
hf_ids = [hf.encode(d).ids for d in documents]
hf_wall, hf_cpu = time.perf_counter() - start, time.process_time() - cpu_start
cpu_start, start = time.process_time(), time.perf_counter()
hf_batch = [e.ids for e in hf.encode_batch(documents)]
batch_wall, batch_cpu = time.perf_counter() - start, time.process_time() - cpu_start

assert moekit_ids == hf_ids == hf_batch, "moekit and tokenizers disagree"
tokens = sum(len(ids) for ids in hf_ids)
print(f"{size / 1e6:.2f} MB, {len(documents)} documents, {tokens} tokens; ids identical")
for name, w, c in [("moekit tokenize (whole command)", wall, cpu), ("HF tokenizers encode() loop", hf_wall, hf_cpu),
                   ("HF tokenizers encode_batch()", batch_wall, batch_cpu)]:
    print(f"  {name:34s} wall {w:6.2f} s ({size / 1e6 / w:6.2f} MB/s)   CPU {c:6.2f} s ({size / 1e6 / c:6.2f} MB/s)")

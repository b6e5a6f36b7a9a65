"""Writes the seed corpora of the fuzz targets into Fuzz/corpus/<target>/ (committed).

Run from the repository root with the interop venv and a built CLI:
    MOEKIT=.build/release/moekit .venv/bin/python Fuzz/make_seeds.py
Seeds are small valid inputs of every feature a parser knows (dtypes, views, ZIP64, normalisers,
per-token and training logs) plus a few near-misses, so coverage-guided mutation starts deep.
"""
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
from safetensors.numpy import save as save_safetensors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "Tests", "Interop"))
from torch_format import View, save_state_dict  # noqa: E402

CORPUS = os.path.join(ROOT, "Fuzz", "corpus")
FIXTURES = os.path.join(ROOT, "Tests", "Fixtures")


def target(name):
    directory = os.path.join(CORPUS, name)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    return lambda seed, data: open(os.path.join(directory, seed), "wb").write(data if isinstance(data, bytes) else data.encode())


def safetensors_seeds():
    put = target("safetensors")
    rng = np.random.default_rng(0)
    put("f32", save_safetensors({"w": rng.standard_normal((3, 4)).astype(np.float32), "b": np.zeros(4, np.float32)}))
    put("f16-i64", save_safetensors({"h": np.ones((2, 2), np.float16), "i": np.arange(3, dtype=np.int64)}))
    import ml_dtypes
    put("bf16", save_safetensors({"x": np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)},
                                 metadata={"format": "pt"}))
    put("empty-tensor", save_safetensors({"e": np.zeros((0, 3), np.float32)}))
    header = b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    put("hand", struct.pack("<Q", len(header)) + header + b"\0" * 8)


def torch_seeds():
    put_zip, put_pickle = target("torch-zip"), target("pickle")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        variants = {
            "plain": ({"w": rng.standard_normal((2, 3)).astype(np.float32), "b": np.arange(3, dtype=np.int64)}, {}),
            "view": ({"t": View(np.arange(12, dtype=np.float32), shape=(3, 2), strides=(1, 3), offset=2)}, {}),
            "zip64": ({"w": np.ones(4, np.float16)}, {"zip64": True}),
        }
        for name, (tensors, options) in variants.items():
            path = os.path.join(scratch, name + ".bin")
            save_state_dict(path, tensors, **options)
            data = open(path, "rb").read()
            put_zip(name, data)
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                put_pickle(name, archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl"))))
    for name in sorted(os.listdir(os.path.join(FIXTURES, "torch-variants"))):
        path = os.path.join(FIXTURES, "torch-variants", name)
        if name.endswith(".bin") and os.path.getsize(path) < 16384:
            put_zip(name[:-4], open(path, "rb").read())
    put_pickle("nested", b"\x80\x02" + b"N" + b"\x85" * 64 + b".")


def tokenizer_seeds():
    put_json, put_text = target("tokenizer-json"), target("tokenizer-text")
    fixture = json.load(open(os.path.join(FIXTURES, "tokenizer-bpe-bytefallback", "tokenizer.json")))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, "a": 4, "b": 5, "▁a": 6, "ab": 7, "<0x41>": 8, "<0xC3>": 9, "<0xA9>": 10}
    small = dict(fixture)
    small["model"] = dict(fixture["model"], vocab=vocab, merges=[["▁", "a"], ["a", "b"]])
    put_json("small-normalizer", json.dumps(small, ensure_ascii=False))
    meta = dict(small, normalizer={"type": "NFKC"},
                pre_tokenizer={"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True},
                decoder={"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True})
    meta["model"] = dict(small["model"], merges=["▁ a", "a b"], ignore_merges=True)
    meta["added_tokens"] = small["added_tokens"] + [{"id": 11, "content": "ab", "single_word": True, "lstrip": True, "rstrip": False,
                                                     "normalized": True, "special": False}]
    put_json("metaspace-added", json.dumps(meta, ensure_ascii=False))
    put_json("fixture", json.dumps(fixture, ensure_ascii=False))
    for name, text in [("ascii", "Hello world, this is a test."), ("accents", "héllo wörld – naïve café"),
                       ("special", "<s>a</s> ab<unk>ba"), ("cjk-emoji", "日本語のテキスト 🙂👍🏽"), ("spaces", "  a\t b \r\n\n c  "),
                       ("bytes", "\x00\x01\x7f é")]:
        put_text(name, text)


def config_seeds():
    put = target("config")
    put("tiny-dense", open(os.path.join(FIXTURES, "minicpm-tiny-torch", "config.json")).read())
    moe = json.load(open(os.path.join(FIXTURES, "minicpm-tiny-torch", "config.json")))
    moe.update(num_experts=8, num_experts_per_tok=2, tie_word_embeddings=False, torch_dtype="float32")
    put("tiny-moe", json.dumps(moe))
    put("minimal", '{"hidden_size":64,"intermediate_size":160,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":300}')
    put("minicpm-2.4b", json.dumps({"hidden_size": 2304, "intermediate_size": 5760, "num_hidden_layers": 40, "num_attention_heads": 36,
                                    "num_key_value_heads": 36, "vocab_size": 122753, "max_position_embeddings": 4096, "rope_theta": 1e4,
                                    "scale_emb": 12, "dim_model_base": 256, "scale_depth": 1.4, "rms_norm_eps": 1e-5}))


def token_seeds():
    put_text, put_npy, put_raw = target("tokens-txt"), target("tokens-npy"), target("tokens-raw")
    put_text("lines", "1 2 3\n4,5,6\n\n7 8\n")
    put_text("one", "42")
    for name, array in [("i32", np.arange(10, dtype=np.int32)), ("i64-2d", np.arange(6, dtype=np.int64).reshape(1, 6))]:
        buffer = io.BytesIO()
        np.save(buffer, array)
        put_npy(name, buffer.getvalue())
    put_raw("u16", b"\x00" + np.arange(16, dtype=np.uint16).tobytes())
    put_raw("u32", b"\x02" + np.arange(16, dtype=np.uint32).tobytes())


def routing_log_seeds():
    put = target("routing-log")
    moekit = os.environ.get("MOEKIT", os.path.join(ROOT, ".build", "release", "moekit"))
    with tempfile.TemporaryDirectory() as scratch:
        def run(*args):
            subprocess.run([moekit, *map(str, args)], check=True, stdout=subprocess.DEVNULL)
        run("init", f"{scratch}/dense", "--preset", "tiny", "--layers", 1, "--quiet")
        run("upcycle", f"{scratch}/dense", f"{scratch}/moe", "--experts", 4, "--top-k", 2, "--verify", 0, "--quiet")
        tokens = f"{scratch}/tokens.txt"
        open(tokens, "w").write("\n".join(" ".join(str((7 * i + j) % 1000) for j in range(24)) for i in range(4)) + "\n")
        run("trace", f"{scratch}/moe", "--tokens-file", tokens, "--log", f"{scratch}/trace.h5", "--batch-tokens", 32, "--per-token",
            "--threads", 1, "--quiet")
        run("trace", f"{scratch}/moe", "--tokens-file", tokens, "--log", f"{scratch}/plain.h5", "--batch-tokens", 48, "--threads", 1, "--quiet")
        run("corpus", f"{scratch}/corpus.bin", "--tokens", 5000)
        run("train", f"{scratch}/moe", "--data", f"{scratch}/corpus.bin", "--steps", 2, "--batch", 2, "--seq", 16, "--lr", 0.01,
            "--out", f"{scratch}/trained", "--log", f"{scratch}/train.h5", "--threads", 1, "--quiet")
        for name in ["trace", "plain", "train"]:
            put(name, open(f"{scratch}/{name}.h5", "rb").read())


if __name__ == "__main__":
    safetensors_seeds()
    torch_seeds()
    tokenizer_seeds()
    config_seeds()
    token_seeds()
    routing_log_seeds()
    for name in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, name))
        print(f"{name}: {len(files)} seeds, {sum(os.path.getsize(os.path.join(CORPUS, name, f)) for f in files)} bytes")

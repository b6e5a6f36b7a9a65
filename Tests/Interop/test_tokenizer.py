"""MoEKit's tokenizer against Hugging Face `tokenizers`, id for id and token for token, through the
CLI: `moekit tokenize`, and `--text` on `forward` and `trace`.

The tokenizer.json variants cover the SentencePiece-converted kind (Prepend/Replace normaliser, BPE
with byte fallback, <s> template), the Metaspace pre-tokeniser form, added tokens with every option,
unknown characters with and without fuse_unk, and merges written both as [left, right] and "left right".
"""
import copy
import json
import os
import re
import shutil
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mixed_text  # noqa: E402

EDGE_CASES = [
    " ", "  ", "\t", "a<s>b", "<s>", " <s> ", "</s></s>x", "x</s>y", "\u2581x", "emoji 🤖 ok", "ℌ𝔢𝔩𝔩𝔬 unusual",
    "混合专家模型的路由器", "mixed 中文 and English, 数字 2404.06395!", "tabs\tand  double  spaces ", "café naïve résumé",
    "say hello there, hello", "MoE MoEs aMoE MoE.", "x <sep> y<sep>z", "[X]   after [X]", "<|im_start|>user hi<|im_end|>",
    "\u00a0nbsp\u3000ideographic space", "\x01control\x7f", "e\u0301 combining", "ｆｕｌｌｗｉｄｔｈ ①② ﬁ ㎏ Å",
]


def fixture_json(fixtures_dir):
    with open(os.path.join(fixtures_dir, "tokenizer-bpe-bytefallback", "tokenizer.json"), encoding="utf-8") as f:
        return json.load(f)


def added(id_, content, special=False, normalized=True, lstrip=False, rstrip=False, single_word=False):
    return {"id": id_, "content": content, "single_word": single_word, "lstrip": lstrip, "rstrip": rstrip,
            "normalized": normalized, "special": special}


def variants(base):
    """name → tokenizer.json document."""
    result = {"fixture": base}
    size = len(base["model"]["vocab"])
    for scheme in ["first", "always"]:
        v = copy.deepcopy(base)
        v["normalizer"] = None
        v["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": True}
        v["decoder"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": True}
        result[f"metaspace-{scheme}"] = v
    v = copy.deepcopy(base)
    v["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "never", "split": False}
    result["metaspace-nosplit"] = v
    v = copy.deepcopy(base)
    v["added_tokens"] += [
        added(size, "hello"),
        added(size + 1, "<|im_start|>", special=True, normalized=False, rstrip=True),
        added(size + 2, "<|im_end|>", special=True, normalized=False, lstrip=True),
        added(size + 3, "MoE", normalized=False, single_word=True),
        added(size + 4, "<sep>", normalized=False, lstrip=True),
        added(size + 5, "[X]", normalized=False, rstrip=True),
    ]
    result["added-tokens"] = v
    for fuse in [True, False]:
        v = copy.deepcopy(base)
        v["model"]["byte_fallback"] = False
        v["model"]["fuse_unk"] = fuse
        result[f"unk-fuse-{str(fuse).lower()}"] = v
    v = copy.deepcopy(base)
    v["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFKC"}] + base["normalizer"]["normalizers"]}
    result["nfkc"] = v
    v = copy.deepcopy(base)
    v["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in v["model"]["merges"]]
    result["string-merges"] = v  # the fixture writes [left, right]; the older form is "left right"
    return result


def escaped(token):
    out = []
    for c in token:
        if c == "\\": out.append("\\\\")
        elif c == " ": out.append("\\x20")
        elif c == "\t": out.append("\\t")
        elif c == "\n": out.append("\\n")
        elif c == "\r": out.append("\\r")
        elif ord(c) < 0x20 or ord(c) == 0x7F: out.append(f"\\x{ord(c):02X}")
        else: out.append(c)
    return "".join(out)


@pytest.fixture(scope="module")
def documents():
    return EDGE_CASES + mixed_text.documents(150_000, seed=3)


def write_model_dir(tmp_path, name, document):
    directory = tmp_path / name
    directory.mkdir()
    (directory / "tokenizer.json").write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    return directory


@pytest.mark.parametrize("name", ["fixture", "metaspace-first", "metaspace-always", "metaspace-nosplit", "added-tokens",
                                  "unk-fuse-true", "unk-fuse-false", "string-merges", "nfkc"])
def test_tokenize_matches_huggingface(name, tmp_path, fixtures_dir, documents, run_moekit):
    document = variants(fixture_json(fixtures_dir))[name]
    directory = write_model_dir(tmp_path, name, document)
    hf = Tokenizer.from_str(json.dumps(document))
    text = tmp_path / "docs.txt"
    text.write_text("\n".join(documents) + "\n", encoding="utf-8")

    ids = run_moekit("tokenize", directory, "--text", text).stdout.split("\n")[:-1]
    assert len(ids) == len(documents)
    for line, doc in zip(ids, documents):
        assert [int(x) for x in line.split()] == hf.encode(doc).ids, doc

    tokens = run_moekit("tokenize", directory, "--text", text, "--tokens").stdout.split("\n")[:-1]
    for line, doc in zip(tokens, documents):
        assert line == " ".join(escaped(t) for t in hf.encode(doc).tokens), doc

    bare = run_moekit("tokenize", directory, "--text", text, "--no-bos").stdout.split("\n")[:-1]
    for line, doc in zip(bare, documents):
        assert [int(x) for x in line.split()] == hf.encode(doc, add_special_tokens=False).ids, doc
    assert run_moekit("tokenize", directory, "--text", text, "--add-bos").stdout.split("\n")[:-1] == ids


def test_blank_lines_and_crlf_are_skipped(tmp_path, fixtures_dir, run_moekit):
    directory = os.path.join(fixtures_dir, "tokenizer-bpe-bytefallback")
    hf = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    text = tmp_path / "docs.txt"
    text.write_bytes("Hello world\r\n\n\n数字 2404.06395".encode())
    lines = run_moekit("tokenize", directory, "--text", text).stdout.split("\n")[:-1]
    assert lines == [" ".join(map(str, hf.encode(d).ids)) for d in ["Hello world", "数字 2404.06395"]]


def pruned_tokenizer(document, vocab_size):
    """The tokenizer restricted to ids < vocab_size (and the merges among them), for a tiny model."""
    document = copy.deepcopy(document)
    vocab = {t: i for t, i in document["model"]["vocab"].items() if i < vocab_size}
    document["model"]["vocab"] = vocab
    pairs = [m.split(" ") if isinstance(m, str) else m for m in document["model"]["merges"]]
    document["model"]["merges"] = [[a, b] for a, b in pairs if a in vocab and b in vocab and a + b in vocab]
    return document


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, fixtures_dir, run_moekit):
    root = tmp_path_factory.mktemp("tokenizer-models")
    run_moekit("init", root / "dense", "--preset", "tiny", "--seed", 0)
    run_moekit("upcycle", root / "dense", root / "moe", "--experts", 4, "--top-k", 2, "--seed", 0, "--quiet")
    document = pruned_tokenizer(fixture_json(fixtures_dir), 1024)
    for name in ["dense", "moe"]:
        (root / name / "tokenizer.json").write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    return root, Tokenizer.from_str(json.dumps(document))


def test_forward_and_trace_with_text_equal_token_ids(tmp_path, tiny_models, run_moekit):
    root, hf = tiny_models
    docs = ["Hello world, this is MiniCPM.", "混合专家模型的路由器 routes tokens", "emoji 🤖 and café"]
    text = tmp_path / "docs.txt"
    text.write_text("\n".join(docs) + "\n", encoding="utf-8")
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("\n".join(" ".join(map(str, hf.encode(d).ids)) for d in docs) + "\n")
    for model in ["dense", "moe"]:
        run_moekit("forward", root / model, "--tokens-file", tokens, "--output", tmp_path / f"{model}-ids.safetensors")
        run_moekit("forward", root / model, "--text", text, "--output", tmp_path / f"{model}-text.safetensors")
        a = load_file(str(tmp_path / f"{model}-ids.safetensors"))["logits"]
        b = load_file(str(tmp_path / f"{model}-text.safetensors"))["logits"]
        assert a.shape[0] == sum(len(hf.encode(d).ids) for d in docs)
        assert np.array_equal(a, b)
    by_ids = run_moekit("trace", root / "moe", "--tokens-file", tokens, "--no-log", "--quiet").stdout
    by_text = run_moekit("trace", root / "moe", "--text", text, "--no-log", "--quiet").stdout
    count = re.search(r"(\d+) tokens in (\d+) steps", by_ids)
    assert count and count.group(0) in by_text
    bare = run_moekit("forward", root / "dense", "--text", text, "--no-bos", "--output", tmp_path / "bare.safetensors").stdout
    assert f"{sum(len(hf.encode(d, add_special_tokens=False).ids) for d in docs)} tokens" in bare


def assert_one_line_error(result, *needles, status=1):
    assert result.returncode == status, (result.returncode, result.stderr)
    lines = result.stderr.strip("\n").split("\n")
    assert status != 1 or len(lines) == 1, result.stderr
    for needle in needles:
        assert str(needle) in result.stderr, (needle, result.stderr)
    assert "Fatal error" not in result.stderr


def test_text_errors(tmp_path, fixtures_dir, tiny_models, run_moekit):
    root, _ = tiny_models
    text = tmp_path / "docs.txt"
    text.write_text("hello\n", encoding="utf-8")
    bare_model = tmp_path / "no-tokenizer"
    shutil.copytree(root / "dense", bare_model)
    (bare_model / "tokenizer.json").unlink()
    assert_one_line_error(run_moekit("forward", bare_model, "--text", text, check=False), bare_model / "tokenizer.json")
    assert_one_line_error(run_moekit("tokenize", bare_model, "--text", text, check=False), bare_model / "tokenizer.json")
    assert_one_line_error(run_moekit("forward", root / "dense", "--text", text, "--tokens-file", text, check=False),
                          "--tokens-file and --text exclude each other", status=64)
    assert_one_line_error(run_moekit("trace", root / "moe", "--no-log", check=False), "--tokens-file", status=64)
    assert_one_line_error(run_moekit("tokenize", root / "dense", "--text", tmp_path / "missing.txt", check=False), "missing.txt")
    bad = tmp_path / "bad"
    bad.mkdir()
    for content, needles in [("{", ["invalid JSON"]),
                             ('{"model": {"type": "WordPiece", "vocab": {}}}', ["'model'", "WordPiece"]),
                             ('{"model": {"type": "Unigram", "vocab": []}}', ["Unigram"]),
                             ('{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}}', ["model.merges[0]"]),
                             ('{"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": {}}}', ["pre_tokenizer", "ByteLevel"])]:
        (bad / "tokenizer.json").write_text(content)
        assert_one_line_error(run_moekit("tokenize", bad, "--text", text, check=False), bad / "tokenizer.json", *needles)

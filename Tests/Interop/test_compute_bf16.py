"""`--compute f32|bf16` through the CLI: bf16 arithmetic (AVX512-BF16's vdpbf16ps) is opt-in; on a
CPU with it, `forward --compute bf16` gives logits close to f32's (bf16 keeps 8 significant bits)
and `bench --compute bf16` records it; on a CPU without it, bf16 is refused with one line. Bad values
and the training level are refused (docs/bf16-kernels.md)."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

HAS_BF16_DOT_PRODUCT = "avx512_bf16" in open("/proc/cpuinfo").read()


@pytest.fixture(scope="module")
def models(tmp_path_factory, run_moekit):
    root = tmp_path_factory.mktemp("compute")
    run_moekit("init", root / "dense", "--preset", "tiny", "--dtype", "f32", "--quiet")
    run_moekit("upcycle", root / "dense", root / "moe", "--experts", 4, "--top-k", 2, "--quiet")
    return root / "dense", root / "moe"


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_forward_in_bf16_is_close_to_f32_or_refused(run_moekit, models, tmp_path, kind):
    model = dict(zip(("dense", "moe"), models))[kind]
    rng = np.random.default_rng(2)
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("\n".join(" ".join(map(str, rng.integers(0, 1024, n))) for n in (40, 9)) + "\n")
    run_moekit("forward", model, "--tokens-file", tokens, "--output", tmp_path / "f32.safetensors", "--compute", "f32")
    result = run_moekit("forward", model, "--tokens-file", tokens, "--output", tmp_path / "bf16.safetensors", "--compute", "bf16", check=False)
    if not HAS_BF16_DOT_PRODUCT:
        assert result.returncode != 0 and "needs AVX512-BF16" in result.stderr and len(result.stderr.strip().splitlines()) == 1
        return
    assert result.returncode == 0, result.stderr
    f32, bf16 = load_file(str(tmp_path / "f32.safetensors"))["logits"], load_file(str(tmp_path / "bf16.safetensors"))["logits"]
    error = np.abs(f32 - bf16).max() / np.abs(f32).max()
    assert 1e-5 < error < 5e-2


def test_bad_compute_values_are_refused(run_moekit, models):
    dense, _ = models
    wrong = run_moekit("forward", dense, "--text", "hi", "--compute", "fp8", check=False)
    assert wrong.returncode != 0 and "--compute" in wrong.stderr
    training = run_moekit("bench", "--level", "training", "--preset", "tiny", "--compute", "bf16", check=False)
    assert training.returncode != 0 and ("training computes in f32" in training.stderr or "needs AVX512-BF16" in training.stderr)


def test_bench_records_the_compute_precision(run_moekit, tmp_path):
    report = tmp_path / "bench.json"
    result = run_moekit("bench", "--level", "layer", "--preset", "tiny", "--tokens", 16, "--routing", "learned", "--repeats", 1,
                        "--compute", "bf16", "--json", report, check=False)
    if not HAS_BF16_DOT_PRODUCT:
        assert result.returncode != 0 and "needs AVX512-BF16" in result.stderr
        return
    assert result.returncode == 0, result.stderr
    assert "compute: bf16" in result.stdout
    document = json.loads(report.read_text())
    assert document["compute"] == "bf16" and all(r["tokens_per_s"]["median"] > 0 for r in document["results"])


def full_size_f32_checkpoint(directory, tiny_moe):
    """MiniCPM-MoE-8x2B's shapes (40 layers, hidden 2304, 8 experts of 5760, vocab 122753) in f32:
    54 GB of tensors in a sparse file (zeros; nothing is written but the header). The names come
    from a tiny MoE's checkpoint, layer 0 repeated. Returns the f32 bytes of its matrices."""
    import struct

    config = json.loads((tiny_moe / "config.json").read_text())
    hidden, intermediate, layers, experts, vocab = 2304, 5760, 40, 8, 122753
    config.update(hidden_size=hidden, intermediate_size=intermediate, num_attention_heads=36, num_key_value_heads=36,
                  num_hidden_layers=layers, num_experts=experts, num_experts_per_tok=2, vocab_size=vocab, dim_model_base=256,
                  max_position_embeddings=4096)
    shapes = {"model.embed_tokens.weight": [vocab, hidden], "model.norm.weight": [hidden]}
    for layer in range(layers):
        prefix = f"model.layers.{layer}."
        shapes.update({prefix + "input_layernorm.weight": [hidden], prefix + "post_attention_layernorm.weight": [hidden],
                       prefix + "mlp.gate.weight": [experts, hidden]})
        for projection in ("q", "k", "v", "o"):
            shapes[prefix + f"self_attn.{projection}_proj.weight"] = [hidden, hidden]
        for expert in range(experts):
            shapes.update({prefix + f"mlp.experts.{expert}.w1.weight": [intermediate, hidden],
                           prefix + f"mlp.experts.{expert}.w2.weight": [hidden, intermediate],
                           prefix + f"mlp.experts.{expert}.w3.weight": [intermediate, hidden]})
    header, offset, matrix_bytes = {}, 0, 0
    for name, shape in shapes.items():
        size = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
        if len(shape) == 2 and not name.endswith("mlp.gate.weight"):
            matrix_bytes += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    with open(directory / "model.safetensors", "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)) + encoded)
        handle.truncate(8 + len(encoded) + offset)
    return matrix_bytes


def test_bf16_copies_of_a_full_size_f32_checkpoint_are_refused_before_they_are_made(run_moekit, models, tmp_path):
    """`--compute bf16` on f32 weights makes bf16 copies in memory (27 GB for the 8x2B): `forward`
    and `trace` count them and refuse, in one line, before allocating — instead of being killed."""
    if not HAS_BF16_DOT_PRODUCT:
        pytest.skip("--compute bf16 is refused earlier on this CPU")
    _, moe = models
    model = tmp_path / "minicpm-moe-8x2b-f32"
    copies = full_size_f32_checkpoint(model, moe) // 2
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if copies <= physical:
        pytest.skip(f"this machine's {physical} bytes hold the {copies} bytes of bf16 copies")
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("1 2 3\n")
    for command in (["forward", model, "--tokens-file", tokens, "--output", tmp_path / "logits.safetensors"],
                    ["trace", model, "--tokens-file", tokens, "--no-log"]):
        result = run_moekit(*command, "--compute", "bf16", check=False)
        assert result.returncode != 0, result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "--compute bf16" in lines[0] and "bf16 copies" in lines[0] and "needs about" in lines[0], result.stderr
    assert not (tmp_path / "logits.safetensors").exists()

"""`--compute f32|bf16` through the CLI: bf16 arithmetic (AVX512-BF16's vdpbf16ps) is opt-in; on a
CPU with it, `forward --compute bf16` gives logits close to f32's (bf16 keeps 8 significant bits)
and `bench --compute bf16` records it; on a CPU without it, bf16 is refused with one line. Bad values
and the training level are refused (docs/bf16-kernels.md)."""
import json

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

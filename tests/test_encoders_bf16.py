"""The encoders' BF16 / AMX path (native/src/kernels/encoder_tile_ops.h): on a CPU with AMX-BF16, a GGUF that is not f32 runs the
codec encoder's and the speaker encoder's convolutions and linear layers on the AMX tiles (BF16 operands, F32 sums),
with its own fused attention, LayerNorm, activations and nearest-codebook search; f32 GGUFs keep the exact F32 paths
(test_parity_codec_encoder.py, test_parity_speaker.py). Here the q8_0 tiny GGUFs against the reference's oracles and
against the F32 path. With AVX512-BF16 but no AMX (Zen 4, or QWEN3TTS_ISA=avx512 on an AMX CPU), the same GGUFs run
their encoders' convolutions in BF16 pairs on the packed conv kernel, held to the same bounds (on any x86 CPU:
tests/test_avx512_emulated.py). Elsewhere every model takes F32 arithmetic and these tolerances hold trivially.

The tiny fixtures are narrow (SEANet 4..64 channels, transformer 32, speaker encoder 32/96), so only part of them
fits the tiles (widths in multiples of 32): the codec encoder's last downsampling conv, its last conv, the
transformer's linear layers and its downsample conv, the speaker encoder's first conv, TDNNs and MFA; the others
run the F32 ops inside the same graphs (the mixed path is what is tested here; at full size everything but the
first, single-channel conv is on tiles).

Observed (Xeon with AMX, q8_0 tiny-17): codes vs the oracle (17 frames x 16): books 1-11 identical, one frame
differs in books 12-16 (98.2 % of all codes); vs the F32 path on 6 s of noise: books 1-11 identical, 98.75 % of all
codes (30 s: 98.05 %; the 3.5 s harmonic signal: all identical); downsampled features vs F32: relative L2 error
5.9e-3 (transformer output 5.0e-3, SEANet output 1.6e-3); x-vector cosine to the reference 0.9999959 (tiny-06) /
0.9999999 (tiny-17), 0.9999964 to the F32 path on 2000 random mel frames.

At full size (random-weight 0.6B-Base, 30 s synthetic reference, measured by hand): downsampled features vs the F32
path relative L2 error 4.9e-3; codes vs the official reference (torch, float32) books 1-3 identical, book 4
96.3 %, books 5-16 83-85 %, 87.6 % of all (the F32 path: 99.9 %, one frame from book 9 on); x-vector relative L2
error 8.3e-5 to the reference (cosine 0.99999994, float32's resolution).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from helpers import ALL_BOOKS_MIN, FEAT_REL_MAX, FIRST_BOOK_MIN, XVEC_COS_MIN, cpu_flags

E = pytest.importorskip("wyoming_qwen3tts._engine")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

FIXTURES = Path(__file__).resolve().parent / "fixtures"


HAS_AMX = {"amx_bf16", "amx_tile"} <= cpu_flags()


def oracle(name):
    return safetensors_numpy.load_file(str(FIXTURES / name / "oracle.safetensors"))


def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _noise(n, seed):
    return (0.3 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def models(tiny_gguf):
    return (E.Model(str(tiny_gguf("tiny-17", "f32")), threads=2), E.Model(str(tiny_gguf("tiny-17", "q8_0")), threads=2))


# ------------------------------------------------------------------------------------------------ codec encoder

def test_codes_match_oracle(models):
    o = oracle("tiny-17")
    codes = E.codec_encode(models[1], o["ref_wav"])
    ref = o["ref_code"]
    assert codes.shape == ref.shape == (math.ceil(o["ref_wav"].size / 1920), 16)
    agree = (codes == ref).mean(axis=0)
    assert agree[0] >= FIRST_BOOK_MIN and agree.mean() >= ALL_BOOKS_MIN, agree


def test_codes_and_features_close_to_f32(models):
    f32, q8 = models
    wav = _noise(6 * 24000, 7)
    a, b = E.codec_encode(f32, wav), E.codec_encode(q8, wav)
    assert a.shape == b.shape and b.min() >= 0 and b.max() < 2048
    agree = (a == b).mean(axis=0)
    assert agree[0] >= FIRST_BOOK_MIN and agree.mean() >= ALL_BOOKS_MIN, agree
    fa, _ = E.codec_encode_debug(f32, wav, "downsampled", 0)
    fb, _ = E.codec_encode_debug(q8, wav, "downsampled", 0)
    rel = float(np.linalg.norm(fa - fb) / np.linalg.norm(fa))
    assert rel <= FEAT_REL_MAX, rel
    if HAS_AMX:  # the q8_0 model did take the BF16 path
        assert rel > 0


def test_chunked_seanet_is_exact(models):
    """The tile path carries its convs' left context as the BF16 it reads: the chunking changes nothing."""
    wav = _noise(50_000, 1)
    one, _ = E.codec_encode_debug(models[1], wav, "downsampled", 10 ** 7)
    for chunk in (4800, 31_000):
        got, _ = E.codec_encode_debug(models[1], wav, "downsampled", chunk)
        assert np.array_equal(got, one), chunk


@pytest.mark.parametrize("n", [1, 959, 1921, 100_003])
def test_frame_count_and_range(models, n):
    codes = E.codec_encode(models[1], _noise(n, n))
    assert codes.shape == (math.ceil(n / 1920), 16)
    assert codes.min() >= 0 and codes.max() < 2048


# ------------------------------------------------------------------------------------------------ speaker encoder

@pytest.mark.parametrize("name", ["tiny-06", "tiny-17"])
def test_xvector_close_to_reference(tiny_gguf, name):
    o = oracle(name)
    m = E.Model(str(tiny_gguf(name, "q8_0")), threads=2)
    emb = E.speaker_embedding(m, o["spk.mel"])
    ref = o["spk.embedding"]
    assert emb.shape == ref.shape
    assert cosine(emb, ref) >= XVEC_COS_MIN, cosine(emb, ref)


def test_xvector_long_input_and_fewest_frames(tiny_gguf):
    f32 = E.Model(str(tiny_gguf("tiny-06", "f32")), threads=2)
    q8 = E.Model(str(tiny_gguf("tiny-06", "q8_0")), threads=2)
    rng = np.random.default_rng(3)
    mel = (rng.standard_normal((2000, 128)) - 4).astype(np.float32)
    assert cosine(E.speaker_embedding(f32, mel), E.speaker_embedding(q8, mel)) >= XVEC_COS_MIN
    few = np.zeros((5, 128), dtype=np.float32)  # the reflect padding's minimum
    assert np.all(np.isfinite(E.speaker_embedding(q8, few)))
    with pytest.raises(E.EngineError, match="at least 5 mel frames"):
        E.speaker_embedding(q8, np.zeros((4, 128), dtype=np.float32))


# ------------------------------------------------------------------------------------------------ quantizer

BENCH_GGUF = Path.home() / ".cache" / "wyoming-qwen3tts-bench" / "gguf" / "0.6B-Base-q4_k.gguf"


def _rvq_float64(path, z):
    """The split RVQ of features z [frames, hidden] in float64 from the GGUF's tensors: nearest codebook rows."""
    gguf = pytest.importorskip("gguf")
    t = {x.name: np.asarray(x.data) for x in gguf.GGUFReader(str(path)).tensors if x.name.startswith("codec.enc.rvq_")}
    codes = []
    for q in ("sem", "ac"):
        r = z.astype(np.float64) @ t[f"codec.enc.rvq_{q}.input_proj.weight"][:, :, 0].astype(np.float64).T
        j = 0
        while f"codec.enc.rvq_{q}.codebook.{j}.weight" in t and len(codes) < 16:
            y = t[f"codec.enc.rvq_{q}.codebook.{j}.weight"].astype(np.float64)
            idx = np.argmin((y * y).sum(1)[None, :] - 2 * r @ y.T, axis=1)
            codes.append(idx)
            r = r - y[idx]
            j += 1
    return np.stack(codes, axis=1)


def _rvq_agreement(path, model, wav):
    z, _ = E.codec_encode_debug(model, wav, "downsampled", 0)
    codes = E.codec_encode(model, wav)
    want = _rvq_float64(path, z)[: codes.shape[0]]
    return (codes == want).mean()


def test_quantizer_matches_float64_nearest_rows(tiny_gguf):
    """Given the engine's own features, its codes are the float64 nearest rows (the F32 search on tiny widths)."""
    path = tiny_gguf("tiny-17", "q8_0")
    agree = _rvq_agreement(path, E.Model(str(path), threads=2), _noise(10 * 24000, 11))
    assert agree >= 0.995, agree  # observed 1.0 (the f32 GGUF's exact path too)


@pytest.mark.skipif(not BENCH_GGUF.is_file(), reason="no full-size benchmark GGUF (bench/bench.py makes it)")
def test_quantizer_full_size_rescored_search():
    """At full size (codebook rows of 256) the nearest rows come from BF16 tile products rescored in F32: still
    the float64 nearest rows."""
    m = E.Model(str(BENCH_GGUF), threads=2)
    agree = _rvq_agreement(BENCH_GGUF, m, _noise(10 * 24000, 12))
    assert agree >= 0.995, agree  # observed 1.0


def test_independent_of_threads(tiny_gguf):
    """Every tile op computes each output in one thread, in an order that does not depend on the split."""
    path = str(tiny_gguf("tiny-17", "q8_0"))
    o = oracle("tiny-17")
    wav = _noise(3 * 24000, 5)
    results = []
    for threads in (1, 3):
        m = E.Model(path, threads=threads)
        feats, _ = E.codec_encode_debug(m, wav, "downsampled", 0)
        results.append((E.speaker_embedding(m, o["spk.mel"]), feats))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])

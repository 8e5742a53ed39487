"""Parity of the ggml 12 Hz codec decoder with the reference (the codec oracle of the shared tiny speech tokenizer,
tests/fixtures/speech-tokenizer/oracle.safetensors, which every tiny checkpoint links in as speech_tokenizer/),
and exactness of the stateful streaming decoder for arbitrary splits of a code sequence.

The tiny decoder has 2 transformer layers and sliding_window 4, so the 35 oracle frames (and the longer random
sequences here) run well past the window: the K/V cache eviction and the mask are exercised.
"""
from __future__ import annotations

import struct
import threading
from pathlib import Path

import numpy as np
import pytest

E = pytest.importorskip("wyoming_qwen3tts._engine")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ORACLE = FIXTURES / "speech-tokenizer" / "oracle.safetensors"

STAGE_TOL = 1e-5     # quantized / pre_conv / pre_transformer, abs
WAVE_TOL = 1e-6      # waveform vs the reference, abs
STREAM_TOL = 1e-6    # streaming vs one-shot (same engine), abs


@pytest.fixture(scope="module")
def oracle():
    if not ORACLE.is_file():
        pytest.skip(f"{ORACLE} is not available")
    return safetensors_numpy.load_file(str(ORACLE))


@pytest.fixture(scope="module")
def gguf_path(tiny_gguf):
    return tiny_gguf("tiny-17", "f32")


@pytest.fixture(scope="module")
def model(gguf_path):
    return E.Model(str(gguf_path), threads=1)


@pytest.fixture(scope="module")
def codes(oracle):
    return oracle["dec.codes"].astype(np.int32)


def oneshot(model, codes):
    s = E.CodecStream(model, max_batch=max(1, len(codes)))
    return s.decode(codes)


def random_codes(n, seed):
    return np.random.default_rng(seed).integers(0, 2048, size=(n, 16), dtype=np.int32)


def stream_in_pieces(model, codes, rng, max_piece):
    s = E.CodecStream(model)
    out, i = [], 0
    while i < len(codes):
        n = int(rng.integers(1, max_piece + 1))
        out.append(s.decode(codes[i:i + n]))
        i += n
    assert s.position == len(codes)
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------- reference parity

def test_codec_info(model):
    info = E.codec_info(model)
    assert info == {"samples_per_frame": 1920, "sample_rate": 24000, "num_quantizers": 16}


@pytest.mark.parametrize("stage,key,transpose", [
    ("quantized", "dec.quantized", True),        # oracle [codebook_dim, T]
    ("pre_conv", "dec.pre_conv", False),         # oracle [T, latent]
    ("pre_transformer", "dec.pre_transformer", False),
])
def test_stages(model, oracle, codes, stage, key, transpose):
    ref = oracle[key].T if transpose else oracle[key]
    got = E.codec_debug_stage(model, codes, stage)
    assert got.shape == ref.shape
    err = float(np.abs(got - ref).max())
    assert err <= STAGE_TOL, f"{stage}: max abs diff {err:.3g}"


def test_forward_waveform(model, oracle, codes):
    ref = oracle["dec.wav_forward"]
    got = oneshot(model, codes)
    assert got.shape == ref.shape == (len(codes) * 1920,)
    err = float(np.abs(got - ref).max())
    assert err <= WAVE_TOL, f"max abs diff {err:.3g} (peak {np.abs(ref).max():.3g})"
    # the debug entry runs the same decode (in graphs of 16 frames: not bit-identical, softmax rows differ)
    dbg = E.codec_debug_stage(model, codes, "waveform")
    assert dbg.shape == (len(codes), 1920)
    assert float(np.abs(dbg.reshape(-1) - ref).max()) <= WAVE_TOL


def test_decode_default_chunking(model, oracle, codes):
    """decode() of the reference = chunked_decode(300, 25), which for T <= 300 is one forward."""
    got = E.codec_decode_chunked(model, codes)
    err = float(np.abs(got - oracle["dec.wav_decode"]).max())
    assert err <= WAVE_TOL, f"max abs diff {err:.3g}"


def test_chunked_5_3(model, oracle, codes):
    """The reference's seam logic (chunk 5, left context 3) reproduced, seams and all."""
    ref = oracle["dec.wav_chunked_5_3"]
    got = E.codec_decode_chunked(model, codes, chunk=5, left_context=3)
    err = float(np.abs(got - ref).max())
    assert err <= WAVE_TOL, f"max abs diff {err:.3g}"
    # and it really differs from the forward (the seams are approximate in the reference)
    assert np.abs(ref - oracle["dec.wav_forward"]).max() > 100 * WAVE_TOL


def test_chunked_long_matches_reference_scheme(model):
    """T > 300: 300-frame chunks with 25 frames of context, positions restarting per chunk. Rebuilt here from
    one-shot decodes of the reference's code windows."""
    c = random_codes(337, seed=7)
    got = E.codec_decode_chunked(model, c)
    expect = np.concatenate([oneshot(model, c[0:300]), oneshot(model, c[275:337])[25 * 1920:]])
    assert got.shape == expect.shape
    assert float(np.abs(got - expect).max()) <= STREAM_TOL


def test_chunked_context_rule(model):
    """ctx = left_context if start - left_context > 0 else start (so the 2nd chunk of chunk=context gets all)."""
    c = random_codes(13, seed=3)
    got = E.codec_decode_chunked(model, c, chunk=4, left_context=4)
    parts = [oneshot(model, c[0:4])]
    for start in (4, 8, 12):
        end = min(start + 4, 13)
        ctx = 4 if start - 4 > 0 else start
        parts.append(oneshot(model, c[start - ctx:end])[ctx * 1920:])
    assert float(np.abs(got - np.concatenate(parts)).max()) <= STREAM_TOL


# ------------------------------------------------------------------------------------------- streaming

@pytest.mark.parametrize("which,max_piece", [("oracle", 3), ("oracle", 9), ("random60", 1), ("random60", 7),
                                             ("random60", 25)])
def test_streaming_random_splits(model, codes, which, max_piece):
    c = codes if which == "oracle" else random_codes(60, seed=11)
    ref = oneshot(model, c)
    rng = np.random.default_rng(1234 + max_piece)
    worst = 0.0
    for _ in range(4):
        got = stream_in_pieces(model, c, rng, max_piece)
        worst = max(worst, float(np.abs(got - ref).max()))
    assert worst <= STREAM_TOL, f"stream vs one-shot max abs diff {worst:.3g}"


def test_streaming_matches_reference_forward(model, oracle, codes):
    got = stream_in_pieces(model, codes, np.random.default_rng(5), 4)
    assert float(np.abs(got - oracle["dec.wav_forward"]).max()) <= WAVE_TOL


def test_stream_internal_batching_and_reset(model):
    c = random_codes(40, seed=21)
    ref = oneshot(model, c)
    s = E.CodecStream(model, max_batch=3)   # 40 frames in one call, split into graphs of 3 frames inside
    assert float(np.abs(s.decode(c) - ref).max()) <= STREAM_TOL
    s.reset()
    assert s.position == 0
    a = s.decode(c[:17])
    b = s.decode(c[17:])
    assert float(np.abs(np.concatenate([a, b]) - ref).max()) <= STREAM_TOL
    assert s.decode(np.zeros((0, 16), np.int32)).shape == (0,)
    assert s.position == 40


# ------------------------------------------------------------------------------------------- input checks

def test_negative_codes_read_as_zero(model):
    c = random_codes(6, seed=2)
    neg = c.copy()
    neg[1, 0] = -1
    neg[4, 7] = -5
    zero = c.copy()
    zero[1, 0] = 0
    zero[4, 7] = 0
    np.testing.assert_array_equal(oneshot(model, neg), oneshot(model, zero))


def test_code_out_of_range(model):
    c = random_codes(3, seed=4)
    c[2, 5] = 2048
    s = E.CodecStream(model)
    good = random_codes(5, seed=6)
    a = s.decode(good[:2])
    with pytest.raises(E.EngineError, match="out of range"):
        s.decode(c)
    assert s.position == 2     # rejected before anything was decoded: the stream goes on unchanged
    b = s.decode(good[2:])
    assert float(np.abs(np.concatenate([a, b]) - oneshot(model, good)).max()) <= STREAM_TOL
    with pytest.raises(E.EngineError, match="out of range"):
        E.codec_decode_chunked(model, c)


def test_bad_code_shape(model):
    s = E.CodecStream(model)
    with pytest.raises(ValueError):
        s.decode(np.zeros((4, 15), np.int32))
    with pytest.raises(ValueError):
        s.decode(np.zeros(16, np.int32))
    with pytest.raises(ValueError):
        E.codec_decode_chunked(model, np.zeros((4, 16), np.int32), chunk=0)


# ------------------------------------------------------------------------------------------- damaged GGUFs

def _patch_tensor_info(src: Path, dst: Path, name: str, *, rename: str | None = None, dim0: int | None = None,
                       ggml_type: int | None = None):
    """Copies a GGUF, editing one tensor-info record in place (same byte length: offsets stay valid)."""
    data = bytearray(src.read_bytes())
    key = struct.pack("<Q", len(name)) + name.encode()
    at = data.find(key)
    assert at >= 0 and data.find(key, at + 1) < 0, name
    p = at + len(key)
    n_dims = struct.unpack_from("<I", data, p)[0]
    if rename is not None:
        assert len(rename) == len(name)
        data[at + 8:at + 8 + len(name)] = rename.encode()
    if dim0 is not None:
        struct.pack_into("<Q", data, p + 4, dim0)
    if ggml_type is not None:
        struct.pack_into("<I", data, p + 4 + 8 * n_dims, ggml_type)
    dst.write_bytes(bytes(data))


@pytest.mark.parametrize("edit,match", [
    (dict(name="codec.dec.tf.norm.weight", rename="codec.dec.tf.norX.weight"), "is missing"),
    (dict(name="codec.dec.pre_conv.conv.bias", dim0=31), "has shape"),
    # (edits keep each tensor's 32-byte-padded size, so the GGUF itself stays readable)
    (dict(name="codec.dec.decoder.2.block.1.conv.bias", dim0=15), "has shape"),
    (dict(name="codec.dec.decoder.6.conv.bias", ggml_type=1), "needs F32"),   # F16
])
def test_damaged_gguf_is_an_error(gguf_path, tmp_path, edit, match):
    bad = tmp_path / "bad.gguf"
    _patch_tensor_info(Path(gguf_path), bad, **edit)
    m = E.Model(str(bad), threads=1)    # the talker side is intact, the model loads
    with pytest.raises(E.EngineError, match=match):
        E.CodecStream(m)
    with pytest.raises(E.EngineError, match=match):
        E.codec_decode_chunked(m, np.zeros((2, 16), np.int32))


def test_stream_threads(model):
    c = random_codes(9, seed=8)
    a = E.CodecStream(model, threads=1).decode(c)
    s = E.CodecStream(model)
    s.set_threads(2)
    b = s.decode(c)
    assert float(np.abs(a - b).max()) <= STREAM_TOL


# ------------------------------------------------------------------------------------------- BF16 codec

BF16_COS = 0.9999   # waveform cosine of the BF16 codec (every GGUF type but f32) with the reference (0.99998)
BF16_ABS = 1e-3     # and its max abs error (2.4e-4), against a peak of 0.02


@pytest.fixture(scope="module")
def bf16_model(tiny_gguf):
    return E.Model(str(tiny_gguf("tiny-17", "q8_0")), threads=2)


def test_bf16_codec_close_to_reference(bf16_model, oracle, codes):
    # BF16 weights and activations (AMX tiles where the CPU has them: the tiny decoder's 32/64-wide convs run on
    # tiles, its 16/8-wide ones on ggml's kernels), FP32 sums; the rounding is the only difference
    ref = oracle["dec.wav_forward"]
    got = oneshot(bf16_model, codes)
    cos = float(np.dot(got, ref) / (np.linalg.norm(got) * np.linalg.norm(ref)))
    err = float(np.abs(got - ref).max())
    assert cos >= BF16_COS and err <= BF16_ABS, f"cosine {cos:.6f}, max abs diff {err:.3g}"
    assert err > 0  # it is the BF16 path, not the F32 one


def test_bf16_codec_streaming_equals_oneshot(bf16_model, codes):
    ref = oneshot(bf16_model, codes)
    got = stream_in_pieces(bf16_model, codes, np.random.default_rng(7), 5)
    assert float(np.abs(got - ref).max()) <= STREAM_TOL


def test_streams_on_several_threads_share_the_codec_compute(model):
    """Every stream computes on the model's one codec backend and thread pool (codec_common.h), one graph at a
    time: streams decoding at once on four threads, with different thread counts and batch sizes, give exactly
    what the same streams give one after the other."""
    codes = [random_codes(24, seed=20 + i) for i in range(4)]

    def decode(i):
        s = E.CodecStream(model, max_batch=1 + i, threads=1 + i % 2)
        return np.concatenate([s.decode(codes[i][j:j + 5]) for j in range(0, 24, 5)])

    serial = [decode(i) for i in range(4)]
    out = [None] * 4

    def run(i):
        out[i] = decode(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    for a, b in zip(out, serial):
        assert a is not None and np.array_equal(a, b)

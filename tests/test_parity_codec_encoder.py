"""Parity of the ggml codec encoder (the Mimi encoder half, model.md 6.3) with the reference.

* The oracle of the official reference (tests/fixtures/tiny-17/oracle.safetensors: ``ref_wav`` and its codes
  ``ref_code``) must be reproduced exactly by both tiny checkpoints' F32 GGUFs (tiny-17 and tiny-06 share one
  speech tokenizer), through the C API binding and through ``Qwen3TTS.encode``.
* The SEANet runs in chunks with carried conv state: the codes must not depend on the chunk size.
* Frame count: ceil(n / 1920) frames; with qwen_tts importable, the codes of a few lengths around the frame
  boundaries (and longer than one SEANet chunk) are compared with the reference computed here.
* Errors: empty, non-1-D or non-finite input, a model without the encoder, a damaged encoder.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

E = pytest.importorskip("wyoming_qwen3tts._engine")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
ORACLE = FIXTURES / "tiny-17" / "oracle.safetensors"
SAMPLES_PER_FRAME = 1920


@pytest.fixture(scope="module")
def oracle():
    if not ORACLE.is_file():
        pytest.fail(f"{ORACLE} is missing (regenerate with tests/reference/make_fixtures.py)")
    o = safetensors_numpy.load_file(str(ORACLE))
    return o["ref_wav"].astype(np.float32), o["ref_code"].astype(np.int32)


@pytest.fixture(scope="module")
def model17(tiny_gguf):
    return E.Model(str(tiny_gguf("tiny-17", "f32")), threads=1)


def _noise(n, seed):
    return (0.3 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


# ------------------------------------------------------------------------------------------------ oracle

@pytest.mark.parametrize("name", ["tiny-17", "tiny-06"])
def test_codes_match_reference_oracle(tiny_gguf, oracle, name):
    wav, ref = oracle
    m = E.Model(str(tiny_gguf(name, "f32")), threads=1)
    assert E.codec_has_encoder(m)
    codes = E.codec_encode(m, wav)
    assert codes.dtype == np.int32 and codes.shape == ref.shape == (math.ceil(wav.size / SAMPLES_PER_FRAME), 16)
    assert np.array_equal(codes, ref), f"{int((codes != ref).sum())} codes differ at {np.argwhere(codes != ref)[:8]}"


def test_python_api_matches_oracle(tiny_gguf, oracle):
    from wyoming_qwen3tts.engine import Qwen3TTS

    wav, ref = oracle
    tts = Qwen3TTS(tiny_gguf("tiny-17", "f32"), threads=1)
    codes = tts.encode(wav, 24000)
    assert codes.dtype == np.int32 and np.array_equal(codes, ref)
    # float64 and integer-valued inputs are converted, not rejected
    assert np.array_equal(tts.encode(wav.astype(np.float64), 24000), ref)


def test_python_api_resamples(tiny_gguf, oracle):
    pytest.importorskip("soxr")
    from wyoming_qwen3tts import audio
    from wyoming_qwen3tts.engine import Qwen3TTS

    wav, _ = oracle
    tts = Qwen3TTS(tiny_gguf("tiny-17", "f32"), threads=1)
    wav16 = audio.resample(wav, 24000, 16000)
    codes = tts.encode(wav16, 16000)
    expect = E.codec_encode(tts._model, audio.resample(wav16, 16000, 24000))
    assert np.array_equal(codes, expect)
    assert codes.shape == (math.ceil(math.ceil(wav16.size * 1.5) / SAMPLES_PER_FRAME), 16)


# ------------------------------------------------------------------------------------------------ chunking

@pytest.mark.parametrize("chunk", [960, 1920 * 3, 20000, 10 ** 7])
def test_chunked_seanet_is_exact(model17, oracle, chunk):
    wav, ref = oracle
    codes, peak = E.codec_encode_debug(model17, wav, "codes", chunk)
    assert np.array_equal(codes, ref)
    assert peak["seanet"] > 0 and peak["rest"] > 0


def test_chunked_features_bit_identical(model17):
    wav = _noise(50_000, 1)
    one, _ = E.codec_encode_debug(model17, wav, "downsampled", 10 ** 7)
    for chunk in (4800, 31_000):
        got, _ = E.codec_encode_debug(model17, wav, "downsampled", chunk)
        assert np.array_equal(got, one), chunk


def test_compute_memory(model17):
    """The SEANet's compute buffer depends on the chunk, not on the input length; the rest (transformer with
    blocked attention, RVQ) grows about linearly, not quadratically, with the input."""
    _, p1 = E.codec_encode_debug(model17, _noise(48_000, 2), "codes", 9600)
    _, p4 = E.codec_encode_debug(model17, _noise(192_000, 3), "codes", 9600)
    assert p4["seanet"] == p1["seanet"]
    assert p4["rest"] < 5 * p1["rest"]


# ------------------------------------------------------------------------------------------------ frames

LENGTHS = [1, 959, 960, 1919, 1920, 1921, 3841, 48_000, 100_003]


@pytest.mark.parametrize("n", LENGTHS)
def test_frame_count(model17, n):
    codes = E.codec_encode(model17, _noise(n, n))
    assert codes.shape == (math.ceil(n / SAMPLES_PER_FRAME), 16)
    assert codes.min() >= 0 and codes.max() < 2048


@pytest.fixture(scope="module")
def reference_tokenizer(tiny_checkpoint):
    """The official reference's speech tokenizer (qwen_tts), float32, loaded from the assembled tiny checkpoint."""
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("_qwen3tts_reference_stubs", REFERENCE_DIR / "stubs.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))  # sox / onnxruntime / torchaudio stand-ins
    pytest.importorskip("qwen_tts")
    import torch
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model

    tok = Qwen3TTSTokenizerV2Model.from_pretrained(str(tiny_checkpoint("tiny-17") / "speech_tokenizer"),
                                                   dtype=torch.float32).eval()

    def encode(wav: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(wav)[None]
            return tok.encode(x, padding_mask=torch.ones_like(x, dtype=torch.long)).audio_codes[0].numpy()

    return encode


@pytest.mark.parametrize("n", LENGTHS)
def test_codes_match_reference_for_lengths(model17, reference_tokenizer, n):
    wav = _noise(n, n)
    ref = reference_tokenizer(wav)
    codes = E.codec_encode(model17, wav)
    assert codes.shape == ref.shape
    assert np.array_equal(codes, ref), f"{int((codes != ref).sum())} codes differ"
    # and with a SEANet chunk that splits the input at several points
    chunked, _ = E.codec_encode_debug(model17, wav, "codes", 960 * 7)
    assert np.array_equal(chunked, ref)


def test_codes_match_reference_for_speechlike_audio(model17, reference_tokenizer):
    """A harmonic signal with an envelope (closer to speech than noise), 3.5 s."""
    t = np.arange(84_000) / 24000.0
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 24000.0
    wav = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.2 + 0.2 * np.sin(2 * np.pi * 2.1 * t) ** 2)
    wav = wav.astype(np.float32)
    ref = reference_tokenizer(wav)
    assert np.array_equal(E.codec_encode(model17, wav), ref)


# ------------------------------------------------------------------------------------------------ errors

def test_empty_and_malformed_input(model17):
    with pytest.raises(ValueError, match="empty"):
        E.codec_encode(model17, np.zeros(0, dtype=np.float32))
    with pytest.raises(ValueError, match="1-D"):
        E.codec_encode(model17, np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(ValueError):
        E.codec_encode(model17, np.array(["a", "b"]))
    bad = _noise(5000, 4)
    bad[100] = np.nan
    with pytest.raises(E.EngineError, match="NaN"):
        E.codec_encode(model17, bad)
    bad[100] = np.inf
    with pytest.raises(E.EngineError, match="NaN or infinite"):
        E.codec_encode(model17, bad)


def test_python_api_errors(tiny_gguf):
    from wyoming_qwen3tts.engine import Qwen3TTS

    tts = Qwen3TTS(tiny_gguf("tiny-17", "f32"), threads=1)
    with pytest.raises(ValueError, match="empty"):
        tts.encode(np.zeros(0, dtype=np.float32), 24000)
    with pytest.raises(ValueError, match="1-D"):
        tts.encode(np.zeros((100, 2), dtype=np.float32), 24000)
    with pytest.raises(ValueError, match="NaN"):
        tts.encode(np.full(100, np.nan, dtype=np.float32), 24000)
    with pytest.raises(ValueError, match="sample rate"):
        tts.encode(np.zeros(100, dtype=np.float32), 0)


def _renamed_copy(src: Path, dst: Path, old: str, new: str) -> Path:
    """A copy of a GGUF with one tensor renamed in its header (same length: the file stays valid)."""
    assert len(old) == len(new)
    data = bytearray(src.read_bytes())
    i = data.find(old.encode())
    assert i >= 0
    data[i:i + len(old)] = new.encode()
    dst.write_bytes(bytes(data))
    return dst


def test_model_without_encoder(tiny_gguf, tmp_path):
    from wyoming_qwen3tts.engine import Qwen3TTS

    path = _renamed_copy(tiny_gguf("tiny-17", "f32"), tmp_path / "noenc.gguf",
                         "codec.enc.encoder.layers.0.conv.weight", "codec.xnc.encoder.layers.0.conv.weight")
    m = E.Model(str(path), threads=1)
    assert not E.codec_has_encoder(m)
    with pytest.raises(E.EngineError, match="no codec encoder"):
        E.codec_encode(m, _noise(4000, 5))
    tts = Qwen3TTS(path, threads=1)
    with pytest.raises(ValueError, match="no codec encoder"):
        tts.encode(_noise(4000, 5), 24000)


def test_damaged_encoder_is_an_error_not_an_abort(tiny_gguf, tmp_path):
    path = _renamed_copy(tiny_gguf("tiny-17", "f32"), tmp_path / "damaged.gguf",
                         "codec.enc.downsample.conv.weight", "codec.enc.downsample.conv.weighX")
    m = E.Model(str(path), threads=1)
    with pytest.raises(E.EngineError, match="codec.enc.downsample.conv.weight"):
        E.codec_encode(m, _noise(4000, 6))

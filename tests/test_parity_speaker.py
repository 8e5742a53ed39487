"""Voice-cloning front end and speaker encoder: parity with the reference (the oracles of the tiny Base checkpoints,
tests/fixtures/<name>/oracle.safetensors: ``ref_wav`` 1.3 s at 24 kHz, ``spk.mel`` [frames, 128] from the
reference's mel_spectrogram, ``spk.embedding`` from its extract_speaker_embedding), the resampling path, the audio
loader's checks, and a model without a speaker encoder.

Observed (x86-64, F32 GGUF): log-mel max |diff| 7.2e-6 (the reference's float32 torch.stft; ours runs in float64),
x-vector max |diff| 4.8e-7 (tiny-06) / 3.6e-7 (tiny-17), from the oracle mel and from our own.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

E = pytest.importorskip("wyoming_qwen3tts._engine")
safetensors_numpy = pytest.importorskip("safetensors.numpy")
sf = pytest.importorskip("soundfile")
pytest.importorskip("soxr")

from wyoming_qwen3tts import audio  # noqa: E402
from wyoming_qwen3tts.engine import Qwen3TTS  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MODELS = ["tiny-06", "tiny-17"]

MEL_TOL = 1e-5   # log-mel vs the reference, abs (reached: 7.2e-6)
EMB_TOL = 1e-5   # x-vector vs the reference, abs (reached: < 5e-7)


def load_oracle(name):
    path = FIXTURES / name / "oracle.safetensors"
    if not path.is_file():
        pytest.fail(f"{path} is missing (regenerate with tests/reference/make_fixtures.py)")
    return safetensors_numpy.load_file(str(path))


@pytest.fixture(scope="module", params=MODELS)
def case(request, tiny_gguf):
    name = request.param
    return name, load_oracle(name), tiny_gguf(name, "f32")


@pytest.fixture(scope="module")
def tts06(tiny_gguf):
    return Qwen3TTS(tiny_gguf("tiny-06", "f32"), threads=2)


def lowpass(y, sr, cutoff):
    """Zero every FFT bin above cutoff Hz (a reference without content the lower rate cannot carry)."""
    spec = np.fft.rfft(y.astype(np.float64))
    spec[np.fft.rfftfreq(len(y), 1.0 / sr) > cutoff] = 0
    return np.fft.irfft(spec, len(y)).astype(np.float32)


def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------------------------------------ mel

def test_mel_filterbank_matches_librosa():
    librosa = pytest.importorskip("librosa")
    ours = audio.mel_filterbank()
    ref = librosa.filters.mel(sr=24000, n_fft=1024, n_mels=128, fmin=0, fmax=12000)
    assert ours.dtype == np.float32 and ours.shape == (128, 513)
    np.testing.assert_array_equal(ours, ref)


def test_log_mel_matches_reference(case):
    name, oracle, _ = case
    mel = audio.log_mel(oracle["ref_wav"])
    ref = oracle["spk.mel"]
    assert mel.dtype == np.float32
    assert mel.shape == ref.shape == (len(oracle["ref_wav"]) // 256, 128)
    err = float(np.abs(mel - ref).max())
    assert err < MEL_TOL, f"{name}: log-mel max |diff| {err:.3g}"


def test_log_mel_rejects_bad_input():
    with pytest.raises(ValueError):
        audio.log_mel(np.zeros((2, 24000), dtype=np.float32))
    with pytest.raises(ValueError):
        audio.log_mel(np.zeros(300, dtype=np.float32))  # not more than the 384-sample reflect padding
    with pytest.raises(ValueError):
        audio.log_mel(np.full(24000, np.nan, dtype=np.float32))


# ---------------------------------------------------------------------------------------- speaker encoder

def test_embedding_from_reference_mel(case):
    name, oracle, gguf = case
    model = E.Model(str(gguf), threads=2)
    emb = E.speaker_embedding(model, oracle["spk.mel"])
    ref = oracle["spk.embedding"]
    assert emb.dtype == np.float32 and emb.shape == ref.shape == (model.hidden_size,)
    err = float(np.abs(emb - ref).max())
    assert err < EMB_TOL, f"{name}: x-vector max |diff| {err:.3g}"


def test_full_path(case):
    name, oracle, gguf = case
    tts = Qwen3TTS(gguf, threads=2)
    assert tts.has_speaker_encoder
    emb = tts.speaker_embedding(oracle["ref_wav"], 24000)
    err = float(np.abs(emb - oracle["spk.embedding"]).max())
    assert err < EMB_TOL, f"{name}: x-vector (wav -> mel -> encoder) max |diff| {err:.3g}"


def test_embedding_independent_of_threads(tiny_gguf):
    oracle = load_oracle("tiny-17")
    model = E.Model(str(tiny_gguf("tiny-17", "f32")), threads=1)
    one = E.speaker_embedding(model, oracle["spk.mel"])
    model.set_threads(2)
    two = E.speaker_embedding(model, oracle["spk.mel"])
    np.testing.assert_allclose(one, two, rtol=0, atol=1e-6)


def test_encoder_input_checks(tts06):
    model = tts06._model
    with pytest.raises(E.EngineError, match="128 mel bins"):
        E.speaker_embedding(model, np.zeros((50, 80), dtype=np.float32))
    with pytest.raises(E.EngineError, match="at least 5 mel frames"):  # reflect padding 4 (k3, dilation 4)
        E.speaker_embedding(model, np.zeros((4, 128), dtype=np.float32))
    with pytest.raises(E.EngineError, match="NaN"):
        E.speaker_embedding(model, np.full((50, 128), np.nan, dtype=np.float32))
    # the fewest frames accepted work
    assert np.all(np.isfinite(E.speaker_embedding(model, np.zeros((5, 128), dtype=np.float32))))


# ------------------------------------------------------------------------------------------ resampling

def test_resample_matches_librosa():
    librosa = pytest.importorskip("librosa")
    y = load_oracle("tiny-06")["ref_wav"]
    for sr in (16000, 22050, 44100):
        down = audio.resample(y, 24000, sr)
        np.testing.assert_array_equal(down, librosa.resample(y, orig_sr=24000, target_sr=sr))
        np.testing.assert_array_equal(audio.resample(down, sr, 24000),
                                      librosa.resample(down, orig_sr=sr, target_sr=24000))
    np.testing.assert_array_equal(audio.resample(y, 24000, 24000), y)


@pytest.mark.parametrize("sr", [16000, 44100])
def test_resampled_reference_gives_the_same_voice(tts06, sr):
    # The oracle's reference has white noise up to 12 kHz, which a 16 kHz copy cannot carry (a third of the mel
    # bins): band-limit it first, so that the two inputs describe the same signal.
    y24 = lowpass(load_oracle("tiny-06")["ref_wav"], 24000, 6000)
    y_sr = audio.resample(y24, 24000, sr)
    direct = tts06.speaker_embedding(y24, 24000)
    resampled = tts06.speaker_embedding(y_sr, sr)
    assert resampled.shape == direct.shape
    assert cosine(direct, resampled) > 0.99


def test_speaker_embedding_rejects_bad_input(tts06):
    with pytest.raises(ValueError):
        tts06.speaker_embedding(np.zeros((2, 24000), dtype=np.float32), 24000)
    with pytest.raises(ValueError):
        tts06.speaker_embedding(np.zeros(24000, dtype=np.float32), 0)


# ------------------------------------------------------------------------------------------ load_audio

def write(path, data, sr, **kw):
    sf.write(str(path), data, sr, **kw)
    return path


def noise(seconds, sr, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    shape = (int(seconds * sr),) if channels == 1 else (int(seconds * sr), channels)
    return (0.2 * rng.standard_normal(shape)).astype(np.float32)


def test_load_audio_wav(tmp_path):
    y = noise(1.5, 16000)
    p = write(tmp_path / "ref.wav", y, 16000, subtype="FLOAT")
    wav, sr = audio.load_audio(p)
    assert sr == 16000 and wav.dtype == np.float32 and wav.ndim == 1
    np.testing.assert_array_equal(wav, y)
    # a file object works as well as a path
    wav2, sr2 = audio.load_audio(io.BytesIO(p.read_bytes()))
    assert sr2 == 16000
    np.testing.assert_array_equal(wav2, y)


def test_load_audio_stereo_flac_downmix(tmp_path):
    y = noise(2.0, 24000, channels=2, seed=1)
    y[:, 1] *= 0.25
    p = write(tmp_path / "stereo.flac", y, 24000, format="FLAC", subtype="PCM_16")
    stored, _ = sf.read(str(p), dtype="float32", always_2d=True)
    assert stored.shape[1] == 2
    wav, sr = audio.load_audio(p)
    assert sr == 24000 and wav.ndim == 1 and wav.shape[0] == y.shape[0]
    np.testing.assert_allclose(wav, stored.mean(axis=1), rtol=0, atol=1e-7)
    np.testing.assert_allclose(wav, y.mean(axis=1), rtol=0, atol=1e-4)  # 16-bit quantisation


def test_load_audio_ogg(tmp_path):
    if "OGG" not in sf.available_formats():
        pytest.skip("libsndfile without OGG")
    t = np.arange(int(1.5 * 24000)) / 24000
    y = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    wav, sr = audio.load_audio(write(tmp_path / "ref.ogg", y, 24000, format="OGG", subtype="VORBIS"))
    assert sr == 24000 and wav.ndim == 1 and abs(wav.shape[0] - y.shape[0]) < 2048
    assert 0.2 < np.abs(wav).max() < 0.4


def test_load_audio_rejects_text_file(tmp_path):
    p = tmp_path / "notes.wav"
    p.write_text("this is not audio\n" * 100)
    with pytest.raises(ValueError, match="not a readable audio file"):
        audio.load_audio(p)


def test_load_audio_rejects_empty_wav(tmp_path):
    p = write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 24000)
    with pytest.raises(ValueError, match="no audio samples"):
        audio.load_audio(p)


def test_load_audio_rejects_silence(tmp_path):
    p = write(tmp_path / "silent.wav", np.zeros(2 * 24000, dtype=np.float32), 24000)
    with pytest.raises(ValueError, match="silent"):
        audio.load_audio(p)
    quiet = write(tmp_path / "quiet.wav", np.full(2 * 24000, 5e-5, dtype=np.float32), 24000, subtype="FLOAT")
    with pytest.raises(ValueError, match="silent"):
        audio.load_audio(quiet)


def test_load_audio_rejects_too_short(tmp_path):
    p = write(tmp_path / "short.wav", noise(0.5, 24000), 24000)
    with pytest.raises(ValueError, match="at least 1 s"):
        audio.load_audio(p)


def test_load_audio_rejects_too_long(tmp_path):
    p = write(tmp_path / "long.wav", noise(61, 8000), 8000)
    with pytest.raises(ValueError, match="3-30 s"):
        audio.load_audio(p)


def test_load_audio_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        audio.load_audio(tmp_path / "nope.wav")


# ------------------------------------------------------------------------------- no speaker encoder

def test_model_without_speaker_encoder(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    from wyoming_qwen3tts.convert import convert

    ckpt = tiny_checkpoint("tiny-06", copy=True)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.pop("speaker_encoder_config", None)
    cfg["tts_model_type"] = "voice_design"  # a Base model must have a speaker encoder: the converter insists
    (ckpt / "config.json").write_text(json.dumps(cfg))
    tensors = load_file(str(ckpt / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if not k.startswith("speaker_encoder.")}, str(ckpt / "model.safetensors"))
    gguf = convert(ckpt, tmp_path / "no-spk.gguf", "f32", progress=False)

    tts = Qwen3TTS(gguf, threads=1)
    assert not tts.has_speaker_encoder
    wav = load_oracle("tiny-06")["ref_wav"]
    with pytest.raises(ValueError, match="no speaker encoder"):
        tts.speaker_embedding(wav, 24000)
    with pytest.raises(E.EngineError, match=r"this model has no speaker encoder \(only Base models clone voices\)"):
        E.speaker_embedding(tts._model, audio.log_mel(wav))

"""The real loading path at full size: a random-weight checkpoint in the released layout (bf16 main model,
fp32 codec, real configs from ../shared/reference/configs) goes through the converter into a Q4_K GGUF that
the engine loads and runs, packed (the default) and with ggml's kernels. The tiny fixtures cannot exercise Q4_K
(their rows are shorter than 256)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from wyoming_qwen3tts import Qwen3TTS
from wyoming_qwen3tts.convert import convert
from wyoming_qwen3tts.tokenizer import read_gguf_metadata

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "make_random_checkpoint.py"
CONFIGS = REPO.parent / "shared" / "reference" / "configs"


def test_random_checkpoint_layout_matches_the_reference_listing():
    r = subprocess.run([sys.executable, str(SCRIPT), "--self-check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_full_size_bf16_checkpoint_converts_to_q4_k_and_runs(tmp_path):
    config = CONFIGS / "Qwen3-TTS-12Hz-0.6B-CustomVoice.config.json"
    if not config.is_file():
        pytest.fail(f"{config} is missing: the shared reference configs must sit beside the repository")
    ckpt = tmp_path / "Qwen3-TTS-12Hz-0.6B-CustomVoice"
    r = subprocess.run([sys.executable, str(SCRIPT), "--config", str(config), "-o", str(ckpt)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

    gguf_path = convert(ckpt, tmp_path / "model-q4_k.gguf", "q4_k", progress=False)
    (ckpt / "model.safetensors").unlink()  # the engine must not need the checkpoint any more

    meta = read_gguf_metadata(gguf_path, ["general.name", "general.file_type"])
    assert meta == {"general.name": "Qwen3-TTS-12Hz-0.6B-CustomVoice", "general.file_type": 15}

    tts = Qwen3TTS(gguf_path, threads=2)
    assert tts.model_type == "custom_voice"
    assert set(tts.speakers) == {"serena", "vivian", "uncle_fu", "ryan", "aiden", "ono_anna", "sohee", "eric",
                                 "dylan"}
    assert not tts.has_speaker_encoder
    codes = tts.generate_codes(text="Hello there.", speaker="vivian", language="english", greedy=True,
                               min_frames=3, max_frames=3)
    assert codes.shape == (3, 16)
    assert codes.min() >= 0 and codes.max() < 2048
    # Same request, same greedy codes: the cache and graphs are reused correctly between sessions.
    again = tts.generate_codes(text="Hello there.", speaker="vivian", language="english", greedy=True,
                               min_frames=3, max_frames=3)
    np.testing.assert_array_equal(codes, again)

    # The synthesis CLI at full size: a valid 24 kHz WAV and the timing breakdown.
    wav = tmp_path / "out.wav"
    r = subprocess.run([sys.executable, "-m", "wyoming_qwen3tts.synth", "-m", str(gguf_path), "-t", "Hello there.",
                        "-o", str(wav), "--speaker", "vivian", "--greedy", "--max-frames", "3", "--threads", "2"],
                       capture_output=True, text=True, cwd=tmp_path)  # cwd: run the installed package
    assert r.returncode == 0, r.stderr
    info = soundfile.info(str(wav))
    assert (info.samplerate, info.channels, info.frames) == (24000, 1, 3 * 1920)
    assert "real-time factor:" in r.stderr and "codec:" in r.stderr
    print(r.stderr)

    # The packed paths at full size against ggml's (plain_kernels): the talker's logits over teacher-forced
    # frames and the codec's waveform. Q4_K activations are quantized by both (per 256 values), the codec's BF16
    # matrices round activations to BF16 in both; only summation order and the occasional rounding flip differ.
    from wyoming_qwen3tts._native import _engine

    plain = Qwen3TTS(gguf_path, threads=2)
    plain._model = _engine.Model(str(gguf_path), 2, plain_kernels=True)
    forced = np.random.default_rng(3).integers(0, 2048, (4, 16)).astype(np.int32)
    logits = []
    for model in (tts, plain):
        s = model.open_session(text="Hello there.", speaker="vivian", language="english", greedy=True, record=True,
                               min_frames=4, max_frames=4, forced_codes=forced)
        while s.next_frame() is not None:
            pass
        logits.append(s.record("talker_logits"))
    a, b = logits
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.999, cos  # measured 0.99976 (bench model, same config and seed scheme)
    waves = [model.decode(forced) for model in (tts, plain)]
    # which kernels run depends on the engine's ISA level (QWEN3TTS_ISA, tests/test_isa.py)
    level = Qwen3TTS.isa_level()
    features = Qwen3TTS.system_info().split("features:")[1].split(";")[0].split()
    if level == "generic":
        assert tts.kernels == plain.kernels
    else:  # packed products and fused layers at avx2 and up; the codec's packed BF16 mat-vec needs AVX512-BF16
        assert "talker: fused layers, packed q4_K; code predictor: fused layers, packed q4_K" in tts.kernels
        if level in ("avx512", "amx") and {"AVX512_VNNI", "AVX512_BF16"} <= set(features):
            assert "codec matrices: packed bf16" in tts.kernels
    assert plain.kernels == "talker: ggml graph; code predictor: ggml graph; codec matrices: ggml"
    wave_cos = float(np.dot(waves[0], waves[1]) / np.linalg.norm(waves[0]) / np.linalg.norm(waves[1]))
    assert wave_cos >= 0.9999, wave_cos  # measured 0.999988

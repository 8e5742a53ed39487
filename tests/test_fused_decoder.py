"""The fused decoder layers (native/src/lm/transformer.cpp with packed_matvec.h and fused_attention.h) against ggml's graph of
the same layers: one model loaded twice, once as the engine runs it (packed weights, five custom ops per layer)
and once with ``plain_kernels`` (every weight as stored, ggml's own ops: the path the f32 parity tests check
against the reference). Both tiny models: tiny-06 (head_dim 8) and tiny-17 (head_dim 16, code predictor
narrower than the talker).

BF16: both paths round the same activations to BF16 and sum in float32, so they agree to float rounding and the
greedy codes are identical; at the AVX2 level the packed products even sum in ggml's own order, so most rows agree
to the bit. Q8_0: the activations are quantized by two implementations whose roundings differ
now and then, so the two are compared by their distance to the f32 model instead."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from wyoming_qwen3tts import Qwen3TTS, _engine

TEXT = "Hello there, how are you today?"
FRAMES = 12


def _pair(path) -> tuple[Qwen3TTS, Qwen3TTS]:
    fused = Qwen3TTS(path, threads=2)
    if "fused layers" not in fused.kernels:
        pytest.skip(f"this CPU runs {path.name} on ggml's graph ({fused.kernels}): nothing fused to compare")
    plain = Qwen3TTS(path, threads=2)
    plain._model = _engine.Model(str(path), 2, plain_kernels=True)
    return fused, plain


def _run(tts: Qwen3TTS, **kw) -> dict[str, np.ndarray]:
    session = tts.open_session(text=TEXT, language="english", speaker=tts.speakers[0], min_frames=FRAMES,
                               max_frames=FRAMES, greedy=True, record=True, **kw)
    frames = []
    while (f := session.next_frame()) is not None:
        frames.append(f)
    out = {k: session.record(k) for k in ("talker_logits", "cp_logits")}
    out["codes"] = np.array(frames)
    return out


def _row_rel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row: max |a - b| / max |b|."""
    return np.abs(a - b).max(axis=1) / np.abs(b).max(axis=1)


@pytest.mark.parametrize("name", ["tiny-06", "tiny-17"])
def test_every_stack_runs_fused_on_packed_weights(name, tiny_gguf):
    fused, plain = _pair(tiny_gguf(name, "bf16"))
    assert fused.kernels == "talker: fused layers, packed bf16; code predictor: fused layers, packed bf16"
    assert plain.kernels == "talker: ggml graph; code predictor: ggml graph"
    # f32 weights are never packed
    assert Qwen3TTS(tiny_gguf(name, "f32"), threads=2).kernels == "talker: ggml graph; code predictor: ggml graph"


def test_the_isa_level_decides_fusion(tiny_gguf):
    # AVX2 and above fuse the layers (so this module's comparisons run, not skip); generic keeps ggml's graph
    path = tiny_gguf("tiny-17", "bf16")
    level = Qwen3TTS.isa_level()
    kernels = Qwen3TTS(path, threads=1).kernels
    if level in ("avx2", "avx512", "amx"):
        assert kernels == "talker: fused layers, packed bf16; code predictor: fused layers, packed bf16"
    else:
        assert kernels == "talker: ggml graph; code predictor: ggml graph"
    if level != "generic":  # and QWEN3TTS_ISA=generic brings the graph back
        code = f"from wyoming_qwen3tts import Qwen3TTS; print(Qwen3TTS({str(path)!r}, threads=1).kernels)"
        r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "QWEN3TTS_ISA": "generic"},
                           cwd=path.parent, capture_output=True, text=True, timeout=120)  # not the source tree
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "talker: ggml graph; code predictor: ggml graph"


@pytest.mark.parametrize("name", ["tiny-06", "tiny-17"])
def test_bf16_fused_layers_match_ggml(name, tiny_gguf):
    fused, plain = _pair(tiny_gguf(name, "bf16"))
    a, b = _run(fused), _run(plain)
    np.testing.assert_array_equal(a["codes"], b["codes"])  # greedy: the same frames, so every record lines up
    assert a["talker_logits"].shape == (FRAMES, 3072) and a["cp_logits"].shape == (FRAMES * 15, 2048)
    # talker: measured 7.7e-8 (tiny-06) and 1.1e-7 (tiny-17)
    assert _row_rel(a["talker_logits"], b["talker_logits"]).max() <= 1e-5
    # code predictor: median 7e-8; one row of tiny-06 at 2.0e-3, where a float-rounding difference moved one
    # activation to the neighbouring BF16 value (1/256 apart)
    cp = _row_rel(a["cp_logits"], b["cp_logits"])
    assert np.median(cp) <= 1e-5
    assert cp.max() <= 1e-2
    if Qwen3TTS.isa_level() == "avx2":
        # ggml's summation order in every BF16 product (measured: median 0, talker and code predictor, both
        # models); the remaining differences (attention, SiLU) rarely survive the BF16 rounding of activations
        assert np.median(_row_rel(a["talker_logits"], b["talker_logits"])) == 0
        assert np.median(cp) == 0


@pytest.mark.parametrize("name", ["tiny-06", "tiny-17"])
def test_q8_0_fused_layers_are_as_close_to_f32_as_ggml(name, tiny_gguf):
    fused, plain = _pair(tiny_gguf(name, "q8_0"))
    reference = Qwen3TTS(tiny_gguf(name, "f32"), threads=2)
    # teacher-forced frames: every path sees the same inputs (the code predictor is skipped)
    codes = np.random.default_rng(7).integers(0, 2048, (FRAMES, 16)).astype(np.int32)
    a, b, r = (_run(t, forced_codes=codes)["talker_logits"] for t in (fused, plain, reference))
    err_fused, err_plain = _row_rel(a, r), _row_rel(b, r)
    # measured (max, median): tiny-06 fused 0.021, 0.017 vs ggml 0.021, 0.015; tiny-17 0.036, 0.022 vs 0.040, 0.024
    assert err_fused.max() <= 1.5 * err_plain.max()
    assert np.median(err_fused) <= 1.5 * np.median(err_plain)
    cos = (a * r).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(r, axis=1)
    assert cos.min() >= 0.999

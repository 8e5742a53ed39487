"""The codec decoder's AVX2 path at full size: a tiny talker checkpoint whose speech tokenizer is replaced by a
full-size random one (bench/make_random_checkpoint.py's tensors and values for the released tokenizer config),
converted to f32 (F32 codec: ggml's exact F32 path at every level) and q8_0 (BF16 codec convolutions and
matrices). The q8_0 codec decoded at QWEN3TTS_ISA=avx2 (packed_conv.h: BF16 weights, FP32 inputs and sums) and at
=generic (ggml's BF16 mul_mat, inputs rounded to BF16), each in a child process, against the F32 codec on the same
frames, streamed as the server does (one frame, then pieces of up to 4).

The same q8_0 codec also runs on the AVX512-BF16 conv kernel (inputs rounded to BF16 as well) in the emulated
build (scripts/build-emulated, SIMDe; tests/test_avx512_emulated.py), so its full-size shapes are checked on any
x86 CPU.

Observed (Zen 3), 9 frames: avx2 cosine 0.9999992 to the F32 codec, max abs 6.9e-5; generic 0.9999956, 2.5e-4
(peak 0.035); the emulated AVX512-BF16 kernel 0.9999954, 2.2e-4. The 0.6B bench GGUFs (bench/bench.py's random checkpoint, bf16 vs f32, 27 frames): avx2 0.9999985,
1.2e-4; generic 0.9999897, 3.3e-4 (peak 0.025).

Not in tests/test_isa.py's KERNEL_SUITES: it sets the level of its children itself.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

E = pytest.importorskip("wyoming_qwen3tts._engine")

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_CONFIG = REPO.parent / "shared" / "reference" / "configs" / "Qwen3-TTS-Tokenizer-12Hz.config.json"

AVX2_COS_MIN = 0.999995     # avx2 BF16 codec vs the F32 codec (observed 0.9999985)
AVX2_ABS_MAX = 2e-4         # max abs difference, against a peak of about 0.03 (observed 6.9e-5; 1.2e-4 on 27 frames)

PAIRS_COS_MIN = 0.99999      # the emulated AVX512-BF16 kernel vs the F32 codec (observed 0.9999954)
PAIRS_ABS_MAX = 5e-4         # its max abs difference (observed 2.2e-4; ggml's BF16 path: 2.4e-4)

FRAMES = 9  # random codes, np.random.default_rng(1)
DECODE = r"""
import sys, numpy as np
from wyoming_qwen3tts._native import _engine as E
s = E.CodecStream(E.Model(sys.argv[1], threads=2), threads=2)
codes = np.random.default_rng(1).integers(0, 2048, size=(9, 16), dtype=np.int32)
pcm = np.concatenate([s.decode(p) for p in (codes[:1], codes[1:5], codes[5:])])
np.save(sys.argv[2], pcm)
print(E.isa_level())
"""


def _random_checkpoint_module():
    spec = importlib.util.spec_from_file_location("make_random_checkpoint", REPO / "bench" / "make_random_checkpoint.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def full_codec_ggufs(tiny_checkpoint, tmp_path_factory):
    """(f32, q8_0) GGUFs of tiny-17 with the full-size random speech tokenizer."""
    if not TOKENIZER_CONFIG.is_file():
        pytest.fail(f"{TOKENIZER_CONFIG} is missing: the shared reference configs must sit beside the repository")
    from wyoming_qwen3tts.convert import convert

    mrc = _random_checkpoint_module()
    ckpt = tiny_checkpoint("tiny-17", copy=True)
    st = ckpt / "speech_tokenizer"
    tok_cfg = json.loads(TOKENIZER_CONFIG.read_text())
    mrc.write_safetensors(st / "model.safetensors", mrc.speech_tokenizer_tensors(tok_cfg), "f32",
                          np.random.default_rng(0), True, None)
    (st / "config.json").write_text(json.dumps(tok_cfg))
    out = tmp_path_factory.mktemp("full-codec")
    return tuple(convert(ckpt, out / f"m-{t}.gguf", t, progress=False) for t in ("f32", "q8_0"))


def decode_at(level: str, gguf: Path, out: Path) -> np.ndarray:
    r = subprocess.run([sys.executable, "-c", DECODE, str(gguf), str(out)], cwd=out.parent,
                       env={**os.environ, "QWEN3TTS_ISA": level}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == level
    return np.load(out)


def test_full_size_bf16_codec_at_avx2_vs_f32(full_codec_ggufs, tmp_path):
    if E.isa_level(True) not in ("avx2", "avx512", "amx"):
        pytest.skip("this CPU does not execute the avx2 level")
    f32_gguf, bf16_gguf = full_codec_ggufs
    ref = decode_at("avx2", f32_gguf, tmp_path / "f32.npy")  # F32 codec: ggml's F32 path at any level
    avx2 = decode_at("avx2", bf16_gguf, tmp_path / "avx2.npy")
    generic = decode_at("generic", bf16_gguf, tmp_path / "generic.npy")

    def cos(a):
        return float(a @ ref / (np.linalg.norm(a) * np.linalg.norm(ref)))

    err_avx2, err_generic = float(np.abs(avx2 - ref).max()), float(np.abs(generic - ref).max())
    print(f"avx2 vs F32: cosine {cos(avx2):.7f}, max abs {err_avx2:.3g}; generic vs F32: cosine {cos(generic):.7f}, "
          f"max abs {err_generic:.3g}; peak {float(np.abs(ref).max()):.3g}")
    assert float(np.abs(ref).max()) > 1e-3  # audible output, not silence
    assert cos(avx2) >= AVX2_COS_MIN and err_avx2 <= AVX2_ABS_MAX
    assert cos(avx2) > cos(generic)  # FP32 inputs: closer to the F32 codec than BF16-rounded ones


def test_full_size_bf16_codec_on_emulated_pairs(full_codec_ggufs, emulated_build, tmp_path):
    """The full-size q8_0 codec with every conv on the AVX512-BF16 kernel (emulated: kernel_replay decode, pieces of
    4 frames) against the F32 codec on the same frames: within BF16-input error, as ggml's BF16 path."""
    f32_gguf, bf16_gguf = full_codec_ggufs
    ref = decode_at("generic", f32_gguf, tmp_path / "f32.npy")  # F32 codec: ggml's exact F32 path at any level
    codes = np.random.default_rng(1).integers(0, 2048, size=(FRAMES, 16), dtype=np.int32)
    codes.tofile(tmp_path / "codes.bin")
    r = subprocess.run([str(emulated_build / "kernel_replay"), "decode", str(bf16_gguf), str(tmp_path / "codes.bin"),
                        "4", str(tmp_path / "pairs.bin")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "codec convolutions on the packed kernel, BF16 pairs" in r.stdout, r.stdout
    pairs = np.fromfile(tmp_path / "pairs.bin", dtype=np.float32)
    assert pairs.shape == ref.shape
    cos = float(pairs @ ref / (np.linalg.norm(pairs) * np.linalg.norm(ref)))
    err = float(np.abs(pairs - ref).max())
    print(f"emulated pairs vs F32: cosine {cos:.7f}, max abs {err:.3g}; peak {float(np.abs(ref).max()):.3g}")
    assert float(np.abs(ref).max()) > 1e-3
    assert cos >= PAIRS_COS_MIN and err <= PAIRS_ABS_MAX

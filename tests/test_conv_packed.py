"""The codec decoder's packed convolution kernel (native/src/kernels/packed_conv.h; here its AVX2 implementation,
conv_avx2.cpp) and the decoder on it. tests/test_arm64.py runs the NEON one (conv_neon.cpp) on the same cases.

At the avx2 and avx512 levels without AMX, a codec whose convolutions are BF16 (every GGUF type but f32) runs every
causal conv and transposed conv of its decoder on this kernel: BF16 weights widened to FP32 in registers, FP32
inputs (ggml's BF16 path and the AMX tiles round them to BF16) and FP32 sums, with the bias, the residual sum and
the SnakeBeta that follow a conv fused into its epilogue. F32 codecs keep ggml's exact F32 path
(test_parity_codec.py, unchanged tolerances).

* The kernel against a float64 numpy convolution of the same BF16-rounded weights, over shapes the codec does not
  have (odd T and channel counts, partial output blocks, dilation, stride, one tap, every epilogue part, 1-3
  threads) and the codec's transposed-conv layout (a k = 1 conv to (tap, channel) outputs, overlap-added).
* Its BF16-pair form (conv_avx512.cpp, AVX512-BF16: inputs rounded to BF16 as well) on the same shapes against the
  same convolution of BF16-rounded inputs, and the tiny BF16 codec on it at the avx512 level; where the CPU has no
  AVX512-BF16 these skip, the form is refused, and tests/test_avx512_emulated.py runs the same cases on SIMDe.
* Below the avx2 level the kernel refuses to run (tests/test_isa.py re-runs this module at QWEN3TTS_ISA=generic).
* The tiny BF16 codec (tiny-17 q8_0) decoded at QWEN3TTS_ISA=avx2 and =generic (children): both close to the
  reference's F32 decoder, the AVX2 one closer (its inputs are not rounded), and to each other within a stated
  bound.
* The codec encoder of that GGUF at avx2 (SEANet convs on the kernel with F32 weights, the 8-lane ELU) and at
  generic (ggml's F32 path): the same codes, features equal to F32 rounding.

Observed (Zen 3, avx2 level): kernel vs numpy relative error 2.3e-7 .. 7.2e-7; fused epilogue 1.2e-7; the tiny BF16
codec vs the reference's F32 decoder: avx2 cosine 0.9999967, max abs 7.3e-5 (generic, ggml's BF16 path: 0.9999832,
2.7e-4; avx2 vs generic max abs 2.4e-4, peak 0.02); encoder features avx2 vs generic relative L2 2.7e-7. Full size (random-weight 0.6B BF16 GGUF, 27 random frames
streamed 1 + 4 x 6): avx2 vs generic waveform cosine 0.99999, max abs 2.4e-4 against a peak of 0.025.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import (CONV_REL_TOL as KERNEL_REL_TOL, CONV_SHAPES, EPILOGUE_PARTS, PAIRS_GGML_ABS, PAIRS_REF_ABS,
                     PAIRS_REF_COS, SNAKE_ABS_TOL, bf16, conv_epilogue_case, conv_shape_case, cpu_flags, reference_conv,
                     reference_epilogue)

E = pytest.importorskip("wyoming_qwen3tts._engine")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

REPO = Path(__file__).resolve().parents[1]
ORACLE = REPO / "tests" / "fixtures" / "speech-tokenizer" / "oracle.safetensors"

KERNEL_RUNS = E.isa_level() in ("avx2", "avx512", "amx")  # the level in use (the codec: not where AMX takes it)
AVX2_EXECUTABLE = E.isa_level(True) in ("avx2", "avx512", "amx")
# the BF16-pair form (conv_avx512.cpp) at the level in use; tests/test_avx512_emulated.py runs it on any x86 CPU
PAIRS_RUN = E.isa_level() in ("avx512", "amx") and "avx512_bf16" in cpu_flags()
PAIRS_EXECUTABLE = E.isa_level(True) in ("avx512", "amx") and "avx512_bf16" in cpu_flags()


def kernel_or_skip(*args, **kw):
    if not KERNEL_RUNS:
        pytest.skip(f"level {E.isa_level()} is below avx2")
    return E.conv_packed(*args, **kw)


@pytest.mark.parametrize("cin,cout,k,dil,stride,T,threads", CONV_SHAPES)
def test_kernel_matches_numpy(cin, cout, k, dil, stride, T, threads):
    w, x = conv_shape_case(cin, cout, k, dil, stride, T)
    got = kernel_or_skip(w, x, T, dil=dil, stride=stride, threads=threads)
    ref = reference_conv(w, x, T, dil, stride)
    assert got.shape == (T, cout)
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    print(f"relative error {err:.3g}")
    assert err <= KERNEL_REL_TOL, f"relative error {err:.3g}"


@pytest.mark.parametrize("parts", EPILOGUE_PARTS)
def test_fused_epilogue(parts):
    c = conv_epilogue_case(parts)
    got = kernel_or_skip(c["w"], c["x"], c["T"], dil=c["dil"], bias=c["bias"], snake=c["snake"],
                         residual=c["residual"], threads=2)
    # the plain conv's float32 sums, then the epilogue in float64 after the same float32 adds
    v = reference_epilogue(E.conv_packed(c["w"], c["x"], c["T"], dil=c["dil"], threads=1), c["bias"], c["residual"],
                           c["snake"])
    err = float(np.abs(got - v).max() / max(1.0, float(np.abs(v).max())))
    print(f"{parts}: error {err:.3g}")
    assert err <= SNAKE_ABS_TOL, f"max abs error {err:.3g}"


def test_transposed_conv_layout():
    """A causal transposed conv (k = 2s, right trim k - s), as the codec runs it: the kernel's k = 1 conv to
    k * cout outputs ordered (tap, channel), each frame's taps overlap-added with the previous frame's."""
    rng = np.random.default_rng(5)
    cin, cout, s, T = 40, 24, 5, 9
    k = 2 * s
    wt = rng.standard_normal((cin, cout, k)).astype(np.float32)  # PyTorch ConvTranspose1d [in, out, k]
    x = rng.standard_normal((T, cin)).astype(np.float32)
    w1 = np.ascontiguousarray(wt.transpose(2, 1, 0).reshape(k * cout, 1, cin))  # output r = (tap r // cout, channel)
    cols = kernel_or_skip(w1, x, T, threads=2).reshape(T, k, cout)
    got = np.zeros((T * s, cout))
    for t in range(T):
        got[t * s:(t + 1) * s] += cols[t, :s]
        if t + 1 < T:
            got[(t + 1) * s:(t + 2) * s] += cols[t, s:]
    full = np.zeros(((T - 1) * s + k, cout))  # the textbook transposed conv, then the causal trim
    wq = bf16(wt)
    for t in range(T):
        for j in range(k):
            full[t * s + j] += x[t].astype(np.float64) @ wq[:, :, j]
    ref = full[:T * s]
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert err <= KERNEL_REL_TOL, f"relative error {err:.3g}"


@pytest.mark.parametrize("cin,cout,k,dil,stride,T,threads", CONV_SHAPES)
def test_pairs_kernel_matches_numpy(cin, cout, k, dil, stride, T, threads):
    """The BF16-pair form: weights and inputs rounded to BF16, FP32 sums of vdpbf16ps."""
    if not PAIRS_RUN:
        pytest.skip(f"level {E.isa_level()} on this CPU has no AVX512-BF16 (tests/test_avx512_emulated.py runs it)")
    w, x = conv_shape_case(cin, cout, k, dil, stride, T)
    got = E.conv_packed(w, x, T, dil=dil, stride=stride, threads=threads, weights="bf16_pairs")
    ref = reference_conv(w, x, T, dil, stride, weights="bf16_pairs")
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    print(f"relative error {err:.3g}")
    assert err <= KERNEL_REL_TOL, f"relative error {err:.3g}"


@pytest.mark.parametrize("parts", EPILOGUE_PARTS)
def test_pairs_fused_epilogue(parts):
    if not PAIRS_RUN:
        pytest.skip(f"level {E.isa_level()} on this CPU has no AVX512-BF16 (tests/test_avx512_emulated.py runs it)")
    c = conv_epilogue_case(parts)
    conv = dict(dil=c["dil"], threads=2, weights="bf16_pairs")
    got = E.conv_packed(c["w"], c["x"], c["T"], **conv, bias=c["bias"], snake=c["snake"], residual=c["residual"])
    v = reference_epilogue(E.conv_packed(c["w"], c["x"], c["T"], **conv), c["bias"], c["residual"], c["snake"])
    err = float(np.abs(got - v).max() / max(1.0, float(np.abs(v).max())))
    assert err <= SNAKE_ABS_TOL, f"max abs error {err:.3g}"


def test_pairs_refused_without_avx512_bf16():
    if PAIRS_RUN:
        pytest.skip(f"level {E.isa_level()} runs the BF16-pair kernel")
    w = np.ones((16, 1, 8), np.float32)
    with pytest.raises(E.EngineError, match="no (packed|BF16-pair) conv kernel"):
        E.conv_packed(w, np.ones((4, 8), np.float32), 4, weights="bf16_pairs")


def test_refused_below_avx2():
    if KERNEL_RUNS:
        pytest.skip(f"level {E.isa_level()} runs the kernel")
    w = np.ones((16, 1, 8), np.float32)
    with pytest.raises(E.EngineError, match="below avx2"):
        E.conv_packed(w, np.ones((4, 8), np.float32), 4)


# ------------------------------------------------------------------------------------------- the codec on it

AVX2_REF_COS = 0.99999     # tiny BF16 codec at avx2 vs the reference's F32 decoder (observed 0.9999965)
AVX2_REF_ABS = 2e-4        # and its max abs error against a peak of 0.02 (observed 7.2e-5)
LEVELS_ABS = 5e-4          # avx2 vs generic (ggml's BF16 mul_mat, activations rounded to BF16) (observed 2.3e-4)
DECODE = r"""
import sys, numpy as np
from safetensors.numpy import load_file
from wyoming_qwen3tts._native import _engine as E
codes = load_file(sys.argv[2])["dec.codes"].astype(np.int32)
m = E.Model(sys.argv[1], threads=2)
np.save(sys.argv[3], E.CodecStream(m, max_batch=len(codes)).decode(codes))
print(E.isa_level())
"""


def decode_at(level: str, gguf: Path, out: Path) -> np.ndarray:
    r = subprocess.run([sys.executable, "-c", DECODE, str(gguf), str(ORACLE), str(out)], cwd=out.parent,
                       env={**os.environ, "QWEN3TTS_ISA": level}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == level
    return np.load(out)


def cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def oracle_decodes(tiny_gguf, tmp_path, level: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The codec oracle's waveform, and the tiny BF16 codec's (tiny-17 q8_0) decode of its codes at `level` and at
    generic (ggml's BF16 path)."""
    if not ORACLE.is_file():
        pytest.skip(f"{ORACLE} is not available")
    gguf = tiny_gguf("tiny-17", "q8_0")
    ref = safetensors_numpy.load_file(str(ORACLE))["dec.wav_forward"]
    return ref, decode_at(level, gguf, tmp_path / f"{level}.npy"), decode_at("generic", gguf, tmp_path / "generic.npy")


def test_bf16_codec_at_avx2_vs_generic(tiny_gguf, tmp_path):
    if not AVX2_EXECUTABLE:
        pytest.skip("this CPU does not execute the avx2 level")
    ref, avx2, generic = oracle_decodes(tiny_gguf, tmp_path, "avx2")
    err_avx2, err_generic = float(np.abs(avx2 - ref).max()), float(np.abs(generic - ref).max())
    print(f"avx2: cos {cosine(avx2, ref):.7f} max abs {err_avx2:.3g}; generic: cos {cosine(generic, ref):.7f} "
          f"max abs {err_generic:.3g}; avx2 vs generic max abs {float(np.abs(avx2 - generic).max()):.3g}")
    assert cosine(avx2, ref) >= AVX2_REF_COS and err_avx2 <= AVX2_REF_ABS
    assert 0 < err_avx2 < err_generic  # BF16 weights only, not the F32 path; closer than BF16 activations
    assert float(np.abs(avx2 - generic).max()) <= LEVELS_ABS


def test_bf16_codec_on_pairs_at_avx512(tiny_gguf, tmp_path):
    """At the avx512 level with AVX512-BF16 (Zen 4, and Intel CPUs with AMX at QWEN3TTS_ISA=avx512), the codec's
    convs run on the BF16-pair kernel: the reference's waveform within BF16-activation error, and ggml's BF16 path's
    (the generic level: the same operand rounding) within its summation order."""
    if not PAIRS_EXECUTABLE:
        pytest.skip("this CPU has no AVX512-BF16 (tests/test_avx512_emulated.py runs the kernel emulated)")
    ref, pairs, generic = oracle_decodes(tiny_gguf, tmp_path, "avx512")
    err, to_ggml = float(np.abs(pairs - ref).max()), float(np.abs(pairs - generic).max())
    print(f"avx512 pairs: cos {cosine(pairs, ref):.7f} max abs {err:.3g}; vs generic {to_ggml:.3g}")
    assert cosine(pairs, ref) >= PAIRS_REF_COS and err <= PAIRS_REF_ABS
    assert 0 < to_ggml <= PAIRS_GGML_ABS


ENCODE = r"""
import sys, numpy as np
from wyoming_qwen3tts._native import _engine as E
t = np.arange(24000 * 3) / 24000
wav = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(3).standard_normal(t.size)).astype(np.float32)
m = E.Model(sys.argv[1], threads=2)
feats, _ = E.codec_encode_debug(m, wav, "downsampled", 0)
mel = np.load(sys.argv[3])
np.savez(sys.argv[2], feats=feats, codes=E.codec_encode(m, wav), xvector=E.speaker_embedding(m, mel))
print(E.isa_level())
"""
ENCODER_REL_TOL = 1e-5  # downsampled features, avx2 vs generic, relative L2 (F32 arithmetic both; observed 2.7e-7)
XVECTOR_REL_TOL = 1e-5  # the x-vector, avx2 vs generic, relative L2 (F32 arithmetic both)


def test_encoders_at_avx2_keep_f32_arithmetic(tiny_gguf, tmp_path):
    """Without AMX, the encoders of a GGUF that is not f32 run their convs on the AVX2 kernel with F32 weights (the
    codec encoder's SEANet, the speaker encoder's TDNNs before the pooling): the same arithmetic as ggml's F32 path
    in another summation order, so the same codes and an x-vector within rounding."""
    if not AVX2_EXECUTABLE:
        pytest.skip("this CPU does not execute the avx2 level")
    gguf = tiny_gguf("tiny-17", "q8_0")
    mel = np.random.default_rng(4).standard_normal((300, 128)).astype(np.float32) - 4
    np.save(tmp_path / "mel.npy", mel)
    got = {}
    for level in ("avx2", "generic"):
        r = subprocess.run([sys.executable, "-c", ENCODE, str(gguf), str(tmp_path / f"{level}.npz"),
                            str(tmp_path / "mel.npy")], cwd=tmp_path,
                           env={**os.environ, "QWEN3TTS_ISA": level}, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[-1] == level
        got[level] = np.load(tmp_path / f"{level}.npz")
    a, b = got["avx2"]["feats"].astype(np.float64), got["generic"]["feats"].astype(np.float64)
    rel = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    print(f"features avx2 vs generic: relative L2 {rel:.3g}")
    assert 0 < rel <= ENCODER_REL_TOL  # > 0: the kernel ran, not ggml's path
    np.testing.assert_array_equal(got["avx2"]["codes"], got["generic"]["codes"])
    a, b = got["avx2"]["xvector"].astype(np.float64), got["generic"]["xvector"].astype(np.float64)
    rel = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    print(f"x-vector avx2 vs generic: relative L2 {rel:.3g}")
    assert 0 < rel <= XVECTOR_REL_TOL

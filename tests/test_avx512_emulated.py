"""The engine's AVX-512 kernels on a CPU that may not execute AVX-512: the AVX512-BF16 conv kernel
(native/src/kernels/conv_avx512.cpp: BF16 weights and inputs, vdpbf16ps, FP32 sums), the AVX512-VNNI / AVX512-BF16
packed mat-vecs and fused-layer epilogues (packed_matvec_avx512.cpp) and the fused attention's 16-lane steps
(fused_attention_avx512.cpp). scripts/build-emulated builds the replay programs of native/tests for
this machine with those kernels' intrinsics taken from SIMDe (kernels/x86_simd.h), which implements each in portable
C. The kernels' own source runs; what SIMDe cannot stand in for is the instruction encoding and speed, which only a
CPU with AVX-512 checks (tests/test_conv_packed.py, tests/test_vnni_matmul.py and tests/test_fused_decoder.py run
the same kernels natively there).

* The kernel against a float64 numpy convolution of the same BF16-rounded weights and inputs, on
  tests/test_conv_packed.py's shapes (odd channel counts: a zero half in the last channel pair; partial output
  blocks; dilation; stride; one tap; 1-3 threads) and every epilogue part.
* The tiny BF16 codec (tiny-17 q8_0) decoded with every conv on it, streamed in pieces: close to the reference's
  F32 decoder, as close as ggml's BF16 path (the host at the generic level, the same operand rounding), and the
  same waveform whatever the split into calls.
* The cloning encoders of that GGUF in BF16 pairs, within the bounds of their AMX tiles against F32 arithmetic.
* The mat-vecs (Q4_K, Q8_0, BF16) against tests/test_vnni_matmul.py's references, and greedy runs whose talker and
  code predictor run fused layers on them and on the AVX-512 attention (q8_0, bf16 GGUFs): the host's codes.

Observed (Zen 3, emulated): kernel vs numpy relative error <= 5.4e-7; fused epilogue 1.2e-7; the codec: cosine
0.99998 to the F32 reference, max abs 2.5e-4 (ggml's BF16 path: 2.7e-4).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from safetensors.numpy import load_file

from helpers import (ALL_BOOKS_MIN, CONV_REL_TOL, CONV_SHAPES, EPILOGUE_PARTS, FEAT_REL_MAX, FIRST_BOOK_MIN, FIXTURES,
                     PAIRS_GGML_ABS, PAIRS_REF_ABS, PAIRS_REF_COS, SNAKE_ABS_TOL, XVEC_COS_MIN, bf16,
                     conv_epilogue_case, conv_replay_args, conv_shape_case, quantized_activations, reference_conv,
                     reference_epilogue, request_file, session_arguments)

REPO = Path(__file__).resolve().parents[1]
ORACLE = REPO / "tests" / "fixtures" / "speech-tokenizer" / "oracle.safetensors"
QT_CONV_BF16_PAIRS = 2  # qwen3tts_debug.h's qt_conv_weights

@pytest.fixture(scope="module")
def build(emulated_build) -> Path:
    return emulated_build


def emulated_conv(build: Path, tmp: Path, w, x, T, **conv) -> np.ndarray:
    """kernel_replay's conv mode in the BF16-pair form: [T, cout] for the arguments of E.conv_packed."""
    args = conv_replay_args(tmp, w, x, T, form=QT_CONV_BF16_PAIRS, **conv)
    r = subprocess.run([str(build / "kernel_replay"), *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return np.fromfile(tmp / "out.bin", dtype=np.float32).reshape(T, w.shape[0])


@pytest.mark.parametrize("cin,cout,k,dil,stride,T,threads", CONV_SHAPES)
def test_emulated_pairs_conv_matches_numpy(build, tmp_path, cin, cout, k, dil, stride, T, threads):
    w, x = conv_shape_case(cin, cout, k, dil, stride, T)
    got = emulated_conv(build, tmp_path, w, x, T, dil=dil, stride=stride, threads=threads)
    ref = reference_conv(w, x, T, dil, stride, weights="bf16_pairs")
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    unrounded = float(np.abs(got - reference_conv(w, x, T, dil, stride)).max() / np.abs(ref).max())
    print(f"relative error {err:.3g} (to FP32 inputs: {unrounded:.3g})")
    assert err <= CONV_REL_TOL, f"relative error {err:.3g}"
    assert unrounded > 10 * CONV_REL_TOL  # the inputs were rounded to BF16: this is the pair form's arithmetic


@pytest.mark.parametrize("parts", EPILOGUE_PARTS)
def test_emulated_pairs_conv_fused_epilogue(build, tmp_path, parts):
    c = conv_epilogue_case(parts)
    conv = dict(dil=c["dil"], threads=2)
    got = emulated_conv(build, tmp_path, c["w"], c["x"], c["T"], **conv, bias=c["bias"], snake=c["snake"],
                        residual=c["residual"])
    plain = emulated_conv(build, tmp_path, c["w"], c["x"], c["T"], **conv)
    v = reference_epilogue(plain, c["bias"], c["residual"], c["snake"])
    err = float(np.abs(got - v).max() / max(1.0, float(np.abs(v).max())))
    print(f"{parts}: error {err:.3g}")
    assert err <= SNAKE_ABS_TOL, f"{parts}: max abs error {err:.3g}"


# ------------------------------------------------------------------------------------------- the codec on it

STREAM_TOL = 1e-6        # one call vs calls of 4 frames (tests/test_parity_codec.py's bound)
GENERIC_DECODE = r"""
import sys, numpy as np
from wyoming_qwen3tts._native import _engine as E
codes = np.load(sys.argv[2])
m = E.Model(sys.argv[1], threads=2)
np.save(sys.argv[3], E.CodecStream(m, max_batch=len(codes)).decode(codes))
print(E.isa_level())
"""


def emulated_decode(build: Path, gguf: Path, codes: np.ndarray, piece: int, out: Path) -> np.ndarray:
    np.ascontiguousarray(codes, dtype=np.int32).tofile(out.with_suffix(".codes"))
    r = subprocess.run([str(build / "kernel_replay"), "decode", str(gguf), str(out.with_suffix(".codes")), str(piece),
                        str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "codec convolutions on the packed kernel, BF16 pairs" in r.stdout, r.stdout
    return np.fromfile(out, dtype=np.float32)


def test_emulated_pairs_codec_decode(build, tiny_gguf, tmp_path):
    """A BF16 codec (tiny-17 q8_0) with every conv of its decoder on the BF16-pair kernel: the reference's waveform
    within BF16-activation error, ggml's BF16 path's within its summation order, and the same samples whatever
    the split into calls (the carried conv tails read in place)."""
    if not ORACLE.is_file():
        pytest.skip(f"{ORACLE} is not available")
    oracle = load_file(str(ORACLE))
    codes, ref = oracle["dec.codes"].astype(np.int32), oracle["dec.wav_forward"].astype(np.float64)
    gguf = tiny_gguf("tiny-17", "q8_0")
    whole = emulated_decode(build, gguf, codes, len(codes), tmp_path / "whole.bin")
    pieces = emulated_decode(build, gguf, codes, 4, tmp_path / "pieces.bin")
    np.save(tmp_path / "codes.npy", codes)
    r = subprocess.run([sys.executable, "-c", GENERIC_DECODE, str(gguf), str(tmp_path / "codes.npy"),
                        str(tmp_path / "generic.npy")], cwd=tmp_path,
                       env={**os.environ, "QWEN3TTS_ISA": "generic"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    generic = np.load(tmp_path / "generic.npy").astype(np.float64)
    assert whole.shape == ref.shape == generic.shape
    cos = float(np.dot(whole, ref) / (np.linalg.norm(whole) * np.linalg.norm(ref)))
    err, to_ggml = float(np.abs(whole - ref).max()), float(np.abs(whole - generic).max())
    split = float(np.abs(whole - pieces).max())
    print(f"pairs vs F32 reference: cosine {cos:.7f}, max abs {err:.3g} (ggml's BF16 path: "
          f"{float(np.abs(generic - ref).max()):.3g}); vs ggml's BF16 path {to_ggml:.3g}; one call vs pieces {split:.3g}")
    assert cos >= PAIRS_REF_COS and err <= PAIRS_REF_ABS
    assert 0 < to_ggml <= PAIRS_GGML_ABS  # > 0: the kernel ran, not ggml's path
    assert split <= STREAM_TOL


# ------------------------------------------------------------------------------------------- the encoders on it

def replay_out(build: Path, tmp: Path, *args: str) -> np.ndarray:
    r = subprocess.run([str(build / "kernel_replay"), *args, str(tmp / "out.bin")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return np.fromfile(tmp / "out.bin", dtype=np.float32)


def test_emulated_pairs_encoders(build, tiny_gguf, tmp_path):
    """A GGUF that is not f32 (tiny-17 q8_0) with AVX512-BF16: the codec encoder's SEANet and the speaker encoder's
    TDNNs run in BF16 pairs on the packed conv kernel, held to the bounds of the encoders' AMX tiles
    (tests/test_encoders_bf16.py) against the host's F32 arithmetic on the same GGUF."""
    from wyoming_qwen3tts import _engine as E
    if E.isa_level() not in ("avx2", "avx512", "amx"):
        pytest.skip(f"the host's level {E.isa_level()} is not the packed kernel's F32 path")
    gguf = tiny_gguf("tiny-17", "q8_0")
    host = E.Model(str(gguf), threads=2)
    t = np.arange(3 * 24000) / 24000
    rng = np.random.default_rng(9)
    wav = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    wav.tofile(tmp_path / "wav.bin")
    feats_host, _ = E.codec_encode_debug(host, wav, "downsampled", 0)
    feats = replay_out(build, tmp_path, "encode", str(gguf), str(tmp_path / "wav.bin"), "3").reshape(feats_host.shape)
    codes_host = E.codec_encode(host, wav)
    codes = replay_out(build, tmp_path, "encode", str(gguf), str(tmp_path / "wav.bin"), "0").reshape(codes_host.shape)
    rel = float(np.linalg.norm(feats - feats_host) / np.linalg.norm(feats_host))
    first, every = float(np.mean(codes[:, 0] == codes_host[:, 0])), float(np.mean(codes == codes_host))
    mel = (rng.standard_normal((300, 128)) - 4).astype(np.float32)
    mel.tofile(tmp_path / "mel.bin")
    xvec_host = E.speaker_embedding(host, mel).astype(np.float64)
    xvec = replay_out(build, tmp_path, "xvector", str(gguf), str(tmp_path / "mel.bin")).astype(np.float64)
    cos = float(xvec @ xvec_host / (np.linalg.norm(xvec) * np.linalg.norm(xvec_host)))
    print(f"pairs vs F32: features relative L2 {rel:.3g}; codes: first book {first:.3f}, all {every:.4f}; "
          f"x-vector cosine {cos:.7f}")
    assert 0 < rel <= FEAT_REL_MAX  # > 0: the BF16 operands, not the F32 path
    assert first >= FIRST_BOOK_MIN and every >= ALL_BOOKS_MIN
    assert XVEC_COS_MIN <= cos < 1


# ------------------------------------------------------------------------------- the AVX-512 packed mat-vecs

Q8_0, Q4_K, BF16 = 8, 12, 30  # ggml_type numbers
MATVEC_REL_TOL = 1e-6  # tests/test_vnni_matmul.py's: max abs error / max |result|
AVX512_KERNELS = "packed mat-vec kernels: q4_K avx512 q8_0 avx512 bf16 avx512"


@pytest.mark.parametrize("qtype", [Q4_K, Q8_0, BF16])
@pytest.mark.parametrize("K,N,ncols,threads", [(256, 16, 1, 1), (768, 48, 6, 2)])
def test_emulated_avx512_matvec_matches_dequantized_weights(build, tmp_path, qtype, K, N, ncols, threads):
    """The AVX512-VNNI (Q4_K, Q8_0) and AVX512-BF16 (BF16) mat-vecs against the dequantized weights times the
    activations as the kernels quantize them (tests/test_vnni_matmul.py's references)."""
    gguf = pytest.importorskip("gguf")
    from wyoming_qwen3tts import _engine as E
    rng = np.random.default_rng(K + N + ncols + qtype)
    w = rng.standard_normal((N, K)).astype(np.float32) * rng.uniform(0.1, 3, size=(N, 1)).astype(np.float32)
    q = E.quantize(w, qtype)
    gtype = {Q8_0: gguf.GGMLQuantizationType.Q8_0, Q4_K: gguf.GGMLQuantizationType.Q4_K,
             BF16: gguf.GGMLQuantizationType.BF16}[qtype]
    wd = gguf.quants.dequantize(q, gtype).reshape(N, K).astype(np.float64)
    x = rng.standard_normal((ncols, K)).astype(np.float32)
    x[0, :256] *= 40
    q.tofile(tmp_path / "rows.bin")
    x.tofile(tmp_path / "x.bin")
    r = subprocess.run([str(build / "kernel_replay"), "matvec", str(qtype), str(K), str(N), str(ncols), str(threads),
                        str(tmp_path / "rows.bin"), str(tmp_path / "x.bin"), str(tmp_path / "out.bin")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert AVX512_KERNELS in r.stdout, r.stdout
    got = np.fromfile(tmp_path / "out.bin", dtype=np.float32).reshape(ncols, N)
    xq = bf16(x) if qtype == BF16 else quantized_activations(x, 256 if qtype == Q4_K else 32)
    ref = xq @ wd.T
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    print(f"relative error {err:.3g}")
    assert err <= MATVEC_REL_TOL, f"relative error {err:.3g}"


@pytest.mark.parametrize("qtype", ["q8_0", "bf16"])  # (the tiny models' widths keep Q4_K out of q4_k GGUFs)
@pytest.mark.parametrize("name", ["tiny-17", "tiny-06"])
def test_emulated_avx512_fused_layers_match_host(build, tiny_gguf, tmp_path, monkeypatch, name, qtype):
    """A greedy run whose talker and code predictor run fused layers on the AVX-512 mat-vecs and attention gives the
    host's codes: the AVX-512 and AVX2 kernels compute the same integer sums and the same quantized activations
    (tests/test_vnni_matmul.py), the same exp polynomial, the float sums in another order."""
    from wyoming_qwen3tts import Qwen3TTS
    from wyoming_qwen3tts import _engine as E
    if E.isa_level() not in ("avx2", "avx512", "amx"):
        pytest.skip(f"the host's level {E.isa_level()} runs no fused layers to compare with")
    oracle = load_file(str(FIXTURES / name / "oracle.safetensors"))
    model = tiny_gguf(name, qtype)
    tts = Qwen3TTS(model, threads=2)
    request = dict(text_ids=oracle["ids.input"][0].tolist()[3:-5], greedy=True, max_frames=12, speaker="vivian",
                   language="english")
    host = tts.generate_codes(**request)
    request_file(tmp_path / "request.txt", session_arguments(tts, monkeypatch, **request))
    r = subprocess.run([str(build / "engine_replay"), str(model), str(tmp_path / "request.txt"),
                        str(tmp_path / "codes.bin"), str(tmp_path / "pcm.bin")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert AVX512_KERNELS in r.stdout, r.stdout
    assert f"talker: fused layers, packed {qtype}" in r.stdout, r.stdout
    codes = np.fromfile(tmp_path / "codes.bin", dtype=np.int32).reshape(-1, 16)
    assert len(codes) > 0
    np.testing.assert_array_equal(codes, host)

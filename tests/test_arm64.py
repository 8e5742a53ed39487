"""The engine on ARM64: cross-compiled with Debian's aarch64 toolchain (scripts/build-aarch64: ggml from the pinned
sdist, the engine's C++ sources, native/tests/engine_replay.cpp and kernel_replay.cpp, all for the ARMv8.0-A
baseline) and run under qemu-aarch64.

The packed mat-vec kernels (kernels/packed_matvec_neon.cpp) run through kernel_replay on the inputs and against the
reference of tests/test_vnni_matmul.py, once as a core with the dotprod extension (qemu's `max`: SDOT) and once as
a Cortex-A72 (Raspberry Pi 4: no dotprod, the SMULL emulation), both within the x86 kernels' tolerance.

The packed conv kernel (kernels/conv_neon.cpp) runs through kernel_replay on tests/test_conv_packed.py's cases (odd
shapes, partial output blocks, stride and dilation, BF16 and F32 weights; every epilogue combination of bias,
residual and SnakeBeta) against the same float64 reference and tolerances, and its output must equal the host's
AVX2 kernel's on the same inputs bit for bit (bound 0: the same FMA order per output, the same polynomials).
A tiny bf16 GGUF's codec (every conv on that kernel) decodes the ARM64 build's codes to the host's waveform
(BF16_PCM_TOL), and its encoders match the host's. The host runs those at QWEN3TTS_ISA=avx2 in a child process:
above it, with AVX512-BF16, the host's codec and encoders take the kernel's BF16-pair form instead, which rounds
the inputs to BF16 (tests/test_conv_packed.py, tests/test_avx512_emulated.py).

On the tiny parity checkpoints The host resolves each request with wyoming_qwen3tts exactly as Qwen3TTS does (the Session arguments
are captured), the ARM64 build generates greedily and decodes; its codes must equal the official reference's
oracle codes, and its waveform the host engine's decode of the same codes (F32 codec, only the summation order of
the SIMD kernels differs: max abs diff <= 1e-5 on samples of peak ~0.5).

Needs aarch64-linux-gnu-g++ and qemu-aarch64 (.ci/run installs g++-aarch64-linux-gnu and qemu-user); without
them the module is skipped. The first build takes a few minutes (ggml), later ones reuse build/aarch64/."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from wyoming_qwen3tts import Qwen3TTS
from helpers import (CONV_REL_TOL, CONV_SHAPES, EPILOGUE_PARTS, FIXTURES, SNAKE_ABS_TOL, conv_epilogue_case,
                     conv_replay_args, conv_shape_case, quantized_activations, reference_conv, reference_epilogue,
                     request_file, session_arguments)

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "aarch64"
PCM_TOL = 1e-5
MODES = {  # the oracle's modes that need no cloning inputs (engine_replay takes ids and scalars only)
    "custom_voice": dict(speaker="vivian", language="english"),
    "custom_voice_streaming_text": dict(speaker="vivian", language="english", non_streaming_text=False),
    "voice_design_streaming_text": dict(language="auto", non_streaming_text=False),
}

pytestmark = pytest.mark.skipif(
    not (shutil.which("aarch64-linux-gnu-g++") and shutil.which("qemu-aarch64")),
    reason="no aarch64 cross toolchain / qemu-aarch64 (Debian: g++-aarch64-linux-gnu qemu-user)")


@pytest.fixture(scope="module")
def build() -> Path:
    r = subprocess.run(["bash", str(REPO / "scripts" / "build-aarch64"), str(BUILD)], capture_output=True, text=True,
                       timeout=1500)
    assert r.returncode == 0, f"cross build failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return BUILD


@pytest.fixture(scope="module")
def replay(build) -> Path:
    return build / "engine_replay"


Q8_0, Q4_K = 8, 12
MATVEC_REL_TOL = 1e-6  # tests/test_vnni_matmul.py's: max abs error / max |result|
QEMU_CPUS = {"dotprod": ("max", "neon-dotprod"), "no-dotprod": ("cortex-a72", "neon")}


@pytest.mark.parametrize("cpu", list(QEMU_CPUS))
@pytest.mark.parametrize("qtype", [Q4_K, Q8_0])
@pytest.mark.parametrize("K,N,ncols,threads", [(256, 16, 1, 1), (768, 48, 6, 2)])
def test_arm64_packed_matvec_matches_dequantized_weights(build, tmp_path, cpu, qtype, K, N, ncols, threads):
    gguf = pytest.importorskip("gguf")
    from wyoming_qwen3tts import _engine as E
    rng = np.random.default_rng(K + N + ncols + qtype)
    w = rng.standard_normal((N, K)).astype(np.float32) * rng.uniform(0.1, 3, size=(N, 1)).astype(np.float32)
    q = E.quantize(w, qtype)
    gtype = {Q8_0: gguf.GGMLQuantizationType.Q8_0, Q4_K: gguf.GGMLQuantizationType.Q4_K}[qtype]
    wd = gguf.quants.dequantize(q, gtype).reshape(N, K).astype(np.float64)
    x = rng.standard_normal((ncols, K)).astype(np.float32)
    x[0, :256] *= 40
    q.tofile(tmp_path / "rows.bin")
    x.tofile(tmp_path / "x.bin")
    qemu_cpu, kernel = QEMU_CPUS[cpu]
    r = subprocess.run(["qemu-aarch64", "-cpu", qemu_cpu, str(build / "kernel_replay"), "matvec", str(qtype), str(K),
                        str(N), str(ncols), str(threads), str(tmp_path / "rows.bin"), str(tmp_path / "x.bin"),
                        str(tmp_path / "out.bin")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"q4_K {kernel} q8_0 {kernel}" in r.stdout, r.stdout
    got = np.fromfile(tmp_path / "out.bin", dtype=np.float32).reshape(ncols, N)
    ref = quantized_activations(x, 256 if qtype == Q4_K else 32) @ wd.T
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert err <= MATVEC_REL_TOL, f"relative error {err:.3g}"


def arm_conv(build: Path, tmp: Path, w, x, T, weights="bf16", **conv) -> np.ndarray:
    """kernel_replay's conv mode under qemu: the NEON kernel's [T, cout] for the arguments of E.conv_packed."""
    args = conv_replay_args(tmp, w, x, T, form={"bf16": 0, "f32": 1}[weights], **conv)  # qt_conv_weights
    r = subprocess.run(["qemu-aarch64", str(build / "kernel_replay"), *args], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "engine ISA: neon" in r.stdout, r.stdout
    return np.fromfile(tmp / "out.bin", dtype=np.float32).reshape(T, w.shape[0])


def host_conv_or_skip(*args, **kw) -> np.ndarray:
    from wyoming_qwen3tts import _engine as E
    if E.isa_level() not in ("avx2", "avx512", "amx"):
        pytest.skip(f"the host's level {E.isa_level()} has no packed conv kernel to compare with")
    return E.conv_packed(*args, **kw)


@pytest.mark.parametrize("weights", ["bf16", "f32"])
@pytest.mark.parametrize("cin,cout,k,dil,stride,T,threads", CONV_SHAPES)
def test_arm64_packed_conv_matches_numpy_and_x86(build, tmp_path, cin, cout, k, dil, stride, T, threads, weights):
    w, x = conv_shape_case(cin, cout, k, dil, stride, T)
    got = arm_conv(build, tmp_path, w, x, T, dil=dil, stride=stride, threads=threads, weights=weights)
    ref = reference_conv(w, x, T, dil, stride, weights=weights)
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert err <= CONV_REL_TOL, f"relative error {err:.3g}"
    host = host_conv_or_skip(w, x, T, dil=dil, stride=stride, threads=threads, weights=weights)
    np.testing.assert_array_equal(got, host)  # bit for bit


@pytest.mark.parametrize("parts", EPILOGUE_PARTS)
def test_arm64_packed_conv_fused_epilogue(build, tmp_path, parts):
    c = conv_epilogue_case(parts)
    conv = dict(dil=c["dil"], threads=2)
    epilogue = dict(bias=c["bias"], snake=c["snake"], residual=c["residual"])
    got = arm_conv(build, tmp_path, c["w"], c["x"], c["T"], **conv, **epilogue)
    plain = arm_conv(build, tmp_path, c["w"], c["x"], c["T"], **conv)
    v = reference_epilogue(plain, c["bias"], c["residual"], c["snake"])
    err = float(np.abs(got - v).max() / max(1.0, float(np.abs(v).max())))
    assert err <= SNAKE_ABS_TOL, f"{parts}: max abs error {err:.3g}"
    np.testing.assert_array_equal(got, host_conv_or_skip(c["w"], c["x"], c["T"], **conv, **epilogue))


@pytest.mark.parametrize("name", ["tiny-17", "tiny-06"])
@pytest.mark.parametrize("mode", list(MODES))
def test_arm64_greedy_run_matches_oracle(replay, tiny_gguf, tmp_path, monkeypatch, name, mode):
    oracle = load_file(str(FIXTURES / name / "oracle.safetensors"))
    want = oracle[f"{mode}.codes"]
    kw = dict(MODES[mode])
    if mode.startswith("voice_design"):
        kw["instruct_ids"] = oracle["ids.instruct"][0].tolist()
    model = tiny_gguf(name, "f32")
    tts = Qwen3TTS(model, threads=2)
    request = dict(text_ids=oracle["ids.input"][0].tolist()[3:-5], greedy=True, max_frames=len(want), **kw)
    request_file(tmp_path / "request.txt", session_arguments(tts, monkeypatch, **request))

    r = subprocess.run(["qemu-aarch64", str(replay), str(model), str(tmp_path / "request.txt"),
                        str(tmp_path / "codes.bin"), str(tmp_path / "pcm.bin")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "engine ISA: neon" in r.stdout, r.stdout
    codes = np.fromfile(tmp_path / "codes.bin", dtype=np.int32).reshape(-1, 16)
    np.testing.assert_array_equal(codes, want)

    pcm = np.fromfile(tmp_path / "pcm.bin", dtype=np.float32)
    host = tts.decode(codes)
    assert pcm.shape == host.shape
    diff = float(np.abs(pcm - host).max())
    assert diff <= PCM_TOL, f"ARM64 waveform vs host: max abs diff {diff:.3g} > {PCM_TOL}"


@pytest.mark.parametrize("cpu", list(QEMU_CPUS))
@pytest.mark.parametrize("name", ["tiny-17", "tiny-06"])
def test_arm64_fused_layers_match_host(replay, tiny_gguf, tmp_path, monkeypatch, name, cpu):
    """A q8_0 GGUF: on ARM64 the talker and code predictor run fused decoder layers (the NEON packed mat-vecs and
    the NEON fused attention), on the host the AVX2 / AVX-512 ones. Both compute the same products and attention
    (sums in another order), so a greedy run gives the host's codes."""
    from wyoming_qwen3tts import _engine as E
    if E.isa_level() not in ("avx2", "avx512", "amx"):
        pytest.skip(f"the host's level {E.isa_level()} runs no fused layers to compare with")
    oracle = load_file(str(FIXTURES / name / "oracle.safetensors"))
    model = tiny_gguf(name, "q8_0")
    tts = Qwen3TTS(model, threads=2)
    assert tts.kernels.count("fused layers") == 2, tts.kernels
    request = dict(text_ids=oracle["ids.input"][0].tolist()[3:-5], greedy=True, max_frames=12,
                   **MODES["custom_voice"])
    host = tts.generate_codes(**request)
    request_file(tmp_path / "request.txt", session_arguments(tts, monkeypatch, **request))
    qemu_cpu, _ = QEMU_CPUS[cpu]
    r = subprocess.run(["qemu-aarch64", "-cpu", qemu_cpu, str(replay), str(model), str(tmp_path / "request.txt"),
                        str(tmp_path / "codes.bin"), str(tmp_path / "pcm.bin")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kernels: talker: fused layers, packed q8_0; code predictor: fused layers, packed q8_0" in r.stdout, r.stdout
    codes = np.fromfile(tmp_path / "codes.bin", dtype=np.int32).reshape(-1, 16)
    assert len(codes) > 0
    np.testing.assert_array_equal(codes, host)


BF16_PCM_TOL = 1e-6  # ARM64 vs host decode of the same codes, BF16 codec on the packed conv kernel at both:
# observed 1.5e-8 on a peak of 0.02 (ggml's other ops sum in another order); ggml's BF16 path (activations rounded
# to BF16, what ARM64 ran before) differs from the kernel by ~2.4e-4 (tests/test_conv_packed.py, x86 generic level)


HOST_AT_AVX2 = r"""
import sys, numpy as np
from wyoming_qwen3tts._native import _engine as E
mode, gguf, inp, out = sys.argv[1:5]
m, x = E.Model(gguf, threads=2), np.load(inp)
if mode == "decode":
    y = E.CodecStream(m, max_batch=len(x)).decode(x)
elif mode == "seanet":
    y = E.codec_encode_debug(m, x, "seanet")[0]
else:
    y = E.speaker_embedding(m, x)
np.save(out, y)
print(E.isa_level())
"""


def host_at_avx2(mode: str, gguf: Path, x: np.ndarray, tmp: Path) -> np.ndarray:
    """The host engine's decode / SEANet output / x-vector of x at the avx2 level (the packed conv kernel with FP32
    inputs, as on ARM64), in a child process."""
    from wyoming_qwen3tts import _engine as E
    if E.isa_level(True) not in ("avx2", "avx512", "amx"):
        pytest.skip(f"the host's best level {E.isa_level(True)} has no packed conv kernel to compare with")
    np.save(tmp / "host-in.npy", x)
    r = subprocess.run([sys.executable, "-c", HOST_AT_AVX2, mode, str(gguf), str(tmp / "host-in.npy"),
                        str(tmp / "host-out.npy")], env={**os.environ, "QWEN3TTS_ISA": "avx2"}, cwd=tmp,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == "avx2"
    return np.load(tmp / "host-out.npy")


def test_arm64_bf16_codec_on_packed_conv_matches_host(replay, tiny_gguf, tmp_path, monkeypatch):
    """A bf16 GGUF: its codec decoder runs on the packed conv kernel on both machines (NEON here, AVX2 on the host),
    so the ARM64 decode of the generated codes must match the host's decode of the same codes closely."""
    oracle = load_file(str(FIXTURES / "tiny-17" / "oracle.safetensors"))
    model = tiny_gguf("tiny-17", "bf16")
    tts = Qwen3TTS(model, threads=2)
    request = dict(text_ids=oracle["ids.input"][0].tolist()[3:-5], greedy=True, max_frames=12,
                   **MODES["custom_voice"])
    request_file(tmp_path / "request.txt", session_arguments(tts, monkeypatch, **request))
    r = subprocess.run(["qemu-aarch64", str(replay), str(model), str(tmp_path / "request.txt"),
                        str(tmp_path / "codes.bin"), str(tmp_path / "pcm.bin")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    codes = np.fromfile(tmp_path / "codes.bin", dtype=np.int32).reshape(-1, 16)
    pcm = np.fromfile(tmp_path / "pcm.bin", dtype=np.float32)
    host = host_at_avx2("decode", model, codes, tmp_path)
    assert len(codes) > 0 and pcm.shape == host.shape
    diff = float(np.abs(pcm - host).max())
    print(f"bf16 codec, ARM64 vs host: max abs diff {diff:.3g}, peak {float(np.abs(host).max()):.3g}")
    assert diff <= BF16_PCM_TOL, f"ARM64 waveform vs host: max abs diff {diff:.3g} > {BF16_PCM_TOL}"


def test_arm64_codec_encoder_on_packed_conv_matches_host(build, tiny_gguf, tmp_path):
    """The codec encoder of a bf16 GGUF runs its SEANet on the packed conv kernel with F32 weights and the kernel's
    ELU (kernels/neon_math.h's elu4 on ARM64, avx2_math.h's elu8 here): its SEANet output on ARM64 equals the
    host's bit for bit, as the kernel tests above show for the convolutions (the ELU's exp takes the same steps in
    the same order). ggml's F32 path, which ARM64 took before, sums in another order."""
    model = tiny_gguf("tiny-17", "bf16")
    t = np.arange(24000, dtype=np.float32) / 24000
    wav = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(7).standard_normal(t.size)).astype(np.float32)
    wav.tofile(tmp_path / "wav.bin")
    r = subprocess.run(["qemu-aarch64", str(build / "kernel_replay"), "encode", str(model), str(tmp_path / "wav.bin"),
                        "1", str(tmp_path / "out.bin")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    host = host_at_avx2("seanet", model, wav, tmp_path)
    arm = np.fromfile(tmp_path / "out.bin", dtype=np.float32).reshape(host.shape)
    np.testing.assert_array_equal(arm, host)


XVECTOR_REL_TOL = 1e-5  # ARM64 vs host x-vector, relative L2: the convs equal bit for bit, the pooling's ggml ops
# (means, softmax, the F32 products) sum in other orders


def test_arm64_speaker_encoder_on_packed_conv_matches_host(build, tiny_gguf, tmp_path):
    """The speaker encoder of a bf16 GGUF runs its TDNNs on the packed conv kernel with F32 weights on both machines
    (NEON here, AVX2 on the host): the ARM64 x-vector matches the host's within rounding."""
    model = tiny_gguf("tiny-17", "bf16")
    mel = np.random.default_rng(8).standard_normal((200, 128)).astype(np.float32) - 4
    mel.tofile(tmp_path / "mel.bin")
    r = subprocess.run(["qemu-aarch64", str(build / "kernel_replay"), "xvector", str(model), str(tmp_path / "mel.bin"),
                        str(tmp_path / "out.bin")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    host = host_at_avx2("xvector", model, mel, tmp_path).astype(np.float64)
    arm = np.fromfile(tmp_path / "out.bin", dtype=np.float32).astype(np.float64)
    assert arm.shape == host.shape
    rel = float(np.linalg.norm(arm - host) / np.linalg.norm(host))
    print(f"x-vector ARM64 vs host: relative L2 {rel:.3g}")
    assert rel <= XVECTOR_REL_TOL

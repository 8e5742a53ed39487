"""The packed mat-vec kernels (native/src/kernels/packed_matvec.cpp, packed_matvec_avx2.cpp) of the ISA level in use against numpy: Q4_K and Q8_0 weights from ggml's own
quantizer, dequantized by gguf-py, times the activations quantized the way the kernels do (int8 per 256 values for
Q4_K, per 32 for Q8_0; scale max|x| / 127, round to nearest); BF16 weights times the activations rounded to BF16
(as ggml's BF16 mat-vec does). Integer sums are exact, so only the float summation order differs.

The full-size talker and code predictor run on these kernels at the AVX2 level and above (AVX-512 where the CPU has
AVX512-VNNI / AVX512-BF16, as CI's does); tests/test_isa.py runs this module again at every lower level the CPU
executes (at generic there is no kernel and the products are skipped). The benchmark's logits cosine (bench/) shows
the end-to-end effect. The tiny test models have no Q4_K weights (their
rows are shorter than a Q4_K block) and Q8_0 ones with fewer than 16 rows in places, hence this direct test."""
from __future__ import annotations

import re

import numpy as np
import pytest

from helpers import quantized_activations

gguf = pytest.importorskip("gguf")
E = pytest.importorskip("wyoming_qwen3tts._engine")

Q8_0, Q4_K, BF16 = 8, 12, 30
BLOCK = {Q8_0: 32, Q4_K: 256}
GGUF_TYPE = {Q8_0: gguf.GGMLQuantizationType.Q8_0, Q4_K: gguf.GGMLQuantizationType.Q4_K,
             BF16: gguf.GGMLQuantizationType.BF16}
REL_TOL = 1e-6  # max abs error / max |result| (measured 5e-8)


def _kernels() -> dict[str, str]:
    """The packed kernel per weight type at the level in use, as system_info() reports it."""
    line = re.search(r"packed mat-vec kernels: ([^;]*)", E.system_info()).group(1).split()
    return dict(zip(line[::2], line[1::2]))


def _kernel_or_skip(q, qtype, K, x, threads):
    try:
        return E.vnni_matmul(q, qtype, K, x, threads=threads)
    except E.EngineError as e:
        if "kernel at ISA level" in str(e):
            pytest.skip(f"{e}: the engine keeps ggml's kernels")
        raise


def _bf16(x: np.ndarray) -> np.ndarray:
    """x rounded to BF16 (to nearest even), as float64."""
    return gguf.quants.dequantize(gguf.quants.quantize(x, GGUF_TYPE[BF16]), GGUF_TYPE[BF16]).astype(np.float64)


@pytest.mark.parametrize("qtype", [Q4_K, Q8_0])
@pytest.mark.parametrize("K,N,ncols,threads", [(256, 16, 1, 1), (768, 48, 6, 2), (1024, 32, 3, 2), (512, 64, 4, 1)])
def test_matches_dequantized_weights(qtype, K, N, ncols, threads):
    rng = np.random.default_rng(K + N + ncols + qtype)
    w = rng.standard_normal((N, K)).astype(np.float32) * rng.uniform(0.1, 3, size=(N, 1)).astype(np.float32)
    q = E.quantize(w, qtype)
    wd = gguf.quants.dequantize(q, GGUF_TYPE[qtype]).reshape(N, K).astype(np.float64)
    x = rng.standard_normal((ncols, K)).astype(np.float32)
    x[0, :256] *= 40  # blocks of very different magnitudes: one activation scale per block
    got = _kernel_or_skip(q, qtype, K, x, threads)
    ref = quantized_activations(x, BLOCK[qtype]) @ wd.T
    assert got.shape == (ncols, N)
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert err <= REL_TOL, f"relative error {err:.3g}"


@pytest.mark.parametrize("K,N,ncols,threads", [(64, 16, 1, 1), (1028, 48, 6, 2), (2048, 32, 5, 2)])
def test_bf16_matches_bf16_rounded_activations(K, N, ncols, threads):
    rng = np.random.default_rng(K + N + ncols)
    w = rng.standard_normal((N, K)).astype(np.float32)
    q = E.quantize(w, BF16)
    x = rng.standard_normal((ncols, K)).astype(np.float32) * 3
    got = _kernel_or_skip(q, BF16, K, x, threads)
    ref = _bf16(x) @ _bf16(w).T
    assert got.shape == (ncols, N)
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert err <= REL_TOL, f"relative error {err:.3g}"
    # and the rounding is the point: unrounded activations are measurably farther off
    assert float(np.abs(got - x.astype(np.float64) @ _bf16(w).T).max() / np.abs(ref).max()) > 10 * REL_TOL


@pytest.mark.parametrize("qtype", [Q4_K, Q8_0])
def test_zero_activations_give_zero(qtype):
    q = E.quantize(np.ones((16, 256), dtype=np.float32), qtype)
    got = _kernel_or_skip(q, qtype, 256, np.zeros((2, 256), dtype=np.float32), 1)
    assert np.array_equal(got, np.zeros((2, 16), dtype=np.float32))


def test_bad_shapes_are_errors():
    q = E.quantize(np.ones((8, 256), dtype=np.float32), Q4_K)  # 8 rows: not a multiple of 16
    with pytest.raises((E.EngineError, ValueError)):
        E.vnni_matmul(q, Q4_K, 256, np.ones((1, 256), dtype=np.float32))
    with pytest.raises(ValueError):
        E.vnni_matmul(q, Q4_K, 512, np.ones((1, 256), dtype=np.float32))
    with pytest.raises((E.EngineError, ValueError)):
        E.vnni_matmul(E.quantize(np.ones((16, 256), dtype=np.float32), 1), 1, 256, np.ones((1, 256), dtype=np.float32))


def test_each_level_has_its_kernels():
    level, kernels = E.isa_level(), _kernels()
    assert set(kernels) == {"q4_K", "q8_0", "bf16"}
    q = E.quantize(np.ones((16, 256), dtype=np.float32), Q8_0)
    if level == "generic":  # ggml's graph only: no kernel runs, none is offered
        assert set(kernels.values()) == {"none"}
        with pytest.raises(E.EngineError, match="no packed q8_0 kernel at ISA level generic"):
            E.vnni_matmul(q, Q8_0, 256, np.ones((1, 256), dtype=np.float32))
    elif level == "avx2":
        assert kernels["q4_K"] == kernels["q8_0"] and kernels["q8_0"] in ("avx2", "avx2-vnni")
        assert kernels["bf16"] == "avx2"
    elif level in ("avx512", "amx"):  # AVX2 kernels where the CPU lacks the type's AVX-512 extension
        assert all(k in ("avx512", "avx2", "avx2-vnni") for k in kernels.values())
    else:
        assert set(kernels.values()) == {"none"}


def _q8_0_rows(codes: np.ndarray, d: float) -> np.ndarray:
    """Raw Q8_0 rows: per 32 codes an FP16 scale d, then the codes (any int8, -128 included)."""
    N, K = codes.shape
    blocks = np.empty((N, K // 32, 34), dtype=np.uint8)
    blocks[:, :, :2] = np.frombuffer(np.float16(d).tobytes(), dtype=np.uint8)
    blocks[:, :, 2:] = codes.astype(np.int8).reshape(N, K // 32, 32).view(np.uint8)
    return blocks.reshape(N, -1)


@pytest.mark.parametrize("code", [127, -127, -128])
def test_q8_0_extreme_codes_do_not_saturate(code):
    # |code| * 127 twice per vpmaddubsw pair: 32512 with the sign trick, above int16 with shifted activations
    rng = np.random.default_rng(5)
    K, N = 512, 32
    codes = np.full((N, K), code, dtype=np.int8)
    codes[N // 2:] = np.where(rng.random((N // 2, K)) < 0.5, code, -127)
    q = _q8_0_rows(codes, 0.01)
    wd = gguf.quants.dequantize(q, GGUF_TYPE[Q8_0]).reshape(N, K).astype(np.float64)
    x = np.where(rng.random((3, K)) < 0.5, 1.0, -1.0).astype(np.float32)  # every activation code is +-127
    x[1] = np.sign(code)  # all products of one sign
    got = _kernel_or_skip(q, Q8_0, K, x, 2)
    ref = quantized_activations(x, 32) @ wd.T
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert err <= REL_TOL, f"relative error {err:.3g}"


def test_q4_k_largest_codes_and_scales_do_not_saturate():
    # every code 15, every 6-bit scale and min 63 (all bits set): a sub-block's 16 products per int16 lane reach
    # 16 * 15 * 127 = 30480 with activations of one sign
    K, N = 512, 16
    block = np.full(144, 0xFF, dtype=np.uint8)
    block[:4] = np.frombuffer(np.array([0.002, 0.001], dtype=np.float16).tobytes(), dtype=np.uint8)
    q = np.tile(block, (N, K // 256))
    wd = gguf.quants.dequantize(q, GGUF_TYPE[Q4_K]).reshape(N, K).astype(np.float64)
    x = np.ones((3, K), dtype=np.float32)
    x[1] = -1
    x[2, ::2] = -1
    got = _kernel_or_skip(q, Q4_K, K, x, 1)
    ref = quantized_activations(x, 256) @ wd.T
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert err <= REL_TOL, f"relative error {err:.3g}"


def _ggml_avx2_bf16_order(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """float32 sums of w [N, K] times x [ncols, K] (both BF16 values) in the order of ggml's AVX2 build: one column
    as ggml_vec_dot_bf16 (four 8-lane sums over k mod 32, (c0 + c2) + (c1 + c3), the lanes pairwise, the rest of K
    in double), several (K % 8 == 0) as llamafile's GEMM (8 lanes over k mod 8, then the lanes pairwise)."""
    def lanes(v):  # [..., 8] -> ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))
        q = v[..., :4] + v[..., 4:]
        return (q[..., 0] + q[..., 2]) + (q[..., 1] + q[..., 3])

    N, K = w.shape
    ncols = x.shape[0]
    prod = w[None, :, :] * x[:, None, :]  # exact: BF16 x BF16 fits float32
    if ncols >= 2 and K % 8 == 0:
        acc = np.zeros((ncols, N, 8), dtype=np.float32)
        for k in range(0, K, 8):
            acc += prod[:, :, k:k + 8]
        return lanes(acc)
    acc = np.zeros((ncols, N, 4, 8), dtype=np.float32)
    k32 = K // 32 * 32
    for k in range(0, k32, 32):
        acc += prod[:, :, k:k + 32].reshape(ncols, N, 4, 8)
    head = lanes((acc[:, :, 0] + acc[:, :, 2]) + (acc[:, :, 1] + acc[:, :, 3])).astype(np.float64)
    for k in range(k32, K):
        head += prod[:, :, k].astype(np.float64)
    return head.astype(np.float32)


@pytest.mark.parametrize("K,ncols", [(1024, 1), (1028, 1), (1000, 1), (3072, 3), (1024, 6), (1028, 2)])
def test_bf16_avx2_sums_in_ggml_order(K, ncols):
    if _kernels()["bf16"] != "avx2":
        pytest.skip(f"BF16 runs on the {_kernels()['bf16']} kernel at this level")
    rng = np.random.default_rng(K + ncols)
    N = 32
    w = rng.standard_normal((N, K)).astype(np.float32)
    x = rng.standard_normal((ncols, K)).astype(np.float32) * 3
    got = E.vnni_matmul(E.quantize(w, BF16), BF16, K, x, threads=2)
    # bit for bit: the fused BF16 layers then round the same activations to BF16 as ggml's graph
    np.testing.assert_array_equal(got, _ggml_avx2_bf16_order(_bf16(w).astype(np.float32), _bf16(x).astype(np.float32)))

"""The packed mat-vec kernels (native/ggml/vnni_matmul.cpp) against numpy: Q4_K and Q8_0 weights from ggml's own
quantizer, dequantized by gguf-py, times the activations quantized the way the kernels do (int8 per 256 values for
Q4_K, per 32 for Q8_0; scale max|x| / 127, round to nearest); BF16 weights times the activations rounded to BF16
(as ggml's BF16 mat-vec does). Integer sums are exact, so only the float summation order differs.

The full-size talker and code predictor run on these kernels wherever the CPU has AVX512-VNNI (CI's does); the
benchmark's logits cosine (bench/) shows the end-to-end effect. The tiny test models have no Q4_K weights (their
rows are shorter than a Q4_K block) and Q8_0 ones with fewer than 16 rows in places, hence this direct test."""
from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
E = pytest.importorskip("wyoming_qwen3tts._engine")

Q8_0, Q4_K, BF16 = 8, 12, 30
BLOCK = {Q8_0: 32, Q4_K: 256}
GGUF_TYPE = {Q8_0: gguf.GGMLQuantizationType.Q8_0, Q4_K: gguf.GGMLQuantizationType.Q4_K,
             BF16: gguf.GGMLQuantizationType.BF16}
REL_TOL = 1e-6  # max abs error / max |result| (measured 5e-8)


def _kernel_or_skip(q, qtype, K, x, threads):
    try:
        return E.vnni_matmul(q, qtype, K, x, threads=threads)
    except E.EngineError as e:
        if "AVX512-VNNI" in str(e) or "AVX512-BF16" in str(e):
            pytest.skip(f"{e}: the engine keeps ggml's kernels")
        raise


def _bf16(x: np.ndarray) -> np.ndarray:
    """x rounded to BF16 (to nearest even), as float64."""
    return gguf.quants.dequantize(gguf.quants.quantize(x, GGUF_TYPE[BF16]), GGUF_TYPE[BF16]).astype(np.float64)


def _quantized_activations(x: np.ndarray, block: int) -> np.ndarray:
    blocks = x.reshape(x.shape[0], -1, block)
    amax = np.abs(blocks).max(-1, keepdims=True)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    return (np.rint(blocks * inv) * (amax / 127).astype(np.float64)).reshape(x.shape)


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
    ref = _quantized_activations(x, BLOCK[qtype]) @ wd.T
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

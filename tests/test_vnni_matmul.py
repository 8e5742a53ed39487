"""The AVX512-VNNI Q4_K kernel (native/ggml/q4k_vnni.cpp) against numpy: Q4_K weights from ggml's own quantizer,
dequantized by gguf-py, times the activations quantized the way the kernel does (int8 per 256 values, scale
max|x| / 127, round to nearest). Integer sums are exact, so only the float summation order differs.

The full-size talker and code predictor run on this kernel wherever the CPU has AVX512-VNNI; the benchmark's
logits cosine (bench/) shows its end-to-end effect. The tiny test models have no Q4_K weights (their rows are
shorter than a Q4_K block), hence this direct test."""
from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
E = pytest.importorskip("wyoming_qwen3tts._engine")

Q4_K = 12
REL_TOL = 1e-6  # max abs error / max |result| (measured 5e-8)


def _kernel_or_skip(q, K, x, threads):
    try:
        return E.q4k_vnni_matmul(q, K, x, threads=threads)
    except E.EngineError as e:
        if "AVX512-VNNI" in str(e):
            pytest.skip("this CPU has no AVX512-VNNI: the engine keeps ggml's Q4_K kernels")
        raise


def _quantized_activations(x: np.ndarray) -> np.ndarray:
    blocks = x.reshape(x.shape[0], -1, 256)
    amax = np.abs(blocks).max(-1, keepdims=True)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    return (np.rint(blocks * inv) * (amax / 127).astype(np.float64)).reshape(x.shape)


@pytest.mark.parametrize("K,N,ncols,threads", [(256, 16, 1, 1), (768, 48, 6, 2), (1024, 32, 3, 2), (512, 64, 4, 1)])
def test_matches_dequantized_weights(K, N, ncols, threads):
    rng = np.random.default_rng(K + N + ncols)
    w = rng.standard_normal((N, K)).astype(np.float32) * rng.uniform(0.1, 3, size=(N, 1)).astype(np.float32)
    q = E.quantize(w, Q4_K)
    wd = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q4_K).reshape(N, K).astype(np.float64)
    x = rng.standard_normal((ncols, K)).astype(np.float32)
    x[0, :256] *= 40  # blocks of very different magnitudes: one activation scale per 256 values
    got = _kernel_or_skip(q, K, x, threads)
    ref = _quantized_activations(x) @ wd.T
    assert got.shape == (ncols, N)
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert err <= REL_TOL, f"relative error {err:.3g}"


def test_zero_activations_give_zero():
    q = E.quantize(np.ones((16, 256), dtype=np.float32), Q4_K)
    got = _kernel_or_skip(q, 256, np.zeros((2, 256), dtype=np.float32), 1)
    assert np.array_equal(got, np.zeros((2, 16), dtype=np.float32))


def test_bad_shapes_are_errors():
    q = E.quantize(np.ones((8, 256), dtype=np.float32), Q4_K)  # 8 rows: not a multiple of 16
    with pytest.raises((E.EngineError, ValueError)):
        E.q4k_vnni_matmul(q, 256, np.ones((1, 256), dtype=np.float32))
    with pytest.raises(ValueError):
        E.q4k_vnni_matmul(q, 512, np.ones((1, 256), dtype=np.float32))

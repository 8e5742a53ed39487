// q4k_vnni.h: Q4_K matrix x vector products with AVX512-VNNI, as a ggml custom op.
//
// Every talker and code-predictor step is a chain of mat-vecs over Q4_K weights (1.6 G weights per 80 ms
// frame for 0.6B). ggml's best x86 kernel for them (the AVX2 "repack" gemv) spends most of its time unpacking
// nibbles and scales, about 8 weights per cycle here. This layout keeps Q4_K's numbers exactly (4-bit codes,
// 6-bit sub-block scales and mins, FP16 super-block scales widened to FP32) but stores them so that one
// vpdpbusd multiplies 16 rows x 4 codes with 4 int8 activations: 16 rows of a 32-weight sub-block are 256 bytes
// of codes (two codes per byte, 4 per lane and nibble) plus their scales and mins.
//
// Activations are quantized per 256 values to int8 with one FP32 scale (as ggml's Q8_K for its Q4_K kernels).
// Results differ from ggml's Q4_K mul_mat only in summation order (integer sums are exact).
#pragma once

#include <cstddef>
#include <cstdint>

#include "ggml.h"

namespace qt {

// True when this CPU has AVX512F, AVX512BW and AVX512-VNNI.
bool q4k_vnni_available();

// A weight of K values per row and N rows (ggml ne [K, N]) that this kernel takes: Q4_K, N % 16 == 0.
bool q4k_vnni_fits(const ggml_tensor *w);

// Bytes of the packed form of a Q4_K weight [K, N] (a 64-byte header, then the row groups).
size_t q4k_vnni_size(int64_t K, int64_t N);

// Packs Q4_K rows (ggml's block layout, N rows of K/256 blocks) into dst (q4k_vnni_size bytes, 64-byte aligned).
void q4k_vnni_pack(const void *q4k, int64_t K, int64_t N, void *dst);

// w (a tensor holding a packed weight: type I8, made by the model loader) times x (F32 [K, n]) -> F32 [N, n];
// any other w goes to ggml_mul_mat.
ggml_tensor *matmul(ggml_context *ctx, ggml_tensor *w, ggml_tensor *x);

}  // namespace qt

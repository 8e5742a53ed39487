// vnni_matmul.h: Q4_K and Q8_0 matrix x vector products with AVX512-VNNI, as a ggml custom op.
//
// Every talker and code-predictor step is a chain of mat-vecs over quantized weights (1.6 G weights per 80 ms
// frame for 0.6B). ggml's x86 kernels for them spend most of their time unpacking codes and scales (about 8
// weights per cycle here for Q4_K). These layouts keep the GGUF's numbers exactly (Q4_K: 4-bit codes, 6-bit
// sub-block scales and mins, FP16 block scales; Q8_0: 8-bit codes, FP16 block scales) but store them so that
// one vpdpbusd multiplies 16 rows x 4 codes with 4 int8 activations; the products then run at about the speed
// the memory bus delivers the weights.
//
// Activations are quantized to int8 with round to nearest: per 256 values for Q4_K (as ggml's Q8_K), per 32 for
// Q8_0 (as ggml's Q8_0). Integer sums are exact; results differ from ggml's kernels only in summation order.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ggml.h"

namespace qt {

// True when this CPU has AVX512F, AVX512BW and AVX512-VNNI.
bool vnni_available();

// A weight of K values per row and N rows (ggml ne [K, N]) that these kernels take: Q4_K or Q8_0, N % 16 == 0.
bool vnni_fits(const ggml_tensor *w);

// Bytes of the packed form of a weight [K, N] of `type` (a 64-byte header, then groups of 16 rows).
size_t vnni_packed_size(ggml_type type, int64_t K, int64_t N);

// Packs the GGUF rows (ggml's block layout, N rows of K values) into dst (vnni_packed_size bytes).
void vnni_pack(ggml_type type, const void *rows, int64_t K, int64_t N, void *dst);

// w (a tensor holding a packed weight: type I8, made by the model loader) times x (F32 [K, n]) -> F32 [N, n];
// any other w goes to ggml_mul_mat.
ggml_tensor *matmul(ggml_context *ctx, ggml_tensor *w, ggml_tensor *x);

}  // namespace qt

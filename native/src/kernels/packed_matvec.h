// packed_matvec.h: Q4_K, Q8_0 and BF16 matrix x vector products as ggml custom ops, alone or fused with what
// surrounds them in a decoder layer (RMSNorm before, residual add or SwiGLU after). Kernels for two ISA levels
// (cpu_isa.h) read one packed layout: AVX-512 (AVX512-VNNI for Q4_K / Q8_0, AVX512-BF16 for BF16) and AVX2 + FMA
// (vpmaddubsw / vpmaddwd, or AVX-VNNI's 256-bit vpdpbusd where the CPU has it; BF16 widened to FP32 for FMA).
//
// Every talker and code-predictor step is a chain of mat-vecs over quantized weights (1.6 G weights per 80 ms
// frame for 0.6B). ggml's x86 kernels for them spend most of their time unpacking codes and scales (about 8
// weights per cycle here for Q4_K). These layouts keep the GGUF's numbers exactly (Q4_K: 4-bit codes, 6-bit
// sub-block scales and mins, FP16 block scales; Q8_0: 8-bit codes, FP16 block scales) but store them so that
// one vpdpbusd multiplies 16 rows x 4 codes with 4 int8 activations (an AVX2 register: 8 rows x 4 codes); the
// products then run at about the speed the memory bus delivers the weights.
//
// Activations are quantized to int8 with round to nearest: per 256 values for Q4_K (as ggml's Q8_K), per 32 for
// Q8_0 (as ggml's Q8_0). Integer sums are exact (the AVX2 kernels keep vpmaddubsw's int16 pair sums below
// saturation); results differ from ggml's kernels only in summation order.
// BF16 weights take the activations rounded to BF16 (as ggml's BF16 mat-vec does), products summed in FP32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "ggml.h"

namespace qt {

// True when the ISA level in use (cpu_isa.h) is avx512 or above and the CPU has AVX512-VNNI (the Q4_K and Q8_0
// kernels)...
bool vnni_available();
// ... and AVX512-BF16 as well (the BF16 kernel).
bool bf16_dot_available();

// A weight of K values per row and N rows (ggml ne [K, N]) that the AVX-512 kernels take: Q4_K, Q8_0 or (where
// the CPU has AVX512-BF16) BF16, N % 16 == 0.
bool vnni_fits(const ggml_tensor *w);

// The kernel the packed products of one weight type run on at the ISA level in use: AVX-512 where the CPU has
// the type's AVX-512 extension (VNNI, BF16), else AVX2 (with AVX-VNNI for Q4_K / Q8_0 where there is); on ARM64
// NEON for Q4_K / Q8_0 (SDOT where the CPU has dotprod); none at the generic level (or for other types).
enum class MatvecKernel { none, avx2, avx2_vnni, avx512, neon, neon_dotprod };
MatvecKernel matvec_kernel(ggml_type type);
// "none", "avx2", "avx2-vnni", "avx512", "neon", "neon-dotprod"
const char *matvec_kernel_name(MatvecKernel k);

// A weight some kernel of the level in use takes (the shapes of vnni_fits): the model loader packs these.
bool packed_fits(const ggml_tensor *w);

// Bytes of the packed form of a weight [K, N] of `type` (a 64-byte header, then groups of 16 rows).
size_t vnni_packed_size(ggml_type type, int64_t K, int64_t N);

// Packs the GGUF rows (ggml's block layout, N rows of K values) into dst (vnni_packed_size bytes).
void vnni_pack(ggml_type type, const void *rows, int64_t K, int64_t N, void *dst);

// True for a tensor holding a packed weight (type I8, made by the model loader).
bool is_packed(const ggml_tensor *w);
// The ggml type name of the weights a packed tensor was made from ("Q4_K", "Q8_0", "BF16").
const char *packed_type_name(const ggml_tensor *w);

// w (packed) times x (F32 [K, n]) -> F32 [N, n]; any other w goes to ggml_mul_mat.
ggml_tensor *matmul(ggml_context *ctx, ggml_tensor *w, ggml_tensor *x);

// The fused forms, packed weights only. eps points into the model's hyper-parameters (read at compute time).
// res + w x:
ggml_tensor *matmul_add(ggml_context *ctx, ggml_tensor *w, ggml_tensor *x, ggml_tensor *res);
// Each of ws (1..3, same K) times rms_norm(x) * norm_w, their rows stacked: [sum N, n].
ggml_tensor *norm_matmul(ggml_context *ctx, ggml_tensor *x, ggml_tensor *norm_w, const float *eps,
                         const std::vector<ggml_tensor *> &ws);
// silu(gate h) * (up h) with h = rms_norm(x) * norm_w: [N, n].
ggml_tensor *norm_swiglu(ggml_context *ctx, ggml_tensor *x, ggml_tensor *norm_w, const float *eps, ggml_tensor *gate,
                         ggml_tensor *up);

}  // namespace qt

// packed_matvec_internal.h: what the packed mat-vec kernels of every ISA level share (internal to packed_matvec.cpp and
// the per-ISA files packed_matvec_avx2.cpp, packed_matvec_avx512.cpp, packed_matvec_neon.cpp): the packed layout's
// sizes, one column of activations in the forms the kernels read, and each ISA's entry points. The layout itself is
// described in packed_matvec.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ggml.h"
#include "kernels/packed_matvec.h"

namespace qt {
namespace packed {

constexpr int64_t QK = 256;             // values per Q4_K super-block
constexpr size_t SUB_BYTES = 32 + 256;  // per 16 rows and 32 values: sc, m, codes
constexpr size_t SUPER_BYTES = 128 + 8 * SUB_BYTES;
constexpr size_t Q8_GROUP_BLOCK = 32 + 32 + 8 * 64;  // per 16 rows and 32 values: d, code sums, codes
constexpr int PREFETCH = 4096;                       // bytes ahead of the weights being read (DRAM latency x bandwidth)

// 4 bytes at p (codes or activations) as one int32, to broadcast to every lane.
template <typename T>
inline int32_t load4(const T *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

// One column's activations in the form a weight type's kernel reads: Q4_K: int8 codes with one scale per 256
// values (as ggml's Q8_K) and the code sums per 32 (for the mins); Q8_0: one scale per 32, and for the kernels
// that multiply unsigned activations (VNNI) the codes shifted to unsigned; BF16: pairs of BF16 values, or for
// the AVX2 kernel the same values widened to FP32.
struct Column {
    std::vector<int8_t> q;
    std::vector<uint8_t> u;
    std::vector<float> scale;
    std::vector<int32_t> sums;
    std::vector<uint32_t> bf;
    std::vector<float> bf32;

    void set(ggml_type type, const float *x, int64_t K, MatvecKernel kernel);
};

#if defined(__x86_64__)
// x[0..n) (n a multiple of 32) -> int8 codes round(x * 127 / max|x|) (to nearest even), returns max|x| / 127;
// the same numbers as the AVX-512 quantizer.
float avx2_quantize_block(const float *x, int64_t n, int8_t *q);
// One 16-row group of a packed weight times nc (1..4) of a product's ncols columns -> out[c][0..16). vnni:
// AVX-VNNI's vpdpbusd instead of vpmaddubsw + vpmaddwd (Q4_K and Q8_0). BF16 groups are 16 GGUF rows, summed in
// the order of ggml's AVX2 product for ncols columns (its mat-vec for one, its GEMM for more).
void avx2_group_dot(int nc, int64_t ncols, ggml_type type, bool vnni, const uint8_t *p, int64_t K,
                    const Column *const *cols, float *const *out);
// out[0..16) = silu(g) * u; out[0..16) += r.
void avx2_swiglu16(const float *g, const float *u, float *out);
void avx2_add16(float *out, const float *r);

// The AVX-512 kernels (packed_matvec_avx512.cpp): the quantizer (n a multiple of 16); one 16-row group times nc
// (1..4) columns, AVX512-VNNI (Q4_K, Q8_0, whose Q8_0 activations are the unsigned codes) or AVX512-BF16 (BF16,
// the columns' BF16 pairs); the fused layers' epilogues.
float avx512_quantize_block(const float *x, int64_t n, int8_t *q);
void avx512_group_dot(int nc, ggml_type type, const uint8_t *p, int64_t K, const Column *const *cols,
                      float *const *out);
void avx512_swiglu16(const float *g, const float *u, float *out);
void avx512_add16(float *out, const float *r);
#endif

#if defined(__aarch64__)
// The NEON kernels (Q4_K and Q8_0): the same quantizer (n a multiple of 16) and group product as the AVX2 ones;
// dotprod: SDOT, else its exact emulation with SMULL and pairwise adds.
float neon_quantize_block(const float *x, int64_t n, int8_t *q);
void neon_group_dot(int nc, ggml_type type, bool dotprod, const uint8_t *p, int64_t K, const Column *const *cols,
                    float *const *out);
#endif

}  // namespace packed
}  // namespace qt

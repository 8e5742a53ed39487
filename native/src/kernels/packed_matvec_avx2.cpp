// packed_matvec_avx2.cpp: the packed mat-vec kernels (packed_matvec.h) for the AVX2 level: AVX2 + FMA + F16C, and
// AVX-VNNI's 256-bit vpdpbusd where the CPU has it. Compiled through function target attributes and only called
// after cpu_isa() chose the level, so the extension still loads on any x86-64 CPU.
//
// Q4_K and Q8_0 read the AVX-512 kernels' packed layout (packed_matvec.cpp): a 64-byte chunk holds 4 codes of each
// of a group's 16 rows, so its two 32-byte halves are rows 0-7 and 8-15, one register each. BF16 groups are the
// GGUF's rows as they are (below).
//
// Without VNNI the byte products go through vpmaddubsw (unsigned x signed bytes, adjacent pairs summed to int16,
// saturating) and vpmaddwd (int16 pairs summed to int32). The sums stay exact because they never reach int16's
// limits:
//   Q4_K: codes 0..15 times activations -127..127: a pair is at most 3810, and one sub-block (32 values, 8
//     vpmaddubsw per register) puts 16 products in each int16 lane: at most 30480 < 32767. vpmaddwd then
//     multiplies those by the sub-block scales (6 bits) into int32.
//   Q8_0: codes -128..127 times activations -127..127 as |code| (unsigned, at most 128) times the activation with
//     the code's sign (vpsignb): a pair is at most 2 * 128 * 127 = 32512 < 32767, widened by vpmaddwd at once.
// With VNNI, vpdpbusd sums four products into int32 directly (Q8_0 as on AVX-512: activations + 128, unsigned,
// and 128 * the code sums taken off again).
// The float arithmetic after the integer sums is the AVX-512 kernels' in the same order, so Q4_K and Q8_0 results
// are the same numbers on both levels.
#include "kernels/packed_matvec_internal.h"

#if defined(__x86_64__)

#include <immintrin.h>

#include <cstring>

#include "kernels/avx2_math.h"

namespace qt {
namespace packed {

namespace {

// Every loop of a fixed, small count is unrolled (#pragma GCC unroll): the arrays of accumulators then live in
// registers (at -O2 a rolled loop keeps them in memory).
#define QT_AVX2 __attribute__((target("avx2,fma,f16c")))
#define QT_AVX2_VNNI __attribute__((target("avx2,fma,f16c,avxvnni")))

QT_AVX2 inline void prefetch_ahead(const uint8_t *p, size_t bytes) {
    for (size_t l = 0; l < bytes; l += 64) _mm_prefetch((const char *)p + PREFETCH + l, _MM_HINT_T0);
}

// Half h (rows 8h..8h+7) of the 16 bytes at p, zero-extended to int32 lanes.
QT_AVX2 inline __m256i row_bytes(const uint8_t *p, int h) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8 * h)));
}

// The integer dot products of one 8-row register of codes with 4 activation bytes per row (broadcast):
// Q4_K codes are unsigned and the activations signed; Q8_0 the other way round.
template <bool VNNI>
struct ByteDot;

template <>
struct ByteDot<false> {
    // int16 pair sums (see the file comment for why they cannot saturate within a sub-block).
    QT_AVX2 static __m256i q4(__m256i acc16, __m256i codes, __m256i act) {
        return _mm256_add_epi16(acc16, _mm256_maddubs_epi16(codes, act));
    }
    // Q8_0: |w| times the activations with w's sign, widened to int32 at once. abs_w = |w|, computed once per
    // register for every column.
    QT_AVX2 static __m256i q8(__m256i acc, __m256i w, __m256i abs_w, __m256i act) {
        const __m256i pairs = _mm256_maddubs_epi16(abs_w, _mm256_sign_epi8(act, w));
        return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
    }
};

template <>
struct ByteDot<true> {
    QT_AVX2_VNNI static __m256i q4(__m256i acc, __m256i codes, __m256i act) {
        return _mm256_dpbusd_avx_epi32(acc, codes, act);
    }
    // act: unsigned (code + 128)
    QT_AVX2_VNNI static __m256i q8(__m256i acc, __m256i w, __m256i, __m256i act) {
        return _mm256_dpbusd_avx_epi32(acc, act, w);
    }
};

// Q4_K: one sub-block's sums S (int16 pairs, or int32 with VNNI) times its scales sc (int32 lanes, 6 bits).
QT_AVX2 inline __m256i scale_sums(__m256i S, __m256i sc, bool vnni) {
    if (vnni) return _mm256_mullo_epi32(S, sc);
    return _mm256_madd_epi16(S, _mm256_or_si256(sc, _mm256_slli_epi32(sc, 16)));  // sc in both int16 halves
}

// Q4_K: 16 rows x NC columns.
template <int NC, bool VNNI>
QT_AVX2_VNNI void q4k_group(const uint8_t *p, int64_t K, const Column *const *cols, float *const *out) {
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    __m256 acc[NC][2];
#pragma GCC unroll 16
    for (int c = 0; c < NC; c++) acc[c][0] = acc[c][1] = _mm256_setzero_ps();
    for (int64_t s = 0; s < K / QK; s++) {
        const float *dp = (const float *)p;
        p += 128;
        __m256i accq[NC][2], accm[NC][2];
#pragma GCC unroll 16
        for (int c = 0; c < NC; c++) accq[c][0] = accq[c][1] = accm[c][0] = accm[c][1] = _mm256_setzero_si256();
        for (int i = 0; i < 8; i++) {
            prefetch_ahead(p, SUB_BYTES);
            const __m256i sc[2] = {row_bytes(p, 0), row_bytes(p, 1)},
                          mn[2] = {row_bytes(p + 16, 0), row_bytes(p + 16, 1)};
            p += 32;
            __m256i S[NC][2];
#pragma GCC unroll 16
            for (int c = 0; c < NC; c++) S[c][0] = S[c][1] = _mm256_setzero_si256();
            const int64_t k0 = s * QK + i * 32;
#pragma GCC unroll 16
            for (int ch = 0; ch < 4; ch++)
#pragma GCC unroll 16
                for (int h = 0; h < 2; h++) {
                    const __m256i v = _mm256_loadu_si256((const __m256i *)(p + 64 * ch + 32 * h));
                    const __m256i lo = _mm256_and_si256(v, low4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
#pragma GCC unroll 16
                    for (int c = 0; c < NC; c++) {
                        const int8_t *a = cols[c]->q.data() + k0 + 8 * ch;
                        S[c][h] = ByteDot<VNNI>::q4(S[c][h], lo, _mm256_set1_epi32(load4(a)));
                        S[c][h] = ByteDot<VNNI>::q4(S[c][h], hi, _mm256_set1_epi32(load4(a + 4)));
                    }
                }
            p += 256;
#pragma GCC unroll 16
            for (int c = 0; c < NC; c++) {
                // the code sum of a sub-block (|sum| <= 32 * 127) fits an int16: vpmaddwd with m (high half 0)
                const __m256i sum = _mm256_set1_epi32(cols[c]->sums[k0 / 32]);
#pragma GCC unroll 16
                for (int h = 0; h < 2; h++) {
                    accq[c][h] = _mm256_add_epi32(accq[c][h], scale_sums(S[c][h], sc[h], VNNI));
                    accm[c][h] = _mm256_add_epi32(accm[c][h], _mm256_madd_epi16(mn[h], sum));
                }
            }
        }
#pragma GCC unroll 16
        for (int h = 0; h < 2; h++) {
            const __m256 d = _mm256_loadu_ps(dp + 8 * h), dmin = _mm256_loadu_ps(dp + 16 + 8 * h);
#pragma GCC unroll 16
            for (int c = 0; c < NC; c++) {
                const __m256 t = _mm256_fmsub_ps(d, _mm256_cvtepi32_ps(accq[c][h]),
                                                 _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(accm[c][h])));
                acc[c][h] = _mm256_fmadd_ps(_mm256_set1_ps(cols[c]->scale[s]), t, acc[c][h]);
            }
        }
    }
#pragma GCC unroll 16
    for (int c = 0; c < NC; c++)
#pragma GCC unroll 16
        for (int h = 0; h < 2; h++) _mm256_storeu_ps(out[c] + 8 * h, acc[c][h]);
}

// Q8_0: 16 rows x NC columns.
template <int NC, bool VNNI>
QT_AVX2_VNNI void q8_group(const uint8_t *p, int64_t K, const Column *const *cols, float *const *out) {
    __m256 acc[NC][2];
#pragma GCC unroll 16
    for (int c = 0; c < NC; c++) acc[c][0] = acc[c][1] = _mm256_setzero_ps();
    for (int64_t bk = 0; bk < K / 32; bk++) {
        prefetch_ahead(p, Q8_GROUP_BLOCK);
        __m256 d[2];
        __m256i corr[2];
#pragma GCC unroll 16
        for (int h = 0; h < 2; h++) {
            d[h] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16 * h)));
            corr[h] = _mm256_slli_epi32(_mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(p + 32 + 16 * h))), 7);
        }
        p += 64;
        __m256i S[NC][2];
#pragma GCC unroll 16
        for (int c = 0; c < NC; c++) S[c][0] = S[c][1] = _mm256_setzero_si256();
#pragma GCC unroll 16
        for (int ch = 0; ch < 8; ch++)
#pragma GCC unroll 16
            for (int h = 0; h < 2; h++) {
                const __m256i w = _mm256_loadu_si256((const __m256i *)(p + 64 * ch + 32 * h));
                const __m256i abs_w = VNNI ? w : _mm256_abs_epi8(w);
#pragma GCC unroll 16
                for (int c = 0; c < NC; c++) {
                    const int32_t a = VNNI ? load4(cols[c]->u.data() + bk * 32 + 4 * ch)
                                           : load4(cols[c]->q.data() + bk * 32 + 4 * ch);
                    S[c][h] = ByteDot<VNNI>::q8(S[c][h], w, abs_w, _mm256_set1_epi32(a));
                }
            }
        p += 512;
#pragma GCC unroll 16
        for (int c = 0; c < NC; c++)
#pragma GCC unroll 16
            for (int h = 0; h < 2; h++) {
                const __m256i sum = VNNI ? _mm256_sub_epi32(S[c][h], corr[h]) : S[c][h];
                const __m256 dd = _mm256_mul_ps(d[h], _mm256_set1_ps(cols[c]->scale[bk]));
                acc[c][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), dd, acc[c][h]);
            }
    }
#pragma GCC unroll 16
    for (int c = 0; c < NC; c++)
#pragma GCC unroll 16
        for (int h = 0; h < 2; h++) _mm256_storeu_ps(out[c] + 8 * h, acc[c][h]);
}

// BF16 values as FP32 (the BF16 bits are the FP32 number's upper half).
QT_AVX2 inline __m256 widen_bf16(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

// BF16 rows times the BF16-rounded activations (as FP32), summed in the order ggml's AVX2 build sums them, so that
// the fused layers agree with ggml's graph to the bit in their products (a BF16 model's activations are rounded
// to BF16 before every product, and a last-bit difference can move one to the neighbouring BF16 value). BF16
// products are exact in FP32, so multiply-then-add and FMA give the same sums.
//
// One column (ggml's mat-vec, ggml_vec_dot_bf16): four 8-lane partial sums over k mod 32, combined as
// (c0 + c2) + (c1 + c3), then the lanes; the values past the last multiple of 32 added in double.
QT_AVX2 float bf16_dot_matvec_order(const uint16_t *w, const float *x, int64_t K) {
    __m256 c[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t k = 0;
    for (; k + 32 <= K; k += 32)
#pragma GCC unroll 16
        for (int m = 0; m < 4; m++)
            c[m] = _mm256_add_ps(_mm256_mul_ps(widen_bf16(w + k + 8 * m), _mm256_loadu_ps(x + k + 8 * m)), c[m]);
    double sum = hsum8(_mm256_add_ps(_mm256_add_ps(c[0], c[2]), _mm256_add_ps(c[1], c[3])));
    for (; k < K; k++) {
        const uint32_t bits = (uint32_t)w[k] << 16;
        float wk;
        memcpy(&wk, &bits, 4);
        sum += (double)(wk * x[k]);
    }
    return (float)sum;
}

// Several columns (ggml's GEMM for more than one, llamafile's, where K % 8 == 0): one 8-lane FMA sum over k mod 8
// per row and column, then the lanes.
template <int NC>
QT_AVX2 void bf16_row_gemm_order(const uint16_t *w, int64_t K, const Column *const *cols, float *const *out, int r) {
    __m256 acc[NC];
#pragma GCC unroll 16
    for (int c = 0; c < NC; c++) acc[c] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += 8) {
        const __m256 wv = widen_bf16(w + k);
#pragma GCC unroll 16
        for (int c = 0; c < NC; c++) acc[c] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(cols[c]->bf32.data() + k), acc[c]);
    }
#pragma GCC unroll 16
    for (int c = 0; c < NC; c++) out[c][r] = hsum8(acc[c]);
}

// BF16: 16 rows (one after the other) x NC of ncols columns.
template <int NC>
QT_AVX2 void bf16_group(const uint8_t *p, int64_t K, int64_t ncols, const Column *const *cols, float *const *out) {
    const uint16_t *rows = (const uint16_t *)p;
    for (int r = 0; r < 16; r++) {
        const uint16_t *w = rows + (size_t)r * K;
        if (ncols >= 2 && K % 8 == 0) {
            bf16_row_gemm_order<NC>(w, K, cols, out, r);
            continue;
        }
#pragma GCC unroll 16
        for (int c = 0; c < NC; c++) out[c][r] = bf16_dot_matvec_order(w, cols[c]->bf32.data(), K);
    }
}

template <int NC>
void group_dot(int64_t ncols, ggml_type type, bool vnni, const uint8_t *p, int64_t K, const Column *const *cols,
               float *const *out) {
    if (type == GGML_TYPE_Q4_K)
        vnni ? q4k_group<NC, true>(p, K, cols, out) : q4k_group<NC, false>(p, K, cols, out);
    else if (type == GGML_TYPE_Q8_0)
        vnni ? q8_group<NC, true>(p, K, cols, out) : q8_group<NC, false>(p, K, cols, out);
    else
        bf16_group<NC>(p, K, ncols, cols, out);
}

}  // namespace

void avx2_group_dot(int nc, int64_t ncols, ggml_type type, bool vnni, const uint8_t *p, int64_t K,
                    const Column *const *cols, float *const *out) {
    switch (nc) {
        case 1: group_dot<1>(ncols, type, vnni, p, K, cols, out); break;
        case 2: group_dot<2>(ncols, type, vnni, p, K, cols, out); break;
        case 3: group_dot<3>(ncols, type, vnni, p, K, cols, out); break;
        default: group_dot<4>(ncols, type, vnni, p, K, cols, out); break;
    }
}

QT_AVX2 float avx2_quantize_block(const float *x, int64_t n, int8_t *q) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
    const float amax = hmax8(m);
    const __m256 id = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undoes the packs' per-lane interleave
    for (int64_t i = 0; i < n; i += 32) {
        __m256i c[4];
// cvtps rounds by MXCSR: to nearest even, as lrintf; packs saturate (|code| <= 127 anyway)
#pragma GCC unroll 16
        for (int j = 0; j < 4; j++) c[j] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * j), id));
        const __m256i lo = _mm256_packs_epi32(c[0], c[1]), hi = _mm256_packs_epi32(c[2], c[3]);
        _mm256_storeu_si256((__m256i *)(q + i), _mm256_permutevar8x32_epi32(_mm256_packs_epi16(lo, hi), order));
    }
    return amax / 127.0f;
}

QT_AVX2 void avx2_swiglu16(const float *g, const float *u, float *out) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; i += 8) {
        const __m256 gv = _mm256_loadu_ps(g + i);
        const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
        _mm256_storeu_ps(
            out + i, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), _mm256_loadu_ps(u + i)));
    }
}

QT_AVX2 void avx2_add16(float *out, const float *r) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; i += 8)
        _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(out + i), _mm256_loadu_ps(r + i)));
}

}  // namespace packed
}  // namespace qt

#endif

// packed_matvec_neon.cpp: the packed mat-vec kernels (packed_matvec.h) for ARM64's NEON level, Q4_K and Q8_0 (BF16
// weights keep ggml's kernels on ARM).
//
// They read the AVX-512 kernels' packed layout (packed_matvec.cpp): a 64-byte chunk holds 4 codes of each of a
// group's 16 rows, so each of its four 16-byte quarters is 4 rows x 4 codes, exactly the operand of one SDOT
// (vdotq_s32: four int8 products summed into each int32 lane) with 4 activation bytes broadcast to the 4 lanes.
// Q4_K codes (0..15) and Q8_0 codes (-128..127) are both signed bytes to SDOT, so neither needs the unsigned shift
// of the x86 kernels (the Q8_0 code sums in the layout are not read here).
//
// Without the dotprod extension (ARMv8.0 cores such as the Raspberry Pi 4's Cortex-A72) the same sums come from
// SMULL (int8 x int8 -> int16, exact: |product| <= 16384) and pairwise widening adds; the results are identical,
// only slower. Which one runs is decided once by cpu_isa() (CpuIsa::dotprod).
//
// Integer sums are exact and the float arithmetic after them is the x86 kernels' in the same order (fused
// multiply-adds where they use FMA), so Q4_K and Q8_0 results are the same numbers on every level.
#include "kernels/packed_matvec_internal.h"

#if defined(__aarch64__)

#include <arm_neon.h>

#include <cstring>

namespace qt {
namespace packed {

namespace {

#define QT_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))

inline int8x16_t broadcast4(const int8_t *a) {
    int32_t v;
    memcpy(&v, a, 4);
    return vreinterpretq_s8_s32(vdupq_n_s32(v));
}

// acc + the 4-byte dot products of 4 rows (w: row r in bytes 4r..4r+3) with the broadcast activations a.
template <bool DOTPROD>
struct ByteDot;

template <>
struct ByteDot<true> {
    QT_DOTPROD static inline int32x4_t dot(int32x4_t acc, int8x16_t w, int8x16_t a) { return vdotq_s32(acc, w, a); }
};

template <>
struct ByteDot<false> {
    static inline int32x4_t dot(int32x4_t acc, int8x16_t w, int8x16_t a) {
        const int16x8_t lo = vmull_s8(vget_low_s8(w), vget_low_s8(a)), hi = vmull_high_s8(w, a);
        return vaddq_s32(acc, vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi)));
    }
};

// d * q - p with one rounding, as x86's vfmsub(d, q, p): -(p - d * q), and the negation is exact.
inline float32x4_t fused_mul_sub(float32x4_t d, float32x4_t q, float32x4_t p) { return vnegq_f32(vfmsq_f32(p, d, q)); }

// Bytes 4r..4r+3 of quarter h (rows 4h..4h+3) of the 16 bytes at p, zero-extended to int32 lanes.
inline int32x4_t quarter_bytes(const uint8_t *p, int h) {
    uint32_t v;
    memcpy(&v, p + 4 * h, 4);
    return vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(vmovl_u8(vreinterpret_u8_u32(vdup_n_u32(v))))));
}

// Q4_K: 16 rows (one group) x NC columns.
template <int NC, bool DOTPROD>
QT_DOTPROD void q4k_group(const uint8_t *p, int64_t K, const Column *const *cols, float *const *out) {
    const uint8x16_t low4 = vdupq_n_u8(0x0F);
    float32x4_t acc[NC][4];
    for (int c = 0; c < NC; c++)
        for (int h = 0; h < 4; h++) acc[c][h] = vdupq_n_f32(0.0f);
    for (int64_t s = 0; s < K / QK; s++) {
        const float *dp = (const float *)p;
        p += 128;
        int32x4_t accq[NC][4], accm[NC][4];
        for (int c = 0; c < NC; c++)
            for (int h = 0; h < 4; h++) accq[c][h] = accm[c][h] = vdupq_n_s32(0);
        for (int i = 0; i < 8; i++) {
            __builtin_prefetch(p + PREFETCH);
            int32x4_t sc[4], mn[4];
            for (int h = 0; h < 4; h++) {
                sc[h] = quarter_bytes(p, h);
                mn[h] = quarter_bytes(p + 16, h);
            }
            p += 32;
            int32x4_t S[NC][4];
            for (int c = 0; c < NC; c++)
                for (int h = 0; h < 4; h++) S[c][h] = vdupq_n_s32(0);
            const int64_t k0 = s * QK + i * 32;
            for (int ch = 0; ch < 4; ch++) {
                int8x16_t a_lo[NC], a_hi[NC];
                for (int c = 0; c < NC; c++) {
                    const int8_t *a = cols[c]->q.data() + k0 + 8 * ch;
                    a_lo[c] = broadcast4(a);
                    a_hi[c] = broadcast4(a + 4);
                }
                for (int h = 0; h < 4; h++) {
                    const uint8x16_t v = vld1q_u8(p + 64 * ch + 16 * h);
                    const int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(v, low4)),
                                    hi = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
                    for (int c = 0; c < NC; c++) {
                        S[c][h] = ByteDot<DOTPROD>::dot(S[c][h], lo, a_lo[c]);
                        S[c][h] = ByteDot<DOTPROD>::dot(S[c][h], hi, a_hi[c]);
                    }
                }
            }
            p += 256;
            for (int c = 0; c < NC; c++) {
                const int32x4_t sum = vdupq_n_s32(cols[c]->sums[k0 / 32]);
                for (int h = 0; h < 4; h++) {
                    accq[c][h] = vmlaq_s32(accq[c][h], S[c][h], sc[h]);
                    accm[c][h] = vmlaq_s32(accm[c][h], mn[h], sum);
                }
            }
        }
        for (int h = 0; h < 4; h++) {
            const float32x4_t d = vld1q_f32(dp + 4 * h), dmin = vld1q_f32(dp + 16 + 4 * h);
            for (int c = 0; c < NC; c++) {
                const float32x4_t t =
                    fused_mul_sub(d, vcvtq_f32_s32(accq[c][h]), vmulq_f32(dmin, vcvtq_f32_s32(accm[c][h])));
                acc[c][h] = vfmaq_f32(acc[c][h], vdupq_n_f32(cols[c]->scale[s]), t);
            }
        }
    }
    for (int c = 0; c < NC; c++)
        for (int h = 0; h < 4; h++) vst1q_f32(out[c] + 4 * h, acc[c][h]);
}

// Q8_0: 16 rows (one group) x NC columns.
template <int NC, bool DOTPROD>
QT_DOTPROD void q8_group(const uint8_t *p, int64_t K, const Column *const *cols, float *const *out) {
    float32x4_t acc[NC][4];
    for (int c = 0; c < NC; c++)
        for (int h = 0; h < 4; h++) acc[c][h] = vdupq_n_f32(0.0f);
    for (int64_t bk = 0; bk < K / 32; bk++) {
        __builtin_prefetch(p + PREFETCH);
        float32x4_t d[4];
        for (int h = 0; h < 4; h++) d[h] = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)p + 4 * h)));
        p += 64;  // the scales, then the code sums (for the x86 kernels' unsigned activations; not needed here)
        int32x4_t S[NC][4];
        for (int c = 0; c < NC; c++)
            for (int h = 0; h < 4; h++) S[c][h] = vdupq_n_s32(0);
        for (int ch = 0; ch < 8; ch++) {
            int8x16_t a[NC];
            for (int c = 0; c < NC; c++) a[c] = broadcast4(cols[c]->q.data() + bk * 32 + 4 * ch);
            for (int h = 0; h < 4; h++) {
                const int8x16_t w = vld1q_s8((const int8_t *)p + 64 * ch + 16 * h);
                for (int c = 0; c < NC; c++) S[c][h] = ByteDot<DOTPROD>::dot(S[c][h], w, a[c]);
            }
        }
        p += 512;
        for (int c = 0; c < NC; c++)
            for (int h = 0; h < 4; h++) {
                const float32x4_t dd = vmulq_f32(d[h], vdupq_n_f32(cols[c]->scale[bk]));
                acc[c][h] = vfmaq_f32(acc[c][h], vcvtq_f32_s32(S[c][h]), dd);
            }
    }
    for (int c = 0; c < NC; c++)
        for (int h = 0; h < 4; h++) vst1q_f32(out[c] + 4 * h, acc[c][h]);
}

template <int NC, bool DOTPROD>
void group_dot(ggml_type type, const uint8_t *p, int64_t K, const Column *const *cols, float *const *out) {
    if (type == GGML_TYPE_Q4_K)
        q4k_group<NC, DOTPROD>(p, K, cols, out);
    else
        q8_group<NC, DOTPROD>(p, K, cols, out);
}

template <bool DOTPROD>
void group_dot(int nc, ggml_type type, const uint8_t *p, int64_t K, const Column *const *cols, float *const *out) {
    switch (nc) {
        case 1: group_dot<1, DOTPROD>(type, p, K, cols, out); break;
        case 2: group_dot<2, DOTPROD>(type, p, K, cols, out); break;
        case 3: group_dot<3, DOTPROD>(type, p, K, cols, out); break;
        default: group_dot<4, DOTPROD>(type, p, K, cols, out); break;
    }
}

}  // namespace

void neon_group_dot(int nc, ggml_type type, bool dotprod, const uint8_t *p, int64_t K, const Column *const *cols,
                    float *const *out) {
    if (dotprod)
        group_dot<true>(nc, type, p, K, cols, out);
    else
        group_dot<false>(nc, type, p, K, cols, out);
}

float neon_quantize_block(const float *x, int64_t n, int8_t *q) {
    float32x4_t m = vdupq_n_f32(0.0f);
    for (int64_t i = 0; i < n; i += 4) m = vmaxq_f32(m, vabsq_f32(vld1q_f32(x + i)));
    const float amax = vmaxvq_f32(m);
    const float32x4_t id = vdupq_n_f32(amax > 0.0f ? 127.0f / amax : 0.0f);
    for (int64_t i = 0; i < n; i += 16) {
        int32x4_t c[4];
        for (int j = 0; j < 4; j++) c[j] = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + i + 4 * j), id));  // to nearest even
        const int16x8_t lo = vcombine_s16(vqmovn_s32(c[0]), vqmovn_s32(c[1])),
                        hi = vcombine_s16(vqmovn_s32(c[2]), vqmovn_s32(c[3]));
        vst1q_s8(q + i, vcombine_s8(vqmovn_s16(lo), vqmovn_s16(hi)));
    }
    return amax / 127.0f;
}

}  // namespace packed
}  // namespace qt

#endif

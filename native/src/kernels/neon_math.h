// neon_math.h: element-wise math on 4 floats for the ARM64 kernels: avx2_math.h's exp, sine, SnakeBeta and ELU with
// the same constants (vec_math_constants.h) and the same operations in the same order (fused multiply-adds where
// those use FMA, round-to-nearest-even for n), so that the NEON and AVX2 levels compute the same values.
#pragma once

#if defined(__aarch64__)
#include <arm_neon.h>

#include "kernels/vec_math_constants.h"

namespace qt {

// 2^e for integer e in [-126, 127] (lanes of e).
inline float32x4_t pow2i4(int32x4_t e) {
    return vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(e, vdupq_n_s32(127)), 23));
}

// Horner's rule: c[0] t^(N-1) + c[1] t^(N-2) + ... + c[N-1].
template <int N>
inline float32x4_t horner4(float32x4_t t, const float *c) {
    float32x4_t p = vdupq_n_f32(c[0]);
#pragma GCC unroll 16
    for (int i = 1; i < N; i++) p = vfmaq_f32(vdupq_n_f32(c[i]), p, t);
    return p;
}

// x = n ln2 + r with n = round(x / ln 2) (written to n), |r| <= ln2 / 2 (ln 2 in two parts): returns r.
inline float32x4_t reduce_ln2_4(float32x4_t x, float32x4_t &n) {
    using namespace vec_math;
    n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(LOG2_E)));
    const float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(LN2_HI));
    return vfmsq_f32(r, n, vdupq_n_f32(LN2_LO));
}

// exp(x) as avx2_math.h's exp8: 2^n * e^r with e^r by its Taylor series to r^7, inputs clamped to +-88, 2^n applied
// in two halves (n = -127 stays exact).
inline float32x4_t exp4(float32x4_t x) {
    using namespace vec_math;
    x = vmaxq_f32(vminq_f32(x, vdupq_n_f32(EXP_LIMIT)), vdupq_n_f32(-EXP_LIMIT));
    float32x4_t n;
    const float32x4_t p = horner4<8>(reduce_ln2_4(x, n), INV_FACTORIAL + 1);
    const int32x4_t ni = vcvtq_s32_f32(n), half = vshrq_n_s32(ni, 1);  // n is integral: the conversion is exact
    return vmulq_f32(vmulq_f32(p, pow2i4(half)), pow2i4(vsubq_s32(ni, half)));
}

// sin(x) as avx2_math.h's sin8: x = n*pi + r, |r| <= pi/2 (pi in three parts), r + r^3 * P(r^2), the sign flipped
// for odd n (n is integral, so the truncating conversion is exact).
inline float32x4_t sin4(float32x4_t x) {
    using namespace vec_math;
    const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(INV_PI)));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(PI_1));
    r = vfmsq_f32(r, n, vdupq_n_f32(PI_2));
    r = vfmsq_f32(r, n, vdupq_n_f32(PI_3));
    const float32x4_t r2 = vmulq_f32(r, r);
    const float32x4_t p = vfmaq_f32(r, vmulq_f32(horner4<6>(r2, SIN_TAYLOR), r2), r);  // r + r^3 * P(r^2)
    const uint32x4_t odd = vshlq_n_u32(vreinterpretq_u32_s32(vcvtq_s32_f32(n)), 31);
    return vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(p), odd));
}

// SnakeBeta on 4 channels: x + ib * sin(x * ea)^2 (ea = exp(alpha), ib = 1 / (exp(beta) + 1e-9)).
inline float32x4_t snake4(float32x4_t x, float32x4_t ea, float32x4_t ib) {
    const float32x4_t s = sin4(vmulq_f32(x, ea));
    return vfmaq_f32(x, ib, vmulq_f32(s, s));
}

// ELU(x) as avx2_math.h's elu8: x for x > 0, else 2^n expm1(r) + (2^n - 1) with expm1(r) to r^8; -1 below -88.
inline float32x4_t elu4(float32x4_t x) {
    using namespace vec_math;
    const float32x4_t xn = vmaxq_f32(vminq_f32(x, vdupq_n_f32(0.0f)), vdupq_n_f32(-EXP_LIMIT));
    float32x4_t n;
    const float32x4_t r = reduce_ln2_4(xn, n);
    const float32x4_t p = vfmaq_f32(r, vmulq_f32(horner4<7>(r, INV_FACTORIAL), r), r);  // expm1(r) = r + r^2 * (...)
    const float32x4_t two_n = pow2i4(vcvtq_s32_f32(n));
    const float32x4_t neg = vfmaq_f32(vsubq_f32(two_n, vdupq_n_f32(1.0f)), two_n, p);
    return vbslq_f32(vcgtq_f32(x, vdupq_n_f32(0.0f)), x, neg);
}

}  // namespace qt

#endif

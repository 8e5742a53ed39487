// avx2_math.h: element-wise math on 8 floats for the AVX2 kernels (callers are compiled for AVX2 + FMA through
// target attributes and only run after cpu_isa() chose a level that has them).
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

#include "kernels/vec_math_constants.h"

namespace qt {

// ---- the decoder kernels' exp and reductions (packed_matvec_avx2.cpp, fused_attention.cpp) ----

// 2^e for integer e in [-126, 127] (lanes of e).
__attribute__((target("avx2"))) inline __m256 pow2i8(__m256i e) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23));
}

// Horner's rule: c[0] t^(N-1) + c[1] t^(N-2) + ... + c[N-1].
template <int N>
__attribute__((target("avx2,fma"))) inline __m256 horner8(__m256 t, const float *c) {
    __m256 p = _mm256_set1_ps(c[0]);
#pragma GCC unroll 16
    for (int i = 1; i < N; i++) p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(c[i]));
    return p;
}

// x = n ln2 + r with n = round(x / ln 2) (written to n), |r| <= ln2 / 2 (ln 2 in two parts): returns r.
__attribute__((target("avx2,fma"))) inline __m256 reduce_ln2_8(__m256 x, __m256 &n) {
    using namespace vec_math;
    n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2_E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    return _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
}

// exp(x) as avx512_math.h's exp16: 2^n * e^r with n = round(x / ln 2), |r| <= ln2 / 2, e^r by its Taylor series
// to r^7; inputs clamped to +-88. 2^n is applied in two halves, so that n = -127 (a subnormal result) stays exact
// as with vscalefps.
__attribute__((target("avx2,fma"))) inline __m256 exp8(__m256 x) {
    using namespace vec_math;
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(EXP_LIMIT)), _mm256_set1_ps(-EXP_LIMIT));
    __m256 n;
    const __m256 p = horner8<8>(reduce_ln2_8(x, n), INV_FACTORIAL + 1);
    const __m256i ni = _mm256_cvtps_epi32(n), half = _mm256_srai_epi32(ni, 1);  // n in [-127, 127]
    return _mm256_mul_ps(_mm256_mul_ps(p, pow2i8(half)), pow2i8(_mm256_sub_epi32(ni, half)));
}

// Sum and maximum of the 8 lanes.
__attribute__((target("avx2"))) inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

__attribute__((target("avx2"))) inline float hmax8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

// ------------------------------------------------------------------------------------------------ sine
// (the codec decoder's SnakeBeta)

// sin(x): the same reduction and polynomial as avx512_math.h's sin16, so both levels give the same values:
// x = n*pi + r with |r| <= pi/2 (pi in three parts, exact products for |x| < 2e5), sin(r) by its Taylor series to
// r^13 (error below 1e-9), the sign flipped for odd n.
__attribute__((target("avx2,fma"))) inline __m256 sin8(__m256 x) {
    using namespace vec_math;
    const __m256 n =
        _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(INV_PI)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(PI_1), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(PI_2), r);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(PI_3), r);
    const __m256 r2 = _mm256_mul_ps(r, r);
    const __m256 p = _mm256_fmadd_ps(_mm256_mul_ps(horner8<6>(r2, SIN_TAYLOR), r2), r, r);  // r + r^3 * P(r^2)
    const __m256i odd = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 31);
    return _mm256_castsi256_ps(_mm256_xor_si256(_mm256_castps_si256(p), odd));
}

// SnakeBeta on 8 channels: x + ib * sin(x * ea)^2 (ea = exp(alpha), ib = 1 / (exp(beta) + 1e-9)).
__attribute__((target("avx2,fma"))) inline __m256 snake8(__m256 x, __m256 ea, __m256 ib) {
    const __m256 s = sin8(_mm256_mul_ps(x, ea));
    return _mm256_fmadd_ps(ib, _mm256_mul_ps(s, s), x);
}

// ------------------------------------------------------------------------------------------------ ELU
// (the codec encoder's SEANet)

// ELU(x) = x for x > 0, exp(x) - 1 otherwise, with exp(x) - 1 = 2^n expm1(r) + (2^n - 1), x = n ln2 + r, |r| <=
// ln2 / 2 (ln 2 in two parts), expm1(r) by its Taylor series to r^8 (error below 1e-10): full relative precision
// near 0 (n = 0), where exp(x) - 1 itself would cancel; below -88 the result is -1.
__attribute__((target("avx2,fma"))) inline __m256 elu8(__m256 x) {
    using namespace vec_math;
    const __m256 xn = _mm256_max_ps(_mm256_min_ps(x, _mm256_setzero_ps()), _mm256_set1_ps(-EXP_LIMIT));
    __m256 n;
    const __m256 r = reduce_ln2_8(xn, n);
    const __m256 p =
        _mm256_fmadd_ps(_mm256_mul_ps(horner8<7>(r, INV_FACTORIAL), r), r, r);  // expm1(r) = r + r^2 * (...)
    const __m256 two_n = pow2i8(_mm256_cvtps_epi32(n));
    const __m256 neg = _mm256_fmadd_ps(two_n, p, _mm256_sub_ps(two_n, _mm256_set1_ps(1.0f)));
    return _mm256_blendv_ps(neg, x, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ));
}

}  // namespace qt

#endif

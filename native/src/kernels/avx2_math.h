// avx2_math.h: element-wise math on 8 floats for the AVX2 kernels (callers are compiled for AVX2 + FMA through
// target attributes and only run after cpu_isa() chose a level that has them).
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

namespace qt {

// ---- the decoder kernels' exp and reductions (packed_matvec_avx2.cpp, fused_attention.cpp) ----

// 2^e for integer e in [-126, 127] (lanes of e).
__attribute__((target("avx2"))) inline __m256 pow2i8(__m256i e) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23));
}

// exp(x) as avx512_math.h's exp16: 2^n * e^r with n = round(x / ln 2), |r| <= ln2 / 2, e^r by its Taylor series
// to r^7; inputs clamped to +-88. 2^n is applied in two halves, so that n = -127 (a subnormal result) stays exact
// as with vscalefps.
__attribute__((target("avx2,fma"))) inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), _mm256_set1_ps(-88.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);  // ln 2 = hi + lo; n * hi is exact
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860682030941723212e-6f), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
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
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(0.318309886183790671538f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(3.140625f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(9.67502593994140625e-4f), r);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.509957990978376432e-7f), r);
    const __m256 r2 = _mm256_mul_ps(r, r);
    __m256 p = _mm256_set1_ps(1.0f / 6227020800.0f);
    p = _mm256_fmadd_ps(p, r2, _mm256_set1_ps(-1.0f / 39916800.0f));
    p = _mm256_fmadd_ps(p, r2, _mm256_set1_ps(1.0f / 362880.0f));
    p = _mm256_fmadd_ps(p, r2, _mm256_set1_ps(-1.0f / 5040.0f));
    p = _mm256_fmadd_ps(p, r2, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r2, _mm256_set1_ps(-1.0f / 6.0f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r2), r, r);  // r + r^3 * (...)
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
    const __m256 xn = _mm256_max_ps(_mm256_min_ps(x, _mm256_setzero_ps()), _mm256_set1_ps(-88.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(xn, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), xn);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860682030941723212e-6f), r);
    __m256 p = _mm256_set1_ps(1.0f / 40320);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 5040));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r);  // expm1(r) = r + r^2 * (...)
    const __m256 two_n = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
    const __m256 neg = _mm256_fmadd_ps(two_n, p, _mm256_sub_ps(two_n, _mm256_set1_ps(1.0f)));
    return _mm256_blendv_ps(neg, x, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ));
}

}  // namespace qt

#endif

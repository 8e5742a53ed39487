// avx512_math.h: element-wise math on 16 floats for the AVX-512 kernels (callers are compiled for AVX-512 through
// target attributes and only run after a CPU check; x86_simd.h).
#pragma once

#include "kernels/x86_simd.h"

#if defined(__x86_64__)

#include "kernels/vec_math_constants.h"

namespace qt {

// The mask of the lanes a 16-float step keeps when `left` values of the row remain: all 16, or the first `left`.
inline __mmask16 tail_mask16(int64_t left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1); }

// Horner's rule: c[0] t^(N-1) + c[1] t^(N-2) + ... + c[N-1].
template <int N>
QT_TARGET("avx512f")
inline __m512 horner16(__m512 t, const float *c) {
    __m512 p = _mm512_set1_ps(c[0]);
#pragma GCC unroll 16
    for (int i = 1; i < N; i++) p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(c[i]));
    return p;
}

// exp(x): 2^n * e^r with n = round(x / ln 2), |r| <= ln2 / 2, e^r by its Taylor series to r^7 (relative error
// below 1e-7, about float rounding); inputs clamped to +-88, so no overflow to inf.
QT_TARGET("avx512f") inline __m512 exp16(__m512 x) {
    using namespace vec_math;
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(EXP_LIMIT)), _mm512_set1_ps(-EXP_LIMIT));
    const __m512 n =
        _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2_E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    return _mm512_scalef_ps(horner16<8>(r, INV_FACTORIAL + 1), n);
}

// sin(x): x = n*pi + r with |r| <= pi/2 (pi in three parts, exact products for |x| < 2e5), sin(r) by its Taylor
// series to r^13 (error below 1e-9), the sign flipped for odd n.
QT_TARGET("avx512f") inline __m512 sin16(__m512 x) {
    using namespace vec_math;
    const __m512 n =
        _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(INV_PI)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(PI_1), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(PI_2), r);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(PI_3), r);
    const __m512 r2 = _mm512_mul_ps(r, r);
    const __m512 p = _mm512_fmadd_ps(_mm512_mul_ps(horner16<6>(r2, SIN_TAYLOR), r2), r, r);  // r + r^3 * P(r^2)
    const __m512i odd = _mm512_slli_epi32(_mm512_cvtps_epi32(n), 31);
    return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(p), odd));
}

// SnakeBeta x + ib * sin(x * ea)^2 (ea = exp(alpha), ib = 1 / (exp(beta) + 1e-9)), as avx2_math.h's snake8.
QT_TARGET("avx512f") inline __m512 snake16(__m512 x, __m512 ea, __m512 ib) {
    const __m512 s = sin16(_mm512_mul_ps(x, ea));
    return _mm512_fmadd_ps(ib, _mm512_mul_ps(s, s), x);
}

}  // namespace qt

#endif

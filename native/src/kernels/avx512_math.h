// avx512_math.h: element-wise math on 16 floats for the AVX-512 kernels (callers are compiled for AVX-512 through
// target attributes and only run after a CPU check).
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

namespace qt {

// exp(x): 2^n * e^r with n = round(x / ln 2), |r| <= ln2 / 2, e^r by its Taylor series to r^7 (relative error
// below 1e-7, about float rounding); inputs clamped to +-88, so no overflow to inf.
__attribute__((target("avx512f"))) inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-88.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln 2 = hi + lo; n * hi is exact
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723212e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

// sin(x): x = n*pi + r with |r| <= pi/2 (pi in three parts, exact products for |x| < 2e5), sin(r) by its Taylor
// series to r^13 (error below 1e-9), the sign flipped for odd n.
__attribute__((target("avx512f"))) inline __m512 sin16(__m512 x) {
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.318309886183790671538f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(3.140625f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(9.67502593994140625e-4f), r);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.509957990978376432e-7f), r);
    const __m512 r2 = _mm512_mul_ps(r, r);
    __m512 p = _mm512_set1_ps(1.0f / 6227020800.0f);
    p = _mm512_fmadd_ps(p, r2, _mm512_set1_ps(-1.0f / 39916800.0f));
    p = _mm512_fmadd_ps(p, r2, _mm512_set1_ps(1.0f / 362880.0f));
    p = _mm512_fmadd_ps(p, r2, _mm512_set1_ps(-1.0f / 5040.0f));
    p = _mm512_fmadd_ps(p, r2, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r2, _mm512_set1_ps(-1.0f / 6.0f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r2), r, r);  // r + r^3 * (...)
    const __m512i odd = _mm512_slli_epi32(_mm512_cvtps_epi32(n), 31);
    return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(p), odd));
}

}  // namespace qt

#endif

// fused_attention_avx512.cpp: the fused attention's vector steps on 16 lanes (fused_attention_steps.h), compiled for
// AVX-512 through target attributes (x86_simd.h) and only called at the avx512 level; the emulated test build
// (scripts/build-emulated) takes their intrinsics from SIMDe.
#include "kernels/x86_simd.h"

#if defined(__x86_64__)
#include <algorithm>
#include <cmath>

#include "kernels/avx512_math.h"
#include "kernels/fused_attention_steps.h"

namespace qt {

QT_TARGET("avx512f") float Avx512::dot(const float *a, const float *b, int n) {
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask16(n - i);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

QT_TARGET("avx512f") void Avx512::axpy(float a, const float *x, float *y, int n) {
    const __m512 av = _mm512_set1_ps(a);
    for (int i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask16(n - i);
        _mm512_mask_storeu_ps(y + i, m,
                              _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
}

QT_TARGET("avx512f") void Avx512::softmax(float *s, int n) {
    float mx = -INFINITY;
    for (int j = 0; j < n; j++) mx = std::max(mx, s[j]);
    const int n16 = (n + 15) / 16 * 16;
    for (int j = n; j < n16; j++) s[j] = -INFINITY;
    const __m512 m = _mm512_set1_ps(mx);
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < n16; j += 16) {
        const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + j), m));
        const __m512 keep = _mm512_maskz_mov_ps(tail_mask16(n - j), e);
        _mm512_storeu_ps(s + j, keep);
        sum = _mm512_add_ps(sum, keep);
    }
    const float inv = 1.0f / _mm512_reduce_add_ps(sum);
    for (int j = 0; j < n; j++) s[j] *= inv;
}

}  // namespace qt

#endif

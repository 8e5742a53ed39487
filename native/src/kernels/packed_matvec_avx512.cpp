// packed_matvec_avx512.cpp: the packed mat-vec kernels for AVX-512 (packed_matvec.h; the layout is described in
// packed_matvec.cpp): AVX512-VNNI's vpdpbusd for Q4_K and Q8_0, AVX512-BF16's vdpbf16ps for BF16, one 16-row group
// of the packed layout times 1 to 4 columns per call; the activation quantizer and the fused layers' epilogues on 16
// lanes. Compiled for AVX-512 through target attributes (x86_simd.h) and only called after matvec_kernel() chose
// the avx512 kernel; the emulated test build (scripts/build-emulated) takes the intrinsics from SIMDe.
#include "kernels/x86_simd.h"

#if defined(__x86_64__)
#include "kernels/avx512_math.h"
#include "kernels/packed_matvec_internal.h"

namespace qt {
namespace packed {

namespace {

// x[0..n) (n a multiple of 16) -> int8 codes round(x * 127 / max|x|) (to nearest even, as lrintf), returns the
// scale max|x| / 127.
QT_TARGET("avx512f,avx512bw") float quantize_block(const float *x, int64_t n, int8_t *q) {
    __m512 m = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
    const float amax = _mm512_reduce_max_ps(m);
    const __m512 id = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    for (int64_t i = 0; i < n; i += 16) {
        const __m512i v = _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), id),
                                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtsepi32_epi8(v));
    }
    return amax / 127.0f;
}

// Q4_K: 16 rows (one group) x NC columns.
template <int NC>
QT_TARGET("avx512f,avx512bw,avx512vnni")
void q4k_group(const uint8_t *p, int64_t K, const Column *const *cols, float *const *out) {
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    __m512 acc[NC];
    for (int c = 0; c < NC; c++) acc[c] = _mm512_setzero_ps();
    for (int64_t s = 0; s < K / QK; s++) {
        const __m512 d = _mm512_loadu_ps((const float *)p), dmin = _mm512_loadu_ps((const float *)p + 16);
        p += 128;
        __m512i accq[NC], accm[NC];
        for (int c = 0; c < NC; c++) accq[c] = accm[c] = _mm512_setzero_si512();
        for (int i = 0; i < 8; i++) {
            for (int l = 0; l < (int)SUB_BYTES; l += 64) _mm_prefetch((const char *)p + PREFETCH + l, _MM_HINT_T0);
            const __m512i sc = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
            const __m512i mn = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 16)));
            p += 32;
            __m512i S[NC];
            for (int c = 0; c < NC; c++) S[c] = _mm512_setzero_si512();
            const int64_t k0 = s * QK + i * 32;
            for (int ch = 0; ch < 4; ch++) {
                const __m512i v = _mm512_loadu_si512((const void *)(p + 64 * ch));
                const __m512i lo = _mm512_and_si512(v, low4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
                for (int c = 0; c < NC; c++) {
                    const int8_t *a = cols[c]->q.data() + k0 + 8 * ch;
                    S[c] = _mm512_dpbusd_epi32(S[c], lo, _mm512_set1_epi32(load4(a)));
                    S[c] = _mm512_dpbusd_epi32(S[c], hi, _mm512_set1_epi32(load4(a + 4)));
                }
            }
            p += 256;
            for (int c = 0; c < NC; c++) {
                accq[c] = _mm512_add_epi32(accq[c], _mm512_mullo_epi32(S[c], sc));
                accm[c] = _mm512_add_epi32(accm[c], _mm512_mullo_epi32(mn, _mm512_set1_epi32(cols[c]->sums[k0 / 32])));
            }
        }
        for (int c = 0; c < NC; c++) {
            const __m512 t =
                _mm512_fmsub_ps(d, _mm512_cvtepi32_ps(accq[c]), _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(accm[c])));
            acc[c] = _mm512_fmadd_ps(_mm512_set1_ps(cols[c]->scale[s]), t, acc[c]);
        }
    }
    for (int c = 0; c < NC; c++) _mm512_storeu_ps(out[c], acc[c]);
}

// Q8_0: 16 rows (one group) x NC columns.
template <int NC>
QT_TARGET("avx512f,avx512bw,avx512vnni")
void q8_group(const uint8_t *p, int64_t K, const Column *const *cols, float *const *out) {
    __m512 acc[NC];
    for (int c = 0; c < NC; c++) acc[c] = _mm512_setzero_ps();
    for (int64_t bk = 0; bk < K / 32; bk++) {
        for (int l = 0; l < (int)Q8_GROUP_BLOCK; l += 64) _mm_prefetch((const char *)p + PREFETCH + l, _MM_HINT_T0);
        const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
        const __m512i corr = _mm512_slli_epi32(_mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)(p + 32))), 7);
        p += 64;
        __m512i S[NC];
        for (int c = 0; c < NC; c++) S[c] = _mm512_setzero_si512();
        for (int ch = 0; ch < 8; ch++) {
            const __m512i w = _mm512_loadu_si512((const void *)(p + 64 * ch));
            for (int c = 0; c < NC; c++)
                S[c] = _mm512_dpbusd_epi32(S[c], _mm512_set1_epi32(load4(cols[c]->u.data() + bk * 32 + 4 * ch)), w);
        }
        p += 512;
        for (int c = 0; c < NC; c++) {
            const __m512 dd = _mm512_mul_ps(d, _mm512_set1_ps(cols[c]->scale[bk]));
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(S[c], corr)), dd, acc[c]);
        }
    }
    for (int c = 0; c < NC; c++) _mm512_storeu_ps(out[c], acc[c]);
}

// BF16: 16 rows (one group) x NC columns; vdpbf16ps takes one pair of values of each of the 16 rows, two
// accumulators per column keep the dependency chains short.
template <int NC>
QT_TARGET("avx512f,avx512bw,avx512bf16")
void bf16_group(const uint8_t *p, int64_t K, const Column *const *cols, float *const *out) {
    __m512 acc[NC][2];
    for (int c = 0; c < NC; c++) acc[c][0] = acc[c][1] = _mm512_setzero_ps();
    for (int64_t kp = 0; kp < K / 2; kp += 2, p += 128) {
        _mm_prefetch((const char *)p + PREFETCH, _MM_HINT_T0);
        _mm_prefetch((const char *)p + PREFETCH + 64, _MM_HINT_T0);
        const __m512i w0 = _mm512_loadu_si512((const void *)p), w1 = _mm512_loadu_si512((const void *)(p + 64));
        for (int c = 0; c < NC; c++) {
            const uint32_t *a = cols[c]->bf.data() + kp;
            acc[c][0] = _mm512_dpbf16_ps(acc[c][0], as_bf16x32(w0), as_bf16x32(_mm512_set1_epi32((int)a[0])));
            acc[c][1] = _mm512_dpbf16_ps(acc[c][1], as_bf16x32(w1), as_bf16x32(_mm512_set1_epi32((int)a[1])));
        }
    }
    for (int c = 0; c < NC; c++) _mm512_storeu_ps(out[c], _mm512_add_ps(acc[c][0], acc[c][1]));
}

template <int NC>
void group_dot(ggml_type type, const uint8_t *p, int64_t K, const Column *const *cols, float *const *out) {
    if (type == GGML_TYPE_Q4_K)
        q4k_group<NC>(p, K, cols, out);
    else if (type == GGML_TYPE_Q8_0)
        q8_group<NC>(p, K, cols, out);
    else
        bf16_group<NC>(p, K, cols, out);
}

// silu(g) * u = g / (1 + exp(-g)) * u, 16 at a time.
QT_TARGET("avx512f") void swiglu16(const float *g, const float *u, float *out) {
    const __m512 gv = _mm512_loadu_ps(g);
    const __m512 s =
        _mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv))));
    _mm512_storeu_ps(out, _mm512_mul_ps(s, _mm512_loadu_ps(u)));
}

QT_TARGET("avx512f") void add16(float *out, const float *r) {
    _mm512_storeu_ps(out, _mm512_add_ps(_mm512_loadu_ps(out), _mm512_loadu_ps(r)));
}

}  // namespace

float avx512_quantize_block(const float *x, int64_t n, int8_t *q) { return quantize_block(x, n, q); }

void avx512_group_dot(int nc, ggml_type type, const uint8_t *p, int64_t K, const Column *const *cols,
                      float *const *out) {
    switch (nc) {
        case 1: group_dot<1>(type, p, K, cols, out); break;
        case 2: group_dot<2>(type, p, K, cols, out); break;
        case 3: group_dot<3>(type, p, K, cols, out); break;
        default: group_dot<4>(type, p, K, cols, out); break;
    }
}

void avx512_swiglu16(const float *g, const float *u, float *out) { swiglu16(g, u, out); }
void avx512_add16(float *out, const float *r) { add16(out, r); }

}  // namespace packed
}  // namespace qt

#endif

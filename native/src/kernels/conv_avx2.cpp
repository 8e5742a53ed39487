// conv_avx2.cpp: the packed conv's tiles and epilogue functions for x86-64 (packed_conv.h). The SIMD code is compiled
// for AVX2 + FMA through function target attributes and only ever called after packed_conv_available() said yes,
// so the extension still loads on any x86-64 CPU.
#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>

#include "kernels/avx2_math.h"
#include "kernels/packed_conv_internal.h"

namespace qt {
namespace packed_conv_detail {

namespace {

// Epilogue of one 8-lane output vector (outputs o.., time t): bias, residual, snake; stores the first n lanes.
__attribute__((target("avx2,fma"), always_inline)) inline void finish(const ConvArgs &a, __m256 v, int64_t t, int o,
                                                                      int n) {
    const PackedConv &w = *a.w;
    const __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    if (!w.bias.empty()) v = _mm256_add_ps(v, _mm256_loadu_ps(&w.bias[o]));
    if (a.res) {
        const float *r = a.res + (size_t)t * w.cout + o;
        v = _mm256_add_ps(v, n == 8 ? _mm256_loadu_ps(r) : _mm256_maskload_ps(r, lanes));
    }
    if (!w.snake_ea.empty()) v = snake8(v, _mm256_loadu_ps(&w.snake_ea[o]), _mm256_loadu_ps(&w.snake_ib[o]));
    float *y = a.y + (size_t)t * w.cout + o;
    if (n == 8)
        _mm256_storeu_ps(y, v);
    else
        _mm256_maskstore_ps(y, lanes, v);
}

// The 16 weights of one (tap, input channel) of a block as two 8-lane FP32 vectors (outputs o0.. and o0+8..):
// BF16 pairs widened by a shift and a mask, or F32 as stored.
struct Bf16Weights {
    using T = uint16_t;
    static const T *packed(const PackedConv &w) { return w.packed.data(); }
    __attribute__((target("avx2,fma"), always_inline)) static void load(const T *p, __m256 &lo, __m256 &hi) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)p);
        lo = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
        hi = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xFFFF0000u)));
    }
};
struct F32Weights {
    using T = float;
    static const T *packed(const PackedConv &w) { return w.packed_f32.data(); }
    __attribute__((target("avx2,fma"), always_inline)) static void load(const T *p, __m256 &lo, __m256 &hi) {
        lo = _mm256_loadu_ps(p);
        hi = _mm256_loadu_ps(p + 8);
    }
};

// Outputs ob*16 .. +15 at times t0 .. t0+R-1: R x 2 accumulators over every tap and input channel.
template <int R, class W>
__attribute__((target("avx2,fma"))) void conv_tile(const ConvArgs &a, int64_t t0, int ob) {
    const PackedConv &w = *a.w;
    const int cin = w.cin;
    const typename W::T *wp = W::packed(w) + (size_t)ob * w.k * cin * PackedConv::OB;
    // (the loops over r are unrolled so that the accumulators live in registers; GCC does not at -O2)
    __m256 acc[R][2];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int j = 0; j < w.k; j++) {
        const float *xr[R];
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) xr[r] = a.row((t0 + r) * w.stride + (int64_t)j * w.dil);
        for (int c = 0; c < cin; c++, wp += PackedConv::OB) {
            __m256 lo, hi;  // outputs o0 .. o0+7, o0+8 .. o0+15
            W::load(wp, lo, hi);
#pragma GCC unroll 6
            for (int r = 0; r < R; r++) {
                const __m256 xb = _mm256_broadcast_ss(xr[r] + c);
                acc[r][0] = _mm256_fmadd_ps(xb, lo, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(xb, hi, acc[r][1]);
            }
        }
    }
    const int o0 = ob * PackedConv::OB;
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const int o = o0 + 8 * h, n = std::min(8, w.cout - o);
            if (n > 0) finish(a, acc[r][h], t0 + r, o, n);
        }
}

template <class W>
constexpr TileFn tile_fns[MT + 1] = {nullptr,         conv_tile<1, W>, conv_tile<2, W>, conv_tile<3, W>,
                                     conv_tile<4, W>, conv_tile<5, W>, conv_tile<6, W>};

}  // namespace

SpanFn conv_span_avx2(PackedForm form) {
    return form == PackedForm::f32 ? span_of_tiles<tile_fns<F32Weights>> : span_of_tiles<tile_fns<Bf16Weights>>;
}

__attribute__((target("avx2,fma"))) void snake_row_avx2(const float *x, const float *bias, const float *ea,
                                                        const float *ib, int64_t C, float *y) {
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) {
        __m256 v = _mm256_loadu_ps(x + c);
        if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + c));
        _mm256_storeu_ps(y + c, snake8(v, _mm256_loadu_ps(ea + c), _mm256_loadu_ps(ib + c)));
    }
    if (c == C) return;
    const __m256i lanes =
        _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(C - c)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 v = _mm256_maskload_ps(x + c, lanes);
    if (bias) v = _mm256_add_ps(v, _mm256_maskload_ps(bias + c, lanes));
    _mm256_maskstore_ps(y + c, lanes, snake8(v, _mm256_maskload_ps(ea + c, lanes), _mm256_maskload_ps(ib + c, lanes)));
}

__attribute__((target("avx2,fma"))) void elu_row_avx2(const float *x, int64_t n, float *y) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, elu8(_mm256_loadu_ps(x + i)));
    if (i == n) return;
    const __m256i lanes =
        _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - i)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    _mm256_maskstore_ps(y + i, lanes, elu8(_mm256_maskload_ps(x + i, lanes)));
}

}  // namespace packed_conv_detail
}  // namespace qt

#endif

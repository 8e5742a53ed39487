// conv_avx2.cpp: see conv_avx2.h. The SIMD code is compiled for AVX2 + FMA through function target attributes and
// only ever called after avx2_conv_available() said yes, so the extension still loads on any x86-64 CPU.
#include "kernels/conv_avx2.h"

#include <algorithm>
#include <cstring>

#include "kernels/cpu_isa.h"
#include "ggml-cpu.h"
#include "common.h"

#if defined(__x86_64__)
#define QT_AVX2 1
#include <immintrin.h>

#include "kernels/avx2_math.h"
#endif

namespace qt {

namespace {
constexpr int MT = 6;  // time steps per register block (6 x 2 accumulators + 2 weight vectors + 1 broadcast)
}  // namespace

void Avx2Conv::set_epilogue(const float *b, const float *ea, const float *ib) {
    const size_t padded = (size_t)n_blocks() * OB;
    auto padded_copy = [&](const float *src, std::vector<float> &dst) {
        dst.clear();
        if (!src) return;
        dst.assign(padded, 0.0f);
        std::copy(src, src + cout, dst.begin());
    };
    padded_copy(b, bias);
    padded_copy(ea, snake_ea);
    padded_copy(ib, snake_ib);
    if (snake_ea.empty() != snake_ib.empty()) throw Error("internal error: SnakeBeta needs both constants");
}

#ifdef QT_AVX2

namespace {

struct ConvArgs {
    const Avx2Conv *w;
    const char *tail;     // input rows 0 .. L-1 (the carried left context), or null
    size_t ts;            // bytes between tail rows
    int64_t L;
    const char *x;        // input rows L ..
    size_t xs;            // bytes between input rows
    float *y;             // output rows of cout floats
    const float *res;     // residual rows of cout floats, or null
    int64_t T;

    const float *row(int64_t r) const {
        return (const float *)(r < L ? tail + (size_t)r * ts : x + (size_t)(r - L) * xs);
    }
};

// Epilogue of one 8-lane output vector (outputs o.., time t): bias, residual, snake; stores the first n lanes.
__attribute__((target("avx2,fma"), always_inline)) inline void finish(const ConvArgs &a, __m256 v, int64_t t, int o,
                                                                      int n) {
    const Avx2Conv &w = *a.w;
    const __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    if (!w.bias.empty()) v = _mm256_add_ps(v, _mm256_loadu_ps(&w.bias[o]));
    if (a.res) {
        const float *r = a.res + (size_t)t * w.cout + o;
        v = _mm256_add_ps(v, n == 8 ? _mm256_loadu_ps(r) : _mm256_maskload_ps(r, lanes));
    }
    if (!w.snake_ea.empty()) v = snake8(v, _mm256_loadu_ps(&w.snake_ea[o]), _mm256_loadu_ps(&w.snake_ib[o]));
    float *y = a.y + (size_t)t * w.cout + o;
    if (n == 8) _mm256_storeu_ps(y, v);
    else _mm256_maskstore_ps(y, lanes, v);
}

// The 16 weights of one (tap, input channel) of a block as two 8-lane FP32 vectors (outputs o0.. and o0+8..):
// BF16 pairs widened by a shift and a mask, or F32 as stored.
struct Bf16Weights {
    using T = uint16_t;
    static const T *packed(const Avx2Conv &w) { return w.packed.data(); }
    __attribute__((target("avx2,fma"), always_inline)) static void load(const T *p, __m256 &lo, __m256 &hi) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)p);
        lo = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
        hi = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xFFFF0000u)));
    }
};
struct F32Weights {
    using T = float;
    static const T *packed(const Avx2Conv &w) { return w.packed_f32.data(); }
    __attribute__((target("avx2,fma"), always_inline)) static void load(const T *p, __m256 &lo, __m256 &hi) {
        lo = _mm256_loadu_ps(p);
        hi = _mm256_loadu_ps(p + 8);
    }
};

// Outputs ob*16 .. +15 at times t0 .. t0+R-1: R x 2 accumulators over every tap and input channel.
template <int R, class W>
__attribute__((target("avx2,fma"))) void conv_tile(const ConvArgs &a, int64_t t0, int ob) {
    const Avx2Conv &w = *a.w;
    const int cin = w.cin;
    const typename W::T *wp = W::packed(w) + (size_t)ob * w.k * cin * Avx2Conv::OB;
    // (the loops over r are unrolled so that the accumulators live in registers; GCC does not at -O2)
    __m256 acc[R][2];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int j = 0; j < w.k; j++) {
        const float *xr[R];
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) xr[r] = a.row((t0 + r) * w.stride + (int64_t)j * w.dil);
        for (int c = 0; c < cin; c++, wp += Avx2Conv::OB) {
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
    const int o0 = ob * Avx2Conv::OB;
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const int o = o0 + 8 * h, n = std::min(8, w.cout - o);
            if (n > 0) finish(a, acc[r][h], t0 + r, o, n);
        }
}

using TileFn = void (*)(const ConvArgs &, int64_t, int);
template <class W>
constexpr TileFn tile_fns[MT + 1] = {nullptr,           conv_tile<1, W>, conv_tile<2, W>, conv_tile<3, W>,
                                     conv_tile<4, W>, conv_tile<5, W>, conv_tile<6, W>};

// Work items: (block of 16 outputs, chunk of time), output-major, so that a thread's consecutive items share their
// weights. Time is split only as far as needed to give every thread a few items.
void conv_items(const ConvArgs &a, int ith, int nth) {
    const int n_ob = a.w->n_blocks();
    const int64_t n_tb = (a.T + MT - 1) / MT;
    const int64_t n_tc = std::max<int64_t>(1, std::min<int64_t>(n_tb, (4 * (int64_t)nth + n_ob - 1) / n_ob));
    const int64_t tb_per_chunk = (n_tb + n_tc - 1) / n_tc;
    const int64_t n_items = (int64_t)n_ob * n_tc;
    const auto [i0, i1] = thread_range(n_items, ith, nth);
    const TileFn *fns = a.w->packed_f32.empty() ? tile_fns<Bf16Weights> : tile_fns<F32Weights>;
    for (int64_t it = i0; it < i1; it++) {
        const int ob = (int)(it / n_tc);
        const int64_t t_begin = (it % n_tc) * tb_per_chunk * MT, t_end = std::min(a.T, t_begin + tb_per_chunk * MT);
        for (int64_t t = t_begin; t < t_end; t += MT) fns[std::min<int64_t>(MT, t_end - t)](a, t, ob);
    }
}

// src: x, residual (or null), tail (or null)
void conv_op(ggml_tensor *dst, int ith, int nth, void *ud) {
    const ggml_tensor *x = dst->src[0], *res = dst->src[1], *tail = dst->src[2];
    const ConvArgs a = {(const Avx2Conv *)ud,
                        tail ? (const char *)tail->data : nullptr,
                        tail ? tail->nb[1] : 0,
                        tail ? tail->ne[1] : 0,
                        (const char *)x->data,
                        x->nb[1],
                        (float *)dst->data,
                        res ? (const float *)res->data : nullptr,
                        dst->ne[1]};
    conv_items(a, ith, nth);
}

// dst = tail (in place) <- the last L rows of [tail; x]; the third source (the conv that read the old tail) only
// orders it.
void keep_tail(ggml_tensor *dst, const ggml_tensor *, const ggml_tensor *x, const ggml_tensor *, int ith, int, void *) {
    if (ith != 0) return;
    const int64_t L = dst->ne[1], T = x->ne[1];
    const size_t row = (size_t)dst->ne[0] * sizeof(float);
    char *tail = (char *)dst->data;
    const char *xd = (const char *)x->data;
    if (T >= L) {
        memcpy(tail, xd + (size_t)(T - L) * row, (size_t)L * row);
        return;
    }
    memmove(tail, tail + (size_t)T * row, (size_t)(L - T) * row);
    memcpy(tail + (size_t)(L - T) * row, xd, (size_t)T * row);
}

ggml_tensor *conv_node(ggml_context *ctx, ggml_tensor *x, ggml_tensor *tail, const Avx2Conv &w, int64_t T,
                       ggml_tensor *residual) {
    const int64_t L = tail ? tail->ne[1] : 0;
    if (x->type != GGML_TYPE_F32 || !ggml_is_contiguous(x) || x->ne[0] != w.cin || T < 1 || L + x->ne[1] < w.rows_read(T))
        throw Error("internal error: AVX2 conv input has the wrong shape");
    if (tail && (tail->type != GGML_TYPE_F32 || !ggml_is_contiguous(tail) || tail->ne[0] != w.cin))
        throw Error("internal error: AVX2 conv left context has the wrong shape");
    if (residual && (residual->type != GGML_TYPE_F32 || !ggml_is_contiguous(residual) || residual->ne[0] != w.cout ||
                     residual->ne[1] != T))
        throw Error("internal error: AVX2 conv residual has the wrong shape");
    ggml_tensor *args[] = {x, residual, tail};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, w.cout, T, 1, 1, args, 3, conv_op, GGML_N_TASKS_MAX, (void *)&w);
}

}  // namespace

bool avx2_conv_available() { return isa_at_least(IsaLevel::avx2); }

__attribute__((target("avx2,fma"))) void snake_row_avx2(const float *x, const float *bias, const float *ea,
                                                         const float *ib, int64_t C, float *y) {
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) {
        __m256 v = _mm256_loadu_ps(x + c);
        if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + c));
        _mm256_storeu_ps(y + c, snake8(v, _mm256_loadu_ps(ea + c), _mm256_loadu_ps(ib + c)));
    }
    if (c == C) return;
    const __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(C - c)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 v = _mm256_maskload_ps(x + c, lanes);
    if (bias) v = _mm256_add_ps(v, _mm256_maskload_ps(bias + c, lanes));
    _mm256_maskstore_ps(y + c, lanes, snake8(v, _mm256_maskload_ps(ea + c, lanes), _mm256_maskload_ps(ib + c, lanes)));
}

__attribute__((target("avx2,fma"))) void elu_avx2(const float *x, int64_t n, float *y) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, elu8(_mm256_loadu_ps(x + i)));
    if (i == n) return;
    const __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - i)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    _mm256_maskstore_ps(y + i, lanes, elu8(_mm256_maskload_ps(x + i, lanes)));
}

ggml_tensor *avx2_conv(ggml_context *ctx, ggml_tensor *x, const Avx2Conv &w, int64_t T, ggml_tensor *residual) {
    return conv_node(ctx, x, nullptr, w, T, residual);
}

ggml_tensor *avx2_causal_conv(ggml_context *ctx, ggml_cgraph *gf, ggml_tensor *x, ggml_tensor *tail, const Avx2Conv &w,
                              ggml_tensor *residual) {
    if (tail->ne[1] != (int64_t)(w.k - 1) * w.dil) throw Error("internal error: AVX2 conv left context has the wrong length");
    ggml_tensor *y = conv_node(ctx, x, tail, w, x->ne[1], residual);
    ggml_build_forward_expand(gf, ggml_map_custom3_inplace(ctx, tail, x, y, keep_tail, 1, nullptr));
    return y;
}

#else

bool avx2_conv_available() { return false; }

void snake_row_avx2(const float *, const float *, const float *, const float *, int64_t, float *) {
    throw Error("internal error: AVX2 is not available on this platform");
}

void elu_avx2(const float *, int64_t, float *) { throw Error("internal error: AVX2 is not available on this platform"); }

ggml_tensor *avx2_conv(ggml_context *, ggml_tensor *, const Avx2Conv &, int64_t, ggml_tensor *) {
    throw Error("internal error: AVX2 is not available on this platform");
}

ggml_tensor *avx2_causal_conv(ggml_context *, ggml_cgraph *, ggml_tensor *, ggml_tensor *, const Avx2Conv &, ggml_tensor *) {
    throw Error("internal error: AVX2 is not available on this platform");
}

#endif

}  // namespace qt

// encoder_tile_ops.cpp: see encoder_tile_ops.h. Vector code is compiled for AVX-512 (+BF16) and the tile code for AMX through
// function target attributes, and only ever runs after amx_bf16_available() said yes.
#include "kernels/encoder_tile_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/avx512_math.h"
#include "common.h"

#if defined(__x86_64__) && defined(__linux__)
#define QT_TILE_OPS 1
#include <immintrin.h>
#endif

namespace qt {

#ifdef QT_TILE_OPS

#define QT_V512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))

namespace {

// A conv output stored as the next conv's BF16 input: its first `left` rows are the carried tail (zeros without
// one) and the rows after the T outputs zeros (the next conv's right padding). One thread writes them.
void fill_bf16_context(ggml_tensor *dst, const ggml_tensor *tail, int64_t left, int64_t T, int64_t channels) {
    const size_t row = (size_t)channels * sizeof(uint16_t);
    if (tail)
        memcpy(dst->data, tail->data, (size_t)left * row);
    else
        memset(dst->data, 0, (size_t)left * row);
    memset((char *)dst->data + (size_t)(left + T) * row, 0, (size_t)(dst->ne[1] - left - T) * row);
}

// ------------------------------------------------------------------------------------------------ vector math

// ELU (alpha 1): x > 0 ? x : exp(x) - 1. The subtraction's cancellation near 0 costs an absolute error of about
// 1e-7, far below the BF16 rounding every caller applies next (a relative 2^-9).
QT_V512 inline __m512 v_elu(__m512 x) {
    const __m512 zero = _mm512_setzero_ps();
    const __m512 e = _mm512_sub_ps(exp16(_mm512_min_ps(x, zero)), _mm512_set1_ps(1.0f));
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, zero, _CMP_GT_OQ), e, x);
}

// GELU (erf form): 0.5 x (1 + erf(x / sqrt 2)), erf by Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7).
QT_V512 inline __m512 v_gelu(__m512 x) {
    const __m512 z = _mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f));
    const __m512 az = _mm512_abs_ps(z);
    // t = 1 / (1 + p |z|): the 2^-14 reciprocal estimate and one Newton step
    const __m512 den = _mm512_fmadd_ps(az, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.0f));
    __m512 t = _mm512_rcp14_ps(den);
    t = _mm512_mul_ps(t, _mm512_fnmadd_ps(den, t, _mm512_set1_ps(2.0f)));
    __m512 p = _mm512_set1_ps(1.061405429f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
    p = _mm512_mul_ps(p, t);
    const __m512 e = _mm512_sub_ps(_mm512_set1_ps(1.0f),
                                   _mm512_mul_ps(p, exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(az, az)))));
    const __m512 erf = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_LT_OQ), e,
                                            _mm512_sub_ps(_mm512_setzero_ps(), e));
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(_mm512_set1_ps(1.0f), erf));
}

// tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|).
QT_V512 inline __m512 v_tanh(__m512 x) {
    const __m512 e = exp16(_mm512_mul_ps(_mm512_abs_ps(x), _mm512_set1_ps(-2.0f)));
    const __m512 r = _mm512_div_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), e), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32((int)0x80000000u));
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(r), sign));
}

QT_V512 inline __m512 v_act(__m512 x, Act a) {
    switch (a) {
        case Act::Elu: return v_elu(x);
        case Act::Gelu: return v_gelu(x);
        case Act::Relu: return _mm512_max_ps(x, _mm512_setzero_ps());
        case Act::Tanh: return v_tanh(x);
        default: return x;
    }
}

// out[0..n) = bf16(act(x + add)) (add may be null), round to nearest even.
QT_V512 void convert_row(const float *x, const float *add, int64_t n, Act act, uint16_t *out) {
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
        if (add) {
            a = _mm512_add_ps(a, _mm512_loadu_ps(add + i));
            b = _mm512_add_ps(b, _mm512_loadu_ps(add + i + 16));
        }
        const __m512bh v = _mm512_cvtne2ps_pbh(v_act(b, act), v_act(a, act));
        _mm512_storeu_si512((void *)(out + i), (__m512i)v);
    }
    for (; i < n; i += 16) {
        const __mmask16 m = tail_mask16(n - i);
        __m512 a = _mm512_maskz_loadu_ps(m, x + i);
        if (add) a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(m, add + i));
        const __m256bh v = _mm512_cvtneps_pbh(v_act(a, act));
        _mm256_mask_storeu_epi16((void *)(out + i), m, (__m256i)v);
    }
}

QT_V512 inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

// out = bf16(act((x - mean) / sqrt(var + eps) * w + b)) over one row of n values.
QT_V512 void layer_norm_row(const float *x, const float *w, const float *b, int64_t n, float eps, Act act,
                            uint16_t *out) {
    __m512 s = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(tail_mask16(n - i), x + i));
    const float mean = hsum(s) / (float)n;
    const __m512 mu = _mm512_set1_ps(mean);
    __m512 v = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask16(n - i);
        const __m512 d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, x + i), mu);
        v = _mm512_fmadd_ps(d, d, v);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / std::sqrt(hsum(v) / (float)n + eps));
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask16(n - i);
        __m512 y = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mu), inv);
        y = _mm512_fmadd_ps(y, _mm512_maskz_loadu_ps(m, w + i), _mm512_maskz_loadu_ps(m, b + i));
        _mm256_mask_storeu_epi16((void *)(out + i), m, (__m256i)_mm512_cvtneps_pbh(v_act(y, act)));
    }
}

QT_V512 void op_tile_input(ggml_tensor *dst, int ith, int nth, void *ud) {
    const TileInputSpec &s = *(const TileInputSpec *)ud;
    const ggml_tensor *x0 = dst->src[0];
    const ggml_tensor *add = s.has_add ? dst->src[s.n_x] : nullptr;
    const ggml_tensor *tail = s.has_tail ? dst->src[s.n_x + (s.has_add ? 1 : 0) + (s.layer_norm ? 2 : 0)] : nullptr;
    const int64_t T = x0->ne[1], C = dst->ne[0], cols = dst->ne[1];
    const auto [r0, r1] = thread_range(cols, ith, nth);
    for (int64_t r = r0; r < r1; r++) {
        uint16_t *out = (uint16_t *)((char *)dst->data + r * dst->nb[1]);
        int64_t col = -1;
        if (r < s.left) {
            if (s.edge == Edge::Reflect)
                col = s.left - r;
            else if (s.edge == Edge::Replicate)
                col = 0;
            else if (tail) {
                memcpy(out, (const char *)tail->data + r * tail->nb[1], C * sizeof(uint16_t));
                continue;
            }
        } else if (r < s.left + T) {
            col = r - s.left;
        } else if (r < s.left + T + s.right_fill) {
            if (s.edge == Edge::Reflect)
                col = T - 2 - (r - s.left - T);
            else if (s.edge == Edge::Replicate)
                col = T - 1;
        }
        if (col < 0) {
            memset(out, 0, C * sizeof(uint16_t));
            continue;
        }
        if (s.layer_norm) {
            const float *p = (const float *)((const char *)x0->data + col * x0->nb[1]);
            layer_norm_row(p, (const float *)dst->src[1]->data, (const float *)dst->src[2]->data, C, s.eps, s.act, out);
            continue;
        }
        int64_t off = 0;
        for (int i = 0; i < s.n_x; i++) {
            const ggml_tensor *x = dst->src[i];
            const float *p = (const float *)((const char *)x->data + col * x->nb[1]);
            const float *pa = add ? (const float *)((const char *)add->data + col * add->nb[1]) : nullptr;
            convert_row(p, pa, x->ne[0], s.act, out + off);
            off += x->ne[0];
        }
    }
}

// ------------------------------------------------------------------------------------------------ tile conv

using namespace amx_geometry;

// The epilogue of one 16 x 16 accumulator: rows time steps tr.., outputs o0..o0+15. The residual is read (res)
// or computed from a single-channel conv (x1: its input from time step tr on, w1: its taps at o0, stride c1).
struct Epi {
    const float *bias, *scale, *res;
    size_t rstride;
    const float *x1, *w1, *b1;
    int k1;
    size_t c1;
    bool relu;
    Act act;
};

QT_V512 inline __m512 epi_value(const float *part, int64_t r, const Epi &e, __m512 b, __m512 sc) {
    __m512 v = _mm512_add_ps(_mm512_load_ps(part + r * 16), b);
    if (e.scale) v = _mm512_mul_ps(v, sc);
    if (e.res) v = _mm512_add_ps(v, _mm512_loadu_ps(e.res + r * e.rstride));
    if (e.x1) {
        __m512 a = e.b1 ? _mm512_loadu_ps(e.b1) : _mm512_setzero_ps();
        for (int j = 0; j < e.k1; j++)
            a = _mm512_fmadd_ps(_mm512_set1_ps(e.x1[r + j]), _mm512_loadu_ps(e.w1 + j * e.c1), a);
        v = _mm512_add_ps(v, a);
    }
    if (e.relu) v = _mm512_max_ps(v, _mm512_setzero_ps());
    return v;
}

QT_V512 inline void epilogue(const float *part, int64_t rows, float *out, size_t ostride, const Epi &e) {
    const __m512 b = e.bias ? _mm512_loadu_ps(e.bias) : _mm512_setzero_ps();
    const __m512 sc = e.scale ? _mm512_loadu_ps(e.scale) : _mm512_set1_ps(1.0f);
    for (int64_t r = 0; r < rows; r++) _mm512_storeu_ps(out + r * ostride, epi_value(part, r, e, b, sc));
}

// The same, stored as BF16 after the activation.
QT_V512 inline void epilogue_bf16(const float *part, int64_t rows, uint16_t *out, size_t ostride, const Epi &e) {
    const __m512 b = e.bias ? _mm512_loadu_ps(e.bias) : _mm512_setzero_ps();
    const __m512 sc = e.scale ? _mm512_loadu_ps(e.scale) : _mm512_set1_ps(1.0f);
    for (int64_t r = 0; r < rows; r++)
        _mm256_storeu_si256((__m256i *)(out + r * ostride),
                            (__m256i)_mm512_cvtneps_pbh(v_act(epi_value(part, r, e, b, sc), e.act)));
}

__attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma"))) void op_tile_conv(
    ggml_tensor *dst, int ith, int nth, void *ud) {
    const TileConvSpec &s = *(const TileConvSpec *)ud;
    const AmxConv &w = *s.w;
    const ggml_tensor *x = dst->src[0];
    int si = 1;
    const ggml_tensor *bias = s.has_bias ? dst->src[si++] : nullptr;
    const ggml_tensor *scale = s.has_scale ? dst->src[si++] : nullptr;
    const ggml_tensor *res = s.has_res ? dst->src[si++] : nullptr;
    const ggml_tensor *tail = s.has_tail ? dst->src[si++] : nullptr;
    const ggml_tensor *x1 = s.res1 ? dst->src[si++] : nullptr;
    const ggml_tensor *b1 = s.res1 && s.res1_bias ? dst->src[si++] : nullptr;
    const uint16_t *X = (const uint16_t *)x->data;
    const int64_t T = s.T;
    float *Y = s.out_bf16 ? nullptr : (float *)dst->data;
    uint16_t *Yb = s.out_bf16 ? (uint16_t *)dst->data + (size_t)s.out_left * w.cout : nullptr;
    if (s.out_bf16 && ith == 0) fill_bf16_context(dst, tail, s.out_left, T, w.cout);
    const int64_t n_tb = (T + TB - 1) / TB, n_ob = w.cout / OB;
    const auto [i0, i1] = thread_range(n_tb * n_ob, ith, nth);
    if (i0 >= i1) return;

    const TileConfig cfg = tile_config(8);
    _tile_loadconfig(&cfg);
    const size_t ys = (size_t)w.cout;
    const size_t rs = res ? res->nb[1] / sizeof(float) : 0;
    alignas(64) float part[4][TILE_ROWS * 16];
    // Whichever operand is larger stays in cache: with more weight than input bytes, walk the time blocks for
    // each output block (each thread keeps its share of the weights), else the output blocks for each time block.
    const bool ob_major = (double)w.packed.size() > (double)w.rows_read(T) * w.cin;
    for (int64_t it = i0; it < i1; it++) {
        const int64_t t0 = (ob_major ? it % n_tb : it / n_ob) * TB, o0 = (ob_major ? it / n_tb : it % n_ob) * OB;
        amx_conv_block(w, X, t0, o0);
        _tile_stored(0, part[0], TILE_BYTES);
        _tile_stored(1, part[1], TILE_BYTES);
        _tile_stored(2, part[2], TILE_BYTES);
        _tile_stored(3, part[3], TILE_BYTES);
        // accumulator (a, b): time rows t0 + 16a, outputs o0 + 16b; rows past T are dropped
        for (int a = 0; a < 2; a++) {
            const int64_t tr = t0 + a * TILE_ROWS, rows = std::min<int64_t>(TILE_ROWS, T - tr);
            if (rows <= 0) continue;
            for (int bb = 0; bb < 2; bb++) {
                const int64_t o = o0 + bb * 16;
                Epi e;
                e.bias = bias ? (const float *)bias->data + o : nullptr;
                e.scale = scale ? (const float *)scale->data + o : nullptr;
                e.res = res ? (const float *)res->data + (size_t)tr * rs + o : nullptr;
                e.rstride = rs;
                e.x1 = x1 ? (const float *)x1->data + tr : nullptr;
                e.w1 = x1 ? s.res1->w + o : nullptr;
                e.b1 = b1 ? (const float *)b1->data + o : nullptr;
                e.k1 = x1 ? s.res1->k : 0;
                e.c1 = x1 ? (size_t)s.res1->cout : 0;
                e.relu = s.relu;
                e.act = s.out_act;
                if (Yb)
                    epilogue_bf16(part[a * 2 + bb], rows, Yb + (size_t)tr * ys + o, ys, e);
                else
                    epilogue(part[a * 2 + bb], rows, Y + (size_t)tr * ys + o, ys, e);
            }
        }
    }
    _tile_release();
}

// ------------------------------------------------------------------------------------------------ others

QT_V512 void op_conv_from1(ggml_tensor *dst, int ith, int nth, void *ud) {
    const From1Spec &s = *(const From1Spec *)ud;
    const float *x = (const float *)dst->src[0]->data;
    const float *bias = dst->src[1] ? (const float *)dst->src[1]->data : nullptr;
    const ggml_tensor *tail = s.has_tail ? dst->src[2] : nullptr;
    const int64_t T = s.out_bf16 ? s.T : dst->ne[1];
    if (s.out_bf16 && ith == 0) fill_bf16_context(dst, tail, s.left, T, s.cout);
    const auto [t0, t1] = thread_range(T, ith, nth);
    for (int64_t t = t0; t < t1; t++) {
        float *out = s.out_bf16 ? nullptr : (float *)((char *)dst->data + t * dst->nb[1]);
        uint16_t *outb = s.out_bf16 ? (uint16_t *)((char *)dst->data + (s.left + t) * dst->nb[1]) : nullptr;
        for (int o = 0; o < s.cout; o += 16) {
            const __mmask16 m = tail_mask16(s.cout - o);
            __m512 acc = bias ? _mm512_maskz_loadu_ps(m, bias + o) : _mm512_setzero_ps();
            for (int j = 0; j < s.k; j++)
                acc = _mm512_fmadd_ps(_mm512_set1_ps(x[t + j]), _mm512_maskz_loadu_ps(m, s.w + (size_t)j * s.cout + o),
                                      acc);
            if (outb)
                _mm256_mask_storeu_epi16((void *)(outb + o), m, (__m256i)_mm512_cvtneps_pbh(v_act(acc, s.act)));
            else
                _mm512_mask_storeu_ps(out + o, m, acc);
        }
    }
}

// Each thread takes a range of channels (whole blocks of 16) and walks the time steps in order (rows of
// time-major activations are contiguous): max of the logits, then sum of exp and weighted sum, then the weighted
// squared deviation (the reference's softmax, mean and clamped std, in three passes over time).
QT_V512 void op_time_stats(ggml_tensor *dst, int ith, int nth, void *ud) {
    const StatsSpec &s = *(const StatsSpec *)ud;
    const ggml_tensor *x = dst->src[0], *lg = s.weighted ? dst->src[1] : nullptr;
    const int64_t C = x->ne[0], T = x->ne[1], nb = (C + 15) / 16;
    const auto [b0, b1] = thread_range(nb, ith, nth);
    if (b0 >= b1) return;
    const int64_t c0 = b0 * 16, n = std::min(C, b1 * 16) - c0, nv = b1 - b0;
    // per-channel accumulators: max, sum of weights, weighted sum (then the mean), weighted squared deviation
    std::vector<float> buf((size_t)nv * 64 + 16);
    float *mx = (float *)(((uintptr_t)buf.data() + 63) & ~(uintptr_t)63), *sw = mx + nv * 16, *swx = sw + nv * 16,
          *sv = swx + nv * 16;
    auto row = [&](const ggml_tensor *t, int64_t i) {
        return (const float *)((const char *)t->data + i * t->nb[1]) + c0;
    };
#define mask(v) tail_mask16(n - (v) * 16)
#define ld(p) _mm512_load_ps(p)
#define st(p, v) _mm512_store_ps(p, v)
    for (int64_t v = 0; v < nv; v++) {
        st(mx + v * 16, _mm512_set1_ps(-INFINITY));
        st(sw + v * 16, _mm512_setzero_ps());
        st(swx + v * 16, _mm512_setzero_ps());
        st(sv + v * 16, _mm512_setzero_ps());
    }
    if (lg) {
        for (int64_t t = 0; t < T; t++) {
            const float *l = row(lg, t);
            for (int64_t v = 0; v < nv; v++)
                st(mx + v * 16, _mm512_max_ps(ld(mx + v * 16), _mm512_maskz_loadu_ps(mask(v), l + v * 16)));
        }
        for (int64_t t = 0; t < T; t++) {
            const float *l = row(lg, t), *xr = row(x, t);
            for (int64_t v = 0; v < nv; v++) {
                const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask(v), l + v * 16), ld(mx + v * 16)));
                st(sw + v * 16, _mm512_add_ps(ld(sw + v * 16), e));
                st(swx + v * 16, _mm512_fmadd_ps(e, _mm512_maskz_loadu_ps(mask(v), xr + v * 16), ld(swx + v * 16)));
            }
        }
    } else {
        for (int64_t t = 0; t < T; t++) {
            const float *xr = row(x, t);
            for (int64_t v = 0; v < nv; v++)
                st(swx + v * 16, _mm512_add_ps(ld(swx + v * 16), _mm512_maskz_loadu_ps(mask(v), xr + v * 16)));
        }
        for (int64_t v = 0; v < nv; v++) st(sw + v * 16, _mm512_set1_ps((float)T));
    }
    for (int64_t v = 0; v < nv; v++) st(swx + v * 16, _mm512_div_ps(ld(swx + v * 16), ld(sw + v * 16)));  // the means
    for (int64_t t = 0; t < T; t++) {
        const float *xr = row(x, t), *l = lg ? row(lg, t) : nullptr;
        for (int64_t v = 0; v < nv; v++) {
            const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(mask(v), xr + v * 16), ld(swx + v * 16));
            const __m512 dd = _mm512_mul_ps(d, d);
            st(sv + v * 16,
               l ? _mm512_fmadd_ps(exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask(v), l + v * 16), ld(mx + v * 16))),
                                   dd, ld(sv + v * 16))
                 : _mm512_add_ps(ld(sv + v * 16), dd));
        }
    }
    float *mean = (float *)dst->data + c0, *sd = (float *)((char *)dst->data + dst->nb[1]) + c0;
    for (int64_t v = 0; v < nv; v++) {
        const __m512 var = _mm512_max_ps(_mm512_div_ps(ld(sv + v * 16), ld(sw + v * 16)), _mm512_set1_ps(1e-12f));
        _mm512_mask_storeu_ps(mean + v * 16, mask(v), ld(swx + v * 16));
        _mm512_mask_storeu_ps(sd + v * 16, mask(v), _mm512_sqrt_ps(var));
    }
#undef mask
#undef ld
#undef st
}

QT_V512 void op_time_mean(ggml_tensor *dst, int ith, int nth, void *) {
    const ggml_tensor *x = dst->src[0];
    const int64_t C = x->ne[0], T = x->ne[1], nb = (C + 15) / 16;
    const auto [b0, b1] = thread_range(nb, ith, nth);
    if (b0 >= b1) return;
    const int64_t c0 = b0 * 16, n = std::min(C, b1 * 16) - c0, nv = b1 - b0;
    std::vector<float> acc((size_t)nv * 16, 0.0f);
    for (int64_t t = 0; t < T; t++) {
        const float *xr = (const float *)((const char *)x->data + t * x->nb[1]) + c0;
        for (int64_t v = 0; v < nv; v++)
            _mm512_storeu_ps(&acc[v * 16], _mm512_add_ps(_mm512_loadu_ps(&acc[v * 16]),
                                                         _mm512_maskz_loadu_ps(tail_mask16(n - v * 16), xr + v * 16)));
    }
    for (int64_t v = 0; v < nv; v++)
        _mm512_mask_storeu_ps((float *)dst->data + c0 + v * 16, tail_mask16(n - v * 16),
                              _mm512_div_ps(_mm512_loadu_ps(&acc[v * 16]), _mm512_set1_ps((float)T)));
}

// NeoX RoPE of the first n_head + n_head_kv heads of each row.
QT_V512 void op_rope_qk(ggml_tensor *dst, int ith, int nth, void *ud) {
    const AttnSpec &s = *(const AttnSpec *)ud;
    const ggml_tensor *x = dst->src[0], *cs = dst->src[1], *sn = dst->src[2];
    const int64_t T = dst->ne[1], half = s.head_dim / 2, nh = s.n_head + s.n_head_kv;
    const auto [t0, t1] = thread_range(T, ith, nth);
    for (int64_t t = t0; t < t1; t++) {
        const float *in = (const float *)((const char *)x->data + t * x->nb[1]);
        float *out = (float *)((char *)dst->data + t * dst->nb[1]);
        const float *c = (const float *)((const char *)cs->data + t * cs->nb[2]);
        const float *sv = (const float *)((const char *)sn->data + t * sn->nb[2]);
        for (int64_t h = 0; h < nh; h++) {
            const float *a = in + h * s.head_dim, *b = a + half;
            float *oa = out + h * s.head_dim, *ob = oa + half;
            for (int64_t i = 0; i < half; i += 16) {
                const __mmask16 m = tail_mask16(half - i);
                const __m512 x1 = _mm512_maskz_loadu_ps(m, a + i), x2 = _mm512_maskz_loadu_ps(m, b + i);
                const __m512 cc = _mm512_maskz_loadu_ps(m, c + i), ss = _mm512_maskz_loadu_ps(m, sv + i);
                _mm512_mask_storeu_ps(oa + i, m, _mm512_sub_ps(_mm512_mul_ps(x1, cc), _mm512_mul_ps(x2, ss)));
                _mm512_mask_storeu_ps(ob + i, m, _mm512_add_ps(_mm512_mul_ps(x2, cc), _mm512_mul_ps(x1, ss)));
            }
        }
    }
}

// One (head, block of 16 queries): scores of the 16 queries (vector lanes) against every key up to the block's
// last query, causal mask, softmax per lane, then the weighted sum of the values, 4 queries at a time.
template <int NV>
QT_V512 void attend_block(const AttnSpec &s, const ggml_tensor *qk, const ggml_tensor *v, ggml_tensor *dst, int64_t h,
                          int64_t q0, int64_t nq, float *S) {
    constexpr int HD = NV * 16;
    const int64_t kvh = h / (s.n_head / s.n_head_kv), nk = q0 + nq;
    const size_t koff = (size_t)(s.n_head + kvh) * HD, qoff = (size_t)h * HD, voff = (size_t)kvh * HD;
    auto qrow = [&](int64_t t) { return (const float *)((const char *)qk->data + t * qk->nb[1]); };
    auto vrow = [&](int64_t t) { return (const float *)((const char *)v->data + t * v->nb[1]); };
    alignas(64) float Qt[HD * 16];
    for (int d = 0; d < HD; d++)
        for (int i = 0; i < 16; i++) Qt[d * 16 + i] = i < nq ? qrow(q0 + i)[qoff + d] * s.scale : 0.0f;
    // 8 keys at a time: 8 independent FMA chains (the FMA latency is 4 cycles)
    int64_t j = 0;
    for (; j + 8 <= nk; j += 8) {
        const float *kr[8];
        for (int u = 0; u < 8; u++) kr[u] = qrow(j + u) + koff;
        __m512 a[8];
#pragma GCC unroll 8
        for (int u = 0; u < 8; u++) a[u] = _mm512_setzero_ps();
        for (int d = 0; d < HD; d++) {
            const __m512 q = _mm512_load_ps(Qt + d * 16);
#pragma GCC unroll 8
            for (int u = 0; u < 8; u++) a[u] = _mm512_fmadd_ps(q, _mm512_set1_ps(kr[u][d]), a[u]);
        }
#pragma GCC unroll 8
        for (int u = 0; u < 8; u++) _mm512_store_ps(S + (j + u) * 16, a[u]);
    }
    for (; j < nk; j++) {
        const float *k0 = qrow(j) + koff;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0;
        for (int d = 0; d < HD; d += 2) {
            a0 = _mm512_fmadd_ps(_mm512_load_ps(Qt + d * 16), _mm512_set1_ps(k0[d]), a0);
            a1 = _mm512_fmadd_ps(_mm512_load_ps(Qt + (d + 1) * 16), _mm512_set1_ps(k0[d + 1]), a1);
        }
        _mm512_store_ps(S + j * 16, _mm512_add_ps(a0, a1));
    }
    // causal mask: key q0 + r is seen by queries i >= r
    for (int64_t r = 1; r < 16 && q0 + r < nk; r++) {
        const __mmask16 hide = (__mmask16)((1u << r) - 1);
        _mm512_store_ps(S + (q0 + r) * 16,
                        _mm512_mask_blend_ps(hide, _mm512_load_ps(S + (q0 + r) * 16), _mm512_set1_ps(-INFINITY)));
    }
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t jj = 0; jj < nk; jj++) mx = _mm512_max_ps(mx, _mm512_load_ps(S + jj * 16));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t jj = 0; jj < nk; jj++) {
        const __m512 e = exp16(_mm512_sub_ps(_mm512_load_ps(S + jj * 16), mx));
        _mm512_store_ps(S + jj * 16, e);
        sum = _mm512_add_ps(sum, e);
    }
    alignas(64) float inv[16];
    _mm512_store_ps(inv, _mm512_div_ps(_mm512_set1_ps(1.0f), sum));
    // G queries at a time, G * NV accumulators in registers
    constexpr int G = 16 / NV;
    for (int64_t i0 = 0; i0 < nq; i0 += G) {
        __m512 acc[G][NV];
#pragma GCC unroll 16
        for (int a = 0; a < G; a++)
#pragma GCC unroll 8
            for (int b = 0; b < NV; b++) acc[a][b] = _mm512_setzero_ps();
        const int64_t last = std::min<int64_t>(nk, q0 + i0 + G);  // keys past the group's last query weigh 0
        for (int64_t jj = 0; jj < last; jj++) {
            const float *vr = vrow(jj) + voff;
            __m512 vv[NV];
#pragma GCC unroll 8
            for (int b = 0; b < NV; b++) vv[b] = _mm512_loadu_ps(vr + b * 16);
            const float *p = S + jj * 16 + i0;
#pragma GCC unroll 16
            for (int a = 0; a < G; a++) {
                const __m512 pa = _mm512_set1_ps(p[a]);
#pragma GCC unroll 8
                for (int b = 0; b < NV; b++) acc[a][b] = _mm512_fmadd_ps(pa, vv[b], acc[a][b]);
            }
        }
#pragma GCC unroll 16
        for (int a = 0; a < G; a++) {
            if (i0 + a >= nq) break;
            float *out = (float *)((char *)dst->data + (q0 + i0 + a) * dst->nb[1]) + qoff;
            const __m512 sc = _mm512_set1_ps(inv[i0 + a]);
#pragma GCC unroll 8
            for (int b = 0; b < NV; b++) _mm512_storeu_ps(out + b * 16, _mm512_mul_ps(acc[a][b], sc));
        }
    }
}

QT_V512 void op_attention(ggml_tensor *dst, int ith, int nth, void *ud) {
    const AttnSpec &s = *(const AttnSpec *)ud;
    const ggml_tensor *qk = dst->src[0], *v = dst->src[1];
    const int64_t T = dst->ne[1], nqb = (T + 15) / 16, n = (int64_t)s.n_head * nqb;
    std::vector<float> buf((size_t)(nqb * 16) * 16 + 64);  // + alignment and the last group's lanes past 16
    float *S = (float *)(((uintptr_t)buf.data() + 63) & ~(uintptr_t)63);
    // heads-major items dealt round-robin: every thread gets early (cheap) and late (costly) query blocks
    for (int64_t it = ith; it < n; it += nth) {
        const int64_t h = it / nqb, q0 = (it % nqb) * 16, nq = std::min<int64_t>(16, T - q0);
        switch (s.head_dim / 16) {
            case 1: attend_block<1>(s, qk, v, dst, h, q0, nq, S); break;
            case 2: attend_block<2>(s, qk, v, dst, h, q0, nq, S); break;
            case 3: attend_block<3>(s, qk, v, dst, h, q0, nq, S); break;
            case 4: attend_block<4>(s, qk, v, dst, h, q0, nq, S); break;
            case 5: attend_block<5>(s, qk, v, dst, h, q0, nq, S); break;
            case 6: attend_block<6>(s, qk, v, dst, h, q0, nq, S); break;
            case 7: attend_block<7>(s, qk, v, dst, h, q0, nq, S); break;
            default: attend_block<8>(s, qk, v, dst, h, q0, nq, S); break;
        }
    }
}

// argmin_j n2[j] - 2 dot[j, t], first index on ties.
QT_V512 void op_nearest(ggml_tensor *dst, int ith, int nth, void *) {
    const ggml_tensor *dot = dst->src[0], *n2t = dst->src[1];
    const int64_t n = dot->ne[0], T = dot->ne[1];
    const float *n2 = (const float *)n2t->data;
    const auto [t0, t1] = thread_range(T, ith, nth);
    const __m512i step = _mm512_set1_epi32(16);
    for (int64_t t = t0; t < t1; t++) {
        const float *row = (const float *)((const char *)dot->data + t * dot->nb[1]);
        __m512 best = _mm512_set1_ps(INFINITY);
        __m512i bi = _mm512_set1_epi32(0),
                idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        int64_t j = 0;
        for (; j + 16 <= n; j += 16) {
            const __m512 d = _mm512_fnmadd_ps(_mm512_set1_ps(2.0f), _mm512_loadu_ps(row + j), _mm512_loadu_ps(n2 + j));
            const __mmask16 lt = _mm512_cmp_ps_mask(d, best, _CMP_LT_OQ);
            best = _mm512_mask_blend_ps(lt, best, d);
            bi = _mm512_mask_blend_epi32(lt, bi, idx);
            idx = _mm512_add_epi32(idx, step);
        }
        alignas(64) float bv[16];
        alignas(64) int32_t bx[16];
        _mm512_store_ps(bv, best);
        _mm512_store_si512((void *)bx, bi);
        float b = INFINITY;
        int32_t k = 0;
        for (int l = 0; l < 16; l++)
            if (bv[l] < b || (bv[l] == b && bx[l] < k)) b = bv[l], k = bx[l];
        for (; j < n; j++) {
            const float d = n2[j] - 2.0f * row[j];
            if (d < b) b = d, k = (int32_t)j;
        }
        ((int32_t *)dst->data)[t] = k;
    }
}

// Nearest row with the approximate scores first: the bound of every row's distance, the best upper bound, then
// F32 scores of the rows whose lower bound does not exceed it (ascending, first index on ties).
QT_V512 void op_nearest_rescored(ggml_tensor *dst, int ith, int nth, void *) {
    const ggml_tensor *ap = dst->src[0], *r = dst->src[1], *book = dst->src[2];
    const float *n2 = (const float *)dst->src[3]->data, *yn = (const float *)dst->src[4]->data;
    const int64_t n = ap->ne[0], T = ap->ne[1], D = r->ne[0];
    const auto [t0, t1] = thread_range(T, ith, nth);
    std::vector<int32_t> cand((size_t)n);
    for (int64_t t = t0; t < t1; t++) {
        const float *a = (const float *)((const char *)ap->data + t * ap->nb[1]);
        const float *rv = (const float *)((const char *)r->data + t * r->nb[1]);
        __m512 acc = _mm512_setzero_ps();
        for (int64_t i = 0; i < D; i += 16) {
            const __m512 v = _mm512_maskz_loadu_ps(tail_mask16(D - i), rv + i);
            acc = _mm512_fmadd_ps(v, v, acc);
        }
        // |exact - approx| of 2 r.y: BF16 operands (2 x 2^-8 relative each product) and F32 sums, x2 margin
        const __m512 eb = _mm512_set1_ps(std::sqrt(hsum(acc)) * (1.0f / 64) * 1.01f);
        const __m512 two = _mm512_set1_ps(2.0f);
        __m512 up = _mm512_set1_ps(INFINITY);
        int64_t j = 0;
        for (; j + 16 <= n; j += 16) {
            const __m512 d = _mm512_fnmadd_ps(two, _mm512_loadu_ps(a + j), _mm512_loadu_ps(n2 + j));
            up = _mm512_min_ps(up, _mm512_fmadd_ps(eb, _mm512_loadu_ps(yn + j), d));
        }
        float best_up = _mm512_reduce_min_ps(up);
        const float e1 = _mm512_cvtss_f32(eb);
        for (; j < n; j++) best_up = std::min(best_up, n2[j] - 2.0f * a[j] + e1 * yn[j]);
        int64_t nc = 0;
        const __m512 bu = _mm512_set1_ps(best_up);
        __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for (j = 0; j + 16 <= n; j += 16) {
            const __m512 d = _mm512_fnmadd_ps(two, _mm512_loadu_ps(a + j), _mm512_loadu_ps(n2 + j));
            const __mmask16 m = _mm512_cmp_ps_mask(_mm512_fnmadd_ps(eb, _mm512_loadu_ps(yn + j), d), bu, _CMP_LE_OQ);
            _mm512_mask_compressstoreu_epi32(cand.data() + nc, m, idx);
            nc += __builtin_popcount((unsigned)m);
            idx = _mm512_add_epi32(idx, _mm512_set1_epi32(16));
        }
        for (; j < n; j++)
            if (n2[j] - 2.0f * a[j] - e1 * yn[j] <= best_up) cand[nc++] = (int32_t)j;
        float best = INFINITY;
        int32_t k = nc > 0 ? cand[0] : 0;
        for (int64_t c = 0; c < nc; c++) {
            const float *y = (const float *)((const char *)book->data + cand[c] * book->nb[1]);
            __m512 s = _mm512_setzero_ps();
            for (int64_t i = 0; i < D; i += 16) {
                const __mmask16 m = tail_mask16(D - i);
                s = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, rv + i), _mm512_maskz_loadu_ps(m, y + i), s);
            }
            const float d = n2[cand[c]] - 2.0f * hsum(s);
            if (d < best) best = d, k = cand[c];
        }
        ((int32_t *)dst->data)[t] = k;
    }
}

}  // namespace

#define QT_OP(f) f
#else
#define QT_OP(f) nullptr
#endif

namespace {

[[noreturn]] void no_tiles() {
    throw Error("internal error: the encoders' tile ops are not available on this platform");
}

bool f32_rows(const ggml_tensor *t) { return t->type == GGML_TYPE_F32 && t->nb[0] == sizeof(float); }

From1Spec single_channel(const float *w, int k, int cout) {
    From1Spec f;
    f.w = w;
    f.k = k;
    f.cout = cout;
    return f;
}

// The checked sources of a tile conv, in the order op_tile_conv reads them: its BF16 input, then bias, scale and
// residual where given; sp gets the fields that say so.
std::vector<ggml_tensor *> conv_args(ggml_tensor *xb, const AmxConv &w, int64_t T, ggml_tensor *bias,
                                     ggml_tensor *scale, ggml_tensor *res, TileConvSpec &sp) {
    if (xb->type != GGML_TYPE_BF16 || !ggml_is_contiguous(xb) || xb->ne[0] != w.cin || xb->ne[1] < w.rows_read(T))
        throw Error("internal error: tile conv input has the wrong shape");
    std::vector<ggml_tensor *> args{xb};
    for (ggml_tensor *v : {bias, scale})
        if (v) {
            if (v->type != GGML_TYPE_F32 || !ggml_is_contiguous(v) || ggml_nelements(v) != w.cout)
                throw Error("internal error: tile conv bias / scale");
            args.push_back(v);
        }
    if (res) {
        if (!f32_rows(res) || res->ne[0] != w.cout || res->ne[1] != T)
            throw Error("internal error: tile conv residual");
        args.push_back(res);
    }
    sp.w = &w;
    sp.has_bias = bias != nullptr;
    sp.has_scale = scale != nullptr;
    sp.has_res = res != nullptr;
    sp.T = T;
    return args;
}

}  // namespace

ggml_tensor *TileOps::input(const std::vector<ggml_tensor *> &xs, ggml_tensor *add, ggml_tensor *tail, Act act,
                            Edge edge, int64_t left, int64_t right_fill, int64_t pad) {
#ifndef QT_TILE_OPS
    no_tiles();
#endif
    if (xs.empty() || xs.size() > 8 || (add && xs.size() != 1) || left < 0 || right_fill < 0 || pad < 0)
        throw Error("internal error: tile input arguments");
    const int64_t T = xs[0]->ne[1];
    int64_t C = 0;
    std::vector<ggml_tensor *> args(xs);
    for (ggml_tensor *x : xs) {
        if (!f32_rows(x) || x->ne[1] != T || x->ne[2] != 1 || x->ne[3] != 1)
            throw Error("internal error: tile input source");
        C += x->ne[0];
    }
    if (add) {
        if (!f32_rows(add) || add->ne[0] != xs[0]->ne[0] || add->ne[1] != T)
            throw Error("internal error: tile input addend");
        args.push_back(add);
    }
    if (tail) {
        if (edge != Edge::Zero || tail->type != GGML_TYPE_BF16 || tail->ne[0] != C || tail->ne[1] != left ||
            !ggml_is_contiguous(tail))
            throw Error("internal error: tile input tail");
        args.push_back(tail);
    }
    if (edge == Edge::Reflect && (T <= left || T <= right_fill))
        throw Error("internal error: tile input too short to reflect");
    in_.push_back(TileInputSpec{act, edge, left, right_fill, (int)xs.size(), add != nullptr, tail != nullptr});
    return ggml_custom_4d(ctx_, GGML_TYPE_BF16, C, left + T + right_fill + pad, 1, 1, args.data(), (int)args.size(),
                          QT_OP(op_tile_input), GGML_N_TASKS_MAX, &in_.back());
}

ggml_tensor *TileOps::conv(ggml_tensor *xb, const AmxConv &w, int64_t T, ggml_tensor *bias, ggml_tensor *scale,
                           ggml_tensor *res, bool relu) {
#ifndef QT_TILE_OPS
    no_tiles();
#endif
    TileConvSpec sp;
    std::vector<ggml_tensor *> args = conv_args(xb, w, T, bias, scale, res, sp);
    sp.relu = relu;
    conv_.push_back(sp);
    return ggml_custom_4d(ctx_, GGML_TYPE_F32, w.cout, T, 1, 1, args.data(), (int)args.size(), QT_OP(op_tile_conv),
                          GGML_N_TASKS_MAX, &conv_.back());
}

ggml_tensor *TileOps::conv_to_input(ggml_tensor *xb, const AmxConv &w, int64_t T, ggml_tensor *bias, ggml_tensor *res,
                                    Act act, ggml_tensor *tail, int64_t left, int64_t pad, const Res1 *res1) {
#ifndef QT_TILE_OPS
    no_tiles();
#endif
    if (left < 0 || pad < 0) throw Error("internal error: tile conv output padding");
    TileConvSpec sp;
    std::vector<ggml_tensor *> args = conv_args(xb, w, T, bias, nullptr, res, sp);
    if (tail) {
        if (tail->type != GGML_TYPE_BF16 || tail->ne[0] != w.cout || tail->ne[1] != left || !ggml_is_contiguous(tail))
            throw Error("internal error: tile conv output tail");
        args.push_back(tail);
    }
    const From1Spec *r1 = nullptr;
    if (res1) {
        if (res || !f32_rows(res1->x) || !ggml_is_contiguous(res1->x) || res1->x->ne[0] != 1 ||
            res1->x->ne[1] < T + res1->k - 1 || res1->cout != w.cout || res1->cout % 16 ||
            (res1->bias && (res1->bias->type != GGML_TYPE_F32 || ggml_nelements(res1->bias) != w.cout)))
            throw Error("internal error: tile conv computed residual");
        from1_.push_back(single_channel(res1->w, res1->k, res1->cout));
        r1 = &from1_.back();
        args.push_back(res1->x);
        if (res1->bias) args.push_back(res1->bias);
    }
    sp.res1 = r1;
    sp.res1_bias = res1 && res1->bias;
    sp.out_bf16 = true;
    sp.out_act = act;
    sp.out_left = left;
    sp.has_tail = tail != nullptr;
    conv_.push_back(sp);
    return ggml_custom_4d(ctx_, GGML_TYPE_BF16, w.cout, left + T + pad, 1, 1, args.data(), (int)args.size(),
                          QT_OP(op_tile_conv), GGML_N_TASKS_MAX, &conv_.back());
}

ggml_tensor *TileOps::conv_from1(ggml_tensor *x, const float *w, int k, int cout, ggml_tensor *bias) {
#ifndef QT_TILE_OPS
    no_tiles();
#endif
    if (!f32_rows(x) || !ggml_is_contiguous(x) || x->ne[0] != 1 || x->ne[1] < k ||
        (bias && (bias->type != GGML_TYPE_F32 || ggml_nelements(bias) != cout)))
        throw Error("internal error: single-channel conv arguments");
    from1_.push_back(single_channel(w, k, cout));
    ggml_tensor *args[2] = {x, bias};
    return ggml_custom_4d(ctx_, GGML_TYPE_F32, cout, x->ne[1] - k + 1, 1, 1, args, bias ? 2 : 1, QT_OP(op_conv_from1),
                          GGML_N_TASKS_MAX, &from1_.back());
}

ggml_tensor *TileOps::conv_from1_to_input(ggml_tensor *x, const float *w, int k, int cout, ggml_tensor *bias, Act act,
                                          ggml_tensor *tail, int64_t left, int64_t pad) {
#ifndef QT_TILE_OPS
    no_tiles();
#endif
    if (!bias || !f32_rows(x) || !ggml_is_contiguous(x) || x->ne[0] != 1 || x->ne[1] < k || left < 0 || pad < 0 ||
        bias->type != GGML_TYPE_F32 || ggml_nelements(bias) != cout ||
        (tail &&
         (tail->type != GGML_TYPE_BF16 || tail->ne[0] != cout || tail->ne[1] != left || !ggml_is_contiguous(tail))))
        throw Error("internal error: single-channel conv arguments");
    From1Spec f = single_channel(w, k, cout);
    f.out_bf16 = true;
    f.act = act;
    f.left = left;
    f.T = x->ne[1] - k + 1;
    f.has_tail = tail != nullptr;
    from1_.push_back(f);
    ggml_tensor *args[3] = {x, bias, tail};
    return ggml_custom_4d(ctx_, GGML_TYPE_BF16, cout, left + f.T + pad, 1, 1, args, tail ? 3 : 2, QT_OP(op_conv_from1),
                          GGML_N_TASKS_MAX, &from1_.back());
}

ggml_tensor *TileOps::time_stats(ggml_tensor *x, ggml_tensor *logits) {
#ifndef QT_TILE_OPS
    no_tiles();
#endif
    if (!f32_rows(x) || (logits && (!f32_rows(logits) || logits->ne[0] != x->ne[0] || logits->ne[1] != x->ne[1])))
        throw Error("internal error: time statistics arguments");
    stats_.push_back(StatsSpec{logits != nullptr});
    ggml_tensor *args[2] = {x, logits};
    return ggml_custom_4d(ctx_, GGML_TYPE_F32, x->ne[0], 2, 1, 1, args, logits ? 2 : 1, QT_OP(op_time_stats),
                          GGML_N_TASKS_MAX, &stats_.back());
}

ggml_tensor *TileOps::time_mean(ggml_tensor *x) {
#ifndef QT_TILE_OPS
    no_tiles();
#endif
    if (!f32_rows(x)) throw Error("internal error: time mean argument");
    ggml_tensor *args[1] = {x};
    return ggml_custom_4d(ctx_, GGML_TYPE_F32, x->ne[0], 1, 1, 1, args, 1, QT_OP(op_time_mean), GGML_N_TASKS_MAX,
                          nullptr);
}

ggml_tensor *TileOps::layer_norm_input(ggml_tensor *x, ggml_tensor *w, ggml_tensor *b, float eps, int64_t pad) {
#ifndef QT_TILE_OPS
    no_tiles();
#endif
    const int64_t C = x->ne[0];
    if (!f32_rows(x) || x->ne[2] != 1 || w->type != GGML_TYPE_F32 || b->type != GGML_TYPE_F32 ||
        ggml_nelements(w) != C || ggml_nelements(b) != C || !ggml_is_contiguous(w) || !ggml_is_contiguous(b) || pad < 0)
        throw Error("internal error: layer norm input arguments");
    TileInputSpec sp;
    sp.layer_norm = true;
    sp.eps = eps;
    in_.push_back(sp);
    ggml_tensor *args[3] = {x, w, b};
    return ggml_custom_4d(ctx_, GGML_TYPE_BF16, C, x->ne[1] + pad, 1, 1, args, 3, QT_OP(op_tile_input),
                          GGML_N_TASKS_MAX, &in_.back());
}

ggml_tensor *TileOps::rope_qk(ggml_tensor *x, ggml_tensor *cos, ggml_tensor *sin, int n_head, int n_head_kv,
                              int head_dim) {
#ifndef QT_TILE_OPS
    no_tiles();
#endif
    const int64_t W = (int64_t)(n_head + n_head_kv) * head_dim, T = x->ne[1];
    if (!f32_rows(x) || x->ne[0] < W || head_dim % 2 || cos->ne[0] != head_dim / 2 || cos->ne[2] != T ||
        sin->ne[0] != head_dim / 2 || sin->ne[2] != T || !ggml_is_contiguous(cos) || !ggml_is_contiguous(sin))
        throw Error("internal error: rope arguments");
    attn_.push_back(AttnSpec{n_head, n_head_kv, head_dim, 1.0f});
    ggml_tensor *args[3] = {x, cos, sin};
    return ggml_custom_4d(ctx_, GGML_TYPE_F32, W, T, 1, 1, args, 3, QT_OP(op_rope_qk), GGML_N_TASKS_MAX, &attn_.back());
}

ggml_tensor *TileOps::attention(ggml_tensor *qk, ggml_tensor *v, int n_head, int n_head_kv, int head_dim, float scale) {
#ifndef QT_TILE_OPS
    no_tiles();
#endif
    const int64_t T = qk->ne[1];
    if (!attention_fits(head_dim) || n_head % n_head_kv || !f32_rows(qk) ||
        qk->ne[0] != (int64_t)(n_head + n_head_kv) * head_dim || !f32_rows(v) ||
        v->ne[0] < (int64_t)n_head_kv * head_dim || v->ne[1] != T)
        throw Error("internal error: attention arguments");
    attn_.push_back(AttnSpec{n_head, n_head_kv, head_dim, scale});
    ggml_tensor *args[2] = {qk, v};
    return ggml_custom_4d(ctx_, GGML_TYPE_F32, (int64_t)n_head * head_dim, T, 1, 1, args, 2, QT_OP(op_attention),
                          GGML_N_TASKS_MAX, &attn_.back());
}

ggml_tensor *TileOps::nearest(ggml_tensor *dot, ggml_tensor *n2) {
#ifndef QT_TILE_OPS
    no_tiles();
#endif
    if (!f32_rows(dot) || n2->type != GGML_TYPE_F32 || ggml_nelements(n2) != dot->ne[0] || !ggml_is_contiguous(n2))
        throw Error("internal error: nearest-row arguments");
    ggml_tensor *args[2] = {dot, n2};
    return ggml_custom_4d(ctx_, GGML_TYPE_I32, dot->ne[1], 1, 1, 1, args, 2, QT_OP(op_nearest), GGML_N_TASKS_MAX,
                          nullptr);
}

ggml_tensor *TileOps::nearest_rescored(ggml_tensor *approx, ggml_tensor *r, ggml_tensor *book, ggml_tensor *n2,
                                       ggml_tensor *norms) {
#ifndef QT_TILE_OPS
    no_tiles();
#endif
    const int64_t n = approx->ne[0], T = approx->ne[1], D = r->ne[0];
    if (!f32_rows(approx) || !f32_rows(r) || r->ne[1] != T || !f32_rows(book) || book->ne[0] != D || book->ne[1] != n)
        throw Error("internal error: nearest-row arguments");
    for (ggml_tensor *v : {n2, norms})
        if (v->type != GGML_TYPE_F32 || ggml_nelements(v) != n || !ggml_is_contiguous(v))
            throw Error("internal error: nearest-row norms");
    ggml_tensor *args[5] = {approx, r, book, n2, norms};
    return ggml_custom_4d(ctx_, GGML_TYPE_I32, T, 1, 1, 1, args, 5, QT_OP(op_nearest_rescored), GGML_N_TASKS_MAX,
                          nullptr);
}

}  // namespace qt

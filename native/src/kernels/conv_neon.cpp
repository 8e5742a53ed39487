// conv_neon.cpp: the packed conv's tiles and epilogue functions for ARM64 (packed_conv.h), on the layout the AVX2
// kernel reads: vld2q_u16 splits a block's 16 BF16 weights into the even positions (outputs o0..o0+7) and the odd
// ones (o0+8..o0+15), and a 16-bit left shift while widening makes each an FP32 value. Each output is summed over
// (tap, input channel) in conv_avx2.cpp's order with fused multiply-adds, and the epilogue is its operations on
// neon_math.h's polynomials, so the results are the AVX2 kernel's, bit for bit.
#if defined(__aarch64__)
#include <arm_neon.h>

#include <algorithm>

#include "kernels/neon_math.h"
#include "kernels/packed_conv_internal.h"

namespace qt {
namespace packed_conv_detail {

namespace {

constexpr int NV = PackedConv::OB / 4;  // 4-lane vectors per block

// The first n (1..4) floats at p as a vector (the rest zero), and the first n lanes of v stored to p.
inline float32x4_t load_part(const float *p, int n) {
    if (n == 4) return vld1q_f32(p);
    float part[4] = {0, 0, 0, 0};
    std::copy(p, p + n, part);
    return vld1q_f32(part);
}

inline void store_part(float *p, float32x4_t v, int n) {
    if (n == 4) return vst1q_f32(p, v);
    float part[4];
    vst1q_f32(part, v);
    std::copy(part, part + n, p);
}

// Epilogue of one 4-lane output vector (outputs o.., time t): bias, residual, snake; stores the first n lanes.
inline void finish(const ConvArgs &a, float32x4_t v, int64_t t, int o, int n) {
    const PackedConv &w = *a.w;
    if (!w.bias.empty()) v = vaddq_f32(v, vld1q_f32(&w.bias[o]));
    if (a.res) v = vaddq_f32(v, load_part(a.res + (size_t)t * w.cout + o, n));
    if (!w.snake_ea.empty()) v = snake4(v, vld1q_f32(&w.snake_ea[o]), vld1q_f32(&w.snake_ib[o]));
    store_part(a.y + (size_t)t * w.cout + o, v, n);
}

// The 16 weights of one (tap, input channel) of a block as four FP32 vectors of outputs o0.., o0+4.., o0+8..,
// o0+12..: BF16 deinterleaved and widened, or F32 as stored (natural order).
struct Bf16Weights {
    using T = uint16_t;
    static const T *packed(const PackedConv &w) { return w.packed.data(); }
    static inline void load(const T *p, float32x4_t v[NV]) {
        const uint16x8x2_t d = vld2q_u16(p);  // val[0]: outputs o0..o0+7, val[1]: o0+8..o0+15
        v[0] = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(d.val[0]), 16));
        v[1] = vreinterpretq_f32_u32(vshll_n_u16(vget_high_u16(d.val[0]), 16));
        v[2] = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(d.val[1]), 16));
        v[3] = vreinterpretq_f32_u32(vshll_n_u16(vget_high_u16(d.val[1]), 16));
    }
};
struct F32Weights {
    using T = float;
    static const T *packed(const PackedConv &w) { return w.packed_f32.data(); }
    static inline void load(const T *p, float32x4_t v[NV]) {
        for (int h = 0; h < NV; h++) v[h] = vld1q_f32(p + 4 * h);
    }
};

// Outputs ob*16 .. +15 at times t0 .. t0+R-1: R x 4 accumulators over every tap and input channel.
template <int R, class W>
void conv_tile(const ConvArgs &a, int64_t t0, int ob) {
    const PackedConv &w = *a.w;
    const int cin = w.cin;
    const typename W::T *wp = W::packed(w) + (size_t)ob * w.k * cin * PackedConv::OB;
    float32x4_t acc[R][NV];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
        for (int h = 0; h < NV; h++) acc[r][h] = vdupq_n_f32(0.0f);
    for (int j = 0; j < w.k; j++) {
        const float *xr[R];
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) xr[r] = a.row((t0 + r) * w.stride + (int64_t)j * w.dil);
        for (int c = 0; c < cin; c++, wp += PackedConv::OB) {
            float32x4_t wv[NV];
            W::load(wp, wv);
#pragma GCC unroll 6
            for (int r = 0; r < R; r++) {
                const float32x4_t xb = vdupq_n_f32(xr[r][c]);
#pragma GCC unroll 4
                for (int h = 0; h < NV; h++) acc[r][h] = vfmaq_f32(acc[r][h], xb, wv[h]);
            }
        }
    }
    const int o0 = ob * PackedConv::OB;
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int h = 0; h < NV; h++) {
            const int o = o0 + 4 * h, n = std::min(4, w.cout - o);
            if (n > 0) finish(a, acc[r][h], t0 + r, o, n);
        }
}

template <class W>
constexpr TileFn tile_fns[MT + 1] = {nullptr,         conv_tile<1, W>, conv_tile<2, W>, conv_tile<3, W>,
                                     conv_tile<4, W>, conv_tile<5, W>, conv_tile<6, W>};

// f over a row of n floats, 4 lanes at a time; the last partial vector through a zero-padded copy.
template <class F>
inline void map_row4(int64_t n, F f) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) f(i, 4);
    if (i < n) f(i, (int)(n - i));
}

}  // namespace

SpanFn conv_span_neon(PackedForm form) {
    return form == PackedForm::f32 ? span_of_tiles<tile_fns<F32Weights>> : span_of_tiles<tile_fns<Bf16Weights>>;
}

void snake_row_neon(const float *x, const float *bias, const float *ea, const float *ib, int64_t C, float *y) {
    map_row4(C, [&](int64_t c, int n) {
        float32x4_t v = load_part(x + c, n);
        if (bias) v = vaddq_f32(v, load_part(bias + c, n));
        store_part(y + c, snake4(v, load_part(ea + c, n), load_part(ib + c, n)), n);
    });
}

void elu_row_neon(const float *x, int64_t n, float *y) {
    map_row4(n, [&](int64_t i, int m) { store_part(y + i, elu4(load_part(x + i, m)), m); });
}

}  // namespace packed_conv_detail
}  // namespace qt

#endif

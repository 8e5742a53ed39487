// packed_conv.h: causal 1-D convolutions on packed weights, as a ggml custom op, with an optional fused epilogue
// (bias, residual, SnakeBeta). One interface, one dispatch point (packed_conv.cpp), three weight forms:
//
// * BF16 widened to FP32 in registers (pack), FP32 inputs and sums: AVX2 + FMA on x86-64 (conv_avx2.cpp), NEON on
//   ARM64 (conv_neon.cpp). Both sum each output over (tap, input channel) in the same order with fused multiply-adds
//   and share the epilogue's polynomials (vec_math_constants.h), so they give the same numbers. Its only rounding
//   beyond F32 arithmetic is the weights' own BF16 storage.
// * F32 (pack_f32): the same kernels and order, for callers that need F32 arithmetic throughout (the encoders).
// * BF16 pairs (pack_pairs), for AVX512-BF16 (conv_avx512.cpp): vdpbf16ps takes two input channels per product, so
//   the inputs are rounded to BF16 as well, the arithmetic of ggml's BF16 path and of the AMX tiles (conv_amx.h),
//   at twice the FP32 FMA's multiply-adds per instruction.
//
// Without AMX, ggml multiplies the codec decoder's BF16 conv weights by first rounding the activations to BF16 and
// then taking BF16 dot products one output at a time; a dilated conv costs one mul_mat per tap plus the adds. This
// kernel is one pass per conv: each thread takes blocks of 16 (pairs: 32) outputs, keeps their weights hot in its
// cache while it sweeps over time, and computes a register block of time steps x outputs (AVX2: 6 x 16 in 12
// accumulators; AVX-512 pairs: 12 x 32 in 24), one weight load per input channel (pair) and tap.
//
// out[t, o] = epilogue(sum_j sum_c x[t*stride + j*dil, c] * w[o, j, c])  for t < T, with x time-major [Tx, cin]
// (row t = time t; ggml ne [cin, Tx]), epilogue(v) = snake(((v + bias[o]) + residual[t, o])) with each part
// optional, in that order (the order of the codec's separate ops, so fusing changes no rounding).
#pragma once

#include <cstdint>
#include <vector>

#include "ggml.h"
#include "common.h"

namespace qt {

// True when the engine's level (cpu_isa.h) is avx2 or above on x86-64, or neon on ARM64.
bool packed_conv_available();

// True where the BF16-pair form runs: the avx512 level or above with AVX512-BF16 (and in a build that emulates
// those instructions for its tests, x86_simd.h).
bool packed_conv_pairs_available();

enum class PackedForm { bf16, f32, bf16_pairs };

struct PackedConv {
    static constexpr int OB = 16;        // outputs per block of the bf16 and f32 forms (two 8-lane AVX2 vectors)
    static constexpr int OB_PAIRS = 32;  // outputs per block of the bf16_pairs form (two 16-lane AVX-512 vectors)
    PackedForm form = PackedForm::bf16;
    int cin = 0, cout = 0, k = 1, dil = 1, stride = 1;
    // BF16 weights per block of 16 outputs, then per tap and input channel: 16 values, output o0+i at position 2i
    // and o0+8+i at 2i+1, so that one 256-bit load gives both 8-lane FP32 vectors with a shift and a mask (NEON:
    // vld2q_u16 splits the even and odd positions, i.e. outputs o0.. and o0+8..).
    // Outputs past cout are zero.
    std::vector<uint16_t> packed;
    // Or F32 weights in the natural order (output o0+i at position i), where the caller needs F32 arithmetic
    // throughout (pack_f32; the encoders of non-f32 GGUFs, whose weights are F32).
    std::vector<float> packed_f32;
    // Or BF16 pairs (pack_pairs): per block of 32 outputs, then per tap and pair of input channels (2p, 2p + 1; the
    // last pair of an odd cin has a zero), 32 words of two BF16 values, channel 2p in the low half, outputs o0 ..
    // o0+31 in order: one 512-bit load is the operand of vdpbf16ps for 16 outputs.
    std::vector<uint32_t> packed_pairs;
    // Epilogue constants, padded to whole blocks (empty: that part is off).
    std::vector<float> bias, snake_ea, snake_ib;

    int block_outputs() const { return form == PackedForm::bf16_pairs ? OB_PAIRS : OB; }
    int n_blocks() const { return (cout + block_outputs() - 1) / block_outputs(); }
    int n_pairs() const { return (cin + 1) / 2; }
    // w(o, j, c): the float weight of output o, tap j, input channel c (rounded to BF16 here). A template, so that
    // the accessor is inlined (a std::function call per value dominated preparing the codec's 70 M weights).
    template <class F>
    void pack(int cin, int cout, int k, int dil, F w, int stride = 1);
    template <class F>
    void pack_f32(int cin, int cout, int k, int dil, F w, int stride = 1);
    template <class F>
    void pack_pairs(int cin, int cout, int k, int dil, F w, int stride = 1);
    // Fuses `bias[o]` (cout values) and/or SnakeBeta (ea = exp(alpha), ib = 1 / (exp(beta) + 1e-9); cout values
    // each) into the epilogue; null leaves that part off.
    void set_epilogue(const float *bias, const float *ea, const float *ib);
    // Input rows the conv reads for T outputs.
    int64_t rows_read(int64_t T) const { return (T - 1) * stride + (int64_t)(k - 1) * dil + 1; }
};

namespace packed_conv_detail {
// Sets the shape and form and empties every packed vector; throws on a shape no kernel takes.
inline void set_shape(PackedConv &a, PackedForm form, int cin, int cout, int k, int dil, int stride) {
    if (cin < 1 || cout < 1 || k < 1 || dil < 1 || stride < 1) throw Error("internal error: bad packed conv shape");
    a.form = form;
    a.cin = cin, a.cout = cout, a.k = k, a.dil = dil, a.stride = stride;
    a.packed.clear();
    a.packed_f32.clear();
    a.packed_pairs.clear();
}

// n zero values in dst, its pages advised huge before the first write.
template <class T>
void zeroed(std::vector<T> &dst, size_t n) {
    dst.reserve(n);  // untouched yet: advised before the first write, its pages can be huge ones
    advise_huge_pages(dst.data(), n * sizeof(T));
    dst.assign(n, T(0));
}

// Fills dst (blocks of 16 outputs, then taps, then input channels, OB values each) with value(w(o, j, c)) at
// position lane(i) of output o = block * 16 + i.
template <class T, class F, class V, class L>
void pack_blocks(PackedConv &a, PackedForm form, int cin, int cout, int k, int dil, int stride, std::vector<T> &dst,
                 F w, V value, L lane) {
    set_shape(a, form, cin, cout, k, dil, stride);
    zeroed(dst, (size_t)a.n_blocks() * k * cin * PackedConv::OB);
    for (int ob = 0; ob < a.n_blocks(); ob++)
        for (int i = 0; i < PackedConv::OB && ob * PackedConv::OB + i < cout; i++) {
            const int o = ob * PackedConv::OB + i;
            for (int j = 0; j < k; j++)
                for (int c = 0; c < cin; c++)
                    dst[(((size_t)ob * k + j) * cin + c) * PackedConv::OB + lane(i)] = value(w(o, j, c));
        }
}
}  // namespace packed_conv_detail

template <class F>
void PackedConv::pack(int cin_, int cout_, int k_, int dil_, F w, int stride_) {
    packed_conv_detail::pack_blocks(
        *this, PackedForm::bf16, cin_, cout_, k_, dil_, stride_, packed, w, [](float v) { return bf16_bits(v); },
        [](int i) { return i < 8 ? 2 * i : 2 * (i - 8) + 1; });
}

template <class F>
void PackedConv::pack_f32(int cin_, int cout_, int k_, int dil_, F w, int stride_) {
    packed_conv_detail::pack_blocks(
        *this, PackedForm::f32, cin_, cout_, k_, dil_, stride_, packed_f32, w, [](float v) { return v; },
        [](int i) { return i; });
}

template <class F>
void PackedConv::pack_pairs(int cin_, int cout_, int k_, int dil_, F w, int stride_) {
    packed_conv_detail::set_shape(*this, PackedForm::bf16_pairs, cin_, cout_, k_, dil_, stride_);
    const int np = n_pairs();
    packed_conv_detail::zeroed(packed_pairs, (size_t)n_blocks() * k * np * OB_PAIRS);
    for (int o = 0; o < cout; o++)
        for (int j = 0; j < k; j++)
            for (int c = 0; c < cin; c++)
                packed_pairs[(((size_t)(o / OB_PAIRS) * k + j) * np + c / 2) * OB_PAIRS + o % OB_PAIRS] |=
                    (uint32_t)bf16_bits(w(o, j, c)) << (16 * (c % 2));
}

// The convolution of x (F32, contiguous time-major [cin, Tx] in ggml order, Tx >= w.rows_read(T)) -> F32
// [cout, T]; residual (F32 contiguous [cout, T], or null) is added in the epilogue.
ggml_tensor *packed_conv(ggml_context *ctx, ggml_tensor *x, const PackedConv &w, int64_t T,
                         ggml_tensor *residual = nullptr);

// The causal conv of a stream: the conv of [tail; x] -> [cout, T / stride] for x's T columns (a multiple of the
// stride), where tail (F32 contiguous [cin, L], L = (k-1)*dil + 1 - stride, persistent) holds the previous call's
// last input rows. Adds to gf, after the conv, the node that replaces tail with the last L rows of [tail; x]. No
// concatenated copy of the input is made.
ggml_tensor *packed_causal_conv(ggml_context *ctx, ggml_cgraph *gf, ggml_tensor *x, ggml_tensor *tail,
                                const PackedConv &w, ggml_tensor *residual = nullptr);

// One row of SnakeBeta, y = snake(x + bias) (bias may be null), with the kernel's polynomial sine (avx2_math.h's
// sin8, neon_math.h's sin4). Only where packed_conv_available().
void conv_snake_row(const float *x, const float *bias, const float *ea, const float *ib, int64_t C, float *y);

// y = ELU(x) for n floats (avx2_math.h's elu8, neon_math.h's elu4). Only where packed_conv_available().
void conv_elu_row(const float *x, int64_t n, float *y);

}  // namespace qt

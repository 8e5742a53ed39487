// packed_conv_internal.h: what packed_conv.cpp (the op, its work split, the dispatch) shares with the per-ISA
// kernels (conv_avx2.cpp, conv_neon.cpp, conv_avx512.cpp).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kernels/packed_conv.h"

namespace qt {
namespace packed_conv_detail {

constexpr int MT = 6;  // time steps per register block (AVX2: 6 x 2 accumulators; NEON: 6 x 4 of its 32 registers)
constexpr int MT_PAIRS = 12;  // the same for the bf16_pairs form (AVX-512: 12 x 2 accumulators of its 32 registers)

struct ConvArgs {
    const PackedConv *w;
    const char *tail;  // input rows 0 .. L-1 (the carried left context), or null
    size_t ts;         // bytes between tail rows
    int64_t L;
    const char *x;     // input rows L ..
    size_t xs;         // bytes between input rows
    float *y;          // output rows of cout floats
    const float *res;  // residual rows of cout floats, or null
    int64_t T;

    const float *row(int64_t r) const {
        return (const float *)(r < L ? tail + (size_t)r * ts : x + (size_t)(r - L) * xs);
    }
};

// The outputs of block ob (PackedConv::block_outputs() of them) at times t_begin .. t_end-1, epilogue included.
using SpanFn = void (*)(const ConvArgs &, int64_t t_begin, int64_t t_end, int ob);

// Outputs ob*16 .. +15 at times t0 .. t0+R-1 (R <= MT), epilogue included: Tiles[R] of an ISA's table.
using TileFn = void (*)(const ConvArgs &, int64_t t0, int ob);

// A span as register blocks of MT time steps and one of the rest.
template <const TileFn *Tiles>
void span_of_tiles(const ConvArgs &a, int64_t t_begin, int64_t t_end, int ob) {
    for (int64_t t = t_begin; t < t_end; t += MT) Tiles[std::min<int64_t>(MT, t_end - t)](a, t, ob);
}

// The kernels of each ISA for a weight form; and the epilogue's element-wise functions. Each exists only on its
// architecture.
SpanFn conv_span_avx2(PackedForm form);  // bf16 or f32
void snake_row_avx2(const float *x, const float *bias, const float *ea, const float *ib, int64_t C, float *y);
void elu_row_avx2(const float *x, int64_t n, float *y);
SpanFn conv_span_avx512_pairs();         // bf16_pairs
SpanFn conv_span_neon(PackedForm form);  // bf16 or f32
void snake_row_neon(const float *x, const float *bias, const float *ea, const float *ib, int64_t C, float *y);
void elu_row_neon(const float *x, int64_t n, float *y);

}  // namespace packed_conv_detail
}  // namespace qt

// packed_conv_internal.h: what packed_conv.cpp (the op, its work split, the dispatch) shares with the per-ISA tile
// kernels (conv_avx2.cpp, conv_neon.cpp).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/packed_conv.h"

namespace qt {
namespace packed_conv_detail {

constexpr int MT = 6;  // time steps per register block (AVX2: 6 x 2 accumulators; NEON: 6 x 4 of its 32 registers)

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

// Outputs ob*16 .. +15 at times t0 .. t0+R-1 (R <= MT), epilogue included: tiles[R] of the table an ISA returns.
using TileFn = void (*)(const ConvArgs &, int64_t t0, int ob);

// The tile kernels of each ISA for BF16 (PackedConv::packed) or F32 (packed_f32) weights, MT + 1 entries; and
// the epilogue's element-wise functions. Each exists only on its architecture.
const TileFn *conv_tiles_avx2(bool f32_weights);
void snake_row_avx2(const float *x, const float *bias, const float *ea, const float *ib, int64_t C, float *y);
void elu_row_avx2(const float *x, int64_t n, float *y);
const TileFn *conv_tiles_neon(bool f32_weights);
void snake_row_neon(const float *x, const float *bias, const float *ea, const float *ib, int64_t C, float *y);
void elu_row_neon(const float *x, int64_t n, float *y);

}  // namespace packed_conv_detail
}  // namespace qt

// amx_conv.h: causal 1-D convolutions on Intel AMX tiles (BF16 in, FP32 accumulation), as a ggml custom op.
//
// ggml's CPU backend multiplies BF16 matrices with AVX512-BF16 dot products at best; on CPUs with AMX the tile
// unit does the same BF16 x BF16 -> FP32 arithmetic about 8x faster per cycle, and the codec decoder is made of
// exactly such products (2.5 GMAC per 80 ms frame). Used where AMX-BF16 is present and the OS grants the tile
// state; everything else keeps ggml's kernels. Same operand precision as the ggml BF16 path (both operands
// rounded to BF16, FP32 sums), different summation order.
//
// out[t, o] = sum_j sum_c x[t*stride + j*dil, c] * w[o, j, c]  for t < T, with x time-major [Tx, cin] (row t =
// time t; ggml ne [cin, Tx]).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "ggml.h"

namespace qt {

// True when this CPU has AMX-TILE and AMX-BF16 and the OS lets the process use the tile state (asked once).
bool amx_bf16_available();

// The 64-byte operand of ldtilecfg (palette 1): rows and bytes per row of each of the 16 tile registers.
struct TileConfig {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

struct AmxConv {
    int cin = 0, cout = 0, k = 1, dil = 1, stride = 1;
    // B tiles of 16 K-pairs x 16 outputs (VNNI order), per (tap, 32-channel chunk, 16-output chunk)
    std::vector<uint16_t> packed;

    // Can this shape run on tiles? (channels in chunks of 32 and outputs in blocks of 32)
    static bool fits(int cin, int cout) { return cin % 32 == 0 && cout % 32 == 0; }
    // w(o, j, c): the float weight of output o, tap j, input channel c.
    void pack(int cin, int cout, int k, int dil, const std::function<float(int, int, int)> &w, int stride = 1);
    // Input columns amx_conv reads for T outputs (x must have at least this many).
    int64_t rows_read(int64_t T) const;
};

// x (F32 time-major [cin, Tx], rows contiguous) as amx_conv's input: BF16 [cin, Tx + pad], the last pad columns
// zero. Outputs are computed in blocks of 32, so a conv reads up to 31*stride columns past the last output's
// window: pad = 32*stride covers it.
ggml_tensor *amx_input(ggml_context *ctx, ggml_tensor *x, int64_t pad = 32);

// The convolution of x (BF16, contiguous time-major [cin, Tx] in ggml order, Tx >= w.rows_read(T)) -> F32
// [cout, T].
ggml_tensor *amx_conv(ggml_context *ctx, ggml_tensor *x, const AmxConv &w, int64_t T);

}  // namespace qt

// conv_amx.h: causal 1-D convolutions on Intel AMX tiles (BF16 in, FP32 accumulation), as a ggml custom op.
//
// ggml's CPU backend multiplies BF16 matrices with AVX512-BF16 dot products at best; on CPUs with AMX the tile unit
// does the same BF16 x BF16 -> FP32 arithmetic about 8x faster per cycle, and the codec decoder is made of exactly such
// products (2.5 GMAC per 80 ms frame). Used where AMX-BF16 is present and the OS grants the tile state (elsewhere the
// codec runs on the packed conv kernel, packed_conv.h, or ggml's). Same operand precision as the ggml BF16 path (both
// operands rounded to BF16, FP32 sums), different summation order.
//
// out[t, o] = sum_j sum_c x[t*stride + j*dil, c] * w[o, j, c]  for t < T, with x time-major [Tx, cin] (row t =
// time t; ggml ne [cin, Tx]).
#pragma once

#include <cstdint>
#include <vector>

#include "ggml.h"
#include "common.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

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

// Tiles 0..n-1 as 16 rows of 64 bytes (every tile the engine uses). The function that uses the tiles loads it
// (_tile_loadconfig) itself: tile state set up in one function and used in another has crashed (GCC 12).
TileConfig tile_config(int n);

// The tile geometry of amx_conv and the encoders' tile ops (encoder_tile_ops.h).
namespace amx_geometry {
constexpr int TILE_ROWS = 16;   // rows of every tile used
constexpr int TILE_BYTES = 64;  // bytes per tile row: 16 FP32 sums, 32 BF16 values or 16 BF16 pairs
constexpr int KC = 32;          // input channels per A tile
constexpr int OB = 32;          // outputs per block (two B tiles)
constexpr int TB = 32;          // time steps per block (two A tiles)
}  // namespace amx_geometry

struct AmxConv {
    int cin = 0, cout = 0, k = 1, dil = 1, stride = 1;
    // B tiles of 16 K-pairs x 16 outputs (VNNI order), per (tap, 32-channel chunk, 16-output chunk)
    std::vector<uint16_t> packed;

    // Can this shape run on tiles? (channels in chunks of 32 and outputs in blocks of 32)
    static bool fits(int cin, int cout) { return cin % 32 == 0 && cout % 32 == 0; }
    // w(o, j, c): the float weight of output o, tap j, input channel c, rounded to BF16 here. A template, so that
    // the accessor is inlined (a std::function call per value dominated preparing the encoders' weights).
    template <class F>
    void pack(int cin, int cout, int k, int dil, F w, int stride = 1);
    // Input columns amx_conv reads for T outputs (x must have at least this many).
    int64_t rows_read(int64_t T) const;
};

template <class F>
void AmxConv::pack(int cin_, int cout_, int k_, int dil_, F w, int stride_) {
    if (!fits(cin_, cout_) || stride_ < 1) throw Error("internal error: AMX conv shape does not fit the tiles");
    cin = cin_, cout = cout_, k = k_, dil = dil_, stride = stride_;
    const int nkc = cin / 32, nob = cout / 16;
    const size_t n = (size_t)k * nkc * nob * 16 * 32;
    packed.clear();
    packed.reserve(n);  // untouched yet: advised before the first write, its pages can be huge ones
    advise_huge_pages(packed.data(), n * sizeof(uint16_t));
    packed.assign(n, 0);
    // tile (j, kc, ob): row r holds, for each of the 16 outputs n, channels kc*32 + 2r and kc*32 + 2r + 1
    for (int o = 0; o < cout; o++)
        for (int j = 0; j < k; j++)
            for (int c = 0; c < cin; c++) {
                const int kc = c / 32, r = (c % 32) / 2, p = c % 2, ob = o / 16, n16 = o % 16;
                packed[((((size_t)j * nkc + kc) * nob + ob) * 16 + r) * 32 + n16 * 2 + p] = bf16_bits(w(o, j, c));
            }
}

// x (F32 time-major [cin, Tx], rows contiguous) as amx_conv's input: BF16 [cin, Tx + pad], the last pad columns
// zero. Outputs are computed in blocks of 32, so a conv reads up to 31*stride columns past the last output's
// window: pad = 32*stride covers it.
ggml_tensor *amx_input(ggml_context *ctx, ggml_tensor *x, int64_t pad = 32);

// The convolution of x (BF16, contiguous time-major [cin, Tx] in ggml order, Tx >= w.rows_read(T)) -> F32
// [cout, T].
ggml_tensor *amx_conv(ggml_context *ctx, ggml_tensor *x, const AmxConv &w, int64_t T);

#if defined(__x86_64__)
// One 32 x 32 block of a convolution, left in tiles 0..3 (accumulator (a, b): time rows t0 + 16a, outputs
// o0 + 16b), with tiles 4..7 for the operands. X: the BF16 input (amx_input), the caller has loaded
// tile_config(8). Always inlined, so that the tiles are used in the function that configured them.
__attribute__((target("amx-tile,amx-bf16"), always_inline)) inline void amx_conv_block(const AmxConv &w,
                                                                                       const uint16_t *X, int64_t t0,
                                                                                       int64_t o0) {
    const int64_t nkc = w.cin / 32, nob16 = w.cout / 16;
    const size_t xs = (size_t)w.stride * w.cin * sizeof(uint16_t);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int j = 0; j < w.k; j++) {
        const uint16_t *xa = X + (size_t)(t0 * w.stride + (int64_t)j * w.dil) * w.cin;
        for (int64_t kc = 0; kc < nkc; kc++) {
            const uint16_t *b = &w.packed[(((size_t)j * nkc + kc) * nob16 + o0 / 16) * 16 * 32];
            _tile_loadd(4, xa + kc * 32, xs);
            _tile_loadd(5, xa + kc * 32 + (size_t)16 * w.stride * w.cin, xs);
            _tile_loadd(6, b, 64);
            _tile_loadd(7, b + 16 * 32, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
    }
}
#endif

}  // namespace qt

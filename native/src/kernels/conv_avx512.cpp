// conv_avx512.cpp: the packed conv's BF16-pair kernel (packed_conv.h) for AVX512-BF16. vdpbf16ps multiplies two input
// channels by their two BF16 weights in each of 16 lanes and adds both products to an FP32 sum: twice the
// multiply-adds of an FP32 FMA per instruction, the arithmetic of ggml's BF16 path and of the AMX tiles. The inputs
// are rounded to BF16 (to nearest, ties to even, as ggml rounds) a piece of time at a time into a buffer of the
// thread's, then register blocks of 12 time steps x 32 outputs sum over every (tap, channel pair) with one 64-byte
// weight load per 16 outputs and one 4-byte input broadcast per time step. The SIMD code is compiled for AVX-512
// through target attributes (x86_simd.h) and only ever called after packed_conv_pairs_available() said yes.
#include "kernels/x86_simd.h"

#if defined(__x86_64__)
#include <algorithm>
#include <vector>

#include "kernels/avx512_math.h"
#include "kernels/packed_conv_internal.h"

#define QT_PAIRS_TARGET QT_TARGET("avx512f,avx512bw,avx512bf16")

namespace qt {
namespace packed_conv_detail {

namespace {

constexpr int PIECE = 4 * MT_PAIRS;  // time steps whose input rows are rounded together (about 1 to 2 rounding per row)
constexpr int LANES = 16;

// x rounded to BF16 bits in the high half of each 32-bit lane (the low half is what the rounding carried).
QT_PAIRS_TARGET inline __m512i round_to_bf16(__m512 x) {
    const __m512i bits = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    return _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
}

// n floats -> (n + 1) / 2 words of two BF16 values (x[2i] in the low half; past n: zero), 32 floats a step.
QT_PAIRS_TARGET void row_to_pairs(const float *x, int64_t n, uint32_t *y) {
    alignas(64) static const uint16_t high_halves[32] = {1,  3,  5,  7,  9,  11, 13, 15, 17, 19, 21,
                                                         23, 25, 27, 29, 31, 33, 35, 37, 39, 41, 43,
                                                         45, 47, 49, 51, 53, 55, 57, 59, 61, 63};
    const __m512i pick = _mm512_load_si512((const void *)high_halves);
    for (int64_t i = 0; i < n; i += 2 * LANES) {
        const __m512i lo = round_to_bf16(_mm512_maskz_loadu_ps(tail_mask16(n - i), x + i));
        const __m512i hi =
            round_to_bf16(_mm512_maskz_loadu_ps(tail_mask16(std::max<int64_t>(0, n - i - LANES)), x + i + LANES));
        _mm512_mask_storeu_epi32(y + i / 2, tail_mask16((n - i + 1) / 2), _mm512_permutex2var_epi16(lo, pick, hi));
    }
}

// Epilogue of one 16-lane output vector (outputs o.., time t): bias, residual, snake; stores the first n lanes.
QT_PAIRS_TARGET inline void finish(const ConvArgs &a, __m512 v, int64_t t, int o, int n) {
    const PackedConv &w = *a.w;
    const __mmask16 m = tail_mask16(n);
    if (!w.bias.empty()) v = _mm512_add_ps(v, _mm512_loadu_ps(&w.bias[o]));
    if (a.res) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, a.res + (size_t)t * w.cout + o));
    if (!w.snake_ea.empty()) v = snake16(v, _mm512_loadu_ps(&w.snake_ea[o]), _mm512_loadu_ps(&w.snake_ib[o]));
    _mm512_mask_storeu_ps(a.y + (size_t)t * w.cout + o, m, v);
}

// Outputs ob*32 .. +31 at times t0 .. t0+R-1 from the piece's rounded rows X ([rows][np] words; time t0 is the
// piece's step u0): R x 2 accumulators over every tap and channel pair.
template <int R>
QT_PAIRS_TARGET void pair_tile(const ConvArgs &a, const uint32_t *X, int64_t np, int64_t u0, int64_t t0, int ob) {
    const PackedConv &w = *a.w;
    const uint32_t *wp = w.packed_pairs.data() + (size_t)ob * w.k * np * PackedConv::OB_PAIRS;
    // (the loops over r are unrolled so that the accumulators live in registers; GCC does not at -O2)
    __m512 acc[R][2];
#pragma GCC unroll 12
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int j = 0; j < w.k; j++) {
        const uint32_t *xr[R];
#pragma GCC unroll 12
        for (int r = 0; r < R; r++) xr[r] = X + ((u0 + r) * w.stride + (int64_t)j * w.dil) * np;
        for (int64_t p = 0; p < np; p++, wp += PackedConv::OB_PAIRS) {
            const __m512bh lo = as_bf16x32(_mm512_loadu_si512((const void *)wp));  // outputs o0 .. o0+15
            const __m512bh hi = as_bf16x32(_mm512_loadu_si512((const void *)(wp + LANES)));
#pragma GCC unroll 12
            for (int r = 0; r < R; r++) {
                const __m512bh xb = as_bf16x32(_mm512_set1_epi32((int)xr[r][p]));
                acc[r][0] = _mm512_dpbf16_ps(acc[r][0], xb, lo);
                acc[r][1] = _mm512_dpbf16_ps(acc[r][1], xb, hi);
            }
        }
    }
    const int o0 = ob * PackedConv::OB_PAIRS;
#pragma GCC unroll 12
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const int o = o0 + LANES * h, n = std::min(LANES, w.cout - o);
            if (n > 0) finish(a, acc[r][h], t0 + r, o, n);
        }
}

using PairTileFn = void (*)(const ConvArgs &, const uint32_t *, int64_t, int64_t, int64_t, int);
constexpr PairTileFn pair_tiles[MT_PAIRS + 1] = {nullptr,       pair_tile<1>,  pair_tile<2>, pair_tile<3>, pair_tile<4>,
                                                 pair_tile<5>,  pair_tile<6>,  pair_tile<7>, pair_tile<8>, pair_tile<9>,
                                                 pair_tile<10>, pair_tile<11>, pair_tile<12>};

// A span in pieces of PIECE time steps: the rows a piece reads rounded once, then its register blocks.
void pairs_span(const ConvArgs &a, int64_t t_begin, int64_t t_end, int ob) {
    const PackedConv &w = *a.w;
    const int64_t np = w.n_pairs();
    thread_local std::vector<uint32_t> rows;  // grows to the largest piece: rows_read(PIECE) x np words
    for (int64_t t = t_begin; t < t_end; t += PIECE) {
        const int64_t n = std::min<int64_t>(PIECE, t_end - t), count = w.rows_read(n), first = t * w.stride;
        rows.resize((size_t)(count * np));
        for (int64_t r = 0; r < count; r++) row_to_pairs(a.row(first + r), w.cin, &rows[(size_t)(r * np)]);
        for (int64_t u = 0; u < n; u += MT_PAIRS)
            pair_tiles[std::min<int64_t>(MT_PAIRS, n - u)](a, rows.data(), np, u, t + u, ob);
    }
}

}  // namespace

SpanFn conv_span_avx512_pairs() { return pairs_span; }

}  // namespace packed_conv_detail
}  // namespace qt

#endif

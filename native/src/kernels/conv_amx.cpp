// conv_amx.cpp: see conv_amx.h. The tile code is compiled for AMX through function target attributes and only
// ever called after amx_bf16_available() said yes, so the extension still loads on any x86-64 CPU.
#include "kernels/conv_amx.h"

#include <algorithm>
#include <cstring>

#include "kernels/avx512_math.h"
#include "kernels/cpu_isa.h"
#include "common.h"

#if defined(__x86_64__) && defined(__linux__)
#define QT_AMX 1
#include <immintrin.h>
#endif

namespace qt {

using namespace amx_geometry;

int64_t AmxConv::rows_read(int64_t T) const {
    return (((T + TB - 1) / TB) * TB - 1) * stride + (int64_t)(k - 1) * dil + 1;
}

TileConfig tile_config(int n) {
    TileConfig cfg = {};
    cfg.palette_id = 1;
    for (int i = 0; i < n; i++) {
        cfg.rows[i] = TILE_ROWS;
        cfg.colsb[i] = TILE_BYTES;
    }
    return cfg;
}

#ifdef QT_AMX

namespace {

// One thread's share of the output: blocks of 32 time steps x 32 outputs, four accumulator tiles each.
__attribute__((target("amx-tile,amx-bf16"))) void conv_tiles(ggml_tensor *dst, int ith, int nth, void *ud) {
    const AmxConv &w = *(const AmxConv *)ud;
    const ggml_tensor *x = dst->src[0];
    const uint16_t *X = (const uint16_t *)x->data;
    float *Y = (float *)dst->data;
    const int64_t T = dst->ne[1];
    const int64_t n_tb = (T + TB - 1) / TB, n_ob = w.cout / OB, n_items = n_tb * n_ob;
    const auto [i0, i1] = thread_range(n_items, ith, nth);
    if (i0 >= i1) return;

    const TileConfig cfg = tile_config(8);
    _tile_loadconfig(&cfg);
    const size_t ys = (size_t)w.cout * sizeof(float);
    alignas(64) float part[TILE_ROWS * 16];
    for (int64_t it = i0; it < i1; it++) {
        const int64_t t0 = (it / n_ob) * TB, o0 = (it % n_ob) * OB;
        amx_conv_block(w, X, t0, o0);
        // accumulator (a, b): time rows t0 + 16a, outputs o0 + 16b; rows past T are dropped
        for (int a = 0; a < 2; a++)
            for (int bb = 0; bb < 2; bb++) {
                const int64_t tr = t0 + a * TILE_ROWS, rows = std::min<int64_t>(TILE_ROWS, T - tr);
                if (rows <= 0) continue;
                float *out = Y + (size_t)tr * w.cout + o0 + bb * 16;
                if (rows == TILE_ROWS) {
                    switch (a * 2 + bb) {
                        case 0: _tile_stored(0, out, ys); break;
                        case 1: _tile_stored(1, out, ys); break;
                        case 2: _tile_stored(2, out, ys); break;
                        default: _tile_stored(3, out, ys); break;
                    }
                    continue;
                }
                switch (a * 2 + bb) {
                    case 0: _tile_stored(0, part, TILE_BYTES); break;
                    case 1: _tile_stored(1, part, TILE_BYTES); break;
                    case 2: _tile_stored(2, part, TILE_BYTES); break;
                    default: _tile_stored(3, part, TILE_BYTES); break;
                }
                for (int64_t r = 0; r < rows; r++) memcpy(out + r * w.cout, part + r * 16, 16 * sizeof(float));
            }
    }
    _tile_release();
}

// F32 -> BF16 rounded to nearest even (ggml's rounding); the AMX level implies AVX512-BF16.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void row_to_bf16(const float *x, ggml_bf16_t *y,
                                                                                 int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask16(n - i);
        _mm256_mask_storeu_epi16((void *)(y + i), m, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

// F32 time-major [cin, Tx] -> BF16 [cin, Tx + 32], the last 32 columns zero; time steps split over the threads.
void to_tile_input(ggml_tensor *dst, int ith, int nth, void *) {
    const ggml_tensor *x = dst->src[0];
    const int64_t C = x->ne[0], Tx = x->ne[1], rows = dst->ne[1];
    const auto [r0, r1] = thread_range(rows, ith, nth);
    for (int64_t r = r0; r < r1; r++) {
        ggml_bf16_t *out = (ggml_bf16_t *)((char *)dst->data + r * dst->nb[1]);
        if (r < Tx)
            row_to_bf16((const float *)((const char *)x->data + r * x->nb[1]), out, C);
        else
            memset(out, 0, C * sizeof(ggml_bf16_t));
    }
}

}  // namespace

bool amx_bf16_available() { return cpu_isa().level == IsaLevel::amx; }

ggml_tensor *amx_input(ggml_context *ctx, ggml_tensor *x, int64_t pad) {
    if (x->type != GGML_TYPE_F32 || x->nb[0] != sizeof(float) || pad < 0)
        throw Error("internal error: AMX conv input must be F32 rows");
    ggml_tensor *args[] = {x};
    return ggml_custom_4d(ctx, GGML_TYPE_BF16, x->ne[0], x->ne[1] + pad, 1, 1, args, 1, to_tile_input, GGML_N_TASKS_MAX,
                          nullptr);
}

ggml_tensor *amx_conv(ggml_context *ctx, ggml_tensor *x, const AmxConv &w, int64_t T) {
    if (x->type != GGML_TYPE_BF16 || !ggml_is_contiguous(x) || x->ne[0] != w.cin || x->ne[1] < w.rows_read(T))
        throw Error("internal error: AMX conv input has the wrong shape");
    ggml_tensor *args[] = {x};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, w.cout, T, 1, 1, args, 1, conv_tiles, GGML_N_TASKS_MAX, (void *)&w);
}

#else

bool amx_bf16_available() { return false; }

ggml_tensor *amx_input(ggml_context *, ggml_tensor *, int64_t) {
    throw Error("internal error: AMX is not available on this platform");
}

ggml_tensor *amx_conv(ggml_context *, ggml_tensor *, const AmxConv &, int64_t) {
    throw Error("internal error: AMX is not available on this platform");
}

#endif

}  // namespace qt

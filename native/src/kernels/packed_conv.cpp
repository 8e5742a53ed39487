// packed_conv.cpp: see packed_conv.h. The ggml op, its shape checks and work split, and the one dispatch point
// between the ISA kernels (conv_avx2.cpp and conv_avx512.cpp on x86-64, conv_neon.cpp on ARM64).
#include "kernels/packed_conv.h"

#include <algorithm>
#include <cstring>

#include "kernels/cpu_isa.h"
#include "kernels/packed_conv_internal.h"
#include "common.h"

namespace qt {

using namespace packed_conv_detail;

void PackedConv::set_epilogue(const float *b, const float *ea, const float *ib) {
    const size_t padded = (size_t)n_blocks() * block_outputs();
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

bool packed_conv_available() {
#if defined(__x86_64__)
    return isa_at_least(IsaLevel::avx2);
#elif defined(__aarch64__)
    return isa_at_least(IsaLevel::neon);
#else
    return false;
#endif
}

bool packed_conv_pairs_available() {
#if defined(__x86_64__)
    return avx512_emulated || (isa_at_least(IsaLevel::avx512) && cpu_isa().avx512_bf16);
#else
    return false;
#endif
}

namespace {

void require_kernel() {
    if (!packed_conv_available()) throw Error("internal error: no packed conv kernel at this ISA level");
}

SpanFn conv_span(PackedForm form) {
#if defined(__x86_64__)
    return form == PackedForm::bf16_pairs ? conv_span_avx512_pairs() : conv_span_avx2(form);
#elif defined(__aarch64__)
    if (form == PackedForm::bf16_pairs) throw Error("internal error: no BF16-pair conv kernel on ARM64");
    return conv_span_neon(form);
#else
    (void)form;
    throw Error("internal error: no packed conv kernel on this platform");
#endif
}

// Work items: (block of outputs, chunk of time), output-major, so that a thread's consecutive items share their
// weights. Time is split (in register blocks) only as far as needed to give every thread a few items.
void conv_items(const ConvArgs &a, int ith, int nth) {
    const int n_ob = a.w->n_blocks();
    const int64_t mt = a.w->form == PackedForm::bf16_pairs ? MT_PAIRS : MT;
    const int64_t n_tb = (a.T + mt - 1) / mt;
    const int64_t n_tc = std::max<int64_t>(1, std::min<int64_t>(n_tb, (4 * (int64_t)nth + n_ob - 1) / n_ob));
    const int64_t tb_per_chunk = (n_tb + n_tc - 1) / n_tc;
    const int64_t n_items = (int64_t)n_ob * n_tc;
    const auto [i0, i1] = thread_range(n_items, ith, nth);
    const SpanFn span = conv_span(a.w->form);
    for (int64_t it = i0; it < i1; it++) {
        const int64_t t_begin = (it % n_tc) * tb_per_chunk * mt;
        span(a, t_begin, std::min(a.T, t_begin + tb_per_chunk * mt), (int)(it / n_tc));
    }
}

// src: x, residual (or null), tail (or null)
void conv_op(ggml_tensor *dst, int ith, int nth, void *ud) {
    const ggml_tensor *x = dst->src[0], *res = dst->src[1], *tail = dst->src[2];
    const ConvArgs a = {(const PackedConv *)ud,
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

ggml_tensor *conv_node(ggml_context *ctx, ggml_tensor *x, ggml_tensor *tail, const PackedConv &w, int64_t T,
                       ggml_tensor *residual) {
    require_kernel();
    if (w.form == PackedForm::bf16_pairs && !packed_conv_pairs_available())
        throw Error("internal error: no BF16-pair conv kernel at this ISA level");
    const int64_t L = tail ? tail->ne[1] : 0;
    if (x->type != GGML_TYPE_F32 || !ggml_is_contiguous(x) || x->ne[0] != w.cin || T < 1 ||
        L + x->ne[1] < w.rows_read(T))
        throw Error("internal error: packed conv input has the wrong shape");
    if (tail && (tail->type != GGML_TYPE_F32 || !ggml_is_contiguous(tail) || tail->ne[0] != w.cin))
        throw Error("internal error: packed conv left context has the wrong shape");
    if (residual && (residual->type != GGML_TYPE_F32 || !ggml_is_contiguous(residual) || residual->ne[0] != w.cout ||
                     residual->ne[1] != T))
        throw Error("internal error: packed conv residual has the wrong shape");
    ggml_tensor *args[] = {x, residual, tail};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, w.cout, T, 1, 1, args, 3, conv_op, GGML_N_TASKS_MAX, (void *)&w);
}

}  // namespace

void conv_snake_row(const float *x, const float *bias, const float *ea, const float *ib, int64_t C, float *y) {
    require_kernel();
#if defined(__x86_64__)
    snake_row_avx2(x, bias, ea, ib, C, y);
#elif defined(__aarch64__)
    snake_row_neon(x, bias, ea, ib, C, y);
#else
    (void)x, (void)bias, (void)ea, (void)ib, (void)C, (void)y;
#endif
}

void conv_elu_row(const float *x, int64_t n, float *y) {
    require_kernel();
#if defined(__x86_64__)
    elu_row_avx2(x, n, y);
#elif defined(__aarch64__)
    elu_row_neon(x, n, y);
#else
    (void)x, (void)n, (void)y;
#endif
}

ggml_tensor *packed_conv(ggml_context *ctx, ggml_tensor *x, const PackedConv &w, int64_t T, ggml_tensor *residual) {
    return conv_node(ctx, x, nullptr, w, T, residual);
}

ggml_tensor *packed_causal_conv(ggml_context *ctx, ggml_cgraph *gf, ggml_tensor *x, ggml_tensor *tail,
                                const PackedConv &w, ggml_tensor *residual) {
    if (tail->ne[1] != (int64_t)(w.k - 1) * w.dil + 1 - w.stride || x->ne[1] % w.stride)
        throw Error("internal error: packed conv left context has the wrong length");
    ggml_tensor *y = conv_node(ctx, x, tail, w, x->ne[1] / w.stride, residual);
    ggml_build_forward_expand(gf, ggml_map_custom3_inplace(ctx, tail, x, y, keep_tail, 1, nullptr));
    return y;
}

}  // namespace qt

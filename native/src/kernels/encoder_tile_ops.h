// encoder_tile_ops.h: the ggml custom ops of the encoders' BF16 paths (codec encoder, speaker encoder) on CPUs with AMX.
//
// The codec decoder runs its convolutions on AMX tiles through conv_amx.h; the two encoders do the same, with the
// element-wise work around each tile product fused into it, since at the tiles' speed the separate F32 passes
// (activation, BF16 copy, padding, bias, residual) would cost more than the products:
//   * input: the conv input as BF16 time-major rows, built in one pass from up to 8 F32 sources
//     concatenated along the channels (optionally plus a second addend), through an activation (ELU, GELU, ReLU,
//     tanh), with the conv's left context (a carried BF16 tail, zeros, reflect or replicate) and right padding;
//   * conv: the convolution on tiles (weights in AmxConv's packed layout) with its epilogue fused: bias,
//     per-channel scale (LayerScale), residual add (read, or recomputed from a single-channel conv), ReLU; stored
//     as F32, or directly as the next conv's BF16 input (conv_to_input: activation, left context, padding);
//   * conv_from1: a convolution with a single input channel (the codec encoder's first conv), AVX-512 F32, also
//     storing the next conv's BF16 input;
//   * time_stats / time_mean: per-channel statistics over time of time-major activations (the speaker encoder's
//     squeeze-excitation mean and attentive statistics pooling, the softmax over time included);
//   * layer_norm_input, rope_qk, attention: the codec encoder transformer's LayerNorm (as a tile input), RoPE and
//     causal attention (F32, AVX-512);
//   * nearest, nearest_rescored: the nearest codebook row (the RVQ's cdist + argmin) from F32 products with the
//     rows, or from BF16 tile products with every row the BF16 error could make the nearest scored again in F32.
//
// Each is a ggml custom op, its work split over the threads of the graph's compute. Everything here runs only
// after amx_bf16_available() said yes (such CPUs have AVX-512 and AVX512-BF16); the code is compiled for them
// through function target attributes so the extension still loads anywhere.
#pragma once

#include <cstdint>
#include <cstring>
#include <deque>
#include <vector>

#include "kernels/conv_amx.h"
#include "ggml.h"
#include "common.h"

namespace qt {

enum class Act : int32_t { None, Elu, Gelu, Relu, Tanh };
enum class Edge : int32_t { Zero, Reflect, Replicate };

struct TileInputSpec {
    Act act = Act::None;
    Edge edge = Edge::Zero;
    int64_t left = 0;         // columns before the first time step
    int64_t right_fill = 0;   // columns after the last time step filled per `edge` (reflect / replicate)
    int n_x = 1;              // sources concatenated along the channels (src[0 .. n_x-1])
    bool has_add = false;     // src[n_x]: added to the single source before the activation
    bool has_tail = false;    // last src: BF16 [C, left], the left context (Edge::Zero only)
    bool layer_norm = false;  // src[1], src[2]: LayerNorm weight and bias of the single source (before act)
    float eps = 0.0f;
};

struct From1Spec;

struct TileConvSpec {
    const AmxConv *w = nullptr;
    bool has_bias = false, has_scale = false, has_res = false, relu = false;
    int64_t T = 0;          // outputs
    bool out_bf16 = false;  // the output is the next conv's BF16 input (below)
    Act out_act = Act::None;
    int64_t out_left = 0;  // its left context columns (from the tail src, or zeros)
    bool has_tail = false;
    const From1Spec *res1 = nullptr;  // residual computed from a single-channel conv (srcs: its x, its bias)
    bool res1_bias = false;
};

struct StatsSpec {
    bool weighted = false;
};

struct AttnSpec {
    int n_head = 1, n_head_kv = 1, head_dim = 64;
    float scale = 1.0f;
};

struct From1Spec {
    const float *w = nullptr;
    int k = 1, cout = 0;
    // output as a BF16 tile input (as TileOps::input would make it): act, left context (tail or zeros), padding
    bool out_bf16 = false;
    Act act = Act::None;
    int64_t left = 0, T = 0;
    bool has_tail = false;
};

// A residual that a tile conv's epilogue computes itself: the single-channel conv of x [1, T + k - 1] (F32) with
// taps w [k][cout] and bias (what TileOps::conv_from1 would return), instead of reading it.
struct Res1 {
    ggml_tensor *x = nullptr;
    const float *w = nullptr;
    int k = 1, cout = 0;
    ggml_tensor *bias = nullptr;
};

// Builds the custom ops of one graph and keeps their parameters alive: it must outlive every compute of the
// graphs built with it.
class TileOps {
public:
    explicit TileOps(ggml_context *ctx) : ctx_(ctx) {}
    void reset(ggml_context *ctx) { ctx_ = ctx; }

    // BF16 [sum C_i, left + T + right_fill + pad] from F32 sources xs[i] [C_i, T] (rows of 4-byte floats, any
    // row stride): column left + t = act(concat_i xs[i][:, t] (+ add[:, t])), columns before it the left context
    // (tail, zeros, reflect: x[:, left - j] or replicate: x[:, 0]), after it right_fill columns (reflect:
    // x[:, T-2-j], replicate: x[:, T-1]) and zeros. Reflect and replicate sources need T > left, right_fill.
    ggml_tensor *input(const std::vector<ggml_tensor *> &xs, ggml_tensor *add, ggml_tensor *tail, Act act, Edge edge,
                       int64_t left, int64_t right_fill, int64_t pad);
    // Columns of tile_input needed to compute T outputs of w starting at column 0 (x's length before padding
    // given): the pad argument of input().
    static int64_t pad_for(const AmxConv &w, int64_t T, int64_t columns) {
        const int64_t need = w.rows_read(T);
        return need > columns ? need - columns : 0;
    }

    // F32 [cout, T]: out[t] = relu?(res[t] + scale * (conv(x)[t] + bias)) over BF16 x from input().
    ggml_tensor *conv(ggml_tensor *xb, const AmxConv &w, int64_t T, ggml_tensor *bias, ggml_tensor *scale,
                      ggml_tensor *res, bool relu);
    // The same result as the next conv's BF16 input, what input() would make of it: [cout, left + T + pad],
    // column left + t = act(out[t]), the left columns the BF16 tail [cout, left] (or zeros), then pad zeros.
    // res1 (instead of res): a residual computed in the epilogue.
    ggml_tensor *conv_to_input(ggml_tensor *xb, const AmxConv &w, int64_t T, ggml_tensor *bias, ggml_tensor *res,
                               Act act, ggml_tensor *tail, int64_t left, int64_t pad, const Res1 *res1 = nullptr);

    // F32 [cout, T] from x [1, T + k - 1] (F32, contiguous): out[o, t] = bias[o] + sum_j w[j * cout + o] x[t + j].
    // w: host F32 [k][cout], alive as long as the graph.
    ggml_tensor *conv_from1(ggml_tensor *x, const float *w, int k, int cout, ggml_tensor *bias);
    // The same as the next conv's BF16 input (see conv_to_input).
    ggml_tensor *conv_from1_to_input(ggml_tensor *x, const float *w, int k, int cout, ggml_tensor *bias, Act act,
                                     ggml_tensor *tail, int64_t left, int64_t pad);

    // F32 [C, 2]: per channel, column 0 the mean and column 1 the standard deviation (sqrt of the variance
    // clamped at 1e-12) of x [C, T] over time; with logits [C, T], weighted by softmax over time of the logits.
    ggml_tensor *time_stats(ggml_tensor *x, ggml_tensor *logits);

    // F32 [C, 1]: mean over time of x [C, T].
    ggml_tensor *time_mean(ggml_tensor *x);

    // BF16 input of a k = 1 tile conv of LayerNorm(x) (x F32 [C, T], weight w and bias b [C]), pad columns of
    // zeros after it.
    ggml_tensor *layer_norm_input(ggml_tensor *x, ggml_tensor *w, ggml_tensor *b, float eps, int64_t pad);

    // F32 [(n_head + n_head_kv) * head_dim, T]: the first n_head + n_head_kv heads of x [>= that, T] (q then k,
    // time-major rows) rotated by NeoX RoPE (rotate-half) with the host tables cos, sin [head_dim / 2, 1, T].
    ggml_tensor *rope_qk(ggml_tensor *x, ggml_tensor *cos, ggml_tensor *sin, int n_head, int n_head_kv, int head_dim);

    // F32 [n_head * head_dim, T]: causal softmax(q k^T * scale) v per head (grouped heads share k, v), q and k
    // from rope_qk's output, v [n_head_kv * head_dim, T] rows (any row stride). head_dim % 16 == 0, <= 128.
    ggml_tensor *attention(ggml_tensor *qk, ggml_tensor *v, int n_head, int n_head_kv, int head_dim, float scale);
    static bool attention_fits(int head_dim) { return head_dim % 16 == 0 && head_dim <= 128; }

    // I32 [T]: per column t of dot [n, T], the first j minimising n2[j] - 2 dot[j, t] (nearest codebook row
    // from the products with the rows and their squared norms n2 [n]).
    ggml_tensor *nearest(ggml_tensor *dot, ggml_tensor *n2);
    // The same from approximate products (tile_conv's BF16 ones, approx [n, T]) of r [D, T] with the rows of
    // book [D, n]: every row whose distance the approximation cannot rule out (error bound 2^-6 |r| |y_j|, norms
    // [n] the rows' |y_j|) is scored again with an F32 product, so the result is the F32 argmin.
    ggml_tensor *nearest_rescored(ggml_tensor *approx, ggml_tensor *r, ggml_tensor *book, ggml_tensor *n2,
                                  ggml_tensor *norms);

private:
    ggml_context *ctx_;
    std::deque<TileInputSpec> in_;
    std::deque<TileConvSpec> conv_;
    std::deque<From1Spec> from1_;
    std::deque<StatsSpec> stats_;
    std::deque<AttnSpec> attn_;
};

}  // namespace qt

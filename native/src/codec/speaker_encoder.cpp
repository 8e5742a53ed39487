// speaker_encoder.cpp: the ECAPA-TDNN speaker encoder (model.md 5.2) on ggml (its C API is api/encoder_api.cpp).
//
// Activations are channel-major [T, C] (ggml ne order: ne0 = time), the layout PyTorch has them in (B, C, T):
//   * reflect "same" padding is ggml_pad_reflect_1d along ne0 (total d*(k-1), left = total // 2);
//   * a conv is im2col of the padded input ([cin*k, T]) times the weights as stored ([k*cin, cout]), with the
//     im2col columns as src0 so the result comes out channel-major [T, cout] without a transpose; a 1x1 conv
//     uses the transposed input as its columns;
//   * statistics over time (SE mean, ASP mean/std, the attention softmax) are row reductions.
// Tile path (encoders_use_tiles, encoder_tile_ops.h): activations are time-major [C, T] instead; every conv whose widths
// fit the tiles reads a BF16 copy of its input with the reflect padding (the Res2Net sum and the concatenations
// fused into it) and adds bias and ReLU as it stores; the time statistics are custom ops; the ASP's first TDNN takes
// the time-constant mean and std through a bias computed once per call. Other convs run the F32 ops above in
// channel-major order (transposed around them).
// Packed path (encoders_use_packed: AVX2 / AVX-512 / NEON, a GGUF that is not f32): time-major too, every conv on the
// packed conv kernel (pack_encoder_conv: F32 weights, or BF16 pairs with AVX512-BF16; its input joined and
// reflect-padded in one copy, the bias in the epilogue), the pooling's first TDNN split as on the tiles, its time
// statistics as on the F32 path. All three run on the model's codec compute (codec_common.h).
#include "codec/speaker_encoder.h"

#include "codec/codec_common.h"
#include "codec/codec_encoder.h"

#include <cfloat>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "kernels/encoder_tile_ops.h"
#include "kernels/packed_conv.h"
#include "runtime/gguf_meta.h"
#include "runtime/graph.h"

namespace qt {

namespace {

const char *KP = "qwen3-tts.speaker_encoder.";
const char *NO_SPK = "this model has no speaker encoder (only Base models clone voices)";
constexpr int MAX_FRAMES = 65536;  // ~11 minutes of 24 kHz audio; references are 3-30 s

// Every speaker-encoder tensor is F32 (the converter never quantizes them): load_conv's default. On the tile path,
// a conv whose widths fit the tiles has its weights packed for them in ConvWeights::amx, on the packed path in
// ConvWeights::packed.
using Conv = ConvWeights;

struct SeRes2Block {
    Conv tdnn1, tdnn2, se1, se2;
    std::vector<Conv> res;  // scale - 1 TDNNs of width C / scale
};

struct Weights {
    Conv block0, mfa, asp_tdnn, asp_conv, fc;
    std::vector<SeRes2Block> blocks;
};

Weights load_weights(const Model &m, const SpeakerEncoderHParams &h) {
    const std::string P = "spk.";
    const std::vector<int> &ch = h.channels, &ks = h.kernel_sizes, &ds = h.dilations;
    const int L = (int)ch.size();
    Weights w;
    w.block0 = load_conv(m, P + "blocks.0.conv.", {h.mel_dim, ch[0], ks[0], ds[0]});
    for (int i = 1; i < L - 1; i++) {
        const std::string b = P + "blocks." + std::to_string(i) + ".";
        const int C = ch[i], cw = C / h.res2net_scale;
        SeRes2Block B;
        B.tdnn1 = load_conv(m, b + "tdnn1.conv.", {ch[i - 1], C, 1, 1});
        for (int j = 0; j < h.res2net_scale - 1; j++)
            B.res.push_back(
                load_conv(m, b + "res2net_block.blocks." + std::to_string(j) + ".conv.", {cw, cw, ks[i], ds[i]}));
        B.tdnn2 = load_conv(m, b + "tdnn2.conv.", {C, C, 1, 1});
        B.se1 = load_conv(m, b + "se_block.conv1.", {C, h.se_channels, 1, 1});
        B.se2 = load_conv(m, b + "se_block.conv2.", {h.se_channels, C, 1, 1});
        w.blocks.push_back(std::move(B));
    }
    const int Cm = ch[L - 1];
    w.mfa = load_conv(m, P + "mfa.conv.", {Cm, Cm, ks[L - 1], ds[L - 1]});
    w.asp_tdnn = load_conv(m, P + "asp.tdnn.conv.", {3 * Cm, h.attention_channels, 1, 1});
    w.asp_conv = load_conv(m, P + "asp.conv.", {h.attention_channels, Cm, 1, 1});
    w.fc = load_conv(m, P + "fc.", {2 * Cm, h.enc_dim, 1, 1});
    return w;
}

// The tile and packed paths' attentive pooling, whose first conv is split in two: its product with the features
// (packed as `asp_x` for the tiles or `asp_x_packed` for the packed conv kernel, or `asp_x_f32` F32 [C, A] for
// ggml) and with the time-constant global mean and std (`asp_ms` F32 [2C, A]), which is one matrix-vector product
// per call.
struct TileWeights {
    std::shared_ptr<AmxConv> asp_x;
    std::shared_ptr<PackedConv> asp_x_packed;
    ggml_tensor *asp_x_f32 = nullptr, *asp_ms = nullptr;
};

struct Builder {
    ggml_context *ctx;

    // Conv1d with reflect "same" padding and bias, channel-major [T, cin] -> [T, cout].
    ggml_tensor *conv(ggml_tensor *x, const Conv &c) {
        ggml_tensor *col;
        if (c.k == 1) {
            col = ggml_cont(ctx, ggml_transpose(ctx, x));  // [cin, T]
        } else {
            const int total = c.dil * (c.k - 1), left = total / 2;
            ggml_tensor *xp = ggml_pad_reflect_1d(ctx, cont(ctx, x), left, total - left);  // [T + total, cin]
            col = ggml_im2col(ctx, c.w, xp, 1, 0, 0, 0, c.dil, 0, false, GGML_TYPE_F32);   // [cin*k, T, 1]
            col = ggml_reshape_2d(ctx, col, col->ne[0], col->ne[1]);
        }
        ggml_tensor *y = ggml_mul_mat(ctx, col, ggml_reshape_2d(ctx, c.w, (int64_t)c.k * c.cin, c.cout));  // [T, cout]
        return ggml_add(ctx, y, ggml_reshape_2d(ctx, c.b, 1, c.cout));
    }

    // Conv1d + ReLU.
    ggml_tensor *tdnn(ggml_tensor *x, const Conv &c) { return ggml_relu(ctx, conv(x, c)); }

    // 1x1 conv of one column vector [cin, 1] -> [cout, 1].
    ggml_tensor *dense(ggml_tensor *v, const Conv &c) {
        return ggml_add(ctx, ggml_mul_mat(ctx, ggml_reshape_2d(ctx, c.w, c.cin, c.cout), v), c.b);
    }

    // SE-Res2Net block: x + SE(TDNN_1x1(Res2Net(TDNN_1x1(x)))).
    ggml_tensor *se_res2(ggml_tensor *x, const SeRes2Block &B, int scale) {
        ggml_tensor *h = tdnn(x, B.tdnn1);  // [T, C]
        const int64_t T = h->ne[0], C = h->ne[1], cw = C / scale;
        ggml_tensor *cat = nullptr, *prev = nullptr;
        for (int i = 0; i < scale; i++) {
            ggml_tensor *part = ggml_view_2d(ctx, h, T, cw, h->nb[1], (size_t)i * cw * h->nb[1]);
            ggml_tensor *y;
            if (i == 0)
                y = part;
            else if (i == 1)
                y = tdnn(part, B.res[0]);
            else
                y = tdnn(ggml_add(ctx, part, prev), B.res[i - 1]);
            prev = y;
            cat = cat ? ggml_concat(ctx, cat, y, 1) : y;
        }
        h = tdnn(cont(ctx, cat), B.tdnn2);
        // Squeeze-excitation: per-channel gate from the time average.
        ggml_tensor *s = ggml_reshape_2d(ctx, ggml_mean(ctx, h), C, 1);
        s = ggml_relu(ctx, dense(s, B.se1));
        s = ggml_sigmoid(ctx, dense(s, B.se2));  // [C, 1]
        h = ggml_mul(ctx, h, ggml_reshape_2d(ctx, s, 1, C));
        return ggml_add(ctx, h, x);
    }

    // sqrt(clamp(v, 1e-12)): the ASP's std.
    ggml_tensor *safe_sqrt(ggml_tensor *v) { return ggml_sqrt(ctx, ggml_clamp(ctx, v, 1e-12f, FLT_MAX)); }

    // [a; b] of two [1, C] rows: [2C, 1].
    ggml_tensor *stack(ggml_tensor *a, ggml_tensor *b) {
        return ggml_concat(ctx, ggml_reshape_2d(ctx, a, a->ne[1], 1), ggml_reshape_2d(ctx, b, b->ne[1], 1), 0);
    }

    // Population mean and std over time of x [T, C]: [1, C] each.
    std::pair<ggml_tensor *, ggml_tensor *> time_stats(ggml_tensor *x) {
        ggml_tensor *mu = ggml_mean(ctx, x);
        return {mu, safe_sqrt(ggml_mean(ctx, ggml_sqr(ctx, ggml_sub(ctx, x, mu))))};
    }

    // Mean and std over time of x [T, C] weighted by the softmax over time of logits [T, C]: [2C, 1].
    ggml_tensor *weighted_stats(ggml_tensor *x, ggml_tensor *logits) {
        ggml_tensor *w = ggml_soft_max(ctx, logits);                // softmax over time (ne0)
        ggml_tensor *mu = ggml_sum_rows(ctx, ggml_mul(ctx, w, x));  // [1, C]
        return stack(mu, safe_sqrt(ggml_sum_rows(ctx, ggml_mul(ctx, w, ggml_sqr(ctx, ggml_sub(ctx, x, mu))))));
    }

    // Attentive statistics pooling of x [T, C] -> [2C, 1] (weighted mean, weighted std).
    ggml_tensor *asp(ggml_tensor *x, const Weights &W) {
        // Global context: population mean and std over time, repeated along time.
        const auto [mu, sd] = time_stats(x);
        ggml_tensor *in = ggml_concat(ctx, ggml_concat(ctx, x, ggml_repeat(ctx, mu, x), 1), ggml_repeat(ctx, sd, x), 1);
        return weighted_stats(x, conv(ggml_tanh(ctx, tdnn(in, W.asp_tdnn)), W.asp_conv));
    }
};

}  // namespace

// The speaker encoder's hyper-parameters and weights, built once per model (load_speaker_enc_weights).
struct SpeakerEncWeights {
    SpeakerEncoderHParams hp;
    Weights w;
    bool tiles = false;   // the BF16 / AMX path (encoders_use_tiles)
    bool packed = false;  // the packed conv kernel (encoders_use_packed)
    TileWeights t;
    OwnedTensors prep;
};

namespace {

// A conv's weight (its first cin_used inputs, or all) packed for the tiles ("same" convs: tap j reads input column
// t + j*dil of the padded input), or null when its widths do not fit.
std::shared_ptr<AmxConv> pack_conv(const Conv &c, int cin_used = 0) {
    const int cin = cin_used > 0 ? cin_used : c.cin;
    if (!AmxConv::fits(cin, c.cout)) return nullptr;
    const float *src = (const float *)c.w->data;  // [cout][cin][k]
    const int64_t k = c.k, full = c.cin;
    auto a = std::make_shared<AmxConv>();
    a->pack(cin, c.cout, c.k, c.dil, [&](int o, int j, int i) { return src[((size_t)o * full + i) * k + j]; });
    return a;
}

// The convs before the attentive pooling: block 0, the SE-Res2Net blocks' TDNNs, the MFA.
std::vector<Conv *> convs_before_pooling(Weights &W) {
    std::vector<Conv *> cs = {&W.block0};
    for (SeRes2Block &B : W.blocks) {
        cs.push_back(&B.tdnn1);
        cs.push_back(&B.tdnn2);
        for (Conv &r : B.res) cs.push_back(&r);
    }
    cs.push_back(&W.mfa);
    return cs;
}

// The packed path's weights: every conv before the pooling and the pooling's two convs (the first one's product
// with the features only) for the packed conv kernel.
void pack_for_kernel(const Model &m, SpeakerEncWeights &sw) {
    Weights &W = sw.w;
    TileWeights &t = sw.t;
    std::vector<std::function<void()>> jobs;  // independent packings, spread over the codec compute's threads
    for (Conv *c : convs_before_pooling(W)) jobs.push_back([c]() { c->packed = pack_encoder_conv(*c); });
    jobs.push_back([&W]() { W.asp_conv.packed = pack_encoder_conv(W.asp_conv); });
    jobs.push_back([&W, &t]() { t.asp_x_packed = pack_encoder_conv(W.asp_tdnn, W.mfa.cout); });
    codec_compute(m).run_jobs(jobs, m.n_threads);
}

// The tile path's weights: every conv whose widths fit on the tiles.
void pack_for_tiles(const Model &m, SpeakerEncWeights &sw) {
    Weights &W = sw.w;
    TileWeights &t = sw.t;
    std::vector<std::function<void()>> jobs;  // independent packings, spread over the codec compute's threads
    auto job = [&jobs](Conv &c) { jobs.push_back([&c]() { c.amx = pack_conv(c); }); };
    for (Conv *c : convs_before_pooling(W)) job(*c);
    jobs.push_back([&t, &W]() { t.asp_x = pack_conv(W.asp_tdnn, W.mfa.cout); });
    job(W.asp_conv);
    codec_compute(m).run_jobs(jobs, m.n_threads);
}

// The pooling's first conv split (TileWeights): the mean and std columns as asp_ms, and the feature columns as
// asp_x_f32 where neither kernel took them.
void split_pooling(SpeakerEncWeights &sw) {
    const Weights &W = sw.w;
    TileWeights &t = sw.t;
    const int64_t C = W.mfa.cout, A = W.asp_tdnn.cout;
    sw.prep.begin(2, "speaker encoder weights");
    t.asp_ms = ggml_new_tensor_2d(sw.prep.ctx(), GGML_TYPE_F32, 2 * C, A);
    if (!t.asp_x && !t.asp_x_packed) t.asp_x_f32 = ggml_new_tensor_2d(sw.prep.ctx(), GGML_TYPE_F32, C, A);
    sw.prep.allocate("speaker encoder weights");
    const float *src = (const float *)W.asp_tdnn.w->data;  // [A][3C] (k = 1)
    for (int64_t a = 0; a < A; a++) {
        memcpy((float *)t.asp_ms->data + a * 2 * C, src + a * 3 * C + C, 2 * C * sizeof(float));
        if (t.asp_x_f32) memcpy((float *)t.asp_x_f32->data + a * C, src + a * 3 * C, C * sizeof(float));
    }
}

std::shared_ptr<const SpeakerEncWeights> build_speaker_enc_weights(const Model &m) {
    auto sw = std::make_shared<SpeakerEncWeights>();
    sw->hp = read_speaker_encoder_hparams(m);
    sw->w = load_weights(m, sw->hp);
    sw->tiles = encoders_use_tiles(m);
    sw->packed = !sw->tiles && encoders_use_packed(m);
    if (sw->packed) pack_for_kernel(m, *sw);
    if (sw->tiles) pack_for_tiles(m, *sw);
    if (sw->tiles || sw->packed) split_pooling(*sw);
    return sw;
}

}  // namespace

int speaker_embedding_size(const Model &m) { return load_speaker_enc_weights(m)->hp.enc_dim; }

std::shared_ptr<const SpeakerEncWeights> load_speaker_enc_weights(const Model &m) {
    if (!m.has_speaker_encoder) read_speaker_encoder_hparams(m);  // throws the "no speaker encoder" error
    return m.spk_enc.get([&] { return build_speaker_enc_weights(m); });
}

SpeakerEncoderHParams read_speaker_encoder_hparams(const Model &m) {
    const Meta meta(m.gguf);
    const gguf_context *g = m.gguf.get();
    auto key = [](const char *k) { return std::string(KP) + k; };
    if (!m.has_speaker_encoder || gguf_find_key(g, key("mel_dim").c_str()) < 0) throw Error(NO_SPK);
    SpeakerEncoderHParams h;
    h.mel_dim = positive_dim(meta, key("mel_dim"));
    h.enc_dim = positive_dim(meta, key("enc_dim"));
    h.attention_channels = positive_dim(meta, key("attention_channels"));
    h.res2net_scale = positive_dim(meta, key("res2net_scale"));
    h.se_channels = positive_dim(meta, key("se_channels"));
    h.sample_rate = positive_dim(meta, key("sample_rate"));
    h.channels = meta.i32_array(key("channels"));
    h.kernel_sizes = meta.i32_array(key("kernel_sizes"));
    h.dilations = meta.i32_array(key("dilations"));

    const std::vector<int> &ch = h.channels;
    const int L = (int)ch.size();
    if (L < 3 || (int)h.kernel_sizes.size() != L || (int)h.dilations.size() != L)
        throw Error("speaker encoder: channels, kernel_sizes and dilations must have the same length (at least 3)");
    if (h.enc_dim != m.hp.talker.n_embd)
        throw Error("speaker encoder: enc_dim " + std::to_string(h.enc_dim) + " differs from the talker hidden size " +
                    std::to_string(m.hp.talker.n_embd));
    int64_t mfa_in = 0;
    for (int i = 1; i < L - 1; i++) {
        if (ch[i] != ch[i - 1])
            throw Error("speaker encoder: SE-Res2Net block " + std::to_string(i) + " changes the width (" +
                        std::to_string(ch[i - 1]) + " -> " + std::to_string(ch[i]) + "), its residual needs it kept");
        if (ch[i] % h.res2net_scale != 0)
            throw Error("speaker encoder: width " + std::to_string(ch[i]) + " is not a multiple of res2net_scale " +
                        std::to_string(h.res2net_scale));
        mfa_in += ch[i];
    }
    if (mfa_in != ch[L - 1])
        throw Error("speaker encoder: the MFA width " + std::to_string(ch[L - 1]) +
                    " differs from the concatenated SE-Res2Net outputs (" + std::to_string(mfa_in) + ")");
    // Reflect padding needs pad < length on both sides, at every conv with k > 1 (block 0, the Res2Net convs, MFA).
    int need = 1;
    for (int i = 0; i < L; i++) {
        const int64_t total = (int64_t)h.dilations[i] * (h.kernel_sizes[i] - 1);
        if (total > MAX_FRAMES) throw Error("speaker encoder: kernel size x dilation is implausible");
        const int right = (int)(total - total / 2);
        need = std::max(need, right + 1);
    }
    h.min_frames = need;
    return h;
}

namespace {

// concat(xs) along the channels (+ add): one time-major conv input.
ggml_tensor *joined(ggml_context *ctx, const std::vector<ggml_tensor *> &xs, ggml_tensor *add) {
    ggml_tensor *x = xs[0];
    for (size_t i = 1; i < xs.size(); i++) x = ggml_concat(ctx, x, xs[i], 0);
    return add ? ggml_add(ctx, x, add) : x;
}

// The layers before the pooling on time-major activations [C, T] (the tile and packed paths): block 0, the
// SE-Res2Net blocks and the MFA, through conv(xs, add, c) = ReLU(conv(concat(xs) (+ add)) + b) with "same" reflect
// padding and time_mean(x) = the mean over time [C, 1] of x [C, T]. mel: [mel_dim, T].
template <class ConvFn, class MeanFn>
ggml_tensor *time_major_layers(ggml_context *ctx, Builder &B, const SpeakerEncWeights &S, ggml_tensor *mel, ConvFn conv,
                               MeanFn time_mean) {
    const SpeakerEncoderHParams &h = S.hp;
    const Weights &W = S.w;
    const int64_t T = mel->ne[1];
    ggml_tensor *cur = conv({mel}, nullptr, W.block0);
    std::vector<ggml_tensor *> outs;
    for (const SeRes2Block &blk : W.blocks) {
        ggml_tensor *a = conv({cur}, nullptr, blk.tdnn1);  // [C, T]
        const int64_t C = a->ne[0], cw = C / h.res2net_scale;
        std::vector<ggml_tensor *> ys;
        for (int i = 0; i < h.res2net_scale; i++) {
            ggml_tensor *part = ggml_view_2d(ctx, a, cw, T, a->nb[1], (size_t)i * cw * sizeof(float));
            ys.push_back(i == 0 ? part : conv({part}, i == 1 ? nullptr : ys.back(), blk.res[i - 1]));
        }
        ggml_tensor *hh = conv(ys, nullptr, blk.tdnn2);
        // squeeze-excitation: per-channel gate from the time average
        ggml_tensor *sv = ggml_relu(ctx, B.dense(time_mean(hh), blk.se1));
        sv = ggml_sigmoid(ctx, B.dense(sv, blk.se2));
        cur = ggml_add(ctx, ggml_mul(ctx, hh, sv), cur);
        outs.push_back(cur);
    }
    return conv(outs, nullptr, W.mfa);  // [C, T]
}

// The tile path's graph: time-major activations [C, T] (ggml ne0 = channels), every conv whose widths fit on the
// tiles (reflect padding, bias and ReLU fused), the rest through the F32 ops in channel-major order.
ggml_tensor *build_tiles(ggml_context *ctx, TileOps &ops, const SpeakerEncWeights &S, ggml_tensor *mel) {
    const Weights &W = S.w;
    const TileWeights &tw = S.t;  // the attentive pooling's split first conv
    const int64_t T = mel->ne[1];
    Builder B{ctx};
    auto conv = [&](const std::vector<ggml_tensor *> &xs, ggml_tensor *add, const Conv &c) {
        const AmxConv *a = c.amx.get();
        const int total = c.dil * (c.k - 1), left = total / 2, right = total - left;
        if (a) {
            ggml_tensor *xb = ops.input(xs, add, nullptr, Act::None, total > 0 ? Edge::Reflect : Edge::Zero, left,
                                        right, TileOps::pad_for(*a, T, left + T + right));
            return ops.conv(xb, *a, T, c.b, nullptr, nullptr, true);
        }
        ggml_tensor *y = B.tdnn(ggml_cont(ctx, ggml_transpose(ctx, joined(ctx, xs, add))), c);  // [T, cout]
        return ggml_cont(ctx, ggml_transpose(ctx, y));
    };
    ggml_tensor *m = time_major_layers(ctx, B, S, mel, conv, [&](ggml_tensor *x) { return ops.time_mean(x); });
    const int64_t C = m->ne[0];
    // attentive statistics pooling: the first TDNN of [m | mean | std] is W_x m + (W_ms [mean; std] + b)
    ggml_tensor *st = ggml_reshape_2d(ctx, ops.time_stats(m, nullptr), 2 * C, 1);
    ggml_tensor *cb = ggml_add(ctx, ggml_mul_mat(ctx, tw.asp_ms, st), W.asp_tdnn.b);  // [A, 1]
    ggml_tensor *att;
    if (tw.asp_x) {
        att = ops.conv(ops.input({m}, nullptr, nullptr, Act::None, Edge::Zero, 0, 0, TileOps::pad_for(*tw.asp_x, T, T)),
                       *tw.asp_x, T, cb, nullptr, nullptr, true);
    } else {
        att = ggml_relu(ctx, ggml_add(ctx, ggml_mul_mat(ctx, tw.asp_x_f32, m), cb));
    }
    ggml_tensor *logits;
    if (W.asp_conv.amx) {
        const AmxConv &a = *W.asp_conv.amx;
        logits = ops.conv(ops.input({att}, nullptr, nullptr, Act::Tanh, Edge::Zero, 0, 0, TileOps::pad_for(a, T, T)), a,
                          T, W.asp_conv.b, nullptr, nullptr, false);
    } else {
        logits = ggml_add(
            ctx,
            ggml_mul_mat(ctx, ggml_reshape_2d(ctx, W.asp_conv.w, W.asp_conv.cin, W.asp_conv.cout), ggml_tanh(ctx, att)),
            W.asp_conv.b);
    }
    ggml_tensor *pooled = ggml_reshape_2d(ctx, ops.time_stats(m, logits), 2 * C, 1);
    return B.dense(pooled, W.fc);  // [enc_dim, 1]
}

// A packed conv's input in one pass: the channels of the time-major parts src[0..n) (rows may be strided) side by
// side, plus the last source where userdata's low bit says there is one to add ([sum C, T], contiguous), reflect-padded
// by left = userdata >> 1 rows before (and the rest of dst's rows after). A chain of ggml_concat would copy the growing
// tensor once per part (the Res2Net joins res2net_scale parts), then the add and the padding once more each.
void op_join_rows(ggml_tensor *dst, int ith, int nth, void *userdata) {
    const bool has_add = (intptr_t)userdata & 1;
    const int64_t left = (intptr_t)userdata >> 1;
    int n = 0;
    while (n < GGML_MAX_SRC && dst->src[n]) n++;
    const ggml_tensor *add = has_add ? dst->src[--n] : nullptr;
    const int64_t T = dst->src[0]->ne[1];
    const auto [r0, r1] = thread_range(dst->ne[1], ith, nth);
    for (int64_t r = r0; r < r1; r++) {
        const int64_t t = r < left ? left - r : r - left < T ? r - left : 2 * (T - 1) - (r - left);
        float *out = (float *)((char *)dst->data + r * dst->nb[1]);
        for (int i = 0, c = 0; i < n; c += (int)dst->src[i]->ne[0], i++)
            memcpy(out + c, (const char *)dst->src[i]->data + t * dst->src[i]->nb[1],
                   dst->src[i]->ne[0] * sizeof(float));
        if (add) {
            const float *a = (const float *)((const char *)add->data + t * add->nb[1]);
            for (int64_t c = 0; c < dst->ne[0]; c++) out[c] += a[c];
        }
    }
}

// concat(xs) (+ add) reflect-padded by `left` rows before and `right` after (op_join_rows): [sum C, left + T + right].
ggml_tensor *joined_rows(ggml_context *ctx, const std::vector<ggml_tensor *> &xs, ggml_tensor *add, int left,
                         int right) {
    std::vector<ggml_tensor *> args(xs);
    int64_t C = 0;
    for (ggml_tensor *x : xs) C += x->ne[0];
    if (add) args.push_back(add);
    // (ggml_custom_4d takes fewer than GGML_MAX_SRC sources; the released config joins at most 4: res2net_scale)
    if (args.size() >= GGML_MAX_SRC || (add && (add->ne[0] != C || !ggml_is_contiguous(add))))
        throw Error("internal error: speaker encoder conv input does not fit one join");
    return ggml_custom_4d(ctx, GGML_TYPE_F32, C, xs[0]->ne[1] + left + right, 1, 1, args.data(), (int)args.size(),
                          op_join_rows, GGML_N_TASKS_MAX, (void *)(((intptr_t)left << 1) | (add ? 1 : 0)));
}

// The packed path's attentive pooling of time-major m [C, T] -> [2C, 1]: the first TDNN split as on the tiles,
// W_x m on the packed kernel plus (W_ms [mean; std] + b), one matrix-vector product per call (no 3C-wide input);
// the statistics over time in channel-major order, as the F32 path's.
ggml_tensor *pool_packed(ggml_context *ctx, Builder &B, const SpeakerEncWeights &S, ggml_tensor *m) {
    const Weights &W = S.w;
    const TileWeights &tw = S.t;
    const int64_t T = m->ne[1];
    ggml_tensor *mc = ggml_cont(ctx, ggml_transpose(ctx, m));  // [T, C]
    const auto [mu, sd] = B.time_stats(mc);
    ggml_tensor *cb = ggml_add(ctx, ggml_mul_mat(ctx, tw.asp_ms, B.stack(mu, sd)), W.asp_tdnn.b);    // [A, 1]
    ggml_tensor *att = ggml_relu(ctx, ggml_add(ctx, packed_conv(ctx, m, *tw.asp_x_packed, T), cb));  // [A, T]
    ggml_tensor *logits = packed_conv(ctx, ggml_tanh(ctx, att), *W.asp_conv.packed, T);              // [C, T]
    return B.weighted_stats(mc, ggml_cont(ctx, ggml_transpose(ctx, logits)));
}

// The packed path's graph (encoders_use_packed): time-major activations [C, T] as on the tiles, every conv on the
// packed conv kernel (its input joined and reflect-padded in one pass, op_join_rows; the bias in its epilogue), the
// pooling as pool_packed. mel: [mel_dim, T].
ggml_tensor *build_packed(ggml_context *ctx, const SpeakerEncWeights &S, ggml_tensor *mel) {
    const int64_t T = mel->ne[1];
    Builder B{ctx};
    auto conv = [&](const std::vector<ggml_tensor *> &xs, ggml_tensor *add, const Conv &c) {
        const int total = c.dil * (c.k - 1);
        ggml_tensor *xp = total == 0 && xs.size() == 1 && !add
                              ? cont(ctx, xs[0])
                              : joined_rows(ctx, xs, add, total / 2, total - total / 2);
        return ggml_relu(ctx, packed_conv(ctx, xp, *c.packed, T));
    };
    auto time_mean = [&](ggml_tensor *x) {  // [C, 1]
        return ggml_reshape_2d(ctx, ggml_mean(ctx, ggml_cont(ctx, ggml_transpose(ctx, x))), x->ne[0], 1);
    };
    ggml_tensor *m = time_major_layers(ctx, B, S, mel, conv, time_mean);  // [C, T]
    return B.dense(pool_packed(ctx, B, S, m), S.w.fc);                    // [enc_dim, 1]
}

}  // namespace

void speaker_embedding(const Model &m, const float *mel, int n_frames, int mel_dim, float *out) {
    const std::shared_ptr<const SpeakerEncWeights> S = load_speaker_enc_weights(m);
    const SpeakerEncoderHParams &h = S->hp;
    if (!mel || !out) throw Error("mel or out is NULL");
    if (mel_dim != h.mel_dim)
        throw Error("the speaker encoder takes " + std::to_string(h.mel_dim) + " mel bins, got " +
                    std::to_string(mel_dim));
    if (n_frames < h.min_frames)
        throw Error("the speaker encoder needs at least " + std::to_string(h.min_frames) + " mel frames, got " +
                    std::to_string(n_frames));
    if (n_frames > MAX_FRAMES)
        throw Error("the speaker encoder takes at most " + std::to_string(MAX_FRAMES) + " mel frames (~" +
                    std::to_string(MAX_FRAMES * 256 / 24000 / 60) + " min of audio), got " + std::to_string(n_frames));
    const int64_t T = n_frames;
    // The F32 path's input is channel-major [T, mel_dim] (ne0 = time), the tile and packed paths' time-major
    // [mel_dim, T] (the caller's layout); with a finite check on the way.
    const bool time_major = S->tiles || S->packed;
    std::vector<float> x((size_t)T * mel_dim);
    for (int64_t t = 0; t < T; t++)
        for (int c = 0; c < mel_dim; c++) {
            const float v = mel[(size_t)t * mel_dim + c];
            if (!std::isfinite(v)) throw Error("the mel spectrogram holds NaN or infinite values");
            x[time_major ? (size_t)t * mel_dim + c : (size_t)c * T + t] = v;
        }

    const Weights &W = S->w;
    size_t n_convs = 5 + W.blocks.size() * (4 + (size_t)h.res2net_scale);

    CodecCompute &compute = codec_compute(m);
    Graph g;
    g.begin(256 + 24 * n_convs);
    ggml_context *ctx = g.ctx();
    TileOps ops(ctx);
    ggml_tensor *inp, *emb;
    if (time_major) {
        inp = g.input(GGML_TYPE_F32, mel_dim, T);
        emb = S->tiles ? build_tiles(ctx, ops, *S, inp) : build_packed(ctx, *S, inp);
    } else {
        Builder B{ctx};
        inp = g.input(GGML_TYPE_F32, T, mel_dim);
        ggml_tensor *cur = B.tdnn(inp, W.block0);
        ggml_tensor *mfa = nullptr;
        for (const SeRes2Block &blk : W.blocks) {
            cur = B.se_res2(cur, blk, h.res2net_scale);
            mfa = mfa ? ggml_concat(ctx, mfa, cur, 1) : cur;
        }
        cur = B.tdnn(mfa, W.mfa);             // [T, C]
        ggml_tensor *pooled = B.asp(cur, W);  // [2C, 1]
        emb = B.dense(pooled, W.fc);          // [enc_dim, 1]
    }
    g.output(emb);

    g.allocate(compute.backend());
    ggml_backend_tensor_set(inp, x.data(), 0, ggml_nbytes(inp));
    compute.compute(g.gf, m.n_threads);
    ggml_backend_tensor_get(emb, out, 0, ggml_nbytes(emb));
}

}  // namespace qt

// codec_decoder.cpp: the 12 Hz codec decoder (model.md 6.1, 6.2) as a stateful ggml stream.
//
// Activations are time-major [C, T] (ggml ne order: ne0 = channels) throughout. The convolutions run on weights
// prepared once per model (CodecConv, codec_decoder.h):
//   * causal conv: [left tail | x] (the tail carried between calls) times the tap-major weight, read through an
//     overlapping strided view of the input (no im2col copy; one mul_mat per tap when dilated); k = 1 convs are
//     a plain mul_mat on the stored weight; on AMX tiles (conv_amx.h) or the packed conv kernel (packed_conv.h)
//     instead where the weights are packed for them, the latter with bias, residual and SnakeBeta fused;
//   * causal transposed conv: one product gives each input frame's [cout, k] contribution, overlap-added (k = 2s)
//     with the previous frame's (carried between calls);
//   * ConvNeXt depthwise conv: ggml_ssm_conv on the transposed, tail-extended input;
//   * SnakeBeta (with the preceding bias add fused in) and the residual sums are small custom ops.
#include "codec/codec_decoder.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <mutex>
#include <string>

#include "kernels/avx512_math.h"
#include "kernels/conv_amx.h"
#include "kernels/packed_conv.h"
#include "kernels/cpu_isa.h"
#include "kernels/packed_matvec.h"
#include "runtime/gguf_meta.h"
#include "runtime/graph.h"

namespace qt {

// ------------------------------------------------------------------------------------------------ metadata

namespace {

const char *KP = "qwen3-tts.codec.decoder.";

void check_codec_hparams(const CodecHParams &h) {
    if (h.n_q != 16) throw Error("codec decoder: num_quantizers must be 16, got " + std::to_string(h.n_q));
    if (h.codebook_dim % 2 || h.n_head_kv <= 0 || h.n_head % h.n_head_kv || h.head_dim <= 0 || h.head_dim % 2 ||
        !(h.eps >= 0.0f) || !(h.rope_theta > 0.0f))
        throw Error("codec decoder hyper-parameters are inconsistent");
    if (h.rates.empty() || h.up_ratios.empty()) throw Error("codec decoder: empty upsample rate lists");
    int c = h.decoder_dim;
    for (size_t i = 0; i < h.rates.size(); i++, c /= 2)
        if (c % 2 || c < 2) throw Error("codec decoder: decoder_dim does not halve through every block");
}

// The product of the upsampling ratios and rates, checked against the GGUF's declared samples per frame.
int samples_per_frame(const Meta &meta, const CodecHParams &h) {
    int64_t spf = 1;
    for (int r : h.up_ratios) spf *= r;
    for (int r : h.rates) spf *= r;
    if (spf > 1 << 20) throw Error("codec decoder: upsample rates are implausible");
    const int declared = meta.i32_or("qwen3-tts.codec.upsample_rate", (int)spf);
    if (declared != spf)
        throw Error("codec decoder: upsample rates give " + std::to_string(spf) +
                    " samples per frame but the GGUF declares " + std::to_string(declared));
    return (int)spf;
}

}  // namespace

CodecHParams read_codec_hparams(const Model &m) {
    const Meta meta(m.gguf);
    auto key = [](const char *k) { return std::string(KP) + k; };
    CodecHParams h;
    h.n_q = meta.i32(key("num_quantizers"));
    h.codebook_size = positive_dim(meta, key("codebook_size"));
    h.codebook_dim = positive_dim(meta, key("codebook_dim"));
    h.rvq_dim = h.codebook_dim / 2;
    h.latent = positive_dim(meta, key("latent_dim"));
    h.hidden = positive_dim(meta, key("hidden_size"));
    h.n_ff = positive_dim(meta, key("intermediate_size"));
    h.n_layer = positive_dim(meta, key("num_hidden_layers"));
    h.n_head = positive_dim(meta, key("num_attention_heads"));
    h.n_head_kv = meta.i32_or(key("num_key_value_heads"), h.n_head);
    h.head_dim = meta.i32_or(key("head_dim"), h.hidden / h.n_head);
    h.eps = meta.f32_or(key("rms_norm_eps"), 1e-5f);
    h.rope_theta = meta.f32_or(key("rope_theta"), 10000.0f);
    h.window = positive_dim(meta, key("sliding_window"));
    h.decoder_dim = positive_dim(meta, key("decoder_dim"));
    h.up_ratios = meta.i32_array(key("upsampling_ratios"));
    h.rates = meta.i32_array(key("upsample_rates"));
    h.sample_rate = meta.i32_or("qwen3-tts.codec.sample_rate", 24000);
    if (meta.i32_or(key("num_semantic_quantizers"), 1) != 1)
        throw Error("codec decoder: only num_semantic_quantizers = 1 is supported");
    check_codec_hparams(h);
    h.samples_per_frame = samples_per_frame(meta, h);
    return h;
}

// ------------------------------------------------------------------------------------------------ weights

namespace {

CodecSnake load_snake(const Model &m, const std::string &p, int c) {
    ggml_tensor *a = expect_f32(m, p + "alpha", {c}), *b = expect_f32(m, p + "beta", {c});
    CodecSnake s;
    s.ea.resize(c);
    s.ib.resize(c);
    const float *ad = (const float *)a->data, *bd = (const float *)b->data;
    for (int i = 0; i < c; i++) {
        s.ea[i] = std::exp(ad[i]);
        s.ib[i] = 1.0f / (std::exp(bd[i]) + 1e-9f);
        if (!std::isfinite(s.ea[i]) || !std::isfinite(s.ib[i]))
            throw Error("SnakeBeta parameters of '" + p + "' overflow");
    }
    return s;
}

CodecConv load_codec_conv(const Model &m, const std::string &p, ConvSpec spec) {
    CodecConv c;  // the weights are only ever re-laid out, packed or the left operand of a mul_mat: any type
    static_cast<ConvWeights &>(c) = load_conv(m, p, spec.with_type(TensorType::Any));
    return c;
}

// A causal transposed conv (PyTorch ConvTranspose1d [in, out, k]).
CodecConv load_codec_tconv(const Model &m, const std::string &p, int cin, int cout, int k, int stride) {
    return load_codec_conv(m, p, ConvSpec(cin, cout, k, 1, stride).as_transposed());
}

CodecTfLayer load_tf_layer(const Model &m, const std::string &b, const CodecHParams &h) {
    CodecTfLayer L;
    L.attn_norm = expect_f32(m, b + "input_layernorm.weight", {h.hidden});
    L.attn = load_codec_attention(m, b, h.hidden, h.n_head, h.n_head_kv, h.head_dim);
    L.ffn_norm = expect_f32(m, b + "post_attention_layernorm.weight", {h.hidden});
    L.gate = expect_matrix(m, b + "mlp.gate_proj.weight", {h.hidden, h.n_ff});
    L.up = expect_matrix(m, b + "mlp.up_proj.weight", {h.hidden, h.n_ff});
    L.down = expect_matrix(m, b + "mlp.down_proj.weight", {h.n_ff, h.hidden});
    L.mlp_ls = expect_f32(m, b + "mlp_ls", {h.hidden});
    return L;
}

// RVQ codebooks and output projections, pre-conv, pre-transformer.
void load_front(const Model &m, const CodecHParams &h, CodecWeights &w) {
    const std::string P = "codec.dec.";
    for (int q = 0; q < h.n_q; q++)
        w.codebooks.push_back(
            expect_matrix(m, P + "codebook." + std::to_string(q) + ".weight", {h.rvq_dim, h.codebook_size}));
    w.proj_first = expect_matrix(m, P + "rvq_first.output_proj.weight", {1, h.rvq_dim, h.codebook_dim});
    w.proj_rest = expect_matrix(m, P + "rvq_rest.output_proj.weight", {1, h.rvq_dim, h.codebook_dim});
    w.pre_conv = load_codec_conv(m, P + "pre_conv.conv.", {h.codebook_dim, h.latent, 3});
    w.in_proj_w = expect_matrix(m, P + "tf.input_proj.weight", {h.latent, h.hidden});
    w.in_proj_b = expect_f32(m, P + "tf.input_proj.bias", {h.hidden});
    for (int l = 0; l < h.n_layer; l++)
        w.layers.push_back(load_tf_layer(m, P + "tf.layers." + std::to_string(l) + ".", h));
    w.tf_norm = expect_f32(m, P + "tf.norm.weight", {h.hidden});
    w.out_proj_w = expect_matrix(m, P + "tf.output_proj.weight", {h.hidden, h.latent});
    w.out_proj_b = expect_f32(m, P + "tf.output_proj.bias", {h.latent});
}

// The upsample stages: transposed conv and ConvNeXt block.
void load_upsample(const Model &m, const CodecHParams &h, CodecWeights &w) {
    const int C = h.latent;
    for (size_t s = 0; s < h.up_ratios.size(); s++) {
        const std::string b = "codec.dec.upsample." + std::to_string(s) + ".";
        CodecUpsample u;
        u.tconv = load_codec_tconv(m, b + "0.conv.", C, C, h.up_ratios[s], h.up_ratios[s]);
        u.dw_w = expect_f32(m, b + "1.dwconv.conv.weight", {7, 1, C});
        u.dw_b = expect_f32(m, b + "1.dwconv.conv.bias", {C});
        u.ln_w = expect_f32(m, b + "1.norm.weight", {C});
        u.ln_b = expect_f32(m, b + "1.norm.bias", {C});
        u.pw1_w = expect_matrix(m, b + "1.pwconv1.weight", {C, 4 * C});
        u.pw1_b = expect_f32(m, b + "1.pwconv1.bias", {4 * C});
        u.pw2_w = expect_matrix(m, b + "1.pwconv2.weight", {4 * C, C});
        u.pw2_b = expect_f32(m, b + "1.pwconv2.bias", {C});
        u.gamma = expect_f32(m, b + "1.gamma", {C});
        w.ups.push_back(u);
    }
}

// The decoder: conv k7, blocks (SnakeBeta, transposed conv, 3 residual units), SnakeBeta, conv k7; and which
// SnakeBeta follows each conv (CodecConv::then_snake): the blocks' own, then the final one.
void load_decoder_blocks(const Model &m, const CodecHParams &h, CodecWeights &w) {
    const std::string P = "codec.dec.decoder.";
    w.dec_in = load_codec_conv(m, P + "0.conv.", {h.latent, h.decoder_dim, 7});
    int cin = h.decoder_dim;
    static const int dils[3] = {1, 3, 9};
    for (size_t i = 0; i < h.rates.size(); i++) {
        const int r = h.rates[i], cout = cin / 2;
        const std::string b = P + std::to_string(i + 1) + ".block.";
        CodecBlock B;
        B.snake = load_snake(m, b + "0.", cin);
        B.tconv = load_codec_tconv(m, b + "1.conv.", cin, cout, 2 * r, r);
        for (int j = 0; j < 3; j++) {
            const std::string u = b + std::to_string(j + 2) + ".";
            B.res[j].act1 = load_snake(m, u + "act1.", cout);
            B.res[j].conv1 = load_codec_conv(m, u + "conv1.conv.", {cout, cout, 7, dils[j]});
            B.res[j].act2 = load_snake(m, u + "act2.", cout);
            B.res[j].conv2 = load_codec_conv(m, u + "conv2.conv.", {cout, cout, 1});
        }
        w.blocks.push_back(std::move(B));
        cin = cout;
    }
    const int nb = (int)h.rates.size();
    w.final_snake = load_snake(m, P + std::to_string(nb + 1) + ".", cin);
    w.dec_out = load_codec_conv(m, P + std::to_string(nb + 2) + ".conv.", {cin, 1, 7});
    w.dec_in.then_snake = &w.blocks[0].snake;
    for (int i = 0; i < nb; i++) {
        for (CodecResUnit &r : w.blocks[i].res) r.conv1.then_snake = &r.act2;
        w.blocks[i].res[2].conv2.then_snake = i + 1 < nb ? &w.blocks[i + 1].snake : &w.final_snake;
    }
}

// ------------------------------------------------------------------------------------------------ preparation

// One weight as float32 rows, whatever its storage type.
std::vector<float> to_f32(const ggml_tensor *t) {
    std::vector<float> out((size_t)ggml_nelements(t));
    const int64_t rows = ggml_nrows(t), n = t->ne[0];
    for (int64_t r = 0; r < rows; r++) read_row(t, r, &out[(size_t)(r * n)]);
    return out;
}

// A conv's weights as the packers and the ggml re-layout see them: a conv of `cin` inputs, `cout` outputs, `k` taps
// and `dil`, whose weight of output o, tap j, input c is (*this)(o, j, c). A transposed conv is a k = 1 conv to
// k*cout outputs ordered (tap, channel).
struct ConvTaps {
    const std::vector<float> &src;  // as stored: conv [cout][cin][k], transposed conv [cin][cout][k]
    int cin, cout, k, dil;
    bool transposed;
    int64_t stored_cout, stored_k;

    ConvTaps(const ConvWeights &c, const std::vector<float> &stored)
        : src(stored),
          cin(c.cin),
          cout(c.transposed ? c.k * c.cout : c.cout),
          k(c.transposed ? 1 : c.k),
          dil(c.transposed ? 1 : c.dil),
          transposed(c.transposed),
          stored_cout(c.cout),
          stored_k(c.k) {}
    float operator()(int o, int j, int i) const {
        if (transposed) return src[((size_t)i * stored_cout + o % stored_cout) * stored_k + o / stored_cout];
        return src[((size_t)o * cin + i) * k + j];
    }
};

// The conv packed for packed_conv, with its bias and following SnakeBeta in the epilogue: in BF16 pairs where the
// level has AVX512-BF16 (inputs rounded to BF16, as ggml's BF16 path and the AMX tiles do), else BF16 widened to FP32.
// A transposed conv's bias is fused only where k = s (no overlap-add after it).
std::shared_ptr<PackedConv> pack_for_conv_kernel(const CodecConv &c, const ConvTaps &taps) {
    auto p = std::make_shared<PackedConv>();
    if (packed_conv_pairs_available())
        p->pack_pairs(taps.cin, taps.cout, taps.k, taps.dil, taps);
    else
        p->pack(taps.cin, taps.cout, taps.k, taps.dil, taps);
    const float *bias = (const float *)c.b->data;
    if (!c.transposed) {
        p->set_epilogue(bias, c.then_snake ? c.then_snake->ea.data() : nullptr,
                        c.then_snake ? c.then_snake->ib.data() : nullptr);
    } else if (c.k == c.stride) {
        std::vector<float> tiled((size_t)taps.cout);
        for (int64_t r = 0; r < taps.cout; r++) tiled[r] = bias[r % c.cout];
        p->set_epilogue(tiled.data(), nullptr, nullptr);
    }
    return p;
}

// The tap-major re-layout for ggml (CodecConv's wp): row o of [k*cin, cout] (conv) or [cin, k*cout] (transposed)
// holds taps(o, j, i) at j*cin + i.
void store_for_ggml(ggml_tensor *wp, const ConvTaps &taps) {
    std::vector<float> v((size_t)taps.cout * taps.k * taps.cin);
    for (int64_t o = 0; o < taps.cout; o++)
        for (int64_t j = 0; j < taps.k; j++)
            for (int64_t i = 0; i < taps.cin; i++)
                v[((size_t)o * taps.k + j) * taps.cin + i] = taps((int)o, (int)j, (int)i);
    if (wp->type == GGML_TYPE_F32)
        memcpy(wp->data, v.data(), v.size() * sizeof(float));
    else
        ggml_fp32_to_bf16_row(v.data(), (ggml_bf16_t *)wp->data, (int64_t)v.size());
}

std::vector<CodecConv *> all_convs(CodecWeights &w) {
    std::vector<CodecConv *> convs = {&w.pre_conv, &w.dec_in, &w.dec_out};
    for (CodecUpsample &u : w.ups) convs.push_back(&u.tconv);
    for (CodecBlock &b : w.blocks) {
        convs.push_back(&b.tconv);
        for (CodecResUnit &r : b.res) {
            convs.push_back(&r.conv1);
            convs.push_back(&r.conv2);
        }
    }
    return convs;
}

enum class ConvForm { Stored, Ggml, Amx, Packed };

// Fills the prepared weights (see CodecConv) and releases the mapped originals' pages. With BF16 weights on a CPU with
// AMX, every conv whose widths fit the tiles is packed for amx_conv; at the avx2 and avx512 levels without AMX, and at
// the neon level, every conv is packed for packed_conv; the others are re-laid out for ggml (k = 1 convs: used as
// stored).
void prepare_conv_weights(Model &m, CodecWeights &w) {
    const ggml_type type = w.dec_in.w->type == GGML_TYPE_F32 ? GGML_TYPE_F32 : GGML_TYPE_BF16;
    const bool amx = type == GGML_TYPE_BF16 && amx_bf16_available();
    const bool packed = type == GGML_TYPE_BF16 && !amx && !m.plain_kernels && packed_conv_available();
    auto form = [&](const CodecConv *c) {
        if (packed) return ConvForm::Packed;
        if (amx && AmxConv::fits(c->cin, c->transposed ? c->k * c->cout : c->cout)) return ConvForm::Amx;
        return c->transposed || c->k > 1 || c->dil > 1 ? ConvForm::Ggml : ConvForm::Stored;
    };
    const std::vector<CodecConv *> convs = all_convs(w);
    w.prep.begin(convs.size(), "codec decoder weights");
    for (CodecConv *c : convs)
        if (form(c) == ConvForm::Ggml)
            c->wp = c->transposed ? ggml_new_tensor_2d(w.prep.ctx(), type, c->cin, (int64_t)c->k * c->cout)
                                  : ggml_new_tensor_2d(w.prep.ctx(), type, (int64_t)c->k * c->cin, c->cout);
    w.prep.allocate("codec decoder weights");
    std::vector<std::function<void()>> jobs;  // one per conv, on the codec's threads
    for (CodecConv *c : convs) {
        const ConvForm f = form(c);
        if (f == ConvForm::Stored) continue;
        jobs.push_back([&m, c, f] {
            const std::vector<float> src = to_f32(c->w);
            const ConvTaps taps(*c, src);
            if (f == ConvForm::Packed) {
                c->packed = pack_for_conv_kernel(*c, taps);
            } else if (f == ConvForm::Amx) {
                c->amx = std::make_shared<AmxConv>();
                c->amx->pack(taps.cin, taps.cout, taps.k, taps.dil, taps);
            } else {
                store_for_ggml(c->wp, taps);
            }
            m.release_mapped(c->w);
        });
    }
    codec_compute(m).run_jobs(jobs, m.n_threads);
}

// The matrices of the pre-transformer and the upsample stages, by their place in the weights.
std::vector<ggml_tensor **> matrices(CodecWeights &w) {
    std::vector<ggml_tensor **> mats = {&w.in_proj_w, &w.out_proj_w};
    for (CodecTfLayer &L : w.layers)
        for (ggml_tensor **t : {&L.attn.wq, &L.attn.wk, &L.attn.wv, &L.attn.wo, &L.gate, &L.up, &L.down})
            mats.push_back(t);
    for (CodecUpsample &u : w.ups)
        for (ggml_tensor **t : {&u.pw1_w, &u.pw2_w}) mats.push_back(t);
    return mats;
}

// With BF16 weights on a CPU with AVX512-BF16, the pre-transformer's and the upsample stages' matrices are
// packed for packed_matvec.h's BF16 kernel (the same arithmetic as ggml's BF16 path, which reads them about a
// third slower at the one to sixteen columns of a streaming call; every call reads all of them).
void pack_matmul_weights(Model &m, CodecWeights &w) {
    if (m.plain_kernels) return;
    std::vector<ggml_tensor **> packable;
    for (ggml_tensor **t : matrices(w))
        if ((*t)->type == GGML_TYPE_BF16 && vnni_fits(*t)) packable.push_back(t);
    if (packable.empty()) return;
    w.packed.begin(packable.size(), "codec decoder weights");
    std::vector<ggml_tensor *> dst;
    for (ggml_tensor **t : packable)
        dst.push_back(ggml_new_tensor_1d(w.packed.ctx(), GGML_TYPE_I8,
                                         (int64_t)vnni_packed_size(GGML_TYPE_BF16, (*t)->ne[0], (*t)->ne[1])));
    w.packed.allocate("codec decoder weights");
    for (size_t i = 0; i < packable.size(); i++) {
        ggml_tensor *src = *packable[i];
        vnni_pack(GGML_TYPE_BF16, src->data, src->ne[0], src->ne[1], dst[i]->data);
        m.release_mapped(src);
        *packable[i] = dst[i];
    }
}

// Without AVX512-BF16 (avx2 level, or AVX-512 without BF16; the neon level), the BF16 matrices packed_matvec.h did not
// take run on packed_conv as k = 1 convs: weights read once per call for every column, inputs not rounded to BF16.
// (With AMX, those left over keep ggml's kernels.)
void pack_linear_for_conv_kernel(Model &m, CodecWeights &w) {
    if (m.plain_kernels || !packed_conv_available() || amx_bf16_available()) return;
    for (ggml_tensor **tp : matrices(w)) {
        ggml_tensor *t = *tp;
        if (t->type != GGML_TYPE_BF16 || ggml_n_dims(t) != 2) continue;
        const std::vector<float> src = to_f32(t);  // [ne1 rows][ne0]
        const int64_t K = t->ne[0];
        auto conv = std::make_shared<PackedConv>();
        conv->pack((int)K, (int)t->ne[1], 1, 1, [&](int o, int, int c) { return src[o * K + c]; });
        w.packed_linear[t] = conv;
        m.release_mapped(t);
    }
}

std::shared_ptr<const CodecWeights> build_codec_weights(Model &m) {
    auto w = std::make_shared<CodecWeights>();
    w->hp = read_codec_hparams(m);
    load_front(m, w->hp, *w);
    load_upsample(m, w->hp, *w);
    load_decoder_blocks(m, w->hp, *w);
    prepare_conv_weights(m, *w);
    pack_matmul_weights(m, *w);
    pack_linear_for_conv_kernel(m, *w);
    return w;
}

}  // namespace

std::shared_ptr<const CodecWeights> load_codec_weights(Model &m) {
    return m.codec.get([&] { return build_codec_weights(m); });
}

// ------------------------------------------------------------------------------------------------ custom ops
//
// SnakeBeta and the fused bias adds, on time-major x [C, T] (contiguous): one pass, rows (time steps) split
// over the threads, the per-channel constants along the row.

namespace {

inline const float *row(const ggml_tensor *t, int64_t i) {
    return (const float *)((const char *)t->data + i * t->nb[1]);
}
inline float *row(ggml_tensor *t, int64_t i) { return (float *)((char *)t->data + i * t->nb[1]); }

// SnakeBeta: x + 1/(exp(beta)+1e-9) * sin(x * exp(alpha))^2, in the reference's operation order.
inline float snake1(float x, float ea, float ib) {
    const float s = std::sin(x * ea);
    return x + ib * (s * s);
}

// One row of snake(x + bias) (bias may be null), 16 channels at a time with a polynomial sine (avx512_math.h), 8 at the
// avx2 and neon levels (packed_conv.h's conv_snake_row, the same polynomial); about a sixth of the codec's time per
// frame went to libm's scalar sinf.
#if defined(__x86_64__)
__attribute__((target("avx512f"))) void snake_row_avx512(const float *x, const float *bias, const float *ea,
                                                         const float *ib, int64_t C, float *y) {
    for (int64_t c = 0; c < C; c += 16) {
        const __mmask16 m = tail_mask16(C - c);
        __m512 v = _mm512_maskz_loadu_ps(m, x + c);
        if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias + c));
        _mm512_mask_storeu_ps(y + c, m, snake16(v, _mm512_maskz_loadu_ps(m, ea + c), _mm512_maskz_loadu_ps(m, ib + c)));
    }
}
#endif

void snake_row(const float *x, const float *bias, const float *ea, const float *ib, int64_t C, float *y) {
#if defined(__x86_64__)
    if (isa_at_least(IsaLevel::avx512)) return snake_row_avx512(x, bias, ea, ib, C, y);
#endif
    if (packed_conv_available()) return conv_snake_row(x, bias, ea, ib, C, y);
    for (int64_t c = 0; c < C; c++) y[c] = snake1(bias ? x[c] + bias[c] : x[c], ea[c], ib[c]);
}

void op_snake(ggml_tensor *dst, const ggml_tensor *a, int ith, int nth, void *ud) {
    const CodecSnake *p = (const CodecSnake *)ud;
    const auto [t0, t1] = thread_range(a->ne[1], ith, nth);
    for (int64_t t = t0; t < t1; t++) snake_row(row(a, t), nullptr, p->ea.data(), p->ib.data(), a->ne[0], row(dst, t));
}

// snake(x + bias)
void op_bias_snake(ggml_tensor *dst, const ggml_tensor *a, const ggml_tensor *b, int ith, int nth, void *ud) {
    const CodecSnake *p = (const CodecSnake *)ud;
    const auto [t0, t1] = thread_range(a->ne[1], ith, nth);
    for (int64_t t = t0; t < t1; t++)
        snake_row(row(a, t), (const float *)b->data, p->ea.data(), p->ib.data(), a->ne[0], row(dst, t));
}

// (x + bias) + residual
void op_bias_res(ggml_tensor *dst, const ggml_tensor *a, const ggml_tensor *b, const ggml_tensor *r, int ith, int nth,
                 void *) {
    const int64_t C = a->ne[0];
    const float *bias = (const float *)b->data;
    const auto [t0, t1] = thread_range(a->ne[1], ith, nth);
    for (int64_t t = t0; t < t1; t++) {
        const float *x = row(a, t), *rr = row(r, t);
        float *y = row(dst, t);
        for (int64_t c = 0; c < C; c++) y[c] = (x[c] + bias[c]) + rr[c];
    }
}

ggml_tensor *snake(ggml_context *ctx, ggml_tensor *x, const CodecSnake &p) {
    return ggml_map_custom1(ctx, cont(ctx, x), op_snake, GGML_N_TASKS_MAX, (void *)&p);
}
ggml_tensor *bias_snake(ggml_context *ctx, ggml_tensor *x, ggml_tensor *b, const CodecSnake &p) {
    if (!b) return snake(ctx, x, p);
    return ggml_map_custom2(ctx, cont(ctx, x), b, op_bias_snake, GGML_N_TASKS_MAX, (void *)&p);
}
ggml_tensor *bias_res(ggml_context *ctx, ggml_tensor *x, ggml_tensor *b, ggml_tensor *r) {
    return ggml_map_custom3(ctx, cont(ctx, x), b, cont(ctx, r), op_bias_res, GGML_N_TASKS_MAX, nullptr);
}

// The overlap-add of a causal transposed conv with k = 2s, plus its bias: src y [cout, k, T] (each input frame's
// k output taps), state [cout, k, 1] (the previous call's last frame), bias [cout] -> out [cout, s*T], block t =
// first s taps of frame t + last s taps of frame t-1, in the order of the graph's ops ((head + prev) + bias).
// Frames split over the threads.
void op_overlap_add_bias(ggml_tensor *dst, int ith, int nth, void *) {
    const ggml_tensor *y = dst->src[0], *state = dst->src[1], *b = dst->src[2];
    const int64_t C = y->ne[0], s = y->ne[1] / 2;
    const float *bias = (const float *)b->data;
    const auto [t0, t1] = thread_range(y->ne[2], ith, nth);
    for (int64_t t = t0; t < t1; t++) {
        const float *head = (const float *)((const char *)y->data + t * y->nb[2]);
        const float *prev = t > 0 ? (const float *)((const char *)y->data + (t - 1) * y->nb[2]) + s * C
                                  : (const float *)state->data + s * C;
        float *out = (float *)((char *)dst->data + (size_t)t * s * dst->nb[1]);
        for (int64_t i = 0; i < s * C; i++) out[i] = (head[i] + prev[i]) + bias[i % C];
    }
}

// state (in place) <- the last frame of y [cout, k, T]; the third source (the overlap-add) only orders it.
void op_keep_last_frame(ggml_tensor *dst, const ggml_tensor *, const ggml_tensor *y, const ggml_tensor *, int ith, int,
                        void *) {
    if (ith == 0) memcpy(dst->data, (const char *)y->data + (y->ne[2] - 1) * y->nb[2], y->nb[2]);
}

}  // namespace

// ------------------------------------------------------------------------------------------------ stream state

struct CodecStream::State {
    StateTensors mem;
    // Conv tails are time-major [C, (k-1)*dilation]: the last input columns of the previous call.
    ggml_tensor *pre_conv = nullptr;                    // [codebook_dim, 2]
    std::vector<ggml_tensor *> k, v;                    // [head_dim, n_head_kv, window-1] per layer (none if window 1)
    std::vector<ggml_tensor *> up_dw;                   // [latent, 6] per upsample stage (ConvNeXt dwconv)
    ggml_tensor *dec_in = nullptr;                      // [latent, 6]
    std::vector<ggml_tensor *> blk_tconv;               // [C_out, 2r, 1]: last frame's transposed-conv column
    std::vector<std::array<ggml_tensor *, 3>> blk_res;  // [C_out, 6*dil] per residual unit
    ggml_tensor *dec_out = nullptr;                     // [C_final, 6]
    int kv_cap = 0;

    explicit State(const CodecWeights &w);
};

CodecStream::State::State(const CodecWeights &w) {
    const CodecHParams &h = w.hp;
    mem.begin(8 + 2 * h.n_layer + h.up_ratios.size() + 4 * h.rates.size(), "codec stream state");
    ggml_context *ctx = mem.ctx();
    auto tail = [&](const CodecConv &c) {
        return ggml_new_tensor_2d(ctx, GGML_TYPE_F32, c.cin, (int64_t)(c.k - 1) * c.dil);
    };
    pre_conv = tail(w.pre_conv);
    kv_cap = h.window - 1;
    for (int l = 0; l < h.n_layer && kv_cap > 0; l++) {
        k.push_back(ggml_new_tensor_3d(ctx, GGML_TYPE_F32, h.head_dim, h.n_head_kv, kv_cap));
        v.push_back(ggml_new_tensor_3d(ctx, GGML_TYPE_F32, h.head_dim, h.n_head_kv, kv_cap));
    }
    for (size_t i = 0; i < h.up_ratios.size(); i++)
        up_dw.push_back(ggml_new_tensor_2d(ctx, GGML_TYPE_F32, h.latent, 6));
    dec_in = tail(w.dec_in);
    for (const CodecBlock &B : w.blocks) {
        blk_tconv.push_back(ggml_new_tensor_3d(ctx, GGML_TYPE_F32, B.tconv.cout, B.tconv.k, 1));
        std::array<ggml_tensor *, 3> r;
        for (int j = 0; j < 3; j++) r[j] = tail(B.res[j].conv1);
        blk_res.push_back(r);
    }
    dec_out = tail(w.dec_out);
    mem.allocate("codec stream state");
}

CodecStream::CodecStream(Model &m)
    : m_(m),
      w_(load_codec_weights(m)),
      compute_(codec_compute(m)),
      alloc_(ggml_gallocr_new(ggml_backend_get_default_buffer_type(compute_.backend()))) {
    if (!alloc_) throw Error("cannot create the codec compute allocator");
    st_.reset(new State(*w_));
    reset();
}

CodecStream::~CodecStream() = default;

void CodecStream::reset() {
    st_->mem.clear();
    pos_ = 0;
    n_cached_ = 0;
}

// ------------------------------------------------------------------------------------------------ graph

namespace {

// The inputs and results of one decode graph.
struct DecodeTensors {
    ggml_tensor *first = nullptr, *rest = nullptr;  // dequantised codebook rows: the first, the sum of the rest
    ggml_tensor *mask = nullptr;                    // sliding-window mask [cached + T, T]
    ggml_tensor *quantized = nullptr, *pre_conv = nullptr, *pre_transformer = nullptr, *wav = nullptr;
};

struct Builder {
    ggml_context *ctx;
    ggml_cgraph *gf;
    const CodecWeights &W;

    // w x for a weight matrix [K, N] and x [K, T] (packed_conv where the matrix is packed for it).
    ggml_tensor *linear(ggml_tensor *w, ggml_tensor *x) {
        const auto it = W.packed_linear.find(w);
        if (it == W.packed_linear.end()) return matmul(ctx, w, x);
        return packed_conv(ctx, cont(ctx, x), *it->second, x->ne[1]);
    }

    // x: time-major [C, T]. Returns [C, L+T] = the stored left context followed by x, and stores its last L
    // columns as the next call's left context.
    ggml_tensor *with_tail(ggml_tensor *x, ggml_tensor *tail) {
        ggml_tensor *cat = ggml_concat(ctx, tail, cont(ctx, x), 1);
        const int64_t L = tail->ne[1];
        ggml_build_forward_expand(
            gf, ggml_cpy(ctx, ggml_view_2d(ctx, cat, cat->ne[0], L, cat->nb[1], (size_t)(cat->ne[1] - L) * cat->nb[1]),
                         tail));
        return cat;
    }

    // Causal conv without bias, time-major [cin, T] -> [cout, T] (see CodecConv for the weight layouts).
    ggml_tensor *conv(ggml_tensor *x, const CodecConv &c, ggml_tensor *tail) {
        if (c.amx) {
            ggml_tensor *X = c.k > 1 ? with_tail(x, tail) : cont(ctx, x);
            return on_tiles(X, *c.amx, X->ne[1] - (int64_t)(c.k - 1) * c.dil);
        }
        if (c.k == 1) return ggml_mul_mat(ctx, ggml_reshape_2d(ctx, c.w, c.cin, c.cout), cont(ctx, x));
        ggml_tensor *X = with_tail(x, tail);  // [cin, (k-1)*dil + T], contiguous
        const int64_t T = X->ne[1] - (int64_t)(c.k - 1) * c.dil;
        if (c.dil == 1) return ggml_mul_mat(ctx, c.wp, overlapping_rows(ctx, X, (int64_t)c.k * c.cin, T, X->nb[1]));
        ggml_tensor *y = nullptr;
        for (int j = 0; j < c.k; j++) {
            ggml_tensor *wj =
                ggml_view_2d(ctx, c.wp, c.cin, c.cout, c.wp->nb[1], (size_t)j * c.cin * ggml_element_size(c.wp));
            ggml_tensor *xj = ggml_view_2d(ctx, X, c.cin, T, X->nb[1], (size_t)j * c.dil * X->nb[1]);
            ggml_tensor *p = ggml_mul_mat(ctx, wj, xj);
            y = y ? ggml_add(ctx, y, p) : p;
        }
        return y;
    }

    ggml_tensor *on_tiles(ggml_tensor *x, const AmxConv &w, int64_t T) {
        return amx_conv(ctx, amx_input(ctx, x), w, T);
    }

    // then_snake((conv(x) + bias) + residual), residual optional: one packed conv kernel call with its fused epilogue
    // where the conv is packed for it, else the conv and the same element-wise ops as separate nodes.
    ggml_tensor *conv_fused(ggml_tensor *x, const CodecConv &c, ggml_tensor *tail, ggml_tensor *residual = nullptr) {
        if (c.packed) {
            ggml_tensor *r = residual ? cont(ctx, residual) : nullptr;
            if (c.k > 1) return packed_causal_conv(ctx, gf, cont(ctx, x), tail, *c.packed, r);
            return packed_conv(ctx, cont(ctx, x), *c.packed, x->ne[1], r);
        }
        ggml_tensor *y = conv(x, c, tail);
        if (!residual) return c.then_snake ? bias_snake(ctx, y, c.b, *c.then_snake) : ggml_add(ctx, y, c.b);
        y = bias_res(ctx, y, c.b, residual);
        return c.then_snake ? snake(ctx, y, *c.then_snake) : y;
    }

    // The transposed conv plus its bias. With the packed conv kernel: k = s, the bias is in its epilogue; k = 2s, one
    // op overlap-adds and adds the bias, another keeps the last frame (instead of a concat, a copy and two adds).
    ggml_tensor *tconv_bias(ggml_tensor *x, const CodecConv &c, ggml_tensor *state) {
        if (!c.packed) return ggml_add(ctx, tconv(x, c, state), c.b);
        if (c.k == c.stride) return tconv(x, c, state);  // the bias is in the kernel's epilogue
        const int64_t T = x->ne[1];                      // k = 2s
        ggml_tensor *y = ggml_reshape_3d(ctx, packed_conv(ctx, cont(ctx, x), *c.packed, T), c.cout, c.k, T);
        ggml_tensor *args[] = {y, state, c.b};
        ggml_tensor *out = ggml_custom_4d(ctx, GGML_TYPE_F32, c.cout, c.stride * T, 1, 1, args, 3, op_overlap_add_bias,
                                          GGML_N_TASKS_MAX, nullptr);
        ggml_build_forward_expand(gf, ggml_map_custom3_inplace(ctx, state, y, out, op_keep_last_frame, 1, nullptr));
        return out;
    }

    // Causal transposed conv without bias (k = s, or k = 2s with the right trim k - s), time-major [cin, T] ->
    // [cout, T*s]. One mul_mat gives each input frame's [cout, k] contribution; output block t = first s taps of
    // frame t + last s taps of frame t-1 (`state` keeps the last frame's).
    ggml_tensor *tconv(ggml_tensor *x, const CodecConv &c, ggml_tensor *state) {
        const int64_t T = x->ne[1], s = c.stride, k = c.k;
        ggml_tensor *y = c.amx      ? on_tiles(cont(ctx, x), *c.amx, T)
                         : c.packed ? packed_conv(ctx, cont(ctx, x), *c.packed, T)
                                    : ggml_mul_mat(ctx, c.wp, cont(ctx, x));
        y = ggml_reshape_3d(ctx, y, c.cout, k, T);  // [cout, k, T]
        if (k == s) return ggml_reshape_2d(ctx, y, c.cout, s * T);
        ggml_tensor *all = ggml_concat(ctx, state, y, 2);  // [cout, k, T+1]
        ggml_build_forward_expand(
            gf,
            ggml_cpy(ctx, ggml_view_3d(ctx, all, c.cout, k, 1, all->nb[1], all->nb[2], (size_t)T * all->nb[2]), state));
        ggml_tensor *head = ggml_view_3d(ctx, all, c.cout, s, T, all->nb[1], all->nb[2], all->nb[2]);
        ggml_tensor *prev = ggml_view_3d(ctx, all, c.cout, s, T, all->nb[1], all->nb[2], (size_t)s * all->nb[1]);
        return ggml_reshape_2d(ctx, ggml_add(ctx, head, prev), c.cout, s * T);
    }

    // 1. RVQ output projections (1x1 convs, no bias) of the dequantised rows: z [codebook_dim, T].
    ggml_tensor *rvq_projection(ggml_tensor *first, ggml_tensor *rest) {
        const CodecHParams &h = W.hp;
        return ggml_add(ctx, ggml_mul_mat(ctx, ggml_reshape_2d(ctx, W.proj_first, h.rvq_dim, h.codebook_dim), first),
                        ggml_mul_mat(ctx, ggml_reshape_2d(ctx, W.proj_rest, h.rvq_dim, h.codebook_dim), rest));
    }

    // Keys and values of layer il over the P cached positions and the new ones: [head_dim, n_head_kv, P + T]; keeps
    // the last kv_cap positions (keys already roped) in the caches.
    std::pair<ggml_tensor *, ggml_tensor *> cached_kv(const CodecStream::State &S, int il, ggml_tensor *k,
                                                      ggml_tensor *v, int P) {
        if (S.kv_cap == 0) return {k, v};
        const int hd = W.hp.head_dim, nkv = W.hp.n_head_kv, Tk = P + (int)k->ne[2], P_new = std::min(S.kv_cap, Tk);
        ggml_tensor *kc = S.k[il], *vc = S.v[il], *K = k, *V = v;
        if (P > 0) {
            K = ggml_concat(ctx, ggml_view_3d(ctx, kc, hd, nkv, P, kc->nb[1], kc->nb[2], 0), k, 2);
            V = ggml_concat(ctx, ggml_view_3d(ctx, vc, hd, nkv, P, vc->nb[1], vc->nb[2], 0), v, 2);
        }
        ggml_build_forward_expand(
            gf, ggml_cpy(ctx, ggml_view_3d(ctx, K, hd, nkv, P_new, K->nb[1], K->nb[2], (size_t)(Tk - P_new) * K->nb[2]),
                         ggml_view_3d(ctx, kc, hd, nkv, P_new, kc->nb[1], kc->nb[2], 0)));
        ggml_build_forward_expand(
            gf, ggml_cpy(ctx, ggml_view_3d(ctx, V, hd, nkv, P_new, V->nb[1], V->nb[2], (size_t)(Tk - P_new) * V->nb[2]),
                         ggml_view_3d(ctx, vc, hd, nkv, P_new, vc->nb[1], vc->nb[2], 0)));
        return {K, V};
    }

    // Sliding-window attention of layer il: x + attn_ls * o_proj(attention(RMSNorm(x))).
    ggml_tensor *attention(const CodecStream::State &S, int il, ggml_tensor *x, const RopeTables &rope,
                           ggml_tensor *mask, int P) {
        const CodecHParams &h = W.hp;
        const CodecTfLayer &L = W.layers[il];
        const int hd = h.head_dim;
        const int64_t T = x->ne[1];
        ggml_tensor *cur = ggml_mul(ctx, ggml_rms_norm(ctx, x, h.eps), L.attn_norm);
        ggml_tensor *q = ggml_reshape_3d(ctx, linear(L.attn.wq, cur), hd, h.n_head, T);
        ggml_tensor *k = ggml_reshape_3d(ctx, linear(L.attn.wk, cur), hd, h.n_head_kv, T);
        ggml_tensor *v = ggml_reshape_3d(ctx, linear(L.attn.wv, cur), hd, h.n_head_kv, T);
        q = rope.apply(ctx, q);
        k = rope.apply(ctx, k);
        const auto [K, V] = cached_kv(S, il, k, v, P);
        ggml_tensor *Kp = ggml_permute(ctx, K, 0, 2, 1, 3);                  // [hd, Tk, Hkv]
        ggml_tensor *Vp = ggml_cont(ctx, ggml_permute(ctx, V, 1, 2, 0, 3));  // [Tk, hd, Hkv]
        ggml_tensor *Qp = ggml_permute(ctx, q, 0, 2, 1, 3);                  // [hd, T, H]
        const float scale = 1.0f / std::sqrt((float)hd);
        ggml_tensor *kq = ggml_soft_max_ext(ctx, ggml_mul_mat(ctx, Kp, Qp), mask, scale, 0.0f);  // [Tk, T, H]
        ggml_tensor *o = ggml_mul_mat(ctx, Vp, kq);                                              // [hd, T, H]
        o = ggml_cont_2d(ctx, ggml_permute(ctx, o, 0, 2, 1, 3), (int64_t)hd * h.n_head, T);
        return ggml_add(ctx, x, ggml_mul(ctx, linear(L.attn.wo, o), L.attn.ls));
    }

    // SwiGLU MLP of layer il: x + mlp_ls * down(silu(gate(RMSNorm(x))) * up(RMSNorm(x))).
    ggml_tensor *mlp(int il, ggml_tensor *x) {
        const CodecTfLayer &L = W.layers[il];
        ggml_tensor *cur = ggml_mul(ctx, ggml_rms_norm(ctx, x, W.hp.eps), L.ffn_norm);
        ggml_tensor *g = ggml_silu(ctx, linear(L.gate, cur));
        cur = linear(L.down, ggml_mul(ctx, g, linear(L.up, cur)));
        return ggml_add(ctx, x, ggml_mul(ctx, cur, L.mlp_ls));
    }

    // 3. pre-transformer, sliding-window attention over the cached keys: [latent, T] -> [latent, T].
    ggml_tensor *pre_transformer(const CodecStream::State &S, ggml_tensor *x, const RopeTables &rope, ggml_tensor *mask,
                                 int P) {
        x = ggml_add(ctx, linear(W.in_proj_w, x), W.in_proj_b);  // [hidden, T]
        for (int il = 0; il < W.hp.n_layer; il++) x = mlp(il, attention(S, il, x, rope, mask, P));
        x = ggml_mul(ctx, ggml_rms_norm(ctx, x, W.hp.eps), W.tf_norm);
        return ggml_add(ctx, linear(W.out_proj_w, x), W.out_proj_b);
    }

    // 4. upsample stages: transposed conv + ConvNeXt block (depthwise causal conv k7 through ggml_ssm_conv, which
    // takes [L+T, C] rows per channel).
    ggml_tensor *upsample(const CodecStream::State &S, ggml_tensor *x) {
        for (size_t s = 0; s < W.ups.size(); s++) {
            const CodecUpsample &U = W.ups[s];
            ggml_tensor *u = tconv_bias(x, U.tconv, nullptr);                                  // [latent, T']
            ggml_tensor *cat = ggml_cont(ctx, ggml_transpose(ctx, with_tail(u, S.up_dw[s])));  // [6+T', latent]
            ggml_tensor *y = ggml_ssm_conv(ctx, ggml_reshape_3d(ctx, cat, cat->ne[0], cat->ne[1], 1),
                                           ggml_reshape_2d(ctx, U.dw_w, 7, W.hp.latent));  // [latent, T', 1]
            y = ggml_add(ctx, ggml_reshape_2d(ctx, y, y->ne[0], y->ne[1]), U.dw_b);
            y = ggml_add(ctx, ggml_mul(ctx, ggml_norm(ctx, y, 1e-6f), U.ln_w), U.ln_b);
            y = ggml_gelu_erf(ctx, ggml_add(ctx, linear(U.pw1_w, y), U.pw1_b));
            y = ggml_add(ctx, linear(U.pw2_w, y), U.pw2_b);
            x = ggml_add(ctx, u, ggml_mul(ctx, y, U.gamma));
            ggml_format_name(x, "upsample.%zu", s);
        }
        return x;
    }

    // 5. decoder: conv k7, blocks (SnakeBeta, transposed conv, 3 residual units), SnakeBeta, conv k7, clamp. Each
    // SnakeBeta comes with the conv before it (CodecConv::then_snake), but the residual units' first.
    ggml_tensor *decoder_blocks(const CodecStream::State &S, ggml_tensor *x) {
        ggml_tensor *a = conv_fused(x, W.dec_in, S.dec_in);
        for (size_t i = 0; i < W.blocks.size(); i++) {
            const CodecBlock &BL = W.blocks[i];
            ggml_tensor *hb = tconv_bias(a, BL.tconv, S.blk_tconv[i]);
            for (int j = 0; j < 3; j++) {
                const CodecResUnit &R = BL.res[j];
                ggml_tensor *y = conv_fused(snake(ctx, hb, R.act1), R.conv1, S.blk_res[i][j]);
                hb = conv_fused(y, R.conv2, nullptr, hb);
            }
            a = ggml_format_name(hb, "block.%zu", i);
        }
        ggml_tensor *wav = conv_fused(a, W.dec_out, S.dec_out);  // [1, T*spf]
        return ggml_clamp(ctx, wav, -1.0f, 1.0f);
    }
};

// RVQ dequantisation on the host: per frame, the first codebook's row and the sum of the 15 acoustic ones in the
// reference's order, [T][rvq_dim] each.
void dequantize(const CodecWeights &W, const int32_t *codes, int T, std::vector<float> &first,
                std::vector<float> &rest) {
    const CodecHParams &h = W.hp;
    first.assign((size_t)T * h.rvq_dim, 0.0f);
    rest.assign((size_t)T * h.rvq_dim, 0.0f);
    std::vector<float> tmp(h.rvq_dim);
    for (int t = 0; t < T; t++) {
        const int32_t *c = codes + (size_t)t * h.n_q;
        read_row(W.codebooks[0], std::max(0, c[0]), &first[(size_t)t * h.rvq_dim]);
        float *r = &rest[(size_t)t * h.rvq_dim];
        for (int q = 1; q < h.n_q; q++) {
            read_row(W.codebooks[q], std::max(0, c[q]), tmp.data());
            for (int i = 0; i < h.rvq_dim; i++) r[i] += tmp[i];
        }
    }
}

// The sliding-window mask [Tk = P + T, T] of queries pos .. pos+T-1 over the P cached keys and the new ones.
std::vector<float> window_mask(int64_t pos, int P, int T, int window) {
    const int Tk = P + T;
    std::vector<float> mask((size_t)Tk * T);
    for (int t = 0; t < T; t++) {
        const int64_t qp = pos + t;
        for (int j = 0; j < Tk; j++) {
            const int64_t kp = pos - P + j;
            mask[(size_t)t * Tk + j] = (kp <= qp && kp > qp - window) ? 0.0f : -INFINITY;
        }
    }
    return mask;
}

void append_stage(std::vector<float> &v, ggml_tensor *t) {
    const size_t n0 = v.size();
    v.resize(n0 + ggml_nelements(t));
    ggml_backend_tensor_get(t, v.data() + n0, 0, ggml_nbytes(t));
}

}  // namespace

void CodecStream::decode(const int32_t *codes, int n, float *pcm, CodecStages *stages) {
    if (n < 0) throw Error("negative frame count");
    const CodecHParams &h = w_->hp;
    for (int64_t i = 0; i < (int64_t)n * h.n_q; i++)
        if (codes[i] >= h.codebook_size)
            throw Error("codec code " + std::to_string(codes[i]) + " (frame " + std::to_string(i / h.n_q) + ", group " +
                        std::to_string(i % h.n_q) + ") is out of range 0.." + std::to_string(h.codebook_size - 1));
    const int step = std::max(1, max_frames_per_graph);
    for (int done = 0; done < n; done += step) {
        const int nb = std::min(step, n - done);
        decode_batch(codes + (size_t)done * h.n_q, nb, pcm ? pcm + (size_t)done * h.samples_per_frame : nullptr,
                     stages);
    }
}

void CodecStream::decode_batch(const int32_t *codes, int T, float *pcm, CodecStages *stages) {
    const CodecWeights &W = *w_;
    const CodecHParams &h = W.hp;
    const State &S = *st_;
    const int P = n_cached_;

    Graph g;
    g.begin(8192);
    ggml_context *ctx = g.ctx();
    Builder B{ctx, g.gf, W};
    DecodeTensors d;
    d.first = g.input(GGML_TYPE_F32, h.rvq_dim, T);
    d.rest = g.input(GGML_TYPE_F32, h.rvq_dim, T);
    const RopeTables rope(ctx, h.head_dim, T);
    d.mask = g.input(GGML_TYPE_F32, P + T, T);
    d.quantized = named(B.rvq_projection(d.first, d.rest), "quantized");
    d.pre_conv = named(B.conv_fused(d.quantized, W.pre_conv, S.pre_conv), "pre_conv");  // 2. causal k3: [latent, T]
    d.pre_transformer = named(B.pre_transformer(S, d.pre_conv, rope, d.mask, P), "pre_transformer");
    d.wav = named(B.decoder_blocks(S, B.upsample(S, d.pre_transformer)), "wav");
    g.output(d.wav);
    if (stages)
        for (ggml_tensor *t : {d.quantized, d.pre_conv, d.pre_transformer}) g.output(t);
    g.allocate(compute_.backend(), alloc_.get());

    std::vector<float> first, rest;
    dequantize(W, codes, T, first, rest);
    ggml_backend_tensor_set(d.first, first.data(), 0, ggml_nbytes(d.first));
    ggml_backend_tensor_set(d.rest, rest.data(), 0, ggml_nbytes(d.rest));
    rope.set(h.head_dim, h.rope_theta, pos_);
    const std::vector<float> mask = window_mask(pos_, P, T, h.window);
    ggml_backend_tensor_set(d.mask, mask.data(), 0, ggml_nbytes(d.mask));
    compute_.compute(g.gf, codec_threads(m_, n_threads));

    pos_ += T;
    n_cached_ = std::min(S.kv_cap, P + T);
    if (pcm) ggml_backend_tensor_get(d.wav, pcm, 0, ggml_nbytes(d.wav));
    if (stages) {
        append_stage(stages->quantized, d.quantized);
        append_stage(stages->pre_conv, d.pre_conv);
        append_stage(stages->pre_transformer, d.pre_transformer);
    }
}

void codec_decode_chunked(Model &m, const int32_t *codes, int n, int chunk, int left_context, float *pcm) {
    if (chunk <= 0 || left_context < 0) throw Error("chunk must be > 0 and left_context >= 0");
    CodecStream s(m);
    const int nq = s.hparams().n_q, spf = s.hparams().samples_per_frame;
    std::vector<float> buf;
    for (int start = 0; start < n;) {
        const int end = std::min(start + chunk, n);
        const int ctx = start - left_context > 0 ? left_context : start;  // the reference's rule
        buf.resize((size_t)(end - start + ctx) * spf);
        s.reset();
        s.decode(codes + (size_t)(start - ctx) * nq, end - start + ctx, buf.data());
        memcpy(pcm + (size_t)start * spf, buf.data() + (size_t)ctx * spf, sizeof(float) * (size_t)(end - start) * spf);
        start = end;
    }
}

}  // namespace qt

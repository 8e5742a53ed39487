// codec_encoder.cpp: the 12 Hz codec encoder (model.md 6.3) on ggml (its C API is api/encoder_api.cpp).
//
// Activations are time-major [C, T] (ggml ne order: ne0 = channels), as in codec_decoder.cpp. A causal conv
// (kernel k, stride s, dilation 1) over a left-extended input X = [tail | x | right zero pad] is a single mul_mat:
// output n reads the k consecutive columns starting at column n*s, which in a contiguous time-major tensor are
// k*C consecutive floats; a strided 2-D view (row length k*C, row stride s*C) of X therefore holds every window
// without an im2col copy, and the weight, reordered once to [k*C_in, C_out] (tap-major), multiplies it. A
// dilated conv (not used by the released configs) sums one mul_mat per tap instead. At the avx2 and avx512 levels
// (no AMX) and the neon level, the SEANet convs of a GGUF that is not f32 run on the packed conv kernel
// (packed_conv.h): with F32 weights, or in BF16 pairs where the level has AVX512-BF16 (as on the tiles).
//
// Distances to the codebooks are computed the way torch.cdist does for more than 25 rows (which is always the
// case with 2048 codebook rows): one matrix product of [-2x, |x|^2, 1] with [y, 1, |y|^2], clamped at 0 and
// square-rooted; the argmin (first index on ties) is a custom op in the graph, so the residual update and the
// next codebook stay in the same graph.
//
// Tile path (encoders_use_tiles: a GGUF that is not f32 on a CPU with AMX-BF16, encoder_tile_ops.h): every conv
// whose widths fit the tiles reads a BF16 copy of its activated input (ELU fused, its left context carried as BF16
// between SEANet chunks) and adds bias and residual as it stores, or stores the next conv's BF16 input directly;
// the transformer's LayerNorm feeds one tile product for q, k and v, RoPE and the causal attention (F32) are one
// custom op each, the output projection and the MLP add their LayerScale'd results to the residual stream in their
// epilogues (fc1 storing fc2's GELU'd input); the downsample conv is a tile conv with replicated edges; the RVQ
// scores the codebook rows with a tile product and rescores in F32 every row the BF16 error could make the
// nearest (so its argmin is the F32 one). The weights are prepared once per model (load_codec_enc_weights) on both
// paths, the independent packings spread over the codec compute's threads.
#include "codec/codec_encoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>

#include "codec/codec_common.h"
#include "kernels/packed_conv.h"
#include "kernels/encoder_tile_ops.h"
#include "runtime/gguf_meta.h"
#include "runtime/graph.h"

namespace qt {

namespace {
bool gguf_not_f32(const Model &m) {
    const ggml_tensor *t = m.get("codec.dec.decoder.0.conv.weight", Presence::Optional);
    return t && t->type != GGML_TYPE_F32;
}
}  // namespace

bool encoders_use_tiles(const Model &m) { return amx_bf16_available() && gguf_not_f32(m); }

bool encoders_use_packed(const Model &m) {
    return !amx_bf16_available() && !m.plain_kernels && packed_conv_available() && gguf_not_f32(m);
}

bool has_codec_encoder(const Model &m) {
    return m.get("codec.enc.encoder.layers.0.conv.weight", Presence::Optional) != nullptr;
}

// ------------------------------------------------------------------------------------------------ metadata

namespace {

const char *KP = "qwen3-tts.codec.encoder.";

// Left padding (padding_total) of a SEANet or downsample conv.
int left_pad(const ConvWeights &c) { return (c.k - 1) * c.dil + 1 - c.stride; }

// The SEANet's total stride; its widths and dilations checked for plausibility.
int seanet_hop(const CodecEncHParams &h) {
    int64_t hop = 1;
    int64_t c = h.n_filters;
    for (int s : h.strides) {
        hop *= s;
        c *= 2;
        if (hop > 1 << 20 || c > 1 << 20) throw Error("codec encoder: upsampling_ratios / num_filters are implausible");
    }
    for (int64_t d = 1, j = 0; j < h.n_res; j++, d *= h.dil_growth)
        if (d > 1 << 16) throw Error("codec encoder: dilations are implausible");
    return (int)hop;
}

// The quantizer and frame-rate part of the hyper-parameters: books used, downsample conv, samples per frame.
void read_quantizer_hparams(const Meta &meta, CodecEncHParams &h) {
    auto key = [](const char *k) { return std::string(KP) + k; };
    h.codebook_size = positive_dim(meta, key("codebook_size"));
    h.codebook_dim = positive_dim(meta, key("codebook_dim"));
    h.vq_dim = meta.i32_or(key("vector_quantization_hidden_dimension"), h.codebook_dim);
    const int n_q = meta.i32(key("num_quantizers"));
    h.n_sem = meta.i32_or(key("num_semantic_quantizers"), 1);
    const int valid = meta.i32_or("qwen3-tts.codec.encoder_valid_num_quantizers", n_q);
    const int sr = meta.i32_or(key("sampling_rate"), 24000);
    const float frame_rate = meta.f32_or(key("_frame_rate"), 12.5f);
    if (sr <= 0 || !(frame_rate > 0.0f)) throw Error("codec encoder hyper-parameters are inconsistent");
    if (h.vq_dim != h.codebook_dim)
        throw Error("codec encoder: vector_quantization_hidden_dimension must equal codebook_dim");
    if (h.n_sem < 1 || valid <= h.n_sem || valid > n_q)
        throw Error("codec encoder: encoder_valid_num_quantizers / num_semantic_quantizers are inconsistent");
    h.n_ac = valid - h.n_sem;
    // MimiModel: kernel 2 * int(encodec_frame_rate / frame_rate), stride 2, with encodec_frame_rate =
    // ceil(sampling_rate / hop). Without a downsample (equal rates) the reference cannot encode at all.
    const double enc_rate = std::ceil((double)sr / (double)h.hop);
    const int ratio = (int)(enc_rate / (double)frame_rate);
    if (ratio < 1) throw Error("codec encoder: the frame rate exceeds the SEANet rate");
    h.ds_kernel = 2 * ratio;
    h.ds_stride = 2;
    h.samples_per_frame = meta.i32_or("qwen3-tts.codec.upsample_rate", h.hop * h.ds_stride);
    if (h.samples_per_frame <= 0) throw Error("codec encoder: invalid samples per frame");
}

CodecEncHParams read_hparams(const Model &m) {
    const Meta meta(m.gguf);
    auto key = [](const char *k) { return std::string(KP) + k; };
    CodecEncHParams h;
    h.channels = meta.i32_or(key("audio_channels"), 1);
    if (h.channels != 1) throw Error("codec encoder: only mono audio (audio_channels = 1) is supported");
    h.n_filters = positive_dim(meta, key("num_filters"));
    h.kernel = positive_dim(meta, key("kernel_size"));
    h.res_kernel = positive_dim(meta, key("residual_kernel_size"));
    h.last_kernel = positive_dim(meta, key("last_kernel_size"));
    h.n_res = meta.i32(key("num_residual_layers"));
    h.dil_growth = positive_dim(meta, key("dilation_growth_rate"));
    h.compress = positive_dim(meta, key("compress"));
    std::vector<int> ratios = meta.i32_array(key("upsampling_ratios"));
    h.strides.assign(ratios.rbegin(), ratios.rend());
    h.hidden = positive_dim(meta, key("hidden_size"));
    h.n_layer = meta.i32(key("num_hidden_layers"));
    h.n_head = positive_dim(meta, key("num_attention_heads"));
    h.n_head_kv = meta.i32_or(key("num_key_value_heads"), h.n_head);
    h.head_dim = meta.i32_or(key("head_dim"), h.hidden / h.n_head);
    h.n_ff = positive_dim(meta, key("intermediate_size"));
    h.eps = meta.f32_or(key("norm_eps"), 1e-5f);
    h.rope_theta = meta.f32_or(key("rope_theta"), 10000.0f);
    if (h.n_res < 0 || h.n_layer < 0 || h.n_head_kv <= 0 || h.n_head % h.n_head_kv || h.head_dim <= 0 ||
        h.head_dim % 2 || !(h.eps >= 0.0f) || !(h.rope_theta > 0.0f))
        throw Error("codec encoder hyper-parameters are inconsistent");
    if (h.strides.empty()) throw Error("codec encoder: empty upsampling_ratios");
    h.hop = seanet_hop(h);
    read_quantizer_hparams(meta, h);
    return h;
}

}  // namespace

// ------------------------------------------------------------------------------------------------ weights

namespace {

struct EncResBlock {
    ConvWeights c1, c2;
    bool has_shortcut = false;
    ConvWeights sc;  // use_conv_shortcut: conv k1 on the residual branch
};

struct EncStage {
    std::vector<EncResBlock> res;
    ConvWeights down;
};

struct EncTfLayer {
    ggml_tensor *ln1_w, *ln1_b;
    CodecAttention attn;
    ggml_tensor *ln2_w, *ln2_b, *fc1_w, *fc2_w, *mlp_ls;
    std::shared_ptr<AmxConv> qkv, o, fc1, fc2;  // tile path (null where the widths do not fit the tiles)
};

struct EncRvq {
    ggml_tensor *in_proj = nullptr;    // [1, hidden, vq_dim] or null (identity: vq_dim == hidden)
    std::vector<ggml_tensor *> books;  // [codebook_dim, codebook_size] F32
    std::vector<ggml_tensor *> aug;    // prepared [aug_width(codebook_dim), codebook_size]: [y, 1, |y|^2, 0...]
    std::vector<ggml_tensor *> n2;     // tile path, instead of aug: [codebook_size] |y|^2
    std::vector<ggml_tensor *> norms;  // tile path: [codebook_size] |y|
    std::vector<std::shared_ptr<AmxConv>> packed;  // tile path: the rows as a k = 1 conv (null: do not fit)
};

// Convs with dilation 1 run as one mul_mat over overlapping windows; dilated ones (no released config has any)
// as one mul_mat per tap. Setting this to true sends every conv with k > 1 down the per-tap path, which must give
// the same codes (how that path was checked).
constexpr bool kPerTapConvsOnly = false;
inline bool windowed(const ConvWeights &c) { return c.dil == 1 && !kPerTapConvsOnly; }

}  // namespace

// The encoder's weights: pointers into the model's tensors and their prepared forms (built once per model, see
// load_codec_enc_weights): on the F32 path re-laid-out conv weights (or, at the avx2, avx512 and neon levels for GGUFs
// that are not f32, convs packed for the packed conv kernel) and augmented codebooks; on the tile path
// (encoders_use_tiles) the convolutions and the transformer's linear layers packed for the AMX tiles. Every conv's
// prepared form is in its ConvWeights.
struct CodecEncWeights {
    CodecEncHParams hp;
    ConvWeights conv_in, conv_out;
    std::vector<EncStage> stages;
    std::vector<EncTfLayer> layers;
    ConvWeights down;  // replicate padding (MimiModel's downsample) instead of zeros
    EncRvq sem, ac;
    bool tiles = false;               // the BF16 / AMX path
    std::vector<float> conv_in_taps;  // tile path, single input channel: conv_in's taps as [k][cout]

    OwnedTensors prep;  // prepared weights (reordered conv weights, augmented codebooks)
    size_t prepared_bytes = 0;

    std::vector<ConvWeights *> convs() {  // every SEANet conv, in order
        std::vector<ConvWeights *> v{&conv_in};
        for (EncStage &s : stages) {
            for (EncResBlock &r : s.res) {
                v.push_back(&r.c1);
                v.push_back(&r.c2);
                if (r.has_shortcut) v.push_back(&r.sc);
            }
            v.push_back(&s.down);
        }
        v.push_back(&conv_out);
        return v;
    }
    std::vector<const ConvWeights *> convs() const {
        std::vector<ConvWeights *> v = const_cast<CodecEncWeights *>(this)->convs();
        return std::vector<const ConvWeights *>(v.begin(), v.end());
    }
};

struct CodecEncoder::Impl {
    std::shared_ptr<const CodecEncWeights> w;
};

namespace {

ConvWeights load_enc_conv(const Model &m, const std::string &p, int cin, int cout, int k, int stride, int dil,
                          bool bias = true) {
    return load_conv(m, p, ConvSpec(cin, cout, k, dil, stride).with_bias(bias));
}

// SEANet (MimiEncoder): layer indices count the parameter-free ELUs too.
void load_seanet(const Model &m, const CodecEncHParams &h, CodecEncWeights &I) {
    const std::string P = "codec.enc.encoder.layers.";
    I.conv_in = load_enc_conv(m, P + "0.conv.", h.channels, h.n_filters, h.kernel, 1, 1);
    int idx = 1;
    int scale = h.n_filters;
    for (int s : h.strides) {
        EncStage st;
        for (int j = 0, d = 1; j < h.n_res; j++, d *= h.dil_growth) {
            const std::string b = P + std::to_string(idx) + ".";
            const int hid = scale / h.compress;
            if (hid <= 0) throw Error("codec encoder: num_filters / compress leave no residual channels");
            EncResBlock r;
            r.c1 = load_enc_conv(m, b + "block.1.conv.", scale, hid, h.res_kernel, 1, d);
            r.c2 = load_enc_conv(m, b + "block.3.conv.", hid, scale, 1, 1, 1);
            r.has_shortcut = m.get(b + "shortcut.conv.weight", Presence::Optional) != nullptr;
            if (r.has_shortcut) r.sc = load_enc_conv(m, b + "shortcut.conv.", scale, scale, 1, 1, 1);
            st.res.push_back(r);
            idx++;
        }
        idx++;  // ELU
        st.down = load_enc_conv(m, P + std::to_string(idx) + ".conv.", scale, scale * 2, 2 * s, s, 1);
        idx++;
        scale *= 2;
        I.stages.push_back(st);
    }
    idx++;  // ELU
    I.conv_out = load_enc_conv(m, P + std::to_string(idx) + ".conv.", scale, h.hidden, h.last_kernel, 1, 1);
}

void load_transformer(const Model &m, const CodecEncHParams &h, CodecEncWeights &I) {
    for (int l = 0; l < h.n_layer; l++) {
        const std::string b = "codec.enc.tf.layers." + std::to_string(l) + ".";
        EncTfLayer L;
        L.ln1_w = expect_f32(m, b + "input_layernorm.weight", {h.hidden});
        L.ln1_b = expect_f32(m, b + "input_layernorm.bias", {h.hidden});
        L.attn = load_codec_attention(m, b, h.hidden, h.n_head, h.n_head_kv, h.head_dim);
        L.ln2_w = expect_f32(m, b + "post_attention_layernorm.weight", {h.hidden});
        L.ln2_b = expect_f32(m, b + "post_attention_layernorm.bias", {h.hidden});
        L.fc1_w = expect_matrix(m, b + "mlp.fc1.weight", {h.hidden, h.n_ff});
        L.fc2_w = expect_matrix(m, b + "mlp.fc2.weight", {h.n_ff, h.hidden});
        L.mlp_ls = expect_f32(m, b + "mlp_ls", {h.hidden});
        I.layers.push_back(L);
    }
}

// The downsample conv (the GGUF kernel must be the one MimiModel builds) and the quantizers.
void load_quantizer(const Model &m, const CodecEncHParams &h, CodecEncWeights &I) {
    I.down = load_enc_conv(m, "codec.enc.downsample.conv.", h.hidden, h.hidden, h.ds_kernel, h.ds_stride, 1, false);
    auto load_rvq = [&](EncRvq &q, const std::string &p, int n) {
        q.in_proj =
            expect_matrix(m, p + "input_proj.weight", {1, h.hidden, h.vq_dim}, required_if(h.vq_dim != h.hidden));
        for (int j = 0; j < n; j++)
            q.books.push_back(
                expect_f32(m, p + "codebook." + std::to_string(j) + ".weight", {h.codebook_dim, h.codebook_size}));
    };
    load_rvq(I.sem, "codec.enc.rvq_sem.", h.n_sem);
    load_rvq(I.ac, "codec.enc.rvq_ac.", h.n_ac);
}

// ------------------------------------------------------------------------------------------------ preparation

// How a conv of the encoder runs: packed for the packed conv kernel (avx2, avx512 and neon levels, GGUFs that are not
// f32: the SEANet convs' F32 weights with F32 sums, the same arithmetic in another summation order, or BF16 pairs
// with AVX512-BF16; f32 GGUFs keep ggml's), packed for the tiles, the first conv's taps as a direct loop (tile
// path), or re-laid out for ggml.
enum class EncConvForm { Packed, Amx, SingleChannel, Ggml };

EncConvForm conv_form(const Model &m, const CodecEncWeights &I, const ConvWeights &c) {
    if (I.tiles) {
        if (AmxConv::fits(c.cin, c.cout)) return EncConvForm::Amx;
        if (&c == &I.conv_in && c.cin == 1 && c.dil == 1 && c.stride == 1) return EncConvForm::SingleChannel;
        return EncConvForm::Ggml;
    }
    return encoders_use_packed(m) ? EncConvForm::Packed : EncConvForm::Ggml;
}

// The prepared form of one conv (and the release of its mapped weight).
void prepare_conv(const Model &m, CodecEncWeights &I, ConvWeights &c, EncConvForm form) {
    const float *src = (const float *)c.w->data;  // [cout][cin][k]
    const int64_t cin = c.cin, k = c.k;
    auto taps = [&](int o, int j, int i) { return src[(o * cin + i) * k + j]; };
    if (form == EncConvForm::Packed) {
        c.packed = pack_encoder_conv(c);
    } else if (form == EncConvForm::Amx) {
        c.amx = std::make_shared<AmxConv>();
        c.amx->pack(c.cin, c.cout, c.k, c.dil, taps, c.stride);
    } else if (form == EncConvForm::SingleChannel) {
        I.conv_in_taps.resize((size_t)k * c.cout);
        for (int o = 0; o < c.cout; o++)
            for (int j = 0; j < k; j++) I.conv_in_taps[(size_t)j * c.cout + o] = src[(size_t)o * k + j];
    } else {
        float *dst = (float *)c.wp->data;
        for (int o = 0; o < c.cout; o++)
            for (int j = 0; j < c.k; j++) {
                const float *s = src + (size_t)o * c.cin * c.k + j;
                float *d = windowed(c) ? dst + ((size_t)o * c.k + j) * c.cin      // [cout][k][cin]
                                       : dst + ((size_t)j * c.cout + o) * c.cin;  // [k][cout][cin]
                for (int i = 0; i < c.cin; i++) d[i] = s[(size_t)i * c.k];
            }
    }
    m.release_mapped(c.w);
}

// Linear layers ws (stacked along their outputs) packed for the tiles as one k = 1 conv of cin inputs, or null
// where the widths do not fit.
std::shared_ptr<AmxConv> pack_linear(const Model &m, const std::vector<ggml_tensor *> &ws, int64_t cin) {
    int64_t cout = 0;
    for (ggml_tensor *t : ws) cout += t->ne[1];
    if (!AmxConv::fits((int)cin, (int)cout)) return nullptr;
    std::vector<float> all((size_t)cout * cin);  // [cout][cin]
    int64_t row = 0;
    for (ggml_tensor *t : ws)
        for (int64_t r = 0; r < t->ne[1]; r++, row++) read_row(t, r, &all[(size_t)row * cin]);
    auto a = std::make_shared<AmxConv>();
    a->pack((int)cin, (int)cout, 1, 1, [&](int o, int, int i) { return all[(size_t)o * cin + i]; });
    for (ggml_tensor *t : ws) m.release_mapped(t);
    return a;
}

// ggml multiplies F32 matrices on its GEMM kernel (llamafile's) only when their shared width is a multiple of its
// vector width (4 floats on NEON, 8 on AVX2, 16 in an AVX-512 build), else with one dot product per output. The F32
// path pads such widths with zeros (they add exact zeros) to a multiple of 8: padding to 16 as well would grow the
// attention's padded copies (test_parity_codec_encoder's compute-memory bound).
int64_t gemm_width(int64_t n) { return (n + 7) / 8 * 8; }

// x with zero rows appended along ne0 up to gemm_width(ne0).
ggml_tensor *pad_for_gemm(ggml_context *ctx, ggml_tensor *x) {
    const int64_t extra = gemm_width(x->ne[0]) - x->ne[0];
    return extra > 0 ? ggml_pad(ctx, x, (int)extra, 0, 0, 0) : x;
}

// The width of a codebook's augmented rows: [y, 1, |y|^2] and zeros (pad_for_gemm).
int64_t aug_width(int64_t D) { return gemm_width(D + 2); }

// Codebook j of q prepared: the tile path's squared norms, norm bounds and packed rows, or the F32 path's
// augmented rows [y, 1, |y|^2, 0...].
void prepare_book(EncRvq &q, size_t j, int D, int NB, bool tiles) {
    const float *src = (const float *)q.books[j]->data;
    if (tiles) {
        float *n2 = (float *)q.n2[j]->data, *nr = (float *)q.norms[j]->data;
        for (int r = 0; r < NB; r++) {
            double a = 0.0;
            for (int i = 0; i < D; i++) a += (double)src[(size_t)r * D + i] * src[(size_t)r * D + i];
            n2[r] = (float)a;
            nr[r] = (float)std::sqrt(a) * 1.0001f;  // an upper bound of the norm, for the error bound
        }
        if (AmxConv::fits(D, NB)) {
            q.packed[j] = std::make_shared<AmxConv>();
            q.packed[j]->pack(D, NB, 1, 1, [&](int o, int, int i) { return src[(size_t)o * D + i]; });
        }
        return;
    }
    float *dst = (float *)q.aug[j]->data;
    for (int r = 0; r < NB; r++) {
        const float *y = src + (size_t)r * D;
        float *a = dst + (size_t)r * aug_width(D);
        double n2 = 0.0;
        for (int i = 0; i < D; i++) {
            a[i] = y[i];
            n2 += (double)(y[i] * y[i]);
        }
        a[D] = 1.0f;
        a[D + 1] = (float)n2;
        for (int64_t i = D + 2; i < aug_width(D); i++) a[i] = 0.0f;
    }
}

// The prepared tensors (re-laid-out convs, codebook norms or augmented rows), created and given memory.
void allocate_prepared(CodecEncWeights &I, const std::vector<ConvWeights *> &cv,
                       const std::vector<EncConvForm> &forms) {
    const CodecEncHParams &h = I.hp;
    I.prep.begin(cv.size() + 2 * (size_t)(h.n_sem + h.n_ac), "codec encoder weights");
    for (size_t i = 0; i < cv.size(); i++) {
        ConvWeights *c = cv[i];
        if (forms[i] != EncConvForm::Ggml) continue;
        c->wp = windowed(*c) ? ggml_new_tensor_2d(I.prep.ctx(), GGML_TYPE_F32, (int64_t)c->k * c->cin, c->cout)
                             : ggml_new_tensor_3d(I.prep.ctx(), GGML_TYPE_F32, c->cin, c->cout, c->k);
    }
    for (EncRvq *q : {&I.sem, &I.ac}) {
        for (size_t j = 0; j < q->books.size(); j++) {
            if (I.tiles) {
                q->n2.push_back(ggml_new_tensor_1d(I.prep.ctx(), GGML_TYPE_F32, h.codebook_size));
                q->norms.push_back(ggml_new_tensor_1d(I.prep.ctx(), GGML_TYPE_F32, h.codebook_size));
            } else {
                q->aug.push_back(
                    ggml_new_tensor_2d(I.prep.ctx(), GGML_TYPE_F32, aug_width(h.codebook_dim), h.codebook_size));
            }
        }
        q->packed.resize(q->books.size());
    }
    I.prep.allocate("codec encoder weights");
    I.prepared_bytes = I.prep.buf ? ggml_backend_buffer_get_size(I.prep.buf.get()) : 0;
}

size_t packed_bytes(const std::shared_ptr<AmxConv> &a) { return a ? a->packed.size() * sizeof(uint16_t) : 0; }

// Every re-layout and packing, as independent jobs spread over the codec compute's threads.
void prepare_weights(const Model &m, CodecEncWeights &I) {
    std::vector<ConvWeights *> cv = I.convs();
    cv.push_back(&I.down);
    std::vector<EncConvForm> forms;
    for (ConvWeights *c : cv) forms.push_back(conv_form(m, I, *c));
    allocate_prepared(I, cv, forms);
    std::vector<std::function<void()>> jobs;
    for (size_t i = 0; i < cv.size(); i++)
        jobs.push_back([&m, &I, c = cv[i], f = forms[i]]() { prepare_conv(m, I, *c, f); });
    if (I.tiles) {  // the transformer's linear layers (q, k, v as one), where they fit the tiles
        const CodecEncHParams &h = I.hp;
        const int64_t H = h.hidden, qw = (int64_t)h.n_head * h.head_dim, ff = h.n_ff;
        for (EncTfLayer &L : I.layers) {
            EncTfLayer *l = &L;
            jobs.push_back([&m, l, H]() { l->qkv = pack_linear(m, {l->attn.wq, l->attn.wk, l->attn.wv}, H); });
            jobs.push_back([&m, l, qw]() { l->o = pack_linear(m, {l->attn.wo}, qw); });
            jobs.push_back([&m, l, H]() { l->fc1 = pack_linear(m, {l->fc1_w}, H); });
            jobs.push_back([&m, l, ff]() { l->fc2 = pack_linear(m, {l->fc2_w}, ff); });
        }
    }
    for (EncRvq *q : {&I.sem, &I.ac})
        for (size_t j = 0; j < q->books.size(); j++)
            jobs.push_back([q, j, D = I.hp.codebook_dim, NB = I.hp.codebook_size, tiles = I.tiles]() {
                prepare_book(*q, j, D, NB, tiles);
            });
    codec_compute(m).run_jobs(jobs, m.n_threads);
    for (ConvWeights *c : cv) I.prepared_bytes += packed_bytes(c->amx);
    I.prepared_bytes += I.conv_in_taps.size() * sizeof(float);
    for (const EncTfLayer &L : I.layers)
        I.prepared_bytes += packed_bytes(L.qkv) + packed_bytes(L.o) + packed_bytes(L.fc1) + packed_bytes(L.fc2);
    for (EncRvq *q : {&I.sem, &I.ac})
        for (const auto &a : q->packed) I.prepared_bytes += packed_bytes(a);
}

std::shared_ptr<const CodecEncWeights> build_codec_enc_weights(const Model &m) {
    auto w = std::make_shared<CodecEncWeights>();
    w->hp = read_hparams(m);
    load_seanet(m, w->hp, *w);
    load_transformer(m, w->hp, *w);
    load_quantizer(m, w->hp, *w);
    w->tiles = encoders_use_tiles(m);
    prepare_weights(m, *w);
    return w;
}

}  // namespace

std::shared_ptr<const CodecEncWeights> load_codec_enc_weights(const Model &m) {
    return m.codec_enc.get([&] { return build_codec_enc_weights(m); });
}

CodecEncoder::CodecEncoder(Model &m) : m_(m), p_(new Impl()) {
    if (!has_codec_encoder(m))
        throw Error("this model has no codec encoder (no codec.enc.* tensors): it cannot encode reference audio");
    p_->w = load_codec_enc_weights(m);
    prepared_weight_bytes = p_->w->prepared_bytes;
}

CodecEncoder::~CodecEncoder() = default;

const CodecEncHParams &CodecEncoder::hparams() const { return p_->w->hp; }

int64_t CodecEncoder::frames_for(int64_t n) const {
    const CodecEncHParams &h = p_->w->hp;
    const int64_t t25 = (n + h.hop - 1) / h.hop;
    const int64_t t12 = (t25 + h.ds_stride - 1) / h.ds_stride;
    return std::min(t12, (n + h.samples_per_frame - 1) / h.samples_per_frame);
}

// ------------------------------------------------------------------------------------------------ graph

namespace {

// torch.cdist(...).argmin(-1) from the squared distances: clamp at 0, sqrt, first minimum. src[0]: [ncb, T] F32;
// dst: [T] I32.
void op_argmin(ggml_tensor *dst, int ith, int nth, void *) {
    const ggml_tensor *d = dst->src[0];
    const int64_t n = d->ne[0], T = d->ne[1];
    const auto [t0, t1] = thread_range(T, ith, nth);
    for (int64_t t = t0; t < t1; t++) {
        const float *row = (const float *)((const char *)d->data + t * d->nb[1]);
        int64_t best = 0;
        float bv = std::sqrt(std::max(row[0], 0.0f));
        for (int64_t i = 1; i < n; i++) {
            const float v = std::sqrt(std::max(row[i], 0.0f));
            if (v < bv) {
                bv = v;
                best = i;
            }
        }
        ((int32_t *)dst->data)[t] = (int32_t)best;
    }
}

// The SEANet's carried left contexts, one per conv with left padding (in CodecEncWeights::convs() order): a tile
// conv keeps its left context as the BF16 it reads, the others as F32. Zeros at the start of an encode.
struct SeanetTails {
    StateTensors mem;
    std::vector<const ConvWeights *> convs;
    std::vector<ggml_tensor *> tails;

    explicit SeanetTails(const CodecEncWeights &I) : convs(I.convs()), tails(convs.size(), nullptr) {
        mem.begin(convs.size(), "codec encoder state");
        for (size_t i = 0; i < convs.size(); i++)
            if (left_pad(*convs[i]) > 0)
                tails[i] = ggml_new_tensor_2d(mem.ctx(), convs[i]->amx ? GGML_TYPE_BF16 : GGML_TYPE_F32, convs[i]->cin,
                                              left_pad(*convs[i]));
        mem.allocate("codec encoder state");
    }
    // c's tail (null where it has no left padding).
    ggml_tensor *of(const ConvWeights &c) const {
        for (size_t i = 0; i < convs.size(); i++)
            if (convs[i] == &c) return tails[i];
        throw Error("internal error: codec encoder conv without state");
    }
};

constexpr int ATTN_BLOCK = 256;  // queries per attention block

struct Builder {
    ggml_context *ctx;
    ggml_cgraph *gf;
    const CodecEncWeights &I;
    TileOps &ops;  // the tile path's op parameters, alive while the graph is

    // The downsample conv pads by replicating the edges; every other conv takes its left context from its tail.
    bool replicate(const ConvWeights &c) const { return &c == &I.down; }

    // Causal conv of time-major x [cin, T] (contiguous). `tail` [cin, pad] holds the previous chunk's last input
    // columns (zeros at the start, which is the reference's zero padding) and receives this chunk's; the
    // downsample conv replicates the edges instead. The right edge is padded up to a multiple of the stride
    // (zeros, or replicated). Returns residual + [cout, ceil(T / stride)] (residual may be null). On the packed
    // kernel a conv without right padding reads its tail in place (no concatenated copy of a 24 kHz input) and the
    // residual is added in its epilogue: the same sums as the separate ops.
    ggml_tensor *conv(ggml_tensor *x, const ConvWeights &c, ggml_tensor *tail, ggml_tensor *residual = nullptr) {
        x = cont(ctx, x);
        const int64_t T = x->ne[1], s = c.stride, P = left_pad(c);
        const int64_t n_out = (T + s - 1) / s, extra = n_out * s - T;
        if (residual) residual = cont(ctx, residual);
        if (c.packed && P > 0 && extra == 0 && !replicate(c))
            return packed_causal_conv(ctx, gf, x, tail, *c.packed, residual);
        ggml_tensor *X = x;
        if (replicate(c)) {
            if (P > 0) {
                ggml_tensor *first = ggml_view_2d(ctx, x, c.cin, 1, x->nb[1], 0);
                X = ggml_concat(ctx, ggml_repeat_4d(ctx, first, c.cin, P, 1, 1), X, 1);
            }
            if (extra > 0) {
                ggml_tensor *last = ggml_view_2d(ctx, x, c.cin, 1, x->nb[1], (size_t)(T - 1) * x->nb[1]);
                X = ggml_concat(ctx, X, ggml_repeat_4d(ctx, last, c.cin, extra, 1, 1), 1);
            }
        } else {
            if (P > 0) {
                X = ggml_concat(ctx, tail, x, 1);  // [cin, P + T]
                ggml_build_forward_expand(
                    gf, ggml_cpy(ctx, ggml_view_2d(ctx, X, c.cin, P, X->nb[1], (size_t)T * X->nb[1]), tail));
            }
            if (extra > 0) X = ggml_pad(ctx, X, 0, (int)extra, 0, 0);
        }
        if (c.packed) return packed_conv(ctx, cont(ctx, X), *c.packed, n_out, residual);  // bias in the epilogue
        ggml_tensor *y = conv_product(X, c, n_out);
        if (c.b) y = ggml_add(ctx, y, c.b);
        return residual ? ggml_add(ctx, residual, y) : y;
    }

    // The conv's product (no bias) over its padded input X: n_out outputs.
    ggml_tensor *conv_product(ggml_tensor *X, const ConvWeights &c, int64_t n_out) {
        const size_t es = sizeof(float), s = c.stride;
        if (c.k == 1 && s == 1) return ggml_mul_mat(ctx, c.wp, X);
        if (windowed(c))  // overlapping windows: row n = columns n*s .. n*s+k-1, i.e. k*cin floats from n*s*cin
            return ggml_mul_mat(ctx, c.wp, overlapping_rows(ctx, X, (int64_t)c.k * c.cin, n_out, s * c.cin * es));
        ggml_tensor *y = nullptr;
        for (int j = 0; j < c.k; j++) {
            ggml_tensor *wj = ggml_view_2d(ctx, c.wp, c.cin, c.cout, c.wp->nb[1], (size_t)j * c.wp->nb[2]);
            ggml_tensor *xj = ggml_view_2d(ctx, X, c.cin, n_out, s * c.cin * es, (size_t)j * c.dil * c.cin * es);
            ggml_tensor *p = ggml_mul_mat(ctx, wj, xj);
            y = y ? ggml_add(ctx, y, p) : p;
        }
        return y;
    }

    // ELU(x) before the conv `next`: the packed kernel's polynomial (conv_elu_row) where that conv runs on it, else
    // ggml's (libm's expm1f, a third of the packed path's encode time).
    ggml_tensor *elu(ggml_tensor *x, const ConvWeights &next) {
        if (!next.packed) return ggml_elu(ctx, x);
        auto op = [](ggml_tensor *dst, const ggml_tensor *a, int ith, int nth, void *) {
            const auto [i0, i1] = thread_range(ggml_nelements(a), ith, nth);
            if (i0 < i1) conv_elu_row((const float *)a->data + i0, i1 - i0, (float *)dst->data + i0);
        };
        return ggml_map_custom1(ctx, cont(ctx, x), op, GGML_N_TASKS_MAX, nullptr);
    }

    ggml_tensor *layer_norm(ggml_tensor *x, ggml_tensor *w, ggml_tensor *b, float eps) {
        return ggml_add(ctx, ggml_mul(ctx, ggml_norm(ctx, x, eps), w), b);
    }

    // ---- tile path

    // The tile path's conv: res + conv(act(x)) (res may be null), x time-major F32 [cin, T]. A conv packed for the
    // tiles reads one BF16 copy of act(x) with its left context (the BF16 `tail`, zeros at the start, or replicated
    // edges) and its right zero padding, and adds bias and res as it stores; the single-channel first conv is a
    // direct F32 loop; any other conv (widths that do not fit the tiles) takes the F32 path.
    ggml_tensor *tile_conv(ggml_tensor *x, const ConvWeights &c, Act act, ggml_tensor *res, ggml_tensor *tail) {
        x = cont(ctx, x);
        const int64_t T = x->ne[1], s = c.stride, P = left_pad(c), n_out = (T + s - 1) / s;
        if (c.amx) return ops.conv(tile_in(x, c, act, tail), *c.amx, n_out, c.b, nullptr, res, false);
        if (act == Act::Elu)
            x = ggml_elu(ctx, x);
        else if (act != Act::None)
            throw Error("internal error: codec encoder activation");
        ggml_tensor *y;
        if (&c == &I.conv_in && !I.conv_in_taps.empty()) {
            ggml_tensor *X = x;
            if (P > 0) {
                X = ggml_concat(ctx, tail, x, 1);
                ggml_build_forward_expand(
                    gf, ggml_cpy(ctx, ggml_view_2d(ctx, X, 1, P, X->nb[1], (size_t)T * X->nb[1]), tail));
            }
            y = ops.conv_from1(X, I.conv_in_taps.data(), c.k, c.cout, c.b);
        } else {
            y = conv(x, c, replicate(c) ? nullptr : tail);
        }
        return res ? ggml_add(ctx, res, y) : y;
    }

    // The BF16 input of the tile conv c of act(x), x F32 [cin, T]: its left context from `tail` (which gets the
    // next chunk's) or replicated edges, its right padding.
    ggml_tensor *tile_in(ggml_tensor *x, const ConvWeights &c, Act act, ggml_tensor *tail) {
        x = cont(ctx, x);
        const bool rep = replicate(c);
        const int64_t T = x->ne[1], s = c.stride, P = left_pad(c), n_out = (T + s - 1) / s;
        const Edge edge = rep ? Edge::Replicate : Edge::Zero;
        const int64_t fill = rep ? n_out * s - T : 0;
        ggml_tensor *t = rep || P == 0 ? nullptr : tail;
        ggml_tensor *xb = ops.input({x}, nullptr, t, act, edge, P, fill, TileOps::pad_for(*c.amx, n_out, P + T + fill));
        if (t)  // the last P columns of [tail | act(x)] are the next chunk's left context
            ggml_build_forward_expand(
                gf, ggml_cpy(ctx, ggml_view_2d(ctx, xb, c.cin, P, xb->nb[1], (size_t)T * xb->nb[1]), t));
        return xb;
    }

    // The tile conv c from its BF16 input xb (for T input columns) with res added, stored directly as the BF16
    // input of the next tile conv nx of act(result) (zero-padded nx, whose left context is `tail`).
    ggml_tensor *tile_conv_to(ggml_tensor *xb, int64_t T, const ConvWeights &c, ggml_tensor *res, Act act,
                              const ConvWeights &nx, ggml_tensor *tail, const Res1 *res1 = nullptr) {
        const int64_t n_out = (T + c.stride - 1) / c.stride, P = left_pad(nx), n2 = (n_out + nx.stride - 1) / nx.stride;
        if (replicate(nx) || (P > 0 && !tail)) throw Error("internal error: codec encoder conv chain");
        ggml_tensor *yb = ops.conv_to_input(xb, *c.amx, n_out, c.b, res, act, P > 0 ? tail : nullptr, P,
                                            TileOps::pad_for(*nx.amx, n2, P + n_out), res1);
        if (P > 0)
            ggml_build_forward_expand(
                gf, ggml_cpy(ctx, ggml_view_2d(ctx, yb, nx.cin, P, yb->nb[1], (size_t)n_out * yb->nb[1]), tail));
        return yb;
    }

    // ---- SEANet

    // F32 path: audio [1, T] -> [hidden, T / hop].
    ggml_tensor *seanet_f32(ggml_tensor *x, const SeanetTails &tails) {
        auto conv_t = [&](ggml_tensor *v, const ConvWeights &c, ggml_tensor *residual = nullptr) {
            return conv(v, c, tails.of(c), residual);
        };
        x = conv_t(x, I.conv_in);
        for (const EncStage &st : I.stages) {
            for (const EncResBlock &r : st.res) {
                ggml_tensor *res = r.has_shortcut ? conv_t(x, r.sc) : x;
                ggml_tensor *y = conv_t(elu(x, r.c1), r.c1);
                x = conv_t(elu(y, r.c2), r.c2, res);
            }
            x = conv_t(elu(x, st.down), st.down);
        }
        return conv_t(elu(x, I.conv_out), I.conv_out);
    }

    // Whether the first stage is one residual block whose convs and downsample are all on tiles after the
    // single-channel first conv: then first_stage_tiles computes it without any F32 full-rate activation.
    bool first_stage_fuses() const {
        const ConvWeights &ci = I.conv_in;
        if (I.stages.empty() || I.conv_in_taps.empty() || ci.cout % 16) return false;
        const EncStage &s0 = I.stages[0];
        if (s0.res.size() != 1 || s0.res[0].has_shortcut) return false;
        const EncResBlock &r = s0.res[0];
        return r.c1.amx && r.c2.amx && r.c1.stride == 1 && r.c2.stride == 1 && s0.down.amx && !replicate(s0.down);
    }

    // The first stage fused (first_stage_fuses): the single-channel first conv stores c1's input and c2 computes
    // its residual (that conv's output) again from the audio. Audio [1, T] -> the downsampling conv's output.
    ggml_tensor *first_stage_tiles(ggml_tensor *audio, const SeanetTails &tails) {
        const ConvWeights &ci = I.conv_in;
        const EncStage &s0 = I.stages[0];
        const EncResBlock &r = s0.res[0];
        const int64_t T = audio->ne[1], P0 = left_pad(ci), P1 = left_pad(r.c1);
        ggml_tensor *X = audio;
        if (P0 > 0) {  // the audio with the first conv's left context
            ggml_tensor *t0 = tails.of(ci);
            X = ggml_concat(ctx, t0, audio, 1);
            ggml_build_forward_expand(gf,
                                      ggml_cpy(ctx, ggml_view_2d(ctx, X, 1, P0, X->nb[1], (size_t)T * X->nb[1]), t0));
        }
        ggml_tensor *t1 = P1 > 0 ? tails.of(r.c1) : nullptr;
        ggml_tensor *c1in = ops.conv_from1_to_input(X, I.conv_in_taps.data(), ci.k, ci.cout, ci.b, Act::Elu, t1, P1,
                                                    TileOps::pad_for(*r.c1.amx, T, P1 + T));
        if (t1)
            ggml_build_forward_expand(
                gf, ggml_cpy(ctx, ggml_view_2d(ctx, c1in, ci.cout, P1, c1in->nb[1], (size_t)T * c1in->nb[1]), t1));
        ggml_tensor *yb = tile_conv_to(c1in, T, r.c1, nullptr, Act::Elu, r.c2, tails.of(r.c2));
        const Res1 r1{X, I.conv_in_taps.data(), ci.k, ci.cout, ci.b};
        ggml_tensor *down_in = tile_conv_to(yb, T, r.c2, nullptr, Act::Elu, s0.down, tails.of(s0.down), &r1);
        return ops.conv(down_in, *s0.down.amx, (T + s0.down.stride - 1) / s0.down.stride, s0.down.b, nullptr, nullptr,
                        false);
    }

    // One SEANet stage on the tile path. Where both convs of a residual block are on tiles, c1 stores c2's input
    // (ELU'd BF16) and the last block's c2 stores the downsampling conv's: the block's F32 output is never needed
    // on its own.
    ggml_tensor *stage_tiles(const EncStage &st, ggml_tensor *x, const SeanetTails &tails) {
        auto conv_t = [&](ggml_tensor *v, const ConvWeights &c, Act act, ggml_tensor *res) {
            return tile_conv(v, c, act, res, tails.of(c));
        };
        const int64_t Tin = x->ne[1];
        ggml_tensor *down_in = nullptr;
        for (size_t ri = 0; ri < st.res.size(); ri++) {
            const EncResBlock &r = st.res[ri];
            ggml_tensor *res = r.has_shortcut ? conv_t(x, r.sc, Act::None, nullptr) : x;
            if (!r.c1.amx || !r.c2.amx || r.c1.stride != 1 || r.c2.stride != 1) {
                x = conv_t(conv_t(x, r.c1, Act::Elu, nullptr), r.c2, Act::Elu, res);
                continue;
            }
            ggml_tensor *yb = tile_conv_to(tile_in(x, r.c1, Act::Elu, tails.of(r.c1)), Tin, r.c1, nullptr, Act::Elu,
                                           r.c2, tails.of(r.c2));
            if (ri + 1 == st.res.size() && st.down.amx && !replicate(st.down))
                down_in = tile_conv_to(yb, Tin, r.c2, res, Act::Elu, st.down, tails.of(st.down));
            else
                x = ops.conv(yb, *r.c2.amx, Tin, r.c2.b, nullptr, res, false);
        }
        if (down_in)
            return ops.conv(down_in, *st.down.amx, (Tin + st.down.stride - 1) / st.down.stride, st.down.b, nullptr,
                            nullptr, false);
        return conv_t(x, st.down, Act::Elu, nullptr);
    }

    // Tile path: audio [1, T] -> [hidden, T / hop].
    ggml_tensor *seanet_tiles(ggml_tensor *audio, const SeanetTails &tails) {
        const bool fused = first_stage_fuses();
        ggml_tensor *x = fused ? first_stage_tiles(audio, tails)
                               : tile_conv(audio, I.conv_in, Act::None, nullptr, tails.of(I.conv_in));
        for (size_t si = fused ? 1 : 0; si < I.stages.size(); si++) x = stage_tiles(I.stages[si], x, tails);
        return tile_conv(x, I.conv_out, Act::Elu, nullptr, tails.of(I.conv_out));
    }

    // ---- transformer

    // RoPE and causal attention over all frames in blocks of queries (ggml ops): q [hd, H, T], k, v [hd, Hkv, T]
    // (any strides) -> [hd * H, T].
    ggml_tensor *attention_f32(ggml_tensor *q, ggml_tensor *k, ggml_tensor *v, const RopeTables &rope) {
        const CodecEncHParams &h = I.hp;
        const int hd = h.head_dim, T = (int)q->ne[2];
        const float scale = 1.0f / std::sqrt((float)hd);
        q = rope.apply(ctx, q);  // [hd, H, T]
        k = rope.apply(ctx, k);
        // [gemm_width(T), hd, Hkv]: the keys padded with zeros, as the probabilities below, so that the weighted
        // sum of the values runs on ggml's GEMM kernel too (pad_for_gemm)
        ggml_tensor *Vp = pad_for_gemm(ctx, ggml_cont(ctx, ggml_permute(ctx, v, 1, 2, 0, 3)));
        ggml_tensor *o = nullptr;
        for (int q0 = 0; q0 < T; q0 += ATTN_BLOCK) {
            const int nq = std::min(ATTN_BLOCK, T - q0), nk = q0 + nq;  // full causal: keys 0 .. q0+nq-1
            // [hd, nq, H], contiguous: ggml's GEMM kernel takes only a contiguous right operand (a permuted one
            // gets a dot product per output)
            ggml_tensor *Qb = ggml_cont(
                ctx,
                ggml_permute(ctx, ggml_view_3d(ctx, q, hd, h.n_head, nq, q->nb[1], q->nb[2], (size_t)q0 * q->nb[2]), 0,
                             2, 1, 3));
            ggml_tensor *Kb = ggml_permute(ctx, ggml_view_3d(ctx, k, hd, h.n_head_kv, nk, k->nb[1], k->nb[2], 0), 0, 2,
                                           1, 3);  // [hd, nk, Hkv]
            ggml_tensor *Vb = ggml_view_3d(ctx, Vp, gemm_width(nk), hd, h.n_head_kv, Vp->nb[1], Vp->nb[2], 0);
            ggml_tensor *kq = ggml_mul_mat(ctx, Kb, Qb);   // [nk, nq, H]
            kq = ggml_diag_mask_inf_inplace(ctx, kq, q0);  // key j > query q0+i: -inf
            kq = ggml_soft_max_ext(ctx, kq, nullptr, scale, 0.0f);
            kq = pad_for_gemm(ctx, kq);
            ggml_tensor *ob = ggml_mul_mat(ctx, Vb, kq);  // [hd, nq, H]
            ob = ggml_cont_2d(ctx, ggml_permute(ctx, ob, 0, 2, 1, 3), (int64_t)hd * h.n_head, nq);
            o = o ? ggml_concat(ctx, o, ob, 1) : ob;
        }
        return o;
    }

    // The attention output (before o_proj) of layer L over x [hidden, T]: on tiles, LayerNorm as the BF16 tile
    // input of one product for q, k and v ([qw + 2 kvw, T]), with the tile ops' RoPE and attention where the head
    // width suits them.
    ggml_tensor *attention(const EncTfLayer &L, ggml_tensor *x, const RopeTables &rope) {
        const CodecEncHParams &h = I.hp;
        const int hd = h.head_dim;
        const int64_t T = x->ne[1];
        if (!L.qkv) {
            ggml_tensor *cur = layer_norm(x, L.ln1_w, L.ln1_b, h.eps);
            return attention_f32(ggml_reshape_3d(ctx, ggml_mul_mat(ctx, L.attn.wq, cur), hd, h.n_head, T),
                                 ggml_reshape_3d(ctx, ggml_mul_mat(ctx, L.attn.wk, cur), hd, h.n_head_kv, T),
                                 ggml_reshape_3d(ctx, ggml_mul_mat(ctx, L.attn.wv, cur), hd, h.n_head_kv, T), rope);
        }
        ggml_tensor *qkv = ops.conv(ops.layer_norm_input(x, L.ln1_w, L.ln1_b, h.eps, TileOps::pad_for(*L.qkv, T, T)),
                                    *L.qkv, T, nullptr, nullptr, nullptr, false);
        const size_t es = sizeof(float), qw = (size_t)hd * h.n_head, kvw = (size_t)hd * h.n_head_kv;
        if (TileOps::attention_fits(hd)) {
            ggml_tensor *qk = ops.rope_qk(qkv, rope.cos, rope.sin, h.n_head, h.n_head_kv, hd);
            ggml_tensor *v = ggml_view_2d(ctx, qkv, (int64_t)kvw, T, qkv->nb[1], (qw + kvw) * es);
            return ops.attention(qk, v, h.n_head, h.n_head_kv, hd, 1.0f / std::sqrt((float)hd));
        }
        return attention_f32(ggml_view_3d(ctx, qkv, hd, h.n_head, T, hd * es, qkv->nb[1], 0),
                             ggml_view_3d(ctx, qkv, hd, h.n_head_kv, T, hd * es, qkv->nb[1], qw * es),
                             ggml_view_3d(ctx, qkv, hd, h.n_head_kv, T, hd * es, qkv->nb[1], (qw + kvw) * es), rope);
    }

    // One transformer layer: x + attn_ls * o_proj(attention), then x + mlp_ls * fc2(gelu(fc1(LayerNorm(x)))), each
    // on tiles where packed (fc1 storing fc2's input, GELU'd BF16; the LayerScale'd sums in the epilogues).
    ggml_tensor *layer(const EncTfLayer &L, ggml_tensor *x, const RopeTables &rope) {
        const CodecEncHParams &h = I.hp;
        const int64_t T = x->ne[1];
        ggml_tensor *o = attention(L, x, rope);
        if (L.o)
            x = ops.conv(ops.input({o}, nullptr, nullptr, Act::None, Edge::Zero, 0, 0, TileOps::pad_for(*L.o, T, T)),
                         *L.o, T, nullptr, L.attn.ls, x, false);
        else
            x = ggml_add(ctx, x, ggml_mul(ctx, ggml_mul_mat(ctx, L.attn.wo, o), L.attn.ls));
        if (L.fc1 && L.fc2) {
            ggml_tensor *cur =
                ops.conv_to_input(ops.layer_norm_input(x, L.ln2_w, L.ln2_b, h.eps, TileOps::pad_for(*L.fc1, T, T)),
                                  *L.fc1, T, nullptr, nullptr, Act::Gelu, nullptr, 0, TileOps::pad_for(*L.fc2, T, T));
            return ops.conv(cur, *L.fc2, T, nullptr, L.mlp_ls, x, false);
        }
        ggml_tensor *cur = layer_norm(x, L.ln2_w, L.ln2_b, h.eps);
        cur = ggml_mul_mat(ctx, L.fc2_w, ggml_gelu_erf(ctx, ggml_mul_mat(ctx, L.fc1_w, cur)));
        return ggml_add(ctx, x, ggml_mul(ctx, cur, L.mlp_ls));
    }

    // ---- RVQ

    // The nearest row of codebook j of q to each column of r: on the tile path by |y|^2 - 2 r.y (BF16 products on
    // tiles, rescored in F32, or F32 products); on the F32 path [-2r, |r|^2, 1] . [y, 1, |y|^2] = |r - y|^2 as
    // torch.cdist's matrix-product path computes it, then the argmin.
    ggml_tensor *nearest(const EncRvq &q, size_t j, ggml_tensor *r, ggml_tensor *ones) {
        const int64_t T = r->ne[1];
        if (I.tiles && q.packed[j]) {
            const AmxConv &w = *q.packed[j];
            ggml_tensor *approx =
                ops.conv(ops.input({r}, nullptr, nullptr, Act::None, Edge::Zero, 0, 0, TileOps::pad_for(w, T, T)), w, T,
                         nullptr, nullptr, nullptr, false);
            return ops.nearest_rescored(approx, r, q.books[j], q.n2[j], q.norms[j]);
        }
        if (I.tiles) return ops.nearest(ggml_mul_mat(ctx, q.books[j], r), q.n2[j]);
        ggml_tensor *xa = ggml_concat(ctx, ggml_scale(ctx, r, -2.0f), ggml_sum_rows(ctx, ggml_sqr(ctx, r)), 0);
        xa = pad_for_gemm(ctx, ggml_concat(ctx, xa, ones, 0));  // [aug_width(D), T]
        ggml_tensor *d2 = ggml_mul_mat(ctx, q.aug[j], xa);      // [codebook_size, T]
        ggml_tensor *args[1] = {d2};
        return ggml_custom_4d(ctx, GGML_TYPE_I32, T, 1, 1, 1, args, 1, op_argmin, GGML_N_TASKS_MAX, nullptr);
    }

    // Split RVQ of z [hidden, T12]: the codes [T12] I32 of every book, semantic then acoustic, each quantizer
    // residual over its books. ones [1, T12] (F32 path only): the distances' ones column.
    std::vector<ggml_tensor *> rvq(ggml_tensor *z, ggml_tensor *ones) {
        const CodecEncHParams &h = I.hp;
        std::vector<ggml_tensor *> codes;
        for (const EncRvq *qz : {&I.sem, &I.ac}) {
            ggml_tensor *r =
                qz->in_proj ? ggml_mul_mat(ctx, ggml_reshape_2d(ctx, qz->in_proj, h.hidden, h.vq_dim), z) : z;
            for (size_t j = 0; j < qz->books.size(); j++) {
                ggml_tensor *idx = nearest(*qz, j, r, ones);
                codes.push_back(idx);
                if (j + 1 < qz->books.size()) r = ggml_sub(ctx, r, ggml_get_rows(ctx, qz->books[j], idx));
            }
        }
        return codes;
    }
};

}  // namespace

// ------------------------------------------------------------------------------------------------ encode

std::vector<int32_t> CodecEncoder::encode(const float *wav, int64_t n, CodecEncStages *stages) {
    if (n <= 0 || !wav) throw Error("the audio to encode is empty");
    if (n > ((int64_t)1 << 31) - 1) throw Error("the audio to encode is too long");
    for (int64_t i = 0; i < n; i++)
        if (!std::isfinite(wav[i])) throw Error("the audio to encode contains NaN or infinite samples");
    peak_seanet_bytes = peak_rest_bytes = 0;
    std::vector<float> feats = seanet(wav, n);
    std::vector<int32_t> codes = quantize(feats, n, stages);
    if (stages) stages->seanet = std::move(feats);
    return codes;
}

// The SEANet in chunks with carried conv tails: [T25][hidden] features.
std::vector<float> CodecEncoder::seanet(const float *wav, int64_t n) {
    const CodecEncWeights &I = *p_->w;
    const CodecEncHParams &h = I.hp;
    CodecCompute &compute = codec_compute(m_);
    const SeanetTails tails(I);
    const int64_t hop = h.hop, T25 = (n + hop - 1) / hop;
    int64_t chunk = chunk_samples > 0 ? (chunk_samples + hop - 1) / hop * hop : T25 * hop;
    chunk = std::min(chunk, T25 * hop);
    std::vector<float> feats((size_t)T25 * h.hidden);

    ggml_gallocr_ptr alloc(ggml_gallocr_new(ggml_backend_get_default_buffer_type(compute.backend())));
    if (!alloc) throw Error("cannot create the codec encoder compute allocator");
    Graph g;
    int64_t g_len = -1;
    ggml_tensor *g_in = nullptr, *g_out = nullptr;
    TileOps ops(nullptr);
    int64_t done25 = 0;
    for (int64_t off = 0; off < n; off += chunk) {
        const int64_t T = std::min(chunk, n - off);
        if (T != g_len) {  // the first chunk and the last, shorter one
            g.begin(2048);
            ops.reset(g.ctx());
            Builder B{g.ctx(), g.gf, I, ops};
            g_in = g.input(GGML_TYPE_F32, 1, T);
            g_out = named(cont(g.ctx(), I.tiles ? B.seanet_tiles(g_in, tails) : B.seanet_f32(g_in, tails)), "seanet");
            g.output(g_out);
            g.allocate(compute.backend(), alloc.get());
            peak_seanet_bytes = std::max(peak_seanet_bytes, ggml_gallocr_get_buffer_size(alloc.get(), 0));
            g_len = T;
        }
        ggml_backend_tensor_set(g_in, wav + off, 0, sizeof(float) * (size_t)T);
        compute.compute(g.gf, codec_threads(m_, n_threads));
        const int64_t t25 = g_out->ne[1];
        if (done25 + t25 > T25) throw Error("internal error: codec encoder frame count mismatch");
        ggml_backend_tensor_get(g_out, feats.data() + (size_t)done25 * h.hidden, 0, ggml_nbytes(g_out));
        done25 += t25;
    }
    if (done25 != T25) throw Error("internal error: codec encoder frame count mismatch");
    return feats;
}

// The transformer, the downsample and the RVQ as one graph over all frames of the SEANet features: codes
// [frames][n_sem + n_ac].
std::vector<int32_t> CodecEncoder::quantize(const std::vector<float> &feats, int64_t n, CodecEncStages *stages) {
    const CodecEncWeights &I = *p_->w;
    const CodecEncHParams &h = I.hp;
    CodecCompute &compute = codec_compute(m_);
    const int T = (int)(feats.size() / h.hidden), n_books = h.n_sem + h.n_ac;
    const int64_t T12 = (T + h.ds_stride - 1) / h.ds_stride;

    Graph g;
    g.begin(4096 + (size_t)h.n_layer * 16 * ((T + ATTN_BLOCK - 1) / ATTN_BLOCK) + (size_t)n_books * 16);
    ggml_context *ctx = g.ctx();
    TileOps ops(ctx);
    Builder B{ctx, g.gf, I, ops};
    ggml_tensor *in_x = g.input(GGML_TYPE_F32, h.hidden, T);
    const RopeTables rope(ctx, h.head_dim, T);
    ggml_tensor *in_ones = I.tiles ? nullptr : g.input(GGML_TYPE_F32, 1, T12);
    ggml_tensor *x = in_x;
    for (const EncTfLayer &L : I.layers) x = B.layer(L, x, rope);
    ggml_tensor *out_tf = named(x, "transformer");
    ggml_tensor *z = I.tiles ? B.tile_conv(x, I.down, Act::None, nullptr, nullptr) : B.conv(x, I.down, nullptr);
    ggml_tensor *out_ds = named(z, "downsampled");  // [hidden, T12]
    const std::vector<ggml_tensor *> codes = B.rvq(z, in_ones);
    for (ggml_tensor *c : codes) g.output(c);
    if (stages) {
        g.output(out_tf);
        g.output(out_ds);
    }
    ggml_gallocr_ptr alloc(ggml_gallocr_new(ggml_backend_get_default_buffer_type(compute.backend())));
    if (!alloc) throw Error("cannot create the codec encoder compute allocator");
    g.allocate(compute.backend(), alloc.get());
    peak_rest_bytes = ggml_gallocr_get_buffer_size(alloc.get(), 0);
    ggml_backend_tensor_set(in_x, feats.data(), 0, ggml_nbytes(in_x));
    rope.set(h.head_dim, h.rope_theta, 0);
    const std::vector<float> ones((size_t)T12, 1.0f);
    if (in_ones) ggml_backend_tensor_set(in_ones, ones.data(), 0, ggml_nbytes(in_ones));
    compute.compute(g.gf, codec_threads(m_, n_threads));

    const int64_t frames = frames_for(n);
    std::vector<int32_t> out((size_t)frames * n_books), col((size_t)T12);
    for (int b = 0; b < n_books; b++) {
        ggml_backend_tensor_get(codes[b], col.data(), 0, ggml_nbytes(codes[b]));
        for (int64_t t = 0; t < frames; t++) out[(size_t)t * n_books + b] = col[t];
    }
    if (stages) {
        stages->transformer.resize(ggml_nelements(out_tf));
        ggml_backend_tensor_get(out_tf, stages->transformer.data(), 0, ggml_nbytes(out_tf));
        stages->downsampled.resize(ggml_nelements(out_ds));
        ggml_backend_tensor_get(out_ds, stages->downsampled.data(), 0, ggml_nbytes(out_ds));
    }
    return out;
}

}  // namespace qt

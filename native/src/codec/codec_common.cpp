// codec_common.cpp: see codec_common.h.
#include "codec/codec_common.h"

#include <cmath>

#include "kernels/packed_conv.h"
#include "runtime/cpu_backend.h"

namespace qt {

// ------------------------------------------------------------------------------------------------ compute

CodecCompute::CodecCompute() : backend_(new_cpu_backend()) {}

void CodecCompute::compute(ggml_cgraph *gf, int n_threads) {
    std::lock_guard<std::mutex> lock(mu_);
    pool_.use(backend_.get(), n_threads);
    if (ggml_backend_graph_compute(backend_.get(), gf) != GGML_STATUS_SUCCESS)
        throw Error("codec graph compute failed");
}

void CodecCompute::run_jobs(const std::vector<std::function<void()>> &jobs, int n_threads) {
    std::lock_guard<std::mutex> lock(mu_);
    pool_.use(backend_.get(), std::max(1, n_threads));
    qt::run_jobs(backend_.get(), jobs);
}

CodecCompute &codec_compute(const Model &m) {
    return *m.codec_compute.get([] { return std::make_shared<CodecCompute>(); });
}

void StateTensors::begin(size_t n_tensors, const char *what) {
    ggml_init_params ip = {ggml_tensor_overhead() * (n_tensors + 1), nullptr, /*no_alloc=*/true};
    ctx_.reset(ggml_init(ip));
    buf_.reset();
    if (!ctx_) throw Error(std::string("out of memory for the ") + what);
}

void StateTensors::allocate(const char *what) {
    if (!ggml_get_first_tensor(ctx_.get())) return;
    buf_.reset(ggml_backend_alloc_ctx_tensors_from_buft(ctx_.get(), ggml_backend_cpu_buffer_type()));
    if (!buf_) throw Error(std::string("out of memory for the ") + what);
    clear();
}

void StateTensors::clear() {
    if (buf_) ggml_backend_buffer_clear(buf_.get(), 0);
}

// ------------------------------------------------------------------------------------------------ weights

int positive_dim(const Meta &meta, const std::string &key) {
    const int v = meta.i32(key);
    if (v <= 0 || v > (1 << 20)) throw Error("GGUF metadata key '" + key + "' is out of range");
    return v;
}

CodecAttention load_codec_attention(const Model &m, const std::string &prefix, int hidden, int n_head, int n_head_kv,
                                    int head_dim) {
    const int qw = n_head * head_dim, kvw = n_head_kv * head_dim;
    CodecAttention a;
    a.wq = expect_matrix(m, prefix + "attn.q_proj.weight", {hidden, qw});
    a.wk = expect_matrix(m, prefix + "attn.k_proj.weight", {hidden, kvw});
    a.wv = expect_matrix(m, prefix + "attn.v_proj.weight", {hidden, kvw});
    a.wo = expect_matrix(m, prefix + "attn.o_proj.weight", {qw, hidden});
    a.ls = expect_f32(m, prefix + "attn_ls", {hidden});
    return a;
}

// ------------------------------------------------------------------------------------------------ graph

std::shared_ptr<PackedConv> pack_encoder_conv(const ConvWeights &c, int cin_used) {
    const float *src = (const float *)c.w->data;  // [cout][cin][k]
    const int64_t full = c.cin, k = c.k;
    auto w = [&](int o, int j, int i) { return src[(o * full + i) * k + j]; };
    auto p = std::make_shared<PackedConv>();
    if (packed_conv_pairs_available())
        p->pack_pairs(cin_used > 0 ? cin_used : c.cin, c.cout, c.k, c.dil, w, c.stride);
    else
        p->pack_f32(cin_used > 0 ? cin_used : c.cin, c.cout, c.k, c.dil, w, c.stride);
    if (cin_used == 0 && c.b) p->set_epilogue((const float *)c.b->data, nullptr, nullptr);
    return p;
}

ggml_tensor *cont(ggml_context *ctx, ggml_tensor *x) { return ggml_is_contiguous(x) ? x : ggml_cont(ctx, x); }

RopeTables::RopeTables(ggml_context *ctx, int head_dim, int64_t T)
    : cos(ggml_new_tensor_3d(ctx, GGML_TYPE_F32, head_dim / 2, 1, T)),
      sin(ggml_new_tensor_3d(ctx, GGML_TYPE_F32, head_dim / 2, 1, T)) {
    ggml_set_input(cos);
    ggml_set_input(sin);
}

void RopeTables::set(int head_dim, float theta, int64_t pos0) const {
    const int half = head_dim / 2;
    const int64_t T = cos->ne[2];
    std::vector<float> c((size_t)half * T), s((size_t)half * T);
    for (int64_t t = 0; t < T; t++) {
        const float p = (float)(pos0 + t);
        for (int i = 0; i < half; i++) {
            const float inv = 1.0f / std::pow(theta, (float)(2 * i) / (float)head_dim);
            const float a = inv * p;
            c[(size_t)t * half + i] = std::cos(a);
            s[(size_t)t * half + i] = std::sin(a);
        }
    }
    ggml_backend_tensor_set(cos, c.data(), 0, ggml_nbytes(cos));
    ggml_backend_tensor_set(sin, s.data(), 0, ggml_nbytes(sin));
}

ggml_tensor *RopeTables::apply(ggml_context *ctx, ggml_tensor *x) const {
    const int64_t half = x->ne[0] / 2;
    ggml_tensor *x1 = ggml_view_3d(ctx, x, half, x->ne[1], x->ne[2], x->nb[1], x->nb[2], 0);
    ggml_tensor *x2 = ggml_view_3d(ctx, x, half, x->ne[1], x->ne[2], x->nb[1], x->nb[2], half * sizeof(float));
    ggml_tensor *a = ggml_sub(ctx, ggml_mul(ctx, x1, cos), ggml_mul(ctx, x2, sin));
    ggml_tensor *b = ggml_add(ctx, ggml_mul(ctx, x2, cos), ggml_mul(ctx, x1, sin));
    return ggml_concat(ctx, a, b, 0);
}

}  // namespace qt

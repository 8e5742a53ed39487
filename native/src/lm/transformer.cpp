// transformer.cpp: Qwen3 decoder layers on ggml (model.md 2.2): RMSNorm, QK-norm before NeoX RoPE, GQA attention
// through the KV cache, SwiGLU.
#include "kernels/packed_matvec.h"
#include "kernels/fused_attention.h"
#include "lm/transformer.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace qt {

void KvCache::reserve(const DecoderHParams &hp, int needed) {
    if (needed <= capacity) return;
    int new_cap = capacity > 0 ? capacity : 64;
    while (new_cap < needed) new_cap *= 2;

    const int64_t row = (int64_t)hp.head_dim * hp.n_head_kv;
    ggml_init_params ip = {ggml_tensor_overhead() * (size_t)(2 * hp.n_layer + 2), nullptr, /*no_alloc=*/true};
    ggml_context_ptr nctx(ggml_init(ip));
    if (!nctx) throw Error("out of memory for the KV cache");
    std::vector<ggml_tensor *> nk, nv;
    for (int l = 0; l < hp.n_layer; l++) {
        nk.push_back(ggml_new_tensor_2d(nctx.get(), GGML_TYPE_F32, row, new_cap));
        nv.push_back(ggml_new_tensor_2d(nctx.get(), GGML_TYPE_F32, row, new_cap));
    }
    ggml_backend_buffer_ptr nbuf(ggml_backend_alloc_ctx_tensors_from_buft(nctx.get(), ggml_backend_cpu_buffer_type()));
    if (!nbuf) throw Error("out of memory for the KV cache");
    ggml_backend_buffer_clear(nbuf.get(), 0);
    // Positions are rows, so the stored prefix is one contiguous block per tensor.
    for (int l = 0; l < (int)k.size() && n_past > 0; l++) {
        memcpy(nk[l]->data, k[l]->data, (size_t)n_past * k[l]->nb[1]);
        memcpy(nv[l]->data, v[l]->data, (size_t)n_past * v[l]->nb[1]);
    }
    buf = std::move(nbuf);
    ctx = std::move(nctx);
    k = std::move(nk);
    v = std::move(nv);
    capacity = new_cap;
    generation++;
}

bool decoder_fusable(const DecoderHParams &hp, const std::vector<LayerTensors> &layers) {
    if (!fused_attention_fits(hp)) return false;
    for (const LayerTensors &L : layers)
        for (const ggml_tensor *w : {L.wq, L.wk, L.wv, L.wo, L.ffn_gate, L.ffn_up, L.ffn_down})
            if (!is_packed(w)) return false;
    return true;
}

void DecoderInputs::create(Graph &g, int n_tokens, int n_kv, bool fused_layers) {
    fused = fused_layers;
    pos = g.input(GGML_TYPE_I32, n_tokens);
    if (fused) return;
    kv_rows = g.input(GGML_TYPE_I64, n_tokens);
    mask = g.input(GGML_TYPE_F32, n_kv, n_tokens);
}

void DecoderInputs::fill(int n_past, int n_tokens, int n_kv) {
    std::vector<int32_t> p(n_tokens);
    std::vector<int64_t> r(n_tokens);
    std::vector<float> m(fused ? 0 : (size_t)n_kv * n_tokens, 0.0f);
    for (int i = 0; i < n_tokens; i++) {
        p[i] = n_past + i;
        r[i] = n_past + i;
        if (!fused)
            for (int j = n_past + i + 1; j < n_kv; j++)
                m[(size_t)i * n_kv + j] = -std::numeric_limits<float>::infinity();
    }
    ggml_backend_tensor_set(pos, p.data(), 0, ggml_nbytes(pos));
    if (fused) return;
    ggml_backend_tensor_set(kv_rows, r.data(), 0, ggml_nbytes(kv_rows));
    ggml_backend_tensor_set(mask, m.data(), 0, ggml_nbytes(mask));
}

static ggml_tensor *rms_norm(ggml_context *ctx, ggml_tensor *x, ggml_tensor *w, float eps) {
    return ggml_mul(ctx, ggml_rms_norm(ctx, x, eps), w);
}

ggml_tensor *build_decoder(ggml_context *ctx, ggml_cgraph *gf, const DecoderHParams &hp,
                           const std::vector<LayerTensors> &layers, ggml_tensor *output_norm, ggml_tensor *x,
                           const DecoderInputs &in, KvCache &cache, int n_tokens, int n_kv) {
    const int hd = hp.head_dim, H = hp.n_head, Hkv = hp.n_head_kv;
    const float scale = 1.0f / std::sqrt((float)hd);

    if (in.fused) {
        for (int il = 0; il < hp.n_layer; il++) {
            const LayerTensors &L = layers[il];
            ggml_tensor *qkv = norm_matmul(ctx, x, L.attn_norm, &hp.eps, {L.wq, L.wk, L.wv});
            ggml_tensor *att = fused_attention(ctx, qkv, L.q_norm, L.k_norm, in.pos, cache.k[il], cache.v[il], hp);
            x = matmul_add(ctx, L.wo, att, x);
            x = matmul_add(ctx, L.ffn_down, norm_swiglu(ctx, x, L.ffn_norm, &hp.eps, L.ffn_gate, L.ffn_up), x);
        }
        return rms_norm(ctx, x, output_norm, hp.eps);
    }

    for (int il = 0; il < hp.n_layer; il++) {
        const LayerTensors &L = layers[il];
        ggml_tensor *cur = rms_norm(ctx, x, L.attn_norm, hp.eps);

        ggml_tensor *q = ggml_reshape_3d(ctx, matmul(ctx, L.wq, cur), hd, H, n_tokens);
        ggml_tensor *k = ggml_reshape_3d(ctx, matmul(ctx, L.wk, cur), hd, Hkv, n_tokens);
        ggml_tensor *v = matmul(ctx, L.wv, cur);  // [hd * Hkv, n]
        // Per-head RMSNorm before RoPE (model.md 2.2; pitfall list 10).
        q = rms_norm(ctx, q, L.q_norm, hp.eps);
        k = rms_norm(ctx, k, L.k_norm, hp.eps);
        q = ggml_rope_ext(ctx, q, in.pos, nullptr, hd, GGML_ROPE_TYPE_NEOX, 0, hp.rope_base, 1.0f, 0.0f, 1.0f, 0.0f,
                          0.0f);
        k = ggml_rope_ext(ctx, k, in.pos, nullptr, hd, GGML_ROPE_TYPE_NEOX, 0, hp.rope_base, 1.0f, 0.0f, 1.0f, 0.0f,
                          0.0f);

        ggml_tensor *kc = cache.k[il], *vc = cache.v[il];
        ggml_build_forward_expand(gf, ggml_set_rows(ctx, kc, ggml_reshape_2d(ctx, k, hd * Hkv, n_tokens), in.kv_rows));
        ggml_build_forward_expand(gf, ggml_set_rows(ctx, vc, v, in.kv_rows));

        const size_t es = ggml_element_size(kc);
        ggml_tensor *K = ggml_permute(ctx, ggml_view_3d(ctx, kc, hd, Hkv, n_kv, hd * es, kc->nb[1], 0), 0, 2, 1,
                                      3);  // [hd, n_kv, Hkv]
        ggml_tensor *V = ggml_cont(ctx, ggml_permute(ctx, ggml_view_3d(ctx, vc, hd, Hkv, n_kv, hd * es, vc->nb[1], 0),
                                                     1, 2, 0, 3));  // [n_kv, hd, Hkv]
        ggml_tensor *Q = ggml_permute(ctx, q, 0, 2, 1, 3);          // [hd, n, H]

        // GQA: ggml broadcasts the Hkv kv heads over the H query heads (head h uses kv head h / (H/Hkv)).
        ggml_tensor *kq = ggml_mul_mat(ctx, K, Q);  // [n_kv, n, H]
        kq = ggml_soft_max_ext(ctx, kq, in.mask, scale, 0.0f);
        ggml_tensor *kqv = ggml_mul_mat(ctx, V, kq);  // [hd, n, H]
        cur = ggml_cont_2d(ctx, ggml_permute(ctx, kqv, 0, 2, 1, 3), hd * H, n_tokens);
        x = ggml_add(ctx, x, matmul(ctx, L.wo, cur));

        cur = rms_norm(ctx, x, L.ffn_norm, hp.eps);
        ggml_tensor *g = ggml_silu(ctx, matmul(ctx, L.ffn_gate, cur));
        cur = matmul(ctx, L.ffn_down, ggml_mul(ctx, g, matmul(ctx, L.ffn_up, cur)));
        x = ggml_add(ctx, x, cur);
    }
    return rms_norm(ctx, x, output_norm, hp.eps);
}

}  // namespace qt

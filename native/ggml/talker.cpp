// talker.cpp: graphs of the text projection and of the talker (28-layer Qwen3 decoder + codec head).
#include "talker.h"

#include <cstring>

namespace qt {

void text_project(Model &m, const int32_t *ids, int n, std::vector<float> &out) {
    const HParams &hp = m.hp;
    const TalkerTensors &t = m.talker;
    std::vector<float> emb((size_t)n * hp.text_embd);
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= hp.text_vocab) throw Error("text token id " + std::to_string(ids[i]) + " is out of range");
        read_row(t.text_embd, ids[i], &emb[(size_t)i * hp.text_embd]);
    }
    GraphBuilder gb(64);
    ggml_tensor *inp = gb.input(GGML_TYPE_F32, hp.text_embd, n);
    ggml_tensor *h = ggml_add(gb.ctx, ggml_mul_mat(gb.ctx, t.text_fc1_w, inp), t.text_fc1_b);
    h = ggml_add(gb.ctx, ggml_mul_mat(gb.ctx, t.text_fc2_w, ggml_silu(gb.ctx, h)), t.text_fc2_b);
    ggml_set_output(h);
    ggml_build_forward_expand(gb.gf, h);
    alloc_graph(m.alloc_text, gb.gf);
    ggml_backend_tensor_set(inp, emb.data(), 0, ggml_nbytes(inp));
    compute_graph(m, gb.gf);
    out.resize((size_t)n * hp.talker.n_embd);
    ggml_backend_tensor_get(h, out.data(), 0, out.size() * sizeof(float));
}

void talker_forward(Model &m, KvCache &cache, const float *rows, int n, float *hidden_last, float *logits) {
    const DecoderHParams &hp = m.hp.talker;
    cache.reserve(hp, cache.n_past + n);
    GraphBuilder gb;
    ggml_tensor *inp = gb.input(GGML_TYPE_F32, hp.n_embd, n);
    ggml_tensor *pos = gb.input(GGML_TYPE_I32, n);
    ggml_tensor *mask = gb.input(GGML_TYPE_F32, cache.n_past + n, n);
    ggml_tensor *h = build_decoder(gb.ctx, gb.gf, hp, m.talker.layers, m.talker.output_norm, inp, pos, mask, cache, n);
    ggml_tensor *last = ggml_view_2d(gb.ctx, h, hp.n_embd, 1, h->nb[1], (size_t)(n - 1) * h->nb[1]);
    last = ggml_cont(gb.ctx, last);
    ggml_tensor *lg = ggml_mul_mat(gb.ctx, m.talker.codec_head, last);
    ggml_set_output(last);
    ggml_set_output(lg);
    ggml_build_forward_expand(gb.gf, last);
    ggml_build_forward_expand(gb.gf, lg);
    alloc_graph(m.alloc_talker, gb.gf);

    std::vector<int32_t> p(n);
    for (int i = 0; i < n; i++) p[i] = cache.n_past + i;
    std::vector<float> mk;
    fill_causal_mask(mk, cache.n_past, n);
    ggml_backend_tensor_set(inp, rows, 0, ggml_nbytes(inp));
    ggml_backend_tensor_set(pos, p.data(), 0, ggml_nbytes(pos));
    ggml_backend_tensor_set(mask, mk.data(), 0, ggml_nbytes(mask));
    compute_graph(m, gb.gf);
    cache.n_past += n;
    ggml_backend_tensor_get(last, hidden_last, 0, ggml_nbytes(last));
    ggml_backend_tensor_get(lg, logits, 0, ggml_nbytes(lg));
}

}  // namespace qt

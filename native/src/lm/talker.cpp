// talker.cpp: graphs of the text projection and of the talker (28-layer Qwen3 decoder + codec head).
#include "kernels/packed_matvec.h"
#include "lm/talker.h"

namespace qt {

void text_project(Model &m, const int32_t *ids, int n, std::vector<float> &out) {
    const HParams &hp = m.hp;
    const TalkerTensors &t = m.talker;
    std::vector<float> emb((size_t)n * hp.text_embd);
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= hp.text_vocab)
            throw Error("text token id " + std::to_string(ids[i]) + " is out of range");
        read_row(t.text_embd, ids[i], &emb[(size_t)i * hp.text_embd]);
    }
    Graph g;
    g.begin(64);
    ggml_tensor *inp = g.input(GGML_TYPE_F32, hp.text_embd, n);
    ggml_tensor *h = ggml_add(g.ctx(), matmul(g.ctx(), t.text_fc1_w, inp), t.text_fc1_b);
    h = ggml_add(g.ctx(), matmul(g.ctx(), t.text_fc2_w, ggml_silu(g.ctx(), h)), t.text_fc2_b);
    g.output(h);
    g.allocate(m.backend.get(), m.alloc_text.get());
    ggml_backend_tensor_set(inp, emb.data(), 0, ggml_nbytes(inp));
    g.compute(m.backend.get());
    out.resize((size_t)n * hp.talker.n_embd);
    ggml_backend_tensor_get(h, out.data(), 0, out.size() * sizeof(float));
}

void Talker::build(Built &b, int n_tokens, int n_kv, ggml_gallocr_t shared) {
    const DecoderHParams &hp = m_.hp.talker;
    Graph &g = b.graph;
    g.begin(8192);
    b.inp = g.input(GGML_TYPE_F32, hp.n_embd, n_tokens);
    b.in.create(g, n_tokens, n_kv, decoder_fusable(hp, m_.talker.layers));
    ggml_tensor *h =
        build_decoder(g.ctx(), g.gf, hp, m_.talker.layers, m_.talker.output_norm, b.inp, b.in, cache_, n_tokens, n_kv);
    b.hidden = ggml_cont(g.ctx(), ggml_view_2d(g.ctx(), h, hp.n_embd, 1, h->nb[1], (size_t)(n_tokens - 1) * h->nb[1]));
    b.logits = matmul(g.ctx(), m_.talker.codec_head, b.hidden);
    g.output(b.hidden);
    g.output(b.logits);
    g.allocate(m_.backend.get(), shared);
    b.n_kv = n_kv;
    b.cache_generation = cache_.generation;
}

void Talker::run(Built &b, const float *rows, int n_tokens, float *hidden_last, float *logits) {
    ggml_backend_tensor_set(b.inp, rows, 0, ggml_nbytes(b.inp));
    b.in.fill(cache_.n_past, n_tokens, b.n_kv);
    b.graph.compute(m_.backend.get());
    cache_.n_past += n_tokens;
    ggml_backend_tensor_get(b.hidden, hidden_last, 0, ggml_nbytes(b.hidden));
    ggml_backend_tensor_get(b.logits, logits, 0, ggml_nbytes(b.logits));
}

void Talker::prefill(const float *rows, int n, float *hidden_last, float *logits) {
    const int n_kv = cache_.n_past + n;
    cache_.reserve(m_.hp.talker, n_kv + kStepBucket);
    Built once;  // a prompt is prefilled once: its graph borrows the model's allocator
    build(once, n, n_kv, m_.alloc_talker.get());
    run(once, rows, n, hidden_last, logits);
}

void Talker::step(const float *row, float *hidden_last, float *logits) {
    const int needed = cache_.n_past + 1;
    if (!step_.graph.built() || needed > step_.n_kv || step_.cache_generation != cache_.generation) {
        const int n_kv = (needed + kStepBucket - 1) / kStepBucket * kStepBucket;
        cache_.reserve(m_.hp.talker, n_kv);
        build(step_, 1, n_kv, nullptr);
    }
    run(step_, row, 1, hidden_last, logits);
}

}  // namespace qt

// code_predictor.cpp: graph of one code-predictor step (prefill of [h, C(c0)] or one code embedding).
#include "code_predictor.h"

namespace qt {

void cp_forward(Model &m, KvCache &cache, const float *rows, int n, int head, float *logits, std::vector<float> *proj_out) {
    const DecoderHParams &hp = m.hp.cp;
    const CodePredictorTensors &c = m.cp;
    cache.reserve(hp, cache.n_past + n);
    GraphBuilder gb(2048);
    ggml_tensor *inp = gb.input(GGML_TYPE_F32, m.hp.talker.n_embd, n);
    ggml_tensor *pos = gb.input(GGML_TYPE_I32, n);
    ggml_tensor *mask = gb.input(GGML_TYPE_F32, cache.n_past + n, n);
    // small_to_mtp_projection applies to every input row, the talker hidden included (1.7B); identity for 0.6B.
    ggml_tensor *x = inp;
    if (c.input_proj_w) x = ggml_add(gb.ctx, ggml_mul_mat(gb.ctx, c.input_proj_w, inp), c.input_proj_b);
    if (proj_out) {
        ggml_set_output(x);
        ggml_build_forward_expand(gb.gf, x);
    }
    ggml_tensor *h = build_decoder(gb.ctx, gb.gf, hp, c.layers, c.output_norm, x, pos, mask, cache, n);
    ggml_tensor *last = ggml_view_2d(gb.ctx, h, hp.n_embd, 1, h->nb[1], (size_t)(n - 1) * h->nb[1]);
    ggml_tensor *lg = ggml_mul_mat(gb.ctx, c.heads[head], ggml_cont(gb.ctx, last));
    ggml_set_output(lg);
    ggml_build_forward_expand(gb.gf, lg);
    alloc_graph(m.alloc_cp, gb.gf);

    std::vector<int32_t> p(n);
    for (int i = 0; i < n; i++) p[i] = cache.n_past + i;
    std::vector<float> mk;
    fill_causal_mask(mk, cache.n_past, n);
    ggml_backend_tensor_set(inp, rows, 0, ggml_nbytes(inp));
    ggml_backend_tensor_set(pos, p.data(), 0, ggml_nbytes(pos));
    ggml_backend_tensor_set(mask, mk.data(), 0, ggml_nbytes(mask));
    compute_graph(m, gb.gf);
    cache.n_past += n;
    ggml_backend_tensor_get(lg, logits, 0, ggml_nbytes(lg));
    if (proj_out) {
        proj_out->resize((size_t)n * hp.n_embd);
        ggml_backend_tensor_get(x, proj_out->data(), 0, proj_out->size() * sizeof(float));
    }
}

}  // namespace qt

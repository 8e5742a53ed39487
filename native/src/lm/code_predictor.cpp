// code_predictor.cpp: the graphs of the code-predictor steps.
#include "kernels/packed_matvec.h"
#include "lm/code_predictor.h"

namespace qt {

CodePredictor::CodePredictor(Model &m) : m_(m), steps_(m.hp.n_groups - 1) { cache_.reserve(m.hp.cp, m.hp.n_groups); }

void CodePredictor::build(int g) {
    const DecoderHParams &hp = m_.hp.cp;
    const CodePredictorTensors &c = m_.cp;
    Built &b = steps_[g];
    const int n = g == 0 ? 2 : 1, n_past = g == 0 ? 0 : g + 1, n_kv = n_past + n;
    Graph &gr = b.graph;
    gr.begin(2048);
    b.inp = gr.input(GGML_TYPE_F32, m_.hp.talker.n_embd, n);
    b.in.create(gr, n, n_kv, decoder_fusable(hp, c.layers));
    // small_to_mtp_projection applies to every input row, the talker hidden included (1.7B); identity for 0.6B.
    ggml_tensor *x = b.inp;
    if (c.input_proj_w) x = ggml_add(gr.ctx(), matmul(gr.ctx(), c.input_proj_w, b.inp), c.input_proj_b);
    b.proj = x;
    if (g == 0) gr.output(x);
    ggml_tensor *h = build_decoder(gr.ctx(), gr.gf, hp, c.layers, c.output_norm, x, b.in, cache_, n, n_kv);
    ggml_tensor *last =
        ggml_cont(gr.ctx(), ggml_view_2d(gr.ctx(), h, hp.n_embd, 1, h->nb[1], (size_t)(n - 1) * h->nb[1]));
    b.logits = matmul(gr.ctx(), c.heads[g], last);
    gr.output(b.logits);
    gr.allocate(m_.backend.get());
}

void CodePredictor::step(int g, const float *rows, float *logits, std::vector<float> *proj_out) {
    Built &b = steps_.at(g);
    if (!b.graph.built()) build(g);
    const int n = g == 0 ? 2 : 1, n_past = g == 0 ? 0 : g + 1;
    ggml_backend_tensor_set(b.inp, rows, 0, ggml_nbytes(b.inp));
    // Input memory may be reused by intermediate results during a compute, so inputs are set every time.
    b.in.fill(n_past, n, n_past + n);
    b.graph.compute(m_.backend.get());
    ggml_backend_tensor_get(b.logits, logits, 0, ggml_nbytes(b.logits));
    if (proj_out && g == 0) {
        proj_out->resize((size_t)2 * m_.hp.cp.n_embd);
        ggml_backend_tensor_get(b.proj, proj_out->data(), 0, proj_out->size() * sizeof(float));
    }
}

}  // namespace qt

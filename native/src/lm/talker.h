// talker.h: the text projection and the talker decoder (model.md 2).
#pragma once

#include <vector>

#include "lm/transformer.h"

namespace qt {

// T(ids) = fc2(SiLU(fc1(text_embedding[ids]))) for each id: out is [n, D] row-major.
void text_project(Model &m, const int32_t *ids, int n, std::vector<float> &out);

// The talker of one session: its KV cache and its decode-step graph, which is built once and recomputed for
// every frame (rebuilt only when the attended length outgrows it, every kStepBucket positions).
class Talker {
public:
    explicit Talker(Model &m) : m_(m) {}
    // n new input rows ([n, D] row-major) at the current position; writes the last row's post-norm hidden
    // state (D floats) and its code-0 logits (vocab floats).
    void prefill(const float *rows, int n, float *hidden_last, float *logits);
    void step(const float *row, float *hidden_last, float *logits);
    int n_past() const { return cache_.n_past; }

private:
    static constexpr int kStepBucket = 64;
    struct Built {
        Graph graph;
        DecoderInputs in;
        ggml_tensor *inp = nullptr, *hidden = nullptr, *logits = nullptr;
        int n_kv = 0;
        unsigned cache_generation = 0;
    };
    void build(Built &b, int n_tokens, int n_kv, ggml_gallocr_t shared);
    void run(Built &b, const float *rows, int n_tokens, float *hidden_last, float *logits);

    Model &m_;
    KvCache cache_;
    Built step_;
};

}  // namespace qt

// code_predictor.h: the 5-layer code predictor (MTP) that fills codebooks 1..15 of a frame (model.md 3).
#pragma once

#include <array>
#include <vector>

#include "lm/transformer.h"

namespace qt {

// Step g of every frame always has the same shape (g = 0: the 2-row prefill [h, C(c0)] at positions 0-1;
// g >= 1: one code embedding at position g + 1), so each step's graph is built once per session and
// recomputed for every frame; the KV cache is simply overwritten from position 0 each frame.
class CodePredictor {
public:
    explicit CodePredictor(Model &m);
    // rows: [n, D_talker] before the input projection (n = 2 for g = 0, else 1). Writes head g's logits for
    // the last row (2048 floats); proj_out (g = 0 only) receives the projected rows [n, D_cp].
    void step(int g, const float *rows, float *logits, std::vector<float> *proj_out);

private:
    struct Built {
        Graph graph;
        DecoderInputs in;
        ggml_tensor *inp = nullptr, *proj = nullptr, *logits = nullptr;
    };
    void build(int g);

    Model &m_;
    KvCache cache_;
    std::vector<Built> steps_;
};

}  // namespace qt

// talker.h: the text projection and the talker decoder (spec 2).
#pragma once

#include <vector>

#include "decoder.h"

namespace qt {

// T(ids) = fc2(SiLU(fc1(text_embedding[ids]))) for each id: out is [n, D] row-major.
void text_project(Model &m, const int32_t *ids, int n, std::vector<float> &out);

// Runs the talker over n new input rows ([n, D] row-major) at the cache's position. Writes the last row's
// post-norm hidden state (D floats) and its code-0 logits (vocab floats).
void talker_forward(Model &m, KvCache &cache, const float *rows, int n, float *hidden_last, float *logits);

}  // namespace qt

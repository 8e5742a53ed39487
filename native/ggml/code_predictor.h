// code_predictor.h: the 5-layer code predictor (MTP) that fills codebooks 1..15 of a frame (spec 3).
#pragma once

#include <vector>

#include "decoder.h"

namespace qt {

// Runs the code predictor over n new rows of talker width ([n, D_talker], before the input projection) and
// returns head `head`'s logits for the last row (2048 floats). If proj_out is not null it receives the
// projected rows ([n, D_cp]).
void cp_forward(Model &m, KvCache &cache, const float *rows, int n, int head, float *logits, std::vector<float> *proj_out);

}  // namespace qt

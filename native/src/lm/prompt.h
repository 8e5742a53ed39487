// prompt.h: lays out the talker prompt rows for every mode of model.md 4 (CustomVoice, VoiceDesign/instruct,
// x-vector clone, ICL clone; streaming and non-streaming text).
#pragma once

#include <vector>

#include "runtime/model.h"
#include "qwen3tts.h"

namespace qt {

struct PromptRows {
    int dim = 0;
    std::vector<float> rows;      // [L, D]  the prefill input
    std::vector<float> trailing;  // [T, D]  text rows added to the first T decode steps
    std::vector<float> tts_pad;   // [D]     added to every step after those
    int n_rows() const { return (int)(rows.size() / dim); }
    int n_trailing() const { return (int)(trailing.size() / dim); }
};

void validate_prompt(const Model &m, const qt_prompt &p);
PromptRows build_prompt(Model &m, const qt_prompt &p);

// S(k) = C(k[0]) + sum_{i=1..15} cp.codec_embedding[i-1](k[i]): the talker-width embedding of one frame.
void frame_embedding(const Model &m, const int32_t *codes, float *out);

}  // namespace qt

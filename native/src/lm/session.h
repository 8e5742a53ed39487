// session.h: one synthesis: prompt, talker KV cache, per-frame code prediction, sampling (model.md 4.6).
#pragma once

#include <array>
#include <vector>

#include "lm/code_predictor.h"
#include "qwen3tts_debug.h"
#include "lm/prompt.h"
#include "lm/sampler.h"
#include "lm/talker.h"

namespace qt {

struct Record {
    int cols = 0;
    std::vector<float> data;
    void add(const float *row, int n) {
        cols = n;
        data.insert(data.end(), row, row + n);
    }
};

class Session {
public:
    Session(Model &m, const qt_prompt &prompt, const qt_sampling &s);
    // Fills codes[16]; false when generation has finished (EOS or the frame cap).
    bool next_frame(int32_t *codes);
    int prompt_length() const { return prompt_len_; }
    const Record &record(int kind) const { return rec_.at(kind); }
    double ms[3] = {0, 0, 0};  // prefill, talker steps, code predictor

private:
    void prefill(const qt_prompt &prompt);
    void predict_codes(int32_t *codes);

    Model &m_;
    qt_sampling s_;
    SamplerParams talker_p_, sub_p_;
    Sampler sampler_;
    Talker talker_;
    CodePredictor cp_;
    PromptRows prompt_;
    int prompt_len_ = 0;
    std::vector<float> hidden_, logits_, pending_;
    bool have_pending_ = false, finished_ = false;
    std::vector<int> generated_;
    std::vector<int32_t> forced_;  // teacher-forced frames [n][16] (qt_sampling.forced_codes), copied
    int frames_ = 0;
    bool record_;
    std::array<Record, 6> rec_;
};

}  // namespace qt

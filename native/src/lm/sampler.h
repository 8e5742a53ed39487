// sampler.h: HF `generate` logit processing and sampling, made explicit (model.md 4.6).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace qt {

struct SamplerParams {
    bool do_sample = false;
    float temperature = 0.9f;
    int top_k = 50;
    float top_p = 1.0f;
};

class Sampler {
public:
    explicit Sampler(uint64_t seed) : rng_(seed) {}
    // Picks a token from logits (modified in place): greedy argmax, or temperature -> top-k -> top-p ->
    // multinomial, in transformers' warper order.
    int pick(std::vector<float> &logits, const SamplerParams &p);

private:
    std::mt19937_64 rng_;
};

// Talker processors in transformers' order: repetition penalty over the generated code-0s, min_new_tokens
// (EOS masked), suppression of the control range except EOS.
void process_talker_logits(std::vector<float> &logits, const std::vector<int> &generated, float repetition_penalty,
                           bool mask_eos, int eos_id, int suppress_begin);

}  // namespace qt

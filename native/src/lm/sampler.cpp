// sampler.cpp: see sampler.h.
#include "lm/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>

namespace qt {

static const float NEG_INF = -std::numeric_limits<float>::infinity();

void process_talker_logits(std::vector<float> &l, const std::vector<int> &generated, float penalty, bool mask_eos,
                           int eos_id, int suppress_begin) {
    // RepetitionPenaltyLogitsProcessor: the history is the generated code-0s only (the prompt enters as
    // embeddings); applies in greedy mode too.
    if (penalty != 1.0f) {
        for (int u : std::set<int>(generated.begin(), generated.end())) {
            if (u < 0 || u >= (int)l.size()) continue;
            l[u] = l[u] < 0 ? l[u] * penalty : l[u] / penalty;
        }
    }
    if (mask_eos) l[eos_id] = NEG_INF;
    for (int i = suppress_begin; i < (int)l.size(); i++)
        if (i != eos_id) l[i] = NEG_INF;
}

namespace {

// TopKLogitsWarper: keep every value >= the k-th largest (ties kept).
void keep_top_k(std::vector<float> &l, int k) {
    std::vector<float> tmp(l);
    std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end(), std::greater<float>());
    const float kth = tmp[k - 1];
    for (float &x : l)
        if (x < kth) x = NEG_INF;
}

// softmax(l) in double (masked logits give 0).
std::vector<double> probabilities(const std::vector<float> &l) {
    const float mx = *std::max_element(l.begin(), l.end());
    std::vector<double> prob(l.size());
    double sum = 0;
    for (size_t i = 0; i < l.size(); i++) sum += prob[i] = l[i] == NEG_INF ? 0.0 : std::exp((double)l[i] - mx);
    for (double &x : prob) x /= sum;
    return prob;
}

// TopPLogitsWarper: drop the smallest tokens whose cumulative probability stays <= 1 - top_p; keep >= 1.
void keep_top_p(std::vector<double> &prob, float top_p) {
    const int n = (int)prob.size();
    std::vector<int> idx(n);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return prob[a] < prob[b]; });
    double cum = 0;
    for (int r = 0; r < n - 1; r++) {
        cum += prob[idx[r]];
        if (cum <= 1.0 - top_p)
            prob[idx[r]] = 0;
        else
            break;
    }
    const double sum = std::accumulate(prob.begin(), prob.end(), 0.0);
    for (double &x : prob) x /= sum;
}

// Multinomial draw with r uniform in [0, 1): the first token whose cumulative probability exceeds r (rounding
// leftovers go to the last token that has any).
int draw(const std::vector<double> &prob, double r) {
    double acc = 0;
    int last_nonzero = 0;
    for (int i = 0; i < (int)prob.size(); i++) {
        if (prob[i] <= 0) continue;
        last_nonzero = i;
        acc += prob[i];
        if (r < acc) return i;
    }
    return last_nonzero;
}

}  // namespace

int Sampler::pick(std::vector<float> &l, const SamplerParams &p) {
    const int n = (int)l.size();
    if (!p.do_sample) return (int)(std::max_element(l.begin(), l.end()) - l.begin());

    if (p.temperature > 0 && p.temperature != 1.0f)
        for (float &x : l) x /= p.temperature;
    if (p.top_k > 0 && p.top_k < n) keep_top_k(l, p.top_k);
    std::vector<double> prob = probabilities(l);
    if (p.top_p < 1.0f) keep_top_p(prob, p.top_p);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    return draw(prob, u(rng_));
}

}  // namespace qt

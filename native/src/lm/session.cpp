// session.cpp: the generation loop of model.md 4.6. A frame is produced lazily: the talker step that consumes
// the previous frame runs at the start of the next call, so a caller that stops asking never pays for it.
#include "lm/session.h"

#include <algorithm>
#include <chrono>
#include <string>

namespace qt {

namespace {
double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The teacher-forced frames, copied (the caller's buffer may go away) and checked: each code is a row of the
// embedding tables the frame is fed back through.
std::vector<int32_t> copy_forced_codes(const Model &m, const qt_sampling &s) {
    if (s.n_forced < 0 || (s.n_forced > 0 && !s.forced_codes)) throw Error("forced_codes: bad frame count or NULL");
    std::vector<int32_t> forced(s.forced_codes, s.forced_codes + (size_t)s.n_forced * QT_NUM_CODE_GROUPS);
    for (int32_t c : forced)
        if (c < 0 || c >= m.hp.cp.vocab)
            throw Error("forced_codes must lie in 0.." + std::to_string(m.hp.cp.vocab - 1));
    return forced;
}

}  // namespace

Session::Session(Model &m, const qt_prompt &prompt, const qt_sampling &s)
    : m_(m),
      s_(s),
      talker_p_{s.do_sample != 0, s.temperature, s.top_k, s.top_p},
      sub_p_{s.sub_do_sample != 0, s.sub_temperature, s.sub_top_k, s.sub_top_p},
      sampler_(s.seed),
      talker_(m),
      cp_(m),
      forced_(copy_forced_codes(m, s)),
      record_(s.record != 0) {
    s_.forced_codes = nullptr;  // forced_ holds the copy
    prefill(prompt);
}

void Session::prefill(const qt_prompt &prompt) {
    const double t0 = now_ms();
    prompt_ = build_prompt(m_, prompt);
    prompt_len_ = prompt_.n_rows();
    const int D = m_.hp.talker.n_embd;
    hidden_.resize(D);
    logits_.resize(m_.hp.talker.vocab);
    pending_.resize(D);
    if (record_) {
        for (int i = 0; i < prompt_len_; i++) rec_[QT_REC_PROMPT_EMBEDS].add(&prompt_.rows[(size_t)i * D], D);
    }
    talker_.prefill(prompt_.rows.data(), prompt_len_, hidden_.data(), logits_.data());
    if (record_) rec_[QT_REC_TALKER_LOGITS].add(logits_.data(), (int)logits_.size());
    ms[0] = now_ms() - t0;
}

void Session::predict_codes(int32_t *codes) {
    const int D = m_.hp.talker.n_embd, V = m_.hp.cp.vocab, G = m_.hp.n_groups;
    std::vector<float> rows(2 * (size_t)D), lg(V);
    std::vector<float> proj;
    // Fresh cache per frame, positions restart at 0 (model.md 3): step g always writes position g (+1).
    std::copy(hidden_.begin(), hidden_.end(), rows.begin());
    read_row(m_.talker.codec_embd, codes[0], rows.data() + D);
    for (int g = 0; g < G - 1; g++) {
        if (g > 0) read_row(m_.cp.codec_embd[g - 1], codes[g], rows.data());
        cp_.step(g, rows.data(), lg.data(), (record_ && g == 0) ? &proj : nullptr);
        if (record_) {
            if (g == 0)
                for (int r = 0; r < 2; r++)
                    rec_[QT_REC_CP_PREFILL_IN].add(&proj[(size_t)r * m_.hp.cp.n_embd], m_.hp.cp.n_embd);
            rec_[QT_REC_CP_LOGITS].add(lg.data(), V);
        }
        codes[g + 1] = sampler_.pick(lg, sub_p_);
    }
}

bool Session::next_frame(int32_t *codes) {
    if (finished_) return false;
    if (frames_ >= s_.max_frames) {
        finished_ = true;
        return false;
    }
    const int D = m_.hp.talker.n_embd;
    if (have_pending_) {
        double t0 = now_ms();
        talker_.step(pending_.data(), hidden_.data(), logits_.data());
        ms[1] += now_ms() - t0;
        if (record_) {
            rec_[QT_REC_STEP_INPUTS].add(pending_.data(), D);
            rec_[QT_REC_TALKER_LOGITS].add(logits_.data(), (int)logits_.size());
        }
        have_pending_ = false;
    }

    if (frames_ < (int)(forced_.size() / QT_NUM_CODE_GROUPS)) {
        // Teacher forcing: take the whole frame (code 0 and codes 1..15) from forced_ instead of sampling. The
        // code predictor is skipped entirely (no cp records, no code-predictor time, the sampler's RNG does not
        // advance); the talker logits of this step were computed and recorded above all the same.
        std::copy_n(&forced_[(size_t)frames_ * QT_NUM_CODE_GROUPS], QT_NUM_CODE_GROUPS, codes);
        generated_.push_back(codes[0]);  // the repetition penalty sees it as if sampled
    } else {
        std::vector<float> l(logits_);
        const bool mask_eos = (int)generated_.size() < std::max(2, s_.min_frames);
        process_talker_logits(l, generated_, s_.repetition_penalty, mask_eos, m_.hp.codec_eos,
                              m_.hp.talker.vocab - 1024);
        const int c0 = sampler_.pick(l, talker_p_);
        generated_.push_back(c0);
        if (c0 == m_.hp.codec_eos) {
            finished_ = true;
            return false;
        }
        if (c0 >= m_.hp.cp.vocab) throw Error("the talker produced a non-audio code");

        double t0 = now_ms();
        codes[0] = c0;
        predict_codes(codes);
        ms[2] += now_ms() - t0;
    }
    if (record_) rec_[QT_REC_TALKER_HIDDEN].add(hidden_.data(), D);

    // Next talker input: the sum of all 16 code embeddings plus this step's text row (or tts_pad).
    frame_embedding(m_, codes, pending_.data());
    const float *text =
        frames_ < prompt_.n_trailing() ? &prompt_.trailing[(size_t)frames_ * D] : prompt_.tts_pad.data();
    for (int d = 0; d < D; d++) pending_[d] += text[d];
    have_pending_ = true;
    frames_++;
    return true;
}

}  // namespace qt

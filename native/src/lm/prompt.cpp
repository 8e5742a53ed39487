// prompt.cpp: the row layout of Qwen3TTSForConditionalGeneration.generate (modeling_qwen3_tts.py
// L2022-2299) and generate_icl_prompt (L1968), reproduced row for row. Each row is the sum of a text-track
// part and a codec-track part (model.md 2.1).
#include "lm/prompt.h"

#include "lm/talker.h"

namespace qt {

namespace {

// A C array of the prompt: n >= 0 values at p, which may be NULL only when n == 0.
void check_array(const void *p, int n, const char *what) {
    if (n < 0 || (n > 0 && !p)) throw Error(std::string(what) + ": negative length, or NULL with values");
}

// Each of ids[0..n) is a row of a table of `rows` rows.
void check_rows(const int32_t *ids, int64_t n, int rows, const char *what) {
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= rows)
            throw Error(std::string(what) + " " + std::to_string(ids[i]) + " is out of range 0.." +
                        std::to_string(rows - 1));
}

int n_instruct(const qt_prompt &p) { return p.instruct_ids ? p.n_instruct : 0; }  // NULL: no instruction

}  // namespace

void validate_prompt(const Model &m, const qt_prompt &p) {
    const HParams &hp = m.hp;
    check_array(p.role_ids, p.n_role, "role_ids");
    check_array(p.instruct_ids, n_instruct(p), "instruct_ids");
    check_array(p.codec_prefix, p.n_codec_prefix, "codec_prefix");
    check_array(p.ref_text_ids, p.n_ref_text, "ref_text_ids");
    check_array(p.ref_codes, p.n_ref_frames, "ref_codes");
    // The layout's first text row is the first text token's.
    if (p.n_text < 1 || !p.text_ids) throw Error("the text is empty: nothing to synthesize");
    check_rows(p.codec_prefix, p.n_codec_prefix, hp.talker.vocab, "codec prefix id");
    if (p.speaker_codec_id >= hp.talker.vocab) throw Error("speaker codec id out of range");
    check_rows(p.ref_codes, (int64_t)p.n_ref_frames * hp.n_groups, hp.cp.vocab, "reference code");
}

void frame_embedding(const Model &m, const int32_t *codes, float *out) {
    const int D = m.hp.talker.n_embd;
    std::vector<float> tmp(D);
    read_row(m.talker.codec_embd, codes[0], out);
    for (int i = 1; i < m.hp.n_groups; i++) {
        read_row(m.cp.codec_embd[i - 1], codes[i], tmp.data());
        for (int d = 0; d < D; d++) out[d] += tmp[d];
    }
}

namespace {

struct RowWriter {
    int D;
    std::vector<float> &dst;
    // Appends text + codec (either may be null = zero).
    void add(const float *text, const float *codec) {
        size_t o = dst.size();
        dst.resize(o + D, 0.0f);
        for (int d = 0; d < D; d++) dst[o + d] = (text ? text[d] : 0.0f) + (codec ? codec[d] : 0.0f);
    }
};

// All text-track rows of a prompt, from one text-projection pass over [instruct | role | bos eos pad | text | ref].
class TextRows {
public:
    TextRows(Model &m, const qt_prompt &p) : D_(m.hp.talker.n_embd) {
        std::vector<int32_t> ids;
        ids.insert(ids.end(), p.instruct_ids, p.instruct_ids + n_instruct(p));
        o_role_ = (int)ids.size();
        ids.insert(ids.end(), p.role_ids, p.role_ids + p.n_role);
        o_special_ = (int)ids.size();
        ids.insert(ids.end(), {m.hp.tts_bos, m.hp.tts_eos, m.hp.tts_pad});
        o_text_ = (int)ids.size();
        ids.insert(ids.end(), p.text_ids, p.text_ids + p.n_text);
        o_ref_ = (int)ids.size();
        if (p.n_ref_frames > 0) ids.insert(ids.end(), p.ref_text_ids, p.ref_text_ids + p.n_ref_text);
        text_project(m, ids.data(), (int)ids.size(), rows_);
    }
    const float *instruct(int i) const { return row(i); }
    const float *role(int i) const { return row(o_role_ + i); }
    const float *tts_bos() const { return row(o_special_); }
    const float *tts_eos() const { return row(o_special_ + 1); }
    const float *tts_pad() const { return row(o_special_ + 2); }
    const float *text(int i) const { return row(o_text_ + i); }
    const float *ref(int i) const { return row(o_ref_ + i); }

private:
    const float *row(int i) const { return &rows_[(size_t)i * D_]; }
    int D_, o_role_ = 0, o_special_ = 0, o_text_ = 0, o_ref_ = 0;
    std::vector<float> rows_;
};

// The codec track of the head: prefix ids, the speaker row, codec_pad, codec_bos.
std::vector<std::vector<float>> head_codec_rows(const Model &m, const qt_prompt &p) {
    const int D = m.hp.talker.n_embd;
    std::vector<std::vector<float>> codec;
    auto codec_id = [&](int id) {
        std::vector<float> r(D);
        read_row(m.talker.codec_embd, id, r.data());
        return r;
    };
    for (int i = 0; i < p.n_codec_prefix; i++) codec.push_back(codec_id(p.codec_prefix[i]));
    if (p.speaker_codec_id >= 0) codec.push_back(codec_id(p.speaker_codec_id));
    if (p.speaker_embedding)
        codec.emplace_back(p.speaker_embedding, p.speaker_embedding + D);  // x-vector, no projection
    codec.push_back(codec_id(m.hp.codec_pad));
    codec.push_back(codec_id(m.hp.codec_bos));
    return codec;
}

// The ICL clone's rows after the head: text_seq = [ref tokens, text tokens, tts_eos] beside codec_seq =
// [codec_bos, S(ref_code[k])...] (generate_icl_prompt).
void add_icl_rows(const Model &m, const qt_prompt &p, const TextRows &text, const float *c_pad, const float *c_bos,
                  RowWriter &rows, RowWriter &trailing) {
    const int D = m.hp.talker.n_embd;
    std::vector<const float *> text_seq;
    for (int i = 0; i < p.n_ref_text; i++) text_seq.push_back(text.ref(i));
    for (int i = 0; i < p.n_text; i++) text_seq.push_back(text.text(i));
    text_seq.push_back(text.tts_eos());
    std::vector<std::vector<float>> codec_seq{std::vector<float>(c_bos, c_bos + D)};
    for (int k = 0; k < p.n_ref_frames; k++) {
        std::vector<float> s(D);
        frame_embedding(m, p.ref_codes + (size_t)k * m.hp.n_groups, s.data());
        codec_seq.push_back(std::move(s));
    }
    const int Lt = (int)text_seq.size(), Lcod = (int)codec_seq.size();
    if (p.non_streaming_text) {
        for (int j = 0; j < Lt; j++) rows.add(text_seq[j], c_pad);
        for (int j = 0; j < Lcod; j++) rows.add(text.tts_pad(), codec_seq[j].data());
    } else if (Lt > Lcod) {
        for (int j = 0; j < Lcod; j++) rows.add(text_seq[j], codec_seq[j].data());
        for (int j = Lcod; j < Lt; j++) trailing.add(text_seq[j], nullptr);
    } else {
        for (int j = 0; j < Lcod; j++) rows.add(j < Lt ? text_seq[j] : text.tts_pad(), codec_seq[j].data());
    }
}

}  // namespace

PromptRows build_prompt(Model &m, const qt_prompt &p) {
    validate_prompt(m, p);
    const int D = m.hp.talker.n_embd;
    const TextRows text(m, p);
    const std::vector<std::vector<float>> codec = head_codec_rows(m, p);
    const int Lc = (int)codec.size();
    const float *c_pad = codec[Lc - 2].data(), *c_bos = codec[Lc - 1].data();

    PromptRows out;
    out.dim = D;
    out.tts_pad.assign(text.tts_pad(), text.tts_pad() + D);
    RowWriter rows{D, out.rows}, trailing{D, out.trailing};
    for (int i = 0; i < n_instruct(p); i++) rows.add(text.instruct(i), nullptr);
    for (int i = 0; i < p.n_role; i++) rows.add(text.role(i), nullptr);
    for (int j = 0; j < Lc - 2; j++) rows.add(text.tts_pad(), codec[j].data());
    rows.add(text.tts_bos(), c_pad);  // text BOS aligned with codec_pad

    if (p.n_ref_frames > 0) {
        add_icl_rows(m, p, text, c_pad, c_bos, rows, trailing);
    } else if (p.non_streaming_text) {
        for (int i = 0; i < p.n_text; i++) rows.add(text.text(i), c_pad);
        rows.add(text.tts_eos(), c_pad);
        rows.add(text.tts_pad(), c_bos);
    } else {
        rows.add(text.text(0), c_bos);  // first text token aligned with codec_bos
        for (int i = 1; i < p.n_text; i++) trailing.add(text.text(i), nullptr);
        trailing.add(text.tts_eos(), nullptr);
    }
    return out;
}

}  // namespace qt

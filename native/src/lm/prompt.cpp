// prompt.cpp: the row layout of Qwen3TTSForConditionalGeneration.generate (modeling_qwen3_tts.py
// L2022-2299) and generate_icl_prompt (L1968), reproduced row for row. Each row is the sum of a text-track
// part and a codec-track part (model.md 2.1).
#include "lm/prompt.h"

#include "lm/talker.h"

namespace qt {

void validate_prompt(const Model &m, const qt_prompt &p) {
    const HParams &hp = m.hp;
    if (p.n_role < 1 || !p.role_ids) throw Error("the prompt needs the role prefix ids");
    if (p.n_text < 1 || !p.text_ids) throw Error("the text is empty: nothing to synthesize");
    if (p.n_codec_prefix < 1 || !p.codec_prefix) throw Error("the prompt needs the codec think/language prefix");
    for (int i = 0; i < p.n_codec_prefix; i++)
        if (p.codec_prefix[i] < 0 || p.codec_prefix[i] >= hp.talker.vocab) throw Error("codec prefix id out of range");
    if (p.speaker_codec_id >= hp.talker.vocab) throw Error("speaker codec id out of range");
    if (p.speaker_codec_id >= 0 && p.speaker_embedding) throw Error("give either a speaker id or a speaker embedding, not both");
    if (p.n_ref_frames > 0) {
        if (!p.ref_codes) throw Error("reference codes are missing");
        if (p.n_ref_text < 1 || !p.ref_text_ids) throw Error("ICL cloning needs the reference transcript");
        for (int i = 0; i < p.n_ref_frames * hp.n_groups; i++)
            if (p.ref_codes[i] < 0 || p.ref_codes[i] >= hp.cp.vocab)
                throw Error("reference code " + std::to_string(p.ref_codes[i]) + " is out of range 0.." + std::to_string(hp.cp.vocab - 1));
    } else if (p.n_ref_text > 0) {
        throw Error("a reference transcript needs reference codes");
    }
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

}  // namespace

PromptRows build_prompt(Model &m, const qt_prompt &p) {
    validate_prompt(m, p);
    const HParams &hp = m.hp;
    const int D = hp.talker.n_embd;
    const bool icl = p.n_ref_frames > 0;

    // All text-track rows come from one text-projection pass: [instruct | role | bos eos pad | text | ref].
    std::vector<int32_t> ids;
    const int o_inst = 0;
    ids.insert(ids.end(), p.instruct_ids, p.instruct_ids + (p.instruct_ids ? p.n_instruct : 0));
    const int o_role = (int)ids.size();
    ids.insert(ids.end(), p.role_ids, p.role_ids + p.n_role);
    const int o_special = (int)ids.size();
    ids.insert(ids.end(), {hp.tts_bos, hp.tts_eos, hp.tts_pad});
    const int o_text = (int)ids.size();
    ids.insert(ids.end(), p.text_ids, p.text_ids + p.n_text);
    const int o_ref = (int)ids.size();
    if (icl) ids.insert(ids.end(), p.ref_text_ids, p.ref_text_ids + p.n_ref_text);
    std::vector<float> T;
    text_project(m, ids.data(), (int)ids.size(), T);
    auto trow = [&](int i) { return &T[(size_t)i * D]; };
    const float *tts_bos = trow(o_special), *tts_eos = trow(o_special + 1), *tts_pad = trow(o_special + 2);

    // Codec track of the head: prefix ids, the speaker row, codec_pad, codec_bos.
    std::vector<std::vector<float>> codec;
    auto codec_id = [&](int id) {
        std::vector<float> r(D);
        read_row(m.talker.codec_embd, id, r.data());
        return r;
    };
    for (int i = 0; i < p.n_codec_prefix; i++) codec.push_back(codec_id(p.codec_prefix[i]));
    if (p.speaker_codec_id >= 0) codec.push_back(codec_id(p.speaker_codec_id));
    if (p.speaker_embedding) codec.emplace_back(p.speaker_embedding, p.speaker_embedding + D);  // x-vector, no projection
    codec.push_back(codec_id(hp.codec_pad));
    codec.push_back(codec_id(hp.codec_bos));
    const int Lc = (int)codec.size();

    PromptRows out;
    out.dim = D;
    out.tts_pad.assign(tts_pad, tts_pad + D);
    RowWriter rows{D, out.rows}, trailing{D, out.trailing};
    for (int i = 0; i < (p.instruct_ids ? p.n_instruct : 0); i++) rows.add(trow(o_inst + i), nullptr);
    for (int i = 0; i < p.n_role; i++) rows.add(trow(o_role + i), nullptr);
    for (int j = 0; j < Lc - 2; j++) rows.add(tts_pad, codec[j].data());
    rows.add(tts_bos, codec[Lc - 2].data());  // text BOS aligned with codec_pad

    const std::vector<float> &c_pad = codec[Lc - 2], &c_bos = codec[Lc - 1];
    if (icl) {
        // text_seq = [ref tokens, text tokens, tts_eos]; codec_seq = [codec_bos, S(ref_code[k])...]
        std::vector<const float *> text_seq;
        for (int i = 0; i < p.n_ref_text; i++) text_seq.push_back(trow(o_ref + i));
        for (int i = 0; i < p.n_text; i++) text_seq.push_back(trow(o_text + i));
        text_seq.push_back(tts_eos);
        std::vector<std::vector<float>> codec_seq{c_bos};
        for (int k = 0; k < p.n_ref_frames; k++) {
            std::vector<float> s(D);
            frame_embedding(m, p.ref_codes + (size_t)k * hp.n_groups, s.data());
            codec_seq.push_back(std::move(s));
        }
        const int Lt = (int)text_seq.size(), Lcod = (int)codec_seq.size();
        if (p.non_streaming_text) {
            for (int j = 0; j < Lt; j++) rows.add(text_seq[j], c_pad.data());
            for (int j = 0; j < Lcod; j++) rows.add(tts_pad, codec_seq[j].data());
        } else if (Lt > Lcod) {
            for (int j = 0; j < Lcod; j++) rows.add(text_seq[j], codec_seq[j].data());
            for (int j = Lcod; j < Lt; j++) trailing.add(text_seq[j], nullptr);
        } else {
            for (int j = 0; j < Lcod; j++) rows.add(j < Lt ? text_seq[j] : tts_pad, codec_seq[j].data());
        }
    } else if (p.non_streaming_text) {
        for (int i = 0; i < p.n_text; i++) rows.add(trow(o_text + i), c_pad.data());
        rows.add(tts_eos, c_pad.data());
        rows.add(tts_pad, c_bos.data());
    } else {
        rows.add(trow(o_text), c_bos.data());  // first text token aligned with codec_bos
        for (int i = 1; i < p.n_text; i++) trailing.add(trow(o_text + i), nullptr);
        trailing.add(tts_eos, nullptr);
    }
    return out;
}

}  // namespace qt

// encoder_api.cpp: the C API of the cloning encoders (qwen3tts.h: qt_speaker_embedding, qt_codec_encode; their
// parity hooks in qwen3tts_debug.h).
#include <cstring>
#include <string>
#include <vector>

#include "api/api_internal.h"
#include "codec/codec_encoder.h"
#include "codec/speaker_encoder.h"
#include "qwen3tts.h"
#include "qwen3tts_debug.h"

namespace {

void check_input(qt_model *model, const float *wav, size_t n_samples) {
    if (!model) throw qt::Error("model is NULL");
    if (n_samples == 0) throw qt::Error("the audio to encode is empty");
    if (!wav) throw qt::Error("wav is NULL");
}

}  // namespace

extern "C" {

long qt_codec_encode(qt_model *model, const float *wav, size_t n_samples, int32_t *codes_out, size_t cap, char *err,
                     size_t err_len) {
    return qt::guarded(err, err_len, -1L, [&]() -> long {
        check_input(model, wav, n_samples);
        qt::CodecEncoder enc(*model->m);
        const int64_t frames = enc.frames_for((int64_t)n_samples);
        const int nq = enc.hparams().n_sem + enc.hparams().n_ac;
        if (nq != QT_NUM_CODE_GROUPS)
            throw qt::Error("the codec encoder gives " + std::to_string(nq) + " codes per frame, expected " +
                            std::to_string(QT_NUM_CODE_GROUPS));
        if (!codes_out) return (long)frames;  // size query
        const size_t needed = (size_t)frames * nq;
        if (cap < needed)
            throw qt::Error("output buffer too small: " + std::to_string(needed) + " codes needed, capacity " +
                            std::to_string(cap));
        std::vector<int32_t> codes = enc.encode(wav, (int64_t)n_samples);
        memcpy(codes_out, codes.data(), codes.size() * sizeof(int32_t));
        return (long)frames;
    });
}

int qt_codec_has_encoder(const qt_model *model) { return model && qt::has_codec_encoder(*model->m) ? 1 : 0; }

long qt_codec_encode_debug(qt_model *model, const float *wav, size_t n_samples, int stage, long chunk_samples,
                           float *out, size_t cap, int *n_cols, size_t *peak_bytes, char *err, size_t err_len) {
    return qt::guarded(err, err_len, -1L, [&]() -> long {
        check_input(model, wav, n_samples);
        if (stage < 0 || stage > 3) throw qt::Error("unknown codec encoder stage");
        qt::CodecEncoder enc(*model->m);
        const qt::CodecEncHParams &h = enc.hparams();
        const int64_t n = (int64_t)n_samples;
        const int64_t t25 = (n + h.hop - 1) / h.hop, t12 = (t25 + h.ds_stride - 1) / h.ds_stride;
        const int cols = stage == 0 ? h.n_sem + h.n_ac : h.hidden;
        const int64_t rows = stage == 0 ? enc.frames_for(n) : stage == 3 ? t12 : t25;
        if (n_cols) *n_cols = cols;
        const size_t total = (size_t)rows * cols;
        if (!out || cap < total) return (long)total;
        if (chunk_samples > 0) enc.chunk_samples = chunk_samples;
        qt::CodecEncStages st;
        std::vector<int32_t> codes = enc.encode(wav, n, stage == 0 ? nullptr : &st);
        if (peak_bytes) {
            peak_bytes[0] = enc.peak_seanet_bytes;
            peak_bytes[1] = enc.peak_rest_bytes;
        }
        if (stage == 0) {
            for (size_t i = 0; i < codes.size(); i++) out[i] = (float)codes[i];
            return (long)codes.size();
        }
        const std::vector<float> &v = stage == 1 ? st.seanet : stage == 2 ? st.transformer : st.downsampled;
        if (v.size() != total) throw qt::Error("internal error: codec encoder stage has an unexpected size");
        memcpy(out, v.data(), total * sizeof(float));
        return (long)total;
    });
}

long qt_speaker_embedding(qt_model *model, const float *mel, int n_frames, int mel_dim, float *out, size_t cap,
                          char *err, size_t err_len) {
    return qt::guarded(err, err_len, -1L, [&]() -> long {
        if (!model) throw qt::Error("model is NULL");
        const qt::Model &m = *model->m;
        const int width = qt::speaker_embedding_size(m);
        if (!out || cap < (size_t)width)
            throw qt::Error("output buffer too small: " + std::to_string(width) + " floats needed, capacity " +
                            std::to_string(cap));
        qt::speaker_embedding(m, mel, n_frames, mel_dim, out);
        return (long)width;
    });
}

}  // extern "C"

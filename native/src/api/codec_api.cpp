// codec_api.cpp: the codec part of the C API (qwen3tts.h). Every exception stops here and becomes an error
// code + message, as in api.cpp.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "codec/codec_decoder.h"
#include "api/api_internal.h"
#include "qwen3tts.h"
#include "qwen3tts_debug.h"

struct qt_codec_stream {
    qt::CodecStream *s;
};

namespace {

void check_frames(const int32_t *codes, int n_frames) {
    if (n_frames < 0) throw qt::Error("n_frames must be >= 0");
    if (n_frames > 0 && !codes) throw qt::Error("codes is NULL");
}

void check_cap(size_t needed, const float *out, size_t cap) {
    if (needed > 0 && (!out || cap < needed))
        throw qt::Error("output buffer too small: " + std::to_string(needed) + " samples needed, capacity " +
                        std::to_string(cap));
}

}  // namespace

extern "C" {

int qt_codec_info(qt_model *model, int *samples_per_frame, int *sample_rate, int *num_quantizers, char *err,
                  size_t err_len) {
    return qt::guarded(err, err_len, -1, [&]() -> int {
        qt::CodecHParams h = qt::read_codec_hparams(*model->m);
        if (samples_per_frame) *samples_per_frame = h.samples_per_frame;
        if (sample_rate) *sample_rate = h.sample_rate;
        if (num_quantizers) *num_quantizers = h.n_q;
        return 0;
    });
}

qt_codec_stream *qt_codec_stream_new(qt_model *model, char *err, size_t err_len) {
    return qt::guarded(err, err_len, nullptr, [&]() -> qt_codec_stream * {
        if (!model) throw qt::Error("model is NULL");
        return new qt_codec_stream{new qt::CodecStream(*model->m)};
    });
}

void qt_codec_stream_free(qt_codec_stream *stream) {
    if (!stream) return;
    delete stream->s;
    delete stream;
}

void qt_codec_stream_reset(qt_codec_stream *stream) { stream->s->reset(); }

long qt_codec_stream_position(const qt_codec_stream *stream) { return (long)stream->s->frames_decoded(); }

int qt_codec_stream_set_max_batch(qt_codec_stream *stream, int max_frames) {
    if (max_frames <= 0) return -1;
    stream->s->max_frames_per_graph = max_frames;
    return 0;
}

void qt_codec_stream_set_threads(qt_codec_stream *stream, int n_threads) { stream->s->n_threads = n_threads; }

long qt_codec_stream_decode(qt_codec_stream *stream, const int32_t *codes, int n_frames, float *pcm_out, size_t cap,
                            char *err, size_t err_len) {
    return qt::guarded(err, err_len, -1L, [&]() -> long {
        check_frames(codes, n_frames);
        const size_t n = (size_t)n_frames * stream->s->hparams().samples_per_frame;
        check_cap(n, pcm_out, cap);
        stream->s->decode(codes, n_frames, pcm_out);
        return (long)n;
    });
}

long qt_codec_decode_chunked(qt_model *model, const int32_t *codes, int n_frames, int chunk, int left_context,
                             float *pcm_out, size_t cap, char *err, size_t err_len) {
    return qt::guarded(err, err_len, -1L, [&]() -> long {
        check_frames(codes, n_frames);
        qt::CodecHParams h = qt::read_codec_hparams(*model->m);
        const size_t n = (size_t)n_frames * h.samples_per_frame;
        check_cap(n, pcm_out, cap);
        qt::codec_decode_chunked(*model->m, codes, n_frames, chunk, left_context, pcm_out);
        return (long)n;
    });
}

long qt_codec_debug_stage(qt_model *model, const int32_t *codes, int n_frames, int stage, float *out, size_t cap,
                          int *n_cols, char *err, size_t err_len) {
    return qt::guarded(err, err_len, -1L, [&]() -> long {
        check_frames(codes, n_frames);
        if (stage < QT_CODEC_STAGE_QUANTIZED || stage > QT_CODEC_STAGE_WAVEFORM) throw qt::Error("unknown codec stage");
        const qt::CodecHParams h = qt::read_codec_hparams(*model->m);
        const int cols = stage == QT_CODEC_STAGE_QUANTIZED  ? h.codebook_dim
                         : stage == QT_CODEC_STAGE_WAVEFORM ? h.samples_per_frame
                                                            : h.latent;
        if (n_cols) *n_cols = cols;
        const size_t total = (size_t)n_frames * cols;
        if (!out || cap < total) return (long)total;  // size query: nothing decoded
        qt::CodecStream s(*model->m);
        std::vector<float> wav((size_t)n_frames * h.samples_per_frame);
        qt::CodecStages st;
        s.decode(codes, n_frames, wav.data(), &st);
        const std::vector<float> *v = stage == QT_CODEC_STAGE_QUANTIZED         ? &st.quantized
                                      : stage == QT_CODEC_STAGE_PRE_CONV        ? &st.pre_conv
                                      : stage == QT_CODEC_STAGE_PRE_TRANSFORMER ? &st.pre_transformer
                                                                                : &wav;
        if (v->size() != total) throw qt::Error("internal error: codec stage has an unexpected size");
        memcpy(out, v->data(), total * sizeof(float));
        return (long)total;
    });
}

}  // extern "C"

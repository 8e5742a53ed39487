/* qwen3tts.h: the C API of the Qwen3-TTS ggml engine.
 *
 * Opaque handles and plain C types only. Errors come back as return codes plus a message written into a
 * caller-provided buffer; the engine never aborts the process on bad input (shapes are validated at load).
 *
 * A qt_model is the mmapped GGUF (weights, hyper-parameters) plus the compute backend; share one per
 * process. A qt_session is one synthesis: the prompt, the talker KV cache, the sampler state. Sessions of one
 * model must not run concurrently (they share the backend's compute buffers).
 */
#ifndef QWEN3TTS_H
#define QWEN3TTS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qt_model qt_model;
typedef struct qt_session qt_session;

#define QT_NUM_CODE_GROUPS 16

typedef struct {
    int n_threads;     /* compute threads; <= 0: all cores */
    int plain_kernels; /* 1: ggml's mul_mat for every matrix, no packed copies or fused layers (to compare) */
} qt_load_params;

/* A fully resolved prompt (model.md section 4). The Python side turns names into ids (speaker, language, dialect
 * override, dropped instructions); the engine only lays the rows out. */
typedef struct {
    const int32_t *role_ids; /* "<|im_start|>assistant\n" ids (3) */
    int n_role;
    const int32_t *text_ids; /* bare text tokens t_1..t_N (N >= 1) */
    int n_text;
    const int32_t *instruct_ids; /* whole "<|im_start|>user\n...<|im_end|>\n" ids, or NULL */
    int n_instruct;
    const int32_t *codec_prefix; /* [think, think_bos, lang, think_eos] or [nothink, think_bos, think_eos] */
    int n_codec_prefix;
    int32_t speaker_codec_id;       /* CustomVoice speaker row, or -1 */
    const float *speaker_embedding; /* x-vector [talker hidden] (clone modes), or NULL */
    const int32_t *ref_text_ids;    /* ICL: bare reference-transcript tokens r_1..r_M, or NULL */
    int n_ref_text;
    const int32_t *ref_codes; /* ICL: reference codes [K][16], or NULL */
    int n_ref_frames;
    int non_streaming_text; /* 1: whole text in the prompt (4.3); 0: one text token per frame (4.4) */
} qt_prompt;

typedef struct {
    int do_sample;
    float temperature;
    int top_k;
    float top_p;
    float repetition_penalty;
    int sub_do_sample;
    float sub_temperature;
    int sub_top_k;
    float sub_top_p;
    int min_frames; /* EOS stays masked until this many frames exist (the reference: 2) */
    int max_frames; /* hard cap on frames produced */
    uint64_t seed;
    int record; /* keep per-step tensors for parity checks (qt_session_record) */
    /* Teacher forcing: frames [n_forced][16] (codes 0..2047), or NULL / 0. While fewer than n_forced frames
     * exist, next_frame() samples nothing: it returns the forced frame (code 0 and codes 1..15; the code
     * predictor does not run) and feeds it back exactly like a sampled one. The talker still runs every step,
     * so its logits are computed and recorded (record): the quality of a weight type over the same codes.
     * The session copies the frames; max_frames still caps the output; after them, generation goes on. */
    const int32_t *forced_codes;
    int n_forced;
} qt_sampling;

/* library */
const char *qt_system_info(void); /* ggml version, backend, CPU features, the engine's ISA level */
/* The instruction-set level the engine's kernels run at ("amx", "avx512", "avx2", "neon", "generic"): the CPU's
   best, or lower where the environment variable QWEN3TTS_ISA asks for it. best: the CPU's best level. */
const char *qt_isa_level(int best);

/* model */
qt_model *qt_model_load(const char *gguf_path, const qt_load_params *params, char *err, size_t err_len);
void qt_model_free(qt_model *model);
int qt_model_set_threads(qt_model *model, int n_threads);
int qt_model_hidden_size(const qt_model *model);
int qt_model_has_speaker_encoder(const qt_model *model);
const char *qt_model_backend_name(const qt_model *model);
/* How the talker and the code predictor run, e.g. "talker: fused layers, packed q4_K; code predictor: ..."
   ("ggml graph" where the weights are not packed: plain_kernels, an ISA level below avx2, f32/f16 weights),
   and once a codec stream has loaded the codec: "; codec matrices: packed bf16" (or "ggml"). */
const char *qt_model_kernels(const qt_model *model);

/* session: validates and lays out the prompt, runs the prefill */
qt_session *qt_session_new(qt_model *model, const qt_prompt *prompt, const qt_sampling *sampling, char *err,
                           size_t err_len);
void qt_session_free(qt_session *session);
/* One frame into codes_out[16]. Returns 1 for a frame, 0 when finished (EOS or max_frames), < 0 on error. */
int qt_session_next_frame(qt_session *session, int32_t *codes_out, char *err, size_t err_len);
int qt_session_prompt_length(const qt_session *session);
/* Timing of the session so far, milliseconds: [0] prefill, [1] talker steps, [2] code predictor. */
void qt_session_timings(const qt_session *session, double *out3);

/* utilities for the converter: ggml's own quantizer */
long qt_quantize(int ggml_type, const float *src, int64_t n_rows, int64_t n_per_row, void *dst, size_t dst_cap,
                 char *err, size_t err_len);
long qt_row_size(int ggml_type, int64_t n_per_row);

int qt_block_size(int ggml_type);

/* ---- 12 Hz codec decoder (codes -> 24 kHz PCM) ----
 * A qt_codec_stream decodes frames as they arrive, any number per call, and carries every causal layer's state
 * (conv tails, transposed-conv overlaps, the sliding-window K/V cache, the position) between calls: the
 * concatenated output equals a one-shot decode of all frames, whatever the split. Each stream owns its state, its
 * compute buffers and its own CPU backend (the model's thread count), so a stream may run on another thread than
 * the model's sessions; one stream must not be used from two threads at once. Codes are [n_frames][16] row-major;
 * negative codes are read as 0 (the reference clamps them), codes >= codebook size are an error. */
typedef struct qt_codec_stream qt_codec_stream;

/* samples per frame (1920), output sample rate (24000), code groups per frame (16). Returns 0, or -1 on error. */
int qt_codec_info(qt_model *model, int *samples_per_frame, int *sample_rate, int *num_quantizers, char *err,
                  size_t err_len);
qt_codec_stream *qt_codec_stream_new(qt_model *model, char *err, size_t err_len);
void qt_codec_stream_free(qt_codec_stream *stream);
void qt_codec_stream_reset(qt_codec_stream *stream);          /* back to an empty stream */
long qt_codec_stream_position(const qt_codec_stream *stream); /* frames decoded so far */
/* Frames per internal graph (default 16; longer calls are split, exactly). Returns 0, or -1 if max_frames <= 0. */
int qt_codec_stream_set_max_batch(qt_codec_stream *stream, int max_frames);
/* Compute threads of this stream (<= 0, the default: the model's thread count at each call). A stream that runs
 * beside the talker on other cores should get its own share; oversubscribed cores make ggml's barriers slow. */
void qt_codec_stream_set_threads(qt_codec_stream *stream, int n_threads);
/* Decodes n_frames more frames into pcm_out (n_frames * samples_per_frame floats, cap >= that). Returns the
 * number of samples written, or -1 on error. Invalid input (codes out of range, buffer too small) is rejected
 * before anything is decoded and leaves the stream as it was; after any other error, reset the stream. */
long qt_codec_stream_decode(qt_codec_stream *stream, const int32_t *codes, int n_frames, float *pcm_out, size_t cap,
                            char *err, size_t err_len);
/* The reference's decode(): chunks of `chunk` frames, each decoded from scratch with up to `left_context`
 * preceding frames whose samples are dropped (300 / 25 in qwen-tts). Returns samples written or -1. */
long qt_codec_decode_chunked(qt_model *model, const int32_t *codes, int n_frames, int chunk, int left_context,
                             float *pcm_out, size_t cap, char *err, size_t err_len);

/* ---- voice cloning (Base models): speaker encoder and 12 Hz codec encoder ----
 * The audio front end (loading, resampling to 24 kHz, log-mel) is done by the caller (wyoming_qwen3tts/audio.py). */

/* x-vector (ECAPA-TDNN, model.md 5.2) of a log-mel [n_frames][mel_dim] (mel_dim 128, model.md 5.1). Writes the talker
 * hidden size floats into out (cap >= that). Returns the number written, or -1 on error (model without a speaker
 * encoder, too few frames, ...). */
long qt_speaker_embedding(qt_model *model, const float *mel, int n_frames, int mel_dim, float *out, size_t cap,
                          char *err, size_t err_len);

/* 1 if the model has the codec encoder's tensors (codec.enc.*), else 0. */
int qt_codec_has_encoder(const qt_model *model);
/* Codes of a 24 kHz mono waveform with the codec's (Mimi) encoder half (model.md 6.3): ceil(n / 1920) frames of 16
 * codes, row-major into codes_out (cap in int32 values). Returns the number of frames, or -1 on error. */
long qt_codec_encode(qt_model *model, const float *wav, size_t n_samples, int32_t *codes_out, size_t cap, char *err,
                     size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* QWEN3TTS_H */

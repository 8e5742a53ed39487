/* qwen3tts_debug.h: the engine's parity and kernel-test hooks, for the test suite (tests/) and the fixtures' tools;
 * not part of the product API (qwen3tts.h), whose conventions they follow: 0 / a count on success, -1 with a
 * message in err on failure. */
#ifndef QWEN3TTS_DEBUG_H
#define QWEN3TTS_DEBUG_H

#include "qwen3tts.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- per-step records of a session (qt_sampling.record = 1) ---- */
enum qt_record_kind {
    QT_REC_PROMPT_EMBEDS = 0, /* [L, D]   talker prefill input */
    QT_REC_STEP_INPUTS = 1,   /* [S, D]   talker inputs of the decode steps */
    QT_REC_TALKER_LOGITS = 2, /* [S+1, V] raw code-0 logits, before any processor */
    QT_REC_TALKER_HIDDEN = 3, /* [F, D]   post-norm hidden that produced each frame's code 0 */
    QT_REC_CP_PREFILL_IN = 4, /* [2F, Dcp] code-predictor prefill input after the input projection */
    QT_REC_CP_LOGITS = 5,     /* [15F, 2048] raw code-predictor logits */
};

/* Copies a record into out (row-major float32). Returns the number of floats available (also when out is NULL
 * or cap is too small, in which case nothing is copied); *n_cols receives the row width. */
long qt_session_record(const qt_session *session, int kind, float *out, size_t cap, int *n_cols);

/* ---- codec decoder stages ---- */
enum qt_codec_stage {
    QT_CODEC_STAGE_QUANTIZED = 0,       /* [T, codebook_dim] RVQ dequantised (after both output_proj) */
    QT_CODEC_STAGE_PRE_CONV = 1,        /* [T, latent]       after pre_conv */
    QT_CODEC_STAGE_PRE_TRANSFORMER = 2, /* [T, latent]       after the pre-transformer's output_proj */
    QT_CODEC_STAGE_WAVEFORM = 3,        /* [T, samples_per_frame] one-shot waveform */
};

/* One-shot decode that returns an intermediate tensor (qt_codec_stage) for parity tests, row-major; *n_cols
 * receives the row width. Returns the number of floats (n_frames * width), or -1 on error. With out NULL or cap
 * too small it only reports the size and decodes nothing. */
long qt_codec_debug_stage(qt_model *model, const int32_t *codes, int n_frames, int stage, float *out, size_t cap,
                          int *n_cols, char *err, size_t err_len);

/* ---- codec encoder stages ---- */
/* Test/diagnostic entry points beside qwen3tts.h's qt_codec_encode (same conventions). chunk_samples <= 0: the
 * default chunk. stage: 0 codes (int32 as float values), 1 SEANet output, 2 transformer output, 3 downsampled
 * features; writes row-major [rows][*n_cols] into out; returns the number of floats (also when out is NULL or cap
 * too small, in which case nothing is copied), or -1 on error. peak_bytes (may be NULL) receives the compute buffer
 * sizes of the SEANet graph and of the transformer / downsample / RVQ graph (2 values). */
long qt_codec_encode_debug(qt_model *model, const float *wav, size_t n_samples, int stage, long chunk_samples,
                           float *out, size_t cap, int *n_cols, size_t *peak_bytes, char *err, size_t err_len);

/* ---- kernels ---- */
/* Test entry of the packed mat-vec kernels (kernels/packed_matvec.h): out [ncols][N] = the weight of ggml_type (Q4_K, Q8_0
   or BF16; N rows of K values in ggml's row layout) times x [ncols][K], on n_threads. Returns 0, or -1 with a
   message (e.g. no packed kernel for the type at the ISA level in use). */
int qt_vnni_matmul(int ggml_type, const void *rows, int64_t K, int64_t N, const float *x, int64_t ncols, float *out,
                   int n_threads, char *err, size_t err_len);

/* The weight forms of the packed conv kernel (kernels/packed_conv.h). */
enum qt_conv_weights {
    QT_CONV_BF16 = 0,       /* BF16 weights widened to FP32 in registers, FP32 inputs and sums (AVX2, NEON) */
    QT_CONV_F32 = 1,        /* F32 weights, inputs and sums (AVX2, NEON) */
    QT_CONV_BF16_PAIRS = 2, /* BF16 weights and inputs, FP32 sums: vdpbf16ps (AVX512-BF16) */
};

/* Test entry (tests/test_conv_packed.py, tests/test_arm64.py, tests/test_avx512_emulated.py): the packed conv kernel
 * on float weights w [cout][k][cin] packed in the form `weights` (qt_conv_weights), x [Tx][cin] -> out [T][cout] with
 * the epilogue parts that are not null (bias, ea, ib: cout values; residual: [T][cout]). Returns 0, or -1 with a
 * message in err (also where the engine's level has no kernel for the form: below avx2 on x86-64 or below neon on
 * ARM64; below avx512 with AVX512-BF16 for QT_CONV_BF16_PAIRS). */
int qt_conv_packed(const float *w, int cin, int cout, int k, int dil, int stride, const float *x, int64_t Tx, int64_t T,
                   const float *bias, const float *ea, const float *ib, const float *residual, int weights, float *out,
                   int n_threads, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* QWEN3TTS_DEBUG_H */

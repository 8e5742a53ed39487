// codec_encoder.h: the 12 Hz codec's encoder half (transformers MimiModel, model.md 6.3) on ggml: 24 kHz audio -> codes.
//
//   SEANet (causal convs, ELU)            audio -> [hidden] at 25 Hz (total stride 960)
//   8-layer transformer (LayerNorm, RoPE, full causal attention, LayerScale, GELU MLP)
//   downsample conv (k4, s2, replicate padding) -> 12.5 Hz
//   split RVQ: semantic and acoustic input projections of the same features, nearest codebook (the reference's
//   cdist + argmin, first index wins), residual over the first encoder_valid_num_quantizers - 1 acoustic books.
//
// The SEANet is fully causal, so it runs in chunks of a fixed number of samples (a multiple of its total stride)
// with each conv's left context carried between chunks: the result is that of one pass over the whole input,
// and the compute memory does not grow with the input length. The transformer, the downsample and the RVQ run
// as one graph over all frames; the attention is computed in blocks of queries so that no [T, T] score matrix
// of the whole input exists at once.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "runtime/model.h"

namespace qt {

// True when the encoders (this one and the speaker encoder) run their BF16 / AMX paths for this model: the CPU has
// AMX-BF16 and the GGUF is not an F32 one. The GGUF's codec encoder and speaker encoder weights are F32 whatever
// its type, so the decision is the codec decoder's (its convolutions are BF16 in every GGUF but f32): an f32 GGUF
// keeps the exact F32 paths of both encoders (the reference parity tests).
bool encoders_use_tiles(const Model &m);

// True when, without the tiles, the encoders run their convolutions on the packed conv kernel (packed_conv.h): the
// AVX2 / AVX-512 / NEON levels, a GGUF that is not an F32 one, and not plain_kernels. With their F32 weights (F32
// arithmetic in another summation order than ggml's F32 path), or in BF16 pairs where the level has AVX512-BF16
// (BF16 operands, F32 sums: the tiles' arithmetic).
bool encoders_use_packed(const Model &m);

struct CodecEncHParams {
    int channels = 1;  // audio_channels
    int n_filters = 64;
    int kernel = 7, res_kernel = 3, last_kernel = 3;
    int n_res = 1, dil_growth = 2, compress = 2;
    std::vector<int> strides;  // reversed upsampling_ratios: 4, 5, 6, 8
    int hop = 960;             // SEANet total stride (product of strides)
    int hidden = 512, n_layer = 8, n_head = 8, n_head_kv = 8, head_dim = 64, n_ff = 2048;
    float eps = 1e-5f, rope_theta = 10000.0f;
    int ds_kernel = 4, ds_stride = 2;  // downsample conv (25 Hz -> 12.5 Hz)
    int codebook_size = 2048, codebook_dim = 256, vq_dim = 256;
    int n_sem = 1, n_ac = 15;      // codebooks used: semantic, acoustic (encoder_valid_num_quantizers - n_sem)
    int samples_per_frame = 1920;  // frames are trimmed to ceil(n / samples_per_frame)
};

// Intermediate results of an encode, row-major [frames][hidden] (for parity tests).
struct CodecEncStages {
    std::vector<float> seanet;       // SEANet output, 25 Hz
    std::vector<float> transformer;  // transformer output, 25 Hz
    std::vector<float> downsampled;  // after the downsample conv, 12.5 Hz (the RVQ input)
};

// Encodes on the model's codec compute (codec_common.h); the prepared weights are the model's, built by the first
// encoder made for it.
class CodecEncoder {
public:
    // Checks every hyper-parameter and tensor of the encoder; throws Error when the model has none.
    explicit CodecEncoder(Model &m);
    ~CodecEncoder();
    CodecEncoder(const CodecEncoder &) = delete;
    CodecEncoder &operator=(const CodecEncoder &) = delete;

    const CodecEncHParams &hparams() const;
    // Frames of codes that encode() returns for n samples: ceil(n / samples_per_frame).
    int64_t frames_for(int64_t n_samples) const;
    // 24 kHz mono float samples -> codes [frames][n_sem + n_ac], row-major.
    std::vector<int32_t> encode(const float *wav, int64_t n, CodecEncStages *stages = nullptr);

    int64_t chunk_samples = 48000;  // SEANet chunk (rounded up to a multiple of the hop); <= 0: one chunk
    int n_threads = 0;              // compute threads; <= 0: the model's current count
    size_t peak_seanet_bytes = 0;   // compute buffer of the last encode(): SEANet chunks
    size_t peak_rest_bytes = 0;     // compute buffer of the last encode(): transformer, downsample, RVQ
    size_t prepared_weight_bytes = 0;

private:
    struct Impl;
    // The two graphs of an encode: the SEANet in chunks -> features [T25][hidden]; the transformer, the downsample
    // and the RVQ over all of them -> codes.
    std::vector<float> seanet(const float *wav, int64_t n);
    std::vector<int32_t> quantize(const std::vector<float> &feats, int64_t n, CodecEncStages *stages);

    Model &m_;
    std::unique_ptr<Impl> p_;
};

// Whether the model's GGUF has the codec encoder tensors (codec.enc.*).
bool has_codec_encoder(const Model &m);

}  // namespace qt

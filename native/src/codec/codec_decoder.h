// codec_decoder.h: the 12 Hz speech-tokenizer decoder (model.md 6.1) on ggml, as an exact stateful stream.
//
// Every layer of the decoder is causal, so decoding a sequence in pieces gives the one-shot result as long as
// each layer keeps what it needs of the past between calls:
//   * each causal conv (k > 1) keeps the last (k-1)*dilation samples of its input (its left padding);
//   * each causal transposed conv with k = 2s keeps the last input frame's contribution to the next output
//     block (the overlap; k = s has none);
//   * each transformer layer keeps the roped keys and the values of the last (sliding_window - 1) positions,
//     and the stream keeps the running position (RoPE and the window mask use absolute positions).
// A fresh stream starts from zeros everywhere, which is exactly the reference's zero left padding, so a one-shot
// forward is a fresh stream fed all frames at once, and any split of the frames gives the same samples.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "codec/codec_common.h"
#include "kernels/conv_amx.h"
#include "kernels/packed_conv.h"
#include "runtime/graph.h"
#include "runtime/gguf_meta.h"
#include "runtime/model.h"

namespace qt {

struct CodecHParams {
    int n_q = 16;  // num_quantizers (code groups per frame)
    int codebook_size = 2048;
    int codebook_dim = 512;  // width of the dequantised frame (after output_proj)
    int rvq_dim = 256;       // codebook vector width (codebook_dim / 2)
    int latent = 1024;       // latent_dim
    int hidden = 512;        // transformer width
    int n_ff = 1024;
    int n_layer = 8;
    int n_head = 16, n_head_kv = 16, head_dim = 64;
    float eps = 1e-5f;
    float rope_theta = 10000.0f;
    int window = 72;  // sliding window: query q sees keys q-window+1 .. q
    int decoder_dim = 1536;
    std::vector<int> up_ratios;  // upsampling_ratios (ConvNeXt stages), [2, 2]
    std::vector<int> rates;      // upsample_rates (decoder blocks), [8, 5, 4, 3]
    int samples_per_frame = 1920;
    int sample_rate = 24000;
};

// SnakeBeta constants, per channel: exp(alpha) and 1 / (exp(beta) + 1e-9).
struct CodecSnake {
    std::vector<float> ea, ib;
};

// Causal conv (k, dilation) or causal transposed conv (k, stride), with the one form of its weights that
// prepare_conv_weights makes once per model (ConvWeights; k = 1 convs on ggml keep w as stored):
//   * wp for ggml, conv: [k*cin, cout] tap-major, so that the k input columns a time step reads, which are k*cin
//     consecutive floats of the time-major input, multiply it directly (an overlapping strided view, no im2col
//     copy); with dilation > 1, one mul_mat per tap over the tap's [cin, cout] slice;
//   * wp for ggml, transposed conv: [cin, k*cout] with rows ordered (tap, channel), so x -> [cout, k, T] directly;
//   * amx, on CPUs with AMX and BF16 weights where the widths fit the tiles: packed for amx_conv (conv_amx.h);
//   * packed, at the avx2 and avx512 levels (no AMX) and the neon level with BF16 weights: packed for packed_conv
//     (packed_conv.h), with the conv's bias and `then_snake` fused into the kernel (k = s transposed convs: bias).
struct CodecConv : ConvWeights {
    // The SnakeBeta the decoder applies right after this conv's bias (and residual), if any; set with the
    // weights, so that the graph and the packed kernel's fused epilogue agree.
    const CodecSnake *then_snake = nullptr;
};

struct CodecTfLayer {
    ggml_tensor *attn_norm;
    CodecAttention attn;
    ggml_tensor *ffn_norm, *gate, *up, *down, *mlp_ls;
};

struct CodecUpsample {
    CodecConv tconv;
    ggml_tensor *dw_w, *dw_b, *ln_w, *ln_b, *pw1_w, *pw1_b, *pw2_w, *pw2_b, *gamma;
};

struct CodecResUnit {
    CodecSnake act1, act2;
    CodecConv conv1, conv2;
};

struct CodecBlock {
    CodecSnake snake;
    CodecConv tconv;
    CodecResUnit res[3];
};

// Pointers into the model's weights, the few per-channel constants computed from them and the prepared conv and
// matrix weights (built once per model by load_codec_weights, kept in Model::codec). Building one checks every
// shape and type, so that ggml never asserts on a damaged GGUF. The re-laid-out weights are BF16 when the GGUF
// stores the decoder's convolutions in a 16-bit type (the converter does for every type but f32), else F32.
struct CodecWeights {
    OwnedTensors prep;    // the re-laid-out conv weights
    OwnedTensors packed;  // the matrices packed for packed_matvec.h (they replace the pointers below)
    // the matrices packed for packed_conv (k = 1) where packed_matvec.h does not take them, by their tensor
    std::unordered_map<const ggml_tensor *, std::shared_ptr<PackedConv>> packed_linear;
    CodecHParams hp;
    std::vector<ggml_tensor *> codebooks;  // n_q tables [rvq_dim] x codebook_size, any row type
    ggml_tensor *proj_first = nullptr, *proj_rest = nullptr;
    CodecConv pre_conv;
    ggml_tensor *in_proj_w = nullptr, *in_proj_b = nullptr;
    std::vector<CodecTfLayer> layers;
    ggml_tensor *tf_norm = nullptr, *out_proj_w = nullptr, *out_proj_b = nullptr;
    std::vector<CodecUpsample> ups;
    CodecConv dec_in;
    std::vector<CodecBlock> blocks;
    CodecSnake final_snake;
    CodecConv dec_out;
};

CodecHParams read_codec_hparams(const Model &m);
// The model's codec decoder weights, built on first use (thread-safe) and shared by every stream.
std::shared_ptr<const CodecWeights> load_codec_weights(Model &m);

// Intermediate tensors of a decode, row-major [frames][channels] (for parity tests).
struct CodecStages {
    std::vector<float> quantized, pre_conv, pre_transformer;
};

// One stream of frames. Owns its decoder state and its compute memory; computes on the model's codec compute
// (codec_common.h: another backend and thread pool than the talker's, shared by every stream, one graph at a
// time). Not thread-safe itself; streams on different threads may decode at once.
class CodecStream {
public:
    explicit CodecStream(Model &m);
    ~CodecStream();
    CodecStream(const CodecStream &) = delete;
    CodecStream &operator=(const CodecStream &) = delete;

    // codes: [n][n_q] row-major; negative codes are read as 0 (the reference clamps them), codes >=
    // codebook_size are an error. Writes n * samples_per_frame samples to pcm (when not null).
    void decode(const int32_t *codes, int n, float *pcm, CodecStages *stages = nullptr);
    void reset();
    int64_t frames_decoded() const { return pos_; }
    const CodecHParams &hparams() const { return w_->hp; }

    int max_frames_per_graph = 16;  // longer calls are split internally (exact: the stream carries state)
    int n_threads = 0;              // compute threads; <= 0: the model's current count

    struct State;  // conv tails, transposed-conv overlaps, attention caches (codec_decoder.cpp)

private:
    void decode_batch(const int32_t *codes, int n, float *pcm, CodecStages *stages);

    Model &m_;
    std::shared_ptr<const CodecWeights> w_;
    CodecCompute &compute_;
    ggml_gallocr_ptr alloc_;  // the stream's compute memory, reused by every batch
    std::unique_ptr<State> st_;
    int64_t pos_ = 0;   // frames decoded so far = transformer position of the next frame
    int n_cached_ = 0;  // valid positions in the transformer K/V caches
};

// The reference's Qwen3TTSTokenizerV2Decoder.chunked_decode: chunks of `chunk` frames, each decoded from
// scratch with up to `left_context` frames before it, whose samples are dropped (model.md 6.2).
void codec_decode_chunked(Model &m, const int32_t *codes, int n, int chunk, int left_context, float *pcm);

}  // namespace qt

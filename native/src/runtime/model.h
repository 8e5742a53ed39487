// model.h: hyper-parameters and weight tensors of a Qwen3-TTS GGUF, and the compute backend they live with.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml.h"
#include "gguf.h"

#include "common.h"
#include "kernels/fused_attention.h"

namespace qt {

// One Qwen3 decoder stack (talker or code predictor). The attention part is the fused attention kernel's own
// parameter struct, so that the stack's hyper-parameters are passed to it as they are.
struct DecoderHParams : AttentionShape {
    int n_layer = 0;
    int n_embd = 0;
    int n_ff = 0;
    int vocab = 0;
};

struct HParams {
    std::string model_type;  // custom_voice | voice_design | base
    DecoderHParams talker, cp;
    int text_vocab = 0;
    int text_embd = 0;
    int n_groups = 16;
    int codec_pad = 2148, codec_bos = 2149, codec_eos = 2150;
    int tts_pad = 151671, tts_bos = 151672, tts_eos = 151673;
};

struct LayerTensors {
    ggml_tensor *attn_norm = nullptr, *wq = nullptr, *wk = nullptr, *wv = nullptr, *wo = nullptr;
    ggml_tensor *q_norm = nullptr, *k_norm = nullptr;
    ggml_tensor *ffn_norm = nullptr, *ffn_gate = nullptr, *ffn_up = nullptr, *ffn_down = nullptr;
};

struct TalkerTensors {
    ggml_tensor *text_embd = nullptr;
    ggml_tensor *text_fc1_w = nullptr, *text_fc1_b = nullptr, *text_fc2_w = nullptr, *text_fc2_b = nullptr;
    ggml_tensor *codec_embd = nullptr;
    std::vector<LayerTensors> layers;
    ggml_tensor *output_norm = nullptr;
    ggml_tensor *codec_head = nullptr;
};

struct CodePredictorTensors {
    std::vector<LayerTensors> layers;
    ggml_tensor *output_norm = nullptr;
    std::vector<ggml_tensor *> codec_embd;  // 15 tables [talker hidden] x 2048
    std::vector<ggml_tensor *> heads;       // 15 heads [cp hidden] -> 2048
    ggml_tensor *input_proj_w = nullptr, *input_proj_b = nullptr;  // only when cp hidden != talker hidden
};

// Memory for weights the engine prepares itself: anonymous, 2 MiB aligned and advised as transparent huge pages.
// Every frame streams these weights from memory; on 2 MiB pages the reads need 512x fewer TLB entries (the
// quantized talker and code predictor run ~10-15 % faster). Frees the memory when destroyed; the ggml buffer
// returned by allocate() must be freed first.
struct HugePages {
    void *mem = nullptr;
    size_t size = 0;

    HugePages() = default;
    HugePages(const HugePages &) = delete;
    HugePages &operator=(const HugePages &) = delete;
    ~HugePages();
    // Places every tensor of ctx in new memory; returns the CPU buffer holding them. Errors name `what`.
    ggml_backend_buffer_t allocate(ggml_context *ctx, const char *what);
};

// A persistent pool of compute threads for one CPU backend. Without one, ggml (built without OpenMP) starts and
// joins its worker threads on every graph compute, and a frame is 16 of them (talker + 15 code-predictor steps).
// The workers sleep between graphs instead of polling: a polling pool would spin on the core that another
// backend's threads (the codec's) need next.
class ThreadPool {
public:
    ThreadPool() = default;
    ThreadPool(const ThreadPool &) = delete;
    ThreadPool &operator=(const ThreadPool &) = delete;
    ~ThreadPool();
    // Makes `backend` compute on n threads of this pool (made anew when n changes).
    void use(ggml_backend_t backend, int n);

private:
    ggml_threadpool *pool_ = nullptr;
    int n_ = 0;
};

enum class Presence {
    Required,  // a missing tensor is an error
    Optional,  // a missing tensor gives nullptr
};
inline Presence required_if(bool required) { return required ? Presence::Required : Presence::Optional; }

struct CodecWeights;
struct CodecEncWeights;
struct SpeakerEncWeights;
class CodecCompute;

struct Model {
    HParams hp;
    TalkerTensors talker;
    CodePredictorTensors cp;
    bool has_speaker_encoder = false;

    gguf_context *gguf = nullptr;
    ggml_context *ctx_w = nullptr;  // tensor metadata; data points into the mapping
    void *mapping = nullptr;
    size_t mapping_size = 0;
    ggml_backend_buffer_t weights_buf = nullptr;
    std::vector<ggml_backend_buffer_t> extra_bufs;  // quantized matmul weights re-laid out for faster kernels
    ggml_context *ctx_packed = nullptr;             // the tensors of the packed weights (packed_matvec.h)
    HugePages packed_pages;                         // their memory
    ggml_backend_t backend = nullptr;
    ThreadPool pool;  // backend's threads
    int n_threads = 1;
    bool plain_kernels = false;  // load_model's !use_extra_buffers: no packed matrices anywhere (codec included)
    // Compute memory of the one-off graphs (text projection, prompt prefill); graphs that are recomputed
    // every frame own theirs (transformer.h, Graph).
    ggml_gallocr_t alloc_text = nullptr, alloc_talker = nullptr;

    // The codec decoder's weights, built on first use by load_codec_weights (codec_decoder.h).
    std::mutex codec_mu;
    std::shared_ptr<const CodecWeights> codec;
    // The codec encoder's and the speaker encoder's prepared weights, built on first use (codec_encoder.cpp,
    // speaker_encoder.cpp; mutable: preparing them does not change the model).
    mutable std::mutex enc_mu;
    mutable std::shared_ptr<const CodecEncWeights> codec_enc;
    mutable std::shared_ptr<const SpeakerEncWeights> spk_enc;
    // The backend and threads of every codec graph (codec_common.h), apart from `backend` so that the codec runs
    // beside the talker; made on first use under codec_compute_mu.
    mutable std::mutex codec_compute_mu;
    mutable std::shared_ptr<CodecCompute> codec_compute;

    ~Model();
    ggml_tensor *get(const std::string &name, Presence presence = Presence::Required) const;
    // Drops a weight's mapped pages from this process once a re-laid-out copy replaces it (the file stays in the
    // page cache; the pages come back if the tensor is ever read again).
    void release_mapped(const ggml_tensor *t) const;
};

// use_extra_buffers: copy matmul weights into faster layouts (packed for packed_matvec.h, or the CPU backend's
// repack) where there is one for them; off keeps every matrix in the mapping for ggml's mul_mat (the codec's
// convolutions keep their own layout either way).
Model *load_model(const std::string &path, int n_threads, bool use_extra_buffers = true);

// A row of an embedding-like weight tensor as float32, whatever its storage type.
void read_row(const ggml_tensor *t, int64_t row, float *out);

}  // namespace qt

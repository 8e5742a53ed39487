// model.h: hyper-parameters and weight tensors of a Qwen3-TTS GGUF, and the compute backend they live with.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ggml-cpp.h"

#include "common.h"
#include "kernels/fused_attention.h"
#include "runtime/lazy.h"

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
    std::vector<ggml_tensor *> codec_embd;                         // 15 tables [talker hidden] x 2048
    std::vector<ggml_tensor *> heads;                              // 15 heads [cp hidden] -> 2048
    ggml_tensor *input_proj_w = nullptr, *input_proj_b = nullptr;  // only when cp hidden != talker hidden
};

// Memory from mmap (a file's pages or anonymous memory), unmapped when the pointer goes: ggml-cpp.h's idiom with
// the mapping's size in the deleter.
struct Unmapper {
    size_t size = 0;
    void operator()(void *p) const;
};
using mapping_ptr = std::unique_ptr<void, Unmapper>;

// Memory for weights the engine prepares itself: anonymous, 2 MiB aligned and advised as transparent huge pages.
// Every frame streams these weights from memory; on 2 MiB pages the reads need 512x fewer TLB entries (the
// quantized talker and code predictor run ~10-15 % faster). The ggml buffer returned by allocate() points into
// this memory and must go first.
struct HugePages {
    mapping_ptr mem;

    // Places every tensor of ctx in new memory; returns the CPU buffer holding them. Errors name `what`.
    ggml_backend_buffer_ptr allocate(ggml_context *ctx, const char *what);
};

// Tensors the engine makes once per model (re-laid-out or derived weights): their metadata context and the CPU
// buffer that holds them. begin(n) makes room for n tensors, created in ctx afterwards; allocate() gives every
// one of them memory (none created: no buffer). Errors say "out of memory for the <what>".
struct OwnedTensors {
    HugePages pages;  // buf's memory (declared first: freed after the buffer that points into it)
    ggml_backend_buffer_ptr buf;
    ggml_context_ptr ctx_;

    ggml_context *ctx() const { return ctx_.get(); }
    void begin(size_t n_tensors, const char *what);
    void allocate(const char *what);
};

struct ggml_threadpool_deleter {
    void operator()(ggml_threadpool *pool) const;
};
using ggml_threadpool_ptr = std::unique_ptr<ggml_threadpool, ggml_threadpool_deleter>;

// A persistent pool of compute threads for one CPU backend. Without one, ggml (built without OpenMP) starts and
// joins its worker threads on every graph compute, and a frame is 16 of them (talker + 15 code-predictor steps).
// The workers sleep between graphs instead of polling: a polling pool would spin on the core that another
// backend's threads (the codec's) need next. The pool must outlive the backend's computes.
class ThreadPool {
public:
    // Makes `backend` compute on n threads of this pool (made anew when n changes).
    void use(ggml_backend_t backend, int n);

private:
    ggml_threadpool_ptr pool_;
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

// The members that own memory are declared in the order they are made; they are freed in reverse (the buffers
// before the memory they point into, the prepared weights before the tensors they were made from).
struct Model {
    HParams hp;
    TalkerTensors talker;
    CodePredictorTensors cp;
    bool has_speaker_encoder = false;
    int n_threads = 1;
    bool plain_kernels = false;  // load_model's !use_extra_buffers: no packed matrices anywhere (codec included)

    mapping_ptr mapping;  // the whole GGUF file, read-only
    gguf_context_ptr gguf;
    ggml_context_ptr ctx_w;  // tensor metadata; data points into the mapping
    ThreadPool pool;         // backend's threads
    ggml_backend_ptr backend;
    ggml_backend_buffer_ptr weights_buf;  // wraps the mapping
    // Quantized matmul weights re-laid out for faster kernels: in the CPU backend's repack buffers, or packed
    // for packed_matvec.h.
    std::vector<ggml_backend_buffer_ptr> extra_bufs;
    OwnedTensors packed;
    // Compute memory of the one-off graphs (text projection, prompt prefill); graphs that are recomputed
    // every frame own theirs (transformer.h, Graph).
    ggml_gallocr_ptr alloc_text, alloc_talker;

    // Built on first use: the codec decoder's weights (load_codec_weights, codec_decoder.h), the codec encoder's
    // and the speaker encoder's (codec_encoder.h, speaker_encoder.h), and the backend and threads of every codec
    // graph (codec_common.h; apart from `backend`, so that the codec runs beside the talker).
    Lazy<const CodecWeights> codec;
    Lazy<const CodecEncWeights> codec_enc;
    Lazy<const SpeakerEncWeights> spk_enc;
    Lazy<CodecCompute> codec_compute;

    ggml_tensor *get(const std::string &name, Presence presence = Presence::Required) const;
    // Drops a weight's mapped pages from this process once a re-laid-out copy replaces it (the file stays in the
    // page cache; the pages come back if the tensor is ever read again).
    void release_mapped(const ggml_tensor *t) const;
};

// use_extra_buffers: copy matmul weights into faster layouts (packed for packed_matvec.h, or the CPU backend's
// repack) where there is one for them; off keeps every matrix in the mapping for ggml's mul_mat (the codec's
// convolutions keep their own layout either way).
std::unique_ptr<Model> load_model(const std::string &path, int n_threads, bool use_extra_buffers = true);

// A row of an embedding-like weight tensor as float32, whatever its storage type.
void read_row(const ggml_tensor *t, int64_t row, float *out);

}  // namespace qt

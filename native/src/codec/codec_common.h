// codec_common.h: what the codec decoder, the codec encoder and the speaker encoder share: the model's codec
// compute (one CPU backend and thread pool per model), stream state tensors, the weight preparation's job runner,
// hyper-parameter reads, the transformers' attention weights and host-table RoPE.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ggml-cpp.h"

#include "runtime/gguf_meta.h"
#include "runtime/graph.h"
#include "runtime/model.h"

namespace qt {

// ------------------------------------------------------------------------------------------------ compute

// The backend every codec graph runs on (decoder streams, codec encoder, speaker encoder), one per model: a CPU
// backend apart from the model's (the talker's and the code predictor's), with its own persistent thread pool, so
// that the codec runs on another thread than the talker. A CPU backend computes one graph at a time: compute()
// serialises its callers (two streams decoding on two threads take turns on the pool).
class CodecCompute {
public:
    CodecCompute();
    CodecCompute(const CodecCompute &) = delete;
    CodecCompute &operator=(const CodecCompute &) = delete;

    // For planning a graph's memory (the buffer type); computing goes through compute().
    ggml_backend_t backend() const { return backend_.get(); }
    // Computes gf on n_threads threads of the pool (made anew when the count changes).
    void compute(ggml_cgraph *gf, int n_threads);
    // Runs independent jobs on n_threads threads of the pool (one ggml custom op whose threads take the jobs in
    // turn); the first exception a job throws is rethrown here once all have run.
    void run_jobs(const std::vector<std::function<void()>> &jobs, int n_threads);

private:
    std::mutex mu_;  // one graph at a time
    ggml_backend_ptr backend_;
    ThreadPool pool_;  // backend_'s threads (declared after it: freed first)
};

// The model's codec compute, made on first use (thread-safe).
CodecCompute &codec_compute(const Model &m);

// A graph's thread count: n > 0 as given, else the model's current count.
inline int codec_threads(const Model &m, int n) { return n > 0 ? n : m.n_threads; }

// Persistent tensors of a stream or an encode (conv tails, attention caches) in CPU memory: begin(n) makes room
// for n tensors, created in ctx() afterwards; allocate() gives them memory (none created: no buffer); clear()
// zeroes them. Errors say "out of memory for the <what>".
struct StateTensors {
    ggml_context *ctx() const { return ctx_.get(); }
    void begin(size_t n_tensors, const char *what);
    void allocate(const char *what);
    void clear();

private:
    ggml_context_ptr ctx_;
    ggml_backend_buffer_ptr buf_;
};

// ------------------------------------------------------------------------------------------------ weights

// A width, kernel size, count or dilation read from the GGUF: positive and not absurd (<= 2^20).
int positive_dim(const Meta &meta, const std::string &key);

// The F32 weights of c ([cout][cin][k] as stored) packed for the packed conv kernel (the encoders without AMX): in
// BF16 pairs where the level has AVX512-BF16 (BF16 operands and F32 sums, the arithmetic of the encoders' AMX
// tiles), else kept F32 (F32 arithmetic); all its inputs with its bias (if any) in the epilogue, or its first cin_used
// inputs only, without the bias (the caller adds the product with the other inputs and the bias itself).
std::shared_ptr<PackedConv> pack_encoder_conv(const ConvWeights &c, int cin_used = 0);

// The attention weights of a codec transformer layer (the decoder's and the encoder's share the names): q, k, v,
// o projections and the LayerScale applied to the attention output.
struct CodecAttention {
    ggml_tensor *wq = nullptr, *wk = nullptr, *wv = nullptr, *wo = nullptr, *ls = nullptr;
};
// `prefix`attn.{q,k,v,o}_proj.weight and `prefix`attn_ls, shape-checked.
CodecAttention load_codec_attention(const Model &m, const std::string &prefix, int hidden, int n_head, int n_head_kv,
                                    int head_dim);

// ------------------------------------------------------------------------------------------------ graph

// x itself when contiguous, else a contiguous copy.
ggml_tensor *cont(ggml_context *ctx, ggml_tensor *x);

// t, named (a stage's result, for debugging a graph).
inline ggml_tensor *named(ggml_tensor *t, const char *name) { return ggml_set_name(t, name); }

// NeoX rotate-half RoPE with tables computed on the host as torch computes them (inv_freq from float32 powers,
// float32 angle products): cos, sin [head_dim / 2, 1, T] for positions pos0 .. pos0 + T - 1, graph inputs set by
// set() after allocation.
struct RopeTables {
    ggml_tensor *cos = nullptr, *sin = nullptr;

    RopeTables(ggml_context *ctx, int head_dim, int64_t T);
    void set(int head_dim, float theta, int64_t pos0) const;
    // x [head_dim, heads, T] rotated.
    ggml_tensor *apply(ggml_context *ctx, ggml_tensor *x) const;
};

}  // namespace qt

// decoder.h: the Qwen3 decoder stack shared by the talker and the code predictor (model.md 2.2), its KV cache,
// and the graph plumbing every stage uses.
#pragma once

#include <vector>

#include "model.h"

namespace qt {

// Keys and values of every layer, F32, one row of head_dim * n_head_kv values per position. Grows on demand
// (doubling) so a short utterance never pays for the 32k context the model allows. Zero-filled, so that the
// positions a reused graph masks out never hold NaNs.
struct KvCache {
    ggml_context *ctx = nullptr;
    ggml_backend_buffer_t buf = nullptr;
    std::vector<ggml_tensor *> k, v;  // [head_dim * n_head_kv, capacity]
    int capacity = 0;
    int n_past = 0;
    unsigned generation = 0;  // bumped when the tensors are reallocated: graphs built on the old ones are stale

    KvCache() = default;
    KvCache(const KvCache &) = delete;
    KvCache &operator=(const KvCache &) = delete;
    ~KvCache() { release(); }
    void release();
    // Makes room for `needed` positions, keeping what is stored.
    void reserve(const DecoderHParams &hp, int needed);
};

// A 2-D view of F32 x whose rows overlap (row_stride < row length), e.g. the windows of a convolution over a
// time-major input. ggml_view_2d checks a view's extent as rows * row length, so it is created with one row and
// then given its real row count; the true extent, (rows - 1) * row_stride + row length, must lie inside x
// (checked here). mul_mat reads a non-contiguous F32 src1 through its row stride.
ggml_tensor *overlapping_rows(ggml_context *ctx, ggml_tensor *x, int64_t row_len, int64_t rows, size_t row_stride);

// Tensors the engine makes once per model (re-laid-out or derived weights): their metadata context and the CPU
// buffer that holds them. begin(n) makes room for n tensors, created in ctx afterwards; allocate() gives every
// one of them memory (none created: no buffer). Errors say "out of memory for the <what>".
struct OwnedTensors {
    ggml_context *ctx = nullptr;
    ggml_backend_buffer_t buf = nullptr;
    HugePages pages;  // buf's memory

    OwnedTensors() = default;
    OwnedTensors(const OwnedTensors &) = delete;
    OwnedTensors &operator=(const OwnedTensors &) = delete;
    ~OwnedTensors();
    void begin(size_t n_tensors, const char *what);
    void allocate(const char *what);
};

// A graph with its own metadata context and compute buffer. Built once and computed many times: inputs are
// overwritten in place between computes, nothing is re-planned.
struct Graph {
    ggml_context *ctx = nullptr;
    ggml_cgraph *gf = nullptr;
    ggml_gallocr_t alloc = nullptr;  // owned
    ggml_gallocr_t borrowed = nullptr;

    Graph() = default;
    Graph(const Graph &) = delete;
    Graph &operator=(const Graph &) = delete;
    ~Graph() { reset(); }
    bool built() const { return gf != nullptr; }
    void begin(size_t max_nodes);             // drops the previous graph and starts a new one
    ggml_tensor *input(ggml_type type, int64_t ne0, int64_t ne1 = 1);
    void output(ggml_tensor *t);              // marks t as a result and adds it to the graph
    // Plans and allocates the compute buffer (after building). A one-off graph may borrow a long-lived
    // allocator instead of owning one.
    void allocate(ggml_backend_t backend, ggml_gallocr_t shared = nullptr);
    void compute(ggml_backend_t backend);
    void reset();                             // frees everything (also the compute buffer)
};

// True when a stack's layers can run fused (see build_decoder): every layer's matmul weights are packed
// (vnni_matmul.h) and the attention op takes its shape (attention.h).
bool decoder_fusable(const DecoderHParams &hp, const std::vector<LayerTensors> &layers);

// The inputs a decoder pass reads: positions (I32 [n]), KV rows to write (I64 [n]) and the attention mask
// (F32 [n_kv, n]); fused layers read the positions only.
struct DecoderInputs {
    ggml_tensor *pos = nullptr, *kv_rows = nullptr, *mask = nullptr;
    bool fused = false;
    void create(Graph &g, int n_tokens, int n_kv, bool fused_layers);
    // Tokens at positions n_past..n_past+n-1, attending causally over keys 0..n_kv-1 (keys beyond the
    // current position are masked, so a graph built for a larger n_kv stays exact).
    void fill(int n_past, int n_tokens, int n_kv);
};

// x: [n_embd, n_tokens]. Writes the new keys/values into the cache rows given by in.kv_rows and attends over
// the first n_kv cache rows. Returns the post-final-norm hidden states [n_embd, n_tokens].
// With in.fused, a layer is five ops instead of about 25 (norm + QKV products, attention.h, output product +
// residual, norm + gate/up products + SwiGLU, down product + residual): at one token per step the thread
// barriers between ggml's many small ops cost more than those ops' arithmetic.
ggml_tensor *build_decoder(ggml_context *ctx, ggml_cgraph *gf, const DecoderHParams &hp,
                           const std::vector<LayerTensors> &layers, ggml_tensor *output_norm, ggml_tensor *x,
                           const DecoderInputs &in, KvCache &cache, int n_tokens, int n_kv);

}  // namespace qt

// decoder.h: the Qwen3 decoder stack shared by the talker and the code predictor (spec 2.2), its KV cache,
// and the small helpers every graph uses.
#pragma once

#include <vector>

#include "model.h"

namespace qt {

// Keys and values of every layer, F32, [head_dim, n_head_kv, capacity]. Grows on demand (doubling) so a
// short utterance never pays for the 32k context the model allows.
struct KvCache {
    ggml_context *ctx = nullptr;
    ggml_backend_buffer_t buf = nullptr;
    std::vector<ggml_tensor *> k, v;
    int capacity = 0;
    int n_past = 0;

    KvCache() = default;
    KvCache(const KvCache &) = delete;
    KvCache &operator=(const KvCache &) = delete;
    ~KvCache() { release(); }
    void release();
    // Makes room for `needed` positions, keeping what is stored.
    void reserve(const DecoderHParams &hp, int needed);
};

// One graph under construction: a metadata-only context, the graph, and the input tensors to fill after
// allocation.
struct GraphBuilder {
    ggml_context *ctx = nullptr;
    ggml_cgraph *gf = nullptr;
    explicit GraphBuilder(size_t max_nodes = 4096);
    ~GraphBuilder();
    ggml_tensor *input(ggml_type type, int64_t ne0, int64_t ne1 = 1);
};

// x: [n_embd, n_tokens] new rows at positions n_past.. (the cache must hold n_past + n_tokens).
// Returns the post-final-norm hidden states [n_embd, n_tokens]. `pos` (I32 [n_tokens]) and `mask`
// (F32 [n_kv, n_tokens]) are inputs the caller fills.
ggml_tensor *build_decoder(ggml_context *ctx, ggml_cgraph *gf, const DecoderHParams &hp,
                           const std::vector<LayerTensors> &layers, ggml_tensor *output_norm, ggml_tensor *x,
                           ggml_tensor *pos, ggml_tensor *mask, KvCache &cache, int n_tokens);

// Causal mask rows for positions n_past..n_past+n_tokens-1 over n_past+n_tokens keys.
void fill_causal_mask(std::vector<float> &mask, int n_past, int n_tokens);

// Allocates `gf`'s intermediate tensors with `alloc` (inputs are filled after this, outputs read after
// compute_graph).
void alloc_graph(ggml_gallocr_t alloc, ggml_cgraph *gf);
void compute_graph(Model &m, ggml_cgraph *gf);

}  // namespace qt

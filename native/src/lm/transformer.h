// transformer.h: the Qwen3 decoder stack shared by the talker and the code predictor (model.md 2.2) and its KV
// cache.
#pragma once

#include <vector>

#include "runtime/graph.h"

namespace qt {

// Keys and values of every layer, F32, one row of head_dim * n_head_kv values per position. Grows on demand
// (doubling) so a short utterance never pays for the 32k context the model allows. Zero-filled, so that the
// positions a reused graph masks out never hold NaNs.
struct KvCache {
    ggml_context_ptr ctx;
    ggml_backend_buffer_ptr buf;
    std::vector<ggml_tensor *> k, v;  // [head_dim * n_head_kv, capacity]
    int capacity = 0;
    int n_past = 0;
    unsigned generation = 0;  // bumped when the tensors are reallocated: graphs built on the old ones are stale

    // Makes room for `needed` positions, keeping what is stored.
    void reserve(const DecoderHParams &hp, int needed);
};

// True when a stack's layers can run fused (see build_decoder): every layer's matmul weights are packed
// (packed_matvec.h) and the attention op takes its shape (fused_attention.h).
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
// With in.fused, a layer is five ops instead of about 25 (norm + QKV products, fused_attention.h, output product +
// residual, norm + gate/up products + SwiGLU, down product + residual): at one token per step the thread
// barriers between ggml's many small ops cost more than those ops' arithmetic.
ggml_tensor *build_decoder(ggml_context *ctx, ggml_cgraph *gf, const DecoderHParams &hp,
                           const std::vector<LayerTensors> &layers, ggml_tensor *output_norm, ggml_tensor *x,
                           const DecoderInputs &in, KvCache &cache, int n_tokens, int n_kv);

}  // namespace qt

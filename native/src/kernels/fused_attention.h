// fused_attention.h: a decoder layer's whole attention block between its QKV and output products as one ggml custom
// op: per-head RMSNorm of queries and keys, NeoX RoPE, the KV-cache write, and causal GQA softmax attention.
//
// ggml needs about a dozen graph nodes (and as many thread barriers) for this; at one token per step they cost
// more than the arithmetic, which is a few hundred kFLOP per layer. Used with the fused products of
// packed_matvec.h (transformer.cpp), at the AVX2, AVX-512 and NEON levels (cpu_isa.h).
#pragma once

#include "ggml.h"

#include "common.h"

namespace qt {

// The attention block's shape and constants (a decoder stack's hyper-parameters include these).
struct AttentionShape {
    int n_head = 0;
    int n_head_kv = 0;
    int head_dim = 0;
    float eps = 1e-6f;  // the per-head RMSNorm's
    float rope_base = 1e6f;
};

// True when the op takes this stack: the AVX2 level or above (NEON on ARM64), an even head_dim and query heads a
// multiple of the key/value heads.
bool fused_attention_fits(const AttentionShape &hp);

// qkv: F32 [(H + 2 Hkv) * head_dim, n] (queries, keys, values of n tokens, stacked), pos: I32 [n] (each token's
// position; it attends to cache positions 0..pos). Writes the tokens' keys (normalised, rotated) and values into
// rows pos of kc / vc ([head_dim * Hkv, capacity]) and returns the attention output [H * head_dim, n]. hp must
// outlive the graph (it is read at compute time).
ggml_tensor *fused_attention(ggml_context *ctx, ggml_tensor *qkv, ggml_tensor *q_norm, ggml_tensor *k_norm,
                             ggml_tensor *pos, ggml_tensor *kc, ggml_tensor *vc, const AttentionShape &hp);

}  // namespace qt

// attention.h: a decoder layer's whole attention block between its QKV and output products as one ggml custom
// op: per-head RMSNorm of queries and keys, NeoX RoPE, the KV-cache write, and causal GQA softmax attention.
//
// ggml needs about a dozen graph nodes (and as many thread barriers) for this; at one token per step they cost
// more than the arithmetic, which is a few hundred kFLOP per layer. Used with the fused products of
// vnni_matmul.h (decoder.cpp), at the AVX2 and AVX-512 levels (cpu_isa.h).
#pragma once

#include "model.h"

namespace qt {

// True when the op takes this stack: the AVX2 level or above, an even head_dim and query heads a multiple of the
// key/value heads.
bool fused_attention_fits(const DecoderHParams &hp);

// qkv: F32 [(H + 2 Hkv) * head_dim, n] (queries, keys, values of n tokens, stacked), pos: I32 [n] (each token's
// position; it attends to cache positions 0..pos). Writes the tokens' keys (normalised, rotated) and values into
// rows pos of kc / vc ([head_dim * Hkv, capacity]) and returns the attention output [H * head_dim, n]. hp must
// outlive the graph (it is read at compute time).
ggml_tensor *fused_attention(ggml_context *ctx, ggml_tensor *qkv, ggml_tensor *q_norm, ggml_tensor *k_norm,
                             ggml_tensor *pos, ggml_tensor *kc, ggml_tensor *vc, const DecoderHParams &hp);

}  // namespace qt

// gguf_meta.h: typed reads of GGUF metadata and checked tensor lookups, shared by every part of the engine
// that reads a model (talker, codec, speaker encoder). Every failure names the key or tensor.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/model.h"

namespace qt {

class Meta {
public:
    explicit Meta(const gguf_context *g) : g_(g) {}
    explicit Meta(const gguf_context_ptr &g) : g_(g.get()) {}
    bool has(const std::string &key) const;
    int i32(const std::string &key) const;                // required integer (any integer GGUF type)
    int i32_or(const std::string &key, int fallback) const;
    float f32(const std::string &key) const;              // required number (float or integer)
    float f32_or(const std::string &key, float fallback) const;
    std::string str(const std::string &key) const;
    std::vector<int> i32_array(const std::string &key) const;  // positive entries

private:
    int64_t id(const std::string &key) const;
    const gguf_context *g_;
};

std::string shape_str(const int64_t *ne, int n);

enum class TensorType {
    Any,  // only ever src0 of a mul_mat or read through read_row: any ggml type whose rows fit it
    F32,  // read directly as float by CPU code or custom ops
};

// The tensor `name` with shape `ne` (ggml order, ne0 = row length), or nullptr when it is absent and optional.
// Throws Error on a missing required tensor, a wrong shape or a type the caller cannot use.
ggml_tensor *expect_tensor(const Model &m, const std::string &name, std::vector<int64_t> ne, TensorType type,
                           Presence presence = Presence::Required);
// The two kinds every loader asks for: a tensor CPU code reads as float, and a matrix (any type whose rows fit).
inline ggml_tensor *expect_f32(const Model &m, const std::string &name, std::vector<int64_t> ne,
                               Presence presence = Presence::Required) {
    return expect_tensor(m, name, std::move(ne), TensorType::F32, presence);
}
inline ggml_tensor *expect_matrix(const Model &m, const std::string &name, std::vector<int64_t> ne,
                                  Presence presence = Presence::Required) {
    return expect_tensor(m, name, std::move(ne), TensorType::Any, presence);
}

// A 1-D convolution as PyTorch stores it: weight [cout, cin, k] (ggml ne [k, cin, cout]; F32 unless the
// loader allows any type, for weights that are only ever the left operand of a mul_mat) and bias [cout] (F32);
// `stride` is for transposed convolutions, which their loaders fill in themselves.
struct ConvWeights {
    ggml_tensor *w = nullptr, *b = nullptr;
    int k = 1, dil = 1, stride = 1, cin = 0, cout = 0;
};

// `prefix`weight and `prefix`bias, shape-checked.
ConvWeights load_conv(const Model &m, const std::string &prefix, int cin, int cout, int k, int dil,
                      TensorType wtype = TensorType::F32);

}  // namespace qt

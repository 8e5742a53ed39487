// gguf_meta.cpp
#include "runtime/gguf_meta.h"

#include <climits>

namespace qt {

namespace {

bool int_value(const gguf_context *g, int64_t id, int64_t &out) {
    switch (gguf_get_kv_type(g, id)) {
        case GGUF_TYPE_UINT8: out = gguf_get_val_u8(g, id); return true;
        case GGUF_TYPE_INT8: out = gguf_get_val_i8(g, id); return true;
        case GGUF_TYPE_UINT16: out = gguf_get_val_u16(g, id); return true;
        case GGUF_TYPE_INT16: out = gguf_get_val_i16(g, id); return true;
        case GGUF_TYPE_UINT32: out = gguf_get_val_u32(g, id); return true;
        case GGUF_TYPE_INT32: out = gguf_get_val_i32(g, id); return true;
        case GGUF_TYPE_UINT64: out = (int64_t)gguf_get_val_u64(g, id); return true;
        case GGUF_TYPE_INT64: out = gguf_get_val_i64(g, id); return true;
        default: return false;
    }
}

}  // namespace

int64_t Meta::id(const std::string &key) const {
    int64_t i = gguf_find_key(g_, key.c_str());
    if (i < 0) throw Error("GGUF metadata key '" + key + "' is missing");
    return i;
}

bool Meta::has(const std::string &key) const { return gguf_find_key(g_, key.c_str()) >= 0; }

int Meta::i32(const std::string &key) const {
    int64_t v;
    if (!int_value(g_, id(key), v)) throw Error("GGUF metadata key '" + key + "' is not an integer");
    if (v < INT32_MIN || v > INT32_MAX) throw Error("GGUF metadata key '" + key + "' is out of range");
    return (int)v;
}

int Meta::i32_or(const std::string &key, int fallback) const { return has(key) ? i32(key) : fallback; }

float Meta::f32(const std::string &key) const {
    const int64_t i = id(key);
    switch (gguf_get_kv_type(g_, i)) {
        case GGUF_TYPE_FLOAT32: return gguf_get_val_f32(g_, i);
        case GGUF_TYPE_FLOAT64: return (float)gguf_get_val_f64(g_, i);
        default: {
            int64_t v;
            if (int_value(g_, i, v)) return (float)v;
            throw Error("GGUF metadata key '" + key + "' is not a number");
        }
    }
}

float Meta::f32_or(const std::string &key, float fallback) const { return has(key) ? f32(key) : fallback; }

std::string Meta::str(const std::string &key) const {
    const int64_t i = id(key);
    if (gguf_get_kv_type(g_, i) != GGUF_TYPE_STRING) throw Error("GGUF metadata key '" + key + "' is not a string");
    return gguf_get_val_str(g_, i);
}

std::vector<int> Meta::i32_array(const std::string &key) const {
    const int64_t i = id(key);
    if (gguf_get_kv_type(g_, i) != GGUF_TYPE_ARRAY) throw Error("GGUF metadata key '" + key + "' is not an array");
    const size_t n = gguf_get_arr_n(g_, i);
    if (n > 4096) throw Error("GGUF metadata key '" + key + "' has too many entries");
    const void *d = gguf_get_arr_data(g_, i);
    std::vector<int> out(n);
    for (size_t j = 0; j < n; j++) {
        int64_t v;
        switch (gguf_get_arr_type(g_, i)) {
            case GGUF_TYPE_INT32: v = ((const int32_t *)d)[j]; break;
            case GGUF_TYPE_UINT32: v = ((const uint32_t *)d)[j]; break;
            case GGUF_TYPE_INT64: v = ((const int64_t *)d)[j]; break;
            case GGUF_TYPE_UINT64: v = (int64_t)((const uint64_t *)d)[j]; break;
            default: throw Error("GGUF metadata key '" + key + "' is not an integer array");
        }
        if (v <= 0 || v > 1 << 20) throw Error("GGUF metadata key '" + key + "' has an invalid entry");
        out[j] = (int)v;
    }
    return out;
}

std::string shape_str(const int64_t *ne, int n) {
    std::string s = "[";
    for (int i = 0; i < n; i++) s += (i ? ", " : "") + std::to_string(ne[i]);
    return s + "]";
}

ggml_tensor *expect_tensor(const Model &m, const std::string &name, std::vector<int64_t> ne, TensorType type,
                           Presence presence) {
    ggml_tensor *t = m.get(name, presence);
    if (!t) return nullptr;
    for (size_t i = 0; i < 4; i++) {
        const int64_t want = i < ne.size() ? ne[i] : 1;
        if (t->ne[i] != want)
            throw Error("GGUF tensor '" + name + "' has shape " + shape_str(t->ne, ggml_n_dims(t)) + ", expected " +
                        shape_str(ne.data(), (int)ne.size()));
    }
    if (type == TensorType::F32) {
        if (t->type != GGML_TYPE_F32)
            throw Error("GGUF tensor '" + name + "' has type " + ggml_type_name(t->type) +
                        "; the engine needs F32 there");
        return t;
    }
    if (ggml_blck_size(t->type) > 1 && t->ne[0] % ggml_blck_size(t->type) != 0)
        throw Error("GGUF tensor '" + name + "' row length does not fit its type " + ggml_type_name(t->type));
    if (t->type != GGML_TYPE_F32 && !ggml_get_type_traits(t->type)->to_float)
        throw Error("GGUF tensor '" + name + "' has unsupported type " + ggml_type_name(t->type));
    return t;
}

ConvWeights load_conv(const Model &m, const std::string &prefix, const ConvSpec &spec) {
    if (!spec.transposed && spec.stride > (spec.k - 1) * spec.dil + 1)
        throw Error("GGUF conv '" + prefix + "' has a stride larger than its kernel");
    ConvWeights c;
    const std::vector<int64_t> shape = spec.transposed ? std::vector<int64_t>{spec.k, spec.cout, spec.cin}
                                                       : std::vector<int64_t>{spec.k, spec.cin, spec.cout};
    c.w = expect_tensor(m, prefix + "weight", shape, spec.wtype);
    if (spec.has_bias) c.b = expect_f32(m, prefix + "bias", {spec.cout});
    c.cin = spec.cin;
    c.cout = spec.cout;
    c.k = spec.k;
    c.dil = spec.dil;
    c.stride = spec.stride;
    c.transposed = spec.transposed;
    return c;
}

}  // namespace qt

// api.cpp: the C API of qwen3tts.h. Every exception stops here and becomes an error code + message.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/conv_amx.h"
#include "codec/codec_decoder.h"
#include "kernels/packed_conv.h"
#include "kernels/cpu_isa.h"
#include "lm/transformer.h"
#include "kernels/packed_matvec.h"
#include "ggml-cpp.h"
#include "api/api_internal.h"
#include "qwen3tts.h"
#include "qwen3tts_debug.h"
#include "lm/session.h"
#include "runtime/cpu_backend.h"

struct qt_session {
    std::unique_ptr<qt::Session> s;
};

namespace {

// The kernels' test entries: a metadata-only context for a few tensors over the caller's memory, and one op
// computed on n_threads straight into the caller's output buffer.
ggml_context_ptr test_context() {
    ggml_init_params ip = {ggml_tensor_overhead() * 8 + ggml_graph_overhead(), nullptr, /*no_alloc=*/true};
    ggml_context_ptr ctx(ggml_init(ip));
    if (!ctx) throw qt::Error("out of memory");
    return ctx;
}

void compute_test_op(ggml_context *ctx, ggml_tensor *y, void *out, int n_threads) {
    ggml_cgraph *gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, y);
    ggml_backend_ptr backend = qt::new_cpu_backend();
    qt::cpu_backend().set_n_threads(backend.get(), n_threads);
    y->data = out;
    if (ggml_backend_graph_compute(backend.get(), gf) != GGML_STATUS_SUCCESS) throw qt::Error("graph compute failed");
}

}  // namespace

extern "C" {

const char *qt_system_info(void) {
    static std::string info;
    if (info.empty()) {
        info = std::string("ggml ") + ggml_version() + " (" + ggml_commit() + "); ";
        try {
            const qt::CpuBackend &cpu = qt::cpu_backend();
            info += "backend CPU (" + cpu.variant + "); features: " + cpu.features;
        } catch (const std::exception &e) {
            info += std::string("no CPU backend (") + e.what() + ")";
        }
        const qt::CpuIsa &isa = qt::cpu_isa();
        info += std::string("; engine ISA ") + qt::isa_name(isa.level) + " (CPU best " + qt::isa_name(isa.best) + ")";
        if (!isa.note.empty()) info += " [" + isa.note + "]";
        info += "; packed mat-vec kernels:";
        for (ggml_type t : {GGML_TYPE_Q4_K, GGML_TYPE_Q8_0, GGML_TYPE_BF16})
            info += std::string(" ") + ggml_type_name(t) + " " + qt::matvec_kernel_name(qt::matvec_kernel(t));
        if (qt::amx_bf16_available())
            info += "; codec convolutions on AMX-BF16 tiles (BF16 weights)";
        else if (qt::packed_conv_pairs_available())
            info += "; codec convolutions on the packed kernel, BF16 pairs (AVX512-BF16)";
        else if (qt::packed_conv_available())
            info += "; codec convolutions on the packed kernel, BF16 weights widened to FP32";
    }
    return info.c_str();
}

const char *qt_isa_level(int best) {
    const qt::CpuIsa &isa = qt::cpu_isa();
    return qt::isa_name(best ? isa.best : isa.level);
}

qt_model *qt_model_load(const char *path, const qt_load_params *params, char *err, size_t err_len) {
    return qt::guarded(err, err_len, nullptr, [&]() -> qt_model * {
        return new qt_model{qt::load_model(path, params ? params->n_threads : 0, !(params && params->plain_kernels))};
    });
}

void qt_model_free(qt_model *model) { delete model; }

int qt_model_set_threads(qt_model *model, int n_threads) {
    if (n_threads <= 0) return -1;
    return qt::guarded(nullptr, 0, -1, [&]() -> int {
        model->m->pool.use(model->m->backend.get(), n_threads);
        model->m->n_threads = n_threads;
        return 0;
    });
}

int qt_model_hidden_size(const qt_model *model) { return model->m->hp.talker.n_embd; }
int qt_model_has_speaker_encoder(const qt_model *model) { return model->m->has_speaker_encoder; }
const char *qt_model_backend_name(const qt_model *model) { return ggml_backend_name(model->m->backend.get()); }

const char *qt_model_kernels(const qt_model *model) {
    const qt::Model &m = *model->m;
    static thread_local std::string s;
    auto describe = [](const qt::DecoderHParams &hp, const std::vector<qt::LayerTensors> &layers) -> std::string {
        if (!qt::decoder_fusable(hp, layers)) return "ggml graph";
        return std::string("fused layers, packed ") + qt::packed_type_name(layers[0].ffn_up);
    };
    s = "talker: " + describe(m.hp.talker, m.talker.layers) + "; code predictor: " + describe(m.hp.cp, m.cp.layers);
    if (std::shared_ptr<const qt::CodecWeights> codec = m.codec.if_built())
        s += std::string("; codec matrices: ") +
             (codec->packed.ctx() && ggml_get_first_tensor(codec->packed.ctx()) ? "packed bf16" : "ggml");
    return s.c_str();
}

qt_session *qt_session_new(qt_model *model, const qt_prompt *prompt, const qt_sampling *sampling, char *err,
                           size_t err_len) {
    return qt::guarded(err, err_len, nullptr, [&]() -> qt_session * {
        return new qt_session{std::make_unique<qt::Session>(*model->m, *prompt, *sampling)};
    });
}

void qt_session_free(qt_session *session) { delete session; }

int qt_session_next_frame(qt_session *session, int32_t *codes_out, char *err, size_t err_len) {
    return qt::guarded(err, err_len, -1, [&]() -> int { return session->s->next_frame(codes_out) ? 1 : 0; });
}

int qt_session_prompt_length(const qt_session *session) { return session->s->prompt_length(); }

long qt_session_record(const qt_session *session, int kind, float *out, size_t cap, int *n_cols) {
    if (kind < 0 || kind > QT_REC_CP_LOGITS) return -1;
    const qt::Record &r = session->s->record(kind);
    if (n_cols) *n_cols = r.cols;
    if (out && cap >= r.data.size()) memcpy(out, r.data.data(), r.data.size() * sizeof(float));
    return (long)r.data.size();
}

void qt_session_timings(const qt_session *session, double *out3) {
    for (int i = 0; i < 3; i++) out3[i] = session->s->ms[i];
}

int qt_block_size(int type) {
    if (type < 0 || type >= GGML_TYPE_COUNT) return -1;
    return (int)ggml_blck_size((ggml_type)type);
}

long qt_row_size(int type, int64_t n_per_row) {
    if (type < 0 || type >= GGML_TYPE_COUNT || ggml_blck_size((ggml_type)type) <= 0) return -1;
    if (n_per_row % ggml_blck_size((ggml_type)type) != 0) return -1;
    return (long)ggml_row_size((ggml_type)type, n_per_row);
}

long qt_quantize(int type, const float *src, int64_t n_rows, int64_t n_per_row, void *dst, size_t dst_cap, char *err,
                 size_t err_len) {
    long row = qt_row_size(type, n_per_row);
    if (row < 0) {
        qt::set_err(err, err_len,
                    "row length " + std::to_string(n_per_row) + " does not fit type " + std::to_string(type));
        return -1;
    }
    if ((size_t)row * n_rows > dst_cap) {
        qt::set_err(err, err_len, "destination buffer too small");
        return -1;
    }
    if (ggml_quantize_requires_imatrix((ggml_type)type)) {
        qt::set_err(err, err_len, "this type needs an importance matrix");
        return -1;
    }
    ggml_quantize_init((ggml_type)type);
    return (long)ggml_quantize_chunk((ggml_type)type, src, dst, 0, n_rows, n_per_row, nullptr);
}

}  // extern "C"

int qt_vnni_matmul(int type, const void *rows, int64_t K, int64_t N, const float *x, int64_t ncols, float *out,
                   int n_threads, char *err, size_t err_len) {
    return qt::guarded(err, err_len, -1, [&]() -> int {
        const int64_t blk = type == GGML_TYPE_Q4_K ? 256 : type == GGML_TYPE_Q8_0 ? 32 : 4;
        if (type != GGML_TYPE_Q4_K && type != GGML_TYPE_Q8_0 && type != GGML_TYPE_BF16)
            throw qt::Error("only Q4_K, Q8_0 and BF16 have a packed layout");
        if (qt::matvec_kernel((ggml_type)type) == qt::MatvecKernel::none)
            throw qt::Error(std::string("no packed ") + ggml_type_name((ggml_type)type) + " kernel at ISA level " +
                            qt::isa_name(qt::cpu_isa().level));
        if (K <= 0 || N <= 0 || ncols <= 0 || K % blk || N % 16)
            throw qt::Error("K must be a multiple of the block size, N of 16");
        std::vector<uint8_t> packed(qt::vnni_packed_size((ggml_type)type, K, N));
        qt::vnni_pack((ggml_type)type, rows, K, N, packed.data());
        ggml_context_ptr ctx = test_context();
        ggml_tensor *w = ggml_new_tensor_1d(ctx.get(), GGML_TYPE_I8, (int64_t)packed.size());
        ggml_tensor *xt = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, K, ncols);
        w->data = packed.data();
        xt->data = const_cast<float *>(x);
        compute_test_op(ctx.get(), qt::matmul(ctx.get(), w, xt), out, n_threads);
        return 0;
    });
}

int qt_conv_packed(const float *w, int cin, int cout, int k, int dil, int stride, const float *x, int64_t Tx, int64_t T,
                   const float *bias, const float *ea, const float *ib, const float *residual, int weights, float *out,
                   int n_threads, char *err, size_t err_len) {
    return qt::guarded(err, err_len, -1, [&]() -> int {
        if (!qt::packed_conv_available())
            throw qt::Error("the engine's level is below avx2 (x86-64) / neon (ARM64): no packed conv kernel");
        if (weights == QT_CONV_BF16_PAIRS && !qt::packed_conv_pairs_available())
            throw qt::Error("the engine's level has no AVX512-BF16: no BF16-pair conv kernel");
        if ((ea == nullptr) != (ib == nullptr)) throw qt::Error("SnakeBeta needs both ea and ib");
        qt::PackedConv conv;
        auto weight = [&](int o, int j, int c) { return w[((size_t)o * k + j) * cin + c]; };
        switch (weights) {
            case QT_CONV_BF16: conv.pack(cin, cout, k, dil, weight, stride); break;
            case QT_CONV_F32: conv.pack_f32(cin, cout, k, dil, weight, stride); break;
            case QT_CONV_BF16_PAIRS: conv.pack_pairs(cin, cout, k, dil, weight, stride); break;
            default: throw qt::Error("unknown weight form " + std::to_string(weights));
        }
        conv.set_epilogue(bias, ea, ib);
        if (T < 1 || Tx < conv.rows_read(T)) throw qt::Error("x has fewer rows than T outputs read");
        ggml_context_ptr ctx = test_context();
        ggml_tensor *xt = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, cin, Tx);
        xt->data = const_cast<float *>(x);
        ggml_tensor *rt = nullptr;
        if (residual) {
            rt = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, cout, T);
            rt->data = const_cast<float *>(residual);
        }
        compute_test_op(ctx.get(), qt::packed_conv(ctx.get(), xt, conv, T, rt), out, n_threads);
        return 0;
    });
}

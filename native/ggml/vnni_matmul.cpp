// q4k_vnni.cpp: see q4k_vnni.h. The kernel is compiled for AVX-512 through function target attributes and
// only used after q4k_vnni_available() said yes, so the extension still loads on any x86-64 CPU.
//
// Packed layout, after a 64-byte header (magic, K, N): row groups of 16 rows; per group, per super-block of 256
// values: d[16], dmin[16] (FP32), then per sub-block i of 32 values: sc[16], m[16] (6-bit, one byte each) and
// 4 chunks of 64 bytes, chunk c holding values 8c..8c+7 of the sub-block: lane r (4 bytes) = row r, byte b =
// code(8c + b) | code(8c + 4 + b) << 4. The weight is d*sc*code - dmin*m, as in Q4_K.
#include "q4k_vnni.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "model.h"

#if defined(__x86_64__)
#define QT_VNNI 1
#include <immintrin.h>
#endif

namespace qt {

namespace {

constexpr uint32_t MAGIC = 0x4e563451;  // "Q4VN"
constexpr int64_t QK = 256;             // values per Q4_K super-block
constexpr size_t Q4K_BLOCK = 144;       // bytes of one: d, dmin (FP16), 12 bytes of scales/mins, 128 of codes
constexpr size_t SUB_BYTES = 32 + 256;  // per 16 rows and 32 values: sc, m, codes
constexpr size_t SUPER_BYTES = 128 + 8 * SUB_BYTES;
constexpr int PREFETCH = 4096;          // bytes ahead of the weights being read (DRAM latency x bandwidth)

struct Header {
    uint32_t magic;
    uint32_t pad;
    int64_t K, N;
};

size_t group_bytes(int64_t K) { return (size_t)(K / QK) * SUPER_BYTES; }

// Q4_K's 6-bit scale and min of sub-block j (0..7) from its 12 packed bytes.
void scale_min(int j, const uint8_t *q, uint8_t &sc, uint8_t &m) {
    if (j < 4) {
        sc = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

}  // namespace

bool q4k_vnni_fits(const ggml_tensor *w) {
    return w->type == GGML_TYPE_Q4_K && ggml_n_dims(w) == 2 && w->ne[0] % QK == 0 && w->ne[1] % 16 == 0;
}

static_assert(sizeof(Header) <= 64, "the header fits its 64 bytes");

size_t q4k_vnni_size(int64_t K, int64_t N) { return 64 + (size_t)(N / 16) * group_bytes(K); }

void q4k_vnni_pack(const void *src, int64_t K, int64_t N, void *dst) {
    Header h = {MAGIC, 0, K, N};
    memset(dst, 0, 64);
    memcpy(dst, &h, sizeof h);
    const int64_t nsb = K / QK;
    const size_t row_bytes = (size_t)nsb * Q4K_BLOCK;
    uint8_t *out = (uint8_t *)dst + 64;
    uint8_t codes[16][QK];
    for (int64_t g = 0; g < N / 16; g++)
        for (int64_t s = 0; s < nsb; s++) {
            float *d = (float *)out, *dmin = d + 16;
            uint8_t sc[16][8], mn[16][8];
            for (int r = 0; r < 16; r++) {
                const uint8_t *b = (const uint8_t *)src + (size_t)(g * 16 + r) * row_bytes + (size_t)s * Q4K_BLOCK;
                uint16_t hd, hm;
                memcpy(&hd, b, 2);
                memcpy(&hm, b + 2, 2);
                d[r] = ggml_fp16_to_fp32(hd);
                dmin[r] = ggml_fp16_to_fp32(hm);
                for (int j = 0; j < 8; j++) scale_min(j, b + 4, sc[r][j], mn[r][j]);
                const uint8_t *qs = b + 16;
                for (int j = 0; j < 4; j++)
                    for (int l = 0; l < 32; l++) {
                        codes[r][64 * j + l] = qs[32 * j + l] & 15;
                        codes[r][64 * j + 32 + l] = qs[32 * j + l] >> 4;
                    }
            }
            out += 128;
            for (int i = 0; i < 8; i++) {
                for (int r = 0; r < 16; r++) {
                    out[r] = sc[r][i];
                    out[16 + r] = mn[r][i];
                }
                out += 32;
                for (int c = 0; c < 4; c++, out += 64)
                    for (int r = 0; r < 16; r++)
                        for (int b = 0; b < 4; b++) {
                            const int v = 32 * i + 8 * c + b;
                            out[4 * r + b] = (uint8_t)(codes[r][v] | (codes[r][v + 4] << 4));
                        }
            }
        }
}

#ifdef QT_VNNI

namespace {

// One column's activations: int8 codes, a scale per 256 values, and code sums per 32 (for the mins).
struct QuantizedColumn {
    std::vector<int8_t> q;
    std::vector<float> scale;
    std::vector<int32_t> sums;

    void set(const float *x, int64_t K) {
        q.resize(K);
        scale.resize(K / QK);
        sums.resize(K / 32);
        for (int64_t s = 0; s < K / QK; s++) {
            float amax = 0.0f;
            for (int64_t i = 0; i < QK; i++) amax = std::max(amax, std::fabs(x[s * QK + i]));
            const float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
            scale[s] = d;
            for (int64_t i = 0; i < QK; i++) q[s * QK + i] = (int8_t)std::lrintf(x[s * QK + i] * id);
        }
        for (int64_t j = 0; j < K / 32; j++) {
            int32_t t = 0;
            for (int i = 0; i < 32; i++) t += q[j * 32 + i];
            sums[j] = t;
        }
    }
};

inline int32_t load4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

// 16 rows (one group) x NC columns.
template <int NC>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void group_dot(const uint8_t *p, int64_t K,
                                                                       const QuantizedColumn *const *cols, float *out[NC]) {
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    __m512 acc[NC];
    for (int c = 0; c < NC; c++) acc[c] = _mm512_setzero_ps();
    for (int64_t s = 0; s < K / QK; s++) {
        const __m512 d = _mm512_loadu_ps((const float *)p), dmin = _mm512_loadu_ps((const float *)p + 16);
        p += 128;
        __m512i accq[NC], accm[NC];
        for (int c = 0; c < NC; c++) accq[c] = accm[c] = _mm512_setzero_si512();
        for (int i = 0; i < 8; i++) {
            for (int l = 0; l < (int)SUB_BYTES; l += 64) _mm_prefetch((const char *)p + PREFETCH + l, _MM_HINT_T0);
            const __m512i sc = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
            const __m512i mn = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 16)));
            p += 32;
            __m512i S[NC];
            for (int c = 0; c < NC; c++) S[c] = _mm512_setzero_si512();
            const int64_t k0 = s * QK + i * 32;
            for (int ch = 0; ch < 4; ch++) {
                const __m512i v = _mm512_loadu_si512((const void *)(p + 64 * ch));
                const __m512i lo = _mm512_and_si512(v, low4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
                for (int c = 0; c < NC; c++) {
                    const int8_t *a = cols[c]->q.data() + k0 + 8 * ch;
                    S[c] = _mm512_dpbusd_epi32(S[c], lo, _mm512_set1_epi32(load4(a)));
                    S[c] = _mm512_dpbusd_epi32(S[c], hi, _mm512_set1_epi32(load4(a + 4)));
                }
            }
            p += 256;
            for (int c = 0; c < NC; c++) {
                accq[c] = _mm512_add_epi32(accq[c], _mm512_mullo_epi32(S[c], sc));
                accm[c] = _mm512_add_epi32(accm[c], _mm512_mullo_epi32(mn, _mm512_set1_epi32(cols[c]->sums[k0 / 32])));
            }
        }
        for (int c = 0; c < NC; c++) {
            const __m512 t = _mm512_fmsub_ps(d, _mm512_cvtepi32_ps(accq[c]), _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(accm[c])));
            acc[c] = _mm512_fmadd_ps(_mm512_set1_ps(cols[c]->scale[s]), t, acc[c]);
        }
    }
    for (int c = 0; c < NC; c++) _mm512_storeu_ps(out[c], acc[c]);
}

void q4k_vnni_op(ggml_tensor *dst, int ith, int nth, void *) {
    const ggml_tensor *w = dst->src[0], *x = dst->src[1];
    Header h;
    memcpy(&h, w->data, sizeof h);
    const int64_t K = h.K, N = h.N, ncols = x->ne[1], groups = N / 16;
    const int64_t per = (groups + nth - 1) / nth, g0 = std::min(groups, per * ith), g1 = std::min(groups, g0 + per);
    if (g0 >= g1) return;
    static thread_local std::vector<QuantizedColumn> qx;
    if ((int64_t)qx.size() < ncols) qx.resize(ncols);
    for (int64_t c = 0; c < ncols; c++) qx[c].set((const float *)((const char *)x->data + c * x->nb[1]), K);
    const uint8_t *base = (const uint8_t *)w->data + 64;
    const size_t gb = group_bytes(K);
    for (int64_t c0 = 0; c0 < ncols; c0 += 4) {
        const int nc = (int)std::min<int64_t>(4, ncols - c0);
        const QuantizedColumn *cols[4] = {};
        for (int c = 0; c < nc; c++) cols[c] = &qx[c0 + c];
        for (int64_t g = g0; g < g1; g++) {
            float *out[4];
            for (int c = 0; c < nc; c++) out[c] = (float *)((char *)dst->data + (c0 + c) * dst->nb[1]) + g * 16;
            const uint8_t *p = base + (size_t)g * gb;
            switch (nc) {
                case 1: group_dot<1>(p, K, cols, out); break;
                case 2: group_dot<2>(p, K, cols, out); break;
                case 3: group_dot<3>(p, K, cols, out); break;
                default: group_dot<4>(p, K, cols, out); break;
            }
        }
    }
}

}  // namespace

bool q4k_vnni_available() {
    static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                           __builtin_cpu_supports("avx512vnni");
    return ok;
}

ggml_tensor *matmul(ggml_context *ctx, ggml_tensor *w, ggml_tensor *x) {
    if (w->type != GGML_TYPE_I8) return ggml_mul_mat(ctx, w, x);
    Header h;
    memcpy(&h, w->data, sizeof h);
    if (h.magic != MAGIC || x->type != GGML_TYPE_F32 || x->ne[0] != h.K || x->nb[0] != sizeof(float) || x->ne[2] != 1 ||
        x->ne[3] != 1)
        throw Error("internal error: packed Q4_K weight used with a mismatched input");
    ggml_tensor *args[] = {w, x};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, h.N, x->ne[1], 1, 1, args, 2, q4k_vnni_op, GGML_N_TASKS_MAX, nullptr);
}

#else

bool q4k_vnni_available() { return false; }

ggml_tensor *matmul(ggml_context *ctx, ggml_tensor *w, ggml_tensor *x) {
    if (w->type == GGML_TYPE_I8) throw Error("internal error: packed Q4_K weights need x86-64");
    return ggml_mul_mat(ctx, w, x);
}

#endif

}  // namespace qt

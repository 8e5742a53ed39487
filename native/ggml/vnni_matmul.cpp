// vnni_matmul.cpp: see vnni_matmul.h. The kernels are compiled for AVX-512 through function target attributes
// and only used after vnni_available() said yes, so the extension still loads on any x86-64 CPU.
//
// Packed layouts, after a 64-byte header (magic, type, K, N), in groups of 16 rows; 64-byte "chunks" hold 4
// codes of each of the 16 rows (lane r = row r):
//   Q4_K, per super-block of 256 values: d[16], dmin[16] (FP32), then per sub-block i of 32 values: sc[16],
//     m[16] (6-bit, a byte each) and 4 chunks, chunk c holding values 8c..8c+7 of the sub-block: byte b of a
//     lane = code(8c + b) | code(8c + 4 + b) << 4. The weight is d*sc*code - dmin*m, as in Q4_K.
//   Q8_0, per block of 32 values: d[16] (FP16), the sums of each row's 32 codes (int16, for the unsigned
//     activations below), then 8 chunks, chunk c holding values 4c..4c+3. The weight is d*code.
// vpdpbusd multiplies unsigned by signed bytes: Q4_K codes are unsigned already; for Q8_0 the activations are
// shifted to unsigned (a + 128) and 128 * sum(codes) is taken off again.
#include "vnni_matmul.h"

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

constexpr uint32_t MAGIC = 0x4e4e5651;  // "QVNN"
constexpr int64_t QK = 256;             // values per Q4_K super-block
constexpr size_t Q4K_BLOCK = 144;       // bytes of one: d, dmin (FP16), 12 bytes of scales/mins, 128 of codes
constexpr size_t SUB_BYTES = 32 + 256;  // per 16 rows and 32 values: sc, m, codes
constexpr size_t SUPER_BYTES = 128 + 8 * SUB_BYTES;
constexpr size_t Q8_BLOCK = 34;         // bytes of one Q8_0 block: d (FP16), 32 codes
constexpr size_t Q8_GROUP_BLOCK = 32 + 32 + 8 * 64;  // per 16 rows and 32 values: d, code sums, codes
constexpr int PREFETCH = 4096;          // bytes ahead of the weights being read (DRAM latency x bandwidth)

struct Header {
    uint32_t magic;
    int32_t type;  // ggml_type of the weights it was packed from
    int64_t K, N;
};

size_t group_bytes(ggml_type type, int64_t K) {
    return type == GGML_TYPE_Q4_K ? (size_t)(K / QK) * SUPER_BYTES : (size_t)(K / 32) * Q8_GROUP_BLOCK;
}

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

bool vnni_fits(const ggml_tensor *w) {
    if (ggml_n_dims(w) != 2 || w->ne[1] % 16 != 0) return false;
    return (w->type == GGML_TYPE_Q4_K && w->ne[0] % QK == 0) || (w->type == GGML_TYPE_Q8_0 && w->ne[0] % 32 == 0);
}

static_assert(sizeof(Header) <= 64, "the header fits its 64 bytes");

size_t vnni_packed_size(ggml_type type, int64_t K, int64_t N) { return 64 + (size_t)(N / 16) * group_bytes(type, K); }

namespace {

void pack_q8_0(const void *src, int64_t K, int64_t N, uint8_t *out) {
    const int64_t nb = K / 32;
    const size_t row_bytes = (size_t)nb * Q8_BLOCK;
    for (int64_t g = 0; g < N / 16; g++)
        for (int64_t bk = 0; bk < nb; bk++) {
            uint16_t *d = (uint16_t *)out;
            int16_t *sums = (int16_t *)(out + 32);
            uint8_t *codes = out + 64;
            for (int r = 0; r < 16; r++) {
                const uint8_t *b = (const uint8_t *)src + (size_t)(g * 16 + r) * row_bytes + (size_t)bk * Q8_BLOCK;
                memcpy(&d[r], b, 2);
                const int8_t *q = (const int8_t *)(b + 2);
                int sum = 0;
                for (int i = 0; i < 32; i++) sum += q[i];
                for (int c = 0; c < 8; c++) memcpy(codes + c * 64 + 4 * r, q + 4 * c, 4);
                sums[r] = (int16_t)sum;
            }
            out += Q8_GROUP_BLOCK;
        }
}

void pack_q4_k(const void *src, int64_t K, int64_t N, uint8_t *out) {
    const int64_t nsb = K / QK;
    const size_t row_bytes = (size_t)nsb * Q4K_BLOCK;
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

}  // namespace

void vnni_pack(ggml_type type, const void *src, int64_t K, int64_t N, void *dst) {
    Header h = {MAGIC, (int32_t)type, K, N};
    memset(dst, 0, 64);
    memcpy(dst, &h, sizeof h);
    if (type == GGML_TYPE_Q4_K) pack_q4_k(src, K, N, (uint8_t *)dst + 64);
    else if (type == GGML_TYPE_Q8_0) pack_q8_0(src, K, N, (uint8_t *)dst + 64);
    else throw Error(std::string("internal error: no VNNI layout for ") + ggml_type_name(type));
}

#ifdef QT_VNNI

namespace {

// x[0..n) (n a multiple of 16) -> int8 codes round(x * 127 / max|x|) (to nearest even, as lrintf), returns the
// scale max|x| / 127.
__attribute__((target("avx512f,avx512bw"))) float quantize_block(const float *x, int64_t n, int8_t *q) {
    __m512 m = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
    const float amax = _mm512_reduce_max_ps(m);
    const __m512 id = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    for (int64_t i = 0; i < n; i += 16) {
        const __m512i v = _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), id),
                                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtsepi32_epi8(v));
    }
    return amax / 127.0f;
}

// One column's activations: int8 codes with one scale per `block` values (256 for Q4_K, 32 for Q8_0), and the
// code sums per 32 (Q4_K's mins) or the codes shifted to unsigned (Q8_0).
struct QuantizedColumn {
    std::vector<int8_t> q;
    std::vector<uint8_t> u;
    std::vector<float> scale;
    std::vector<int32_t> sums;

    void set(const float *x, int64_t K, int64_t block) {
        q.resize(K);
        scale.resize(K / block);
        for (int64_t s = 0; s < K / block; s++) scale[s] = quantize_block(x + s * block, block, q.data() + s * block);
        if (block == QK) {
            sums.resize(K / 32);
            for (int64_t j = 0; j < K / 32; j++) {
                int32_t t = 0;
                for (int i = 0; i < 32; i++) t += q[j * 32 + i];
                sums[j] = t;
            }
        } else {
            u.resize(K);
            for (int64_t i = 0; i < K; i++) u[i] = (uint8_t)(q[i] + 128);
        }
    }
};

template <typename T>
inline int32_t load4(const T *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

// Q4_K: 16 rows (one group) x NC columns.
template <int NC>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void q4k_group(const uint8_t *p, int64_t K,
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

// Q8_0: 16 rows (one group) x NC columns.
template <int NC>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void q8_group(const uint8_t *p, int64_t K,
                                                                      const QuantizedColumn *const *cols, float *out[NC]) {
    __m512 acc[NC];
    for (int c = 0; c < NC; c++) acc[c] = _mm512_setzero_ps();
    for (int64_t bk = 0; bk < K / 32; bk++) {
        for (int l = 0; l < (int)Q8_GROUP_BLOCK; l += 64) _mm_prefetch((const char *)p + PREFETCH + l, _MM_HINT_T0);
        const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
        const __m512i corr = _mm512_slli_epi32(_mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)(p + 32))), 7);
        p += 64;
        __m512i S[NC];
        for (int c = 0; c < NC; c++) S[c] = _mm512_setzero_si512();
        for (int ch = 0; ch < 8; ch++) {
            const __m512i w = _mm512_loadu_si512((const void *)(p + 64 * ch));
            for (int c = 0; c < NC; c++)
                S[c] = _mm512_dpbusd_epi32(S[c], _mm512_set1_epi32(load4(cols[c]->u.data() + bk * 32 + 4 * ch)), w);
        }
        p += 512;
        for (int c = 0; c < NC; c++) {
            const __m512 dd = _mm512_mul_ps(d, _mm512_set1_ps(cols[c]->scale[bk]));
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(S[c], corr)), dd, acc[c]);
        }
    }
    for (int c = 0; c < NC; c++) _mm512_storeu_ps(out[c], acc[c]);
}

template <int NC>
void group_dot(ggml_type type, const uint8_t *p, int64_t K, const QuantizedColumn *const *cols, float *out[NC]) {
    if (type == GGML_TYPE_Q4_K) q4k_group<NC>(p, K, cols, out);
    else q8_group<NC>(p, K, cols, out);
}

void vnni_op(ggml_tensor *dst, int ith, int nth, void *) {
    const ggml_tensor *w = dst->src[0], *x = dst->src[1];
    Header h;
    memcpy(&h, w->data, sizeof h);
    const ggml_type type = (ggml_type)h.type;
    const int64_t K = h.K, N = h.N, ncols = x->ne[1], groups = N / 16;
    const int64_t per = (groups + nth - 1) / nth, g0 = std::min(groups, per * ith), g1 = std::min(groups, g0 + per);
    if (g0 >= g1) return;
    static thread_local std::vector<QuantizedColumn> qx;
    if ((int64_t)qx.size() < ncols) qx.resize(ncols);
    for (int64_t c = 0; c < ncols; c++)
        qx[c].set((const float *)((const char *)x->data + c * x->nb[1]), K, type == GGML_TYPE_Q4_K ? QK : 32);
    const uint8_t *base = (const uint8_t *)w->data + 64;
    const size_t gb = group_bytes(type, K);
    for (int64_t c0 = 0; c0 < ncols; c0 += 4) {
        const int nc = (int)std::min<int64_t>(4, ncols - c0);
        const QuantizedColumn *cols[4] = {};
        for (int c = 0; c < nc; c++) cols[c] = &qx[c0 + c];
        for (int64_t g = g0; g < g1; g++) {
            float *out[4];
            for (int c = 0; c < nc; c++) out[c] = (float *)((char *)dst->data + (c0 + c) * dst->nb[1]) + g * 16;
            const uint8_t *p = base + (size_t)g * gb;
            switch (nc) {
                case 1: group_dot<1>(type, p, K, cols, out); break;
                case 2: group_dot<2>(type, p, K, cols, out); break;
                case 3: group_dot<3>(type, p, K, cols, out); break;
                default: group_dot<4>(type, p, K, cols, out); break;
            }
        }
    }
}

}  // namespace

bool vnni_available() {
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
        throw Error("internal error: packed weight used with a mismatched input");
    ggml_tensor *args[] = {w, x};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, h.N, x->ne[1], 1, 1, args, 2, vnni_op, GGML_N_TASKS_MAX, nullptr);
}

#else

bool vnni_available() { return false; }

ggml_tensor *matmul(ggml_context *ctx, ggml_tensor *w, ggml_tensor *x) {
    if (w->type == GGML_TYPE_I8) throw Error("internal error: packed weights need x86-64");
    return ggml_mul_mat(ctx, w, x);
}

#endif

}  // namespace qt

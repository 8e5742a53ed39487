// fused_attention.cpp: see fused_attention.h. Work is split by key/value head: a thread writes the cache rows of its heads
// and then attends with the query heads that share them, so no thread reads what another one writes.
#include "kernels/fused_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu_isa.h"

#if defined(__x86_64__)
#define QT_FUSED_X86 1
#include "kernels/avx2_math.h"
#include "kernels/fused_attention_steps.h"
#elif defined(__aarch64__)
#define QT_FUSED_NEON 1
#include "kernels/neon_math.h"
#endif

namespace qt {

#if defined(QT_FUSED_X86) || defined(QT_FUSED_NEON)

namespace {

inline const float *col(const ggml_tensor *t, int64_t c) {
    return (const float *)((const char *)t->data + c * t->nb[1]);
}
inline float *row(ggml_tensor *t, int64_t r) { return (float *)((char *)t->data + r * t->nb[1]); }

#if defined(QT_FUSED_X86)
// The vector steps of the attention, one struct per ISA level (fused_attention_steps.h): dot, axpy (y += a * x) and
// softmax (s[0..n) -> exp(s - max) / sum, the reference's float32 softmax; s has room for n rounded up to 16).
struct Avx2 {
    static float dot(const float *a, const float *b, int n);
    static void axpy(float a, const float *x, float *y, int n);
    static void softmax(float *s, int n);
};

// AVX2: 8 lanes with a scalar tail (head_dim is even, not always a multiple of 8).
__attribute__((target("avx2,fma"))) float Avx2::dot(const float *a, const float *b, int n) {
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float sum = hsum8(acc);
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

__attribute__((target("avx2,fma"))) void Avx2::axpy(float a, const float *x, float *y, int n) {
    const __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

__attribute__((target("avx2,fma"))) void Avx2::softmax(float *s, int n) {
    float mx = -INFINITY;
    for (int j = 0; j < n; j++) mx = std::max(mx, s[j]);
    const int n8 = (n + 7) / 8 * 8;
    const __m256 m = _mm256_set1_ps(mx);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256 sum = _mm256_setzero_ps();
    for (int j = 0; j < n8; j += 8) {
        const __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n - j), lane));  // lanes < n
        const __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), m)), keep);
        _mm256_storeu_ps(s + j, e);
        sum = _mm256_add_ps(sum, e);
    }
    const float inv = 1.0f / hsum8(sum);
    for (int j = 0; j < n; j++) s[j] *= inv;
}
#endif  // QT_FUSED_X86

#if defined(QT_FUSED_NEON)
// NEON: 4 lanes with a scalar tail, the AVX2 steps' arithmetic (exp4 is exp8's polynomial).
struct Neon {
    static float dot(const float *a, const float *b, int n) {
        float32x4_t acc = vdupq_n_f32(0.0f);
        int i = 0;
        for (; i + 4 <= n; i += 4) acc = vfmaq_f32(acc, vld1q_f32(a + i), vld1q_f32(b + i));
        float sum = vaddvq_f32(acc);
        for (; i < n; i++) sum += a[i] * b[i];
        return sum;
    }
    static void axpy(float a, const float *x, float *y, int n) {
        const float32x4_t av = vdupq_n_f32(a);
        int i = 0;
        for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_f32(vld1q_f32(y + i), av, vld1q_f32(x + i)));
        for (; i < n; i++) y[i] += a * x[i];
    }
    static void softmax(float *s, int n) {
        float mx = -INFINITY;
        for (int j = 0; j < n; j++) mx = std::max(mx, s[j]);
        const float32x4_t m = vdupq_n_f32(mx);
        const int32x4_t lane = {0, 1, 2, 3};
        float32x4_t sum = vdupq_n_f32(0.0f);
        for (int j = 0; j < n; j += 4) {
            const uint32x4_t keep = vcltq_s32(lane, vdupq_n_s32(n - j));  // lanes < n
            const float32x4_t e =
                vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(exp4(vsubq_f32(vld1q_f32(s + j), m))), keep));
            vst1q_f32(s + j, e);
            sum = vaddq_f32(sum, e);
        }
        const float inv = 1.0f / vaddvq_f32(sum);
        for (int j = 0; j < n; j++) s[j] *= inv;
    }
};
#endif  // QT_FUSED_NEON

// RMSNorm over one head (ggml's: the mean square summed in double) times w, then NeoX RoPE: the halves rotate
// by angles th[i] given as cos / sin tables of head_dim / 2.
void norm_rope(const float *x, const float *w, float eps, const float *cs, const float *sn, int hd, float *out) {
    double ss = 0;
    for (int i = 0; i < hd; i++) ss += (double)x[i] * x[i];
    const float scale = 1.0f / std::sqrt((float)(ss / hd) + eps);
    const int half = hd / 2;
    for (int i = 0; i < half; i++) {
        const float a = x[i] * scale * w[i], b = x[i + half] * scale * w[i + half];
        out[i] = a * cs[i] - b * sn[i];
        out[i + half] = b * cs[i] + a * sn[i];
    }
}

template <class V>
void op_attention(ggml_tensor *dst, int ith, int nth, void *userdata) {
    const AttentionShape &hp = *(const AttentionShape *)userdata;
    const ggml_tensor *qkv = dst->src[0], *qn = dst->src[1], *kn = dst->src[2], *pos = dst->src[3];
    ggml_tensor *kc = dst->src[4], *vc = dst->src[5];
    const int hd = hp.head_dim, H = hp.n_head, Hkv = hp.n_head_kv, G = H / Hkv, half = hd / 2;
    const int64_t n = qkv->ne[1];
    const int hk0 = Hkv * ith / nth, hk1 = Hkv * (ith + 1) / nth;
    if (hk0 >= hk1) return;

    // Angles as the reference computes them: inv_freq = 1 / base^(2i / hd) and pos * inv_freq in float32.
    static thread_local std::vector<float> cs, sn, q, s;
    cs.resize((size_t)n * half);
    sn.resize((size_t)n * half);
    q.resize(hd);
    const int32_t *p = (const int32_t *)pos->data;
    for (int i = 0; i < half; i++) {
        const float inv_freq = 1.0f / std::pow(hp.rope_base, (float)(2 * i) / (float)hd);
        for (int64_t t = 0; t < n; t++) {
            const float th = (float)p[t] * inv_freq;
            cs[t * half + i] = std::cos(th);
            sn[t * half + i] = std::sin(th);
        }
    }
    const float *wq = (const float *)qn->data, *wk = (const float *)kn->data;

    for (int64_t t = 0; t < n; t++)
        for (int hk = hk0; hk < hk1; hk++) {
            const float *x = col(qkv, t);
            norm_rope(x + (size_t)(H + hk) * hd, wk, hp.eps, &cs[t * half], &sn[t * half], hd,
                      row(kc, p[t]) + (size_t)hk * hd);
            memcpy(row(vc, p[t]) + (size_t)hk * hd, x + (size_t)(H + Hkv + hk) * hd, sizeof(float) * hd);
        }

    const float scale = 1.0f / std::sqrt((float)hd);
    for (int64_t t = 0; t < n; t++) {
        const int n_keys = p[t] + 1;
        s.resize((size_t)(n_keys + 15) / 16 * 16);
        for (int h = hk0 * G; h < hk1 * G; h++) {
            const int hk = h / G;
            norm_rope(col(qkv, t) + (size_t)h * hd, wq, hp.eps, &cs[t * half], &sn[t * half], hd, q.data());
            for (int j = 0; j < n_keys; j++) s[j] = V::dot(q.data(), row(kc, j) + (size_t)hk * hd, hd) * scale;
            V::softmax(s.data(), n_keys);
            float *out = (float *)((char *)dst->data + t * dst->nb[1]) + (size_t)h * hd;
            memset(out, 0, sizeof(float) * hd);
            for (int j = 0; j < n_keys; j++) V::axpy(s[j], row(vc, j) + (size_t)hk * hd, out, hd);
        }
    }
}

}  // namespace

bool fused_attention_fits(const AttentionShape &hp) {
#if defined(QT_FUSED_X86)
    const bool level = isa_at_least(IsaLevel::avx2);
#else
    const bool level = isa_at_least(IsaLevel::neon);
#endif
    return level && hp.head_dim % 2 == 0 && hp.head_dim > 0 && hp.n_head_kv > 0 && hp.n_head % hp.n_head_kv == 0;
}

ggml_tensor *fused_attention(ggml_context *ctx, ggml_tensor *qkv, ggml_tensor *q_norm, ggml_tensor *k_norm,
                             ggml_tensor *pos, ggml_tensor *kc, ggml_tensor *vc, const AttentionShape &hp) {
    const int64_t hd = hp.head_dim, H = hp.n_head, Hkv = hp.n_head_kv;
    if (!fused_attention_fits(hp) || qkv->type != GGML_TYPE_F32 || qkv->ne[0] != (H + 2 * Hkv) * hd ||
        qkv->nb[0] != sizeof(float) || pos->type != GGML_TYPE_I32 || pos->ne[0] != qkv->ne[1] ||
        kc->type != GGML_TYPE_F32 || vc->type != GGML_TYPE_F32 || kc->ne[0] != hd * Hkv || vc->ne[0] != hd * Hkv ||
        q_norm->type != GGML_TYPE_F32 || k_norm->type != GGML_TYPE_F32 || q_norm->ne[0] != hd || k_norm->ne[0] != hd)
        throw Error("internal error: fused attention on mismatched tensors");
    ggml_tensor *args[] = {qkv, q_norm, k_norm, pos, kc, vc};
#if defined(QT_FUSED_X86)
    const bool avx512 = avx512_emulated || isa_at_least(IsaLevel::avx512);
    const ggml_custom_op_t op = avx512 ? op_attention<Avx512> : op_attention<Avx2>;
#else
    const ggml_custom_op_t op = op_attention<Neon>;
#endif
    return ggml_custom_4d(ctx, GGML_TYPE_F32, H * hd, qkv->ne[1], 1, 1, args, 6, op, GGML_N_TASKS_MAX, (void *)&hp);
}

#else

bool fused_attention_fits(const AttentionShape &) { return false; }

ggml_tensor *fused_attention(ggml_context *, ggml_tensor *, ggml_tensor *, ggml_tensor *, ggml_tensor *, ggml_tensor *,
                             ggml_tensor *, const AttentionShape &) {
    throw Error("internal error: fused attention needs x86-64 or ARM64");
}

#endif

}  // namespace qt

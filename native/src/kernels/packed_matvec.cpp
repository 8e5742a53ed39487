// packed_matvec.cpp: see packed_matvec.h. The packing, the products' work split and epilogues, and the one dispatch
// point between the kernels of each ISA: AVX-512 (packed_matvec_avx512.cpp, only used after vnni_available() said
// yes, so the extension still loads on any x86-64 CPU), AVX2 (packed_matvec_avx2.cpp: the same layout, 8 rows, half
// a chunk, per register), NEON (packed_matvec_neon.cpp); the AMX tiles' BF16 product is here.
//
// Packed layouts, after a 64-byte header (magic, type, K, N, BF16 layout), in groups of 16 rows; 64-byte "chunks" hold 4
// codes of each of the 16 rows (lane r = row r):
//   Q4_K, per super-block of 256 values: d[16], dmin[16] (FP32), then per sub-block i of 32 values: sc[16],
//     m[16] (6-bit, a byte each) and 4 chunks, chunk c holding values 8c..8c+7 of the sub-block: byte b of a
//     lane = code(8c + b) | code(8c + 4 + b) << 4. The weight is d*sc*code - dmin*m, as in Q4_K.
//   Q8_0, per block of 32 values: d[16] (FP16), the sums of each row's 32 codes (int16, for the unsigned
//     activations below), then 8 chunks, chunk c holding values 4c..4c+3. The weight is d*code.
//   BF16 (AVX-512 kernel): per 2 values a chunk holding values k, k + 1 of each row; for the AVX2 kernel the
//     GGUF's 16 rows as they are (the header says which, Bf16Layout).
// vpdpbusd multiplies unsigned by signed bytes: Q4_K codes are unsigned already; for Q8_0 the activations are
// shifted to unsigned (a + 128) and 128 * sum(codes) is taken off again.
#include "kernels/packed_matvec.h"
#include "kernels/packed_matvec_internal.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/conv_amx.h"
#include "kernels/cpu_isa.h"
#include "common.h"

// QT_PACKED: the packed products exist on this architecture; QT_VNNI: with the x86 kernels (AVX-512, AMX) here.
#if defined(__x86_64__)
#define QT_PACKED 1
#define QT_VNNI 1
#include <immintrin.h>
#elif defined(__aarch64__)
#define QT_PACKED 1
#endif

namespace qt {

namespace {

using packed::Column;
using packed::load4;
using packed::PREFETCH;
using packed::Q8_GROUP_BLOCK;
using packed::QK;
using packed::SUB_BYTES;
using packed::SUPER_BYTES;

constexpr uint32_t MAGIC = 0x4e4e5651;  // "QVNN"
constexpr size_t Q4K_BLOCK = 144;       // bytes of one: d, dmin (FP16), 12 bytes of scales/mins, 128 of codes
constexpr size_t Q8_BLOCK = 34;         // bytes of one Q8_0 block: d (FP16), 32 codes

// How a BF16 weight's groups are laid out: in the chunks above (the AVX-512 kernel), or as the GGUF's 16 rows
// one after the other (the AVX2 kernel, which sums each row in the order ggml's own AVX2 product does).
enum class Bf16Layout : int32_t { chunks = 0, rows = 1 };

struct Header {
    uint32_t magic;
    int32_t type;  // ggml_type of the weights it was packed from
    int64_t K, N;
    Bf16Layout bf16_layout;
};

Bf16Layout bf16_layout_for(MatvecKernel k) { return k == MatvecKernel::avx512 ? Bf16Layout::chunks : Bf16Layout::rows; }

size_t group_bytes(ggml_type type, int64_t K) {
    if (type == GGML_TYPE_Q4_K) return (size_t)(K / QK) * SUPER_BYTES;
    if (type == GGML_TYPE_Q8_0) return (size_t)(K / 32) * Q8_GROUP_BLOCK;
    return (size_t)K * 32;  // BF16: 16 rows x 2 bytes per value
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

namespace {

// Q4_K, Q8_0 or BF16 of a shape the packed layout takes.
bool shape_fits(const ggml_tensor *w) {
    if (ggml_n_dims(w) != 2 || w->ne[1] % 16 != 0) return false;
    return (w->type == GGML_TYPE_Q4_K && w->ne[0] % QK == 0) || (w->type == GGML_TYPE_Q8_0 && w->ne[0] % 32 == 0) ||
           (w->type == GGML_TYPE_BF16 && w->ne[0] % 4 == 0);
}

}  // namespace

bool vnni_fits(const ggml_tensor *w) { return shape_fits(w) && (w->type != GGML_TYPE_BF16 || bf16_dot_available()); }

MatvecKernel matvec_kernel(ggml_type type) {
    if (type != GGML_TYPE_Q4_K && type != GGML_TYPE_Q8_0 && type != GGML_TYPE_BF16) return MatvecKernel::none;
    if (type == GGML_TYPE_BF16 ? bf16_dot_available() : vnni_available()) return MatvecKernel::avx512;
#if defined(__x86_64__)
    if (isa_at_least(IsaLevel::avx2))
        return cpu_isa().avx_vnni && type != GGML_TYPE_BF16 ? MatvecKernel::avx2_vnni : MatvecKernel::avx2;
#elif defined(__aarch64__)
    if (isa_at_least(IsaLevel::neon) && type != GGML_TYPE_BF16)
        return cpu_isa().dotprod ? MatvecKernel::neon_dotprod : MatvecKernel::neon;
#endif
    return MatvecKernel::none;
}

const char *matvec_kernel_name(MatvecKernel k) {
    switch (k) {
        case MatvecKernel::avx2: return "avx2";
        case MatvecKernel::avx2_vnni: return "avx2-vnni";
        case MatvecKernel::avx512: return "avx512";
        case MatvecKernel::neon: return "neon";
        case MatvecKernel::neon_dotprod: return "neon-dotprod";
        default: return "none";
    }
}

bool packed_fits(const ggml_tensor *w) { return shape_fits(w) && matvec_kernel(w->type) != MatvecKernel::none; }

static_assert(sizeof(Header) <= 64, "the header fits its 64 bytes");

const char *packed_type_name(const ggml_tensor *w) {
    Header h;
    memcpy(&h, w->data, sizeof h);
    return ggml_type_name((ggml_type)h.type);
}

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

void pack_bf16(const void *src, int64_t K, int64_t N, uint8_t *out) {
    const uint16_t *w = (const uint16_t *)src;
    for (int64_t g = 0; g < N / 16; g++)
        for (int64_t k = 0; k < K; k += 2, out += 64)
            for (int r = 0; r < 16; r++) {
                const uint16_t *row = w + (size_t)(g * 16 + r) * K;
                memcpy(out + 4 * r, row + k, 4);
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
    Header h = {MAGIC, (int32_t)type, K, N, bf16_layout_for(matvec_kernel(type))};
    memset(dst, 0, 64);
    memcpy(dst, &h, sizeof h);
    if (type == GGML_TYPE_Q4_K)
        pack_q4_k(src, K, N, (uint8_t *)dst + 64);
    else if (type == GGML_TYPE_Q8_0)
        pack_q8_0(src, K, N, (uint8_t *)dst + 64);
    else if (type == GGML_TYPE_BF16 && h.bf16_layout == Bf16Layout::rows)
        memcpy((uint8_t *)dst + 64, src, (size_t)K * N * 2);
    else if (type == GGML_TYPE_BF16)
        pack_bf16(src, K, N, (uint8_t *)dst + 64);
    else
        throw Error(std::string("internal error: no VNNI layout for ") + ggml_type_name(type));
}

#ifdef QT_PACKED

namespace {

// The activation quantizer of a kernel (each gives the same numbers).
float quantize_for(MatvecKernel kernel, const float *x, int64_t n, int8_t *q) {
#ifdef QT_VNNI
    if (kernel == MatvecKernel::avx512) return packed::avx512_quantize_block(x, n, q);
    return packed::avx2_quantize_block(x, n, q);
#else
    return packed::neon_quantize_block(x, n, q);
#endif
}

// Whether a kernel reads Q8_0 activations as unsigned bytes (code + 128): the VNNI ones.
bool unsigned_q8_activations(MatvecKernel kernel) {
    return kernel == MatvecKernel::avx512 || kernel == MatvecKernel::avx2_vnni;
}

}  // namespace

// The forms are made with the quantizer of the kernel that reads them (the same numbers at every level).
void packed::Column::set(ggml_type type, const float *x, int64_t K, MatvecKernel kernel) {
    if (type == GGML_TYPE_BF16) {
        bf.resize(K / 2);  // pairs: value 2i in the low half (little-endian BF16 row)
        ggml_fp32_to_bf16_row(x, (ggml_bf16_t *)bf.data(), K);  // round to nearest even, as ggml's mat-vec
        if (kernel != MatvecKernel::avx512) {
            bf32.resize(K);
            ggml_bf16_to_fp32_row((const ggml_bf16_t *)bf.data(), bf32.data(), K);
        }
        return;
    }
    const int64_t block = type == GGML_TYPE_Q4_K ? QK : 32;
    q.resize(K);
    scale.resize(K / block);
    for (int64_t s = 0; s < K / block; s++) scale[s] = quantize_for(kernel, x + s * block, block, q.data() + s * block);
    if (block == QK) {
        sums.resize(K / 32);
        for (int64_t j = 0; j < K / 32; j++) {
            int32_t t = 0;
            for (int i = 0; i < 32; i++) t += q[j * 32 + i];
            sums[j] = t;
        }
    } else if (unsigned_q8_activations(kernel)) {
        u.resize(K);
        for (int64_t i = 0; i < K; i++) u[i] = (uint8_t)(q[i] + 128);
    }
}

namespace {

#ifdef QT_VNNI

// One 16-row group of a packed BF16 weight times many columns on AMX tiles: the packed layout is the tiles' B
// operand as it is (16 K-pairs x 16 rows = 1 KB per 32 values of K). A: the columns as BF16 rows [n16][K]
// (n16 a multiple of 16, zero-padded), C: [n16][16] sums. K a multiple of 32. The tile configuration is loaded
// here, in the function that uses the tiles.
__attribute__((target("amx-tile,amx-bf16"))) void bf16_group_tiles(const uint16_t *A, int64_t n16, int64_t K,
                                                                   const uint8_t *B, float *C) {
    const TileConfig cfg = tile_config(3);
    _tile_loadconfig(&cfg);
    for (int64_t t0 = 0; t0 < n16; t0 += 16) {
        _tile_zero(0);
        for (int64_t kt = 0; kt < K / 32; kt++) {
            _tile_loadd(1, A + t0 * K + kt * 32, K * 2);
            _tile_loadd(2, B + kt * 1024, 64);
            _tile_dpbf16ps(0, 1, 2);
        }
        _tile_stored(0, C + t0 * 16, 64);
    }
    _tile_release();
}

#endif

// One 16-row group times nc (1..4) of a product's ncols columns on the kernel chosen for the weight's type.
void group_dot(int nc, int64_t ncols, ggml_type type, MatvecKernel kernel, const uint8_t *p, int64_t K,
               const Column *const *cols, float *const *out) {
#ifdef QT_VNNI
    if (kernel != MatvecKernel::avx512)
        return packed::avx2_group_dot(nc, ncols, type, kernel == MatvecKernel::avx2_vnni, p, K, cols, out);
    packed::avx512_group_dot(nc, type, p, K, cols, out);
#else
    (void)ncols;
    packed::neon_group_dot(nc, type, kernel == MatvecKernel::neon_dotprod, p, K, cols, out);
#endif
}

#ifndef QT_VNNI
// The fused layers' epilogues of 16 outputs without x86 SIMD (ARM64), in plain C++.
void swiglu16(const float *g, const float *u, float *out) {
    for (int i = 0; i < 16; i++) out[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void add16(float *out, const float *r) {
    for (int i = 0; i < 16; i++) out[i] += r[i];
}
#endif

struct Packed {
    ggml_type type;
    int64_t K, N;
    const uint8_t *groups;
};

Packed packed_info(const ggml_tensor *w) {
    Header h;
    memcpy(&h, w->data, sizeof h);
    return {(ggml_type)h.type, h.K, h.N, (const uint8_t *)w->data + 64};
}

enum class Epilogue { none, add, swiglu };

inline const float *col(const ggml_tensor *t, int64_t c) {
    return (const float *)((const char *)t->data + c * t->nb[1]);
}
inline float *col(ggml_tensor *t, int64_t c) { return (float *)((char *)t->data + c * t->nb[1]); }

// The weights of one product (1..3, same K), their kernels, and where their 16-row groups ("units" of work) lie
// in the stacked output: weight i's groups are units first[i]..first[i + 1]. For SwiGLU (ws = {gate, up}) a unit
// is a group of both, so the units are gate's groups.
struct ProductWeights {
    Packed w[3];
    MatvecKernel kernel[3];
    int64_t first[4] = {0, 0, 0, 0};
    int nw = 0;

    ProductWeights(const ggml_tensor *const *ws, int n, Epilogue epi) : nw(n) {
        for (int i = 0; i < nw; i++) {
            w[i] = packed_info(ws[i]);
            kernel[i] = matvec_kernel(w[i].type);
            first[i + 1] = first[i] + (epi == Epilogue::swiglu ? (i == 0 ? w[0].N / 16 : 0) : w[i].N / 16);
        }
    }
    int64_t K() const { return w[0].K; }
    int64_t units() const { return first[nw]; }
    // The weight that unit u is a group of (SwiGLU: gate, 0; up's group has the same index).
    int weight_of(int64_t u) const {
        int i = 0;
        while (u >= first[i + 1]) i++;
        return i;
    }
    // Group g of weight i.
    const uint8_t *group(int i, int64_t g) const { return w[i].groups + (size_t)g * group_bytes(w[i].type, K()); }
};

// The columns of x in the forms the weights read, indexed by form_of (Q4_K, Q8_0, BF16).
using ColumnForms = std::vector<Column>[3];
int form_of(ggml_type t) { return t == GGML_TYPE_Q4_K ? 0 : t == GGML_TYPE_Q8_0 ? 1 : 2; }

// x's columns (RMS-normalised with norm_w first when given) in each form the weights need, per thread: every
// thread reads all of x.
const ColumnForms &column_forms(const ProductWeights &pw, const ggml_tensor *x, const ggml_tensor *norm_w, float eps) {
    static thread_local ColumnForms forms;
    static thread_local std::vector<float> xn;
    const int64_t K = pw.K(), ncols = x->ne[1];
    bool need[3] = {false, false, false};
    MatvecKernel kernel_of_form[3] = {};
    for (int i = 0; i < pw.nw; i++) {
        need[form_of(pw.w[i].type)] = true;
        kernel_of_form[form_of(pw.w[i].type)] = pw.kernel[i];
    }
    xn.resize(K);
    for (int64_t c = 0; c < ncols; c++) {
        const float *xc = col(x, c);
        if (norm_w) {  // ggml's rms_norm: the mean square summed in double
            double ss = 0;
            for (int64_t k = 0; k < K; k++) ss += (double)xc[k] * xc[k];
            const float scale = 1.0f / std::sqrt((float)(ss / K) + eps);
            const float *g = (const float *)norm_w->data;
            for (int64_t k = 0; k < K; k++) xn[k] = xc[k] * scale * g[k];
            xc = xn.data();
        }
        for (ggml_type t : {GGML_TYPE_Q4_K, GGML_TYPE_Q8_0, GGML_TYPE_BF16}) {
            if (!need[form_of(t)]) continue;
            std::vector<Column> &f = forms[form_of(t)];
            if ((int64_t)f.size() < ncols) f.resize(ncols);
            f[c].set(t, xc, K, kernel_of_form[form_of(t)]);
        }
    }
    return forms;
}

// The epilogues of 16 outputs, on AVX-512 wherever the CPU has it (the level below has no AVX-512 kernels at all).
struct Epilogue16 {
    void (*swiglu)(const float *g, const float *u, float *out);
    void (*add)(float *out, const float *r);
};

Epilogue16 epilogue16() {
#ifdef QT_VNNI
    if (!avx512_emulated && !isa_at_least(IsaLevel::avx512)) return {packed::avx2_swiglu16, packed::avx2_add16};
    return {packed::avx512_swiglu16, packed::avx512_add16};
#else
    return {swiglu16, add16};
#endif
}

// Many columns of BF16 weights (a prompt's prefill: compute-bound) go to the AMX tiles where there are some.
bool tiles_take(const ProductWeights &pw, int64_t ncols) {
    bool all_bf16 = pw.K() % 32 == 0;
    for (int i = 0; i < pw.nw; i++) all_bf16 &= pw.w[i].type == GGML_TYPE_BF16;
    return all_bf16 && ncols >= 16 && amx_bf16_available();
}

// Units u0..u1 of the product on AMX tiles (tiles_take): all columns of one group at a time.
void product_on_tiles(ggml_tensor *dst, const ProductWeights &pw, const std::vector<Column> &bf16_cols, int64_t ncols,
                      Epilogue epi, const ggml_tensor *res, int64_t u0, int64_t u1) {
    static thread_local std::vector<uint16_t> A;
    static thread_local std::vector<float> cg, cu;
    const Epilogue16 e = epilogue16();
    const int64_t K = pw.K(), n16 = (ncols + 15) / 16 * 16;
    A.assign((size_t)n16 * K, 0);
    for (int64_t c = 0; c < ncols; c++) memcpy(&A[(size_t)c * K], bf16_cols[c].bf.data(), (size_t)K * 2);
    cg.resize((size_t)n16 * 16);
    cu.resize((size_t)n16 * 16);
    for (int64_t u = u0; u < u1; u++) {
#ifdef QT_VNNI
        const int i = pw.weight_of(u);
        bf16_group_tiles(A.data(), n16, K, pw.group(i, u - pw.first[i]), cg.data());
        if (epi == Epilogue::swiglu) bf16_group_tiles(A.data(), n16, K, pw.group(1, u), cu.data());
#else
        throw Error("internal error: AMX tiles on a CPU without them");  // tiles_take is false there
#endif
        for (int64_t c = 0; c < ncols; c++) {
            float *out = col(dst, c) + u * 16;
            if (epi == Epilogue::swiglu) {
                e.swiglu(&cg[c * 16], &cu[c * 16], out);
                continue;
            }
            memcpy(out, &cg[c * 16], 16 * sizeof(float));
            if (epi == Epilogue::add) e.add(out, col(res, c) + u * 16);
        }
    }
}

// Units u0..u1 of the product on the mat-vec kernels: groups outside, columns inside, so a group's weights (at
// most ~100 KB) come from memory once and stay in the core's cache for the other columns (a prompt's prefill has
// dozens).
void product_by_groups(ggml_tensor *dst, const ProductWeights &pw, const ColumnForms &forms, int64_t ncols,
                       Epilogue epi, const ggml_tensor *res, int64_t u0, int64_t u1) {
    const Epilogue16 e = epilogue16();
    const int64_t K = pw.K();
    alignas(64) float gate[4][16], up[4][16];
    for (int64_t u = u0; u < u1; u++) {
        for (int64_t c0 = 0; c0 < ncols; c0 += 4) {
            const int nc = (int)std::min<int64_t>(4, ncols - c0);
            if (epi == Epilogue::swiglu) {
                float *g[4] = {gate[0], gate[1], gate[2], gate[3]}, *o[4] = {up[0], up[1], up[2], up[3]};
                const Column *cg[4] = {}, *cu[4] = {};
                for (int c = 0; c < nc; c++) {
                    cg[c] = &forms[form_of(pw.w[0].type)][c0 + c];
                    cu[c] = &forms[form_of(pw.w[1].type)][c0 + c];
                }
                group_dot(nc, ncols, pw.w[0].type, pw.kernel[0], pw.group(0, u), K, cg, g);
                group_dot(nc, ncols, pw.w[1].type, pw.kernel[1], pw.group(1, u), K, cu, o);
                for (int c = 0; c < nc; c++) e.swiglu(gate[c], up[c], col(dst, c0 + c) + u * 16);
                continue;
            }
            const int i = pw.weight_of(u);
            const Column *cs[4] = {};
            float *out[4] = {};
            for (int c = 0; c < nc; c++) {
                cs[c] = &forms[form_of(pw.w[i].type)][c0 + c];
                out[c] = col(dst, c0 + c) + u * 16;
            }
            group_dot(nc, ncols, pw.w[i].type, pw.kernel[i], pw.group(i, u - pw.first[i]), K, cs, out);
            if (epi == Epilogue::add)
                for (int c = 0; c < nc; c++) e.add(out[c], col(res, c0 + c) + u * 16);
        }
    }
}

// The body of every packed product: x's columns (RMS-normalised with norm_w first when given), times the
// weights ws[0..nw) whose rows are stacked in dst; Epilogue::add adds res, Epilogue::swiglu takes ws = {gate,
// up} and writes silu(gate x) * (up x). The work is split in 16-row groups (gate and up together for SwiGLU).
void packed_product(ggml_tensor *dst, const ggml_tensor *x, const ggml_tensor *norm_w, float eps,
                    const ggml_tensor *const *ws, int nw, Epilogue epi, const ggml_tensor *res, int ith, int nth) {
    const ProductWeights pw(ws, nw, epi);
    const auto [u0, u1] = thread_range(pw.units(), ith, nth);
    if (u0 >= u1) return;
    const ColumnForms &forms = column_forms(pw, x, norm_w, eps);
    const int64_t ncols = x->ne[1];
    if (tiles_take(pw, ncols))
        product_on_tiles(dst, pw, forms[form_of(GGML_TYPE_BF16)], ncols, epi, res, u0, u1);
    else
        product_by_groups(dst, pw, forms, ncols, epi, res, u0, u1);
}

// The custom ops (ggml's signatures; eps comes by userdata, a pointer into the model's hyper-parameters).
void op_matmul(ggml_tensor *dst, int ith, int nth, void *) {
    packed_product(dst, dst->src[1], nullptr, 0.0f, &dst->src[0], 1, Epilogue::none, nullptr, ith, nth);
}

void op_matmul_add(ggml_tensor *dst, int ith, int nth, void *) {
    packed_product(dst, dst->src[1], nullptr, 0.0f, &dst->src[0], 1, Epilogue::add, dst->src[2], ith, nth);
}

// src: x, norm weight, then 1..3 weights.
void op_norm_matmul(ggml_tensor *dst, int ith, int nth, void *eps) {
    int nw = 0;
    while (nw < 3 && dst->src[2 + nw]) nw++;
    packed_product(dst, dst->src[0], dst->src[1], *(const float *)eps, &dst->src[2], nw, Epilogue::none, nullptr, ith,
                   nth);
}

void op_norm_swiglu(ggml_tensor *dst, int ith, int nth, void *eps) {
    packed_product(dst, dst->src[0], dst->src[1], *(const float *)eps, &dst->src[2], 2, Epilogue::swiglu, nullptr, ith,
                   nth);
}

void check_input(const ggml_tensor *w, const ggml_tensor *x) {
    Header h;
    memcpy(&h, w->data, sizeof h);
    if (w->type != GGML_TYPE_I8 || h.magic != MAGIC || x->type != GGML_TYPE_F32 || x->ne[0] != h.K ||
        x->nb[0] != sizeof(float) || x->ne[2] != 1 || x->ne[3] != 1)
        throw Error("internal error: packed weight used with a mismatched input");
    const MatvecKernel k = matvec_kernel((ggml_type)h.type);
    if (k == MatvecKernel::none || (h.type == GGML_TYPE_BF16 && h.bf16_layout != bf16_layout_for(k)))
        throw Error("internal error: packed weight without a kernel for its layout at this ISA level");
}

int64_t rows_of(const ggml_tensor *w) {
    Header h;
    memcpy(&h, w->data, sizeof h);
    return h.N;
}

}  // namespace

bool vnni_available() { return avx512_emulated || cpu_isa().avx512_vnni; }

bool bf16_dot_available() { return avx512_emulated || (vnni_available() && cpu_isa().avx512_bf16); }

bool is_packed(const ggml_tensor *w) { return w && w->type == GGML_TYPE_I8; }

ggml_tensor *matmul(ggml_context *ctx, ggml_tensor *w, ggml_tensor *x) {
    if (!is_packed(w)) return ggml_mul_mat(ctx, w, x);
    check_input(w, x);
    ggml_tensor *args[] = {w, x};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, rows_of(w), x->ne[1], 1, 1, args, 2, op_matmul, GGML_N_TASKS_MAX,
                          nullptr);
}

ggml_tensor *matmul_add(ggml_context *ctx, ggml_tensor *w, ggml_tensor *x, ggml_tensor *res) {
    check_input(w, x);
    if (res->type != GGML_TYPE_F32 || res->ne[0] != rows_of(w) || res->ne[1] != x->ne[1] || res->nb[0] != sizeof(float))
        throw Error("internal error: residual of a mismatched shape");
    ggml_tensor *args[] = {w, x, res};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, rows_of(w), x->ne[1], 1, 1, args, 3, op_matmul_add, GGML_N_TASKS_MAX,
                          nullptr);
}

ggml_tensor *norm_matmul(ggml_context *ctx, ggml_tensor *x, ggml_tensor *norm_w, const float *eps,
                         const std::vector<ggml_tensor *> &ws) {
    if (ws.empty() || ws.size() > 3 || norm_w->type != GGML_TYPE_F32 || norm_w->ne[0] != x->ne[0])
        throw Error("internal error: bad normalised product");
    int64_t rows = 0;
    std::vector<ggml_tensor *> args = {x, norm_w};
    for (ggml_tensor *w : ws) {
        check_input(w, x);
        rows += rows_of(w);
        args.push_back(w);
    }
    return ggml_custom_4d(ctx, GGML_TYPE_F32, rows, x->ne[1], 1, 1, args.data(), (int)args.size(), op_norm_matmul,
                          GGML_N_TASKS_MAX, (void *)eps);
}

ggml_tensor *norm_swiglu(ggml_context *ctx, ggml_tensor *x, ggml_tensor *norm_w, const float *eps, ggml_tensor *gate,
                         ggml_tensor *up) {
    check_input(gate, x);
    check_input(up, x);
    if (rows_of(gate) != rows_of(up) || norm_w->type != GGML_TYPE_F32 || norm_w->ne[0] != x->ne[0])
        throw Error("internal error: bad SwiGLU product");
    ggml_tensor *args[] = {x, norm_w, gate, up};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, rows_of(gate), x->ne[1], 1, 1, args, 4, op_norm_swiglu, GGML_N_TASKS_MAX,
                          (void *)eps);
}

#else

bool vnni_available() { return false; }
bool bf16_dot_available() { return false; }
bool is_packed(const ggml_tensor *w) { return w && w->type == GGML_TYPE_I8; }

ggml_tensor *matmul(ggml_context *ctx, ggml_tensor *w, ggml_tensor *x) {
    if (w->type == GGML_TYPE_I8) throw Error("internal error: packed weights need x86-64 or ARM64");
    return ggml_mul_mat(ctx, w, x);
}

ggml_tensor *matmul_add(ggml_context *, ggml_tensor *, ggml_tensor *, ggml_tensor *) {
    throw Error("internal error: packed weights need x86-64 or ARM64");
}

ggml_tensor *norm_matmul(ggml_context *, ggml_tensor *, ggml_tensor *, const float *,
                         const std::vector<ggml_tensor *> &) {
    throw Error("internal error: packed weights need x86-64 or ARM64");
}

ggml_tensor *norm_swiglu(ggml_context *, ggml_tensor *, ggml_tensor *, const float *, ggml_tensor *, ggml_tensor *) {
    throw Error("internal error: packed weights need x86-64 or ARM64");
}

#endif

}  // namespace qt

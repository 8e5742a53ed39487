// x86_simd.h: the x86 intrinsics of the engine's AVX-512 kernels, and how their functions are compiled.
//
// A normal build takes the intrinsics from <immintrin.h> and compiles each SIMD function for its ISA through a target
// attribute (QT_TARGET), so that the extension loads on any x86-64 CPU and a kernel runs only after cpu_isa.h said
// its level is there. A test build with QT_SIMD_EMULATED (scripts/build-emulated) takes the same intrinsics from
// SIMDe, a portable C implementation of them: the same kernel source then runs, slowly, on a CPU without AVX-512, so
// that its tests run where the CI machine cannot execute the instructions themselves.
#pragma once

#if defined(__x86_64__)

#include <cstdint>
#include <cstring>

#if defined(QT_SIMD_EMULATED)
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#ifndef _MM_FROUND_NO_EXC
#define _MM_FROUND_NO_EXC SIMDE_MM_FROUND_NO_EXC
#endif
#define QT_TARGET(...)

// SIMDe 0.8's masked loads and stores touch all 64 bytes (a store writes zeros to the lanes its mask leaves out);
// the instructions touch only the lanes in the mask, which the kernels rely on at the end of a row.
namespace qt::emulated {
template <class V, int N, class L>
inline V masked_load(uint64_t k, const void *p) {
    V v;
    std::memset(&v, 0, sizeof v);
    for (int i = 0; i < N; i++)
        if (k >> i & 1) std::memcpy((char *)&v + i * sizeof(L), (const char *)p + i * sizeof(L), sizeof(L));
    return v;
}
template <class V, int N, class L>
inline void masked_store(void *p, uint64_t k, V v) {
    for (int i = 0; i < N; i++)
        if (k >> i & 1) std::memcpy((char *)p + i * sizeof(L), (const char *)&v + i * sizeof(L), sizeof(L));
}
}  // namespace qt::emulated
#undef _mm512_maskz_loadu_ps
#undef _mm512_maskz_loadu_epi32
#undef _mm512_maskz_loadu_epi16
#undef _mm512_mask_storeu_ps
#undef _mm512_mask_storeu_epi32
#undef _mm512_mask_storeu_epi16
#undef _mm256_mask_storeu_epi16
#define _mm512_maskz_loadu_ps(k, p) (qt::emulated::masked_load<__m512, 16, float>((k), (p)))
#define _mm512_maskz_loadu_epi32(k, p) (qt::emulated::masked_load<__m512i, 16, int32_t>((k), (p)))
#define _mm512_maskz_loadu_epi16(k, p) (qt::emulated::masked_load<__m512i, 32, int16_t>((k), (p)))
#define _mm512_mask_storeu_ps(p, k, v) (qt::emulated::masked_store<__m512, 16, float>((p), (k), (v)))
#define _mm512_mask_storeu_epi32(p, k, v) (qt::emulated::masked_store<__m512i, 16, int32_t>((p), (k), (v)))
#define _mm512_mask_storeu_epi16(p, k, v) (qt::emulated::masked_store<__m512i, 32, int16_t>((p), (k), (v)))
#define _mm256_mask_storeu_epi16(p, k, v) (qt::emulated::masked_store<__m256i, 16, int16_t>((p), (k), (v)))
// Three the kernels use that SIMDe 0.8 lacks, written with ones it has: the same results.
#define _mm512_cvtepu8_epi32(a) (_mm512_cvtepi16_epi32(_mm256_cvtepu8_epi16(a)))
#define _mm512_cvt_roundps_epi32(a, r) (_mm512_cvtps_epi32(_mm512_roundscale_ps((a), (r))))
namespace qt::emulated {
// The sum of the 16 lanes in the order of GCC's _mm512_reduce_add_ps: halves, quarters, then pairs.
inline float reduce_add(__m512 v) {
    float f[16], h[8], q[4];
    _mm512_storeu_ps(f, v);
    for (int i = 0; i < 8; i++) h[i] = f[i + 8] + f[i];
    for (int i = 0; i < 4; i++) q[i] = h[i + 4] + h[i];
    return (q[1] + q[3]) + (q[0] + q[2]);
}
}  // namespace qt::emulated
#define _mm512_reduce_add_ps(v) (qt::emulated::reduce_add(v))
#else
#include <immintrin.h>
#define QT_TARGET(...) __attribute__((target(__VA_ARGS__)))
// GCC 12's AVX-512 headers pass _mm512_undefined_ps() through masked builtins: false (maybe-)uninitialized
// warnings in every file that uses them.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace qt {

// 32 BF16 values (16 pairs) from their bits; a copy, which the compiler drops (a vector cast has no SIMDe form).
QT_TARGET("avx512f") inline __m512bh as_bf16x32(__m512i bits) {
    __m512bh v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
}

}  // namespace qt

#endif

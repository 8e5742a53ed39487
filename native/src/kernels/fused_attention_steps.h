// fused_attention_steps.h: the vector steps of the fused attention (fused_attention.cpp) that live in a file of their
// own ISA: dot, axpy (y += a * x) and softmax (s[0..n) -> exp(s - max) / sum, the reference's float32 softmax; s has
// room for n rounded up to 16).
#pragma once

namespace qt {

#if defined(__x86_64__)
// 16 lanes with masked tails (fused_attention_avx512.cpp).
struct Avx512 {
    static float dot(const float *a, const float *b, int n);
    static void axpy(float a, const float *x, float *y, int n);
    static void softmax(float *s, int n);
};
#endif

}  // namespace qt

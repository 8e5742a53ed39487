// common.h: what every part of the engine may use, kernels included: the error type, the per-thread split of a
// ggml custom op's work, the huge-page hint for large prepared weights and float -> BF16 rounding. Depends on
// nothing but the C++ library and ggml's header (the layout rule, native/check_layout.py).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>

namespace qt {

// Every failure the caller should see as a message (bad GGUF, bad prompt) is thrown as this and turned into an
// error code at the C API boundary.
struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The share of n work items of thread ith out of nth (ggml custom ops): contiguous ranges of ceil(n / nth)
// items, the last ones possibly empty.
struct ThreadRange {
    int64_t begin, end;
};
inline ThreadRange thread_range(int64_t n, int ith, int nth) {
    const int64_t per = (n + nth - 1) / nth, begin = std::min(n, per * ith);
    return {begin, std::min(n, begin + per)};
}

// Advises the 2 MiB-aligned part of [p, p + n) as transparent huge pages (effective for pages not touched yet).
void advise_huge_pages(const void *p, size_t n);

// float -> BF16 bits, round to nearest even (NaN kept quiet): the rounding of ggml_fp32_to_bf16, inline for the
// packers' inner loops.
inline uint16_t bf16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

}  // namespace qt

// common.cpp: see common.h.
#include "common.h"

#include <sys/mman.h>

namespace qt {

void advise_huge_pages(const void *p, size_t n) {
    const uintptr_t huge = (uintptr_t)2 << 20;
    const uintptr_t lo = ((uintptr_t)p + huge - 1) & ~(huge - 1), hi = ((uintptr_t)p + n) & ~(huge - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
}

}  // namespace qt

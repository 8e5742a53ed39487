// cpu_isa.cpp: see cpu_isa.h.
#include "kernels/cpu_isa.h"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

namespace qt {

namespace {

struct Detected {
    IsaLevel best = IsaLevel::generic;
    bool avx_vnni = false, avx512_vnni = false, avx512_bf16 = false, dotprod = false;
};

#if defined(__x86_64__)
bool amx_bf16_granted() {
#if defined(__linux__)
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool tile = d & (1u << 24), bf16 = d & (1u << 22);
    if (!tile || !bf16) return false;
    // Linux hands out the 8 KiB tile state only to processes that ask (ARCH_REQ_XCOMP_PERM, XTILEDATA).
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
    return false;
#endif
}

Detected detect() {
    Detected d;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        unsigned a, b, c, dx;
        // F16C: CPUID.1:ECX bit 29 (not among __builtin_cpu_supports' names on every compiler)
        const bool f16c = __get_cpuid(1, &a, &b, &c, &dx) && (c & (1u << 29));
        // AVX-VNNI (VEX encoded): CPUID.(7,1):EAX bit 4
        d.avx_vnni = __get_cpuid_count(7, 1, &a, &b, &c, &dx) && (a & (1u << 4));
        if (f16c) d.best = IsaLevel::avx2;
    }
    if (d.best == IsaLevel::avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
        d.best = IsaLevel::avx512;
        d.avx512_vnni = __builtin_cpu_supports("avx512vnni");
        d.avx512_bf16 = __builtin_cpu_supports("avx512bf16");
        if (d.avx512_bf16 && amx_bf16_granted()) d.best = IsaLevel::amx;
    }
    return d;
}
#elif defined(__aarch64__)
Detected detect() {
    Detected d;
    d.best = IsaLevel::neon;  // Advanced SIMD is mandatory on ARMv8-A
#if defined(__linux__)
    d.dotprod = getauxval(AT_HWCAP) & HWCAP_ASIMDDP;
#endif
    return d;
}
#else
Detected detect() { return Detected{}; }
#endif

bool parse_level(const char *s, IsaLevel &out) {
    static const IsaLevel all[] = {IsaLevel::generic, IsaLevel::neon, IsaLevel::avx2, IsaLevel::avx512, IsaLevel::amx};
    for (IsaLevel l : all)
        if (strcmp(s, isa_name(l)) == 0) return out = l, true;
    return false;
}

bool is_arm(IsaLevel l) { return l == IsaLevel::neon; }

CpuIsa decide() {
    const Detected d = detect();
    CpuIsa isa;
    isa.best = isa.level = d.best;
    const char *env = getenv("QWEN3TTS_ISA");
    if (env && *env) {
        isa.requested = env;
        IsaLevel want;
        if (!parse_level(env, want)) {
            isa.note = "QWEN3TTS_ISA=" + isa.requested + " is not a level (amx, avx512, avx2, neon, generic): ignored";
        } else if (want != IsaLevel::generic && is_arm(want) != is_arm(d.best)) {
            isa.note = "QWEN3TTS_ISA=" + isa.requested + " is for another architecture: ignored";
        } else if (want > d.best) {
            isa.note =
                std::string("QWEN3TTS_ISA=") + env + " is above what this CPU executes: clamped to " + isa_name(d.best);
        } else {
            isa.level = want;
        }
    }
    isa.avx_vnni = d.avx_vnni && isa.level >= IsaLevel::avx2;
    isa.avx512_vnni = d.avx512_vnni && isa.level >= IsaLevel::avx512;
    isa.avx512_bf16 = d.avx512_bf16 && isa.level >= IsaLevel::avx512;
    isa.dotprod = d.dotprod && isa.level == IsaLevel::neon;
    return isa;
}

}  // namespace

const char *isa_name(IsaLevel level) {
    switch (level) {
        case IsaLevel::amx: return "amx";
        case IsaLevel::avx512: return "avx512";
        case IsaLevel::avx2: return "avx2";
        case IsaLevel::neon: return "neon";
        default: return "generic";
    }
}

const CpuIsa &cpu_isa() {
    static const CpuIsa isa = decide();
    return isa;
}

}  // namespace qt

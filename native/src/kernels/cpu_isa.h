// cpu_isa.h: the one place that decides which instruction-set level the engine's own kernels run at.
//
// The level is decided once per process, from the CPU's features and the QWEN3TTS_ISA environment variable
// (amx | avx512 | avx2 | generic on x86-64, neon | generic on ARM64). The variable can only lower the level: a
// level the CPU cannot execute is clamped to the best one it can, and system_info() says so. Every kernel choice
// in the engine asks cpu_isa() (never the CPU directly), so that one machine can run and test every path below
// its best, and adding a variant for a new ISA touches the kernels and this dispatch point only.
#pragma once

#include <string>

namespace qt {

// Ordered: a level includes everything below it (on its architecture).
enum class IsaLevel {
    generic = 0,  // portable C++ (scalar, what the compiler vectorises for the baseline target)
    neon = 1,     // ARM64 Advanced SIMD (dotprod where `CpuIsa::dotprod`)
    avx2 = 2,     // x86-64 AVX2 + FMA + F16C (AVX-VNNI 256-bit where `CpuIsa::avx_vnni`)
    avx512 = 3,   // AVX-512 F/BW/VL/DQ (VNNI and BF16 where the flags below say so)
    amx = 4,      // avx512 plus AMX-BF16 tiles (granted by the kernel)
};

struct CpuIsa {
    IsaLevel level = IsaLevel::generic;  // the level in use (after QWEN3TTS_ISA)
    IsaLevel best = IsaLevel::generic;   // the best level this CPU executes
    // Extensions within the level in use; all false above the level in use.
    bool avx_vnni = false;     // 256-bit VNNI (avx2 level and up)
    bool avx512_vnni = false;  // avx512 level and up
    bool avx512_bf16 = false;  // avx512 level and up
    bool dotprod = false;      // neon level
    std::string requested;     // QWEN3TTS_ISA as given ("" when unset)
    std::string note;          // why the level differs from the request, if it does
};

// The process-wide decision (made on first call; thread-safe).
const CpuIsa &cpu_isa();

// "amx", "avx512", "avx2", "neon", "generic".
const char *isa_name(IsaLevel level);

inline bool isa_at_least(IsaLevel level) { return cpu_isa().level >= level; }

// True in the files of the test build whose AVX-512 kernels take their intrinsics from SIMDe (x86_simd.h,
// scripts/build-emulated compiles their dispatch points with QT_SIMD_EMULATED): there they are offered at every
// level. A constant of each file (internal linkage), false in every normal build.
#if defined(QT_SIMD_EMULATED)
constexpr bool avx512_emulated = true;
#else
constexpr bool avx512_emulated = false;
#endif

}  // namespace qt

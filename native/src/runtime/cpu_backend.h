// cpu_backend.h: ggml's CPU backend, reached only through ggml's backend registry.
//
// ggml can be built in two ways, and the engine runs with both:
// - the CPU backend inside libggml, compiled for one instruction set (GGML_NATIVE: the build machine's);
// - GGML_BACKEND_DL with GGML_CPU_ALL_VARIANTS: each CPU variant (x64, sse42, sandybridge, haswell, alderlake,
//   skylakex, icelake, zen4, sapphirerapids, ... ; armv8.0_1, armv8.2_1, ... on ARM) is a module
//   libggml-cpu-<variant>.so beside libggml-base, loaded at run time.
// In the second case the engine loads the best variant this CPU executes that needs nothing above the engine's
// ISA level (cpu_isa.h, QWEN3TTS_ISA), so that ggml's kernels follow the same level as the engine's own: at
// QWEN3TTS_ISA=avx2 on an AVX-512 machine, ggml runs its AVX2 kernels too, as on an AVX2 CPU. In the first case
// ggml's kernels stay what they were built for, and `variant` says "built-in".
#pragma once

#include <string>

#include "ggml-backend.h"
#include "ggml-cpp.h"

namespace qt {

struct CpuBackend {
    ggml_backend_dev_t device = nullptr;
    std::string variant;   // the loaded module's variant ("haswell", ...), or "built-in"
    std::string features;  // what that CPU backend was compiled with, e.g. "SSE3 AVX AVX2 F16C FMA LLAMAFILE"
    // Entries of the CPU backend that its registry hands out by name (they live in the loaded module).
    ggml_backend_set_n_threads_t set_n_threads = nullptr;
    ggml_threadpool_t (*threadpool_new)(ggml_threadpool_params *) = nullptr;
    void (*threadpool_free)(ggml_threadpool_t) = nullptr;
    void (*set_threadpool)(ggml_backend_t, ggml_threadpool_t) = nullptr;
};

// Found or loaded once per process (thread-safe); throws qt::Error when ggml has no usable CPU backend.
const CpuBackend &cpu_backend();

// A new CPU backend instance (its own thread count and pool: see ThreadPool in model.h).
ggml_backend_ptr new_cpu_backend();

}  // namespace qt

// cpu_backend.cpp: see cpu_backend.h.
#include "runtime/cpu_backend.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include "common.h"
#include "kernels/cpu_isa.h"

namespace qt {

namespace {

namespace fs = std::filesystem;

// The engine level a ggml CPU variant needs at least: the variant uses nothing above it. The names are those of
// ggml's GGML_CPU_ALL_VARIANTS (ggml/src/CMakeLists.txt); a variant ggml adds later is used only when the engine
// runs at its best level.
bool variant_level(const std::string &name, IsaLevel &level) {
    static const struct {
        const char *name;
        IsaLevel level;
    } known[] = {
        {"x64", IsaLevel::generic},        {"sse42", IsaLevel::generic},      {"sandybridge", IsaLevel::generic},
        {"ivybridge", IsaLevel::generic},  {"piledriver", IsaLevel::generic}, {"haswell", IsaLevel::avx2},
        {"alderlake", IsaLevel::avx2},     {"skylakex", IsaLevel::avx512},    {"cannonlake", IsaLevel::avx512},
        {"cascadelake", IsaLevel::avx512}, {"icelake", IsaLevel::avx512},     {"cooperlake", IsaLevel::avx512},
        {"zen4", IsaLevel::avx512},        {"sapphirerapids", IsaLevel::amx}, {"armv8.0_1", IsaLevel::generic},
        {"armv8.2_1", IsaLevel::neon},     {"armv8.2_2", IsaLevel::neon},     {"armv8.2_3", IsaLevel::neon},
        {"armv8.6_1", IsaLevel::neon},     {"armv8.6_2", IsaLevel::neon},     {"armv9.2_1", IsaLevel::neon},
        {"armv9.2_2", IsaLevel::neon},
    };
    for (const auto &k : known)
        if (name == k.name) return level = k.level, true;
    return false;
}

bool variant_allowed(const std::string &name) {
    const CpuIsa &isa = cpu_isa();
    IsaLevel needs;
    if (!variant_level(name, needs)) return isa.level == isa.best;
    return needs <= isa.level;
}

struct DlCloser {
    void operator()(void *handle) const { dlclose(handle); }
};

// ggml's own score of a variant module for this CPU (0: the CPU lacks an instruction the variant uses).
int variant_score(const fs::path &module) {
    std::unique_ptr<void, DlCloser> handle(dlopen(module.c_str(), RTLD_NOW | RTLD_LOCAL));
    if (!handle) return 0;
    auto score = (int (*)())dlsym(handle.get(), "ggml_backend_score");
    return score ? score() : 0;
}

// The folder of libggml, where GGML_BACKEND_DL installs the CPU variants.
fs::path ggml_library_dir() {
    Dl_info info{};
    if (!dladdr((void *)&ggml_backend_load, &info) || !info.dli_fname) return {};
    return fs::path(info.dli_fname).parent_path();
}

struct Module {
    fs::path path;
    std::string variant;
    int score = 0;
};

// The CPU modules in `dir` that this CPU executes: libggml-cpu-<variant>.so (GGML_CPU_ALL_VARIANTS) or a single
// libggml-cpu.so (GGML_BACKEND_DL alone, compiled for one instruction set).
std::vector<Module> cpu_modules(const fs::path &dir) {
    const std::string prefix = "libggml-cpu", suffix = ".so";
    std::vector<Module> found;
    std::error_code ec;
    for (const fs::directory_entry &entry : fs::directory_iterator(dir, ec)) {
        const std::string file = entry.path().filename().string();
        if (file.size() < prefix.size() + suffix.size() || file.compare(0, prefix.size(), prefix) != 0 ||
            file.compare(file.size() - suffix.size(), suffix.size(), suffix) != 0)
            continue;
        std::string name = file.substr(prefix.size(), file.size() - prefix.size() - suffix.size());
        if (!name.empty() && name[0] != '-') continue;
        name = name.empty() ? "single module" : name.substr(1);
        const int score = variant_score(entry.path());
        if (score > 0) found.push_back({entry.path(), name, score});
    }
    return found;
}

// The best-scoring module among those the engine's level allows; when none is allowed (a single module, or a
// level below every variant), the best-scoring one, and `variant` says that it does not follow the level.
ggml_backend_reg_t load_best_allowed_variant(std::string &variant) {
    const fs::path dir = ggml_library_dir();
    const std::vector<Module> modules = cpu_modules(dir);
    const Module *best = nullptr, *best_allowed = nullptr;
    for (const Module &m : modules) {
        if (!best || m.score > best->score) best = &m;
        if (variant_allowed(m.variant) && (!best_allowed || m.score > best_allowed->score)) best_allowed = &m;
    }
    if (!best)
        throw Error("ggml has no CPU backend: it was built with GGML_BACKEND_DL but '" + dir.string() +
                    "' holds no libggml-cpu*.so that this CPU executes");
    const Module &chosen = best_allowed ? *best_allowed : *best;
    variant = chosen.variant + (best_allowed ? ""
                                             : std::string(", above the engine's ISA level ") +
                                                   isa_name(cpu_isa().level) + ": no variant for it");
    ggml_backend_reg_t reg = ggml_backend_load(chosen.path.c_str());
    if (!reg) throw Error("ggml could not load its CPU backend '" + chosen.path.string() + "'");
    return reg;
}

std::string feature_list(ggml_backend_reg_t reg) {
    auto get = (ggml_backend_get_features_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_get_features");
    std::string out;
    for (ggml_backend_feature *f = get ? get(reg) : nullptr; f && f->name; f++) {
        if (!out.empty()) out += ' ';
        out += strcmp(f->value, "1") == 0 ? std::string(f->name) : std::string(f->name) + "=" + f->value;
    }
    return out;
}

template <typename F>
F entry(ggml_backend_reg_t reg, const char *name) {
    auto f = (F)ggml_backend_reg_get_proc_address(reg, name);
    if (!f) throw Error(std::string("ggml's CPU backend has no entry '") + name + "'");
    return f;
}

// ggml reports at debug/info level what it does (the module it loaded, one line per re-laid-out weight); a
// server's stderr should only carry warnings and errors. Set before the first backend is made.
void quiet_ggml_log(ggml_log_level level, const char *text, void *) {
    if (level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

CpuBackend find_or_load() {
    ggml_log_set(quiet_ggml_log, nullptr);
    CpuBackend b;
    ggml_backend_reg_t reg = ggml_backend_reg_by_name("CPU");
    if (reg)
        b.variant = "built-in";
    else
        reg = load_best_allowed_variant(b.variant);
    b.device = ggml_backend_reg_dev_count(reg) > 0 ? ggml_backend_reg_dev_get(reg, 0) : nullptr;
    if (!b.device) throw Error("ggml's CPU backend has no device");
    b.features = feature_list(reg);
    b.set_n_threads = entry<ggml_backend_set_n_threads_t>(reg, "ggml_backend_set_n_threads");
    b.threadpool_new = entry<decltype(b.threadpool_new)>(reg, "ggml_threadpool_new");
    b.threadpool_free = entry<decltype(b.threadpool_free)>(reg, "ggml_threadpool_free");
    b.set_threadpool = entry<decltype(b.set_threadpool)>(reg, "ggml_backend_cpu_set_threadpool");
    return b;
}

}  // namespace

const CpuBackend &cpu_backend() {
    static const CpuBackend backend = find_or_load();
    return backend;
}

ggml_backend_ptr new_cpu_backend() {
    ggml_backend_ptr b(ggml_backend_dev_init(cpu_backend().device, nullptr));
    if (!b) throw Error("cannot initialise a ggml CPU backend");
    return b;
}

}  // namespace qt

// api_internal.h: what the C API's translation units (api.cpp, codec_api.cpp, encoder_api.cpp) share: the handle types and
// the exception-to-error-code guard.
#pragma once

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <string>

#include "runtime/model.h"

struct qt_model {
    std::unique_ptr<qt::Model> m;
};

namespace qt {

inline void set_err(char *err, size_t len, const std::string &msg) {
    if (!err || len == 0) return;
    size_t n = std::min(len - 1, msg.size());
    memcpy(err, msg.data(), n);
    err[n] = 0;
}

// Runs f(); any exception becomes a message in err and the value on_error.
template <typename F>
auto guarded(char *err, size_t len, F f, decltype(f()) on_error) -> decltype(f()) {
    try {
        return f();
    } catch (const Error &e) {
        set_err(err, len, e.what());
    } catch (const std::bad_alloc &) {
        set_err(err, len, "out of memory");
    } catch (const std::exception &e) {
        set_err(err, len, std::string("internal error: ") + e.what());
    }
    return on_error;
}

}  // namespace qt

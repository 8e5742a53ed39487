// api_internal.h: what the C API's translation units (api.cpp, codec_api.cpp, encoder_api.cpp) share: the handle types and
// the exception-to-error-code guard.
#pragma once

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <type_traits>

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

// Runs f(); any exception becomes a message in err and the value on_error. (f last: its body reads as the
// function's.)
template <typename F>
std::invoke_result_t<F &> guarded(char *err, size_t len, std::invoke_result_t<F &> on_error, F f) {
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

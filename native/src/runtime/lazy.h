// lazy.h: a value built on first use and shared from then on, for the per-model weights that only some requests
// need (the codec decoder's, the codec encoder's and the speaker encoder's prepared weights).
#pragma once

#include <memory>
#include <mutex>

namespace qt {

// get(build) returns the value, calling build() (which returns a std::shared_ptr to a T; T is const for prepared
// weights) the first time; callers
// that come meanwhile wait for that build. A build that throws leaves the value unbuilt (the next get tries
// again). Holders keep the value alive on their own. get() is const: building the value does not change what
// owns it (a const Model prepares its encoders' weights).
template <class T>
class Lazy {
public:
    template <class Build>
    std::shared_ptr<T> get(Build &&build) const {
        std::lock_guard<std::mutex> lock(mu_);
        if (!value_) value_ = build();
        return value_;
    }

    // The value if it was built, else nullptr (never builds).
    std::shared_ptr<T> if_built() const {
        std::lock_guard<std::mutex> lock(mu_);
        return value_;
    }

private:
    mutable std::mutex mu_;
    mutable std::shared_ptr<T> value_;
};

}  // namespace qt

// A per-thread free list of reusable objects, so that the buffers they own
// keep their capacity from one request to the next instead of being
// allocated for every request.
//
// A Lease takes an object from the calling thread's list (or makes one) and
// gives it back when it ends: T::recycle() is called first, and it may let go
// of whatever grew unusually large. At most T::kKeep objects are kept per
// thread (as many as a busy worker uses at once); more are freed. The lease
// must end on the thread that took it (every worker runs on one thread).
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

namespace relaymeter::util {

template <class T>
class Lease {
public:
    Lease() {
        auto& fl = free_list();
        if (fl.empty()) {
            p_ = std::make_unique<T>();
        } else {
            p_ = std::move(fl.back());
            fl.pop_back();
        }
    }
    ~Lease() {
        auto& fl = free_list();
        if (fl.size() >= T::kKeep) return;
        p_->recycle();
        fl.push_back(std::move(p_));
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;

    T* operator->() { return p_.get(); }
    T& operator*() { return *p_; }

private:
    static std::vector<std::unique_ptr<T>>& free_list() {
        thread_local std::vector<std::unique_ptr<T>> list;
        return list;
    }
    std::unique_ptr<T> p_;
};

} // namespace relaymeter::util

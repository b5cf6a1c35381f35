// Replaces the global operator new/delete with a per-thread cache of small
// freed blocks in front of malloc: see include/relaymeter/util/alloc_cache.hpp.
//
// allocate() rounds a small request up to its 16-byte class, so a block's
// class is known again when it is freed: from the size the sized delete is
// given, or from malloc_usable_size() for the unsized delete (which Asio uses
// for coroutine frames). A block freed on another thread than the one that
// allocated it simply joins that thread's cache. The other replaceable forms
// (array and nothrow new, array deletes) are libstdc++'s, which forward to
// these; the aligned forms stay libstdc++'s own and never reach the cache.
#include "relaymeter/util/alloc_cache.hpp"

#include <malloc.h>

#include <cstdlib>
#include <cstring>
#include <new>

namespace relaymeter::util::alloc_cache {
namespace {

constexpr std::size_t kClasses = kMaxBlock / kGranule; // class c holds blocks of usable size >= c * kGranule

struct FreeBlock {
    FreeBlock* next;
};

// Trivially destructible and constant-initialized: no TLS guard on the hot
// path, and usable until the thread's memory goes (after its destructors).
struct ThreadCache {
    FreeBlock* head[kClasses + 1];
    std::size_t count[kClasses + 1];
    std::size_t bytes;
    std::size_t limit; // kMaxBytes once the thread's cache is open; 0 before, when off, and at exit
    bool opened;       // the first free on this thread has decided `limit`
};
constinit thread_local ThreadCache tc{};

void flush(ThreadCache& c) {
    for (std::size_t k = 1; k <= kClasses; ++k) {
        while (FreeBlock* b = c.head[k]) {
            c.head[k] = b->next;
            std::free(b);
        }
        c.count[k] = 0;
    }
    c.bytes = 0;
}

struct ExitFlush {
    ~ExitFlush() {
        tc.limit = 0; // what the thread's other destructors free goes to free()
        flush(tc);
    }
};

bool enabled() {
    static const bool on = [] {
        const char* v = std::getenv("RELAYMETER_ALLOC_CACHE");
        return v == nullptr || std::strcmp(v, "0") != 0;
    }();
    return on;
}

// The thread's first free: opens its cache (and arranges the flush at its exit).
void open_cache() {
    tc.opened = true;
    if (!enabled()) return;
    static thread_local ExitFlush on_exit;
    (void)&on_exit;
    tc.limit = kMaxBytes;
}

void* allocate(std::size_t size) {
    if (size == 0) size = 1;
    if (size <= kMaxBlock) {
        const std::size_t k = (size + kGranule - 1) / kGranule;
        if (FreeBlock* b = tc.head[k]) {
            tc.head[k] = b->next;
            --tc.count[k];
            tc.bytes -= k * kGranule;
            return b;
        }
        size = k * kGranule; // malloc's usable size is then in [size, size + 15]: class k again
    }
    for (;;) {
        if (void* p = std::malloc(size)) return p;
        std::new_handler h = std::get_new_handler();
        if (h == nullptr) throw std::bad_alloc();
        h();
    }
}

// p's usable size is at least k * kGranule.
void release(void* p, std::size_t k) noexcept {
    if (k == 0 || k > kClasses) {
        std::free(p);
        return;
    }
    if (!tc.opened) [[unlikely]]
        open_cache();
    if (tc.bytes + k * kGranule > tc.limit || tc.count[k] >= kMaxPerClass) {
        std::free(p);
        return;
    }
    auto* b = static_cast<FreeBlock*>(p);
    b->next = tc.head[k];
    tc.head[k] = b;
    ++tc.count[k];
    tc.bytes += k * kGranule;
}

} // namespace

Stats this_thread() {
    std::size_t blocks = 0;
    for (std::size_t k = 1; k <= kClasses; ++k) blocks += tc.count[k];
    return {enabled(), blocks, tc.bytes};
}

void flush_this_thread() { flush(tc); }

} // namespace relaymeter::util::alloc_cache

namespace ac = relaymeter::util::alloc_cache;

void* operator new(std::size_t size) { return ac::allocate(size); }

void operator delete(void* p) noexcept {
    if (p != nullptr) ac::release(p, malloc_usable_size(p) / ac::kGranule);
}

// Every block of up to kMaxBlock bytes came from allocate(), which rounded it
// up to its class: the size says the class without asking malloc.
void operator delete(void* p, std::size_t size) noexcept {
    if (p == nullptr) return;
    if (size > ac::kMaxBlock) {
        std::free(p);
        return;
    }
    ac::release(p, size == 0 ? 1 : (size + ac::kGranule - 1) / ac::kGranule);
}

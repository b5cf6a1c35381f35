// The per-thread cache of small blocks behind operator new/delete
// (src/alloc_cache.cpp). It is linked into this test binary as into the
// daemon, except in sanitizer builds, which keep the plain allocator.
#if RELAYMETER_ALLOC_CACHE

#include <catch2/catch.hpp>

#include <new>
#include <thread>
#include <vector>

#include "relaymeter/util/alloc_cache.hpp"

namespace ac = relaymeter::util::alloc_cache;

TEST_CASE("a freed small block serves the next allocation of its class", "[alloc_cache]") {
    ac::flush_this_thread();
    const ac::Stats s0 = ac::this_thread();
    REQUIRE(s0.enabled);
    REQUIRE(s0.blocks == 0);

    // Unsized delete (as Asio frees coroutine frames): the class comes from malloc.
    void* p = ::operator new(100);
    ::operator delete(p);
    const ac::Stats s1 = ac::this_thread();
    void* q = ::operator new(97); // 97..112 bytes: the same 16-byte class
    const ac::Stats s2 = ac::this_thread();
    CHECK(s1.blocks == 1);
    CHECK(s1.bytes == 112);
    CHECK(q == p);
    CHECK(s2.blocks == 0);
    ::operator delete(q, 97);

    // Sized delete: the class comes from the size.
    void* r = ::operator new(200);
    ::operator delete(r, 200);
    void* t = ::operator new(193);
    void* u = ::operator new(193); // the class is empty again: a new block
    CHECK(t == r);
    CHECK(u != r);
    ::operator delete(t, 193);
    ::operator delete(u, 193);
    ac::flush_this_thread();
}

TEST_CASE("blocks over kMaxBlock bytes are never kept", "[alloc_cache]") {
    ac::flush_this_thread();
    void* p = ::operator new(ac::kMaxBlock + 1);
    ::operator delete(p, ac::kMaxBlock + 1);
    void* q = ::operator new(4096);
    ::operator delete(q);
    CHECK(ac::this_thread().blocks == 0);
}

TEST_CASE("the cache is bounded per class and per thread", "[alloc_cache]") {
    ac::flush_this_thread();
    std::vector<void*> blocks;
    blocks.reserve(ac::kMaxPerClass + 100); // over kMaxBlock: not from the cache

    // Per class: kMaxPerClass blocks of 48 bytes are kept, the rest freed.
    for (std::size_t i = 0; i < ac::kMaxPerClass + 100; ++i) blocks.push_back(::operator new(48));
    for (void* b : blocks) ::operator delete(b, 48);
    blocks.clear();
    CHECK(ac::this_thread().blocks == ac::kMaxPerClass);
    CHECK(ac::this_thread().bytes == ac::kMaxPerClass * 48);
    ac::flush_this_thread();

    // Per thread: kMaxBytes in all. More 1 KiB blocks than fit, then 16-byte
    // ones to fill what is left.
    for (std::size_t i = 0; i < ac::kMaxBytes / ac::kMaxBlock + 8; ++i) blocks.push_back(::operator new(ac::kMaxBlock));
    for (void* b : blocks) ::operator delete(b);
    blocks.clear();
    const ac::Stats big = ac::this_thread();
    for (std::size_t i = 0; i < ac::kMaxBlock / 16 + 8; ++i) blocks.push_back(::operator new(16));
    for (void* b : blocks) ::operator delete(b, 16);
    blocks.clear();
    const ac::Stats full = ac::this_thread();
    // Past the cap: take more 16-byte blocks than the full cache holds and
    // give them all back; only as many as it held are kept.
    for (std::size_t i = 0; i < ac::kMaxBlock / 16 + 8; ++i) blocks.push_back(::operator new(16));
    for (void* b : blocks) ::operator delete(b, 16);
    blocks.clear();
    const ac::Stats again = ac::this_thread();
    CHECK(big.bytes <= ac::kMaxBytes);
    CHECK(big.bytes > ac::kMaxBytes - ac::kMaxBlock);
    CHECK(full.bytes == ac::kMaxBytes);
    CHECK(again.bytes == ac::kMaxBytes);
    CHECK(again.blocks == full.blocks);
    ac::flush_this_thread();
    CHECK(ac::this_thread().blocks == 0);
    CHECK(ac::this_thread().bytes == 0);
}

TEST_CASE("each thread keeps what it frees, and gives it back when it ends", "[alloc_cache]") {
    ac::flush_this_thread();
    void* from_main = ::operator new(64);
    void* own = nullptr;
    ac::Stats after_free, after_new, at_end;
    std::thread t([&] {
        ::operator delete(from_main, 64); // allocated on another thread: kept here
        after_free = ac::this_thread();
        own = ::operator new(64); // ...and handed out here
        after_new = ac::this_thread();
        void* more = ::operator new(300);
        ::operator delete(more);
        at_end = ac::this_thread();
    }); // the thread's exit returns the 300-byte block to malloc
    t.join();
    CHECK(after_free.blocks == 1);
    CHECK(own == from_main);
    CHECK(after_new.blocks == 0);
    CHECK(at_end.blocks == 1);
    CHECK(ac::this_thread().blocks == 0); // the main thread's cache saw none of it
    ::operator delete(own, 64);
    ac::flush_this_thread();
}

#endif

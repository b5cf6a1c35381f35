// A per-thread cache of small freed blocks in front of malloc, for the
// daemon's C++ allocations (src/alloc_cache.cpp replaces the global
// operator new and delete; linked into the daemon, the tests and
// fake_upstream, not into sanitizer builds, where it would hide
// use-after-free).
//
// Why: each proxied request allocates about eleven small blocks (coroutine
// frames of 0.2-0.9 KiB, Beast's header fields, the request id). glibc's
// per-thread cache keeps 7 blocks per size, so with a few hundred requests in
// flight the frees of one event batch overflow it and go through the
// coalescing bins (_int_free, unlink_chunk, _int_malloc): 4-5% of the
// worker's time at 256 connections. glibc's own knob
// (GLIBC_TUNABLES=glibc.malloc.tcache_count) is read only from the
// environment at exec, and tcmalloc, jemalloc and mimalloc each cost 0.6-4
// MiB of idle RSS (bench/PROFILE.md).
//
// Blocks of up to kMaxBlock bytes are kept in free lists per 16-byte class,
// at most kMaxPerClass per class and kMaxBytes per thread; everything else
// goes to malloc/free as before. A thread's blocks are returned to malloc when
// it exits. RELAYMETER_ALLOC_CACHE=0 in the environment turns it off.
#pragma once

#include <cstddef>

namespace relaymeter::util::alloc_cache {

inline constexpr std::size_t kGranule = 16;
inline constexpr std::size_t kMaxBlock = 1024;
inline constexpr std::size_t kMaxPerClass = 1024;
inline constexpr std::size_t kMaxBytes = std::size_t{1} << 20;

struct Stats {
    bool enabled = false;    // linked in and not turned off
    std::size_t blocks = 0;  // blocks the calling thread holds
    std::size_t bytes = 0;   // their usable bytes
};

// The calling thread's cache.
Stats this_thread();
// Returns the calling thread's blocks to malloc.
void flush_this_thread();

} // namespace relaymeter::util::alloc_cache

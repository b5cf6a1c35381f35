// One object per (owner, thread): the engine's shards, the ledger's buffers.
// The owner keeps them all in a vector under its own mutex (to walk them when
// reading); a thread finds its own through a small thread_local cache of
// (owner id, object) pairs, so the mutex is taken only on the thread's first
// visit (or after eviction from the cache).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace relaymeter::util {

// T is constructed from the calling thread's id and has a public `owner` of
// type std::thread::id. owner_id must be unique among live and past owners
// (never reused), so a cached pair of a destroyed owner is never matched.
// on_added(list.size()) is called under `mu` when a thread's T is made.
template <class T, class OnAdded>
T& per_thread(std::uint64_t owner_id, std::mutex& mu, std::vector<std::unique_ptr<T>>& list, OnAdded on_added) {
    struct Entry {
        std::uint64_t owner_id = 0;
        T* object = nullptr;
    };
    thread_local std::array<Entry, 8> cache{};
    thread_local std::size_t next_slot = 0;
    for (const Entry& e : cache) {
        if (e.owner_id == owner_id) return *e.object;
    }

    T* object = nullptr;
    {
        const std::lock_guard lock(mu);
        const auto self = std::this_thread::get_id();
        for (const auto& o : list) {
            if (o->owner == self) { // evicted from the cache earlier: reuse, never duplicate
                object = o.get();
                break;
            }
        }
        if (object == nullptr) {
            list.push_back(std::make_unique<T>(self));
            object = list.back().get();
            on_added(list.size());
        }
    }
    cache[next_slot] = Entry{owner_id, object};
    next_slot = (next_slot + 1) % cache.size();
    return *object;
}

template <class T>
T& per_thread(std::uint64_t owner_id, std::mutex& mu, std::vector<std::unique_ptr<T>>& list) {
    return per_thread(owner_id, mu, list, [](std::size_t) {});
}

} // namespace relaymeter::util

// Aggregation engine: per-model counters, latency sketches and hourly cost.
// record() is called from every worker thread; it updates a per-thread shard
// (no lock shared by all requests). Readers merge the shards into a Snapshot.
//
// Windows: besides the since-start figures, each shard keeps the current
// minute's per-model aggregates (coarse latency sketches, <= 2% error). When a
// shard's thread records in a later minute, the finished minute is merged
// into an engine-wide ring of kWindowMinutes per-minute aggregates (once per
// minute per thread). snapshot_window() merges the ring and the shards'
// current minutes.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "relaymeter/metrics/histogram.hpp"
#include "relaymeter/metrics/price_table.hpp"
#include "relaymeter/metrics/record.hpp"

namespace relaymeter::metrics {

struct ModelStats {
    std::uint64_t requests = 0;
    std::uint64_t successes = 0;  // 2xx
    std::uint64_t errors = 0;     // everything else
    std::uint64_t streamed = 0;
    std::uint64_t unpriced = 0;   // requests of a model with no price entry
    std::uint64_t input_tokens = 0;
    std::uint64_t output_tokens = 0;
    std::uint64_t cached_input_tokens = 0;
    std::uint64_t reasoning_tokens = 0;
    double cost_usd = 0;
    double latency_sum_s = 0;
    std::map<int, std::uint64_t> status_codes;
    LatencyHistogram latency;  // every request, failed ones included
    LatencyHistogram ttft;     // streams only

    void add(const ModelStats& other);
};

// The counters kept per (model, client key) when auth is on.
struct KeyCounters {
    std::uint64_t requests = 0;
    std::uint64_t errors = 0;
    std::uint64_t input_tokens = 0;
    std::uint64_t output_tokens = 0;
    double cost_usd = 0;

    void add(const KeyCounters& other);
};

struct Snapshot {
    std::chrono::system_clock::time_point started_at;
    std::chrono::system_clock::time_point generated_at;
    // snapshot_window(): the start of the oldest minute it covers (else the epoch).
    std::chrono::system_clock::time_point window_start{};
    std::map<std::string, ModelStats> models;                  // by name, sorted
    std::map<std::int64_t, double> hourly_cost;                // UTC hour start (unix s) -> USD, last 48 h
    std::int64_t in_flight = 0;
    std::map<std::string, bool> priced;                        // model -> has a price entry ("none" is always true)
    // Auth on (EngineOptions::by_key): figures per client key name, and the
    // request, error, token and cost counters per (model, key).
    bool by_key = false;
    std::map<std::string, ModelStats> keys;
    std::map<std::string, std::map<std::string, KeyCounters>> model_keys; // model -> key -> counters (since start only)

    ModelStats overall() const;
};

struct EngineOptions {
    unsigned max_models = 64;
    std::map<std::string, config::Price> prices;
    bool by_key = false;    // auth on: count per client key name as well (Record::key; empty counts as "none")
    unsigned max_keys = 64; // further key names are counted as "other" ("none" and "other" do not count)
};

class Engine {
public:
    explicit Engine(EngineOptions options);
    ~Engine();
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    // Thread-safe. Cost is computed here from record.prices (or the current
    // table) unless record.pricing is set. Returns the request's cost in USD
    // (0 for an unpriced model). Then calls the sink, if any, on this thread.
    double record(const Record& record);

    // Called by record() with every record and its pricing, after the figures
    // are updated, outside the engine's locks (the ledger). Set it before
    // records arrive; it is not synchronised with record().
    using Sink = std::function<void(const Record&, const Pricing&)>;
    void set_sink(Sink sink) { sink_ = std::move(sink); }

    // Current price table (atomically replaceable on reload).
    // Current price table as seen by the calling thread (lock-free unless a
    // reload happened since this thread last looked).
    std::shared_ptr<const PriceTable> prices();
    void set_prices(std::map<std::string, config::Price> prices);

    void request_started() noexcept { in_flight_.fetch_add(1, std::memory_order_relaxed); }
    void request_finished() noexcept { in_flight_.fetch_sub(1, std::memory_order_relaxed); }
    std::int64_t in_flight() const noexcept { return in_flight_.load(std::memory_order_relaxed); }

    Snapshot snapshot() const;
    std::chrono::system_clock::time_point started_at() const { return started_at_; }

    // Windowed figures, minute resolution: the records that finished from the
    // start of the UTC minute containing (now - window) up to now, so between
    // `window` and `window` + 60 s. window is clamped to [kMinWindow, kMaxWindow].
    // Same shape as snapshot(); hourly_cost holds the window's cost per hour.
    static constexpr std::chrono::seconds kMinWindow{60};
    static constexpr std::chrono::seconds kMaxWindow{3600};
    static constexpr std::size_t kWindowMinutes = 61; // ring slots: kMaxWindow plus the partial oldest minute
    Snapshot snapshot_window(std::chrono::seconds window) const;
    Snapshot snapshot_window(std::chrono::seconds window, std::chrono::system_clock::time_point now) const;

    // Bytes held by the windowed aggregates (ring and shards' current minutes).
    std::size_t window_memory_bytes() const;

private: // the metrics module may change anything below
    struct Shard;
    Shard& local_shard();
    // Names admitted up to a cap (models, client keys); the rest are "other".
    struct NameCap {
        explicit NameCap(unsigned c) : cap(c) {}
        const unsigned cap;
        std::mutex mu;
        std::unordered_set<std::string> admitted;
    };
    // The name a raw name is counted under: itself, or "other" past the cap.
    // Consults the shard's cache first; cap.mu only on a miss.
    static const std::string& canonical(NameCap& cap, std::unordered_map<std::string, bool>& cache,
                                        const std::string& name);
    // The engine's current table, cached per shard (refreshed when the version moves).
    const std::shared_ptr<const PriceTable>& current_prices(Shard& shard);

    const bool by_key_;
    const std::chrono::system_clock::time_point started_at_;
    std::atomic<std::int64_t> in_flight_{0};

    mutable std::mutex prices_mu_; // guards the pointer swap only
    std::shared_ptr<const PriceTable> prices_;
    std::atomic<std::uint64_t> prices_version_{0}; // bumped by set_prices (under prices_mu_)

    mutable std::mutex shards_mu_; // shard registration and snapshot iteration
    std::vector<std::unique_ptr<Shard>> shards_;

    NameCap models_;
    NameCap keys_;
    Sink sink_;
    const std::uint64_t id_; // distinguishes engines for thread-local shard caches

    struct Window;                   // the ring of finished minutes
    std::unique_ptr<Window> window_;
};

} // namespace relaymeter::metrics

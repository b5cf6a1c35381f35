#include "relaymeter/metrics/engine.hpp"

#include <algorithm>
#include <array>
#include <limits>
#include <thread>
#include <unordered_map>

namespace relaymeter::metrics {

namespace {

constexpr std::int64_t kHour = 3600;
constexpr std::int64_t kHoursKept = 48;

const std::string kNone = "none";
const std::string kOther = "other";

std::atomic<std::uint64_t> g_next_engine_id{1};

// Start (unix seconds) of the UTC hour containing tp.
std::int64_t hour_of(std::chrono::system_clock::time_point tp) {
    const auto s = std::chrono::duration_cast<std::chrono::seconds>(tp.time_since_epoch()).count();
    const std::int64_t secs = static_cast<std::int64_t>(s);
    std::int64_t h = secs / kHour;
    if (secs % kHour < 0) --h; // floor for times before 1970
    return h * kHour;
}

// Drops hours that are not among the kHoursKept hours ending with `newest`.
void trim_hours(std::map<std::int64_t, double>& hourly, std::int64_t newest) {
    const std::int64_t first_kept = newest - (kHoursKept - 1) * kHour;
    hourly.erase(hourly.begin(), hourly.lower_bound(first_kept));
}

} // namespace

void ModelStats::add(const ModelStats& other) {
    requests += other.requests;
    successes += other.successes;
    errors += other.errors;
    streamed += other.streamed;
    unpriced += other.unpriced;
    input_tokens += other.input_tokens;
    output_tokens += other.output_tokens;
    cached_input_tokens += other.cached_input_tokens;
    reasoning_tokens += other.reasoning_tokens;
    cost_usd += other.cost_usd;
    latency_sum_s += other.latency_sum_s;
    for (const auto& [code, n] : other.status_codes) status_codes[code] += n;
    latency.merge(other.latency);
    ttft.merge(other.ttft);
}

ModelStats Snapshot::overall() const {
    ModelStats all;
    for (const auto& [name, stats] : models) all.add(stats);
    return all;
}

// One per (engine, recording thread). mu_ is taken by its owner on every
// record() and otherwise only by snapshot(); the fields after it are touched
// by the owning thread alone and need no lock.
struct Engine::Shard {
    explicit Shard(std::thread::id owner) : owner_(owner) {}

    std::mutex mu_;
    std::unordered_map<std::string, ModelStats> models_; // by canonical name
    std::map<std::int64_t, double> hourly_;              // hour start -> USD

    const std::thread::id owner_;
    std::unordered_map<std::string, bool> name_cache_; // raw name -> admitted (false: counted as "other")
    std::uint64_t prices_version_ = std::numeric_limits<std::uint64_t>::max();
    std::shared_ptr<const PriceTable> prices_;
};

Engine::Engine(EngineOptions options)
    : max_models_(options.max_models),
      started_at_(std::chrono::system_clock::now()),
      prices_(std::make_shared<const PriceTable>(std::move(options.prices))),
      id_(g_next_engine_id.fetch_add(1, std::memory_order_relaxed)) {}

Engine::~Engine() = default;

Engine::Shard& Engine::local_shard() {
    // A few (engine id, shard) pairs per thread. Engine ids are never reused,
    // so an entry of a destroyed engine is never matched again.
    struct Entry {
        std::uint64_t engine_id = 0;
        Shard* shard = nullptr;
    };
    thread_local std::array<Entry, 8> cache{};
    thread_local std::size_t next_slot = 0;

    for (const Entry& e : cache) {
        if (e.engine_id == id_) return *e.shard;
    }

    Shard* shard = nullptr;
    {
        const std::lock_guard lock(shards_mu_);
        const auto self = std::this_thread::get_id();
        for (const auto& s : shards_) {
            if (s->owner_ == self) { // evicted from the cache earlier: reuse, never duplicate
                shard = s.get();
                break;
            }
        }
        if (shard == nullptr) {
            shards_.push_back(std::make_unique<Shard>(self));
            shard = shards_.back().get();
        }
    }
    cache[next_slot] = Entry{id_, shard};
    next_slot = (next_slot + 1) % cache.size();
    return *shard;
}

const std::string& Engine::canonical_model(Shard& shard, const std::string& model) {
    if (model == kNone || model == kOther) return model; // never count against the cap

    if (const auto it = shard.name_cache_.find(model); it != shard.name_cache_.end()) {
        return it->second ? model : kOther;
    }

    bool admitted = false;
    {
        const std::lock_guard lock(models_mu_);
        if (admitted_.count(model) != 0) {
            admitted = true;
        } else if (admitted_.size() < max_models_) {
            admitted_.insert(model);
            admitted = true;
        }
    }
    // Admission is final both ways (the set only grows, the cap is fixed), so
    // cached answers never go stale. Bound the cache against floods of names.
    if (shard.name_cache_.size() >= static_cast<std::size_t>(max_models_) + 1024) shard.name_cache_.clear();
    shard.name_cache_.emplace(model, admitted);
    return admitted ? model : kOther;
}

const std::shared_ptr<const PriceTable>& Engine::current_prices(Shard& shard) {
    const std::uint64_t version = prices_version_.load(std::memory_order_acquire);
    if (shard.prices_version_ != version) {
        const std::lock_guard lock(prices_mu_);
        shard.prices_ = prices_;
        shard.prices_version_ = prices_version_.load(std::memory_order_relaxed);
    }
    return shard.prices_;
}

double Engine::record(const Record& rec) {
    Shard& shard = local_shard();
    const std::string& raw = rec.model.empty() ? kNone : rec.model; // proxy sanitizes; be safe anyway
    const std::string& name = canonical_model(shard, raw);

    // Priced by the raw name: a model counted as "other" still costs its price.
    double cost = 0;
    bool unpriced = false;
    if (raw != kNone) {
        const PriceTable* table = rec.prices ? rec.prices.get() : current_prices(shard).get();
        const config::Price* price = table != nullptr ? table->find(raw) : nullptr;
        if (price != nullptr) {
            cost = PriceTable::cost(*price, rec.usage);
        } else {
            unpriced = true;
        }
    }

    const auto finished =
        rec.finished_at == std::chrono::system_clock::time_point{} ? std::chrono::system_clock::now() : rec.finished_at;
    const std::int64_t hour = hour_of(finished);
    const bool success = rec.status >= 200 && rec.status < 300;

    const std::lock_guard lock(shard.mu_);
    auto it = shard.models_.find(name);
    if (it == shard.models_.end()) it = shard.models_.try_emplace(name).first;
    ModelStats& s = it->second;
    ++s.requests;
    ++(success ? s.successes : s.errors);
    if (rec.streamed) ++s.streamed;
    if (unpriced) ++s.unpriced;
    s.input_tokens += rec.usage.input;
    s.output_tokens += rec.usage.output;
    s.cached_input_tokens += rec.usage.cached_input;
    s.reasoning_tokens += rec.usage.reasoning;
    s.cost_usd += cost;
    const double latency = rec.latency_s > 0 ? rec.latency_s : 0;
    s.latency_sum_s += latency;
    ++s.status_codes[rec.status];
    s.latency.observe(latency);
    if (rec.ttft_s >= 0) s.ttft.observe(rec.ttft_s);

    shard.hourly_[hour] += cost;
    if (shard.hourly_.size() > static_cast<std::size_t>(kHoursKept)) trim_hours(shard.hourly_, shard.hourly_.rbegin()->first);
    return cost;
}

std::shared_ptr<const PriceTable> Engine::prices() {
    // The calling thread's cached table: no lock unless a reload happened.
    return current_prices(local_shard());
}

void Engine::set_prices(std::map<std::string, config::Price> prices) {
    auto table = std::make_shared<const PriceTable>(std::move(prices));
    const std::lock_guard lock(prices_mu_);
    prices_ = std::move(table);
    prices_version_.fetch_add(1, std::memory_order_release);
}

Snapshot Engine::snapshot() const {
    Snapshot snap;
    snap.started_at = started_at_;
    snap.generated_at = std::chrono::system_clock::now();
    snap.in_flight = in_flight();
    {
        const std::lock_guard lock(shards_mu_);
        for (const auto& shard : shards_) {
            const std::lock_guard shard_lock(shard->mu_);
            for (const auto& [name, stats] : shard->models_) snap.models[name].add(stats);
            for (const auto& [hour, cost] : shard->hourly_) snap.hourly_cost[hour] += cost;
        }
    }
    std::int64_t newest = hour_of(snap.generated_at);
    if (!snap.hourly_cost.empty()) newest = std::max(newest, snap.hourly_cost.rbegin()->first);
    trim_hours(snap.hourly_cost, newest);
    for (const auto& [name, stats] : snap.models) snap.priced[name] = stats.unpriced == 0;
    return snap;
}

} // namespace relaymeter::metrics

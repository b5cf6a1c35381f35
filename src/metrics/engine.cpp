#include "relaymeter/metrics/engine.hpp"

#include "relaymeter/util/per_thread.hpp"

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

// UTC minute index (unix seconds / 60, floored) of tp.
std::int64_t minute_of(std::chrono::system_clock::time_point tp) {
    const auto secs = static_cast<std::int64_t>(std::chrono::duration_cast<std::chrono::seconds>(tp.time_since_epoch()).count());
    std::int64_t m = secs / 60;
    if (secs % 60 < 0) --m;
    return m;
}

std::int64_t hour_of_minute(std::int64_t minute) {
    std::int64_t h = minute / 60;
    if (minute % 60 < 0) --h;
    return h * kHour;
}

constexpr std::int64_t kNoMinute = std::numeric_limits<std::int64_t>::min();

// What one record adds to a ModelStats (since start and in its minute).
struct Facts {
    bool success = false;
    bool streamed = false;
    bool unpriced = false;
    const usage::Usage* usage = nullptr;
    double cost = 0;
    double latency = 0;
    double ttft = -1;
    int status = 0;
};

void apply(ModelStats& s, const Facts& f) {
    ++s.requests;
    ++(f.success ? s.successes : s.errors);
    if (f.streamed) ++s.streamed;
    if (f.unpriced) ++s.unpriced;
    s.input_tokens += f.usage->input;
    s.output_tokens += f.usage->output;
    s.cached_input_tokens += f.usage->cached_input;
    s.reasoning_tokens += f.usage->reasoning;
    s.cost_usd += f.cost;
    s.latency_sum_s += f.latency;
    ++s.status_codes[f.status];
    s.latency.observe(f.latency);
    if (f.ttft >= 0) s.ttft.observe(f.ttft);
}

void apply(KeyCounters& c, const Facts& f) {
    ++c.requests;
    if (!f.success) ++c.errors;
    c.input_tokens += f.usage->input;
    c.output_tokens += f.usage->output;
    c.cost_usd += f.cost;
}

// Finds or makes map[name].
template <class Map, class Make>
typename Map::mapped_type& slot(Map& map, const std::string& name, Make make) {
    auto it = map.find(name);
    if (it == map.end()) it = map.emplace(name, make()).first;
    return it->second;
}

// ModelStats whose sketches have the coarse (per-minute) resolution.
ModelStats coarse_stats() {
    ModelStats s;
    s.latency = LatencyHistogram(LatencyHistogram::Resolution::coarse);
    s.ttft = LatencyHistogram(LatencyHistogram::Resolution::coarse);
    return s;
}

using StatsMap = std::unordered_map<std::string, ModelStats>;

std::size_t memory_bytes(const StatsMap& map) {
    std::size_t bytes = map.bucket_count() * sizeof(void*);
    for (const auto& [name, s] : map) {
        bytes += 2 * sizeof(void*) + sizeof(name) + name.capacity() + sizeof(s) - 2 * sizeof(LatencyHistogram);
        bytes += s.latency.memory_bytes() + s.ttft.memory_bytes();
        bytes += s.status_codes.size() * (4 * sizeof(void*) + sizeof(std::pair<const int, std::uint64_t>));
    }
    return bytes;
}

template <class To, class From>
void merge_into(To& to, const From& from) {
    for (const auto& [name, stats] : from) {
        const auto [it, fresh] = to.try_emplace(name, stats);
        if (!fresh) it->second.add(stats);
    }
}

// The aggregates of one UTC minute, per canonical model name and (auth on)
// per client key name.
struct MinuteSlot {
    std::int64_t minute = kNoMinute;
    StatsMap models;
    StatsMap keys;

    void reset(std::int64_t m) {
        minute = m;
        models.clear();
        keys.clear();
    }

    void apply(const std::string& model, const std::string* key, const Facts& f) {
        metrics::apply(slot(models, model, coarse_stats), f);
        if (key != nullptr) metrics::apply(slot(keys, *key, coarse_stats), f);
    }

    std::size_t memory_bytes() const { return sizeof(*this) + metrics::memory_bytes(models) + metrics::memory_bytes(keys); }
};

// Drops hours that are not among the kHoursKept hours ending with `newest`.
void trim_hours(std::map<std::int64_t, double>& hourly, std::int64_t newest) {
    const std::int64_t first_kept = newest - (kHoursKept - 1) * kHour;
    hourly.erase(hourly.begin(), hourly.lower_bound(first_kept));
}

} // namespace

void KeyCounters::add(const KeyCounters& other) {
    requests += other.requests;
    errors += other.errors;
    input_tokens += other.input_tokens;
    output_tokens += other.output_tokens;
    cost_usd += other.cost_usd;
}

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
    explicit Shard(std::thread::id o) : owner(o) {}

    std::mutex mu_;
    StatsMap models_;                                    // by canonical name
    std::map<std::int64_t, double> hourly_;              // hour start -> USD
    StatsMap keys_;                                      // auth on: by canonical key name
    std::unordered_map<std::string, std::unordered_map<std::string, KeyCounters>> model_keys_; // model -> key

    // Windowed figures: the minute this thread records in now, and the one
    // before it with the ring generation at which it was merged into the ring
    // (a reader that copied the ring before that merge takes it from here).
    MinuteSlot cur_;
    MinuteSlot prev_;
    std::uint64_t prev_gen_ = 0;

    const std::thread::id owner;
    std::unordered_map<std::string, bool> name_cache_; // raw model name -> admitted (false: counted as "other")
    std::unordered_map<std::string, bool> key_cache_;  // the same for client key names
    std::uint64_t prices_version_ = std::numeric_limits<std::uint64_t>::max();
    std::shared_ptr<const PriceTable> prices_;
};

// The engine-wide ring of finished minutes: slot minute % kWindowMinutes.
struct Engine::Window {
    std::mutex mu_;
    std::array<MinuteSlot, Engine::kWindowMinutes> ring_;
    std::uint64_t gen_ = 0; // bumped by every merge of a shard's minute

    // Under mu_. Null when `minute` is older than what its slot holds now.
    MinuteSlot* slot_for(std::int64_t minute) {
        const auto n = static_cast<std::int64_t>(ring_.size());
        MinuteSlot& slot = ring_[static_cast<std::size_t>(((minute % n) + n) % n)];
        if (slot.minute == minute) return &slot;
        if (slot.minute > minute) return nullptr;
        slot.reset(minute);
        return &slot;
    }

    // Under mu_.
    void merge(const MinuteSlot& from) {
        MinuteSlot* to = slot_for(from.minute);
        if (to == nullptr) return;
        merge_into(to->models, from.models);
        merge_into(to->keys, from.keys);
    }
};

Engine::Engine(EngineOptions options)
    : by_key_(options.by_key),
      started_at_(std::chrono::system_clock::now()),
      prices_(std::make_shared<const PriceTable>(std::move(options.prices))),
      models_(options.max_models),
      keys_(options.max_keys),
      id_(g_next_engine_id.fetch_add(1, std::memory_order_relaxed)),
      window_(std::make_unique<Window>()) {}

Engine::~Engine() = default;

Engine::Shard& Engine::local_shard() { return util::per_thread(id_, shards_mu_, shards_); }

const std::string& Engine::canonical(NameCap& cap, std::unordered_map<std::string, bool>& cache,
                                     const std::string& name) {
    if (name == kNone || name == kOther) return name; // never count against the cap

    if (const auto it = cache.find(name); it != cache.end()) return it->second ? name : kOther;

    bool admitted = false;
    {
        const std::lock_guard lock(cap.mu);
        if (cap.admitted.count(name) != 0) {
            admitted = true;
        } else if (cap.admitted.size() < cap.cap) {
            cap.admitted.insert(name);
            admitted = true;
        }
    }
    // Admission is final both ways (the set only grows, the cap is fixed), so
    // cached answers never go stale. Bound the cache against floods of names.
    if (cache.size() >= static_cast<std::size_t>(cap.cap) + 1024) cache.clear();
    cache.emplace(name, admitted);
    return admitted ? name : kOther;
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
    const std::string& name = canonical(models_, shard.name_cache_, raw);
    const std::string* key = nullptr;
    if (by_key_) key = &canonical(keys_, shard.key_cache_, rec.key.empty() ? kNone : rec.key);

    // Priced by the raw name: a model counted as "other" still costs its price.
    Pricing pricing;
    if (rec.pricing) {
        pricing = *rec.pricing;
    } else if (raw != kNone) {
        const PriceTable* table = rec.prices ? rec.prices.get() : current_prices(shard).get();
        const config::Price* price = table != nullptr ? table->find(raw) : nullptr;
        if (price != nullptr) {
            pricing.cost_usd = PriceTable::cost(*price, rec.usage);
        } else {
            pricing.unpriced = true;
        }
    }
    const double cost = pricing.cost_usd;

    const auto finished =
        rec.finished_at == std::chrono::system_clock::time_point{} ? std::chrono::system_clock::now() : rec.finished_at;
    const std::int64_t hour = hour_of(finished);
    const bool success = rec.status >= 200 && rec.status < 300;

    Facts facts;
    facts.success = success;
    facts.streamed = rec.streamed;
    facts.unpriced = pricing.unpriced;
    facts.usage = &rec.usage;
    facts.cost = cost;
    facts.latency = rec.latency_s > 0 ? rec.latency_s : 0;
    facts.ttft = rec.ttft_s;
    facts.status = rec.status;
    const std::int64_t minute = minute_of(finished);

    {
        const std::lock_guard lock(shard.mu_);
        apply(slot(shard.models_, name, [] { return ModelStats{}; }), facts);
        if (key != nullptr) {
            apply(slot(shard.keys_, *key, [] { return ModelStats{}; }), facts);
            apply(slot(slot(shard.model_keys_, name, [] { return std::unordered_map<std::string, KeyCounters>{}; }), *key,
                       [] { return KeyCounters{}; }),
                  facts);
        }

        if (minute == shard.cur_.minute) {
            shard.cur_.apply(name, key, facts);
        } else if (minute > shard.cur_.minute) {
            // A new minute for this thread: the finished one goes to the ring
            // (lock order: shard, then window; readers never hold both).
            if (shard.cur_.minute != kNoMinute) {
                const std::lock_guard wlock(window_->mu_);
                window_->merge(shard.cur_);
                shard.prev_gen_ = ++window_->gen_;
            }
            shard.prev_ = std::move(shard.cur_);
            shard.cur_.reset(minute);
            shard.cur_.apply(name, key, facts);
        } else {
            // Finished in an earlier minute than this thread's latest record (rare): straight to the ring.
            const std::lock_guard wlock(window_->mu_);
            if (MinuteSlot* old = window_->slot_for(minute)) old->apply(name, key, facts);
        }

        shard.hourly_[hour] += cost;
        if (shard.hourly_.size() > static_cast<std::size_t>(kHoursKept)) trim_hours(shard.hourly_, shard.hourly_.rbegin()->first);
    }
    if (sink_) sink_(rec, pricing);
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
    snap.by_key = by_key_;
    {
        const std::lock_guard lock(shards_mu_);
        for (const auto& shard : shards_) {
            const std::lock_guard shard_lock(shard->mu_);
            for (const auto& [name, stats] : shard->models_) snap.models[name].add(stats);
            for (const auto& [hour, cost] : shard->hourly_) snap.hourly_cost[hour] += cost;
            for (const auto& [name, stats] : shard->keys_) snap.keys[name].add(stats);
            for (const auto& [model, per_key] : shard->model_keys_) {
                auto& to = snap.model_keys[model];
                for (const auto& [name, counters] : per_key) to[name].add(counters);
            }
        }
    }
    std::int64_t newest = hour_of(snap.generated_at);
    if (!snap.hourly_cost.empty()) newest = std::max(newest, snap.hourly_cost.rbegin()->first);
    trim_hours(snap.hourly_cost, newest);
    for (const auto& [name, stats] : snap.models) snap.priced[name] = stats.unpriced == 0;
    return snap;
}

Snapshot Engine::snapshot_window(std::chrono::seconds window) const {
    return snapshot_window(window, std::chrono::system_clock::now());
}

Snapshot Engine::snapshot_window(std::chrono::seconds window, std::chrono::system_clock::time_point now) const {
    window = std::clamp(window, kMinWindow, kMaxWindow);
    const std::int64_t hi = minute_of(now);
    const std::int64_t lo = minute_of(now - window);

    Snapshot snap;
    snap.started_at = started_at_;
    snap.generated_at = now;
    snap.window_start = std::chrono::system_clock::time_point(std::chrono::minutes(lo));
    snap.in_flight = in_flight();
    snap.by_key = by_key_;
    auto take = [&](const MinuteSlot& from) {
        if (from.minute < lo || from.minute > hi) return;
        for (const auto& [name, stats] : from.models) {
            const auto [it, fresh] = snap.models.try_emplace(name, stats);
            if (!fresh) it->second.add(stats);
            snap.hourly_cost[hour_of_minute(from.minute)] += stats.cost_usd;
        }
        merge_into(snap.keys, from.keys);
    };

    std::uint64_t seen_gen = 0;
    {
        const std::lock_guard lock(window_->mu_);
        for (const auto& slot : window_->ring_) take(slot);
        seen_gen = window_->gen_;
    }
    {
        const std::lock_guard lock(shards_mu_);
        for (const auto& shard : shards_) {
            const std::lock_guard shard_lock(shard->mu_);
            take(shard->cur_);
            if (shard->prev_gen_ > seen_gen) take(shard->prev_); // merged into the ring after we read it
        }
    }
    for (const auto& [name, stats] : snap.models) snap.priced[name] = stats.unpriced == 0;
    return snap;
}

std::size_t Engine::window_memory_bytes() const {
    std::size_t bytes = sizeof(Window);
    {
        const std::lock_guard lock(window_->mu_);
        for (const auto& slot : window_->ring_) bytes += slot.memory_bytes() - sizeof(slot);
    }
    const std::lock_guard lock(shards_mu_);
    for (const auto& shard : shards_) {
        const std::lock_guard shard_lock(shard->mu_);
        bytes += shard->cur_.memory_bytes() + shard->prev_.memory_bytes();
    }
    return bytes;
}

} // namespace relaymeter::metrics

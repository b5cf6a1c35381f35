// Unit tests of the pure metrics module: price table, latency histogram and
// quantile sketch, aggregation engine.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "unit/fixtures.hpp"
#include "relaymeter/metrics/engine.hpp"
#include "relaymeter/metrics/histogram.hpp"
#include "relaymeter/metrics/price_table.hpp"
#include "relaymeter/metrics/record.hpp"

using namespace relaymeter;
using metrics::Engine;
using metrics::EngineOptions;
using metrics::LatencyHistogram;
using metrics::PriceTable;
using metrics::Record;

using namespace relaymeter::testfixtures;

namespace {

// The contract's prices, with a cached_input price on deepseek-v3.2 so that
// both branches of the cached-token formula are exercised.
std::map<std::string, config::Price> prices_with_cached() {
    auto p = default_prices();
    p["deepseek-v3.2"].cached_input = 0.042;
    return p;
}

// The exact nearest-rank quantile: the value at 1-based rank ceil(q * n)
// (at least 1), over the sorted values. Same rank rule as the sketch.
double exact_quantile(const std::vector<double>& sorted, double q) {
    const auto n = sorted.size();
    double r = std::ceil(q * static_cast<double>(n) - 1e-9);
    r = std::clamp(r, 1.0, static_cast<double>(n));
    return sorted[static_cast<std::size_t>(r) - 1];
}

const std::vector<double> kQuantiles = {0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0};

void check_accuracy(std::vector<double> values, const char* what) {
    LatencyHistogram h;
    for (const double v : values) h.observe(v);
    // The same values spread over four histograms and merged must answer the same.
    LatencyHistogram parts[4];
    for (std::size_t i = 0; i < values.size(); ++i) parts[i % 4].observe(values[i]);
    LatencyHistogram merged;
    for (const auto& p : parts) merged.merge(p);

    std::sort(values.begin(), values.end());
    REQUIRE(h.count() == values.size());
    REQUIRE(merged.count() == values.size());
    for (const double q : kQuantiles) {
        const double exact = exact_quantile(values, q);
        INFO(what << " n=" << values.size() << " q=" << q << " exact=" << exact << " sketch=" << h.quantile(q)
                  << " merged=" << merged.quantile(q));
        CHECK(std::abs(h.quantile(q) - exact) <= 0.01 * exact);
        CHECK(merged.quantile(q) == h.quantile(q));
    }
}

} // namespace

// ---------------------------------------------------------------- cost

TEST_CASE("metrics: cost formula without a cached_input price charges cached tokens at the input price") {
    const config::Price p{8.0, 32.0, std::nullopt};
    // ((1000-200)*8 + 200*8 + 500*32) / 1e6
    CHECK(PriceTable::cost(p, make_usage(1000, 500, 200)) == Approx(0.024).epsilon(1e-12));
    CHECK(PriceTable::cost(p, make_usage(1000, 500, 0)) == Approx(0.024).epsilon(1e-12));
    CHECK(PriceTable::cost(p, make_usage(0, 0)) == 0.0);
}

TEST_CASE("metrics: cost formula with a cached_input price") {
    const config::Price p{8.0, 32.0, 2.0};
    // (800*8 + 200*2 + 500*32) / 1e6 = 0.0228
    CHECK(PriceTable::cost(p, make_usage(1000, 500, 200)) == Approx(0.0228).epsilon(1e-12));
    // Reasoning tokens are part of the output tokens: no extra charge.
    CHECK(PriceTable::cost(p, make_usage(1000, 500, 200, 400)) == Approx(0.0228).epsilon(1e-12));
    // Cached above input is clamped to input: 100 cached tokens at 2.0.
    CHECK(PriceTable::cost(p, make_usage(100, 0, 500)) == Approx(100 * 2.0 / 1e6).epsilon(1e-12));
    // A cached price of 0 is honoured (not treated as absent).
    CHECK(PriceTable::cost(config::Price{8.0, 32.0, 0.0}, make_usage(1000, 0, 1000)) == 0.0);
}

TEST_CASE("metrics: cost is not rounded") {
    const config::Price p{0.42, 1.68, std::nullopt};
    const double c = PriceTable::cost(p, make_usage(7, 3));
    CHECK(c == Approx((7 * 0.42 + 3 * 1.68) / 1e6).epsilon(1e-12));
    CHECK(c < 1e-5);
    CHECK(c > 0);
}

TEST_CASE("metrics: price table lookup") {
    const PriceTable table(prices_with_cached());
    REQUIRE(table.find("gpt-4.1") != nullptr);
    CHECK(table.find("gpt-4.1")->output == 32.0);
    CHECK(table.find("deepseek-v3.2")->cached_input.value() == 0.042);
    CHECK(table.find("gpt-4") == nullptr);
    CHECK(table.find("") == nullptr);
    CHECK(PriceTable().find("gpt-4.1") == nullptr);
}

TEST_CASE("metrics: unknown model is unpriced and costs 0, none is never unpriced") {
    Engine engine(EngineOptions{64, prices_with_cached()});
    engine.record(make_record("gpt-4.1", 200, 1.0, make_usage(1000, 1000)));
    engine.record(make_record("mystery-model", 200, 1.0, make_usage(1000, 1000)));
    engine.record(make_record("mystery-model", 500, 1.0));
    engine.record(make_record("none", 400, 0.01));
    engine.record(make_record("", 400, 0.01)); // not sanitized: counted as none
    const auto snap = engine.snapshot();

    REQUIRE(snap.models.size() == 3);
    CHECK(snap.models.at("none").requests == 2);
    CHECK(snap.models.at("gpt-4.1").cost_usd == Approx(0.040).epsilon(1e-12));
    CHECK(snap.models.at("gpt-4.1").unpriced == 0);
    CHECK(snap.priced.at("gpt-4.1"));

    CHECK(snap.models.at("mystery-model").cost_usd == 0.0);
    CHECK(snap.models.at("mystery-model").unpriced == 2);
    CHECK_FALSE(snap.priced.at("mystery-model"));

    CHECK(snap.models.at("none").unpriced == 0);
    CHECK(snap.priced.at("none"));
    CHECK(snap.models.at("none").cost_usd == 0.0);
}

// ---------------------------------------------------------------- histogram

TEST_CASE("metrics: histogram sketch parameters give <= 1% relative error in bounded memory") {
    const double alpha = (LatencyHistogram::kGamma - 1) / (LatencyHistogram::kGamma + 1);
    CHECK(alpha < 0.01);
    CHECK(LatencyHistogram::sketch_capacity() < 1200); // ~9 KiB of counters at most
    CHECK(LatencyHistogram::sketch_index(0) == 0);
    CHECK(LatencyHistogram::sketch_index(1e-9) == 0);
    CHECK(LatencyHistogram::sketch_index(1e-6) == 0);
    CHECK(static_cast<std::size_t>(LatencyHistogram::sketch_index(3600)) + 1 == LatencyHistogram::sketch_capacity());
    CHECK(LatencyHistogram::sketch_index(1e9) == LatencyHistogram::sketch_index(3600));
    CHECK(LatencyHistogram::sketch_index(1.0) < LatencyHistogram::sketch_index(1.03));
}

TEST_CASE("metrics: histogram quantiles within 1% of exact nearest rank, uniform") {
    std::mt19937_64 rng(1);
    std::uniform_real_distribution<double> dist(0.001, 10.0);
    std::vector<double> v(100000);
    for (auto& x : v) x = dist(rng);
    check_accuracy(v, "uniform");
}

TEST_CASE("metrics: histogram quantiles within 1% of exact nearest rank, lognormal") {
    std::mt19937_64 rng(2);
    std::lognormal_distribution<double> dist(std::log(0.5), 1.5);
    std::vector<double> v(100000);
    for (auto& x : v) x = std::clamp(dist(rng), 1e-6, 3600.0);
    check_accuracy(v, "lognormal");
}

TEST_CASE("metrics: histogram quantiles within 1% of exact nearest rank, bimodal") {
    std::mt19937_64 rng(3);
    std::normal_distribution<double> fast(0.050, 0.005);
    std::normal_distribution<double> slow(5.0, 0.8);
    std::bernoulli_distribution pick_slow(0.1);
    std::vector<double> v(100000);
    for (auto& x : v) x = std::max(1e-6, pick_slow(rng) ? slow(rng) : fast(rng));
    check_accuracy(v, "bimodal");
}

TEST_CASE("metrics: histogram quantiles within 1% of exact nearest rank, log-uniform over 1us..1h") {
    std::mt19937_64 rng(4);
    std::uniform_real_distribution<double> exponent(std::log(1e-6), std::log(3600.0));
    std::vector<double> v(100000);
    for (auto& x : v) x = std::exp(exponent(rng));
    check_accuracy(v, "log-uniform");
}

TEST_CASE("metrics: histogram quantiles, constant and tiny samples") {
    check_accuracy(std::vector<double>(100000, 0.2345), "constant");
    check_accuracy({1.5}, "n=1");
    check_accuracy({0.2, 7.0}, "n=2");
    check_accuracy({3.0, 0.001, 0.5}, "n=3");
    check_accuracy({1e-6, 3600.0}, "range ends");
}

TEST_CASE("metrics: histogram basics: empty, sum, count, clamping, buckets") {
    LatencyHistogram h;
    CHECK(h.quantile(0.5) == 0.0);
    CHECK(h.count() == 0);

    h.observe(0.005); // on a bound: goes into le="0.005"
    h.observe(0.0051);
    h.observe(300);   // last finite bound
    h.observe(301);   // +Inf
    h.observe(7200);  // beyond the sketch range: clamped there, exact max kept
    h.observe(-1);    // negative: counted as 0
    CHECK(h.count() == 6);
    CHECK(h.sum() == Approx(0.005 + 0.0051 + 300 + 301 + 7200));
    const auto& b = h.buckets();
    CHECK(b[0] == 2); // 0.005 and the 0
    CHECK(b[1] == 1); // 0.0051
    CHECK(b[metrics::kLatencyBuckets.size() - 1] == 1); // 300
    CHECK(b[metrics::kLatencyBuckets.size()] == 2);     // 301, 7200
    std::uint64_t total = 0;
    for (const auto n : b) total += n;
    CHECK(total == h.count());
    CHECK(h.quantile(1.0) == 7200);
    CHECK(h.quantile(0.0) == 0);
}

TEST_CASE("metrics: histogram merge into empty and of empty") {
    LatencyHistogram a, b, empty;
    for (int i = 1; i <= 100; ++i) a.observe(i * 0.01);
    b.merge(a);
    b.merge(empty);
    CHECK(b.count() == 100);
    CHECK(b.quantile(0.5) == a.quantile(0.5));
    CHECK(b.buckets() == a.buckets());
    empty.merge(LatencyHistogram{});
    CHECK(empty.count() == 0);
}

// ---------------------------------------------------------------- engine

TEST_CASE("metrics: engine with 4 threads x 10000 records gives exact totals") {
    Engine engine(EngineOptions{64, prices_with_cached()});
    constexpr int kThreads = 4;
    constexpr int kPerThread = 10000;
    const char* models[] = {"gpt-4.1", "deepseek-v3.2", "mystery"};

    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&engine, &models, t] {
            for (int i = 0; i < kPerThread; ++i) {
                Record r = make_record(models[i % 3], i % 10 == 0 ? 502 : 200, 0.001 * (1 + i % 100),
                                       make_usage(100, 50, 10, 5));
                r.streamed = (i % 2 == 0);
                r.ttft_s = r.streamed ? 0.01 : -1;
                engine.request_started();
                engine.record(r);
                engine.request_finished();
                if (i % 1000 == 0) (void)engine.snapshot(); // concurrent readers
            }
            (void)t;
        });
    }
    for (auto& th : threads) th.join();

    const auto snap = engine.snapshot();
    CHECK(snap.in_flight == 0);
    const auto all = snap.overall();
    constexpr std::uint64_t n = kThreads * kPerThread;
    CHECK(all.requests == n);
    CHECK(all.errors == n / 10);
    CHECK(all.successes == n - n / 10);
    CHECK(all.input_tokens == 100 * n);
    CHECK(all.output_tokens == 50 * n);
    CHECK(all.cached_input_tokens == 10 * n);
    CHECK(all.reasoning_tokens == 5 * n);
    CHECK(all.streamed == n / 2);
    CHECK(all.latency.count() == n);
    CHECK(all.ttft.count() == n / 2);
    CHECK(all.status_codes.at(200) == n - n / 10);
    CHECK(all.status_codes.at(502) == n / 10);

    std::uint64_t per_model_total = 0;
    for (const auto& [name, s] : snap.models) per_model_total += s.requests;
    CHECK(per_model_total == n);

    // i % 3 over 0..9999: model 0 gets 3334 per thread, the others 3333.
    const auto& gpt = snap.models.at("gpt-4.1");
    CHECK(gpt.requests == 4 * 3334);
    const double gpt_cost = (90 * 8.0 + 10 * 8.0 + 50 * 32.0) / 1e6;
    CHECK(gpt.cost_usd == Approx(gpt_cost * 4 * 3334).epsilon(1e-9));
    const auto& ds = snap.models.at("deepseek-v3.2");
    const double ds_cost = (90 * 0.42 + 10 * 0.042 + 50 * 1.68) / 1e6;
    CHECK(ds.cost_usd == Approx(ds_cost * 4 * 3333).epsilon(1e-9));
    CHECK(snap.models.at("mystery").unpriced == 4 * 3333);
    CHECK(all.unpriced == 4 * 3333);
}

TEST_CASE("metrics: model cap admits max_models names, the rest count as other") {
    Engine engine(EngineOptions{3, prices_with_cached()});
    for (int i = 0; i < 10; ++i) engine.record(make_record("m" + std::to_string(i), 200, 0.1));
    engine.record(make_record("m0", 200, 0.1)); // admitted earlier: still its own
    engine.record(make_record("m9", 200, 0.1)); // rejected earlier: still other
    engine.record(make_record("none", 200, 0.1));
    engine.record(make_record("other", 200, 0.1));
    engine.record(make_record("gpt-4.1", 200, 0.1, make_usage(1000, 0))); // past the cap, but priced by its name

    const auto snap = engine.snapshot();
    std::vector<std::string> names;
    for (const auto& [name, s] : snap.models) names.push_back(name);
    CHECK(names == std::vector<std::string>{"m0", "m1", "m2", "none", "other"});
    CHECK(snap.models.at("m0").requests == 2);
    CHECK(snap.models.at("other").requests == 7 + 1 + 1 + 1);
    CHECK(snap.models.at("other").cost_usd == Approx(1000 * 8.0 / 1e6).epsilon(1e-12));
    CHECK(snap.models.at("none").requests == 1);
    CHECK(snap.overall().requests == 15);
}

TEST_CASE("metrics: model cap holds process-wide across threads, none/other do not count") {
    Engine engine(EngineOptions{3, {}});
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&engine, t] {
            for (int i = 0; i < 200; ++i) {
                engine.record(make_record("t" + std::to_string(t) + "-m" + std::to_string(i % 20), 200, 0.1));
                engine.record(make_record(i % 2 ? "none" : "other", 200, 0.1));
            }
        });
    }
    for (auto& th : threads) th.join();
    const auto snap = engine.snapshot();
    std::size_t named = 0;
    for (const auto& [name, s] : snap.models) {
        if (name != "none" && name != "other") ++named;
    }
    CHECK(named == 3);
    CHECK(snap.models.size() == 5);
    CHECK(snap.models.at("none").requests == 400);
    CHECK(snap.overall().requests == 1600);
}

TEST_CASE("metrics: max_models 0 counts every named model as other") {
    Engine engine(EngineOptions{0, {}});
    engine.record(make_record("a", 200, 0.1));
    engine.record(make_record("none", 200, 0.1));
    const auto snap = engine.snapshot();
    CHECK(snap.models.size() == 2);
    CHECK(snap.models.at("other").requests == 1);
}

TEST_CASE("metrics: failed requests' latency counts, ttft only for streams, status codes per model") {
    Engine engine(EngineOptions{64, prices_with_cached()});
    engine.record(make_record("gpt-4.1", 200, 1.0));
    engine.record(make_record("gpt-4.1", 504, 60.0));
    engine.record(make_record("gpt-4.1", 499, 2.0));
    Record s = make_record("gpt-4.1", 200, 3.0);
    s.streamed = true;
    s.ttft_s = 0.25;
    engine.record(s);
    Record zero_ttft = make_record("gemini-2.5-flash", 200, 3.0);
    zero_ttft.streamed = true;
    zero_ttft.ttft_s = 0; // observed: >= 0
    engine.record(zero_ttft);

    const auto snap = engine.snapshot();
    const auto& g = snap.models.at("gpt-4.1");
    CHECK(g.requests == 4);
    CHECK(g.errors == 2);
    CHECK(g.successes == 2);
    CHECK(g.latency.count() == 4);
    CHECK(g.latency_sum_s == Approx(66.0));
    CHECK(g.latency.quantile(1.0) == 60.0);
    CHECK(g.ttft.count() == 1);
    CHECK(g.ttft.quantile(0.5) == 0.25);
    CHECK(g.streamed == 1);
    CHECK(g.status_codes == std::map<int, std::uint64_t>{{200, 2}, {499, 1}, {504, 1}});
    CHECK(snap.models.at("gemini-2.5-flash").ttft.count() == 1);
}

TEST_CASE("metrics: hourly cost per UTC hour, last 48 hours kept") {
    Engine engine(EngineOptions{64, {{"m", {1e6, 0, std::nullopt}}}}); // 1 USD per input token
    const auto now = std::chrono::system_clock::now();
    const auto now_s = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
    const std::int64_t this_hour = now_s / 3600 * 3600;
    for (int k = 59; k >= 0; --k) {
        // k hours ago: two records in the hour (start and 59 minutes in), k+1 tokens each.
        for (const std::int64_t offset : {std::int64_t{0}, std::int64_t{59 * 60}}) {
            Record r = make_record("m", 200, 0.1, make_usage(static_cast<std::uint64_t>(k + 1), 0));
            r.finished_at = std::chrono::system_clock::time_point(std::chrono::seconds(this_hour - k * 3600 + offset));
            engine.record(r);
        }
    }
    const auto snap = engine.snapshot();
    // Reference: the hour of generated_at (robust if an hour boundary passed meanwhile).
    const auto gen_s = std::chrono::duration_cast<std::chrono::seconds>(snap.generated_at.time_since_epoch()).count();
    const std::int64_t ref_hour = gen_s / 3600 * 3600;
    std::map<std::int64_t, double> expected;
    for (int k = 0; k < 60; ++k) {
        const std::int64_t h = this_hour - k * 3600;
        if (h > ref_hour - 48 * 3600) expected[h] = 2.0 * (k + 1);
    }
    CHECK(expected.size() == (ref_hour == this_hour ? 48u : 47u));
    REQUIRE(snap.hourly_cost.size() == expected.size());
    for (const auto& [h, c] : expected) {
        INFO("hour " << h);
        REQUIRE(snap.hourly_cost.count(h) == 1);
        CHECK(snap.hourly_cost.at(h) == Approx(c).epsilon(1e-12));
    }
    // The totals are since start: trimming only affects the hourly view.
    double total = 0;
    for (int k = 0; k < 60; ++k) total += 2.0 * (k + 1);
    CHECK(snap.models.at("m").cost_usd == Approx(total).epsilon(1e-12));
}

TEST_CASE("metrics: set_prices applies to records without an explicit older table") {
    Engine engine(EngineOptions{64, {{"m", {1.0, 0, std::nullopt}}}});
    const auto old_table = engine.prices();
    engine.record(make_record("m", 200, 0.1, make_usage(1000000, 0))); // 1 USD, caches the table in the shard
    engine.set_prices({{"m", {2.0, 0, std::nullopt}}});
    CHECK(engine.prices()->find("m")->input == 2.0);
    CHECK(old_table->find("m")->input == 1.0);

    Record started_before_reload = make_record("m", 200, 0.1, make_usage(1000000, 0));
    started_before_reload.prices = old_table;
    engine.record(started_before_reload); // 1 USD
    engine.record(make_record("m", 200, 0.1, make_usage(1000000, 0))); // 2 USD: the new table
    std::thread other([&engine] { engine.record(make_record("m", 200, 0.1, make_usage(1000000, 0))); }); // 2 USD
    other.join();
    CHECK(engine.snapshot().models.at("m").cost_usd == Approx(6.0).epsilon(1e-12));

    // A reload that drops the price makes later requests unpriced.
    engine.set_prices({});
    engine.record(make_record("m", 200, 0.1, make_usage(1000000, 0)));
    const auto snap = engine.snapshot();
    CHECK(snap.models.at("m").cost_usd == Approx(6.0).epsilon(1e-12));
    CHECK(snap.models.at("m").unpriced == 1);
    CHECK_FALSE(snap.priced.at("m"));
}

TEST_CASE("metrics: several engines in one process and one thread stay independent") {
    std::vector<std::unique_ptr<Engine>> engines;
    for (int i = 0; i < 20; ++i) { // more than the per-thread shard cache holds
        engines.push_back(std::make_unique<Engine>(EngineOptions{64, {}}));
    }
    for (int round = 0; round < 3; ++round) {
        for (std::size_t i = 0; i < engines.size(); ++i) {
            engines[i]->record(make_record("e" + std::to_string(i), 200, 0.1));
        }
    }
    for (std::size_t i = 0; i < engines.size(); ++i) {
        const auto snap = engines[i]->snapshot();
        REQUIRE(snap.models.size() == 1);
        CHECK(snap.models.begin()->first == "e" + std::to_string(i));
        CHECK(snap.models.begin()->second.requests == 3);
    }
    // Destroy and recreate: a new engine never sees a dead engine's shard.
    engines.clear();
    for (int i = 0; i < 5; ++i) {
        Engine e(EngineOptions{64, {}});
        e.record(make_record("x", 200, 0.1));
        CHECK(e.snapshot().overall().requests == 1);
    }
}

TEST_CASE("metrics: snapshot overall sums every model") {
    Engine engine(EngineOptions{64, prices_with_cached()});
    engine.record(make_record("gpt-4.1", 200, 1.0, make_usage(10, 20, 5, 1)));
    engine.record(make_record("deepseek-v3.2", 429, 2.0, make_usage(30, 40)));
    const auto snap = engine.snapshot();
    const auto all = snap.overall();
    CHECK(all.requests == 2);
    CHECK(all.errors == 1);
    CHECK(all.input_tokens == 40);
    CHECK(all.output_tokens == 60);
    CHECK(all.cached_input_tokens == 5);
    CHECK(all.reasoning_tokens == 1);
    CHECK(all.latency.count() == 2);
    CHECK(all.latency_sum_s == Approx(3.0));
    CHECK(all.cost_usd == Approx(snap.models.at("gpt-4.1").cost_usd + snap.models.at("deepseek-v3.2").cost_usd));
    CHECK(all.status_codes.size() == 2);
    CHECK(snap.started_at == engine.started_at());
    CHECK(snap.generated_at >= snap.started_at);
}

TEST_CASE("metrics: with by_key, each key gets its own figures and (model, key) counters") {
    Engine engine(EngineOptions{64, prices_with_cached(), true, 2});
    auto rec = [](const char* model, const char* key, int status, usage::Usage u) {
        Record r = make_record(model, status, 0.1, u);
        r.key = key;
        return r;
    };
    engine.record(rec("gpt-4.1", "team-a", 200, make_usage(1000, 100)));
    engine.record(rec("gpt-4.1", "team-a", 500, make_usage(0, 0)));
    engine.record(rec("deepseek-v3.2", "team-b", 200, make_usage(2000, 10)));
    engine.record(rec("gpt-4.1", "team-c", 200, make_usage(10, 10))); // past max_keys: other
    engine.record(rec("none", "", 401, make_usage(0, 0)));            // no key: none, not counted in the cap

    const auto snap = engine.snapshot();
    REQUIRE(snap.by_key);
    std::vector<std::string> keys;
    for (const auto& [name, s] : snap.keys) keys.push_back(name);
    CHECK(keys == std::vector<std::string>{"none", "other", "team-a", "team-b"});
    CHECK(snap.keys.at("team-a").requests == 2);
    CHECK(snap.keys.at("team-a").errors == 1);
    CHECK(snap.keys.at("team-a").cost_usd == Approx((1000 * 8.0 + 100 * 32.0) / 1e6).epsilon(1e-12));
    CHECK(snap.keys.at("team-b").input_tokens == 2000);
    const auto& gpt = snap.model_keys.at("gpt-4.1");
    CHECK(gpt.at("team-a").requests == 2);
    CHECK(gpt.at("team-a").errors == 1);
    CHECK(gpt.at("other").output_tokens == 10);
    CHECK(snap.model_keys.at("none").at("none").errors == 1);
    // The per-model figures are the sums over keys.
    std::uint64_t sum = 0;
    for (const auto& [k, c] : gpt) sum += c.requests;
    CHECK(sum == snap.models.at("gpt-4.1").requests);

    const auto win = engine.snapshot_window(std::chrono::seconds(60));
    CHECK(win.keys.at("team-a").requests == 2);

    Engine plain(EngineOptions{64, {}});
    plain.record(rec("gpt-4.1", "team-a", 200, make_usage(1, 1)));
    CHECK_FALSE(plain.snapshot().by_key);
    CHECK(plain.snapshot().keys.empty());
}

TEST_CASE("metrics: the sink sees every record with its pricing, and given pricing is taken as is") {
    Engine engine(EngineOptions{64, prices_with_cached()});
    std::vector<std::pair<std::string, metrics::Pricing>> seen;
    engine.set_sink([&](const Record& r, const metrics::Pricing& p) { seen.emplace_back(r.model, p); });
    engine.record(make_record("gpt-4.1", 200, 0.1, make_usage(1000, 0)));
    engine.record(make_record("mystery", 200, 0.1, make_usage(1000, 0)));
    Record replayed = make_record("gpt-4.1", 200, 0.1, make_usage(1000, 0));
    replayed.pricing = metrics::Pricing{0.5, false}; // priced before, at other prices
    CHECK(engine.record(replayed) == 0.5);

    REQUIRE(seen.size() == 3);
    CHECK(seen[0].second.cost_usd == Approx(8000.0 / 1e6));
    CHECK_FALSE(seen[0].second.unpriced);
    CHECK(seen[1].second.unpriced);
    CHECK(seen[2].second.cost_usd == 0.5);
    const auto snap = engine.snapshot();
    CHECK(snap.models.at("gpt-4.1").cost_usd == Approx(0.5 + 8000.0 / 1e6).epsilon(1e-12));
    CHECK(snap.models.at("mystery").unpriced == 1);
}

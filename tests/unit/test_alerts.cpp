// Unit tests of windowed figures (the engine's per-minute ring), the alert
// evaluator, the webhook payloads and the alerts: config keys. No sockets.

#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "relaymeter/alerts/alert.hpp"
#include "relaymeter/alerts/evaluator.hpp"
#include "relaymeter/alerts/monitor.hpp"
#include "relaymeter/alerts/webhook.hpp"
#include "relaymeter/config/config.hpp"
#include "relaymeter/metrics/engine.hpp"
#include "relaymeter/metrics/histogram.hpp"

using namespace relaymeter;
using alerts::Alert;
using alerts::AlertState;
using alerts::AlertType;
using Catch::Matchers::Contains;
using metrics::Engine;
using metrics::LatencyHistogram;
using metrics::Record;
using std::chrono::minutes;
using std::chrono::seconds;
using sys_clock = std::chrono::system_clock;

namespace {

// A fixed "now": 2026-11-27T14:30:30Z (mid-minute, mid-hour).
const sys_clock::time_point kNow = sys_clock::time_point(seconds(1795789830));

std::map<std::string, config::Price> prices() {
    return {{"gpt-4.1", {8.00, 32.00, std::nullopt}}, {"deepseek-v3.2", {0.42, 1.68, std::nullopt}}};
}

Record rec(const std::string& model, int status, double latency_s, sys_clock::time_point at,
           std::uint64_t in = 0, std::uint64_t out = 0) {
    Record r;
    r.model = model;
    r.status = status;
    r.latency_s = latency_s;
    r.finished_at = at;
    r.usage.input = in;
    r.usage.output = out;
    r.usage.present = in + out > 0;
    return r;
}

std::uint64_t requests(const metrics::Snapshot& s, const std::string& model) {
    const auto it = s.models.find(model);
    return it == s.models.end() ? 0 : it->second.requests;
}

config::AlertsConfig small_thresholds() {
    config::AlertsConfig c;
    c.latency_p95_ms = 1000;
    c.error_rate_percent = 10;
    c.cost_per_hour_usd = 1.0;
    c.window_s = 300;
    c.min_requests = 5;
    c.for_s = 0;
    return c;
}

const Alert* find(const std::vector<Alert>& v, AlertType t, const std::string& model) {
    for (const auto& a : v) {
        if (a.type == t && a.model.value_or("") == model) return &a;
    }
    return nullptr;
}

config::Config load(const std::string& yaml) {
    return config::load_string(yaml, "test.yaml", [](const std::string&) -> std::optional<std::string> {
        return std::nullopt;
    });
}

std::string errors_of(const std::string& yaml) {
    try {
        load(yaml);
    } catch (const config::ConfigError& e) {
        return e.what();
    }
    return {};
}

} // namespace

// ---------------------------------------------------------------------------
// Windows

TEST_CASE("window: records land in their finished_at minute, boundaries are whole minutes", "[window]") {
    Engine e({64, prices()});
    // Minutes relative to kNow's minute (14:30): -70, -10, -3, -1, 0; one in the future.
    e.record(rec("gpt-4.1", 200, 0.1, kNow - minutes(70)));
    e.record(rec("gpt-4.1", 200, 0.1, kNow - minutes(10)));
    e.record(rec("gpt-4.1", 500, 0.1, kNow - minutes(3)));
    e.record(rec("gpt-4.1", 200, 0.1, kNow - minutes(1)));
    e.record(rec("gpt-4.1", 200, 0.1, kNow - seconds(20))); // 14:30:10, same minute as now
    e.record(rec("deepseek-v3.2", 200, 0.1, kNow + minutes(5)));

    // 60 s back from 14:30:30 is 14:29:30: minutes 14:29 and 14:30.
    auto w = e.snapshot_window(seconds(60), kNow);
    CHECK(requests(w, "gpt-4.1") == 2);
    CHECK(requests(w, "deepseek-v3.2") == 0); // not yet happened at `now`
    CHECK(alerts::iso8601(w.window_start) == "2026-11-27T14:29:00Z"); // /summary's window_start
    // 120 s: from 14:28; 180 s: from 14:27 (the 500 at 14:27:30 is in).
    CHECK(requests(e.snapshot_window(seconds(120), kNow), "gpt-4.1") == 2);
    w = e.snapshot_window(seconds(180), kNow);
    CHECK(requests(w, "gpt-4.1") == 3);
    CHECK(alerts::iso8601(w.window_start) == "2026-11-27T14:27:00Z");
    CHECK(w.models.at("gpt-4.1").errors == 1);
    CHECK(w.models.at("gpt-4.1").status_codes.at(500) == 1);
    CHECK(requests(e.snapshot_window(seconds(600), kNow), "gpt-4.1") == 4);
    // The hour: 70 minutes ago is out of the ring's reach.
    CHECK(requests(e.snapshot_window(seconds(3600), kNow), "gpt-4.1") == 4);
    // Out-of-range windows are clamped.
    CHECK(requests(e.snapshot_window(seconds(5), kNow), "gpt-4.1") == 2);
    CHECK(requests(e.snapshot_window(seconds(99999), kNow), "gpt-4.1") == 4);
    // Since start still has everything.
    CHECK(requests(e.snapshot(), "gpt-4.1") == 5);
}

TEST_CASE("window: late records (older minute than the thread's last) are counted", "[window]") {
    Engine e({64, prices()});
    e.record(rec("gpt-4.1", 200, 0.1, kNow));
    e.record(rec("gpt-4.1", 200, 0.1, kNow - minutes(2))); // late: straight into the ring
    e.record(rec("gpt-4.1", 200, 0.1, kNow - minutes(61))); // too old for the ring: dropped from windows
    CHECK(requests(e.snapshot_window(seconds(60), kNow), "gpt-4.1") == 1);
    CHECK(requests(e.snapshot_window(seconds(180), kNow), "gpt-4.1") == 2);
    CHECK(requests(e.snapshot_window(seconds(3600), kNow), "gpt-4.1") == 2);
}

TEST_CASE("window: same fields as since start, cost, tokens and hourly cost over the window", "[window]") {
    Engine e({64, prices()});
    // 14:29:30 and 14:30:30 (same hour), 15 minutes earlier 14:15:30.
    e.record(rec("gpt-4.1", 200, 0.5, kNow - minutes(15), 1000, 100));
    e.record(rec("gpt-4.1", 200, 1.0, kNow - minutes(1), 1000, 100));
    e.record(rec("gpt-4.1", 429, 2.0, kNow, 0, 0));
    const auto w = e.snapshot_window(seconds(120), kNow);
    const auto& s = w.models.at("gpt-4.1");
    CHECK(s.requests == 2);
    CHECK(s.successes == 1);
    CHECK(s.errors == 1);
    CHECK(s.input_tokens == 1000);
    CHECK(s.output_tokens == 100);
    CHECK(s.cost_usd == Approx((1000 * 8.0 + 100 * 32.0) / 1e6));
    CHECK(s.latency_sum_s == Approx(3.0));
    CHECK(s.latency.count() == 2);
    CHECK(w.priced.at("gpt-4.1"));
    REQUIRE(w.hourly_cost.size() == 1);
    CHECK(w.hourly_cost.begin()->second == Approx(s.cost_usd));
    CHECK(w.overall().requests == 2);
}

TEST_CASE("window: many threads, minute roll-over, nothing lost or double counted", "[window]") {
    Engine e({64, prices()});
    constexpr int kThreads = 4;
    constexpr int kPerThread = 3000;
    std::vector<std::thread> ts;
    for (int t = 0; t < kThreads; ++t) {
        ts.emplace_back([&e, t] {
            for (int i = 0; i < kPerThread; ++i) {
                // Walks forward through 10 minutes ending at kNow.
                const auto at = kNow - minutes(9) + seconds(i * 600 / kPerThread) - seconds(30);
                e.record(rec(t % 2 ? "gpt-4.1" : "deepseek-v3.2", 200, 0.01 * (1 + i % 50), at));
            }
        });
    }
    // Read concurrently while they record.
    for (int k = 0; k < 20; ++k) (void)e.snapshot_window(seconds(900), kNow);
    for (auto& t : ts) t.join();
    const auto w = e.snapshot_window(seconds(900), kNow);
    CHECK(w.overall().requests == kThreads * kPerThread);
    CHECK(e.snapshot().overall().requests == kThreads * kPerThread);
}

TEST_CASE("window: coarse per-minute sketch keeps percentiles within 2%", "[window]") {
    std::mt19937_64 rng(42);
    std::lognormal_distribution<double> dist(0.0, 1.0);
    std::vector<double> values;
    LatencyHistogram coarse(LatencyHistogram::Resolution::coarse);
    LatencyHistogram merged(LatencyHistogram::Resolution::coarse);
    for (int part = 0; part < 10; ++part) {
        LatencyHistogram minute(LatencyHistogram::Resolution::coarse);
        for (int i = 0; i < 2000; ++i) {
            const double v = dist(rng);
            values.push_back(v);
            minute.observe(v);
            coarse.observe(v);
        }
        merged.merge(minute);
    }
    std::sort(values.begin(), values.end());
    for (const double q : {0.5, 0.9, 0.95, 0.99}) {
        const double exact = values[static_cast<std::size_t>(std::ceil(q * values.size())) - 1];
        CHECK(std::abs(coarse.quantile(q) - exact) / exact <= 0.0197);
        CHECK(std::abs(merged.quantile(q) - exact) / exact <= 0.0197);
    }
    CHECK(merged.count() == values.size());
}

TEST_CASE("window: coarse sketch stays within kCoarseMaxBuckets, high quantiles stay exact-ish", "[window]") {
    LatencyHistogram h(LatencyHistogram::Resolution::coarse);
    // Spread over 1 us .. 1 h: far more than 256 coarse buckets.
    for (int i = 0; i <= 1000; ++i) h.observe(1e-6 * std::pow(3.6e9, i / 1000.0));
    CHECK(h.memory_bytes() <= sizeof(h) + LatencyHistogram::kCoarseMaxBuckets * sizeof(std::uint64_t));
    const double exact_p95 = 1e-6 * std::pow(3.6e9, 950 / 1000.0);
    CHECK(std::abs(h.quantile(0.95) - exact_p95) / exact_p95 <= 0.0197);
    CHECK(h.quantile(0.0) == Approx(1e-6)); // exact minimum kept
}

TEST_CASE("window: memory is bounded for 64 models x 60 minutes, worst case spread", "[window]") {
    Engine e({64, prices()});
    // Every model in every minute of the ring, latencies and TTFTs spread over
    // the whole sketch range (the worst case for the sketches), 4 status codes.
    std::mt19937_64 rng(7);
    std::uniform_real_distribution<double> exponent(0.0, 1.0);
    for (int m = 60; m >= 0; --m) {
        const auto at = kNow - minutes(m);
        for (int model = 0; model < 66; ++model) {
            const std::string name = model == 64 ? "none" : model == 65 ? "other" : "model-" + std::to_string(model);
            for (int i = 0; i < 300; ++i) {
                Record r = rec(name, i % 4 == 0 ? 200 : 400 + i % 4, 1e-6 * std::pow(3.6e9, exponent(rng)), at);
                r.streamed = true;
                r.ttft_s = 1e-6 * std::pow(3.6e9, exponent(rng));
                e.record(r);
            }
        }
    }
    const std::size_t bytes = e.window_memory_bytes();
    std::printf("window memory, 66 models x 61 minutes, worst-case spread: %.1f MiB\n",
                static_cast<double>(bytes) / (1024.0 * 1024.0));
    CHECK(bytes < 40u * 1024 * 1024);
    // And the window still answers.
    CHECK(e.snapshot_window(seconds(3600), kNow).overall().requests == 61u * 66 * 300);
}

TEST_CASE("window: typical load uses little memory", "[window]") {
    Engine e({64, prices()});
    std::mt19937_64 rng(9);
    std::lognormal_distribution<double> latency(0.0, 0.6); // ~0.2 .. 5 s
    for (int m = 60; m >= 0; --m) {
        for (int model = 0; model < 64; ++model) {
            for (int i = 0; i < 100; ++i) {
                e.record(rec("model-" + std::to_string(model), i % 20 ? 200 : 500, latency(rng), kNow - minutes(m)));
            }
        }
    }
    const std::size_t bytes = e.window_memory_bytes();
    std::printf("window memory, 64 models x 61 minutes, lognormal latencies: %.1f MiB\n",
                static_cast<double>(bytes) / (1024.0 * 1024.0));
    CHECK(bytes < 16u * 1024 * 1024);
}

// ---------------------------------------------------------------------------
// Evaluator

TEST_CASE("alerts: each type fires with its severity, value, threshold and message", "[alerts]") {
    Engine e({64, prices()});
    for (int i = 0; i < 10; ++i) {
        e.record(rec("gpt-4.1", i < 3 ? 500 : 200, 0.1, kNow - seconds(10)));       // 30% errors
        e.record(rec("deepseek-v3.2", 200, 2.5, kNow - seconds(10), 100000, 0));    // slow and
        e.record(rec("gpt-4.1", 200, 0.1, kNow - minutes(30), 10000, 0));           // costly over the hour
    }
    alerts::Evaluator ev(small_thresholds());
    const auto t = ev.evaluate(e.snapshot_window(seconds(300), kNow), e.snapshot_window(seconds(3600), kNow), kNow);

    const Alert* err = find(t, AlertType::high_error_rate, "gpt-4.1");
    REQUIRE(err != nullptr);
    CHECK(err->state == AlertState::firing);
    CHECK(alerts::severity(err->type) == "critical");
    CHECK(err->value == Approx(30.0));
    CHECK(err->threshold == 10);
    CHECK_THAT(err->message, Contains("Error rate 30.00% exceeds threshold 10%"));

    const Alert* lat = find(t, AlertType::high_latency, "deepseek-v3.2");
    REQUIRE(lat != nullptr);
    CHECK(alerts::severity(lat->type) == "warning");
    CHECK(lat->value == Approx(2500).epsilon(0.02));
    CHECK_THAT(lat->message, Contains("P95 latency"));

    const Alert* cost = find(t, AlertType::high_cost, "");
    REQUIRE(cost != nullptr);
    CHECK_FALSE(cost->model.has_value());
    CHECK(alerts::severity(cost->type) == "warning");
    // 10 x 100000 input tokens of deepseek (0.42/M) + 10 x 10000 of gpt-4.1 (8/M)
    CHECK(cost->value == Approx(10 * 100000 * 0.42 / 1e6 + 10 * 10000 * 8.0 / 1e6));

    CHECK(find(t, AlertType::high_latency, "gpt-4.1") == nullptr);
    CHECK(find(t, AlertType::high_error_rate, "deepseek-v3.2") == nullptr);
    CHECK(ev.firing().size() == 3);

    const auto j = alerts::to_json(*err);
    CHECK(j["type"] == "high_error_rate");
    CHECK(j["severity"] == "critical");
    CHECK(j["model"] == "gpt-4.1");
    CHECK(j["since"] == "2026-11-27T14:30:30Z");
    CHECK(j["state"] == "firing");
    CHECK(j["threshold"] == 10.0);
    CHECK(j.contains("value"));
    CHECK(j.contains("message"));
    CHECK(alerts::to_json(*cost)["model"].is_null());
}

TEST_CASE("alerts: min_requests suppresses rate and percentile alerts", "[alerts]") {
    Engine e({64, prices()});
    for (int i = 0; i < 4; ++i) e.record(rec("gpt-4.1", 500, 5.0, kNow)); // 100% errors, slow, but only 4
    alerts::Evaluator ev(small_thresholds());
    auto t = ev.evaluate(e.snapshot_window(seconds(300), kNow), e.snapshot_window(seconds(3600), kNow), kNow);
    CHECK(t.empty());
    e.record(rec("gpt-4.1", 500, 5.0, kNow)); // the 5th
    t = ev.evaluate(e.snapshot_window(seconds(300), kNow), e.snapshot_window(seconds(3600), kNow), kNow);
    CHECK(find(t, AlertType::high_error_rate, "gpt-4.1") != nullptr);
    CHECK(find(t, AlertType::high_latency, "gpt-4.1") != nullptr);
    // Three requests later in a fresh window: resolved, and the message says
    // how many requests the window had and how many it needs.
    const auto later = kNow + seconds(400);
    for (int i = 0; i < 3; ++i) e.record(rec("gpt-4.1", 500, 5.0, later));
    t = ev.evaluate(e.snapshot_window(seconds(300), later), e.snapshot_window(seconds(3600), later), later);
    const Alert* err = find(t, AlertType::high_error_rate, "gpt-4.1");
    REQUIRE(err != nullptr);
    CHECK(err->state == AlertState::resolved);
    CHECK(err->message ==
          "resolved: gpt-4.1: 3 requests in the last 300 s, fewer than alerts.min_requests (5): no error-rate alert");
    const Alert* lat = find(t, AlertType::high_latency, "gpt-4.1");
    REQUIRE(lat != nullptr);
    CHECK(lat->message ==
          "resolved: gpt-4.1: 3 requests in the last 300 s, fewer than alerts.min_requests (5): no latency alert");
}

TEST_CASE("alerts: per-model overrides replace the global thresholds", "[alerts]") {
    Engine e({64, prices()});
    for (int i = 0; i < 10; ++i) {
        e.record(rec("gpt-4.1", 200, 1.5, kNow));
        e.record(rec("deepseek-v3.2", 200, 1.5, kNow));
    }
    auto cfg = small_thresholds();
    cfg.models["gpt-4.1"].latency_p95_ms = 2000; // gpt-4.1 may be slower
    cfg.models["deepseek-v3.2"].error_rate_percent = 50;
    alerts::Evaluator ev(cfg);
    CHECK(ev.latency_threshold_ms("gpt-4.1") == 2000);
    CHECK(ev.latency_threshold_ms("deepseek-v3.2") == 1000);
    CHECK(ev.error_rate_threshold("deepseek-v3.2") == 50);
    CHECK(ev.error_rate_threshold("gpt-4.1") == 10);
    const auto t = ev.evaluate(e.snapshot_window(seconds(300), kNow), e.snapshot_window(seconds(3600), kNow), kNow);
    CHECK(find(t, AlertType::high_latency, "gpt-4.1") == nullptr);
    REQUIRE(find(t, AlertType::high_latency, "deepseek-v3.2") != nullptr);
    CHECK(find(t, AlertType::high_latency, "deepseek-v3.2")->threshold == 1000);
}

TEST_CASE("alerts: pending -> firing after for_s -> resolved when the window no longer shows it", "[alerts]") {
    Engine e({64, prices()});
    auto cfg = small_thresholds();
    cfg.for_s = 30;
    cfg.window_s = 60;
    alerts::Evaluator ev(cfg);
    auto eval = [&](sys_clock::time_point now) {
        return ev.evaluate(e.snapshot_window(seconds(60), now), e.snapshot_window(seconds(3600), now), now);
    };
    for (int i = 0; i < 10; ++i) e.record(rec("gpt-4.1", 503, 0.1, kNow));

    auto t = eval(kNow);
    REQUIRE(t.size() == 1);
    CHECK(t[0].state == AlertState::pending);
    CHECK(ev.firing().empty());
    CHECK(ev.pending().size() == 1);

    t = eval(kNow + seconds(15)); // still pending, no new transition
    CHECK(t.empty());
    CHECK(ev.firing().empty());

    t = eval(kNow + seconds(30));
    REQUIRE(t.size() == 1);
    CHECK(t[0].state == AlertState::firing);
    CHECK(t[0].since == kNow);
    CHECK(ev.firing().size() == 1);

    t = eval(kNow + seconds(45)); // firing stays, no transition
    CHECK(t.empty());

    // Two minutes later the 503s have left the 60 s window.
    t = eval(kNow + seconds(150));
    REQUIRE(t.size() == 1);
    CHECK(t[0].state == AlertState::resolved);
    CHECK(t[0].resolved_at == kNow + seconds(150));
    CHECK_THAT(t[0].message, Contains("resolved"));
    CHECK(alerts::to_json(t[0])["state"] == "resolved");
    CHECK(alerts::to_json(t[0]).contains("resolved_at"));
    CHECK(ev.firing().empty());
}

TEST_CASE("alerts: a pending alert whose condition clears is dropped silently", "[alerts]") {
    Engine e({64, prices()});
    auto cfg = small_thresholds();
    cfg.for_s = 60;
    cfg.window_s = 60;
    alerts::Evaluator ev(cfg);
    for (int i = 0; i < 10; ++i) e.record(rec("gpt-4.1", 500, 0.1, kNow));
    auto t = ev.evaluate(e.snapshot_window(seconds(60), kNow), e.snapshot_window(seconds(3600), kNow), kNow);
    REQUIRE(t.size() == 1);
    for (int i = 0; i < 200; ++i) e.record(rec("gpt-4.1", 200, 0.1, kNow + seconds(1))); // rate drops under 10%
    const auto later = kNow + seconds(2);
    t = ev.evaluate(e.snapshot_window(seconds(60), later), e.snapshot_window(seconds(3600), later), later);
    CHECK(t.empty());
    CHECK(ev.pending().empty());
}

TEST_CASE("alerts: for_s 0 fires at the first evaluation, cost covers the trailing 60 minutes only", "[alerts]") {
    Engine e({64, prices()});
    auto cfg = small_thresholds();
    cfg.cost_per_hour_usd = 0.5;
    alerts::Evaluator ev(cfg);
    // 0.4 USD 70 minutes ago (outside), 0.4 USD 50 minutes ago (inside): 0.4 < 0.5.
    e.record(rec("gpt-4.1", 200, 0.1, kNow - minutes(70), 50000, 0));
    e.record(rec("gpt-4.1", 200, 0.1, kNow - minutes(50), 50000, 0));
    auto t = ev.evaluate(e.snapshot_window(seconds(300), kNow), e.snapshot_window(seconds(3600), kNow), kNow);
    CHECK(find(t, AlertType::high_cost, "") == nullptr);
    e.record(rec("gpt-4.1", 200, 0.1, kNow - minutes(5), 50000, 0)); // now 0.8 in the hour
    t = ev.evaluate(e.snapshot_window(seconds(300), kNow), e.snapshot_window(seconds(3600), kNow), kNow);
    const Alert* cost = find(t, AlertType::high_cost, "");
    REQUIRE(cost != nullptr);
    CHECK(cost->state == AlertState::firing);
    CHECK(cost->value == Approx(0.8));
    CHECK_THAT(cost->message, Contains("Hourly cost $0.80 exceeds threshold $0.5"));
    // 56 minutes on, the record of 50 minutes ago has left the hour.
    const auto later = kNow + minutes(56);
    t = ev.evaluate(e.snapshot_window(seconds(300), later), e.snapshot_window(seconds(3600), later), later);
    REQUIRE(find(t, AlertType::high_cost, "") != nullptr);
    CHECK(find(t, AlertType::high_cost, "")->state == AlertState::resolved);
}

TEST_CASE("alerts: set_config applies new thresholds at the next evaluation", "[alerts]") {
    Engine e({64, prices()});
    for (int i = 0; i < 10; ++i) e.record(rec("gpt-4.1", 200, 1.5, kNow));
    alerts::Evaluator ev(small_thresholds());
    auto t = ev.evaluate(e.snapshot_window(seconds(300), kNow), e.snapshot_window(seconds(3600), kNow), kNow);
    REQUIRE(ev.firing().size() == 1);
    auto cfg = small_thresholds();
    cfg.latency_p95_ms = 5000;
    ev.set_config(cfg);
    t = ev.evaluate(e.snapshot_window(seconds(300), kNow), e.snapshot_window(seconds(3600), kNow), kNow);
    REQUIRE(t.size() == 1);
    CHECK(t[0].state == AlertState::resolved);
}

TEST_CASE("alerts: monitor logs and notifies firing and resolved, not pending", "[alerts]") {
    Engine e({64, prices()});
    std::vector<Alert> sent;
    auto cfg = small_thresholds();
    cfg.window_s = 60;
    alerts::Monitor mon(e, cfg, [&](const Alert& a) { sent.push_back(a); });
    const auto now = sys_clock::now();
    for (int i = 0; i < 10; ++i) e.record(rec("gpt-4.1", 500, 0.1, now));
    mon.evaluate_once(now);
    REQUIRE(sent.size() == 1);
    CHECK(sent[0].state == AlertState::firing);
    CHECK(mon.firing().size() == 1);
    mon.evaluate_once(now + minutes(3));
    REQUIRE(sent.size() == 2);
    CHECK(sent[1].state == AlertState::resolved);
}

TEST_CASE("alerts: ai_alerts_firing exposition", "[alerts]") {
    Alert lat;
    lat.type = AlertType::high_latency;
    lat.model = "gpt-4.1";
    lat.state = AlertState::firing;
    Alert cost;
    cost.type = AlertType::high_cost;
    cost.state = AlertState::firing;
    metrics::ExpositionOptions opts;
    opts.const_labels = {{"monitor", "holysheep"}};
    const auto text = alerts::render_prometheus({lat, cost}, opts);
    CHECK_THAT(text, Contains("# TYPE ai_alerts_firing gauge\n"));
    CHECK_THAT(text, Contains("ai_alerts_firing{monitor=\"holysheep\",type=\"high_latency\",model=\"gpt-4.1\"} 1\n"));
    CHECK_THAT(text, Contains("ai_alerts_firing{monitor=\"holysheep\",type=\"high_cost\"} 1\n"));
    const auto empty = alerts::render_prometheus({}, {});
    CHECK(empty.find("ai_alerts_firing{") == std::string::npos);
    CHECK_THAT(empty, Contains("# HELP ai_alerts_firing"));
}

// ---------------------------------------------------------------------------
// Webhook payloads

TEST_CASE("webhooks: generic payload is the alert object, target is the URL path as written", "[alerts][webhook]") {
    Alert a;
    a.type = AlertType::high_error_rate;
    a.model = "gpt-4.1";
    a.value = 12.5;
    a.threshold = 5;
    a.message = "m";
    a.since = kNow;
    a.state = AlertState::firing;
    const auto j = nlohmann::json::parse(alerts::generic_payload(a));
    CHECK(j == alerts::to_json(a));
    CHECK(j["state"] == "firing");

    config::WebhookConfig w;
    REQUIRE(config::parse_webhook_url("http://127.0.0.1:9000/hooks/relay?", w) != ""); // query not allowed
    REQUIRE(config::parse_webhook_url("http://127.0.0.1:9000/hooks/relay/", w).empty());
    CHECK(w.host == "127.0.0.1");
    CHECK(w.port == 9000);
    CHECK_FALSE(w.tls);
    CHECK(alerts::webhook_target(w) == "/hooks/relay/");
    REQUIRE(config::parse_webhook_url("https://hooks.example", w).empty());
    CHECK(w.tls);
    CHECK(w.port == 443);
    CHECK(alerts::webhook_target(w) == "/");
}

TEST_CASE("webhooks: Alertmanager v2 payload and target", "[alerts][webhook]") {
    Alert a;
    a.type = AlertType::high_latency;
    a.model = "deepseek-v3.2";
    a.value = 2500;
    a.threshold = 2000;
    a.message = "deepseek-v3.2: P95 latency 2500.0ms exceeds threshold 2000ms";
    a.since = kNow;
    a.state = AlertState::firing;
    auto j = nlohmann::json::parse(alerts::alertmanager_payload(a, "http://relay:8080/alerts"));
    REQUIRE(j.is_array());
    REQUIRE(j.size() == 1);
    CHECK(j[0]["labels"]["alertname"] == "HighLatency");
    CHECK(j[0]["labels"]["severity"] == "warning");
    CHECK(j[0]["labels"]["model"] == "deepseek-v3.2");
    CHECK(j[0]["labels"]["type"] == "high_latency");
    CHECK(j[0]["annotations"]["description"] == a.message);
    CHECK(j[0]["annotations"].contains("summary"));
    CHECK(j[0]["startsAt"] == "2026-11-27T14:30:30Z");
    CHECK_FALSE(j[0].contains("endsAt"));
    CHECK(j[0]["generatorURL"] == "http://relay:8080/alerts");

    a.state = AlertState::resolved;
    a.resolved_at = kNow + minutes(2);
    j = nlohmann::json::parse(alerts::alertmanager_payload(a));
    CHECK(j[0]["endsAt"] == "2026-11-27T14:32:30Z");
    CHECK_FALSE(j[0].contains("generatorURL"));

    Alert cost;
    cost.type = AlertType::high_cost;
    cost.state = AlertState::firing;
    j = nlohmann::json::parse(alerts::alertmanager_payload(cost));
    CHECK_FALSE(j[0]["labels"].contains("model"));
    CHECK(j[0]["labels"]["alertname"] == "HighCost");

    config::WebhookConfig w;
    w.format = config::WebhookConfig::Format::alertmanager;
    REQUIRE(config::parse_webhook_url("http://am:9093", w).empty());
    CHECK(alerts::webhook_target(w) == "/api/v2/alerts");
    REQUIRE(config::parse_webhook_url("http://am:9093/prefix/", w).empty());
    CHECK(alerts::webhook_target(w) == "/prefix/api/v2/alerts");
    CHECK(nlohmann::json::parse(alerts::payload_for(w, a)).is_array());
}

TEST_CASE("webhooks: bounded queue drops the oldest, backoff is bounded", "[alerts][webhook]") {
    alerts::BoundedQueue<int> q(3);
    CHECK_FALSE(q.push(1));
    CHECK_FALSE(q.push(2));
    CHECK_FALSE(q.push(3));
    CHECK(q.push(4)); // 1 dropped
    CHECK(q.size() == 3);
    CHECK(q.pop() == 2);
    CHECK(q.pop() == 3);
    CHECK(q.pop() == 4);
    CHECK(q.empty());
    CHECK(alerts::backoff_ms(1) == 500);
    CHECK(alerts::backoff_ms(2) == 1000);
    CHECK(alerts::backoff_ms(3) == 2000);
    CHECK(alerts::backoff_ms(30) == 8000);
    CHECK(alerts::retryable_status(503));
    CHECK(alerts::retryable_status(429));
    CHECK_FALSE(alerts::retryable_status(400));
}

// ---------------------------------------------------------------------------
// Config

TEST_CASE("config: alerts keys, overrides and webhooks are read", "[config][alerts]") {
    const auto c = load(
        "alerts:\n"
        "  window_s: 60\n"
        "  for_s: 30\n"
        "  models:\n"
        "    gpt-4.1: { latency_p95_ms: 5000 }\n"
        "    deepseek-v3.2: { error_rate_percent: 1.5, latency_p95_ms: 800 }\n"
        "  webhooks:\n"
        "    - { url: \"http://127.0.0.1:9000/hook\" }\n"
        "    - url: \"https://am.example:9093\"\n"
        "      format: alertmanager\n"
        "      timeout_s: 2\n");
    CHECK(c.alerts.window_s == 60);
    CHECK(c.alerts.for_s == 30);
    REQUIRE(c.alerts.models.size() == 2);
    CHECK(c.alerts.models.at("gpt-4.1").latency_p95_ms == 5000.0);
    CHECK_FALSE(c.alerts.models.at("gpt-4.1").error_rate_percent.has_value());
    CHECK(c.alerts.models.at("deepseek-v3.2").error_rate_percent == 1.5);
    REQUIRE(c.alerts.webhooks.size() == 2);
    CHECK(c.alerts.webhooks[0].format == config::WebhookConfig::Format::json);
    CHECK(c.alerts.webhooks[0].timeout_s == 5);
    CHECK(c.alerts.webhooks[0].path == "/hook");
    CHECK(c.alerts.webhooks[0].port == 9000);
    CHECK(c.alerts.webhooks[1].format == config::WebhookConfig::Format::alertmanager);
    CHECK(c.alerts.webhooks[1].tls);
    CHECK(c.alerts.webhooks[1].host == "am.example");
    CHECK(c.alerts.webhooks[1].timeout_s == 2);

    const auto d = load("alerts: {}\n");
    CHECK(d.alerts.for_s == 0);
    CHECK(d.alerts.models.empty());
    CHECK(d.alerts.webhooks.empty());
}

TEST_CASE("config: bad alerts keys are errors with file, line and key", "[config][alerts]") {
    CHECK_THAT(errors_of("alerts:\n  window_s: 30\n"), Contains("test.yaml:2: alerts.window_s: must be at least 60"));
    CHECK_THAT(errors_of("alerts:\n  window_s: 7200\n"), Contains("test.yaml:2: alerts.window_s: must be at most 3600"));
    CHECK_THAT(errors_of("alerts:\n  for_s: -1\n"), Contains("test.yaml:2: alerts.for_s: must not be negative"));
    CHECK_THAT(errors_of("alerts:\n  models:\n    gpt-4.1: { latency_p95_ms: 0 }\n"),
               Contains("test.yaml:3: alerts.models.gpt-4.1.latency_p95_ms: must be greater than 0"));
    CHECK_THAT(errors_of("alerts:\n  models:\n    gpt-4.1: { error_rate: 3 }\n"),
               Contains("test.yaml:3: alerts.models.gpt-4.1.error_rate: unknown key"));
    CHECK_THAT(errors_of("alerts:\n  models: [a]\n"), Contains("test.yaml:2: alerts.models: expected a map"));
    CHECK_THAT(errors_of("alerts:\n  webhooks:\n    - url: \"ftp://x\"\n"),
               Contains("test.yaml:3: alerts.webhooks[0].url: malformed URL 'ftp://x': scheme must be http or https"));
    const auto secret = errors_of("alerts:\n  webhooks:\n    - url: \"http://user:hunter2@x/h\"\n");
    CHECK_THAT(secret, Contains("test.yaml:3: alerts.webhooks[0].url: malformed URL"));
    CHECK(secret.find("hunter2") == std::string::npos);
    CHECK_THAT(errors_of("alerts:\n  webhooks:\n    - { format: json }\n"),
               Contains("test.yaml:3: alerts.webhooks[0].url: required"));
    CHECK_THAT(errors_of("alerts:\n  webhooks:\n    - { url: \"http://x\", format: slack }\n"),
               Contains("test.yaml:3: alerts.webhooks[0].format: unknown format 'slack'; accepted: json, alertmanager"));
    CHECK_THAT(errors_of("alerts:\n  webhooks:\n    - { url: \"http://x\", timeout_s: 0 }\n"),
               Contains("test.yaml:3: alerts.webhooks[0].timeout_s: must be greater than 0"));
    CHECK_THAT(errors_of("alerts:\n  webhooks: \"http://x\"\n"), Contains("test.yaml:2: alerts.webhooks: expected a list"));
    CHECK_THAT(errors_of("alerts:\n  webhooks:\n    - \"http://x\"\n"),
               Contains("test.yaml:3: alerts.webhooks[0]: expected a map"));
}

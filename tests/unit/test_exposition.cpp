// Unit tests of the serializers: Prometheus text exposition, /summary JSON and
// the plain-text table.
#include <catch2/catch.hpp>

#include <unistd.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "unit/fixtures.hpp"
#include "relaymeter/metrics/engine.hpp"
#include "relaymeter/metrics/exposition.hpp"

using namespace relaymeter;
using metrics::Engine;
using metrics::EngineOptions;
using metrics::ExpositionOptions;
using metrics::Record;

using namespace relaymeter::testfixtures;

namespace {

// One sample line of the text format.
struct Sample {
    std::string name;
    std::string labels; // the text between the braces, "" when none
    std::string value;
};

std::vector<Sample> parse_samples(const std::string& text) {
    std::vector<Sample> out;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty() || line[0] == '#') continue;
        Sample s;
        const auto brace = line.find('{');
        const auto space = line.rfind(' ');
        if (brace != std::string::npos && brace < space) {
            s.name = line.substr(0, brace);
            const auto close = line.rfind('}');
            s.labels = line.substr(brace + 1, close - brace - 1);
        } else {
            s.name = line.substr(0, space);
        }
        s.value = line.substr(space + 1);
        out.push_back(s);
    }
    return out;
}

std::set<std::string> label_sets(const std::vector<Sample>& samples, const std::string& name) {
    std::set<std::string> sets;
    for (const auto& s : samples) {
        if (s.name == name) sets.insert(s.labels);
    }
    return sets;
}

std::unique_ptr<Engine> populated_engine() {
    auto engine = std::make_unique<Engine>(EngineOptions{64, default_prices()});
    engine->record(make_record("gpt-4.1", 200, 0.3, make_usage(100, 200)));
    engine->record(make_record("gpt-4.1", 200, 1.7, make_usage(100, 200, 50, 20)));
    engine->record(make_record("gpt-4.1", 429, 0.004));
    engine->record(make_record("gpt-4.1", 200, 400.0, make_usage(1, 1))); // beyond the last bound
    Record s = make_record("deepseek-v3.2", 200, 4.0, make_usage(1000, 2000));
    s.streamed = true;
    s.ttft_s = 0.2;
    engine->record(s);
    engine->record(make_record("weird\"name\\with\nnewline", 502, 0.01));
    engine->record(make_record("none", 401, 0.001));
    engine->request_started();
    return engine;
}

struct CommandResult {
    int status = -1;
    std::string output;
};

CommandResult run_command(const std::string& cmd) {
    CommandResult r;
    FILE* p = popen(cmd.c_str(), "r");
    if (p == nullptr) return r;
    char buf[4096];
    std::size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
    const int st = pclose(p);
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return r;
}

// Runs `promtool check metrics` on the text; empty optional when promtool is absent.
std::optional<CommandResult> promtool_check(const std::string& text) {
    if (access("/usr/bin/promtool", X_OK) != 0) return std::nullopt;
    char path[] = "/tmp/relaymeter_metrics_XXXXXX";
    const int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    close(fd);
    {
        std::ofstream f(path, std::ios::binary);
        f << text;
    }
    auto r = run_command(std::string("/usr/bin/promtool check metrics < ") + path + " 2>&1");
    std::remove(path);
    return r;
}

// "YYYY-MM-DDTHH:MM:SSZ"; with hour_only, minutes and seconds must be 00.
// (Hand-written: std::regex trips a GCC 12 -Wmaybe-uninitialized false positive.)
bool is_iso8601_utc(const std::string& s, bool hour_only = false) {
    static const std::string pattern = "dddd-dd-ddTdd:dd:ddZ";
    if (s.size() != pattern.size()) return false;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (pattern[i] == 'd' ? !(s[i] >= '0' && s[i] <= '9') : s[i] != pattern[i]) return false;
    }
    return !hour_only || s.compare(13, 6, ":00:00") == 0;
}

} // namespace

TEST_CASE("exposition: label value escaping") {
    CHECK(metrics::escape_label_value("plain-model_1.0") == "plain-model_1.0");
    CHECK(metrics::escape_label_value("a\"b") == "a\\\"b");
    CHECK(metrics::escape_label_value("a\\b") == "a\\\\b");
    CHECK(metrics::escape_label_value("a\nb") == "a\\nb");
    CHECK(metrics::escape_label_value("\\\"\n") == "\\\\\\\"\\n");
    CHECK(metrics::escape_label_value("") == "");
}

TEST_CASE("exposition: escaped model names in the series") {
    const auto engine = populated_engine();
    const auto text = metrics::render_prometheus(engine->snapshot(), {});
    CHECK(text.find("ai_requests_total{model=\"weird\\\"name\\\\with\\nnewline\"} 1\n") != std::string::npos);
    // No raw newline inside a label value: every line is a comment or a sample.
    for (const auto& s : parse_samples(text)) CHECK_FALSE(s.value.empty());
}

TEST_CASE("exposition: histogram buckets are cumulative and +Inf equals _count") {
    const auto engine = populated_engine();
    const auto snap = engine->snapshot();
    const auto samples = parse_samples(metrics::render_prometheus(snap, {}));

    for (const std::string family : {"ai_request_latency_seconds", "ai_request_ttft_seconds"}) {
        std::map<std::string, std::vector<std::pair<std::string, double>>> buckets; // model -> (le, value)
        std::map<std::string, double> counts;
        std::map<std::string, double> sums;
        for (const auto& s : samples) {
            const auto le_pos = s.labels.find(",le=\"");
            if (s.name == family + "_bucket") {
                REQUIRE(le_pos != std::string::npos);
                const auto model = s.labels.substr(0, le_pos);
                const auto le = s.labels.substr(le_pos + 5, s.labels.size() - le_pos - 6);
                buckets[model].emplace_back(le, std::stod(s.value));
            } else if (s.name == family + "_count") {
                counts[s.labels] = std::stod(s.value);
            } else if (s.name == family + "_sum") {
                sums[s.labels] = std::stod(s.value);
            }
        }
        REQUIRE_FALSE(buckets.empty());
        CHECK(buckets.size() == counts.size());
        CHECK(buckets.size() == sums.size());
        for (const auto& [model, bs] : buckets) {
            INFO(family << " " << model);
            REQUIRE(bs.size() == metrics::kLatencyBuckets.size() + 1);
            for (std::size_t i = 1; i < bs.size(); ++i) CHECK(bs[i].second >= bs[i - 1].second);
            for (std::size_t i = 0; i + 1 < bs.size(); ++i) CHECK(std::stod(bs[i].first) == metrics::kLatencyBuckets[i]);
            CHECK(bs.back().first == "+Inf");
            REQUIRE(counts.count(model) == 1);
            CHECK(bs.back().second == counts.at(model));
        }
    }
    // gpt-4.1: 0.004 (le 0.005), 0.3 (le 0.5), 1.7 (le 2.5), 400 (+Inf only).
    const auto text = metrics::render_prometheus(snap, {});
    CHECK(text.find("ai_request_latency_seconds_bucket{model=\"gpt-4.1\",le=\"0.005\"} 1\n") != std::string::npos);
    CHECK(text.find("ai_request_latency_seconds_bucket{model=\"gpt-4.1\",le=\"0.5\"} 2\n") != std::string::npos);
    CHECK(text.find("ai_request_latency_seconds_bucket{model=\"gpt-4.1\",le=\"300\"} 3\n") != std::string::npos);
    CHECK(text.find("ai_request_latency_seconds_bucket{model=\"gpt-4.1\",le=\"+Inf\"} 4\n") != std::string::npos);
    CHECK(text.find("ai_request_latency_seconds_count{model=\"gpt-4.1\"} 4\n") != std::string::npos);
    // ttft only for models with streams.
    CHECK(text.find("ai_request_ttft_seconds_count{model=\"deepseek-v3.2\"} 1\n") != std::string::npos);
    CHECK(text.find("ai_request_ttft_seconds_count{model=\"gpt-4.1\"}") == std::string::npos);
}

TEST_CASE("exposition: errors and requests carry the same label sets") {
    const auto engine = populated_engine();
    const auto samples = parse_samples(metrics::render_prometheus(engine->snapshot(), {{{"monitor", "x"}}, "1.2.3"}));
    const auto requests = label_sets(samples, "ai_requests_total");
    CHECK(requests.size() == 4);
    CHECK(requests == label_sets(samples, "ai_request_errors_total"));
    CHECK(requests == label_sets(samples, "ai_request_cost_total"));
    CHECK(requests == label_sets(samples, "ai_request_unpriced_total"));
    for (const auto& s : samples) {
        if (s.name == "ai_request_errors_total" && s.labels.find("deepseek") != std::string::npos) CHECK(s.value == "0");
    }
}

TEST_CASE("exposition: constant labels on every series, build info and figures") {
    const auto engine = populated_engine();
    const auto snap = engine->snapshot();
    ExpositionOptions opts{{{"monitor", "holysheep"}, {"region", "eu \"west\""}}, "0.1.0"};
    const auto text = metrics::render_prometheus(snap, opts);
    const auto samples = parse_samples(text);
    std::set<std::string> families;
    for (const auto& s : samples) {
        INFO(s.name << "{" << s.labels << "}");
        CHECK(s.labels.rfind("monitor=\"holysheep\",region=\"eu \\\"west\\\"\"", 0) == 0);
        families.insert(s.name);
    }
    for (const char* f : {"ai_requests_total", "ai_request_errors_total", "ai_request_status_total",
                          "ai_request_cost_total", "ai_request_tokens_total", "ai_request_cached_tokens_total",
                          "ai_request_reasoning_tokens_total", "ai_request_unpriced_total",
                          "ai_request_latency_seconds_bucket", "ai_request_latency_seconds_sum",
                          "ai_request_latency_seconds_count", "ai_request_ttft_seconds_bucket",
                          "ai_requests_in_flight", "relaymeter_build_info", "process_resident_memory_bytes",
                          "process_cpu_seconds_total", "process_start_time_seconds", "process_open_fds"}) {
        INFO(f);
        CHECK(families.count(f) == 1);
    }
    const std::string cl = "monitor=\"holysheep\",region=\"eu \\\"west\\\"\"";
    CHECK(text.find("relaymeter_build_info{" + cl + ",version=\"0.1.0\"} 1\n") != std::string::npos);
    CHECK(text.find("ai_requests_in_flight{" + cl + "} 1\n") != std::string::npos);
    CHECK(text.find("ai_request_status_total{" + cl + ",model=\"gpt-4.1\",code=\"429\"} 1\n") != std::string::npos);
    CHECK(text.find("ai_request_tokens_total{" + cl + ",model=\"gpt-4.1\",type=\"input\"} 201\n") != std::string::npos);
    CHECK(text.find("ai_request_tokens_total{" + cl + ",model=\"gpt-4.1\",type=\"output\"} 401\n") != std::string::npos);
    CHECK(text.find("ai_request_cached_tokens_total{" + cl + ",model=\"gpt-4.1\"} 50\n") != std::string::npos);
    CHECK(text.find("ai_request_reasoning_tokens_total{" + cl + ",model=\"gpt-4.1\"} 20\n") != std::string::npos);
    CHECK(text.find("ai_request_unpriced_total{" + cl + ",model=\"weird") != std::string::npos);
    // Costs round-trip exactly.
    for (const auto& s : samples) {
        if (s.name == "ai_request_cost_total" && s.labels.find("gpt-4.1") != std::string::npos) {
            CHECK(std::stod(s.value) == snap.models.at("gpt-4.1").cost_usd);
        }
    }
}

TEST_CASE("exposition: invalid or clashing constant labels are left out") {
    const auto engine = populated_engine();
    ExpositionOptions opts{{{"model", "x"}, {"9bad", "x"}, {"__reserved", "x"}, {"ok", "1"}, {"ok", "2"}}, "v"};
    const auto samples = parse_samples(metrics::render_prometheus(engine->snapshot(), opts));
    for (const auto& s : samples) CHECK(s.labels.rfind("ok=\"1\"", 0) == 0);
}

TEST_CASE("exposition: promtool check metrics finds nothing") {
    const auto engine = populated_engine();
    Engine empty(EngineOptions{64, {}});
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"populated", metrics::render_prometheus(engine->snapshot(), {{{"monitor", "holysheep"}}, "0.1.0"})},
        {"populated, no const labels", metrics::render_prometheus(engine->snapshot(), {})},
        {"empty engine", metrics::render_prometheus(empty.snapshot(), {{{"monitor", "holysheep"}}, ""})},
    };
    for (const auto& [what, text] : cases) {
        const auto r = promtool_check(text);
        if (!r) {
            WARN("/usr/bin/promtool not installed: promtool check skipped");
            return;
        }
        INFO(what << "\n" << r->output << "\n" << text);
        CHECK(r->status == 0);
        CHECK(r->output.empty());
    }
}

TEST_CASE("exposition: rendering 64 models is fast") {
    Engine engine(EngineOptions{64, default_prices()});
    for (int m = 0; m < 64; ++m) {
        for (int i = 0; i < 50; ++i) {
            Record r = make_record("model-" + std::to_string(m), i % 7 ? 200 : 500, 0.001 * (i + 1) * (m + 1),
                                   make_usage(100, 100));
            r.streamed = i % 2;
            r.ttft_s = r.streamed ? 0.01 * i : -1;
            engine.record(r);
        }
    }
    const auto snap = engine.snapshot();
    const ExpositionOptions opts{{{"monitor", "holysheep"}}, "0.1.0"};
    std::string text;
    auto best = std::chrono::steady_clock::duration::max();
    for (int i = 0; i < 5; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        text = metrics::render_prometheus(snap, opts);
        best = std::min(best, std::chrono::steady_clock::now() - t0);
    }
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(best).count();
    INFO("render_prometheus, 64 models: " << us << " us, " << text.size() << " bytes");
    CHECK(us < 50000); // well under 5 ms in a release build; loose for sanitizer builds
    CHECK(label_sets(parse_samples(text), "ai_requests_total").size() == 64);
    const auto r = promtool_check(text);
    if (r) {
        INFO(r->output);
        CHECK(r->status == 0);
        CHECK(r->output.empty());
    }
}

TEST_CASE("exposition: summary JSON fields and values for known records") {
    Engine engine(EngineOptions{64, default_prices()});
    engine.record(make_record("gpt-4.1", 200, 1.0, make_usage(100, 200)));
    engine.record(make_record("gpt-4.1", 200, 2.0, make_usage(200, 300, 50, 10)));
    engine.record(make_record("gpt-4.1", 429, 0.5));
    engine.record(make_record("mystery-model", 200, 0.1, make_usage(10, 10)));
    engine.record(make_record("none", 401, 0.002));
    Record s = make_record("deepseek-v3.2", 200, 3.0, make_usage(1000, 2000));
    s.streamed = true;
    s.ttft_s = 0.25;
    engine.record(s);
    engine.request_started();
    engine.request_started();

    const auto snap = engine.snapshot();
    const nlohmann::json j = metrics::render_summary(snap);
    CHECK(is_iso8601_utc(j.at("started_at").get<std::string>()));
    CHECK(is_iso8601_utc(j.at("generated_at").get<std::string>()));
    CHECK(j.at("uptime_seconds").is_number_float());
    CHECK(j.at("uptime_seconds").get<double>() >= 0);
    CHECK(j.at("in_flight") == 2);

    const auto& models = j.at("models");
    REQUIRE(models.is_array());
    std::vector<std::string> names;
    for (const auto& m : models) names.push_back(m.at("model"));
    CHECK(names == std::vector<std::string>{"deepseek-v3.2", "gpt-4.1", "mystery-model", "none"});

    const auto& g = models.at(1);
    const double gpt_cost = (100 * 8.0 + 200 * 32.0 + 150 * 8.0 + 50 * 8.0 + 300 * 32.0) / 1e6; // 0.0184
    CHECK(g.at("total_requests") == 3);
    CHECK(g.at("success_count") == 2);
    CHECK(g.at("error_count") == 1);
    CHECK(g.at("success_rate_percent").get<double>() == 66.67);
    CHECK(g.at("error_rate_percent").get<double>() == 33.33);
    CHECK(g.at("avg_latency_ms").get<double>() == 1166.667);
    CHECK(g.at("p50_latency_ms").get<double>() == Approx(1000.0).epsilon(0.01));
    CHECK(g.at("p95_latency_ms").get<double>() == 2000.0); // top rank: the exact maximum
    CHECK(g.at("p99_latency_ms").get<double>() == 2000.0);
    CHECK(g.at("input_tokens") == 300);
    CHECK(g.at("output_tokens") == 500);
    CHECK(g.at("cached_input_tokens") == 50);
    CHECK(g.at("reasoning_tokens") == 10);
    CHECK(g.at("total_cost_usd").get<double>() == Approx(gpt_cost).epsilon(1e-12));
    CHECK(g.at("cost_per_1k_tokens_usd").get<double>() == Approx(gpt_cost / 800 * 1000).epsilon(1e-12));
    CHECK(g.at("priced") == true);
    CHECK(g.at("status_codes") == nlohmann::json{{"200", 2}, {"429", 1}});
    CHECK(g.at("streamed_requests") == 0);
    CHECK(g.at("p50_ttft_ms").get<double>() == 0.0);
    CHECK(g.at("p95_ttft_ms").get<double>() == 0.0);
    for (const char* key : {"model", "total_requests", "success_count", "error_count", "success_rate_percent",
                            "error_rate_percent", "avg_latency_ms", "p50_latency_ms", "p95_latency_ms",
                            "p99_latency_ms", "input_tokens", "output_tokens", "cached_input_tokens",
                            "reasoning_tokens", "total_cost_usd", "cost_per_1k_tokens_usd", "priced",
                            "status_codes", "streamed_requests", "p50_ttft_ms", "p95_ttft_ms"}) {
        INFO(key);
        CHECK(g.contains(key));
        CHECK(j.at("overall").contains(key));
    }

    const auto& d = models.at(0);
    CHECK(d.at("streamed_requests") == 1);
    CHECK(d.at("p50_ttft_ms").get<double>() == 250.0);
    CHECK(d.at("total_cost_usd").get<double>() == Approx((1000 * 0.42 + 2000 * 1.68) / 1e6).epsilon(1e-12));

    const auto& u = models.at(2);
    CHECK(u.at("priced") == false);
    CHECK(u.at("total_cost_usd").get<double>() == 0.0);
    CHECK(u.at("cost_per_1k_tokens_usd").get<double>() == 0.0);

    const auto& n = models.at(3);
    CHECK(n.at("priced") == true);
    CHECK(n.at("error_rate_percent").get<double>() == 100.0);
    CHECK(n.at("cost_per_1k_tokens_usd").get<double>() == 0.0); // no tokens

    const auto& o = j.at("overall");
    const double total_cost = gpt_cost + (1000 * 0.42 + 2000 * 1.68) / 1e6;
    CHECK(o.at("model") == "OVERALL");
    CHECK(o.at("total_requests") == 6);
    CHECK(o.at("error_count") == 2);
    CHECK(o.at("success_rate_percent").get<double>() == 66.67);
    CHECK(o.at("input_tokens") == 1310);
    CHECK(o.at("output_tokens") == 2510);
    CHECK(o.at("streamed_requests") == 1);
    CHECK(o.at("priced") == false); // mystery-model has no price
    CHECK(o.at("total_cost_usd").get<double>() == Approx(total_cost).epsilon(1e-12));
    CHECK(o.at("status_codes") == nlohmann::json{{"200", 4}, {"401", 1}, {"429", 1}});
    CHECK(o.at("p99_latency_ms").get<double>() == 3000.0);

    const auto& hourly = j.at("hourly_cost_usd");
    REQUIRE(hourly.size() >= 1);
    double hourly_total = 0;
    for (const auto& h : hourly) {
        CHECK(is_iso8601_utc(h.at("hour").get<std::string>(), true));
        hourly_total += h.at("cost_usd").get<double>();
    }
    CHECK(hourly_total == Approx(total_cost).epsilon(1e-12));
}

TEST_CASE("exposition: summary of an empty engine") {
    Engine engine(EngineOptions{64, {}});
    const nlohmann::json j = metrics::render_summary(engine.snapshot());
    CHECK(j.at("models").is_array());
    CHECK(j.at("models").empty());
    CHECK(j.at("overall").at("model") == "OVERALL");
    CHECK(j.at("overall").at("total_requests") == 0);
    CHECK(j.at("overall").at("success_rate_percent").get<double>() == 0.0);
    CHECK(j.at("overall").at("priced") == true);
    CHECK(j.at("hourly_cost_usd").is_array());
}

TEST_CASE("exposition: summary hour strings are UTC hour starts in ascending order") {
    metrics::Snapshot snap;
    snap.started_at = std::chrono::system_clock::time_point(std::chrono::seconds(1795788000)); // 2026-11-27T14:00:00Z
    snap.generated_at = snap.started_at + std::chrono::hours(1);
    snap.hourly_cost = {{1795788000 + 3600, 0.5}, {1795788000, 0.03552}};
    const nlohmann::json j = metrics::render_summary(snap);
    CHECK(j.at("started_at") == "2026-11-27T14:00:00Z");
    CHECK(j.at("generated_at") == "2026-11-27T15:00:00Z");
    CHECK(j.at("uptime_seconds").get<double>() == 3600.0);
    CHECK(j.at("hourly_cost_usd") == nlohmann::json::parse(R"([{"hour":"2026-11-27T14:00:00Z","cost_usd":0.03552},
                                                               {"hour":"2026-11-27T15:00:00Z","cost_usd":0.5}])"));
}

TEST_CASE("exposition: summary table has every model and a real OVERALL row") {
    Engine engine(EngineOptions{64, default_prices()});
    engine.record(make_record("gpt-4.1", 200, 1.0, make_usage(100, 200)));
    engine.record(make_record("gpt-4.1", 500, 3.0));
    engine.record(make_record("gemini-2.5-flash", 200, 0.5, make_usage(10, 20)));
    engine.record(make_record("a-very-long-model-name-that-is-wider-than-the-column", 200, 0.5));
    const auto table = metrics::render_summary_table(engine.snapshot());
    INFO(table);
    for (const char* col : {"Model", "Reqs", "Succ%", "Avgms", "P95ms", "Cost$"}) CHECK(table.find(col) != std::string::npos);
    CHECK(table.find("gpt-4.1") != std::string::npos);
    CHECK(table.find("gemini-2.5-flash") != std::string::npos);
    CHECK(table.find("a-very-long-model-name-that-is-wider-than-the-column") != std::string::npos);
    const auto overall = table.find("\nOVERALL");
    REQUIRE(overall != std::string::npos);
    const auto line = table.substr(overall + 1, table.find('\n', overall + 1) - overall - 1);
    CHECK(line.find("N/A") == std::string::npos);
    CHECK(line.find(" 4 ") != std::string::npos);     // requests
    CHECK(line.find("75.00%") != std::string::npos);  // success rate
    CHECK(line.find("1250.00") != std::string::npos); // average latency in ms
    // Unrounded cost (shortest round-trip text): 100*8 + 200*32 + 10*2.5 + 20*10 per 1M.
    const auto dollar = line.find('$');
    REQUIRE(dollar != std::string::npos);
    CHECK(std::stod(line.substr(dollar + 1)) == Approx((100 * 8.0 + 200 * 32.0 + 10 * 2.5 + 20 * 10.0) / 1e6).epsilon(1e-12));
    CHECK(line.find('*') != std::string::npos);

    const auto empty_table = metrics::render_summary_table(Engine(EngineOptions{}).snapshot());
    CHECK(empty_table.find("OVERALL") != std::string::npos);
}

// The request ledger with the real daemon: totals survive a SIGTERM restart
// and a SIGKILL under load; a torn last line is skipped; a bad ledger path
// stops the daemon before it starts. The ledger file is read back here with
// nlohmann::json, independently of the daemon's own parser.
#include <catch2/catch.hpp>

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include <unistd.h>

#include "fake_upstream.hpp"
#include "integration/common.hpp"

using namespace relaymeter;
using namespace relaymeter::testsupport;
using nlohmann::json;

namespace {

struct TempDir {
    std::string path;
    TempDir() {
        char tmpl[] = "/tmp/relaymeter-ledger-it-XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        path = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
};

std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

const std::string kAuth = "auth:\n  keys:\n    - { name: team-a, key: ka }\n    - { name: team-b, key: kb }\n";

std::string ledger_yaml(const std::string& upstream, const std::string& ledger_path, const std::string& extra = {}) {
    return daemon_yaml(upstream, {},
                       extra + "ledger:\n  path: \"" + ledger_path + "\"\n  flush_interval_ms: 50\n");
}

// What the complete ('\n'-terminated) lines of a ledger file add up to.
struct ModelSum {
    std::uint64_t requests = 0, errors = 0, input = 0, output = 0, cached = 0, reasoning = 0;
    double cost = 0;
};
struct FileSum {
    std::map<std::string, ModelSum> models;
    ModelSum overall;
    std::set<std::string> ids;
    std::uint64_t lines = 0;     // complete lines that parse
    std::uint64_t bad_lines = 0; // complete lines that do not
    bool torn_tail = false;      // the file ends inside a line
};

FileSum sum_ledger(const std::string& path) {
    FileSum s;
    const std::string text = slurp(path);
    std::size_t start = 0;
    for (std::size_t nl; (nl = text.find('\n', start)) != std::string::npos; start = nl + 1) {
        const std::string line = text.substr(start, nl - start);
        if (line.empty()) continue;
        json j;
        try {
            j = json::parse(line);
        } catch (const json::exception&) {
            ++s.bad_lines;
            continue;
        }
        ++s.lines;
        s.ids.insert(j.value("request_id", std::string()));
        for (ModelSum* m : {&s.models[j["model"].get<std::string>()], &s.overall}) {
            ++m->requests;
            const int status = j["status"].get<int>();
            if (status < 200 || status >= 300) ++m->errors;
            m->input += j["input_tokens"].get<std::uint64_t>();
            m->output += j["output_tokens"].get<std::uint64_t>();
            m->cached += j["cached_input_tokens"].get<std::uint64_t>();
            m->reasoning += j["reasoning_tokens"].get<std::uint64_t>();
            m->cost += j["cost_usd"].get<double>();
        }
    }
    s.torn_tail = start < text.size();
    return s;
}

void check_row_equals_sum(const json& row, const ModelSum& m) {
    CHECK(row["total_requests"] == m.requests);
    CHECK(row["error_count"] == m.errors);
    CHECK(row["input_tokens"] == m.input);
    CHECK(row["output_tokens"] == m.output);
    CHECK(row["cached_input_tokens"] == m.cached);
    CHECK(row["reasoning_tokens"] == m.reasoning);
    CHECK(row["total_cost_usd"].get<double>() == Approx(m.cost).epsilon(1e-12));
}

void check_summary_equals_file(const json& s, const FileSum& f) {
    check_row_equals_sum(s["overall"], f.overall);
    CHECK(s["models"].size() == f.models.size());
    for (const auto& [model, m] : f.models) {
        INFO(model);
        check_row_equals_sum(model_entry(s, model), m);
    }
}

// Every ai_request* series of an exposition (in-flight excluded), by "name{labels}".
std::map<std::string, double> request_series(const std::string& exposition) {
    std::map<std::string, double> out;
    std::istringstream in(exposition);
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("ai_request", 0) != 0 || line.rfind("ai_requests_in_flight", 0) == 0) continue;
        const auto sp = line.rfind(' ');
        out[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
    }
    return out;
}

// The same figures in two /summary rows (a model, a key or OVERALL).
void check_same_row(const json& a, const json& b) {
    for (const char* k : {"total_requests", "success_count", "error_count", "input_tokens", "output_tokens",
                          "cached_input_tokens", "reasoning_tokens"})
        CHECK(a[k] == b[k]);
    CHECK(b["total_cost_usd"].get<double>() == Approx(a["total_cost_usd"].get<double>()).epsilon(1e-12));
    for (const char* k : {"p50_latency_ms", "p95_latency_ms", "p99_latency_ms", "avg_latency_ms"})
        CHECK(b[k].get<double>() == Approx(a[k].get<double>()).epsilon(1e-9));
    if (a.contains("status_codes")) CHECK(a["status_codes"] == b["status_codes"]);
    if (a.contains("priced")) CHECK(a["priced"] == b["priced"]);
}

std::string chat(const std::string& model, bool stream = false) {
    return R"({"model":")" + model + R"(","messages":[{"role":"user","content":"hi"}])" +
           (stream ? R"(,"stream":true})" : "}");
}

} // namespace

TEST_CASE("ledger: a restart on the same ledger keeps totals, keys and counters", "[integration][ledger]") {
    fake::OpenAIOptions o;
    o.prompt_tokens = 1000;
    o.completion_tokens = 250;
    o.cached_tokens = 400;
    o.reasoning_tokens = 30;
    fake::FakeUpstream up({}, fake::openai_handler(o));
    TempDir dir;
    const std::string path = dir.path + "/ledger.jsonl";
    const std::string yaml = ledger_yaml(up.base_url(), path, kAuth);

    json before;
    std::string metrics_before;
    std::uint64_t n = 0;
    {
        Daemon d(yaml);
        HttpClient c(d.port());
        const std::vector<std::string> models = {"gpt-4.1", "deepseek-v3.2", "gemini-2.5-flash", "mystery-model"};
        for (int i = 0; i < 40; ++i) {
            const std::string& model = models[static_cast<std::size_t>(i) % models.size()];
            const std::string key = i % 7 == 6 ? "wrong" : (i % 2 ? "ka" : "kb");
            auto r = c.post_json("/v1/chat/completions", chat(model, i % 5 == 0), {{"Authorization", "Bearer " + key}});
            CHECK(r.status == (key == "wrong" ? 401 : 200));
            ++n;
        }
        auto emb = c.post_json("/v1/embeddings", R"({"model":"deepseek-v3.2","input":"x"})", {{"Authorization", "Bearer ka"}});
        CHECK(emb.status == 200);
        ++n;
        wait_total(d.port(), n);
        before = wait_idle(d.port());
        metrics_before = HttpClient(d.port()).get("/metrics").body;
        // The writer's figures in /metrics: every record appended, and once
        // nothing is buffered, exactly the file's bytes written.
        std::string m;
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        do {
            m = HttpClient(d.port()).get("/metrics").body;
        } while ((metric_value(m, "relaymeter_ledger_records_total") != static_cast<double>(n) ||
                  metric_value(m, "relaymeter_ledger_buffered_bytes") != 0) &&
                 std::chrono::steady_clock::now() < deadline);
        CHECK(metric_value(m, "relaymeter_ledger_records_total") == static_cast<double>(n));
        CHECK(metric_value(m, "relaymeter_ledger_buffered_bytes") == 0);
        CHECK(metric_value(m, "relaymeter_ledger_bytes_written_total") ==
              static_cast<double>(std::filesystem::file_size(path)));
        CHECK(metric_value(m, "relaymeter_ledger_write_errors_total") == 0);
        CHECK(metric_value(m, "relaymeter_ledger_rotations_total") == 0);
        CHECK(metric_value(m, "relaymeter_ledger_backpressure_waits_total") == 0);
        CHECK(promtool_check_metrics(m).empty());
        CHECK(d.stop() == 0);
        CHECK(d.log().find("ledger: flushed and closed " + path) != std::string::npos);
    }
    const FileSum file = sum_ledger(path);
    CHECK(file.lines == n);
    CHECK(file.bad_lines == 0);
    CHECK_FALSE(file.torn_tail);
    check_summary_equals_file(before, file);

    Daemon d(yaml);
    CHECK(d.log().find("ledger: replayed " + std::to_string(n) + " records from 1 files") != std::string::npos);
    const json after = get_json(d.port(), "/summary");
    INFO(before.dump() << "\n" << after.dump());
    check_same_row(before["overall"], after["overall"]);
    REQUIRE(after["models"].size() == before["models"].size());
    for (std::size_t i = 0; i < before["models"].size(); ++i) {
        INFO(before["models"][i]["model"]);
        CHECK(after["models"][i]["model"] == before["models"][i]["model"]);
        check_same_row(before["models"][i], after["models"][i]);
    }
    REQUIRE(before.contains("keys"));
    REQUIRE(after["keys"].size() == before["keys"].size());
    CHECK(before["keys"].size() == 3); // team-a, team-b, none (the 401s)
    for (std::size_t i = 0; i < before["keys"].size(); ++i) {
        CHECK(after["keys"][i]["key"] == before["keys"][i]["key"]);
        check_same_row(before["keys"][i], after["keys"][i]);
    }
    REQUIRE(after["hourly_cost_usd"].size() == before["hourly_cost_usd"].size());
    for (std::size_t i = 0; i < before["hourly_cost_usd"].size(); ++i) {
        CHECK(after["hourly_cost_usd"][i]["hour"] == before["hourly_cost_usd"][i]["hour"]);
        CHECK(after["hourly_cost_usd"][i]["cost_usd"].get<double>() ==
              Approx(before["hourly_cost_usd"][i]["cost_usd"].get<double>()).epsilon(1e-12));
    }

    // Every request counter, histogram bucket and key label of /metrics.
    const auto m1 = request_series(metrics_before);
    const auto m2 = request_series(HttpClient(d.port()).get("/metrics").body);
    CHECK(m1.size() > 50);
    CHECK(m1.size() == m2.size());
    for (const auto& [series, value] : m1) {
        INFO(series);
        const auto it = m2.find(series);
        REQUIRE(it != m2.end());
        CHECK(it->second == Approx(value).epsilon(1e-12));
    }
    CHECK(m1.count("ai_requests_total{model=\"mystery-model\",key=\"team-a\"}") == 1);
}

TEST_CASE("ledger: after SIGKILL under load every request acknowledged before the last flush is counted", "[integration][ledger]") {
    fake::FakeUpstream up({}, fake::openai_handler());
    TempDir dir;
    const std::string path = dir.path + "/ledger.jsonl";
    const std::string yaml = ledger_yaml(up.base_url(), path);

    auto d = std::make_unique<Daemon>(yaml);
    std::mutex mu;
    std::condition_variable cv;
    std::vector<std::string> acked; // full response received
    std::atomic<bool> stop{false};
    std::vector<std::thread> clients;
    const std::vector<std::string> models = {"gpt-4.1", "deepseek-v3.2", "claude-sonnet-4.5", "none-such"};
    for (int t = 0; t < 4; ++t) {
        clients.emplace_back([&, t, port = d->port()] {
            try {
                HttpClient c(port);
                for (int i = 0; !stop.load(); ++i) {
                    const std::string id = "k" + std::to_string(t) + "-" + std::to_string(i);
                    const auto& model = models[static_cast<std::size_t>(i + t) % models.size()];
                    auto r = c.post_json("/v1/chat/completions", chat(model, t == 3), {{"X-Request-Id", id}});
                    if (r.status != 200) continue;
                    const std::lock_guard lk(mu);
                    acked.push_back(id);
                    cv.notify_all();
                }
            } catch (const std::exception&) {
                // the daemon was killed under this client
            }
        });
    }
    std::vector<std::string> before_flush;
    {
        std::unique_lock lk(mu);
        REQUIRE(cv.wait_for(lk, std::chrono::seconds(20), [&] { return acked.size() >= 400; }));
        before_flush = acked;
    }
    // Load keeps running while the ledger catches up with what was acknowledged.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    std::size_t missing = before_flush.size();
    while (missing != 0 && std::chrono::steady_clock::now() < deadline) {
        const FileSum f = sum_ledger(path);
        missing = static_cast<std::size_t>(
            std::count_if(before_flush.begin(), before_flush.end(), [&](const std::string& id) { return f.ids.count(id) == 0; }));
    }
    REQUIRE(missing == 0);
    std::size_t acked_at_kill = 0;
    {
        const std::lock_guard lk(mu);
        acked_at_kill = acked.size();
    }
    d->signal(SIGKILL);
    CHECK(d->stop() == -SIGKILL);
    stop = true;
    for (auto& t : clients) t.join();
    d.reset();

    const FileSum file = sum_ledger(path);
    INFO("acknowledged before the flush: " << before_flush.size() << ", at the kill: " << acked_at_kill
                                           << ", complete lines: " << file.lines << ", torn tail: " << file.torn_tail);
    CHECK(file.bad_lines == 0);
    for (const auto& id : before_flush) CHECK(file.ids.count(id) == 1);

    Daemon again(yaml);
    const json s = get_json(again.port(), "/summary");
    CHECK(s["overall"]["total_requests"].get<std::uint64_t>() >= before_flush.size());
    CHECK(s["overall"]["total_requests"] == file.lines);
    check_summary_equals_file(s, file);
    if (file.torn_tail) CHECK(again.log().find(path + ":" + std::to_string(file.lines + 1) + ": torn last line") != std::string::npos);
    WARN("SIGKILL under load: " << before_flush.size() << " acknowledged before the awaited flush, " << acked_at_kill
                                << " acknowledged at the kill, " << file.lines << " in the ledger after the kill"
                                << (file.torn_tail ? " (plus a torn line)" : ""));
}

// A daemon on `yaml` that serves 10 requests (two models) and stops: its
// ledger then holds 10 lines.
void ten_requests(const std::string& yaml) {
    Daemon d(yaml);
    HttpClient c(d.port());
    for (int i = 0; i < 10; ++i) CHECK(c.post_json("/v1/chat/completions", chat(i % 2 ? "gpt-4.1" : "deepseek-v3.2")).status == 200);
    wait_total(d.port(), 10);
    CHECK(d.stop() == 0);
}

TEST_CASE("ledger: a torn last line is skipped with a warning and the daemon starts", "[integration][ledger]") {
    fake::FakeUpstream up({}, fake::openai_handler());
    TempDir dir;
    const std::string path = dir.path + "/ledger.jsonl";
    const std::string yaml = ledger_yaml(up.base_url(), path);
    ten_requests(yaml);
    // A crash in the middle of a write, simulated while the daemon is down.
    const std::string text = slurp(path);
    const std::string fragment = text.substr(0, text.find('\n') / 2);
    std::ofstream(path, std::ios::binary | std::ios::app) << fragment;
    const FileSum torn = sum_ledger(path);
    REQUIRE(torn.torn_tail);
    REQUIRE(torn.lines == 10);
    {
        Daemon d(yaml);
        CHECK(d.log().find(path + ":11: torn last line skipped") != std::string::npos);
        CHECK(d.log().find("ledger: replayed 10 records") != std::string::npos);
        const json s = get_json(d.port(), "/summary");
        check_summary_equals_file(s, torn);
        HttpClient c(d.port());
        CHECK(c.post_json("/v1/chat/completions", chat("gpt-4.1"), {{"X-Request-Id", "after-the-tear"}}).status == 200);
        wait_total(d.port(), 11);
        CHECK(d.stop() == 0);
    }
    // The next write started on a new line: the fragment is a line of its own.
    const std::string now = slurp(path);
    CHECK(now.find(fragment + "\n{") != std::string::npos);
    const FileSum after = sum_ledger(path);
    CHECK(after.lines == 11);
    CHECK(after.bad_lines == 1);
    CHECK(after.ids.count("after-the-tear") == 1);
    Daemon d(yaml);
    CHECK(d.log().find(path + ":11: corrupt line skipped") != std::string::npos);
    CHECK(d.log().find("ledger: replayed 11 records") != std::string::npos);
    check_summary_equals_file(get_json(d.port(), "/summary"), after);
}

TEST_CASE("ledger: a SIGHUP during start-up (the replay) is a reload once serving, not the end of the daemon",
          "[integration][ledger]") {
    fake::FakeUpstream up({}, fake::openai_handler());
    TempDir dir;
    const std::string path = dir.path + "/ledger.jsonl";
    const std::string yaml = ledger_yaml(up.base_url(), path);
    ten_requests(yaml);
    // A ledger that takes a while to replay: the signal comes in the middle.
    const std::string ten = slurp(path);
    constexpr int kCopies = 20000;
    {
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        for (int i = 0; i < kCopies; ++i) out << ten;
    }
    Daemon d(yaml, {}, {}, {"ledger: replaying", [](int pid) { ::kill(pid, SIGHUP); }});
    INFO(d.log());
    CHECK(d.log().find("ledger: replayed " + std::to_string(10 * kCopies) + " records") != std::string::npos);
    CHECK(d.wait_log("SIGHUP: reloaded", std::chrono::seconds(10)));
    CHECK(get_json(d.port(), "/summary")["overall"]["total_requests"] == 10 * kCopies);
    CHECK(d.stop() == 0);
}

TEST_CASE("ledger: a path that cannot be opened stops the daemon before it starts, check-config covers the section", "[integration][ledger]") {
    TempDir dir;
    const std::string cfg = dir.path + "/relaymeter.yaml";
    std::ofstream(cfg) << "server:\n  listen: \"127.0.0.1:0\"\nledger:\n  path: \"" << dir.path << "/no-such-dir/ledger.jsonl\"\n";
    auto r = run_binary({"--config", cfg});
    CHECK(r.status == 2);
    CHECK(r.output.find("ledger.path: cannot open " + dir.path + "/no-such-dir/ledger.jsonl") != std::string::npos);
    CHECK(r.output.find("No such file or directory") != std::string::npos);
    CHECK(r.output.find("listening") == std::string::npos);

    auto ok = run_binary({"--check-config", cfg});
    CHECK(ok.status == 0); // the file's syntax is fine; the path is checked at start

    const std::string bad = dir.path + "/bad.yaml";
    std::ofstream(bad) << "ledger:\n  path: x.jsonl\n  keep: -2\n  fsync: maybe\n  flush_every: 3\n";
    auto b = run_binary({"--check-config", bad});
    CHECK(b.status == 2);
    CHECK(b.output.find(bad + ":3: ledger.keep: must not be negative") != std::string::npos);
    CHECK(b.output.find(bad + ":4: ledger.fsync: expected true or false") != std::string::npos);
    CHECK(b.output.find(bad + ":5: ledger.flush_every: unknown key") != std::string::npos);
}

// The real daemon with alerts: one model over its error-rate threshold, one
// over its latency threshold; /alerts, /summary, /metrics and both webhook
// formats must agree. Also windowed /summary and /dashboard.
#include <catch2/catch.hpp>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <set>

#include <unistd.h>

#include "fake_upstream.hpp"
#include "integration/common.hpp"
#include "relaymeter/config/config.hpp"
#include "relaymeter/server/notifier.hpp"

using namespace relaymeter;
using namespace relaymeter::testsupport;
using nlohmann::json;

namespace {

std::string chat(const std::string& model) {
    return R"({"model":")" + model + R"(","messages":[{"role":"user","content":"hello"}]})";
}

// gpt-4.1: every other request is a 500. deepseek-v3.2: 200 after 150 ms.
// Anything else: a fast 200.
fake::Handler relay_handler() {
    auto fast = fake::openai_handler();
    fake::OpenAIOptions slow_options;
    slow_options.latency = std::chrono::milliseconds(150);
    auto slow = fake::openai_handler(slow_options);
    auto count = std::make_shared<std::atomic<int>>(0);
    return [fast, slow, count](const fake::Request& r) {
        if (r.body.find("\"gpt-4.1\"") != std::string::npos && count->fetch_add(1) % 2 == 0) {
            return fake::Response::json(500, R"({"error":{"message":"boom","type":"server_error"}})");
        }
        if (r.body.find("\"deepseek-v3.2\"") != std::string::npos) return slow(r);
        return fast(r);
    };
}

const json* find_alert(const json& arr, const std::string& type, const std::string& model) {
    for (const auto& a : arr) {
        if (a["type"] == type && ((a["model"].is_null() && model.empty()) || a["model"] == model)) return &a;
    }
    return nullptr;
}

} // namespace

TEST_CASE("alerts: error-rate and latency alerts reach /alerts, /summary, /metrics and both webhooks",
          "[integration][alerts]") {
    fake::FakeUpstream relay({}, relay_handler());
    fake::FakeUpstream receiver({}, [](const fake::Request&) { return fake::Response::json(200, "{}"); });
    const std::string hook = "http://127.0.0.1:" + std::to_string(receiver.port());
    // An https receiver whose certificate the system store does not trust:
    // every delivery fails verification (the TLS context is made on first use).
    auto certs = TestCerts::make();
    fake::FakeUpstream untrusted({.cert_file = certs->self_signed_cert, .key_file = certs->self_signed_key},
                                 [](const fake::Request&) { return fake::Response::json(200, "{}"); });
    // A receiver that reads the notification and never answers: timed out.
    fake::FakeUpstream silent({}, [](const fake::Request&) { return fake::Response().hang(); });
    Daemon d(daemon_yaml(relay.base_url(), {},
                         "metrics:\n  labels: { monitor: holysheep }\n"
                         "alerts:\n"
                         "  latency_p95_ms: 100\n"
                         "  error_rate_percent: 20\n"
                         "  cost_per_hour_usd: 1000\n"
                         "  window_s: 60\n"
                         "  min_requests: 4\n"
                         "  interval_s: 1\n"
                         "  models:\n"
                         "    gpt-4.1: { latency_p95_ms: 60000 }\n"
                         "    gemini-2.5-flash: { latency_p95_ms: 60000 }\n"
                         "  webhooks:\n"
                         "    - { url: \"" + hook + "/hooks/relaymeter\", format: json, timeout_s: 2 }\n"
                         "    - { url: \"" + hook + "/am\", format: alertmanager, timeout_s: 2 }\n"
                         "    - { url: \"https://localhost:" + std::to_string(untrusted.port()) + "/x\", format: json, timeout_s: 2 }\n"
                         "    - { url: \"http://127.0.0.1:" + std::to_string(silent.port()) + "/s\", format: json, timeout_s: 0.2 }\n"));
    HttpClient c(d.port());
    for (int i = 0; i < 10; ++i) c.post_json("/v1/chat/completions", chat("gpt-4.1"));
    for (int i = 0; i < 5; ++i) REQUIRE(c.post_json("/v1/chat/completions", chat("deepseek-v3.2")).status == 200);
    for (int i = 0; i < 5; ++i) REQUIRE(c.post_json("/v1/chat/completions", chat("gemini-2.5-flash")).status == 200);
    wait_total(d.port(), 20);

    // The alert thread evaluates every second; its log lines say when.
    REQUIRE(d.wait_log("alert firing: high_error_rate critical model=gpt-4.1", std::chrono::seconds(15)));
    REQUIRE(d.wait_log("alert firing: high_latency warning model=deepseek-v3.2", std::chrono::seconds(15)));

    auto r = c.get("/alerts");
    REQUIRE(r.status == 200);
    CHECK(r.header("content-type").find("application/json") == 0);
    const json alerts = json::parse(r.body)["alerts"];
    INFO(r.body);
    CHECK(alerts.size() == 2);
    const json* err = find_alert(alerts, "high_error_rate", "gpt-4.1");
    const json* lat = find_alert(alerts, "high_latency", "deepseek-v3.2");
    REQUIRE(err != nullptr);
    REQUIRE(lat != nullptr);
    CHECK((*err)["severity"] == "critical");
    CHECK((*err)["value"].get<double>() == Approx(50.0));
    CHECK((*err)["threshold"].get<double>() == 20.0);
    CHECK((*err)["state"] == "firing");
    CHECK((*err)["since"].get<std::string>().size() == 20);
    CHECK((*lat)["severity"] == "warning");
    CHECK((*lat)["value"].get<double>() > 100.0);
    CHECK((*lat)["threshold"].get<double>() == 100.0);
    CHECK(find_alert(alerts, "high_latency", "gpt-4.1") == nullptr); // the override holds it off
    CHECK(find_alert(alerts, "high_error_rate", "gemini-2.5-flash") == nullptr);

    const json summary = get_json(d.port(), "/summary");
    REQUIRE(summary.contains("alerts"));
    CHECK(summary["alerts"].size() == 2);
    CHECK(find_alert(summary["alerts"], "high_error_rate", "gpt-4.1") != nullptr);

    const auto m = c.get("/metrics").body;
    CHECK(metric_value(m, R"(ai_alerts_firing{monitor="holysheep",type="high_error_rate",model="gpt-4.1"})") == 1);
    CHECK(metric_value(m, R"(ai_alerts_firing{monitor="holysheep",type="high_latency",model="deepseek-v3.2"})") == 1);
    CHECK(m.find("# TYPE ai_alerts_firing gauge") != std::string::npos);
    CHECK(promtool_check_metrics(m).empty());

    // Two alerts x two webhooks.
    REQUIRE(receiver.wait_requests(4, std::chrono::seconds(15)));
    int generic = 0, am = 0;
    for (const auto& req : receiver.requests()) {
        CHECK(req.method == "POST");
        CHECK(req.headers.at("content-type") == "application/json");
        const json body = json::parse(req.body);
        if (req.target == "/hooks/relaymeter") {
            ++generic;
            CHECK(body["state"] == "firing");
            CHECK((body["type"] == "high_error_rate" || body["type"] == "high_latency"));
            if (body["type"] == "high_error_rate") {
                CHECK(body["model"] == "gpt-4.1");
                CHECK(body["severity"] == "critical");
            }
        } else if (req.target == "/am/api/v2/alerts") {
            ++am;
            REQUIRE(body.is_array());
            REQUIRE(body.size() == 1);
            const auto& labels = body[0]["labels"];
            CHECK((labels["alertname"] == "HighErrorRate" || labels["alertname"] == "HighLatency"));
            CHECK((labels["model"] == "gpt-4.1" || labels["model"] == "deepseek-v3.2"));
            CHECK(body[0].contains("startsAt"));
            CHECK_FALSE(body[0].contains("endsAt"));
            CHECK(body[0]["annotations"].contains("description"));
        } else {
            FAIL("unexpected webhook target " << req.target);
        }
    }
    CHECK(generic == 2);
    CHECK(am == 2);
    // The https webhook: the handshake ran and verification refused the certificate.
    CHECK(d.wait_log("certificate verify failed", std::chrono::seconds(15)));
    CHECK(untrusted.request_count() == 0);
    // The silent one: the log says why each attempt failed.
    CHECK(d.wait_log("attempt 1 failed (timed out)", std::chrono::seconds(15)));
    CHECK(d.log().find("Bad file descriptor") == std::string::npos);
    CHECK(silent.request_count() >= 1);
}

TEST_CASE("alerts: a reload keeps the notifications queued for webhooks still configured", "[integration][alerts]") {
    // Slow receivers: while the first notification is being delivered, the
    // others wait in the queue, and the reload comes then.
    const auto slow_ok = [](const fake::Request&) {
        return fake::Response().delay(std::chrono::milliseconds(50)).write(
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    };
    fake::FakeUpstream kept({}, slow_ok), retimed({}, slow_ok), removed({}, slow_ok);
    const auto url = [](const fake::FakeUpstream& u) { return "http://127.0.0.1:" + std::to_string(u.port()) + "/h"; };
    const auto webhooks = [&](const std::string& yaml) {
        return config::load_string("alerts:\n  webhooks:\n" + yaml, "test.yaml").alerts.webhooks;
    };
    server::Notifier n(webhooks("    - { url: \"" + url(kept) + "\", timeout_s: 5 }\n"
                                "    - { url: \"" + url(retimed) + "\", timeout_s: 5 }\n"
                                "    - { url: \"" + url(removed) + "\", timeout_s: 5 }\n"));
    constexpr int kAlerts = 6;
    for (int i = 0; i < kAlerts; ++i) {
        alerts::Alert a;
        a.type = alerts::AlertType::high_error_rate;
        a.model = "model-" + std::to_string(i);
        a.state = alerts::AlertState::firing;
        n.notify(a);
    }
    n.reconfigure(webhooks("    - { url: \"" + url(kept) + "\", timeout_s: 5 }\n"
                           "    - { url: \"" + url(retimed) + "\", timeout_s: 2 }\n"));
    CHECK(kept.wait_requests(kAlerts, std::chrono::seconds(10)));
    CHECK(retimed.wait_requests(kAlerts, std::chrono::seconds(10)));
    for (const auto* u : {&kept, &retimed}) {
        std::set<std::string> models;
        for (const auto& r : u->requests()) models.insert(json::parse(r.body)["model"].get<std::string>());
        CHECK(models.size() == kAlerts); // each once, none lost
    }
    CHECK(removed.request_count() <= 1); // at most the one under way at the reload
}

TEST_CASE("alerts: /summary?window=SECONDS and bad windows", "[integration][alerts]") {
    fake::FakeUpstream relay;
    Daemon d(daemon_yaml(relay.base_url()));
    HttpClient c(d.port());
    for (int i = 0; i < 3; ++i) REQUIRE(c.post_json("/v1/chat/completions", chat("gpt-4.1")).status == 200);
    REQUIRE(c.post_json("/v1/chat/completions", chat("deepseek-v3.2")).status == 200);
    const json all = wait_total(d.port(), 4);

    const json w = get_json(d.port(), "/summary?window=60");
    CHECK(w["window_seconds"] == 60);
    // The start of the UTC minute that holds generated_at - 60 s: the oldest
    // minute the figures cover (ISO 8601, seconds always :00).
    const std::string start = w["window_start"];
    const std::string generated = w["generated_at"];
    REQUIRE(start.size() == 20);
    CHECK(start.substr(17) == "00Z");
    CHECK(start < generated);
    CHECK(generated.substr(0, 16) > start.substr(0, 16)); // a minute or two before generated_at's minute
    CHECK(w["alerts"].is_array());
    // Everything happened within the last minute: the same figures as since start.
    CHECK(w["overall"]["total_requests"] == all["overall"]["total_requests"]);
    CHECK(model_entry(w, "gpt-4.1")["total_requests"] == 3);
    CHECK(model_entry(w, "gpt-4.1")["total_cost_usd"].get<double>() ==
          Approx(model_entry(all, "gpt-4.1")["total_cost_usd"].get<double>()));
    CHECK(model_entry(w, "deepseek-v3.2")["input_tokens"] == model_entry(all, "deepseek-v3.2")["input_tokens"]);
    // Same fields.
    for (const auto& [key, value] : all.items()) CHECK(w.contains(key));
    for (const auto& [key, value] : model_entry(all, "gpt-4.1").items()) CHECK(model_entry(w, "gpt-4.1").contains(key));
    CHECK(get_json(d.port(), "/summary?window=3600")["overall"]["total_requests"] == 4);

    auto table = c.get("/summary?window=300&format=table");
    CHECK(table.status == 200);
    CHECK(table.body.find("gpt-4.1") != std::string::npos);

    for (const std::string bad : {"59", "3601", "abc", "", "60.5", "-60", "99999999999"}) {
        auto r = c.get("/summary?window=" + bad);
        INFO("window=" << bad);
        CHECK(r.status == 400);
        const json e = json::parse(r.body);
        CHECK(e["error"]["code"] == "bad_window");
        CHECK(e["error"]["type"] == "relaymeter_error");
    }
}

TEST_CASE("alerts: /alerts needs the admin token, the /dashboard page itself does not", "[integration][alerts]") {
    fake::FakeUpstream relay;
    Daemon d(daemon_yaml(relay.base_url(), {}, "admin:\n  token: \"adm-secret\"\n"));
    HttpClient c(d.port());
    CHECK(c.get("/alerts").status == 401);
    CHECK(c.get("/summary").status == 401);
    // The page holds no figures: a browser loads it without a header and the
    // page sends ?token= as a bearer token on its own requests.
    CHECK(c.get("/dashboard?token=adm-secret").status == 200);
    const std::map<std::string, std::string> auth{{"Authorization", "Bearer adm-secret"}};
    auto a = c.request("GET", "/alerts", {}, auth);
    REQUIRE(a.status == 200);
    CHECK(json::parse(a.body) == json::parse(R"({"alerts":[]})"));
    auto page = c.request("GET", "/dashboard", {}, auth);
    REQUIRE(page.status == 200);
    CHECK(page.header("content-type") == "text/html; charset=utf-8");
    CHECK(page.body.find("<html") != std::string::npos);
    std::ifstream src(std::string(RELAYMETER_SOURCE_DIR) + "/src/server/dashboard.html", std::ios::binary);
    const std::string file((std::istreambuf_iterator<char>(src)), std::istreambuf_iterator<char>());
    CHECK(page.body == file); // embedded byte for byte
}

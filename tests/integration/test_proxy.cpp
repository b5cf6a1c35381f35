// The real relaymeter binary against the fake upstream, over HTTP and HTTPS.
#include <catch2/catch.hpp>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include <unistd.h>

#include "fake_upstream.hpp"
#include "integration/common.hpp"

using namespace relaymeter;
using namespace relaymeter::testsupport;
using nlohmann::json;

namespace {

struct Expected {
    std::uint64_t requests = 0, input = 0, output = 0, cached = 0, reasoning = 0;
    double cost = 0;
};

// Independent of the daemon's code: the contract's formula.
double cost_of(double in_price, double cached_price, double out_price, std::uint64_t in, std::uint64_t cached,
               std::uint64_t out) {
    return (static_cast<double>(in - cached) * in_price + static_cast<double>(cached) * cached_price +
            static_cast<double>(out) * out_price) /
           1e6;
}

std::uint64_t u(const json& j, const char* k) { return j.contains(k) && j[k].is_number() ? j[k].get<std::uint64_t>() : 0; }

// Usage exactly as the upstream reported it in a plain JSON body.
void add_usage(Expected& e, const json& body, double in_p, double cached_p, double out_p) {
    const json& us = body.contains("usage") ? body["usage"] : body["response"]["usage"];
    std::uint64_t in = us.contains("prompt_tokens") ? u(us, "prompt_tokens") : u(us, "input_tokens");
    std::uint64_t out = us.contains("completion_tokens") ? u(us, "completion_tokens") : u(us, "output_tokens");
    std::uint64_t cached = 0, reasoning = 0;
    for (auto d : {"prompt_tokens_details", "input_tokens_details"})
        if (us.contains(d)) cached = u(us[d], "cached_tokens");
    for (auto d : {"completion_tokens_details", "output_tokens_details"})
        if (us.contains(d)) reasoning = u(us[d], "reasoning_tokens");
    e.requests++;
    e.input += in;
    e.output += out;
    e.cached += cached;
    e.reasoning += reasoning;
    e.cost += cost_of(in_p, cached_p, out_p, in, cached, out);
}

std::string chat(const std::string& model) {
    return R"({"model":")" + model + R"(","messages":[{"role":"user","content":"hello"}]})";
}

} // namespace

TEST_CASE("proxy: counters, tokens and cost equal what the upstream reported", "[integration]") {
    fake::OpenAIOptions o;
    o.prompt_tokens = 1000;
    o.completion_tokens = 250;
    o.cached_tokens = 400;
    o.reasoning_tokens = 30;
    fake::FakeUpstream up({}, fake::openai_handler(o));
    Daemon d(daemon_yaml(up.base_url()));
    HttpClient c(d.port());

    std::map<std::string, Expected> want;
    auto call = [&](const std::string& path, const std::string& model, double in_p, double cached_p, double out_p,
                    const std::string& body) {
        auto r = c.post_json(path, body);
        REQUIRE(r.status == 200);
        add_usage(want[model], json::parse(r.body), in_p, cached_p, out_p);
    };
    for (int i = 0; i < 3; ++i) call("/v1/chat/completions", "gpt-4.1", 8, 8, 32, chat("gpt-4.1"));
    for (int i = 0; i < 2; ++i)
        call("/v1/embeddings", "deepseek-v3.2", 0.42, 0.42, 1.68, R"({"model":"deepseek-v3.2","input":"abc"})");
    for (int i = 0; i < 2; ++i)
        call("/v1/responses", "gemini-2.5-flash", 2.5, 0.625, 10, R"({"input":"hi","model":"gemini-2.5-flash"})");
    call("/v1/completions", "claude-sonnet-4.5", 15, 15, 75, R"({"model":"claude-sonnet-4.5","prompt":"x"})");
    REQUIRE(want["gemini-2.5-flash"].cached == 800); // the Responses shape carried cached tokens
    REQUIRE(want["deepseek-v3.2"].output == 0);      // embeddings: prompt tokens only

    wait_total(d.port(), 8);
    auto s = wait_idle(d.port());
    auto m = HttpClient(d.port()).get("/metrics").body;
    Expected all;
    for (auto& [model, e] : want) {
        INFO(model);
        const auto& row = model_entry(s, model);
        CHECK(row["total_requests"] == e.requests);
        CHECK(row["success_count"] == e.requests);
        CHECK(row["error_count"] == 0);
        CHECK(row["input_tokens"] == e.input);
        CHECK(row["output_tokens"] == e.output);
        CHECK(row["cached_input_tokens"] == e.cached);
        CHECK(row["reasoning_tokens"] == e.reasoning);
        CHECK(row["total_cost_usd"].get<double>() == Approx(e.cost).epsilon(1e-12));
        CHECK(row["priced"] == true);
        CHECK(row["status_codes"]["200"] == e.requests);
        CHECK(row["cost_per_1k_tokens_usd"].get<double>() ==
              Approx(e.cost / static_cast<double>(e.input + e.output) * 1000).epsilon(1e-12));
        const std::string l = "{model=\"" + model + "\"}";
        CHECK(metric_value(m, "ai_requests_total" + l) == e.requests);
        CHECK(metric_value(m, "ai_request_errors_total" + l) == 0);
        CHECK(metric_value(m, "ai_request_tokens_total{model=\"" + model + "\",type=\"input\"}") == e.input);
        CHECK(metric_value(m, "ai_request_tokens_total{model=\"" + model + "\",type=\"output\"}") == e.output);
        CHECK(metric_value(m, "ai_request_cached_tokens_total" + l) == e.cached);
        CHECK(metric_value(m, "ai_request_reasoning_tokens_total" + l) == e.reasoning);
        CHECK(metric_value(m, "ai_request_cost_total" + l) == Approx(e.cost).epsilon(1e-12));
        CHECK(metric_value(m, "ai_request_latency_seconds_count" + l) == e.requests);
        all.requests += e.requests;
        all.input += e.input;
        all.cost += e.cost;
    }
    CHECK(s["overall"]["model"] == "OVERALL");
    CHECK(s["overall"]["total_requests"] == all.requests);
    CHECK(s["overall"]["input_tokens"] == all.input);
    CHECK(s["overall"]["total_cost_usd"].get<double>() == Approx(all.cost).epsilon(1e-12));
    REQUIRE(s["hourly_cost_usd"].size() >= 1);
    CHECK(s["hourly_cost_usd"].back()["cost_usd"].get<double>() == Approx(all.cost).epsilon(1e-12));
    CHECK(metric_value(m, "ai_requests_in_flight") == 0);

    auto table = HttpClient(d.port()).get("/summary?format=table");
    CHECK(table.status == 200);
    CHECK(table.body.find("gpt-4.1") != std::string::npos);
    CHECK(table.body.find("OVERALL") != std::string::npos);
}

TEST_CASE("proxy: request rewriting, hop-by-hop headers, request ids and Authorization", "[integration]") {
    fake::FakeUpstream up({}, [](const fake::Request&) {
        return fake::Response::json(200, R"({"id":"x","usage":{"prompt_tokens":1,"completion_tokens":2}})",
                                    {{"x-request-id", "upstream-abc"},
                                     {"X-Custom", "kept"},
                                     {"Keep-Alive", "timeout=30"},
                                     {"Proxy-Connection", "keep-alive"}});
    });
    const std::string body = "{ \"model\" : \"gpt-4.1\",\n \"messages\": [] , \"x\":\"\\u00e9\\\"\" }";

    SECTION("client Authorization forwarded, sane X-Request-Id kept, query kept") {
        Daemon d(daemon_yaml(up.base_url()));
        HttpClient c(d.port());
        auto r = c.request("POST", "/v1/chat/completions?a=1&b=2", body,
                           {{"Content-Type", "application/json"},
                            {"Authorization", "Bearer client-key"},
                            {"X-Request-Id", "my-id-42"},
                            {"Connection", "keep-alive, X-Hop"},
                            {"X-Hop", "drop-me"},
                            {"Keep-Alive", "timeout=5"},
                            {"Proxy-Authorization", "Basic c2VjcmV0"},
                            {"TE", "trailers"},
                            {"Proxy-Connection", "keep-alive"},
                            {"X-Kept", "yes"}});
        REQUIRE(r.status == 200);
        CHECK(r.header("x-relaymeter-request-id") == "my-id-42");
        CHECK(r.header("x-request-id") == "upstream-abc");
        CHECK(r.header("x-custom") == "kept");
        CHECK(r.headers.count("keep-alive") == 0); // hop-by-hop on the way back too
        CHECK(r.headers.count("proxy-connection") == 0);
        CHECK(r.body == R"({"id":"x","usage":{"prompt_tokens":1,"completion_tokens":2}})");
        REQUIRE(up.request_count() == 1);
        auto got = up.requests().at(0);
        CHECK(got.method == "POST");
        CHECK(got.target == "/v1/chat/completions?a=1&b=2");
        CHECK(got.body == body); // byte for byte
        CHECK(got.headers["host"] == "127.0.0.1:" + std::to_string(up.port()));
        CHECK(got.headers["authorization"] == "Bearer client-key");
        CHECK(got.headers["x-request-id"] == "my-id-42");
        CHECK(got.headers["x-kept"] == "yes");
        for (auto h : {"x-hop", "keep-alive", "proxy-authorization", "proxy-connection", "te", "connection"}) {
            INFO(h);
            CHECK(got.headers.count(h) == 0);
        }
        CHECK(d.wait_log("rid=my-id-42", std::chrono::seconds(5)));
        CHECK(d.wait_log("upstream_rid=upstream-abc", std::chrono::seconds(5)));
        CHECK(d.log().find("client-key") == std::string::npos); // never log credentials
    }
    SECTION("upstream.api_key replaces the client's; insane request ids are replaced; base path mapping") {
        std::string base = "http://127.0.0.1:" + std::to_string(up.port()) + "/relay/openai";
        Daemon d(daemon_yaml(base, "  api_key: \"${TEST_UPSTREAM_KEY}\"\n"), {}, {{"TEST_UPSTREAM_KEY", "sk-up-secret"}});
        HttpClient c(d.port());
        auto r = c.post_json("/v1/models/x", body,
                             {{"Authorization", "Bearer client-key"}, {"X-Request-Id", std::string(200, 'a')}});
        REQUIRE(r.status == 200);
        auto rid = r.header("x-relaymeter-request-id");
        CHECK(rid.size() == 32);
        auto got = up.requests().at(0);
        CHECK(got.target == "/relay/openai/models/x");
        CHECK(got.headers["authorization"] == "Bearer sk-up-secret");
        CHECK(got.headers["x-request-id"] == rid);
        CHECK(d.log().find("sk-up-secret") == std::string::npos);
        CHECK(HttpClient(d.port()).get("/metrics").body.find("sk-up-secret") == std::string::npos);
    }
}

TEST_CASE("proxy: an SDK's request fields and OpenAI's response fields are relayed unchanged, metered exactly",
          "[integration]") {
    // The fake answers with the ~20 fields api.openai.com sends; the client
    // sends the OpenAI Python SDK's. Both heads are written by copying runs
    // of received lines: every field must arrive with its value.
    fake::OpenAIOptions o;
    o.openai_headers_for_sdk = true; // as in the benchmark's SDK rows
    o.prompt_tokens = 321;
    o.completion_tokens = 54;
    fake::FakeUpstream up({}, fake::openai_handler(o));
    const std::map<std::string, std::string> sdk{
        {"Accept", "application/json"},       {"User-Agent", "OpenAI/Python 1.54.4"},
        {"X-Stainless-Lang", "python"},       {"X-Stainless-Package-Version", "1.54.4"},
        {"X-Stainless-OS", "Linux"},          {"X-Stainless-Arch", "x64"},
        {"X-Stainless-Runtime", "CPython"},   {"X-Stainless-Runtime-Version", "3.11.2"},
        {"Authorization", "Bearer sk-test"},  {"X-Stainless-Async", "false"},
        {"x-stainless-retry-count", "0"},     {"x-stainless-read-timeout", "600"},
        {"Accept-Encoding", "gzip, deflate"}, {"Connection", "keep-alive"}};
    Daemon d(daemon_yaml(up.base_url()));
    HttpClient direct(up.port());
    HttpClient c(d.port());
    const auto want = direct.post_json("/v1/chat/completions", chat("gpt-4.1"), sdk);
    REQUIRE(want.status == 200);
    REQUIRE(want.headers.size() >= 22);
    for (int i = 0; i < 3; ++i) { // keep-alive: the reused buffers of earlier requests
        const auto r = c.post_json("/v1/chat/completions", chat("gpt-4.1"), sdk);
        REQUIRE(r.status == 200);
        CHECK(r.body == want.body);
        for (const auto& [name, value] : want.headers) {
            INFO(name);
            REQUIRE(r.headers.count(name) == 1);
            CHECK(r.header(name) == value);
        }
        CHECK(r.headers.size() == want.headers.size() + 1); // + x-relaymeter-request-id
    }
    const auto got = up.requests();
    REQUIRE(got.size() == 4);
    for (const auto& [name, value] : sdk) {
        std::string lower = name;
        for (auto& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        INFO(lower);
        if (lower == "accept-encoding") {
            CHECK(got[3].headers.at(lower) == "identity"); // the usage block must be readable
        } else if (lower == "connection") {
            CHECK(got[3].headers.count(lower) == 0); // hop-by-hop
        } else {
            CHECK(got[3].headers.at(lower) == value);
        }
    }
    // A client that is not an SDK gets the fake's plain answer.
    const auto plain = c.post_json("/v1/chat/completions", chat("gpt-4.1"));
    REQUIRE(plain.status == 200);
    CHECK(plain.header("x-request-id") == "req_fake");
    CHECK(plain.headers.count("openai-version") == 0);
    CHECK(want.header("openai-version") == "2020-10-01");
    const auto s = wait_total(d.port(), 4);
    CHECK(model_entry(s, "gpt-4.1")["input_tokens"] == 4 * 321);
    CHECK(model_entry(s, "gpt-4.1")["output_tokens"] == 4 * 54);
}

TEST_CASE("proxy: upstream 4xx/5xx pass through unchanged and count as errors", "[integration]") {
    const std::string err = R"({"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}})";
    fake::FakeUpstream up({}, [&](const fake::Request&) {
        return fake::Response::json(429, err, {{"Retry-After", "7"}});
    });
    Daemon d(daemon_yaml(up.base_url()));
    HttpClient c(d.port());
    auto r = c.post_json("/v1/chat/completions", chat("gpt-4.1"));
    CHECK(r.status == 429);
    CHECK(r.body == err);
    CHECK(r.header("retry-after") == "7");
    auto s = wait_total(d.port(), 1);
    const auto& row = model_entry(s, "gpt-4.1");
    CHECK(row["error_count"] == 1);
    CHECK(row["success_count"] == 0);
    CHECK(row["error_rate_percent"] == 100.0);
    CHECK(row["status_codes"]["429"] == 1);
    auto m = HttpClient(d.port()).get("/metrics").body;
    CHECK(metric_value(m, "ai_request_errors_total{model=\"gpt-4.1\"}") == 1);
    CHECK(metric_value(m, "ai_request_status_total{model=\"gpt-4.1\",code=\"429\"}") == 1);
}

TEST_CASE("proxy: unreachable upstream gives 502 in the OpenAI error shape", "[integration]") {
    std::uint16_t dead_port;
    {
        fake::FakeUpstream gone;
        dead_port = gone.port();
    } // stopped: nothing listens there now
    Daemon d(daemon_yaml("http://127.0.0.1:" + std::to_string(dead_port) + "/v1"));
    HttpClient c(d.port());
    auto r = c.post_json("/v1/chat/completions", chat("gpt-4.1"));
    CHECK(r.status == 502);
    auto j = json::parse(r.body);
    CHECK(j["error"]["type"] == "relaymeter_error");
    CHECK(j["error"]["code"] == "upstream_unreachable");
    CHECK(!j["error"]["message"].get<std::string>().empty());
    auto s = wait_total(d.port(), 1);
    CHECK(model_entry(s, "gpt-4.1")["status_codes"]["502"] == 1);
    CHECK(model_entry(s, "gpt-4.1")["error_count"] == 1);
    // the connection to the client survives the error
    CHECK(c.get("/healthz").status == 200);
}

TEST_CASE("proxy: an upstream slower than request_timeout_s gives 504", "[integration]") {
    fake::FakeUpstream up({}, [](const fake::Request&) { return fake::Response().hang(); });
    auto yaml = daemon_yaml(up.base_url());
    yaml.replace(yaml.find("request_timeout_s: 5"), 20, "request_timeout_s: 0.3");
    Daemon d(yaml);
    HttpClient c(d.port());
    auto r = c.post_json("/v1/chat/completions", chat("deepseek-v3.2"));
    CHECK(r.status == 504);
    CHECK(json::parse(r.body)["error"]["code"] == "upstream_timeout");
    auto s = wait_total(d.port(), 1);
    const auto& row = model_entry(s, "deepseek-v3.2");
    CHECK(row["status_codes"]["504"] == 1);
    CHECK(row["p50_latency_ms"].get<double>() >= 290.0); // latency of failed requests counts
}

TEST_CASE("proxy: a model without a price costs 0 and is reported unpriced", "[integration]") {
    fake::FakeUpstream up;
    Daemon d(daemon_yaml(up.base_url()));
    HttpClient c(d.port());
    REQUIRE(c.post_json("/v1/chat/completions", chat("mystery-model")).status == 200);
    REQUIRE(c.post_json("/v1/chat/completions", R"({"messages":[]})").status == 200);
    auto s = wait_total(d.port(), 2);
    const auto& row = model_entry(s, "mystery-model");
    CHECK(row["priced"] == false);
    CHECK(row["total_cost_usd"] == 0.0);
    CHECK(row["input_tokens"] == 12);
    CHECK(model_entry(s, "none")["priced"] == true);
    auto m = HttpClient(d.port()).get("/metrics").body;
    CHECK(metric_value(m, "ai_request_unpriced_total{model=\"mystery-model\"}") == 1);
    CHECK(d.wait_log("mystery-model", std::chrono::seconds(5))); // logged just after the record is visible
}

TEST_CASE("proxy: request body over max_request_body_bytes gives 413", "[integration]") {
    fake::FakeUpstream up;
    Daemon d(daemon_yaml(up.base_url()));
    HttpClient c(d.port());
    std::string big = R"({"model":"gpt-4.1","input":")" + std::string(1100000, 'a') + "\"}";
    HttpResponse r;
    try {
        r = c.post_json("/v1/embeddings", big);
    } catch (const std::exception&) {
        // The daemon may close before the whole body is sent; the raw check below covers the status.
    }
    if (r.status != 0) {
        CHECK(r.status == 413);
        CHECK(json::parse(r.body)["error"]["code"] == "body_too_large");
    }
    RawConnection raw(d.port());
    raw.send("POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000000\r\n\r\n");
    auto got = raw.read_until_close(std::chrono::seconds(5));
    CHECK(got.rfind("HTTP/1.1 413", 0) == 0);
    CHECK(up.request_count() == 0);
    auto s = wait_total(d.port(), r.status ? 2 : 1);
    CHECK(model_entry(s, "none")["status_codes"]["413"].get<int>() >= 1);
}

TEST_CASE("proxy: Expect 100-continue, chunked request bodies and HTTP/1.0", "[integration]") {
    fake::FakeUpstream up;
    Daemon d(daemon_yaml(up.base_url()));
    const std::string body = chat("gpt-4.1");
    {
        RawConnection raw(d.port());
        raw.send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 "Expect: 100-continue\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n");
        auto cont = raw.read_until("\r\n\r\n", std::chrono::seconds(5));
        CHECK(cont.rfind("HTTP/1.1 100 Continue", 0) == 0);
        raw.send(body + "");
        auto res = raw.read_until("\"usage\"", std::chrono::seconds(5));
        CHECK(res.find("HTTP/1.1 200") != std::string::npos);
    }
    {
        RawConnection raw(d.port());
        char len[16];
        std::snprintf(len, sizeof len, "%zx", body.size());
        raw.send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
                 std::string(len) + "\r\n" + body + "\r\n0\r\n\r\n");
        auto res = raw.read_until("\"usage\"", std::chrono::seconds(5));
        CHECK(res.rfind("HTTP/1.1 200", 0) == 0);
        CHECK(up.requests().back().body == body);
    }
    {
        RawConnection raw(d.port());
        raw.send("POST /v1/chat/completions HTTP/1.0\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
        auto res = raw.read_until_close(std::chrono::seconds(5));
        CHECK(res.rfind("HTTP/1.0 200", 0) == 0);
        CHECK(res.find("\"usage\"") != std::string::npos);
    }
    {
        // RFC 9110 10.1.1: an HTTP/1.0 request's 100-continue expectation is
        // ignored (a 1.0 client cannot read an interim response: it would
        // take the 100 for the answer).
        RawConnection raw(d.port());
        raw.send("POST /v1/chat/completions HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: " +
                 std::to_string(body.size()) + "\r\n\r\n");
        CHECK_FALSE(raw.peer_closed(std::chrono::milliseconds(300))); // what arrives meanwhile is kept
        raw.send(body);
        auto res = raw.read_until_close(std::chrono::seconds(5));
        CHECK(res.rfind("HTTP/1.0 200", 0) == 0);
        CHECK(res.find(" 100 Continue") == std::string::npos);
        CHECK(res.find("\"usage\"") != std::string::npos);
    }
    wait_total(d.port(), 4);
}

TEST_CASE("proxy: chunked and non-JSON upstream bodies are relayed and metered", "[integration]") {
    const std::string part1 = R"({"id":"c","object":"chat.completion","choices":[],"usa)";
    const std::string part2 = R"(ge":{"prompt_tokens":7,"completion_tokens":9}})";
    fake::FakeUpstream up({}, [&](const fake::Request& rq) {
        if (rq.target.find("text") != std::string::npos) {
            return fake::Response::json(200, "not json at all", {{"Content-Type", "text/plain"}});
        }
        char a[16], b[16];
        std::snprintf(a, sizeof a, "%zx", part1.size());
        std::snprintf(b, sizeof b, "%zx", part2.size());
        return fake::Response()
            .write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            .write(std::string(a) + "\r\n" + part1 + "\r\n")
            .write(std::string(b) + "\r\n" + part2 + "\r\n0\r\n\r\n");
    });
    Daemon d(daemon_yaml(up.base_url()));
    HttpClient c(d.port());
    auto r = c.post_json("/v1/chat/completions", chat("gpt-4.1"));
    CHECK(r.status == 200);
    CHECK(r.body == part1 + part2);
    auto t = c.post_json("/v1/text", chat("gpt-4.1"));
    CHECK(t.body == "not json at all");
    auto s = wait_total(d.port(), 2);
    CHECK(model_entry(s, "gpt-4.1")["input_tokens"] == 7);
    CHECK(model_entry(s, "gpt-4.1")["output_tokens"] == 9);
    CHECK(model_entry(s, "gpt-4.1")["total_requests"] == 2);
}

TEST_CASE("proxy: a body of a given length in several reads is relayed whole, metered, the connection reused",
          "[integration]") {
    // The fast path reads a plain head and counts a Content-Length body
    // itself: the body's pieces arrive in separate writes here (the fake
    // pauses between them), and a 0-length body ends the response at once.
    const std::string body = R"({"id":"c","object":"chat.completion","choices":[],"usage":{"prompt_tokens":11,)"
                             R"("completion_tokens":13,"total_tokens":24}})";
    const std::string head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ";
    fake::FakeUpstream up({}, [&](const fake::Request& rq) {
        if (rq.target.find("empty") != std::string::npos) return fake::Response().write(head + "0\r\n\r\n");
        return fake::Response()
            .write(head + std::to_string(body.size()) + "\r\n\r\n" + body.substr(0, 20))
            .delay(std::chrono::milliseconds(2))
            .write(body.substr(20, 30))
            .delay(std::chrono::milliseconds(2))
            .write(body.substr(50));
    });
    Daemon d(daemon_yaml(up.base_url()));
    HttpClient c(d.port());
    for (int i = 0; i < 3; ++i) {
        auto r = c.post_json("/v1/chat/completions", chat("gpt-4.1"));
        CHECK(r.status == 200);
        CHECK(r.body == body);
        CHECK(r.header("content-length") == std::to_string(body.size()));
        auto e = c.post_json("/v1/empty", chat("gpt-4.1"));
        CHECK(e.status == 200);
        CHECK(e.body.empty());
    }
    const auto s = wait_total(d.port(), 6);
    CHECK(model_entry(s, "gpt-4.1")["input_tokens"] == 3 * 11);
    CHECK(model_entry(s, "gpt-4.1")["output_tokens"] == 3 * 13);
    CHECK(up.request_count() == 6);
    CHECK(up.connections_accepted() == 1); // every response ended where its length said
}

TEST_CASE("proxy: bytes an upstream sends after its response never reach the next request", "[integration]") {
    // The first answer comes with a second, unasked-for response behind it
    // in the same write: the connection is not pooled, so the next request
    // gets its own answer, not that one.
    const std::string head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ";
    const auto answer = [&](const std::string& body) { return head + std::to_string(body.size()) + "\r\n\r\n" + body; };
    std::atomic<int> n{0};
    fake::FakeUpstream up({}, [&](const fake::Request&) {
        const std::string body = R"({"answer":)" + std::to_string(++n) + R"(,"usage":{"prompt_tokens":1,"completion_tokens":2}})";
        const std::string stray = n == 1 ? answer(R"({"answer":"stray"})") : std::string();
        return fake::Response().write(answer(body) + stray);
    });
    Daemon d(daemon_yaml(up.base_url()));
    HttpClient c(d.port());
    for (int i = 1; i <= 3; ++i) {
        const auto r = c.post_json("/v1/chat/completions", chat("gpt-4.1"));
        CHECK(r.status == 200);
        CHECK(json::parse(r.body)["answer"] == i);
    }
    CHECK(up.request_count() == 3);
    CHECK(up.connections_accepted() == 2); // the one with stray bytes was closed, the next one reused
    const auto s = wait_total(d.port(), 3);
    CHECK(model_entry(s, "gpt-4.1")["output_tokens"] == 6);
}

TEST_CASE("proxy: keep-alive clients reuse pooled upstream connections", "[integration]") {
    fake::FakeUpstream up;
    Daemon d(daemon_yaml(up.base_url()));
    HttpClient c(d.port());
    for (int i = 0; i < 50; ++i) REQUIRE(c.post_json("/v1/chat/completions", chat("gpt-4.1")).status == 200);
    CHECK(up.request_count() == 50);
    CHECK(up.connections_accepted() <= 2);
}

TEST_CASE("proxy: a pooled connection the upstream closed after its answer costs no 502, the request is sent again",
          "[integration]") {
    // An upstream that closes (FIN) or resets a keep-alive connection right
    // after its answer, without Connection: close (a keep-alive timeout or a
    // request limit it does not announce). The next request, back to back,
    // takes that connection from the pool unchecked; it must not become a
    // 502: the upstream never saw it, so it is sent again on a new one.
    const std::string body = R"({"id":"c","object":"chat.completion","choices":[],"usage":{"prompt_tokens":11,)"
                             R"("completion_tokens":13,"total_tokens":24}})";
    constexpr int kRequests = 20;
    for (const bool reset : {false, true}) {
        DYNAMIC_SECTION((reset ? "reset" : "closed") << " after each answer") {
            fake::FakeUpstream up({}, [&](const fake::Request&) {
                auto r = fake::Response::json(200, body);
                return reset ? r.reset() : r.close();
            });
            Daemon d(daemon_yaml(up.base_url()));
            HttpClient c(d.port());
            int ok = 0;
            for (int i = 0; i < kRequests; ++i) {
                const auto r = c.post_json("/v1/chat/completions", chat("gpt-4.1"));
                INFO("request " << i << ": " << r.status << " " << r.body);
                CHECK(r.status == 200);
                CHECK(r.body == body);
                ok += r.status == 200;
            }
            CHECK(ok == kRequests);
            const auto s = wait_total(d.port(), kRequests);
            const auto row = model_entry(s, "gpt-4.1");
            CHECK(row["status_codes"]["200"] == kRequests);
            CHECK(row["input_tokens"] == 11 * kRequests);
            CHECK(row["output_tokens"] == 13 * kRequests);
            CHECK(up.request_count() == kRequests); // each reached the upstream once
            CHECK(up.connections_accepted() >= kRequests);
        }
    }
    SECTION("an answer that began is not sent again") {
        std::atomic<int> n{0};
        fake::FakeUpstream up({}, [&](const fake::Request&) {
            if (n.fetch_add(1) == 0) return fake::Response::json(200, body);
            return fake::Response().write("HTTP/1.1 200 OK\r\nContent-Le").close();
        });
        Daemon d(daemon_yaml(up.base_url()));
        HttpClient c(d.port());
        CHECK(c.post_json("/v1/chat/completions", chat("gpt-4.1")).status == 200);
        CHECK(c.post_json("/v1/chat/completions", chat("gpt-4.1")).status == 502);
        const auto s = wait_total(d.port(), 2);
        CHECK(model_entry(s, "gpt-4.1")["status_codes"]["502"] == 1);
        CHECK(up.request_count() == 2);
    }
}

namespace {
std::size_t open_sockets(int pid) {
    std::size_t n = 0;
    for (const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
        std::error_code ec;
        const auto target = std::filesystem::read_symlink(e.path(), ec);
        if (!ec && target.string().rfind("socket:", 0) == 0) ++n;
    }
    return n;
}
} // namespace

TEST_CASE("proxy: pooled upstream connections the upstream closed are let go while idle", "[integration]") {
    // Every answer waits until kClients requests are in, so the pools hold
    // kClients connections: more per worker than one sweep looks at (16),
    // the rest are looked at in the sweeps that follow.
    constexpr int kClients = 48;
    auto gate = std::make_shared<fake::Gate>();
    auto answer = fake::openai_handler();
    auto up = std::make_unique<fake::FakeUpstream>(fake::Options{}, [&](const fake::Request& r) {
        auto res = answer(r);
        res.steps.insert(res.steps.begin(), fake::Step{fake::Step::Kind::WaitGate, {}, {}, gate});
        return res;
    });
    Daemon d(daemon_yaml(up->base_url()));
    HttpClient probe(d.port());
    REQUIRE(probe.get("/healthz").status == 200);
    const std::size_t baseline = open_sockets(d.pid()); // listeners and the probe's connection
    {
        std::vector<std::thread> clients;
        for (int t = 0; t < kClients; ++t) {
            clients.emplace_back([&] {
                HttpClient c(d.port());
                CHECK(c.post_json("/v1/chat/completions", chat("gpt-4.1")).status == 200);
            });
        }
        while (up->request_count() < static_cast<std::size_t>(kClients)) REQUIRE(probe.get("/healthz").status == 200);
        gate->open();
        for (auto& t : clients) t.join();
    }
    wait_idle(d.port());
    REQUIRE(open_sockets(d.pid()) >= baseline + kClients); // pooled upstream connections
    up.reset(); // the upstream goes away and closes its side of every connection
    // No request arrives: the pool's sweep must still close the half-closed sockets.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    std::size_t now = open_sockets(d.pid());
    while (now > baseline && std::chrono::steady_clock::now() < deadline) {
        REQUIRE(probe.get("/healthz").status == 200); // a real round trip per poll, no sleeping
        now = open_sockets(d.pid());
    }
    CHECK(now <= baseline);
}

TEST_CASE("proxy: admin endpoints, 404s and methods", "[integration]") {
    fake::FakeUpstream up;
    Daemon d(daemon_yaml(up.base_url()));
    HttpClient c(d.port());
    auto h = c.get("/healthz");
    CHECK(h.status == 200);
    CHECK(h.body == "ok\n");
    auto n = c.get("/nope");
    CHECK(n.status == 404);
    CHECK(json::parse(n.body)["error"]["type"] == "relaymeter_error");
    CHECK(c.request("POST", "/metrics", "x").status == 405);
    auto s = json::parse(c.get("/summary").body);
    CHECK(s["overall"]["total_requests"] == 0); // admin calls and 404s are not metered
    CHECK(s["models"].empty());
    for (auto k : {"started_at", "generated_at", "uptime_seconds", "hourly_cost_usd"}) CHECK(s.contains(k));
    CHECK(up.request_count() == 0);
}

TEST_CASE("proxy: a path with '.' or '..' segments is refused, never forwarded", "[integration]") {
    fake::FakeUpstream up;
    Daemon d(daemon_yaml(up.base_url()));
    std::uint64_t total = 0;
    for (const char* target : {"/v1/../admin", "/v1/chat/../../../etc/passwd", "/v1/%2e%2E/x", "/v1/./models"}) {
        INFO(target);
        HttpClient c(d.port());
        const auto r = c.post_json(target, chat("gpt-4.1"));
        CHECK(r.status == 400);
        CHECK(json::parse(r.body)["error"]["code"] == "invalid_path");
        ++total;
    }
    HttpClient c(d.port());
    CHECK(c.post_json("/v1/chat/completions?next=../x", chat("gpt-4.1")).status == 200); // a query is not a path
    ++total;
    const auto s = wait_total(d.port(), total);
    CHECK(s["overall"]["status_codes"]["400"] == total - 1);
    REQUIRE(up.request_count() == 1);
    CHECK(up.requests()[0].target.find("?next=../x") != std::string::npos);
}

TEST_CASE("proxy: admin token protects the admin endpoints", "[integration]") {
    fake::FakeUpstream up;
    Daemon d(daemon_yaml(up.base_url(), {}, "admin:\n  token: \"adm-tok\"\n"));
    HttpClient c(d.port());
    CHECK(c.get("/metrics").status == 401);
    CHECK(c.get("/summary").status == 401);
    CHECK(c.get("/healthz").status == 200);
    CHECK(c.request("GET", "/metrics", "", {{"Authorization", "Bearer adm-tok"}}).status == 200);
}

TEST_CASE("proxy: auth keys gate /v1 and the 401s are metered", "[integration]") {
    fake::FakeUpstream up;
    Daemon d(daemon_yaml(up.base_url(), {},
                         "auth:\n  keys:\n    - { name: team-a, key: \"ka-123\" }\n    - { name: team-b, key: \"kb-456\" }\n"));
    HttpClient c(d.port());
    auto denied = c.post_json("/v1/chat/completions", chat("gpt-4.1"), {{"Authorization", "Bearer wrong"}});
    CHECK(denied.status == 401);
    CHECK(json::parse(denied.body)["error"]["code"] == "invalid_api_key");
    HttpClient c2(d.port());
    auto ok = c2.post_json("/v1/chat/completions", chat("gpt-4.1"), {{"Authorization", "Bearer kb-456"}});
    CHECK(ok.status == 200);
    REQUIRE(up.request_count() == 1);
    CHECK(up.requests()[0].headers.count("authorization") == 0); // the relaymeter key is not sent upstream
    auto s = wait_total(d.port(), 2);
    CHECK(s["overall"]["status_codes"]["401"] == 1);
}

TEST_CASE("proxy: with auth on, cost and tokens are attributed to each key", "[integration]") {
    fake::FakeUpstream up; // every chat completion reports 12 prompt and 34 completion tokens
    Daemon d(daemon_yaml(up.base_url(), {},
                         "auth:\n  keys:\n    - { name: team-a, key: \"ka-123\" }\n    - { name: team-b, key: \"kb-456\" }\n"));
    HttpClient c(d.port());
    for (int i = 0; i < 3; ++i)
        REQUIRE(c.post_json("/v1/chat/completions", chat("gpt-4.1"), {{"Authorization", "Bearer ka-123"}}).status == 200);
    REQUIRE(c.post_json("/v1/chat/completions", chat("deepseek-v3.2"), {{"Authorization", "Bearer ka-123"}}).status == 200);
    REQUIRE(c.post_json("/v1/chat/completions", chat("gpt-4.1"), {{"Authorization", "Bearer kb-456"}}).status == 200);
    REQUIRE(HttpClient(d.port()).post_json("/v1/chat/completions", chat("gpt-4.1"), {{"Authorization", "Bearer nope"}}).status == 401);
    const auto s = wait_idle(d.port());
    REQUIRE(s["overall"]["total_requests"] == 6);

    const double gpt = (12 * 8.0 + 34 * 32.0) / 1e6, ds = (12 * 0.42 + 34 * 1.68) / 1e6;
    REQUIRE(s.contains("keys"));
    const auto& keys = s["keys"];
    REQUIRE(keys.size() == 3); // sorted by name: none (the 401), team-a, team-b
    CHECK(keys[0]["key"] == "none");
    CHECK(keys[0]["total_requests"] == 1);
    CHECK(keys[0]["error_count"] == 1);
    CHECK(keys[1]["key"] == "team-a");
    CHECK(keys[1]["total_requests"] == 4);
    CHECK(keys[1]["input_tokens"] == 48);
    CHECK(keys[1]["output_tokens"] == 136);
    CHECK(keys[1]["total_cost_usd"].get<double>() == Approx(3 * gpt + ds).epsilon(1e-12));
    CHECK(keys[1]["status_codes"]["200"] == 4);
    CHECK(keys[2]["key"] == "team-b");
    CHECK(keys[2]["total_cost_usd"].get<double>() == Approx(gpt).epsilon(1e-12));

    const auto m = c.get("/metrics").body;
    CHECK(metric_value(m, R"(ai_requests_total{model="gpt-4.1",key="team-a"})") == 3);
    CHECK(metric_value(m, R"(ai_requests_total{model="deepseek-v3.2",key="team-a"})") == 1);
    CHECK(metric_value(m, R"(ai_requests_total{model="gpt-4.1",key="team-b"})") == 1);
    CHECK(metric_value(m, R"(ai_requests_total{model="none",key="none"})") == 1);
    CHECK(metric_value(m, R"(ai_request_errors_total{model="none",key="none"})") == 1);
    CHECK(metric_value(m, R"(ai_request_errors_total{model="gpt-4.1",key="team-a"})") == 0);
    CHECK(metric_value(m, R"(ai_request_tokens_total{model="gpt-4.1",key="team-a",type="input"})") == 36);
    CHECK(metric_value(m, R"(ai_request_tokens_total{model="gpt-4.1",key="team-b",type="output"})") == 34);
    CHECK(metric_value(m, R"(ai_request_cost_total{model="gpt-4.1",key="team-a"})") == Approx(3 * gpt).epsilon(1e-12));
    // Series without a key label would double-count in sum by (model).
    CHECK(std::isnan(metric_value(m, R"(ai_requests_total{model="gpt-4.1"})")));
    CHECK(promtool_check_metrics(m).empty());

    const auto table = c.get("/summary?format=table").body;
    CHECK(table.find("team-a") != std::string::npos);
}

TEST_CASE("proxy: HTTPS upstream with certificate and host-name verification", "[integration][tls]") {
    auto certs = TestCerts::make();
    auto tls_yaml = [&](std::uint16_t port) {
        return daemon_yaml("https://127.0.0.1:" + std::to_string(port) + "/v1",
                           "  tls: { verify: true, ca_file: \"" + certs->ca_cert + "\" }\n");
    };
    SECTION("a certificate from the configured CA for the right host is accepted") {
        fake::FakeUpstream up({.cert_file = certs->server_cert, .key_file = certs->server_key});
        Daemon d(tls_yaml(up.port()));
        HttpClient c(d.port());
        auto r = c.post_json("/v1/chat/completions", chat("gpt-4.1"));
        CHECK(r.status == 200);
        CHECK(json::parse(r.body)["usage"]["prompt_tokens"] == 12);
        for (int i = 0; i < 5; ++i) CHECK(c.post_json("/v1/chat/completions", chat("gpt-4.1")).status == 200);
        CHECK(up.connections_accepted() <= 2);
        auto s = wait_total(d.port(), 6);
        CHECK(model_entry(s, "gpt-4.1")["input_tokens"] == 72);
    }
    SECTION("a certificate for another host is rejected with 502") {
        fake::FakeUpstream up({.cert_file = certs->wrong_host_cert, .key_file = certs->wrong_host_key});
        Daemon d(tls_yaml(up.port()));
        auto r = HttpClient(d.port()).post_json("/v1/chat/completions", chat("gpt-4.1"));
        CHECK(r.status == 502);
        CHECK(json::parse(r.body)["error"]["code"] == "upstream_tls_error");
        CHECK(up.request_count() == 0);
    }
    SECTION("a certificate outside the trusted CA is rejected with 502") {
        fake::FakeUpstream up({.cert_file = certs->self_signed_cert, .key_file = certs->self_signed_key});
        Daemon d(tls_yaml(up.port()));
        auto r = HttpClient(d.port()).post_json("/v1/chat/completions", chat("gpt-4.1"));
        CHECK(r.status == 502);
        CHECK(up.request_count() == 0);
        auto s = wait_total(d.port(), 1);
        CHECK(model_entry(s, "gpt-4.1")["status_codes"]["502"] == 1);
    }
}

TEST_CASE("proxy: /metrics passes promtool check metrics", "[integration][promtool]") {
    if (std::system("command -v promtool >/dev/null 2>&1") != 0) FAIL("promtool is not installed (apt-get install prometheus)");
    fake::FakeUpstream up;
    Daemon d(daemon_yaml(up.base_url(), {}, "metrics:\n  labels: { monitor: holysheep }\n"));
    HttpClient c(d.port());
    for (auto model : {"gpt-4.1", "weird \"model\"\\name", "deepseek-v3.2"})
        REQUIRE(c.post_json("/v1/chat/completions", json({{"model", model}, {"messages", json::array()}}).dump()).status == 200);
    REQUIRE(c.post_json("/v1/chat/completions", chat("gpt-4.1"), {}).status == 200);
    wait_total(d.port(), 4);
    auto m = c.get("/metrics");
    REQUIRE(m.status == 200);
    CHECK(m.header("content-type").find("text/plain; version=0.0.4") == 0);
    CHECK(m.body.find("monitor=\"holysheep\"") != std::string::npos);
    CHECK(m.body.find("relaymeter_build_info{") != std::string::npos);
    CHECK(m.body.find("process_resident_memory_bytes") != std::string::npos);
    CHECK(promtool_check_metrics(m.body).empty());
}

TEST_CASE("proxy: SIGTERM lets in-flight requests finish, then exits 0", "[integration]") {
    auto gate = std::make_shared<fake::Gate>();
    fake::FakeUpstream up({}, [&](const fake::Request&) {
        fake::Response r = fake::Response::json(200, R"({"usage":{"prompt_tokens":5,"completion_tokens":6}})");
        r.steps.insert(r.steps.begin(), fake::Response().wait(gate).steps.front());
        return r;
    });
    Daemon d(daemon_yaml(up.base_url()));
    auto pending = std::async(std::launch::async, [&] {
        HttpClient c(d.port());
        return c.post_json("/v1/chat/completions", chat("gpt-4.1")).status;
    });
    REQUIRE(up.wait_requests(1, std::chrono::seconds(5)));
    d.signal(SIGTERM);
    REQUIRE(d.wait_log("draining", std::chrono::seconds(5)));
    gate->open();
    CHECK(pending.get() == 200);
    CHECK(d.stop() == 0);
}

TEST_CASE("proxy: requests still in flight at server.drain_timeout_s are cut off and recorded, not lost",
          "[integration]") {
    fake::FakeUpstream up({}, [](const fake::Request& r) {
        if (r.target.find("stream") != std::string::npos) {
            return fake::Response()
                .write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
                .write("e\r\ndata: {\"a\":1}\n\n\r\n")
                .hang();
        }
        return fake::Response().hang(); // no answer at all
    });
    Daemon d(replace(daemon_yaml(up.base_url()), "drain_timeout_s: 5", "drain_timeout_s: 0.3"));
    RawConnection streaming(d.port()), waiting(d.port());
    const std::string body = chat("gpt-4.1");
    const auto post = [&](const std::string& path, const std::string& rid) {
        return "POST " + path + " HTTP/1.1\r\nHost: x\r\nX-Request-Id: " + rid +
               "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    };
    streaming.send(post("/v1/stream", "cut-stream"));
    waiting.send(post("/v1/chat/completions", "cut-plain"));
    REQUIRE(up.wait_requests(2, std::chrono::seconds(5)));
    REQUIRE(streaming.read_until("data: {\"a\":1}", std::chrono::seconds(5)).rfind("HTTP/1.1 200", 0) == 0);
    d.signal(SIGTERM);
    CHECK(d.stop() == 0);
    const std::string log = d.log();
    INFO(log);
    CHECK(log.find("drain timeout: 2 requests still in flight") != std::string::npos);
    for (const char* rid : {"cut-stream", "cut-plain"}) {
        const auto at = log.find(std::string("access rid=") + rid + " ");
        REQUIRE(at != std::string::npos);
        const std::string line = log.substr(at, log.find('\n', at) - at);
        CHECK(line.find("model=gpt-4.1 status=503") != std::string::npos);
        CHECK(line.find("error=shutting_down") != std::string::npos);
    }
    // The clients see their connections closed.
    CHECK(streaming.peer_closed(std::chrono::seconds(5)));
    CHECK(waiting.peer_closed(std::chrono::seconds(5)));
}

TEST_CASE("proxy: SIGHUP reloads prices for later requests, a bad file keeps the running config", "[integration]") {
    fake::OpenAIOptions o;
    o.prompt_tokens = 1000;
    o.completion_tokens = 1000;
    fake::FakeUpstream up({}, fake::openai_handler(o));
    Daemon d(daemon_yaml(up.base_url()));
    HttpClient c(d.port());
    REQUIRE(c.post_json("/v1/chat/completions", chat("gpt-4.1")).status == 200);
    wait_total(d.port(), 1);

    // gpt-4.1 becomes 1 and 2 USD per 1M tokens.
    std::string yaml = daemon_yaml(up.base_url());
    yaml.replace(yaml.find("gpt-4.1:           { input: 8.00,  output: 32.00 }"), 50,
                 "gpt-4.1:           { input: 1.00,  output: 2.00  }");
    std::ofstream(d.config_path(), std::ios::trunc) << yaml;
    d.signal(SIGHUP);
    REQUIRE(d.wait_log("SIGHUP: reloaded", std::chrono::seconds(5)));
    REQUIRE(c.post_json("/v1/chat/completions", chat("gpt-4.1")).status == 200);
    auto s = wait_total(d.port(), 2);
    CHECK(model_entry(s, "gpt-4.1")["total_cost_usd"].get<double>() ==
          Approx((1000 * 8.0 + 1000 * 32.0 + 1000 * 1.0 + 1000 * 2.0) / 1e6).epsilon(1e-12));

    std::ofstream(d.config_path(), std::ios::trunc) << "pricing:\n  gpt-4.1: { input: -5, output: 1 }\n";
    d.signal(SIGHUP);
    REQUIRE(d.wait_log("is not valid, keeping the running config", std::chrono::seconds(5)));
    CHECK(d.wait_log("pricing.gpt-4.1.input", std::chrono::seconds(5)));
    REQUIRE(c.post_json("/v1/chat/completions", chat("gpt-4.1")).status == 200);
    s = wait_total(d.port(), 3);
    CHECK(model_entry(s, "gpt-4.1")["total_cost_usd"].get<double>() ==
          Approx((1000 * 8.0 + 1000 * 32.0 + 2 * (1000 * 1.0 + 1000 * 2.0)) / 1e6).epsilon(1e-12));
}

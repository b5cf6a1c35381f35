// Streams through the real daemon: chunk-by-chunk relay, include_usage
// injection and stripping, disconnects, upstream failures, concurrency.
#include <catch2/catch.hpp>

#include <atomic>
#include <future>
#include <thread>

#include "fake_upstream.hpp"
#include "integration/common.hpp"

using namespace relaymeter;
using namespace relaymeter::testsupport;
using nlohmann::json;

namespace {

std::string chunk_event(int i, const std::string& content) {
    return "data: " +
           json({{"id", "chatcmpl-1"},
                 {"object", "chat.completion.chunk"},
                 {"model", "gpt-4.1"},
                 {"choices", json::array({{{"index", 0}, {"delta", {{"content", content}}}}})}})
               .dump() +
           "\n\n" + (i < 0 ? "" : "");
}

std::vector<std::string> split_events(const std::string& body) {
    std::vector<std::string> out;
    std::size_t pos = 0;
    while (pos < body.size()) {
        auto end = body.find("\n\n", pos);
        if (end == std::string::npos) {
            out.push_back(body.substr(pos));
            break;
        }
        out.push_back(body.substr(pos, end + 2 - pos));
        pos = end + 2;
    }
    return out;
}

bool is_usage_only(const std::string& ev) {
    return ev.find("\"choices\":[]") != std::string::npos && ev.find("\"usage\":{") != std::string::npos;
}

const std::string kStreamBody = R"({"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"stream":true})";

} // namespace

TEST_CASE("stream: chunk k reaches the client before the upstream sends chunk k+1", "[integration][stream]") {
    std::vector<std::string> events;
    for (int i = 0; i < 5; ++i) events.push_back(chunk_event(i, "tok" + std::to_string(i)));
    events.push_back("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[],"
                     "\"usage\":{\"prompt_tokens\":21,\"completion_tokens\":5}}\n\n");
    events.push_back("data: [DONE]\n\n");
    std::vector<std::shared_ptr<fake::Gate>> gates;
    for (std::size_t i = 1; i < events.size(); ++i) gates.push_back(std::make_shared<fake::Gate>());
    fake::FakeUpstream up({}, [&](const fake::Request&) { return fake::Response::sse(events, gates); });
    Daemon d(daemon_yaml(up.base_url()));

    std::string received;
    std::size_t next = 0; // index of the next event expected
    HttpClient c(d.port());
    auto r = c.request_streaming(
        "POST", "/v1/chat/completions",
        R"({"model":"gpt-4.1","stream":true,"stream_options":{"include_usage":true},"messages":[]})",
        {{"Content-Type", "application/json"}}, [&](const std::string& piece) {
            received += piece;
            // Open the gate of chunk k+1 only once chunk k has fully arrived:
            // a proxy that buffers would deadlock here and the client times out.
            std::string want;
            for (std::size_t i = 0; i <= next && i < events.size(); ++i) want += events[i];
            while (next < events.size() && received.size() >= want.size() && received.compare(0, want.size(), want) == 0) {
                if (next < gates.size()) gates[next]->open();
                ++next;
                if (next < events.size()) want += events[next];
            }
        });
    CHECK(r.status == 200);
    CHECK(r.header("content-type").find("text/event-stream") == 0);
    std::string all;
    for (auto& e : events) all += e;
    CHECK(r.body == all); // the client asked for usage: stream untouched
    CHECK(next == events.size());
    auto s = wait_total(d.port(), 1);
    const auto& row = model_entry(s, "gpt-4.1");
    CHECK(row["input_tokens"] == 21);
    CHECK(row["output_tokens"] == 5);
    CHECK(row["streamed_requests"] == 1);
    CHECK(row["p50_ttft_ms"].get<double>() > 0);
    auto m = HttpClient(d.port()).get("/metrics").body;
    CHECK(metric_value(m, "ai_request_ttft_seconds_count{model=\"gpt-4.1\"}") == 1);
    CHECK(d.wait_log("streamed=yes", std::chrono::seconds(5))); // written just after the record is visible
}

TEST_CASE("stream: include_usage is injected upstream and the usage chunk stripped for the client",
          "[integration][stream]") {
    fake::OpenAIOptions o;
    o.prompt_tokens = 321;
    o.completion_tokens = 123;
    o.cached_tokens = 100;
    o.stream_chunks = 4;
    fake::FakeUpstream up({}, fake::openai_handler(o));
    Daemon d(daemon_yaml(up.base_url()));
    const std::string with_usage =
        R"({"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}})";

    // What the upstream sends for the injected request, read directly.
    auto direct = HttpClient(up.port()).post_json("/v1/chat/completions", with_usage).body;
    std::string expected;
    int stripped = 0;
    for (auto& ev : split_events(direct)) {
        if (is_usage_only(ev)) {
            ++stripped;
            continue;
        }
        expected += ev;
    }
    REQUIRE(stripped == 1);

    auto r = HttpClient(d.port()).post_json("/v1/chat/completions", kStreamBody);
    CHECK(r.status == 200);
    CHECK(r.body == expected); // every other byte unchanged
    auto sent = up.requests().back().body;
    CHECK(json::parse(sent)["stream_options"]["include_usage"] == true);
    CHECK(json::parse(sent)["messages"] == json::parse(kStreamBody)["messages"]);

    // A client that asked for usage gets the stream untouched.
    auto asked = HttpClient(d.port()).post_json("/v1/chat/completions", with_usage);
    CHECK(asked.body == direct);
    CHECK(up.requests().back().body == with_usage);

    auto s = wait_total(d.port(), 2);
    const auto& row = model_entry(s, "gpt-4.1");
    CHECK(row["input_tokens"] == 642);
    CHECK(row["output_tokens"] == 246);
    CHECK(row["cached_input_tokens"] == 200);
    CHECK(row["total_cost_usd"].get<double>() == Approx(2 * (321.0 * 8 + 123.0 * 32) / 1e6).epsilon(1e-12));
    CHECK(row["streamed_requests"] == 2);
}

TEST_CASE("stream: an event stream without the event-stream type is still metered and stripped",
          "[integration][stream]") {
    // Some relays send their streams as text/plain, application/json or
    // with no type: the body decides (it was read as one JSON document, 0
    // tokens, and the usage chunk relaymeter asked for reached the client).
    const std::string content = "data: " + json::parse(R"({"id":"c","object":"chat.completion.chunk",
        "choices":[{"index":0,"delta":{"content":"Hi"}}]})").dump() + "\n\n";
    const std::string usage = R"(data: {"id":"c","object":"chat.completion.chunk","choices":[],)"
                              R"("usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}})"
                              "\n\n";
    const std::string done = "data: [DONE]\n\n";
    const std::string events = content + usage + done;
    // A relay that ignored "stream": true answers one JSON document.
    const std::string whole = R"({"id":"c","object":"chat.completion","choices":[],)"
                              R"("usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}})";
    const std::vector<std::string> types = {"text/plain; charset=utf-8", "application/json", ""};
    fake::FakeUpstream up({}, [&](const fake::Request& rq) {
        const std::size_t q = rq.target.find("?t=");
        const int t = q == std::string::npos ? 0 : std::stoi(rq.target.substr(q + 3));
        const std::string body = t == 3 ? whole : events;
        const std::string type = t == 3 ? "text/plain" : types[static_cast<std::size_t>(t)];
        return fake::Response().write("HTTP/1.1 200 OK\r\n" + (type.empty() ? "" : "Content-Type: " + type + "\r\n") +
                                      "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
    });
    Daemon d(daemon_yaml(up.base_url()));
    HttpClient c(d.port());
    for (int t = 0; t < 3; ++t) {
        INFO(t);
        const auto r = c.post_json("/v1/chat/completions?t=" + std::to_string(t), kStreamBody);
        CHECK(r.status == 200);
        CHECK(r.body == content + done); // the usage chunk it did not ask for is removed
        CHECK(json::parse(up.requests().back().body)["stream_options"]["include_usage"] == true);
    }
    const auto r = c.post_json("/v1/chat/completions?t=3", kStreamBody);
    CHECK(r.body == whole);
    // Chunked, its first chunk blank and the events 50 ms later: the blank
    // bytes are relayed and the first byte that is not blank decides.
    {
        fake::FakeUpstream paced({}, [&](const fake::Request&) {
            return fake::Response()
                .write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n\n\r\n")
                .delay(std::chrono::milliseconds(50))
                .write(chunk(events) + "0\r\n\r\n");
        });
        Daemon pd(daemon_yaml(paced.base_url()));
        const auto pr = HttpClient(pd.port()).post_json("/v1/chat/completions", kStreamBody);
        CHECK(pr.body == "\n" + content + done);
        const auto ps = wait_total(pd.port(), 1);
        CHECK(model_entry(ps, "gpt-4.1")["input_tokens"] == 10);
        CHECK(model_entry(ps, "gpt-4.1")["streamed_requests"] == 1);
    }
    auto s = wait_total(d.port(), 4);
    const auto& row = model_entry(s, "gpt-4.1");
    CHECK(row["input_tokens"] == 3 * 10 + 7);
    CHECK(row["output_tokens"] == 3 * 5 + 3);
    CHECK(row["streamed_requests"] == 3);
}

TEST_CASE("stream: injection can be turned off", "[integration][stream]") {
    fake::FakeUpstream up;
    Daemon d(daemon_yaml(up.base_url(), {}, "streaming:\n  inject_include_usage: false\n"));
    auto r = HttpClient(d.port()).post_json("/v1/chat/completions", kStreamBody);
    CHECK(r.status == 200);
    CHECK(up.requests().back().body == kStreamBody);
    auto s = wait_total(d.port(), 1);
    CHECK(model_entry(s, "gpt-4.1")["input_tokens"] == 0); // the upstream reported nothing
}

TEST_CASE("stream: Responses API streams are metered from response.completed", "[integration][stream]") {
    fake::OpenAIOptions o;
    o.prompt_tokens = 40;
    o.completion_tokens = 60;
    o.reasoning_tokens = 20;
    fake::FakeUpstream up({}, fake::openai_handler(o));
    Daemon d(daemon_yaml(up.base_url()));
    const std::string body = R"({"model":"gemini-2.5-flash","input":"hi","stream":true})";
    auto direct = HttpClient(up.port()).post_json("/v1/responses", body).body;
    auto r = HttpClient(d.port()).post_json("/v1/responses", body);
    CHECK(r.body == direct);
    CHECK(up.requests().back().body == body); // never injected for /v1/responses
    auto s = wait_total(d.port(), 1);
    const auto& row = model_entry(s, "gemini-2.5-flash");
    CHECK(row["input_tokens"] == 40);
    CHECK(row["output_tokens"] == 60);
    CHECK(row["reasoning_tokens"] == 20);
}

TEST_CASE("stream: a client that goes away mid-stream is recorded as 499 and nothing leaks",
          "[integration][stream]") {
    std::vector<std::string> events;
    for (int i = 0; i < 200; ++i) events.push_back(chunk_event(i, std::string(200, 'x')));
    std::vector<std::shared_ptr<fake::Gate>> gates;
    auto gate = std::make_shared<fake::Gate>();
    gates.push_back(gate); // chunk 1 waits for the client to be gone
    for (std::size_t i = 2; i < events.size(); ++i) {
        gates.push_back(std::make_shared<fake::Gate>());
        gates.back()->open();
    }
    fake::FakeUpstream up({}, [&](const fake::Request&) { return fake::Response::sse(events, gates); });
    Daemon d(daemon_yaml(up.base_url()));
    {
        HttpClient c(d.port());
        CHECK(c.start_and_read_head("POST", "/v1/chat/completions", kStreamBody,
                                    {{"Content-Type", "application/json"}}) == 200);
        c.close();
    }
    gate->open();
    auto s = wait_total(d.port(), 1);
    CHECK(model_entry(s, "gpt-4.1")["status_codes"]["499"] == 1);
    CHECK(wait_idle(d.port())["in_flight"] == 0);
    CHECK(up.wait_connections_open(0, std::chrono::seconds(5))); // dropped, not pooled
    CHECK(HttpClient(d.port()).post_json("/v1/chat/completions", R"({"model":"x"})").status == 200);
}

TEST_CASE("stream: an upstream reset mid-stream ends the client's stream and records 502", "[integration][stream]") {
    std::atomic<int> calls{0};
    fake::FakeUpstream up({}, [&](const fake::Request& rq) {
        if (calls++ > 0) return fake::openai_handler()(rq);
        return fake::Response()
            .write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            .write("f\r\ndata: {\"a\":1}\n\n\r\n")
            .reset();
    });
    Daemon d(daemon_yaml(up.base_url()));
    // The client gets the head and the event, then the connection closes
    // without the last chunk: its HTTP library sees the stream cut off.
    RawConnection raw(d.port());
    raw.send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
             std::to_string(std::string(kStreamBody).size()) + "\r\n\r\n" + kStreamBody);
    const std::string got = raw.read_until_close(std::chrono::seconds(5));
    CHECK(got.rfind("HTTP/1.1 200", 0) == 0);
    CHECK(got.find("data: {\"a\":1}\n\n") != std::string::npos);
    CHECK_FALSE(std::string_view(got).ends_with("\r\n0\r\n\r\n"));
    CHECK(raw.peer_closed(std::chrono::milliseconds(0)));
    auto s = wait_total(d.port(), 1);
    CHECK(model_entry(s, "gpt-4.1")["status_codes"]["502"] == 1);
    CHECK(model_entry(s, "gpt-4.1")["error_count"] == 1);
    CHECK(HttpClient(d.port()).post_json("/v1/chat/completions", kStreamBody).status == 200);
}

TEST_CASE("stream: 200 concurrent streams complete with exact totals", "[integration][stream]") {
    fake::OpenAIOptions o;
    o.prompt_tokens = 17;
    o.completion_tokens = 29;
    o.stream_chunks = 8;
    fake::Options opts;
    opts.threads = 2;
    fake::FakeUpstream up(opts, fake::openai_handler(o));
    Daemon d(daemon_yaml(up.base_url()));
    const std::vector<std::string> models = {"gpt-4.1", "claude-sonnet-4.5", "gemini-2.5-flash", "deepseek-v3.2"};
    std::vector<std::future<int>> results;
    for (int i = 0; i < 200; ++i) {
        results.push_back(std::async(std::launch::async, [&, i] {
            HttpClient c(d.port(), std::chrono::seconds(30));
            auto body = json({{"model", models[i % 4]}, {"stream", true}, {"messages", json::array()}}).dump();
            auto r = c.post_json("/v1/chat/completions", body);
            return r.status == 200 && r.body.find("[DONE]") != std::string::npos && r.body.find("\"choices\":[]") == std::string::npos ? 1 : 0;
        }));
    }
    int ok = 0;
    for (auto& f : results) ok += f.get();
    CHECK(ok == 200);
    auto s = wait_total(d.port(), 200, std::chrono::seconds(30));
    CHECK(s["overall"]["total_requests"] == 200);
    CHECK(s["overall"]["success_count"] == 200);
    CHECK(s["overall"]["input_tokens"] == 200 * 17);
    CHECK(s["overall"]["output_tokens"] == 200 * 29);
    CHECK(s["overall"]["streamed_requests"] == 200);
    for (auto& m : models) CHECK(model_entry(s, m)["total_requests"] == 50);
    CHECK(wait_idle(d.port())["in_flight"] == 0);
}

// Bad input from clients and from the upstream, against the real daemon: each
// case gets a clear status (the OpenAI error shape where a body can be sent),
// /v1/ requests are metered, and after each one the daemon still serves (a
// normal request succeeds, /metrics passes promtool, /summary is strict JSON).
// Timing is waited for on sockets and logs with deadlines, never slept.
#include <catch2/catch.hpp>

#include <zlib.h>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <future>
#include <set>

#include <relaymeter/net.hpp>

#include "fake_upstream.hpp"
#include "integration/common.hpp"

using namespace relaymeter;
using namespace relaymeter::testsupport;
using nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

std::string chat(const std::string& model) {
    return R"({"model":")" + model + R"(","messages":[{"role":"user","content":"hello"}]})";
}

double secs_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A fake upstream handler: a scripted response per path, the OpenAI fake otherwise.
using Script = std::function<fake::Response(const fake::Request&)>;
fake::Handler scripted(std::map<std::string, Script> scripts) {
    auto fallback = fake::openai_handler();
    return [scripts = std::move(scripts), fallback](const fake::Request& rq) {
        const auto path = rq.target.substr(0, rq.target.find('?'));
        if (auto it = scripts.find(path); it != scripts.end()) return it->second(rq);
        return fallback(rq);
    };
}

// `promtool check metrics` on an exposition; returns its output ("" = clean).
std::string promtool_problems(const std::string& exposition) {
    if (std::system("command -v promtool >/dev/null 2>&1") != 0) FAIL("promtool is not installed (apt-get install prometheus)");
    char path[] = "/tmp/relaymeter-badinput-XXXXXX";
    const int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    ::close(fd);
    std::ofstream(path, std::ios::binary) << exposition;
    auto res = run_command("promtool check metrics < " + std::string(path) + " 2>&1");
    std::remove(path);
    if (res.status != 0 && res.output.empty()) res.output = "promtool exited " + std::to_string(res.status);
    return res.output;
}

// Admin endpoints answer, /metrics passes promtool, /summary is JSON. Returns the summary.
json check_admin_alive(std::uint16_t port) {
    HttpClient c(port);
    CHECK(c.get("/healthz").status == 200);
    auto m = c.get("/metrics");
    REQUIRE(m.status == 200);
    CHECK(promtool_problems(m.body).empty());
    auto s = c.get("/summary");
    REQUIRE(s.status == 200);
    return json::parse(s.body); // throws (fails the test) on invalid JSON or UTF-8
}

// The daemon still serves: a normal metered request (model gemini-2.5-flash, marked
// X-Alive-Check for the upstream's request list) succeeds on a fresh
// connection, and the admin endpoints are sound. Counts it in `expected_total`.
void check_alive(std::uint16_t port, std::uint64_t& expected_total) {
    {
        HttpClient c(port);
        auto r = c.post_json("/v1/embeddings", R"({"model":"gemini-2.5-flash","input":"alive?"})", {{"X-Alive-Check", "1"}});
        REQUIRE(r.status == 200);
        CHECK(json::parse(r.body).contains("usage"));
    }
    ++expected_total;
    wait_total(port, expected_total);
    check_admin_alive(port);
}

// What reached the upstream, less the alive checks.
std::vector<fake::Request> forwarded(const fake::FakeUpstream& up) {
    std::vector<fake::Request> out;
    for (auto& r : up.requests())
        if (r.headers.count("x-alive-check") == 0) out.push_back(std::move(r));
    return out;
}

std::uint64_t status_count(const json& summary_row, int code) {
    const auto key = std::to_string(code);
    const auto& codes = summary_row["status_codes"];
    return codes.contains(key) ? codes[key].get<std::uint64_t>() : 0;
}

// Responses read off a raw connection, parsed with Beast.
struct RawResponse {
    int status = 0;
    unsigned version = 0;
    std::map<std::string, std::string> headers; // lower-cased names
    std::string body;
    bool complete = false; // the whole message arrived (framing satisfied)
    std::string header(const std::string& name) const {
        auto it = headers.find(name);
        return it == headers.end() ? std::string() : it->second;
    }
};

// Consecutive responses in `bytes` (what arrived until the peer closed).
std::vector<RawResponse> parse_responses(const std::string& bytes) {
    std::vector<RawResponse> out;
    std::string_view rest = bytes;
    while (!rest.empty()) {
        http::response_parser<http::string_body> p;
        p.body_limit(std::numeric_limits<std::uint64_t>::max());
        p.header_limit(1 << 20);
        p.eager(true);
        error_code ec;
        while (!rest.empty() && !p.is_done()) {
            const auto n = p.put(asio::buffer(rest.data(), rest.size()), ec);
            rest.remove_prefix(n);
            if (ec == http::error::need_more) ec = {};
            if (ec || n == 0) break;
        }
        if (!ec && !p.is_done() && p.is_header_done()) p.put_eof(ec); // close-delimited, or cut short
        RawResponse r;
        if (p.is_header_done()) {
            const auto& msg = p.get();
            r.status = static_cast<int>(msg.result_int());
            r.version = msg.version();
            for (const auto& f : msg) {
                std::string name(f.name_string());
                for (auto& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
                r.headers[name] = std::string(f.value());
            }
            r.body = msg.body();
        }
        r.complete = !ec && p.is_done();
        out.push_back(std::move(r));
        if (!out.back().complete) break;
    }
    return out;
}

// One relaymeter error in the OpenAI shape; returns its code.
std::string error_code_of(const RawResponse& r) {
    INFO(r.body);
    const auto j = json::parse(r.body);
    CHECK(j["error"]["type"] == "relaymeter_error");
    CHECK(!j["error"]["message"].get<std::string>().empty());
    return j["error"]["code"].get<std::string>();
}

std::string error_code_of(const HttpResponse& r) {
    INFO(r.body);
    const auto j = json::parse(r.body);
    CHECK(j["error"]["type"] == "relaymeter_error");
    CHECK(!j["error"]["message"].get<std::string>().empty());
    return j["error"]["code"].get<std::string>();
}

// Sends `bytes` on a fresh connection and reads until the daemon closes it.
struct Exchange {
    std::string received;
    bool closed = false; // the daemon closed the connection (rather than the read timing out)
    double seconds = 0;
};
Exchange send_and_read(std::uint16_t port, const std::string& bytes, std::chrono::milliseconds timeout = 10s) {
    RawConnection raw(port);
    const auto t0 = Clock::now();
    try {
        raw.send(bytes);
    } catch (const std::exception&) {
        // The daemon may answer and close before it has read everything.
    }
    Exchange ex;
    ex.received = raw.read_until_close(timeout);
    ex.seconds = secs_since(t0);
    ex.closed = raw.peer_closed(0ms);
    return ex;
}

// Resident set size of a process, from /proc.
std::uint64_t rss_bytes(int pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
    }
    FAIL("no VmRSS for pid " << pid);
    return 0;
}

// gzip (window_bits 16+15), zlib (15) or raw deflate (-15), in one piece or
// flushed after every part (each part decodable as soon as it arrives).
std::vector<std::string> deflate_parts(const std::vector<std::string>& parts, int window_bits = 16 + MAX_WBITS) {
    z_stream zs{};
    REQUIRE(deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY) == Z_OK);
    std::vector<std::string> out;
    for (std::size_t i = 0; i < parts.size(); ++i) {
        const auto& in = parts[i];
        std::string piece(deflateBound(&zs, in.size()) + 64, '\0');
        zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
        zs.avail_in = static_cast<uInt>(in.size());
        zs.next_out = reinterpret_cast<Bytef*>(piece.data());
        zs.avail_out = static_cast<uInt>(piece.size());
        const int rc = deflate(&zs, i + 1 == parts.size() ? Z_FINISH : Z_SYNC_FLUSH);
        REQUIRE((rc == Z_OK || rc == Z_STREAM_END));
        REQUIRE(zs.avail_in == 0);
        piece.resize(piece.size() - zs.avail_out);
        out.push_back(std::move(piece));
    }
    deflateEnd(&zs);
    return out;
}

std::string deflate_all(const std::string& text, int window_bits = 16 + MAX_WBITS) {
    std::string all;
    for (const auto& p : deflate_parts({text}, window_bits)) all += p;
    return all;
}

std::size_t count_of(const std::string& haystack, const std::string& needle) {
    std::size_t n = 0;
    for (auto at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + 1)) ++n;
    return n;
}

} // namespace

// ---------------------------------------------------------------------------
// From clients

TEST_CASE("badinput: malformed request heads get 400 and a closed connection, the daemon lives on",
          "[integration][badinput]") {
    fake::FakeUpstream up;
    Daemon d(daemon_yaml(up.base_url()));
    struct Case {
        const char* what;
        std::string bytes;
        int status;
        bool v1; // the request line shows /v1/: metered
    };
    using namespace std::string_literals;
    const std::vector<Case> cases = {
        {"garbage bytes (a TLS ClientHello)", "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\x8f\x12\r\n\r\n"s, 400, false},
        {"binary with NULs", "\0\1\2\3\xff\xfe\r\n\r\n"s, 400, false},
        {"bad method token", "G(T /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", 400, true},
        {"missing HTTP version", "GET /v1/models\r\nHost: x\r\n\r\n", 400, true},
        {"header without colon", "POST /v1/chat/completions HTTP/1.1\r\nHost x\r\n\r\n", 400, true},
        {"space in a header name", "GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n", 400, true},
        {"NUL in a header value", "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n"s, 400, true},
        {"control character in a header value", "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: a\x01z\r\n\r\n", 400, true},
        {"bad Content-Length", "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n", 400, true},
        {"two different Content-Lengths",
         "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400, true},
        {"Content-Length with Transfer-Encoding (smuggling)",
         "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
         "2\r\n{}\r\n0\r\n\r\n", 400, true},
        {"a transfer coding other than chunked",
         "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
         501, true},
        {"bad chunk size in the body",
         "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400, true},
        {"HTTP/2 preface on the HTTP/1 port", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, false},
        {"HTTP/3.0 request for /v1/", "GET /v1/models HTTP/3.0\r\nHost: x\r\n\r\n", 400, true},
        {"HTTP/3.0 request for /v1/ in absolute form", "GET http://x/v1/models HTTP/3.0\r\nHost: x\r\n\r\n", 400, true},
        {"admin path with a broken header", "GET /metrics HTTP/1.1\r\nHost x\r\n\r\n", 400, false},
        {"HTTP/1.1 without Host", "GET /v1/models HTTP/1.1\r\nAccept: */*\r\n\r\n", 400, true},
        {"two Host fields",
         "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nHost: y\r\nContent-Length: 2\r\n\r\n{}", 400, true},
        {"admin path without Host", "GET /metrics HTTP/1.1\r\n\r\n", 400, false},
    };
    // A head cut off by the client: nothing to answer, metered as 499.
    {
        RawConnection raw(d.port());
        raw.send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty");
        raw.close();
        auto s = wait_total(d.port(), 1);
        CHECK(status_count(model_entry(s, "none"), 499) == 1);
    }
    std::uint64_t v1_errors = 1;
    std::uint64_t total = 1;
    for (const auto& c : cases) {
        INFO(c.what);
        const auto ex = send_and_read(d.port(), c.bytes);
        CHECK(ex.closed);
        CHECK(ex.seconds < 5.0); // closed by the daemon at once, not by a timeout
        const auto rs = parse_responses(ex.received);
        REQUIRE(rs.size() == 1);
        CHECK(rs[0].complete);
        CHECK(rs[0].status == c.status);
        CHECK(rs[0].version == 11);
        CHECK(rs[0].header("content-type") == "application/json");
        CHECK(!error_code_of(rs[0]).empty());
        // A metered refusal names its record, as every answer to /v1/ does.
        CHECK(rs[0].header("x-relaymeter-request-id").empty() == !c.v1);
        if (c.v1) {
            ++v1_errors;
            ++total;
        }
        check_alive(d.port(), total);
    }
    CHECK(forwarded(up).empty()); // nothing malformed went upstream

    auto s = wait_total(d.port(), total);
    const auto& none = model_entry(s, "none");
    CHECK(none["total_requests"] == v1_errors);
    CHECK(status_count(none, 400) + status_count(none, 501) + status_count(none, 499) == v1_errors);
    CHECK(status_count(none, 501) == 1);
    CHECK(d.log().find("malformed") != std::string::npos);
    // Each has its access line, those the parser refused too.
    const auto v1_400s = std::count_if(cases.begin(), cases.end(), [](const Case& c) { return c.v1 && c.status == 400; });
    CHECK(d.wait_log("model=none status=499 ", 5s));
    CHECK(d.wait_log_count("model=none status=400 ", static_cast<std::size_t>(v1_400s), 5s));
    CHECK(count_of(d.log(), "model=none status=400 ") == static_cast<std::size_t>(v1_400s));
    CHECK(d.wait_log(" error=missing_host", 5s));
    CHECK(d.wait_log(" error=invalid_host", 5s));
}

TEST_CASE("badinput: an oversized request head gets 431 in the OpenAI shape, metered when it was for /v1/",
          "[integration][badinput]") {
    fake::FakeUpstream up;
    Daemon d(daemon_yaml(up.base_url())); // server.max_header_bytes: the 64 KiB default
    const std::string body = chat("gpt-4.1");
    auto post = [&](const std::string& target, const std::string& extra_headers) {
        return "POST " + target + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra_headers +
               "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    };
    struct Case {
        const char* what;
        std::string bytes;
        bool v1;
    };
    std::string many;
    for (int i = 0; i < 2000; ++i) many += "X-Many-" + std::to_string(i) + ": " + std::string(30, 'v') + "\r\n";
    const std::vector<Case> cases = {
        {"one 70 KiB header", post("/v1/chat/completions", "X-Big: " + std::string(70 * 1024, 'b') + "\r\n"), true},
        {"2000 headers, 80 KB in all", post("/v1/chat/completions", many), true},
        {"a 70 KiB request target", post("/v1/chat/completions?q=" + std::string(70 * 1024, 'q'), ""), true},
        {"a 1 MiB head", post("/v1/embeddings", "X-Huge: " + std::string(1 << 20, 'h') + "\r\n"), true},
        {"an admin request with a 70 KiB header",
         "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(70 * 1024, 'b') + "\r\n\r\n", false},
    };
    std::uint64_t metered = 0, total = 0;
    for (const auto& c : cases) {
        INFO(c.what);
        const auto ex = send_and_read(d.port(), c.bytes);
        CHECK(ex.closed);
        CHECK(ex.seconds < 5.0);
        const auto rs = parse_responses(ex.received);
        REQUIRE(rs.size() == 1);
        CHECK(rs[0].status == 431);
        CHECK(error_code_of(rs[0]) == "header_too_large");
        if (c.v1) {
            ++metered;
            ++total;
        }
        check_alive(d.port(), total); // fails if the admin request had been metered
    }
    CHECK(forwarded(up).empty());
    auto s = wait_total(d.port(), total);
    CHECK(model_entry(s, "none")["total_requests"] == metered);
    CHECK(status_count(model_entry(s, "none"), 431) == metered);

    // A head just under the limit is served.
    HttpClient c(d.port());
    auto ok = c.post_json("/v1/chat/completions", body, {{"X-Big", std::string(60 * 1024, 'b')}});
    CHECK(ok.status == 200);
    const auto reqs = forwarded(up);
    REQUIRE(reqs.size() == 1);
    CHECK(reqs[0].headers.at("x-big").size() == 60 * 1024);
    ++total;
    check_alive(d.port(), total);
}

TEST_CASE("badinput: a declared oversized body gets 413 before it is read", "[integration][badinput]") {
    fake::FakeUpstream up;
    Daemon d(daemon_yaml(up.base_url())); // max_request_body_bytes: 1 MiB
    const auto ex = send_and_read(d.port(), "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                            "Content-Length: 5000000\r\n\r\n{\"model\":\"gpt-4.1\"");
    const auto rs = parse_responses(ex.received);
    REQUIRE(rs.size() == 1);
    CHECK(rs[0].status == 413);
    CHECK(error_code_of(rs[0]) == "body_too_large");
    CHECK(ex.closed);
    CHECK(ex.seconds < 5.0);
    CHECK(up.request_count() == 0);
    auto s = wait_total(d.port(), 1);
    CHECK(status_count(model_entry(s, "none"), 413) == 1);
    std::uint64_t total = 1;
    check_alive(d.port(), total);
}

TEST_CASE("badinput: odd spacing, folded and empty fields, and dropped fields between kept ones, both ways",
          "[integration][badinput]") {
    // Heads are forwarded by copying runs of received lines that are exactly
    // "Name: value\r\n"; every other line is rewritten in that form. Each
    // kind sits between kept fields here, in the request and in the response.
    const std::string rbody = R"({"id":"x","usage":{"prompt_tokens":3,"completion_tokens":4}})";
    fake::FakeUpstream up({}, [&](const fake::Request&) {
        return fake::Response().write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nR1: 1\r\nR2:2\r\n"
                                      "Connection: X-Up-Hop\r\nX-Up-Hop: no\r\nR3:   three  \r\nR4: \r\nR5: a\r\n b\r\n"
                                      "R6: six\r\nR7: c\r\n\td\r\nContent-Length: " +
                                      std::to_string(rbody.size()) + "\r\n\r\n" + rbody);
    });
    Daemon d(daemon_yaml(up.base_url()));
    const std::string body = R"({"model":"gpt-4.1","messages":[]})";
    const auto ex = send_and_read(d.port(), "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nA: 1\r\n"
                                            "Connection: close, X-Hop\r\nB:2\r\nX-Hop: drop\r\nC:   3  \r\nD: four\r\n"
                                            "Accept-Encoding: gzip\r\nE: \r\nF: f1\r\n f2\r\nG: 7\r\n"
                                            "Content-Type: application/json\r\nContent-Length: " +
                                                std::to_string(body.size()) + "\r\n\r\n" + body);
    const auto rs = parse_responses(ex.received);
    REQUIRE(rs.size() == 1);
    CHECK(rs[0].status == 200);
    CHECK(rs[0].body == rbody);
    // Two folded values: Beast joins each in one buffer of its own parse
    // step, which is gone by the time the head is complete (both are copied).
    const std::map<std::string, std::string> want_back{{"r1", "1"}, {"r2", "2"},     {"r3", "three"}, {"r4", ""},
                                                       {"r5", "a b"}, {"r6", "six"}, {"r7", "c d"}};
    for (const auto& [name, value] : want_back) {
        INFO(name);
        REQUIRE(rs[0].headers.count(name) == 1);
        CHECK(rs[0].header(name) == value);
    }
    CHECK(rs[0].headers.count("x-up-hop") == 0);
    CHECK(rs[0].header("x-relaymeter-request-id").size() == 32);

    const auto got = forwarded(up);
    REQUIRE(got.size() == 1);
    const std::map<std::string, std::string> want_up{{"a", "1"}, {"b", "2"},     {"c", "3"}, {"d", "four"},
                                                     {"e", ""},  {"f", "f1 f2"}, {"g", "7"}};
    for (const auto& [name, value] : want_up) {
        INFO(name);
        REQUIRE(got[0].headers.count(name) == 1);
        CHECK(got[0].headers.at(name) == value);
    }
    for (const auto* name : {"x-hop", "connection"}) CHECK(got[0].headers.count(name) == 0);
    CHECK(got[0].headers.at("accept-encoding") == "identity");
    CHECK(got[0].body == body);
    auto s = wait_total(d.port(), 1);
    CHECK(model_entry(s, "gpt-4.1")["input_tokens"] == 3);
}

TEST_CASE("badinput: an admin request declaring a huge body gets 413, not a dropped connection",
          "[integration][badinput]") {
    // The declared length was once reserved whole before the body limit was
    // checked: 100 GB ended in std::bad_alloc and a closed connection.
    fake::FakeUpstream up;
    Daemon d(daemon_yaml(up.base_url())); // max_request_body_bytes: 1 MiB
    for (const char* length : {"100000000000", "18446744073709551615", "5000000"}) {
        INFO("Content-Length: " << length);
        const auto ex = send_and_read(d.port(), std::string("GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: ") +
                                                    length + "\r\n\r\nabc");
        const auto rs = parse_responses(ex.received);
        REQUIRE(rs.size() == 1);
        CHECK(rs[0].status == 413);
        CHECK(error_code_of(rs[0]) == "body_too_large");
        CHECK(ex.closed);
    }
    CHECK(d.log().find("bad_alloc") == std::string::npos);
    std::uint64_t total = 0;
    check_alive(d.port(), total);
}

TEST_CASE("badinput: a refused body is read and discarded before the close, not answered with a reset",
          "[integration][badinput]") {
    fake::FakeUpstream up;
    Daemon d(daemon_yaml(up.base_url())); // max_request_body_bytes: 1 MiB
    RawConnection c(d.port());
    c.send("POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           "Content-Length: 16777216\r\n\r\n");
    // The client goes on sending the body it declared, as clients that do not
    // wait for the answer do: 16 MiB, more than the two sockets' buffers hold,
    // so it gets through only if the daemon keeps reading after its 413.
    // Closing with those bytes unread would send a reset (this send throws).
    const std::string chunk(64 * 1024, 'a');
    for (int i = 0; i < 256; ++i) c.send(chunk);
    c.shutdown_send();
    const auto got = c.read_until_close(10s);
    CHECK(got.rfind("HTTP/1.1 413", 0) == 0);
    CHECK(got.find("body_too_large") != std::string::npos);
    CHECK(up.request_count() == 0);
    auto s = wait_total(d.port(), 1);
    CHECK(status_count(model_entry(s, "none"), 413) == 1);
    std::uint64_t total = 1;
    check_alive(d.port(), total);
}

TEST_CASE("badinput: invalid or truncated JSON bodies are forwarded byte for byte, metered as model none",
          "[integration][badinput]") {
    fake::FakeUpstream up({}, [](const fake::Request&) {
        return fake::Response::json(200, R"({"object":"x","usage":{"prompt_tokens":3,"completion_tokens":4}})");
    });
    Daemon d(daemon_yaml(up.base_url()));
    using namespace std::string_literals;
    struct Case {
        const char* what;
        std::string target;
        std::string body;
        std::string model; // how it is metered
    };
    const std::vector<Case> cases = {
        {"not JSON", "/v1/chat/completions", "this is not json", "none"},
        {"truncated before the model value", "/v1/chat/completions", R"({"model": )", "none"},
        {"truncated in the model string", "/v1/chat/completions", R"({"model":"gpt-4)", "none"},
        {"truncated after a readable model", "/v1/chat/completions", R"({"model":"gpt-4.1","messages":[{"role")",
         "gpt-4.1"},
        {"a stream request cut short (no include_usage injection)", "/v1/chat/completions",
         R"({"model":"gpt-4.1","stream":true,"messages":[)", "gpt-4.1"},
        {"model is a number", "/v1/chat/completions", R"({"model":42,"messages":[]})", "none"},
        {"model only in a nested object", "/v1/chat/completions", R"({"x":{"model":"gpt-4.1"}})", "none"},
        {"a JSON array", "/v1/embeddings", R"([{"model":"gpt-4.1"}])", "none"},
        {"binary bytes", "/v1/embeddings", "\x1f\x8b\x08\0\xff\xfe\0\x01{\"model\""s, "none"},
        {"an empty body", "/v1/chat/completions", "", "none"},
        // Invalid JSON, but the name up to its closing quote is read, label-safe.
        {"NUL bytes inside JSON", "/v1/chat/completions", "{\"model\":\"gpt-4.1\0\",\"a\":\0}"s, "gpt-4.1_"},
    };
    std::map<std::string, std::uint64_t> want;
    std::uint64_t total = 0;
    for (std::size_t i = 0; i < cases.size(); ++i) {
        const auto& c = cases[i];
        INFO(c.what);
        HttpClient client(d.port());
        auto r = client.post_json(c.target, c.body);
        CHECK(r.status == 200);
        const auto reqs = forwarded(up);
        REQUIRE(reqs.size() == i + 1);
        auto got = reqs.back();
        CHECK(got.target == c.target);
        CHECK(got.body == c.body); // byte for byte
        CHECK(got.headers["content-length"] == std::to_string(c.body.size()));
        ++want[c.model];
        ++total;
        check_alive(d.port(), total);
    }
    // A body cut off by the client (fewer bytes than its Content-Length, then
    // close): nothing is forwarded, the request is metered as 499.
    {
        RawConnection raw(d.port());
        raw.send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\":\"gpt-4.1\"");
        raw.close();
    }
    ++total;
    auto s = wait_total(d.port(), total);
    INFO(s.dump());
    CHECK(forwarded(up).size() == cases.size());
    CHECK(model_entry(s, "none")["total_requests"] == want["none"] + 1);
    CHECK(status_count(model_entry(s, "none"), 499) == 1);
    CHECK(model_entry(s, "none")["input_tokens"] == 3 * want["none"]);
    CHECK(model_entry(s, "gpt-4.1")["total_requests"] == want["gpt-4.1"]);
    CHECK(model_entry(s, "gpt-4.1_")["total_requests"] == 1);
    CHECK(s["models"].size() == 4); // and the alive checks' model
    check_alive(d.port(), total);
}

TEST_CASE("badinput: hostile model names stay label-safe in /metrics, /summary and the log", "[integration][badinput]") {
    fake::FakeUpstream up({}, [](const fake::Request&) {
        return fake::Response::json(200, R"({"usage":{"prompt_tokens":1,"completion_tokens":1}})");
    });
    Daemon d(daemon_yaml(up.base_url(), {}, "metrics:\n  labels: { monitor: badinput }\n"));
    using namespace std::string_literals;
    auto body = [](const std::string& raw_model_json) { return R"({"model":)" + raw_model_json + R"(,"messages":[]})"; };
    const std::vector<std::pair<const char*, std::string>> cases = {
        {"a 1 MB model name", body("\"" + std::string(1000000, 'm') + "\"")},
        {"invalid UTF-8", body("\"bad\xff\xfe\xc3\x28utf8\"")},
        {"raw control characters", body("\"ctl\x01\x7f\x1b[31mred\"")},
        {"escaped control characters", body(R"("nul\u0000tab\tnl\ncr\rend")")},
        {"quotes and backslashes", body(R"("we\"ird\\name\\")")},
        {"a label injection attempt", body(R"("x\"} 1\nfake_metric{a=\"b")")},
        {"a trailing backslash", body(R"("ends with\\")")},
        {"non-ASCII escapes and a lone surrogate", body(R"("caf\u00e9\u2028\ud83d\ude00\ud800")")},
        {"a HELP line", body(R"("# HELP ai_requests_total x")")},
        {"curly braces and a comma", body(R"("{a=\"1\"},b")")},
        {"an empty name", body(R"("")")},
    };
    HttpClient c(d.port());
    std::uint64_t total = 0;
    for (const auto& [what, b] : cases) {
        INFO(what);
        CHECK(c.post_json("/v1/chat/completions", b).status == 200);
        ++total;
        check_alive(d.port(), total); // promtool and a strict JSON parse after every name
    }
    auto s = wait_total(d.port(), total);
    auto m = c.get("/metrics");
    REQUIRE(m.status == 200);
    const auto problems = promtool_problems(m.body);
    INFO(problems);
    CHECK(problems.empty());
    for (const auto& row : s["models"]) {
        const auto name = row["model"].get<std::string>();
        INFO(name);
        CHECK(!name.empty());
        CHECK(name.size() <= 128);
        for (unsigned char ch : name) CHECK((ch >= 0x20 && ch < 0x7f));
    }
    CHECK(model_entry(s, std::string(128, 'm'))["total_requests"] == 1);
    CHECK(model_entry(s, "none")["total_requests"] == 1); // the empty name
    CHECK(model_entry(s, R"(we"ird\name\)")["total_requests"] == 1);
    CHECK(m.body.find("\nfake_metric") == std::string::npos);
    CHECK(c.get("/summary?format=table").status == 200);
    // The access log never carries raw control bytes or a megabyte-long name.
    const auto log = d.log();
    for (unsigned char ch : log) {
        if (ch < 0x20 && ch != '\n') FAIL("control byte " << int(ch) << " in the log");
    }
    CHECK(log.find(std::string(129, 'm')) == std::string::npos);
}

TEST_CASE("badinput: thousands of distinct model names are capped at metrics.max_models", "[integration][badinput]") {
    fake::Options two_threads;
    two_threads.threads = 2;
    fake::FakeUpstream up(two_threads);
    Daemon d(daemon_yaml(up.base_url(), {}, "metrics:\n  max_models: 16\n"));
    const int kNames = 2000;
    auto run = [&](int from, int to) {
        HttpClient c(d.port());
        int ok = 0;
        for (int i = from; i < to; ++i) ok += c.post_json("/v1/embeddings", chat("m-" + std::to_string(i))).status == 200;
        return ok;
    };
    CHECK(run(0, 16) == 16); // fills the cap
    CHECK(run(16, 20) == 4); // "other" appears
    wait_total(d.port(), 20);
    const auto early = HttpClient(d.port()).get("/metrics").body;

    auto a = std::async(std::launch::async, run, 20, 1010);
    auto b = std::async(std::launch::async, run, 1010, kNames);
    CHECK(a.get() + b.get() == kNames - 20);
    auto s = wait_total(d.port(), kNames, 30s);
    CHECK(s["models"].size() == 17); // 16 names + other
    CHECK(model_entry(s, "other")["total_requests"] == kNames - 16);
    CHECK(model_entry(s, "m-0")["total_requests"] == 1);

    const auto late = HttpClient(d.port()).get("/metrics").body;
    std::set<std::string> labels;
    for (auto at = late.find("model=\""); at != std::string::npos; at = late.find("model=\"", at + 1))
        labels.insert(late.substr(at + 7, late.find('"', at + 7) - at - 7));
    CHECK(labels.size() == 17);
    // /metrics does not grow with the number of names.
    INFO("metrics bytes after 20 names: " << early.size() << ", after " << kNames << ": " << late.size());
    CHECK(late.size() <= early.size() + 2048);
    CHECK(late.size() < 256 * 1024);
    CHECK(promtool_problems(late).empty());
    std::uint64_t total = kNames;
    check_alive(d.port(), total);
}

TEST_CASE("badinput: a keep-alive client is closed after server.idle_timeout_s idle, not while busy",
          "[integration][badinput]") {
    fake::FakeUpstream up;
    Daemon d(replace(daemon_yaml(up.base_url()), "idle_timeout_s: 30", "idle_timeout_s: 0.6"));
    RawConnection c(d.port());
    // Six requests 0.25 s apart, 1.5 s in all: longer than the idle timeout,
    // but the connection is never idle for 0.6 s, so it serves them all (the
    // deadline moves with every wait for a request).
    for (int i = 0; i < 6; ++i) {
        INFO("request " << i);
        c.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        CHECK(c.read_until("\r\n\r\nok\n", 2s).rfind("HTTP/1.1 200", 0) == 0);
        CHECK_FALSE(c.peer_closed(250ms)); // the client's pause, during which the daemon must not close
    }
    // Then idle: closed once 0.6 s have passed since the last answer.
    const auto t0 = Clock::now();
    CHECK(c.peer_closed(5s));
    const double idle_s = secs_since(t0);
    CHECK(idle_s >= 0.2); // 0.6 s less the 0.25 s already waited, with slack
    CHECK(idle_s < 3.0);
}

TEST_CASE("badinput: a client that half-closes with its request is answered and closed, not left to the idle timeout",
          "[integration][badinput]") {
    // As `printf 'GET /healthz ...' | nc -N` does: the request and the FIN in
    // one segment, so the daemon's first read takes both and no later event
    // tells of the FIN. The client reads until the close; with
    // server.idle_timeout_s at 30 s, the close must come long before that.
    fake::FakeUpstream up;
    Daemon d(daemon_yaml(up.base_url()));
    const std::string chat_body = chat("gpt-4.1");
    const std::string post = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             "Content-Length: " + std::to_string(chat_body.size()) + "\r\n\r\n" + chat_body;
    std::uint64_t total = 0;
    SECTION("an admin request") {
        RawConnection c(d.port());
        const auto t0 = Clock::now();
        c.send_with_fin("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        const auto got = c.read_until_close(10s);
        CHECK(c.peer_closed(0ms));
        CHECK(secs_since(t0) < 8.0);
        const auto rs = parse_responses(got);
        REQUIRE(rs.size() == 1);
        CHECK(rs[0].status == 200);
        CHECK(rs[0].body == "ok\n");
    }
    SECTION("the second request of keep-alive connections") {
        // Eight at once: whether the daemon's read takes the FIN with the
        // bytes or sees it later depends on timing, and with eight it takes it
        // with the bytes on some of them (nearly always on most).
        std::vector<std::unique_ptr<RawConnection>> cs;
        for (int i = 0; i < 8; ++i) {
            cs.push_back(std::make_unique<RawConnection>(d.port()));
            cs.back()->send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        }
        for (auto& c : cs) c->read_until("\r\n\r\nok\n", 5s);
        const auto t0 = Clock::now();
        for (auto& c : cs) c->send_with_fin("GET /summary HTTP/1.1\r\nHost: x\r\n\r\n");
        for (auto& c : cs) {
            const auto got = c->read_until_close(10s);
            CHECK(c->peer_closed(0ms));
            CHECK(count_of(got, "HTTP/1.1 200") == 1);
        }
        CHECK(secs_since(t0) < 8.0);
    }
    // A proxied request whose client half-closed is answered and metered as
    // answered (200), not as a client that went away (499).
    SECTION("the second request of a keep-alive connection, proxied and metered") {
        RawConnection c(d.port());
        c.send(post);
        c.read_until("\"total_tokens\"", 5s);
        const auto t0 = Clock::now();
        c.send_with_fin(post);
        const auto got = c.read_until_close(10s);
        CHECK(c.peer_closed(0ms));
        CHECK(secs_since(t0) < 8.0);
        CHECK(count_of(got, "HTTP/1.1 200") == 1);
        CHECK(up.request_count() == 2);
        const auto s = wait_total(d.port(), 2);
        CHECK(status_count(model_entry(s, "gpt-4.1"), 200) == 2);
        total = 2;
    }
    check_alive(d.port(), total);
}

TEST_CASE("badinput: slow-loris clients are cut off after server.header_timeout_s", "[integration][badinput]") {
    fake::FakeUpstream up;
    Daemon d(replace(replace(daemon_yaml(up.base_url()), "header_timeout_s: 5", "header_timeout_s: 1"),
                     "request_timeout_s: 5", "request_timeout_s: 1.5"));

    // 20 connections each holding an unfinished head, and one that sends a byte
    // every 100 ms and never finishes.
    std::vector<std::unique_ptr<RawConnection>> held;
    for (int i = 0; i < 20; ++i) {
        held.push_back(std::make_unique<RawConnection>(d.port()));
        held.back()->send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appl");
    }
    const auto held_since = Clock::now();
    std::uint64_t total = 0;
    check_alive(d.port(), total); // served while they wait
    const std::string head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + std::string(200, 's');
    RawConnection loris(d.port());
    const auto t0 = Clock::now();
    std::size_t sent = 0;
    bool closed = false;
    while (!closed && sent < head.size()) {
        try {
            loris.send(head.substr(sent++, 1));
        } catch (const std::exception&) {
            closed = true; // reset by the daemon
            break;
        }
        closed = loris.peer_closed(100ms); // paces the bytes; returns early when the daemon closes
    }
    const double loris_s = secs_since(t0);
    CHECK(closed);
    CHECK(sent < head.size());
    CHECK(loris_s >= 0.9);
    CHECK(loris_s < 3.0);
    // Closed without an answer, as nginx does (the head never completed).
    CHECK(loris.read_until_close(1s).empty());

    // Every held connection got the same treatment.
    for (auto& h : held) CHECK(h->peer_closed(3s));
    CHECK(secs_since(held_since) < 4.0);
    // Metered as 408 (model none): their request lines were for /v1/.
    total += 21;
    auto s = wait_total(d.port(), total);
    CHECK(status_count(model_entry(s, "none"), 408) == 21);
    CHECK(d.log().find("server.header_timeout_s") != std::string::npos);
    check_alive(d.port(), total);

    // A complete head and a body that never finishes: bounded by
    // upstream.request_timeout_s, nothing forwarded, recorded as 408.
    {
        RawConnection body_loris(d.port());
        const auto t1 = Clock::now();
        body_loris.send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\":");
        CHECK(body_loris.peer_closed(5s));
        const double took = secs_since(t1);
        CHECK(took >= 1.4);
        CHECK(took < 3.0);
    }
    ++total;
    s = wait_total(d.port(), total);
    CHECK(status_count(model_entry(s, "none"), 408) == 22);
    CHECK(forwarded(up).empty());
    check_alive(d.port(), total);
}

TEST_CASE("badinput: a client that never reads a large response is timed out and recorded, others are served",
          "[integration][badinput]") {
    const std::string big_json = R"({"object":"list","data":")" + std::string(32 << 20, 'd') +
                                 R"(","usage":{"prompt_tokens":5,"completion_tokens":6}})";
    std::string big_sse;
    while (big_sse.size() < (32u << 20)) big_sse += chunk("data: {\"choices\":[{\"delta\":{\"content\":\"" + std::string(4000, 'x') + "\"}}]}\n\n");
    fake::FakeUpstream up({}, scripted({
                                  {"/v1/big", [&](const fake::Request&) { return fake::Response::json(200, big_json); }},
                                  {"/v1/bigstream",
                                   [&](const fake::Request&) {
                                       return fake::Response()
                                           .write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                                  "Transfer-Encoding: chunked\r\n\r\n")
                                           .write(big_sse)
                                           .hang();
                                   }},
                              }));
    auto yaml = replace(daemon_yaml(up.base_url()), "request_timeout_s: 5", "request_timeout_s: 2");
    yaml += "streaming:\n  idle_timeout_s: 1\n";
    Daemon d(yaml);
    const auto rss0 = rss_bytes(d.pid());
    std::uint64_t rss_max = rss0;
    std::uint64_t total = 0;

    struct Case {
        const char* what;
        std::string target;
        std::string model;
        double timeout_s;
    };
    for (const Case& c : {Case{"JSON body", "/v1/big", "stall-json", 2.0}, Case{"SSE stream", "/v1/bigstream", "stall-sse", 1.0}}) {
        INFO(c.what);
        const auto before = up.request_count();
        RawConnection stalled(d.port());
        const auto body = chat(c.model);
        const auto t0 = Clock::now();
        stalled.send("POST " + c.target + " HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body.size()) +
                     "\r\n\r\n" + body);
        REQUIRE(up.wait_requests(before + 1, 5s));
        // Others are served while the stalled response is pending.
        {
            HttpClient other(d.port());
            CHECK(other.post_json("/v1/chat/completions", chat("gpt-4.1")).status == 200);
            CHECK(other.get("/healthz").status == 200);
            ++total;
            const auto m = other.get("/metrics").body;
            CHECK(metric_value(m, "ai_requests_in_flight") == 1);
        }
        // Recorded once the write deadline passes; memory stays flat meanwhile.
        HttpClient poll(d.port());
        json s;
        for (;;) {
            rss_max = std::max(rss_max, rss_bytes(d.pid()));
            s = json::parse(poll.get("/summary").body);
            if (s["overall"]["total_requests"].get<std::uint64_t>() > total) break;
            REQUIRE(secs_since(t0) < c.timeout_s + 8);
        }
        const double recorded_after = secs_since(t0);
        ++total;
        CHECK(recorded_after >= c.timeout_s * 0.9);
        CHECK(recorded_after < c.timeout_s + 3);
        const auto& row = model_entry(s, c.model);
        CHECK(status_count(row, 499) == 1);
        CHECK(stalled.peer_closed(5s)); // the daemon dropped the connection
        CHECK(d.wait_log("error=client_timeout", 5s));
        check_alive(d.port(), total);
    }
    INFO("RSS before: " << rss0 << " max while stalled: " << rss_max);
    CHECK(rss_max < rss0 + 8 * 1024 * 1024); // 32 MiB responses, nothing buffered
}

TEST_CASE("badinput: pipelined requests are answered in order", "[integration][badinput]") {
    fake::FakeUpstream up;
    Daemon d(daemon_yaml(up.base_url()));
    const std::string chat_body = chat("gpt-4.1");
    const std::string emb_body = R"({"model":"deepseek-v3.2","input":"abc"})";
    auto post = [](const std::string& target, const std::string& body) {
        return "POST " + target + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
               std::to_string(body.size()) + "\r\n\r\n" + body;
    };
    SECTION("four requests in one write") {
        const auto ex = send_and_read(d.port(), "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" +
                                                    post("/v1/chat/completions", chat_body) +
                                                    post("/v1/embeddings", emb_body) +
                                                    "GET /summary HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        CHECK(ex.closed);
        const auto rs = parse_responses(ex.received);
        REQUIRE(rs.size() == 4);
        for (const auto& r : rs) CHECK((r.complete && r.status == 200));
        CHECK(rs[0].body == "ok\n");
        CHECK(json::parse(rs[1].body)["object"] == "chat.completion");
        CHECK(json::parse(rs[2].body)["object"] == "list");
        CHECK(json::parse(rs[3].body)["overall"]["total_requests"] == 2); // both were recorded before it
        const auto reqs = up.requests();
        REQUIRE(reqs.size() == 2);
        CHECK(reqs[0].body == chat_body);
        CHECK(reqs[1].body == emb_body);
    }
    SECTION("a malformed request after a good one: the good one is answered, then 400 and close") {
        const auto ex = send_and_read(d.port(), post("/v1/chat/completions", chat_body) +
                                                    "GET /v1/models HTTP/1.1\r\nHost x\r\n\r\n" +
                                                    "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        CHECK(ex.closed);
        const auto rs = parse_responses(ex.received);
        REQUIRE(rs.size() == 2);
        CHECK(rs[0].status == 200);
        CHECK(rs[1].status == 400);
        CHECK(up.request_count() == 1);
        const auto s = wait_total(d.port(), 2);
        CHECK(status_count(model_entry(s, "none"), 400) == 1);
    }
    std::uint64_t total = json::parse(HttpClient(d.port()).get("/summary").body)["overall"]["total_requests"];
    check_alive(d.port(), total);
}

TEST_CASE("badinput: a target in absolute form is served as its path", "[integration][badinput]") {
    // RFC 9112 3.2.2: a server accepts the absolute form (a client that takes
    // relaymeter for a forward proxy sends it); it was a 404.
    fake::FakeUpstream up;
    Daemon d(daemon_yaml(up.base_url()));
    const std::string body = chat("gpt-4.1");
    const std::string authority = "127.0.0.1:" + std::to_string(d.port());
    {
        const auto ex = send_and_read(d.port(), "POST http://" + authority + "/v1/chat/completions?x=1 HTTP/1.1\r\n"
                                                "Host: " + authority + "\r\nContent-Type: application/json\r\n"
                                                "Connection: close\r\nContent-Length: " + std::to_string(body.size()) +
                                                "\r\n\r\n" + body);
        const auto rs = parse_responses(ex.received);
        REQUIRE(rs.size() == 1);
        CHECK(rs[0].status == 200);
        const auto seen = forwarded(up);
        REQUIRE(seen.size() == 1);
        CHECK(seen[0].target == "/v1/chat/completions?x=1");
        const auto s = wait_total(d.port(), 1);
        CHECK(model_entry(s, "gpt-4.1")["total_requests"] == 1);
    }
    {
        const auto ex = send_and_read(d.port(), "GET HTTPS://" + authority + "/healthz HTTP/1.1\r\nHost: " + authority +
                                                "\r\nConnection: close\r\n\r\n");
        const auto rs = parse_responses(ex.received);
        REQUIRE(rs.size() == 1);
        CHECK(rs[0].status == 200);
        CHECK(rs[0].body == "ok\n");
    }
    {
        // The authority does not escape: a path with dot segments is still refused.
        const auto ex = send_and_read(d.port(), "GET http://x/v1/../admin HTTP/1.1\r\nHost: x\r\n\r\n");
        const auto rs = parse_responses(ex.received);
        REQUIRE(rs.size() == 1);
        CHECK(rs[0].status == 400);
        CHECK(error_code_of(rs[0]) == "invalid_path");
    }
    CHECK(forwarded(up).size() == 1);
}

TEST_CASE("badinput: HTTP/1.0 without keep-alive is answered and closed", "[integration][badinput]") {
    fake::FakeUpstream up;
    Daemon d(daemon_yaml(up.base_url()));
    std::uint64_t total = 0;
    {
        const auto ex = send_and_read(d.port(), "GET /healthz HTTP/1.0\r\n\r\n");
        CHECK(ex.closed);
        CHECK(ex.seconds < 5.0);
        const auto rs = parse_responses(ex.received);
        REQUIRE(rs.size() == 1);
        CHECK(rs[0].version == 10);
        CHECK(rs[0].body == "ok\n");
    }
    check_alive(d.port(), total);
    {
        // A stream to an HTTP/1.0 client: close-delimited, no chunk framing, usage chunk still stripped.
        const std::string body = R"({"model":"gpt-4.1","stream":true,"messages":[]})";
        const auto ex = send_and_read(d.port(), "POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
                                                "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
        CHECK(ex.closed);
        const auto rs = parse_responses(ex.received);
        REQUIRE(rs.size() == 1);
        CHECK(rs[0].version == 10);
        CHECK(rs[0].status == 200);
        CHECK(rs[0].header("transfer-encoding").empty());
        CHECK(rs[0].body.rfind("data: ", 0) == 0);
        CHECK(rs[0].body.find("data: [DONE]") != std::string::npos);
        CHECK(rs[0].body.find("\"choices\":[]") == std::string::npos);
        ++total;
        const auto s = wait_total(d.port(), total);
        CHECK(model_entry(s, "gpt-4.1")["input_tokens"] == 12);
    }
    check_alive(d.port(), total);
    {
        // HTTP/1.0 asking for keep-alive keeps the connection.
        RawConnection raw(d.port());
        raw.send("GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        auto first = raw.read_until("ok\n", 5s);
        CHECK(first.rfind("HTTP/1.0 200", 0) == 0);
        raw.send("GET /healthz HTTP/1.0\r\n\r\n");
        auto rest = raw.read_until_close(5s);
        CHECK(rest.rfind("HTTP/1.0 200", 0) == 0);
    }
    check_alive(d.port(), total);
}

// ---------------------------------------------------------------------------
// From the upstream

TEST_CASE("badinput: upstream resets, garbage and short bodies give 502, recorded, the client not left hanging",
          "[integration][badinput]") {
    const std::string ok_head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n";
    fake::FakeUpstream up({}, scripted({
        {"/v1/reset-before-head", [](const fake::Request&) { return fake::Response().reset(); }},
        {"/v1/close-before-head", [](const fake::Request&) { return fake::Response().close(); }},
        {"/v1/reset-mid-head", [&](const fake::Request&) { return fake::Response().write(ok_head).reset(); }},
        {"/v1/garbage",
         [](const fake::Request&) {
             return fake::Response().write(std::string("SSH-2.0-OpenSSH_9.2\r\n\0\1\2garbage\r\n\r\n", 35)).close();
         }},
        {"/v1/garbage-then-hang", [](const fake::Request&) { return fake::Response().write("hello there\r\n\r\n").hang(); }},
        {"/v1/bad-status", [](const fake::Request&) { return fake::Response().write("HTTP/1.1 2000 OK\r\n\r\n").close(); }},
        {"/v1/switching", // never asked for: relaymeter drops Upgrade
         [](const fake::Request&) {
             return fake::Response()
                 .write("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello")
                 .hang();
         }},
        {"/v1/gzip-transfer-coding", // coded bytes the client could not know of
         [&](const fake::Request&) {
             return fake::Response().write(ok_head + "Transfer-Encoding: gzip, chunked\r\n\r\n" + chunk("\x1f\x8b\x08"))
                 .hang();
         }},
        {"/v1/huge-head",
         [](const fake::Request&) {
             return fake::Response().write("HTTP/1.1 200 OK\r\nX-Big: " + std::string(100 * 1024, 'b') + "\r\n\r\n");
         }},
        {"/v1/reset-mid-body",
         [&](const fake::Request&) {
             return fake::Response().write(ok_head + "Content-Length: 1000\r\n\r\n" + std::string(100, 'a')).reset();
         }},
        {"/v1/short-then-close",
         [&](const fake::Request&) {
             return fake::Response().write(ok_head + "Content-Length: 1000\r\n\r\n" + std::string(100, 'a')).close();
         }},
        {"/v1/reset-mid-chunked",
         [&](const fake::Request&) {
             return fake::Response().write(ok_head + "Transfer-Encoding: chunked\r\n\r\n" + chunk("{\"id\":")).reset();
         }},
        {"/v1/bad-chunk",
         [&](const fake::Request&) {
             return fake::Response()
                 .write(ok_head + "Transfer-Encoding: chunked\r\n\r\n" + chunk("{\"id\":") + "zz\r\nxx\r\n")
                 .hang();
         }},
    }));
    Daemon d(daemon_yaml(up.base_url()));
    struct Case {
        std::string path;
        bool before_head; // relaymeter can still answer with its own error
    };
    const std::vector<Case> cases = {
        {"/v1/reset-before-head", true}, {"/v1/close-before-head", true}, {"/v1/reset-mid-head", true},
        {"/v1/garbage", true},           {"/v1/garbage-then-hang", true}, {"/v1/bad-status", true},
        {"/v1/switching", true},         {"/v1/gzip-transfer-coding", true}, {"/v1/huge-head", true},         {"/v1/reset-mid-body", false},   {"/v1/short-then-close", false},
        {"/v1/reset-mid-chunked", false}, {"/v1/bad-chunk", false},
    };
    std::uint64_t total = 0;
    for (const auto& c : cases) {
        INFO(c.path);
        const std::string model = "case" + c.path.substr(3);
        const std::string body = chat(model);
        const auto ex = send_and_read(d.port(), "POST " + c.path + " HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                                                    std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body);
        CHECK(ex.closed);
        CHECK(ex.seconds < 4.0); // well before upstream.request_timeout_s (5 s): not a hang
        const auto rs = parse_responses(ex.received);
        REQUIRE(rs.size() == 1);
        if (c.before_head) {
            CHECK(rs[0].status == 502);
            CHECK(error_code_of(rs[0]) == "upstream_bad_response");
        } else {
            CHECK(rs[0].status == 200); // the head was relayed before the upstream failed
            // Visibly cut short: fewer bytes than Content-Length, or no last chunk.
            CHECK(!rs[0].complete);
            if (c.path.find("chunked") == std::string::npos && c.path != "/v1/bad-chunk") {
                CHECK(rs[0].body == std::string(100, 'a'));
            } else {
                CHECK(ex.received.find("\r\n0\r\n\r\n") == std::string::npos);
                CHECK(ex.received.find("{\"id\":") != std::string::npos); // the bytes before the fault
            }
        }
        ++total;
        auto s = wait_total(d.port(), total);
        CHECK(status_count(model_entry(s, model), 502) == 1);
        // Served next, on a fresh upstream connection: the broken one was not pooled.
        check_alive(d.port(), total);
    }
    CHECK(d.log().find("upstream") != std::string::npos);
}

TEST_CASE("badinput: interim 1xx upstream responses are dropped, the final one relayed and metered",
          "[integration][badinput]") {
    const std::string body =
        R"({"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}})";
    const std::string final_response = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                                       std::to_string(body.size()) + "\r\n\r\n" + body;
    const std::string hints = "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n";
    fake::FakeUpstream up({}, scripted({
        // the interim response alone, then the final one a moment later
        {"/v1/hints-apart",
         [&](const fake::Request&) {
             return fake::Response().write(hints).delay(std::chrono::milliseconds(20)).write(final_response);
         }},
        // two interim responses and the final one in one write
        {"/v1/hints-together",
         [&](const fake::Request&) {
             return fake::Response().write("HTTP/1.1 100 Continue\r\n\r\n" + hints + final_response);
         }},
    }));
    Daemon d(daemon_yaml(up.base_url()));
    HttpClient c(d.port());
    for (const std::string path : {"/v1/hints-apart", "/v1/hints-together"}) {
        INFO(path);
        const auto r = c.post_json(path, chat("hinted"));
        CHECK(r.status == 200);
        CHECK(r.body == body);
        // The next request on the same pooled upstream connection gets its
        // own answer, not a leftover of this one.
        const auto next = c.post_json("/v1/chat/completions", chat("plain"));
        CHECK(next.status == 200);
        CHECK(next.body.find("\"chat.completion\"") != std::string::npos);
    }
    auto s = wait_total(d.port(), 4);
    const auto& hinted = model_entry(s, "hinted");
    CHECK(status_count(hinted, 200) == 2);
    CHECK(hinted["input_tokens"] == 14);
    CHECK(hinted["output_tokens"] == 6);
    CHECK(status_count(model_entry(s, "plain"), 200) == 2);
}

TEST_CASE("badinput: endless upstream bodies are bounded by the timeouts, in bounded memory", "[integration][badinput]") {
    const std::string json_head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n";
    const std::string sse_head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
    const std::string event = chunk("data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n");
    const std::string flood(16 << 20, 'f');
    fake::FakeUpstream up({}, scripted({
        {"/v1/endless-chunked",
         [&](const fake::Request&) {
             return fake::Response().write(json_head + "Transfer-Encoding: chunked\r\n\r\n" + chunk("{\"id\":")).hang();
         }},
        {"/v1/trickle",
         [&](const fake::Request&) {
             fake::Response r;
             r.write(json_head + "Content-Length: 1000000000000\r\n\r\n");
             for (int i = 0; i < 1000; ++i) r.write(std::string(1024, 't')).delay(10ms);
             return r;
         }},
        {"/v1/flood",
         [&](const fake::Request&) {
             return fake::Response().write(json_head + "Content-Length: 1000000000000\r\n\r\n").write(flood).hang();
         }},
        {"/v1/silent-stream", [&](const fake::Request&) { return fake::Response().write(sse_head + event).hang(); }},
        {"/v1/busy-stream",
         [&](const fake::Request&) {
             fake::Response r;
             r.write(sse_head);
             for (int i = 0; i < 1000; ++i) r.write(event).delay(10ms);
             return r;
         }},
    }));
    auto yaml = replace(daemon_yaml(up.base_url()), "request_timeout_s: 5", "request_timeout_s: 2.5");
    yaml += "streaming:\n  idle_timeout_s: 1\n  total_timeout_s: 3\n";
    Daemon d(yaml);
    const auto rss0 = rss_bytes(d.pid());
    struct Case {
        std::string path;
        double bound_s; // the timeout that must end it
    };
    std::uint64_t total = 0;
    for (const auto& c : {Case{"/v1/endless-chunked", 2.5}, Case{"/v1/trickle", 2.5}, Case{"/v1/flood", 2.5},
                          Case{"/v1/silent-stream", 1.0}, Case{"/v1/busy-stream", 3.0}}) {
        INFO(c.path);
        const std::string model = "case" + c.path.substr(3);
        const std::string body = chat(model);
        RawConnection raw(d.port());
        const auto t0 = Clock::now();
        raw.send("POST " + c.path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: " +
                 std::to_string(body.size()) + "\r\n\r\n" + body);
        const auto got = raw.read_until_close(15s);
        const double took = secs_since(t0);
        REQUIRE(got.rfind("HTTP/1.1 200", 0) == 0); // the head was relayed before the body stalled
        CHECK(raw.peer_closed(0ms));
        CHECK_FALSE(std::string_view(got).ends_with("\r\n0\r\n\r\n")); // cut off, not a complete-looking end
        CHECK(took >= c.bound_s * 0.9);
        CHECK(took < c.bound_s + 3.0);
        ++total;
        auto s = wait_total(d.port(), total);
        CHECK(status_count(model_entry(s, model), 502) == 1);
        const auto rss = rss_bytes(d.pid());
        INFO("RSS before: " << rss0 << " after: " << rss);
        CHECK(rss < rss0 + 8 * 1024 * 1024);
        check_alive(d.port(), total);
    }
    CHECK(d.wait_log("error=upstream_timeout_mid_response", 1s));
}

// With no working upstream, "alive" is: the admin endpoints are sound and a
// second /v1/ request gets its 502 at once again.
TEST_CASE("badinput: unreachable upstreams and TLS failures give 502 in the OpenAI shape", "[integration][badinput]") {
    auto again = [](std::uint16_t port, const std::string& code) {
        auto r = HttpClient(port).post_json("/v1/chat/completions", chat("gpt-4.1"));
        CHECK(r.status == 502);
        CHECK(error_code_of(r) == code);
        check_admin_alive(port);
    };
    SECTION("connection refused") {
        std::uint16_t dead_port;
        {
            fake::FakeUpstream gone;
            dead_port = gone.port();
        }
        Daemon d(daemon_yaml("http://127.0.0.1:" + std::to_string(dead_port) + "/v1"));
        HttpClient c(d.port());
        auto r = c.post_json("/v1/chat/completions", chat("gpt-4.1"));
        CHECK(r.status == 502);
        CHECK(error_code_of(r) == "upstream_unreachable");
        CHECK(status_count(model_entry(wait_total(d.port(), 1), "gpt-4.1"), 502) == 1);
        CHECK(c.get("/healthz").status == 200); // the same client connection still serves
        again(d.port(), "upstream_unreachable");
    }
    SECTION("TLS handshake failure (the upstream speaks plain HTTP)") {
        fake::FakeUpstream plain;
        auto certs = TestCerts::make();
        Daemon d(daemon_yaml("https://127.0.0.1:" + std::to_string(plain.port()) + "/v1",
                             "  tls: { verify: true, ca_file: \"" + certs->ca_cert + "\" }\n"));
        auto r = HttpClient(d.port()).post_json("/v1/chat/completions", chat("gpt-4.1"));
        CHECK(r.status == 502);
        CHECK(error_code_of(r) == "upstream_tls_error");
        CHECK(status_count(model_entry(wait_total(d.port(), 1), "gpt-4.1"), 502) == 1);
        again(d.port(), "upstream_tls_error");
    }
    SECTION("a certificate for the wrong host") {
        auto certs = TestCerts::make();
        fake::FakeUpstream up({.cert_file = certs->wrong_host_cert, .key_file = certs->wrong_host_key});
        Daemon d(daemon_yaml("https://127.0.0.1:" + std::to_string(up.port()) + "/v1",
                             "  tls: { verify: true, ca_file: \"" + certs->ca_cert + "\" }\n"));
        auto r = HttpClient(d.port()).post_json("/v1/chat/completions", chat("gpt-4.1"));
        CHECK(r.status == 502);
        CHECK(error_code_of(r) == "upstream_tls_error");
        CHECK(up.request_count() == 0);
        CHECK(status_count(model_entry(wait_total(d.port(), 1), "gpt-4.1"), 502) == 1);
        again(d.port(), "upstream_tls_error");
    }
}

TEST_CASE("badinput: gzip-encoded upstream responses reach the client unchanged and are still metered",
          "[integration][badinput][gzip]") {
    const std::string usage_json =
        R"({"id":"c1","object":"chat.completion","choices":[{"message":{"content":"hi"}}],)"
        R"("usage":{"prompt_tokens":100,"completion_tokens":20,"prompt_tokens_details":{"cached_tokens":40}}})";
    const std::string gz = deflate_all(usage_json);
    const std::string zlib_body = deflate_all(usage_json, MAX_WBITS);
    const std::string two_members = deflate_all(R"({"id":"c2",)") + deflate_all(usage_json.substr(1));
    const std::string stream_text = std::string("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n") +
                                    "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n" +
                                    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":9}}\n\n" +
                                    "data: [DONE]\n\n";
    const auto sse_parts = deflate_parts({stream_text.substr(0, 40), stream_text.substr(40, 60), stream_text.substr(100)});
    std::string sse_wire = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n";
    std::string sse_gz;
    for (const auto& p : sse_parts) {
        sse_wire += chunk(p);
        sse_gz += p;
    }
    sse_wire += "0\r\n\r\n";
    const std::string corrupt = std::string("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", 10) + std::string(3000, '\x5a');
    const std::string truncated = gz.substr(0, gz.size() / 2);

    auto encoded = [](const std::string& bytes, const std::string& encoding) {
        return fake::Response::json(200, bytes, {{"Content-Encoding", encoding}});
    };
    fake::FakeUpstream up({}, scripted({
        {"/v1/gz", [&](const fake::Request&) { return encoded(gz, "gzip"); }},
        {"/v1/gz-chunked",
         [&](const fake::Request&) {
             std::string wire = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                                "Transfer-Encoding: chunked\r\n\r\n";
             for (std::size_t i = 0; i < gz.size(); i += 7) wire += chunk(gz.substr(i, 7));
             fake::Response r;
             r.write(wire).write("0\r\n\r\n");
             return r;
         }},
        {"/v1/x-gzip", [&](const fake::Request&) { return encoded(gz, "x-gzip"); }},
        {"/v1/deflate", [&](const fake::Request&) { return encoded(zlib_body, "deflate"); }},
        {"/v1/two-members", [&](const fake::Request&) { return encoded(two_members, "gzip"); }},
        {"/v1/chat/completions", [&](const fake::Request&) { fake::Response r; r.write(sse_wire); return r; }},
        {"/v1/corrupt", [&](const fake::Request&) { return encoded(corrupt, "gzip"); }},
        {"/v1/truncated", [&](const fake::Request&) { return encoded(truncated, "gzip"); }},
        {"/v1/br", [&](const fake::Request&) { return encoded("\x0b\x02\x80{}\x03", "br"); }},
        {"/v1/identity", [&](const fake::Request&) { return encoded(usage_json, "identity"); }},
    }));
    Daemon d(daemon_yaml(up.base_url()));
    struct Case {
        std::string path;
        std::string wire_body; // what the client must receive
        std::uint64_t input, output, cached;
        bool warned;
    };
    const std::vector<Case> cases = {
        {"/v1/gz", gz, 100, 20, 40, false},
        {"/v1/gz-chunked", gz, 100, 20, 40, false},
        {"/v1/x-gzip", gz, 100, 20, 40, false},
        {"/v1/deflate", zlib_body, 100, 20, 40, false},
        {"/v1/two-members", two_members, 100, 20, 40, false},
        {"/v1/identity", usage_json, 100, 20, 40, false},
        {"/v1/corrupt", corrupt, 0, 0, 0, true},
        {"/v1/truncated", truncated, 0, 0, 0, true},
        {"/v1/br", "\x0b\x02\x80{}\x03", 0, 0, 0, true},
    };
    HttpClient c(d.port());
    std::uint64_t total = 0;
    for (const auto& k : cases) {
        INFO(k.path);
        const std::string model = "gz" + k.path.substr(3);
        const std::string rid = "rid-" + k.path.substr(4);
        auto r = c.post_json(k.path, chat(model), {{"X-Request-Id", rid}, {"Accept-Encoding", "gzip"}});
        CHECK(r.status == 200);
        CHECK(r.body == k.wire_body); // unchanged
        if (k.path != "/v1/identity") CHECK(!r.header("content-encoding").empty());
        CHECK(up.requests().back().headers.at("accept-encoding") == "identity");
        ++total;
        const auto s = wait_total(d.port(), total);
        const auto& row = model_entry(s, model);
        CHECK(row["status_codes"]["200"] == 1);
        CHECK(row["input_tokens"] == k.input);
        CHECK(row["output_tokens"] == k.output);
        CHECK(row["cached_input_tokens"] == k.cached);
        if (k.warned) {
            REQUIRE(d.wait_log("access rid=" + rid + " ", 5s)); // logged just after the record counts
            const auto log = d.log();
            // One warning for the body (not one per chunk), the access line, nothing else.
            CHECK(count_of(log, "rid=" + rid + " ") == 2);
            CHECK(log.find("warning rid=" + rid + " ") != std::string::npos);
        }
        check_alive(d.port(), total);
    }
    SECTION("an SSE stream the client asked usage for") {
        auto r = c.post_json("/v1/chat/completions",
                             R"({"model":"gz-sse","stream":true,"stream_options":{"include_usage":true},"messages":[]})");
        CHECK(r.status == 200);
        CHECK(r.body == sse_gz);
        const auto sum = wait_total(d.port(), total + 1);
        const auto& row = model_entry(sum, "gz-sse");
        CHECK(row["input_tokens"] == 7);
        CHECK(row["output_tokens"] == 9);
        CHECK(row["streamed_requests"] == 1);
    }
    SECTION("an SSE stream with injected include_usage: relayed unchanged (not stripped), metered") {
        auto r = c.post_json("/v1/chat/completions", R"({"model":"gz-sse","stream":true,"messages":[]})");
        CHECK(r.status == 200);
        CHECK(r.body == sse_gz);
        CHECK(up.requests().back().body.find("\"include_usage\":true") != std::string::npos);
        const auto sum = wait_total(d.port(), total + 1);
        const auto& row = model_entry(sum, "gz-sse");
        CHECK(row["input_tokens"] == 7);
        CHECK(row["output_tokens"] == 9);
    }
    ++total;
    check_alive(d.port(), total);
}

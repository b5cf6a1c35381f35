// proxy::parse_whole_request against Beast's parser (proxy::RequestParser):
// whatever the fast path accepts, Beast must accept too and read the same
// request from it; the rest it must leave to Beast.
#include <catch2/catch.hpp>

#include <cstdint>
#include <random>
#include <string>

#include <boost/optional/optional_io.hpp>

#include "fixtures.hpp"
#include "http_agree.hpp"
#include "relaymeter/proxy/request.hpp"

using namespace relaymeter;
using proxy::Request;

namespace {

constexpr std::size_t kHeaderLimit = 64 * 1024;
constexpr std::uint64_t kBodyLimit = 1 << 20;

// Checks the fast path on `in`: declined, or the same request as Beast's.
// Returns whether the fast path took it.
bool agree(const std::string& in) {
    const auto a = testsupport::request_agreement(in, kHeaderLimit, kBodyLimit);
    INFO(in);
    CHECK(a.problem == "");
    return a.taken;
}

const std::string kSdkHead =
    "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept-Encoding: gzip, deflate\r\n"
    "Connection: keep-alive\r\nAccept: application/json\r\nContent-Type: application/json\r\n"
    "User-Agent: OpenAI/Python 1.54.4\r\nX-Stainless-Lang: python\r\nX-Stainless-Package-Version: 1.54.4\r\n"
    "X-Stainless-OS: Linux\r\nX-Stainless-Arch: x64\r\nX-Stainless-Runtime: CPython\r\n"
    "X-Stainless-Runtime-Version: 3.11.2\r\nAuthorization: Bearer sk-test\r\nX-Stainless-Async: false\r\n"
    "x-stainless-retry-count: 0\r\nx-stainless-read-timeout: 600\r\n";
const std::string kBody = R"({"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}]})";

std::string sdk_request() {
    return kSdkHead + "Content-Length: " + std::to_string(kBody.size()) + "\r\n\r\n" + kBody;
}

} // namespace

TEST_CASE("request: the fast path reads an SDK's request as Beast does", "[request]") {
    const std::string in = sdk_request();
    CHECK(agree(in));
    CHECK(agree(in + "GET /healthz HTTP/1.1\r\n\r\n")); // pipelined: only the first is taken
    Request r;
    boost::optional<std::uint64_t> length;
    REQUIRE(proxy::parse_whole_request(in, kHeaderLimit, kBodyLimit, r, length) == in.size());
    CHECK(r.method() == http::verb::post);
    CHECK(r.target() == "/v1/chat/completions");
    CHECK(r.keep_alive());
    CHECK(r.field_count() == 17);
    CHECK(r[http::field::authorization] == "Bearer sk-test");
    CHECK(r["x-stainless-os"] == "Linux");
    CHECK(r["X-Request-Id"].empty());
    CHECK(r.body() == kBody);
    CHECK(length == kBody.size());
}

TEST_CASE("request: plain variants are taken and read as Beast reads them", "[request]") {
    for (const std::string& in : {
             std::string("GET /healthz HTTP/1.1\r\n\r\n"),
             std::string("GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
             std::string("GET /metrics HTTP/1.0\r\n\r\n"),
             std::string("GET /x HTTP/1.1\r\nConnection: close\r\n\r\n"),
             std::string("GET /x HTTP/1.1\r\nConnection: Keep-Alive ,\tCLOSE\r\n\r\n"),
             std::string("GET /x HTTP/1.0\r\nProxy-Connection: keep-alive\r\n\r\n"),
             std::string("GET /x?a=1&b=%20 HTTP/1.1\r\nA:1\r\nB:   2  \t\r\nC: \r\nD:\r\n\r\n"),
             std::string("POST /v1/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
             std::string("POST /v1/x HTTP/1.1\r\nContent-Length: 0003\r\n\r\nabc"),
             std::string("DELETE /v1/files/f HTTP/1.1\r\nX: caf\xc3\xa9\r\n\r\n"),
         }) {
        CHECK(agree(in));
    }
}

TEST_CASE("request: anything unusual is left to Beast", "[request]") {
    for (const std::string& in : {
             std::string("GET /x HTTP/1.1\r\nA: b\r\n"),                                  // head not all here
             std::string("POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"),           // body not all here
             std::string("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
             std::string("POST /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
             std::string("POST /x HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc"),
             std::string("POST /x HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc"),
             std::string("POST /x HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\nabc"),
             std::string("POST /x HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n"),        // over the body limit
             std::string("GET /x HTTP/1.1\r\nA: b\r\n c\r\n\r\n"),                      // folded
             std::string("GET /x HTTP/1.1\r\nA: b\nC: d\r\n\r\n"),                       // bare LF
             std::string("GET /x HTTP/1.1\r\nA : b\r\n\r\n"),
             std::string("GET /x HTTP/1.1\r\nA: b\x01\r\n\r\n"),
             std::string("GET /x HTTP/1.1\r\nConnection: \"close\"\r\n\r\n"),
             std::string("GET /x HTTP/1.1\r\nConnection: close,,x\r\n\r\n"),
             std::string("GET /x HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"),
             std::string("GET /x HTTP/2.0\r\n\r\n"),
             std::string("get /x HTTP/1.1\r\n\r\n"),
             std::string("BREW /x HTTP/1.1\r\n\r\n"),
             std::string("GET  /x HTTP/1.1\r\n\r\n"),
             std::string("\r\nGET /x HTTP/1.1\r\n\r\n"),
             std::string("GET /x HTTP/1.1\r\n" + std::string(kHeaderLimit, 'a') + ": b\r\n\r\n"),
         }) {
        CHECK_FALSE(agree(in));
    }
}

TEST_CASE("request: every prefix of a request is declined or read as Beast reads it", "[request]") {
    const std::string in = sdk_request();
    int taken = 0;
    for (std::size_t n = 0; n <= in.size(); ++n) taken += agree(in.substr(0, n)) ? 1 : 0;
    CHECK(taken == 1); // only the whole request
}

TEST_CASE("request: on mutated requests the fast path agrees with Beast or declines", "[request]") {
    // Byte edits of an SDK request with the bytes that matter to HTTP's
    // grammar; every accepted mutation must read the same through both.
    const std::string base = sdk_request() + "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n";
    std::mt19937 rng(20261204);
    int taken = 0;
    for (int i = 0; i < 20000; ++i) {
        const std::string in = testfixtures::mutate_http(base, rng);
        taken += agree(in) ? 1 : 0;
    }
    // The edits that keep a request plain (inside a value or the body) are
    // taken: the comparison above ran on them.
    CHECK(taken > 2000);
}

TEST_CASE("request: dot segments are found, plain or percent-encoded", "[request]") {
    using relaymeter::proxy::has_dot_segment;
    for (const char* t : {"/v1/../admin", "/v1/..", "/v1/.", "/v1/./chat/completions", "/v1/chat/../../x?y=1",
                          "/v1/%2e%2e/admin", "/v1/%2E%2e", "/v1/.%2E/x", "/v1/%2e/x", "/v1/a/%2E"}) {
        INFO(t);
        CHECK(has_dot_segment(t));
    }
    for (const char* t : {"/v1/chat/completions", "/v1/", "/v1/...", "/v1/.well-known/x", "/v1/a..b", "/v1/%2e%2e%2e",
                          "/v1/x?path=../..", "/v1/x?a=/./", "/v1/%2f..x", "/v1/%2", "/v1/%2e%2", "/v1/files/a.b"}) {
        INFO(t);
        CHECK_FALSE(has_dot_segment(t));
    }
}

TEST_CASE("request: a target in absolute form is kept as its origin form", "[request]") {
    using relaymeter::proxy::origin_form;
    CHECK(origin_form("/v1/models?a=b") == "/v1/models?a=b");
    CHECK(origin_form("http://127.0.0.1:8080/v1/models?a=b") == "/v1/models?a=b");
    CHECK(origin_form("HTTPS://api.example.com/v1/chat/completions") == "/v1/chat/completions");
    CHECK(origin_form("http://host") == "/");
    CHECK(origin_form("http://host?x") == "/");
    CHECK(origin_form("http://user@host:1/v1/x") == "/v1/x");
    CHECK(origin_form("*") == "*");
    CHECK(origin_form("ftp://host/v1/x") == "ftp://host/v1/x");
    CHECK(origin_form("http:/v1/x") == "http:/v1/x");
    // Both parsers keep it so.
    const std::string in = "GET http://h:1/v1/models HTTP/1.1\r\nHost: h:1\r\n\r\n";
    CHECK(agree(in));
    Request r;
    boost::optional<std::uint64_t> length;
    REQUIRE(proxy::parse_whole_request(in, kHeaderLimit, kBodyLimit, r, length) == in.size());
    CHECK(r.target() == "/v1/models");
}

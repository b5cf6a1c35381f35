// proxy::parse_whole_response_head against Beast's basic_parser<false>:
// whatever head the fast path accepts, Beast must accept too and read the same
// status, fields, framing and keep-alive from it; and Beast's parser, given
// framing_head() in place of the real head, must read the same body from the
// bytes that follow. The rest the fast path must leave to Beast.
#include <catch2/catch.hpp>

#include <cstdint>
#include <random>
#include <string>

#include "fixtures.hpp"
#include "http_agree.hpp"
#include "relaymeter/proxy/response.hpp"

using namespace relaymeter;
using proxy::ResponseHead;

namespace {

constexpr std::size_t kHeaderLimit = 64 * 1024;

// Checks the fast path on `in`: declined, or what Beast reads. Returns
// whether the fast path took the head.
bool agree(const std::string& in) {
    const auto a = testsupport::response_agreement(in, kHeaderLimit);
    INFO(in);
    CHECK(a.problem == "");
    return a.taken;
}

const std::string kOpenAIHead =
    "HTTP/1.1 200 OK\r\nDate: Fri, 04 Dec 2026 22:00:00 GMT\r\nContent-Type: application/json\r\n"
    "Connection: keep-alive\r\naccess-control-expose-headers: X-Request-ID\r\n"
    "openai-organization: user-abc123\r\nopenai-processing-ms: 412\r\nopenai-version: 2020-10-01\r\n"
    "strict-transport-security: max-age=31536000; includeSubDomains; preload\r\n"
    "x-ratelimit-limit-requests: 10000\r\nx-ratelimit-limit-tokens: 30000000\r\n"
    "x-ratelimit-remaining-requests: 9999\r\nx-ratelimit-remaining-tokens: 29999950\r\n"
    "x-ratelimit-reset-requests: 6ms\r\nx-ratelimit-reset-tokens: 0s\r\n"
    "x-request-id: req_0123456789abcdef0123456789abcdef\r\ncf-cache-status: DYNAMIC\r\n"
    "Set-Cookie: __cf_bm=abc; path=/; expires=Fri, 04-Dec-26 22:30:00 GMT; domain=.api.openai.com; HttpOnly\r\n"
    "X-Content-Type-Options: nosniff\r\nServer: cloudflare\r\nCF-RAY: 8e1f2a3b4c5d6e7f-AMS\r\n"
    "alt-svc: h3=\":443\"; ma=86400\r\n";
const std::string kBody =
    R"({"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4.1","choices":[],)"
    R"("usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}})";

std::string openai_response() {
    return kOpenAIHead + "Content-Length: " + std::to_string(kBody.size()) + "\r\n\r\n" + kBody;
}

} // namespace

TEST_CASE("response: the fast path reads OpenAI's response head as Beast does", "[response]") {
    const std::string in = openai_response();
    CHECK(agree(in));
    ResponseHead h;
    REQUIRE(proxy::parse_whole_response_head(in, kHeaderLimit, h) == in.size() - kBody.size());
    CHECK(h.status == 200);
    CHECK(h.reason == "OK");
    CHECK(h.version == 11);
    CHECK(h.keep_alive);
    CHECK(h.body == ResponseHead::Body::length);
    CHECK(h.content_length == kBody.size());
    REQUIRE(h.fields.size() == 22);
    CHECK(h.fields[1].name() == http::field::content_type);
    CHECK(h.fields[14].name_string() == "x-request-id");
    CHECK(h.fields[14].value() == "req_0123456789abcdef0123456789abcdef");
    // Only the head is read: the body may be partly here, or not at all.
    CHECK(agree(in.substr(0, in.size() - 10)));
    CHECK(agree(in.substr(0, in.size() - kBody.size())));
}

TEST_CASE("response: plain variants are taken and read as Beast reads them", "[response]") {
    for (const std::string& in : {
             std::string("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
             std::string("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
             std::string("HTTP/1.1 429 Too Many Requests\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"),
             std::string("HTTP/1.1 500 \r\nContent-Length: 1\r\n\r\nx"),
             std::string("HTTP/1.1 200 caf\xc3\xa9\tok\r\nContent-Length: 1\r\n\r\nx"),
             std::string("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
                         "5\r\ndata:\r\n3;x=y\r\n abc\r\n0\r\nT: v\r\n\r\nHTTP/1.1 200"),
             std::string("HTTP/1.1 200 OK\r\ntransfer-encoding: CHUNKED\r\n\r\n0\r\n\r\n"),
             std::string("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"),
             std::string("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx"),
             std::string("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx"),
             std::string("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\nto eof"),
             std::string("HTTP/1.1 200 OK\r\nProxy-Connection: close\r\nContent-Length: 0\r\n\r\n"),
             std::string("HTTP/1.1 200 OK\r\nConnection: Keep-Alive ,\tCLOSE\r\nContent-Length: 00\r\n\r\n"),
             std::string("HTTP/1.1 599 X\r\nA:1\r\nB:   2  \t\r\nC: \r\nD:\r\nContent-Length: 3\r\n\r\nabcdef"),
             std::string("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"), // body still to come
         }) {
        CHECK(agree(in));
    }
}

TEST_CASE("response: anything unusual is left to Beast", "[response]") {
    for (const std::string& in : {
             std::string("HTTP/1.1 200 OK\r\nA: b\r\n"),                   // head not all here
             std::string("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
             std::string("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"),
             std::string("HTTP/1.1 204 No Content\r\n\r\n"),
             std::string("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
             std::string("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
             std::string("HTTP/1.1 099 X\r\nContent-Length: 0\r\n\r\n"),
             std::string("HTTP/1.1 600 X\r\nContent-Length: 0\r\n\r\n"),
             std::string("HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n"),
             std::string("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"),
             std::string("HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n"),
             std::string("HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"),
             std::string("http/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
             std::string("HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n"),
             std::string("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
             std::string("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
             std::string("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
             std::string("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
             std::string("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
             std::string("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc"),
             std::string("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\nabc"),
             std::string("HTTP/1.1 200 OK\r\nA: b\r\n c\r\nContent-Length: 0\r\n\r\n"), // folded
             std::string("HTTP/1.1 200 OK\r\nA: b\nContent-Length: 0\r\n\r\n"),        // bare LF
             std::string("HTTP/1.1 200 OK\r\nA : b\r\n\r\n"),
             std::string("HTTP/1.1 200 OK\r\nConnection: \"close\"\r\n\r\n"),
             std::string("HTTP/1.1 200 OK\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"),
             std::string("HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n"),
             std::string("HTTP/1.1 200 OK\r\n" + std::string(kHeaderLimit, 'a') + ": b\r\n\r\n"),
         }) {
        CHECK_FALSE(agree(in));
    }
}

TEST_CASE("response: every prefix of a response is declined or read as Beast reads it", "[response]") {
    const std::string in = openai_response();
    const std::size_t head_len = in.size() - kBody.size();
    std::size_t taken = 0;
    for (std::size_t n = 0; n <= in.size(); ++n) taken += agree(in.substr(0, n)) ? 1 : 0;
    CHECK(taken == kBody.size() + 1); // every prefix with the whole head
    CHECK(head_len > 0);
}

TEST_CASE("response: on mutated responses the fast path agrees with Beast or declines", "[response]") {
    // Byte edits of OpenAI's response, plain and chunked, with the bytes that
    // matter to HTTP's grammar; every accepted mutation must read the same
    // through both.
    const std::string chunked = kOpenAIHead + "Transfer-Encoding: chunked\r\n\r\n" + "10\r\n" + kBody.substr(0, 16) +
                                "\r\n" + "5\r\n" + kBody.substr(16, 5) + "\r\n0\r\n\r\n";
    std::mt19937 rng(20261205);
    int taken = 0;
    for (int i = 0; i < 20000; ++i) {
        const std::string in = testfixtures::mutate_http(i % 2 == 0 ? openai_response() : chunked, rng);
        taken += agree(in) ? 1 : 0;
    }
    // The edits that keep a head plain (inside a value or the body) are
    // taken: the comparison above ran on them.
    CHECK(taken > 4000);
}

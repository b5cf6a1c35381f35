// Unit tests of usage::EncodedBodyMeter and content_coding: usage read from
// gzip / deflate bodies split anywhere, corrupt and truncated input.
#include <catch2/catch.hpp>

#include <zlib.h>

#include <string>
#include <vector>

#include "relaymeter/usage/encoded.hpp"

using relaymeter::usage::content_coding;
using relaymeter::usage::ContentCoding;
using relaymeter::usage::EncodedBodyMeter;

namespace {

// window_bits: 16+15 gzip, 15 zlib, -15 raw deflate.
std::string compress(const std::string& text, int window_bits) {
    z_stream zs{};
    REQUIRE(deflateInit2(&zs, Z_BEST_COMPRESSION, Z_DEFLATED, window_bits, 9, Z_DEFAULT_STRATEGY) == Z_OK);
    std::string out(deflateBound(&zs, text.size()) + 64, '\0');
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(text.data()));
    zs.avail_in = static_cast<uInt>(text.size());
    zs.next_out = reinterpret_cast<Bytef*>(out.data());
    zs.avail_out = static_cast<uInt>(out.size());
    REQUIRE(deflate(&zs, Z_FINISH) == Z_STREAM_END);
    out.resize(zs.total_out);
    deflateEnd(&zs);
    return out;
}

// Feeds `bytes` in pieces of `step` bytes.
void feed(EncodedBodyMeter& m, const std::string& bytes, std::size_t step) {
    for (std::size_t i = 0; i < bytes.size(); i += step) m.feed(std::string_view(bytes).substr(i, step));
    m.finish();
}

const std::string kJson =
    R"({"id":"x","choices":[{"message":{"content":")" + std::string(100000, 'z') +
    R"("}}],"usage":{"prompt_tokens":100,"completion_tokens":20,"prompt_tokens_details":{"cached_tokens":40},)"
    R"("completion_tokens_details":{"reasoning_tokens":5}}})";

} // namespace

TEST_CASE("encoded: Content-Encoding values", "[usage][gzip]") {
    CHECK(content_coding("") == ContentCoding::identity);
    CHECK(content_coding("identity") == ContentCoding::identity);
    CHECK(content_coding(" GZip ") == ContentCoding::gzip);
    CHECK(content_coding("x-gzip") == ContentCoding::gzip);
    CHECK(content_coding("Deflate") == ContentCoding::deflate);
    CHECK(content_coding("br") == ContentCoding::unsupported);
    CHECK(content_coding("gzip, br") == ContentCoding::unsupported);
    CHECK(content_coding("zstd") == ContentCoding::unsupported);
}

TEST_CASE("encoded: usage from gzip, zlib and raw deflate bodies split anywhere", "[usage][gzip]") {
    struct Case {
        const char* what;
        ContentCoding coding;
        int window_bits;
    };
    for (const Case& c : {Case{"gzip", ContentCoding::gzip, 16 + MAX_WBITS},
                          Case{"deflate (zlib)", ContentCoding::deflate, MAX_WBITS},
                          Case{"deflate (raw)", ContentCoding::deflate, -MAX_WBITS}}) {
        const auto body = compress(kJson, c.window_bits);
        for (std::size_t step : {std::size_t{1}, std::size_t{2}, std::size_t{7}, std::size_t{4096}, body.size()}) {
            INFO(c.what << ", pieces of " << step);
            EncodedBodyMeter m(c.coding, false);
            feed(m, body, step);
            CHECK(m.problem().empty());
            CHECK(m.decoded_bytes() == kJson.size());
            const auto u = m.usage();
            CHECK(u.present);
            CHECK(u.input == 100);
            CHECK(u.output == 20);
            CHECK(u.cached_input == 40);
            CHECK(u.reasoning == 5);
        }
    }
}

TEST_CASE("encoded: concatenated gzip members are read one after the other", "[usage][gzip]") {
    const auto body = compress(kJson.substr(0, 5000), 16 + MAX_WBITS) + compress(kJson.substr(5000), 16 + MAX_WBITS);
    EncodedBodyMeter m(ContentCoding::gzip, false);
    feed(m, body, 333);
    CHECK(m.problem().empty());
    CHECK(m.usage().input == 100);
}

TEST_CASE("encoded: SSE streams are metered from the inflated events", "[usage][gzip]") {
    const std::string text = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"
                             "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":9}}\n\n"
                             "data: [DONE]\n\n";
    EncodedBodyMeter m(ContentCoding::gzip, true);
    feed(m, compress(text, 16 + MAX_WBITS), 5);
    CHECK(m.problem().empty());
    CHECK(m.saw_content());
    CHECK(m.usage().input == 7);
    CHECK(m.usage().output == 9);
}

TEST_CASE("encoded: corrupt, truncated and unsupported bodies are reported, never thrown", "[usage][gzip]") {
    const auto gz = compress(kJson, 16 + MAX_WBITS);
    SECTION("corrupt") {
        std::string bad = gz;
        for (std::size_t i = 20; i < bad.size(); i += 3) bad[i] = static_cast<char>(bad[i] ^ 0x5a);
        EncodedBodyMeter m(ContentCoding::gzip, false);
        feed(m, bad, 100);
        CHECK(m.problem() == "corrupt data");
        CHECK(!m.usage().present);
    }
    SECTION("not gzip at all") {
        EncodedBodyMeter m(ContentCoding::gzip, false);
        feed(m, kJson, 100);
        CHECK(m.problem() == "corrupt data");
        CHECK(m.decoded_bytes() == 0);
    }
    SECTION("truncated") {
        EncodedBodyMeter m(ContentCoding::gzip, false);
        feed(m, gz.substr(0, gz.size() - 10), 64);
        CHECK(m.problem() == "truncated");
    }
    SECTION("junk after a zlib stream") {
        EncodedBodyMeter m(ContentCoding::deflate, false);
        feed(m, compress(kJson, MAX_WBITS) + "junk", 64);
        CHECK(m.problem() == "corrupt data");
        CHECK(m.usage().input == 100); // read before the junk
    }
    SECTION("unsupported coding") {
        EncodedBodyMeter m(ContentCoding::unsupported, false);
        CHECK(m.problem().empty()); // nothing fed yet: nothing to report
        feed(m, "\x0b\x02\x80", 1);
        CHECK(m.problem() == "unsupported content coding");
        CHECK(!m.usage().present);
    }
    SECTION("an empty body") {
        EncodedBodyMeter m(ContentCoding::gzip, false);
        m.finish();
        CHECK(m.problem().empty());
        CHECK(!m.usage().present);
    }
}

// libFuzzer target: EncodedBodyMeter (src/usage/encoded.cpp), the usage of a
// gzip/deflate-coded response read from a copy inflated on the side.
//
// Input: a 5-byte header (fuzz_common.hpp) and a body. Mode byte bits:
//   0-1 split style, 2 SSE (else plain JSON),
//   3-4 form: 0 the body gzip-compressed here (bit 6: as two gzip members),
//             1 zlib-wrapped deflate, 2 raw deflate,
//             3 the body fed as it is, as coded bytes (bit 5: deflate, else gzip),
//   7 cut the coded bytes short (at a point the seed picks).
// Checks: the figures are the same whole and split. For a body compressed
// here: the decoded bytes are the body (or, cut short, a prefix of it with the
// problem "truncated"), and the usage is what JsonUsageScanner / StreamMeter
// read from that text directly.
#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include "fuzz_common.hpp"
#include "relaymeter/usage/encoded.hpp"

namespace {

using relaymeter::usage::ContentCoding;
using relaymeter::usage::EncodedBodyMeter;
using relaymeter::usage::Usage;
namespace fz = relaymeter::fuzz;

// zlib's deflate with the given window bits (16+15 gzip, 15 zlib, -15 raw).
std::string compress(std::string_view text, int window_bits) {
    z_stream zs{};
    if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        fz::fail("deflateInit2");
    std::string out(deflateBound(&zs, static_cast<uLong>(text.size())), '\0');
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(text.data()));
    zs.avail_in = static_cast<uInt>(text.size());
    zs.next_out = reinterpret_cast<Bytef*>(out.data());
    zs.avail_out = static_cast<uInt>(out.size());
    if (deflate(&zs, Z_FINISH) != Z_STREAM_END) fz::fail("deflate");
    out.resize(zs.total_out);
    deflateEnd(&zs);
    return out;
}

struct Result {
    Usage usage;
    bool content = false;
    std::uint64_t decoded = 0;
    std::string problem;
    bool operator==(const Result&) const = default;
};

Result meter(ContentCoding coding, bool sse, std::string_view coded, unsigned style, std::uint32_t seed) {
    EncodedBodyMeter m(coding, sse);
    for (std::string_view piece : fz::split(coded, style, seed)) m.feed(piece);
    m.finish();
    return {m.usage(), m.saw_content(), m.decoded_bytes(), std::string(m.problem())};
}

// What the usage scanners read from plain text.
Result direct(bool sse, std::string_view text) {
    Result r;
    r.decoded = text.size();
    if (sse) {
        relaymeter::usage::StreamMeter s(false);
        std::string out;
        s.feed(text, out);
        s.finish(out);
        r.usage = s.usage();
        r.content = s.saw_content();
    } else {
        relaymeter::usage::JsonUsageScanner j;
        j.feed(text);
        r.usage = j.result();
    }
    return r;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < fz::kHeaderSize) return 0;
    const fz::Header h = fz::read_header(data);
    const std::string_view body(reinterpret_cast<const char*>(data) + fz::kHeaderSize, size - fz::kHeaderSize);
    const unsigned style = h.mode & 3U;
    const bool sse = (h.mode & 4U) != 0;
    const unsigned form = (h.mode >> 3) & 3U;
    const bool cut = (h.mode & 0x80U) != 0;

    ContentCoding coding = ContentCoding::gzip;
    std::string coded;
    switch (form) {
    case 0:
        if ((h.mode & 0x40U) != 0) {
            const std::size_t half = body.size() / 2;
            coded = compress(body.substr(0, half), 16 + MAX_WBITS) + compress(body.substr(half), 16 + MAX_WBITS);
        } else {
            coded = compress(body, 16 + MAX_WBITS);
        }
        break;
    case 1:
        coding = ContentCoding::deflate;
        coded = compress(body, MAX_WBITS);
        break;
    case 2:
        coding = ContentCoding::deflate;
        coded = compress(body, -MAX_WBITS);
        break;
    default:
        coding = (h.mode & 0x20U) != 0 ? ContentCoding::deflate : ContentCoding::gzip;
        coded.assign(body);
        break;
    }
    if (cut && !coded.empty()) coded.resize(h.seed % coded.size()); // strictly shorter

    const Result whole = meter(coding, sse, coded, 0, 0);
    const Result split = meter(coding, sse, coded, style, h.seed);
    if (!(whole == split)) {
        for (const Result* r : {&whole, &split})
            std::fprintf(stderr, "%s: usage %d %llu/%llu decoded %llu problem '%s'\n", r == &whole ? "whole" : "split",
                         r->usage.present ? 1 : 0, static_cast<unsigned long long>(r->usage.input),
                         static_cast<unsigned long long>(r->usage.output), static_cast<unsigned long long>(r->decoded),
                         r->problem.c_str());
    }
    RM_FUZZ_CHECK(whole == split);
    if (form == 3) return 0; // arbitrary coded bytes: consistency only

    if (!cut) {
        RM_FUZZ_CHECK(whole.problem.empty());
        RM_FUZZ_CHECK(whole.decoded == body.size());
    } else {
        RM_FUZZ_CHECK(whole.decoded <= body.size());
        // Cut right after the first of two gzip members: a whole gzip stream.
        const bool member_boundary = form == 0 && (h.mode & 0x40U) != 0 && whole.decoded == body.size() / 2;
        if (!coded.empty()) RM_FUZZ_CHECK(whole.problem == "truncated" || (member_boundary && whole.problem.empty()));
    }
    const Result expected = direct(sse, body.substr(0, whole.decoded));
    RM_FUZZ_CHECK(whole.usage == expected.usage);
    if (!cut) RM_FUZZ_CHECK(whole.content == expected.content);
    return 0;
}

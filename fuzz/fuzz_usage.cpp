// libFuzzer target: the response usage extractor (src/usage/*):
// JsonUsageScanner (a plain JSON response body, fed in chunks) and
// parse_usage_object (one usage object).
//
// Input: a 5-byte header (fuzz_common.hpp: mode byte, split seed), then a
// response body. Checks:
//   - JsonUsageScanner gives the same result whole and split, and after reset();
//   - parse_usage_object never reports cached > input or reasoning > output;
//   - on strict JSON without duplicate keys or \u escapes, both equal a
//     reference reading with nlohmann::json (the body as a response, and the
//     body itself as a usage object).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz_common.hpp"

namespace {

using relaymeter::usage::JsonUsageScanner;
using relaymeter::usage::Usage;
namespace fz = relaymeter::fuzz;

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < fz::kHeaderSize) return 0;
    const fz::Header h = fz::read_header(data);
    const std::string_view body(reinterpret_cast<const char*>(data) + fz::kHeaderSize, size - fz::kHeaderSize);

    JsonUsageScanner whole;
    whole.feed(body);
    JsonUsageScanner split;
    for (std::string_view piece : fz::split(body, h.mode & 3U, h.seed)) split.feed(piece);
    RM_FUZZ_CHECK(whole.result() == split.result());
    split.reset();
    split.feed(body);
    RM_FUZZ_CHECK(whole.result() == split.result());

    const Usage object = relaymeter::usage::parse_usage_object(body);
    RM_FUZZ_CHECK(object.cached_input <= object.input);
    RM_FUZZ_CHECK(object.reasoning <= object.output);
    if (!object.present) RM_FUZZ_CHECK(object == Usage{});

    if (fz::comparable(body)) {
        const auto doc = fz::Json::parse(body);
        RM_FUZZ_CHECK(whole.result() == fz::ref_doc_usage(doc).usage);
        RM_FUZZ_CHECK(object == fz::ref_usage_object(doc));
    }
    return 0;
}

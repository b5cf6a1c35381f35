// libFuzzer target: StreamMeter (src/usage/stream_meter.cpp).
//
// Input: a 5-byte header (fuzz_common.hpp: mode byte, split seed), then the
// upstream SSE body. The body is fed whole and split at the chunk boundaries
// the header picks, with and without stripping, and checked:
//   - without stripping, the output is exactly the input, and is produced at
//     once (after each feed, the output so far is the input so far);
//   - with stripping, the output is the same however the body is split, and is
//     the input with some bytes removed (never added, changed or reordered);
//   - usage, [DONE], event count and content flag do not depend on the split,
//     and stripping changes none of them but the content flag (it can only
//     turn it off, for a stripped usage-only chunk);
//   - when every event's data is [DONE], strict JSON without duplicate keys or
//     \u escapes, or not an object at all, the usage and counts equal those of a
//     reference SSE reading (WHATWG line rules) with nlohmann::json.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_common.hpp"

namespace {

using relaymeter::usage::StreamMeter;
using relaymeter::usage::Usage;
namespace fz = relaymeter::fuzz;

struct Run {
    std::string out;
    Usage usage;
    bool done = false;
    bool content = false;
    std::uint64_t events = 0;
};

Run run(std::string_view body, bool strip, unsigned style, std::uint32_t seed) {
    StreamMeter m(strip);
    Run r;
    std::size_t fed = 0;
    for (std::string_view piece : fz::split(body, style, seed)) {
        m.feed(piece, r.out);
        fed += piece.size();
        // Output only grows, so checking each feed's addition checks it all.
        if (!strip) RM_FUZZ_CHECK(r.out.size() == fed && r.out.compare(fed - piece.size(), piece.size(), piece) == 0);
    }
    m.finish(r.out);
    r.usage = m.usage();
    r.done = m.saw_done();
    r.content = m.saw_content();
    r.events = m.events();
    return r;
}

bool same_metering(const Run& a, const Run& b) {
    return a.usage == b.usage && a.done == b.done && a.content == b.content && a.events == b.events;
}

// `sub` can be obtained from `all` by deleting bytes.
bool is_subsequence(std::string_view sub, std::string_view all) {
    std::size_t j = 0;
    for (std::size_t i = 0; i < all.size() && j < sub.size(); ++i)
        if (all[i] == sub[j]) ++j;
    return j == sub.size();
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\n' || s.front() == '\r'))
        s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\n' || s.back() == '\r'))
        s.remove_suffix(1);
    return s;
}

// The reference reading. `known` turns false when an event's data is one the
// lenient scanner may read differently from a strict parser.
struct Reference {
    Usage usage;
    bool done = false;
    bool content = false;
    std::uint64_t events = 0;
    bool known = true;

    std::string data;
    std::size_t data_lines = 0;

    void dispatch() {
        if (data_lines == 0) return;
        ++events;
        if (data.size() <= 16 && trim(data) == "[DONE]") {
            done = true;
        } else {
            content = true;
            const std::string_view t = trim(data);
            if (!t.empty() && t.front() == '{') {
                if (!fz::comparable(data)) {
                    known = false;
                } else {
                    const auto u = fz::ref_doc_usage(fz::Json::parse(data)).usage;
                    if (u.present) usage = u;
                }
            }
        }
        data.clear();
        data_lines = 0;
    }

    // `line` without its terminator.
    void line(std::string_view l) {
        if (l.empty()) {
            dispatch();
            return;
        }
        if (l.front() == ':') return;
        const std::size_t colon = l.find(':');
        const std::string_view name = l.substr(0, colon);
        if (name != "data") return;
        std::string_view value = colon == std::string_view::npos ? std::string_view() : l.substr(colon + 1);
        if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
        if (data_lines++ > 0) data += '\n';
        data.append(value);
    }

    explicit Reference(std::string_view body) {
        std::size_t at = 0;
        while (at < body.size()) {
            const std::size_t end = body.find_first_of("\r\n", at);
            if (end == std::string_view::npos) {
                // An unterminated last line counts once its field name has
                // ended (StreamMeter meters a cut-off event; a bare name
                // without ':' has not started a data line yet).
                const std::string_view l = body.substr(at);
                if (l.find(':') != std::string_view::npos) line(l);
                break;
            }
            line(body.substr(at, end - at));
            at = end + 1;
            if (body[end] == '\r' && at < body.size() && body[at] == '\n') ++at;
        }
        dispatch(); // an event cut off by the end of the body is metered too
    }
};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < fz::kHeaderSize) return 0;
    const fz::Header h = fz::read_header(data);
    const std::string_view body(reinterpret_cast<const char*>(data) + fz::kHeaderSize, size - fz::kHeaderSize);
    const unsigned style = h.mode & 3U;

    const Run plain_whole = run(body, false, 0, 0);
    const Run plain_split = run(body, false, style, h.seed);
    RM_FUZZ_CHECK(plain_whole.out == body);
    RM_FUZZ_CHECK(plain_split.out == body);
    RM_FUZZ_CHECK(same_metering(plain_whole, plain_split));

    const Run strip_whole = run(body, true, 0, 0);
    const Run strip_split = run(body, true, style, h.seed);
    RM_FUZZ_CHECK(strip_whole.out == strip_split.out);
    RM_FUZZ_CHECK(same_metering(strip_whole, strip_split));
    RM_FUZZ_CHECK(strip_whole.out.size() <= body.size());
    RM_FUZZ_CHECK(is_subsequence(strip_whole.out, body));
    RM_FUZZ_CHECK(strip_whole.usage == plain_whole.usage);
    RM_FUZZ_CHECK(strip_whole.done == plain_whole.done);
    RM_FUZZ_CHECK(strip_whole.events == plain_whole.events);
    RM_FUZZ_CHECK(!strip_whole.content || plain_whole.content);
    // Nothing stripped: every event's content, if any, reached the client.
    if (strip_whole.out.size() == body.size()) RM_FUZZ_CHECK(strip_whole.content == plain_whole.content);

    const Reference ref(body);
    RM_FUZZ_CHECK(plain_whole.events == ref.events);
    RM_FUZZ_CHECK(plain_whole.done == ref.done);
    RM_FUZZ_CHECK(plain_whole.content == ref.content);
    if (ref.known) RM_FUZZ_CHECK(plain_whole.usage == ref.usage);
    return 0;
}

// Shared by the libFuzzer targets: splitting an input at fuzzer-chosen
// boundaries, and a reference reading of `usage` built on nlohmann::json
// (a strict parser) to compare the incremental scanners with.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "relaymeter/usage/usage.hpp"

namespace relaymeter::fuzz {

// Stops the run with a message; libFuzzer saves the input as a crash.
[[noreturn]] inline void fail(const char* what) {
    std::fprintf(stderr, "fuzz invariant violated: %s\n", what);
    std::abort();
}

#define RM_FUZZ_CHECK(cond)                                                                   \
    do {                                                                                      \
        if (!(cond)) ::relaymeter::fuzz::fail(#cond " (" __FILE__ ":" RM_FUZZ_STR(__LINE__) ")"); \
    } while (0)
#define RM_FUZZ_STR2(x) #x
#define RM_FUZZ_STR(x) RM_FUZZ_STR2(x)

// Inputs of the chunked targets start with a 5-byte header: one mode byte
// and a 32-bit seed; the rest is the body. The seed drives a small PRNG that
// picks the chunk sizes, so every split is reproducible from the input file.
struct Header {
    std::uint8_t mode = 0;
    std::uint32_t seed = 0;
};
inline constexpr std::size_t kHeaderSize = 5;

inline Header read_header(const std::uint8_t* data) {
    Header h;
    h.mode = data[0];
    h.seed = static_cast<std::uint32_t>(data[1]) | static_cast<std::uint32_t>(data[2]) << 8 |
             static_cast<std::uint32_t>(data[3]) << 16 | static_cast<std::uint32_t>(data[4]) << 24;
    return h;
}

// The body cut into pieces: style 0 one piece, 1 byte by byte, 2 random sizes
// 1..max, 3 random sizes 0..max (empty feeds too).
inline std::vector<std::string_view> split(std::string_view body, unsigned style, std::uint32_t seed) {
    std::vector<std::string_view> pieces;
    std::uint32_t x = seed | 1U; // xorshift32 must not start at 0
    auto next = [&x] {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        return x;
    };
    const std::size_t max = 1 + (seed >> 24) % 64;
    std::size_t at = 0;
    switch (style % 4) {
    case 0: pieces.push_back(body); break;
    case 1:
        for (; at < body.size(); ++at) pieces.push_back(body.substr(at, 1));
        break;
    default:
        while (at < body.size()) {
            std::size_t len = next() % (max + 1);
            if (style % 4 == 2 && len == 0) len = 1;
            len = std::min(len, body.size() - at);
            pieces.push_back(body.substr(at, len));
            at += len;
        }
        break;
    }
    return pieces;
}

// True when `text` is one valid JSON value. nlohmann's lexer takes a NUL byte
// for the end of the input ("{}\0garbage" is accepted); JSON has no place for
// a raw NUL, so text holding one is not valid.
inline bool valid_json(std::string_view text) {
    return text.find('\0') == std::string_view::npos && nlohmann::json::accept(text);
}

// The usage scanner reads a count from at most this many bytes of its
// spelling; a longer number is not a count (kNumberCapture in usage.cpp).
inline constexpr std::size_t kMaxCountText = 40;

// True when `text` is one valid JSON value in which no object repeats a key
// and no number is spelled in more than kMaxCountText bytes (integers that
// long overflow to floats, so only floats need checking).
// (The scanners let the last of duplicate keys win member by member; a DOM
// keeps only the last value, so duplicates make the two readings differ.)
inline bool valid_json_within_scanner_limits(std::string_view text) {
    struct Sax : nlohmann::json_sax<nlohmann::json> {
        std::vector<std::set<std::string>> keys;
        bool duplicate = false;
        bool long_number = false;
        bool null() override { return true; }
        bool boolean(bool) override { return true; }
        bool number_integer(number_integer_t) override { return true; }
        bool number_unsigned(number_unsigned_t) override { return true; }
        bool number_float(number_float_t, const string_t& raw) override {
            long_number = long_number || raw.size() > kMaxCountText;
            return true;
        }
        bool string(string_t&) override { return true; }
        bool binary(binary_t&) override { return true; }
        bool start_object(std::size_t) override {
            keys.emplace_back();
            return true;
        }
        bool key(string_t& k) override {
            if (!keys.back().insert(k).second) duplicate = true;
            return !duplicate;
        }
        bool end_object() override {
            keys.pop_back();
            return true;
        }
        bool start_array(std::size_t) override { return true; }
        bool end_array() override { return true; }
        bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
            return false;
        }
    } sax;
    if (text.find('\0') != std::string_view::npos) return false;
    const bool ok = nlohmann::json::sax_parse(text.begin(), text.end(), &sax, nlohmann::detail::input_format_t::json,
                                              /*strict=*/true);
    return ok && !sax.duplicate && !sax.long_number;
}

// The reference readings below compare with the scanners only on inputs where
// the scanners' documented limits cannot matter: valid JSON, no duplicate
// keys, no overlong numbers, and no \u escapes (a key spelled with \u escapes
// can exceed the scanner's 64-byte raw key limit and is then, by design, not
// recognised).
inline bool comparable(std::string_view text) {
    return text.find("\\u") == std::string_view::npos && valid_json_within_scanner_limits(text);
}

using Json = nlohmann::ordered_json; // keeps member order: "the last one wins" needs it

// count_of in src/usage/usage.cpp: a non-negative integral number <= 2^53.
inline std::optional<std::uint64_t> ref_count(const Json& v) {
    constexpr std::uint64_t kMax = std::uint64_t{1} << 53;
    if (v.is_number_unsigned()) {
        const auto u = v.get<std::uint64_t>();
        return u <= kMax ? std::optional(u) : std::nullopt;
    }
    if (v.is_number_integer()) {
        const auto i = v.get<std::int64_t>();
        return i >= 0 && static_cast<std::uint64_t>(i) <= kMax ? std::optional(static_cast<std::uint64_t>(i))
                                                               : std::nullopt;
    }
    if (v.is_number_float()) {
        const double d = v.get<double>();
        if (d >= 0 && d <= static_cast<double>(kMax) && std::floor(d) == d) return static_cast<std::uint64_t>(d);
    }
    return std::nullopt;
}

// parse_usage_object on an already parsed object.
inline usage::Usage ref_usage_object(const Json& o) {
    usage::Usage u;
    if (!o.is_object()) return u;
    u.present = true;
    auto count = [&](const char* key) -> std::optional<std::uint64_t> {
        const auto it = o.find(key);
        return it == o.end() ? std::nullopt : ref_count(*it);
    };
    auto detail = [&](const char* obj, const char* key) -> std::optional<std::uint64_t> {
        const auto it = o.find(obj);
        if (it == o.end() || !it->is_object()) return std::nullopt;
        const auto jt = it->find(key);
        return jt == it->end() ? std::nullopt : ref_count(*jt);
    };
    u.input = count("prompt_tokens").value_or(count("input_tokens").value_or(0));
    u.output = count("completion_tokens").value_or(count("output_tokens").value_or(0));
    u.cached_input = detail("prompt_tokens_details", "cached_tokens")
                         .value_or(detail("input_tokens_details", "cached_tokens").value_or(0));
    u.reasoning = detail("completion_tokens_details", "reasoning_tokens")
                      .value_or(detail("output_tokens_details", "reasoning_tokens").value_or(0));
    if (u.cached_input > u.input) u.cached_input = u.input;
    if (u.reasoning > u.output) u.reasoning = u.output;
    return u;
}

// What JsonUsageScanner / one SSE event reports for a document: the last
// usage object in document order among the top-level "usage" and
// "response"."usage" (a non-object usage does not replace an earlier one).
struct DocUsage {
    usage::Usage usage;      // present=false: none
    bool usage_only = false; // top-level "choices": [] and a top-level usage object
};

inline DocUsage ref_doc_usage(const Json& doc) {
    DocUsage r;
    if (!doc.is_object()) return r;
    bool top_usage_object = false;
    bool choices_empty = false;
    for (auto it = doc.begin(); it != doc.end(); ++it) {
        if (it.key() == "usage") {
            top_usage_object = it->is_object();
            if (it->is_object()) r.usage = ref_usage_object(*it);
        } else if (it.key() == "response" && it->is_object()) {
            const auto u = it->find("usage");
            if (u != it->end() && u->is_object()) r.usage = ref_usage_object(*u);
        } else if (it.key() == "choices") {
            choices_empty = it->is_array() && it->empty();
        }
    }
    r.usage_only = top_usage_object && choices_empty;
    return r;
}

} // namespace relaymeter::fuzz

// Private to the usage module: reading the counts of one usage object from
// the members JsonScanner reports while it walks that object. The same code
// serves parse_usage_object (the usage object is the scanned document) and
// the response scanners (the usage object is walked inside the response, in
// the same pass: its text is never captured and scanned again).
#pragma once

#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <string_view>

#include "relaymeter/usage/usage.hpp"
#include "usage/json_scan.hpp"

namespace relaymeter::usage::detail {

// Largest count we accept: beyond 2^53 a JSON number is not exact anyway.
inline constexpr std::uint64_t kMaxCount = std::uint64_t{1} << 53;

// A token count from a JSON number's text: a non-negative integral number no
// larger than kMaxCount ("12", "12.0" and "1e3" are counts; "12.5", "-1",
// "1e300" or a string are not). False when it is not one.
inline bool count_of(std::string_view text, std::uint64_t& count) {
    // Fast path: up to 15 digits (< 2^53), what upstreams send.
    if (!text.empty() && text.size() <= 15) {
        std::uint64_t v = 0;
        std::size_t k = 0;
        for (; k < text.size(); ++k) {
            const unsigned d = static_cast<unsigned char>(text[k]) - static_cast<unsigned>('0');
            if (d > 9) break;
            v = v * 10 + d;
        }
        if (k == text.size()) {
            count = v;
            return true;
        }
    }
    if (text.empty() || !(text.front() == '-' || (text.front() >= '0' && text.front() <= '9'))) return false;
    std::uint64_t v = 0;
    auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec == std::errc() && p == text.data() + text.size()) {
        if (v > kMaxCount) return false;
        count = v;
        return true;
    }
    double d = 0;
    auto [pd, ecd] = std::from_chars(text.data(), text.data() + text.size(), d);
    if (ecd != std::errc() || pd != text.data() + text.size()) return false;
    if (!(d >= 0 && d <= static_cast<double>(kMaxCount) && std::floor(d) == d)) return false;
    count = static_cast<std::uint64_t>(d);
    return true;
}

inline constexpr std::size_t kNumberCapture = 40;

// Top-level *_tokens of a usage object and the cached/reasoning counts in its
// *_details objects. Depths are relative: 1 = the usage object's members,
// 2 = a details object's members. Duplicate keys: the last one wins.
class UsageReader {
public:
    void begin() { *this = UsageReader{}; }

    Directive on_key(std::string_view key, int depth) {
        if (depth == 1) {
            switch (key.size()) { // each key of interest is "<word>_tokens" or "<word>_tokens_details"
            case 12:
                if (key_is(key, "input_tokens")) return count(kInput);
                break;
            case 13:
                if (key_is(key, "prompt_tokens")) return count(kPrompt);
                if (key_is(key, "output_tokens")) return count(kOutput);
                break;
            case 17:
                if (key_is(key, "completion_tokens")) return count(kCompletion);
                break;
            case 20:
                if (key_is(key, "input_tokens_details")) return details(kInputDetails);
                break;
            case 21:
                if (key_is(key, "prompt_tokens_details")) return details(kPromptDetails);
                if (key_is(key, "output_tokens_details")) return details(kOutputDetails);
                break;
            case 25:
                if (key_is(key, "completion_tokens_details")) return details(kCompletionDetails);
                break;
            default: break;
            }
        } else if (depth == 2) {
            // The one count each details object has for us.
            const bool cached = parent_ == kPromptDetails || parent_ == kInputDetails;
            if (cached ? key_is(key, "cached_tokens") : key_is(key, "reasoning_tokens")) return count(parent_);
        }
        return {};
    }

    // Called for the members on_key captured (and the descended details
    // objects, which carry no text): each captured value follows its key.
    void on_value(const MemberValue& v) {
        if (v.text.empty()) return;
        // A number longer than its capture is only a prefix: not a count
        // ("1.000…0e2" cut before its exponent would read as 1).
        std::uint64_t n = 0;
        if (!v.truncated && count_of(v.text, n)) {
            slots_[pending_] = n;
            have_ = static_cast<std::uint8_t>(have_ | (1U << pending_));
        } else {
            clear(pending_);
        }
    }

    // The usage object has ended well-formed.
    Usage result() const {
        Usage u;
        u.present = true;
        u.input = either(kPrompt, kInput);
        u.output = either(kCompletion, kOutput);
        u.cached_input = either(kPromptDetails, kInputDetails);
        u.reasoning = either(kCompletionDetails, kOutputDetails);
        // Cached tokens are part of the input, reasoning tokens part of the
        // output: a relay saying otherwise must not make the cost formula go
        // negative.
        if (u.cached_input > u.input) u.cached_input = u.input;
        if (u.reasoning > u.output) u.reasoning = u.output;
        return u;
    }

private:
    enum Slot : std::uint8_t { kPrompt, kCompletion, kInput, kOutput, kPromptDetails, kInputDetails, kCompletionDetails, kOutputDetails, kSlots };
    void clear(Slot s) { have_ = static_cast<std::uint8_t>(have_ & ~(1U << s)); }
    // The first slot's count if it has one, else the second's, else 0.
    std::uint64_t either(Slot a, Slot b) const {
        if (have_ & (1U << a)) return slots_[a];
        if (have_ & (1U << b)) return slots_[b];
        return 0;
    }

    Directive count(Slot s) {
        pending_ = s;
        return {Walk::capture, kNumberCapture};
    }
    Directive details(Slot s) {
        parent_ = s;
        clear(s); // a later details object replaces an earlier one
        return {Walk::descend, 0};
    }

    std::array<std::uint64_t, kSlots> slots_{};
    std::uint8_t have_ = 0; // bit s: slots_[s] holds a count
    Slot parent_ = kPromptDetails; // the details object being walked
    Slot pending_ = kPrompt;       // the count being captured
};

} // namespace relaymeter::usage::detail

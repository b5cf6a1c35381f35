// Small builders shared by the unit tests.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>

#include "relaymeter/config/config.hpp"
#include "relaymeter/metrics/record.hpp"
#include "relaymeter/usage/usage.hpp"

namespace relaymeter::testfixtures {

// One to three byte edits (replace, insert, erase) of an HTTP message, with
// the bytes that matter to HTTP's grammar: for checking a fast parser against
// Beast's on inputs near the plain ones.
inline std::string mutate_http(std::string in, std::mt19937& rng) {
    static const std::string specials = std::string(" \t\r\n:,\"\x7f\x80\x01;=/0aZ", 16) + std::string(1, '\0');
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits && !in.empty(); ++e) {
        const std::size_t at = rng() % in.size();
        const char c = specials[rng() % specials.size()];
        switch (rng() % 3) {
        case 0: in[at] = c; break;
        case 1: in.insert(in.begin() + static_cast<std::ptrdiff_t>(at), c); break;
        default: in.erase(at, 1); break;
        }
    }
    return in;
}

inline usage::Usage make_usage(std::uint64_t in, std::uint64_t out, std::uint64_t cached = 0,
                               std::uint64_t reasoning = 0) {
    usage::Usage u;
    u.input = in;
    u.output = out;
    u.cached_input = cached;
    u.reasoning = reasoning;
    u.present = true;
    return u;
}

inline metrics::Record make_record(std::string model, int status, double latency_s, usage::Usage u = {}) {
    metrics::Record r;
    r.model = std::move(model);
    r.status = status;
    r.latency_s = latency_s;
    r.usage = u;
    r.finished_at = std::chrono::system_clock::now();
    return r;
}

// The contract's default price table.
inline std::map<std::string, config::Price> default_prices() {
    return {
        {"gpt-4.1", {8.00, 32.00, std::nullopt}},
        {"claude-sonnet-4.5", {15.00, 75.00, std::nullopt}},
        {"gemini-2.5-flash", {2.50, 10.00, std::nullopt}},
        {"deepseek-v3.2", {0.42, 1.68, std::nullopt}},
    };
}

} // namespace relaymeter::testfixtures

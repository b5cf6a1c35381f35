// Small builders shared by the unit tests.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "relaymeter/config/config.hpp"
#include "relaymeter/metrics/record.hpp"
#include "relaymeter/usage/usage.hpp"

namespace relaymeter::testfixtures {

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

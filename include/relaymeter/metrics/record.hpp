// One finished, metered exchange: what proxy hands to metrics.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "relaymeter/usage/usage.hpp"

namespace relaymeter::metrics {

class PriceTable;

// What a record cost: computed by the engine from the price table, or given
// with the record when it was priced before (ledger replay).
struct Pricing {
    double cost_usd = 0;
    bool unpriced = false; // the model had no price entry (cost 0)
};

struct Record {
    std::string model = "none";       // sanitized (usage::sanitize_model); engine caps distinct names
    std::string key;                  // auth on: client key name ("none" without a valid key); empty: auth off
    std::string_view request_id;      // for the record's sinks (ledger); valid during Engine::record only
    int status = 0;                   // status the client got (499: client went away, 502: upstream failed mid-response)
    double latency_s = 0;             // arrival to last byte sent
    double ttft_s = -1;               // streams: arrival to first content chunk sent; <0 = none
    bool streamed = false;
    usage::Usage usage;
    std::chrono::system_clock::time_point finished_at{};
    // Prices in force when the request started (SIGHUP reload applies to later
    // requests only). Null: the engine's current table.
    std::shared_ptr<const PriceTable> prices;
    // Set: the record was priced already (ledger replay) and the engine takes this as is.
    std::optional<Pricing> pricing;
};

} // namespace relaymeter::metrics

// Price table and the one place where cost is computed.
#pragma once

#include <map>
#include <string>

#include "relaymeter/config/config.hpp"
#include "relaymeter/usage/usage.hpp"

namespace relaymeter::metrics {

class PriceTable {
public:
    PriceTable() = default;
    explicit PriceTable(std::map<std::string, config::Price> prices);

    // nullptr when the model has no price entry.
    const config::Price* find(const std::string& model) const;

    // ((input - cached) * input + cached * cached_input + output * output) / 1e6,
    // cached clamped to input. Unknown model: 0.
    static double cost(const config::Price& price, const usage::Usage& u);

private:
    std::map<std::string, config::Price, std::less<>> prices_;
};

} // namespace relaymeter::metrics

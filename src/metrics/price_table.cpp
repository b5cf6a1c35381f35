#include "relaymeter/metrics/price_table.hpp"

#include <algorithm>
#include <utility>

namespace relaymeter::metrics {

PriceTable::PriceTable(std::map<std::string, config::Price> prices)
    : prices_(std::make_move_iterator(prices.begin()), std::make_move_iterator(prices.end())) {}

const config::Price* PriceTable::find(const std::string& model) const {
    const auto it = prices_.find(model);
    return it == prices_.end() ? nullptr : &it->second;
}

// The one place where cost is computed. Cached tokens are part of the input
// tokens (OpenAI's meaning); a count above the input is clamped to it.
double PriceTable::cost(const config::Price& price, const usage::Usage& u) {
    const std::uint64_t cached = std::min(u.cached_input, u.input);
    const double cached_price = price.cached_input.value_or(price.input);
    return (static_cast<double>(u.input - cached) * price.input + static_cast<double>(cached) * cached_price +
            static_cast<double>(u.output) * price.output) /
           1e6;
}

} // namespace relaymeter::metrics

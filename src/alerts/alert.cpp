#include "relaymeter/alerts/alert.hpp"

#include <cstdio>
#include <ctime>

#include <nlohmann/json.hpp>

// The metrics module's text exposition building blocks (constant labels,
// escaping): ai_alerts_firing must be rendered exactly like the other families.
#include "metrics/text_format.hpp"

namespace relaymeter::alerts {

std::string_view type_name(AlertType t) {
    switch (t) {
    case AlertType::high_latency: return "high_latency";
    case AlertType::high_error_rate: return "high_error_rate";
    case AlertType::high_cost: return "high_cost";
    }
    return "unknown";
}

std::string_view severity(AlertType t) { return t == AlertType::high_error_rate ? "critical" : "warning"; }

std::string_view state_name(AlertState s) {
    switch (s) {
    case AlertState::pending: return "pending";
    case AlertState::firing: return "firing";
    case AlertState::resolved: return "resolved";
    }
    return "unknown";
}

std::string iso8601(std::chrono::system_clock::time_point tp) {
    const auto secs = std::chrono::duration_cast<std::chrono::seconds>(tp.time_since_epoch()).count();
    const auto t = static_cast<std::time_t>(secs);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[80];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                  tm.tm_hour, tm.tm_min, tm.tm_sec);
    return buf;
}

nlohmann::json to_json(const Alert& a) {
    nlohmann::json j = {
        {"type", type_name(a.type)},
        {"severity", severity(a.type)},
        {"model", a.model ? nlohmann::json(*a.model) : nlohmann::json(nullptr)},
        {"value", a.value},
        {"threshold", a.threshold},
        {"message", a.message},
        {"since", iso8601(a.since)},
        {"state", state_name(a.state)},
    };
    if (a.state == AlertState::resolved) j["resolved_at"] = iso8601(a.resolved_at);
    return j;
}

nlohmann::json to_json(const std::vector<Alert>& alerts) {
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& a : alerts) arr.push_back(to_json(a));
    return arr;
}

std::string render_prometheus(const std::vector<Alert>& firing, const metrics::ExpositionOptions& opts) {
    using namespace metrics::text;
    const std::string cl = const_label_block(opts);
    std::string out;
    append_family(out, "ai_alerts_firing", "gauge",
                  "1 for each firing relaymeter alert, by type and model (no model label for high_cost).");
    for (const auto& a : firing) {
        if (a.model) {
            append_sample(out, "ai_alerts_firing", cl, {{"type", type_name(a.type)}, {"model", *a.model}},
                          std::uint64_t{1});
        } else {
            append_sample(out, "ai_alerts_firing", cl, {{"type", type_name(a.type)}}, std::uint64_t{1});
        }
    }
    return out;
}

} // namespace relaymeter::alerts

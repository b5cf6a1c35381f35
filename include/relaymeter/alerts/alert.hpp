// An alert as users see it (/alerts, /summary, webhooks) and what is
// rendered from it. Pure: no networking, no clocks of its own.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "relaymeter/metrics/exposition.hpp"

namespace relaymeter::alerts {

enum class AlertType { high_latency, high_error_rate, high_cost };
enum class AlertState { pending, firing, resolved };

struct Alert {
    AlertType type = AlertType::high_latency;
    std::optional<std::string> model; // nullopt for high_cost (all models)
    double value = 0;                 // p95 ms, error rate %, or USD over the trailing hour
    double threshold = 0;
    std::string message;
    std::chrono::system_clock::time_point since{};       // when the condition began to hold
    AlertState state = AlertState::pending;
    std::chrono::system_clock::time_point resolved_at{}; // set when state is resolved
};

std::string_view type_name(AlertType t);    // high_latency, high_error_rate, high_cost
std::string_view severity(AlertType t);     // warning (latency, cost), critical (error rate)
std::string_view state_name(AlertState s);  // pending, firing, resolved
std::string iso8601(std::chrono::system_clock::time_point tp); // 2026-11-27T14:00:00Z

// {"type","severity","model","value","threshold","message","since","state"}
// (+ "resolved_at" when resolved); model is null for high_cost.
nlohmann::json to_json(const Alert& a);
// [ to_json(a)... ]
nlohmann::json to_json(const std::vector<Alert>& alerts);

// The ai_alerts_firing gauge family: 1 per firing alert, labels type and model
// (no model label for high_cost), constant labels first. HELP/TYPE always.
std::string render_prometheus(const std::vector<Alert>& firing, const metrics::ExpositionOptions& opts);

} // namespace relaymeter::alerts

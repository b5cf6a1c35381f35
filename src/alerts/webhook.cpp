#include "relaymeter/alerts/webhook.hpp"

#include <nlohmann/json.hpp>

namespace relaymeter::alerts {

std::string webhook_target(const config::WebhookConfig& w) {
    if (w.format == config::WebhookConfig::Format::json) return w.path.empty() ? "/" : w.path;
    std::string base = w.path;
    while (!base.empty() && base.back() == '/') base.pop_back();
    return base + "/api/v2/alerts";
}

std::string generic_payload(const Alert& a) { return to_json(a).dump(); }

std::string alertname(AlertType t) {
    switch (t) {
    case AlertType::high_latency: return "HighLatency";
    case AlertType::high_error_rate: return "HighErrorRate";
    case AlertType::high_cost: return "HighCost";
    }
    return "Relaymeter";
}

std::string alertmanager_payload(const Alert& a, const std::string& generator_url) {
    nlohmann::json labels = {
        {"alertname", alertname(a.type)},
        {"severity", severity(a.type)},
        {"type", type_name(a.type)},
        {"source", "relaymeter"},
    };
    if (a.model) labels["model"] = *a.model;
    nlohmann::json alert = {
        {"labels", std::move(labels)},
        {"annotations",
         {{"summary", std::string(type_name(a.type)) + (a.model ? " on " + *a.model : std::string(" (all models)"))},
          {"description", a.message}}},
        {"startsAt", iso8601(a.since)},
    };
    if (a.state == AlertState::resolved) alert["endsAt"] = iso8601(a.resolved_at);
    if (!generator_url.empty()) alert["generatorURL"] = generator_url;
    return nlohmann::json::array({std::move(alert)}).dump();
}

std::string payload_for(const config::WebhookConfig& w, const Alert& a, const std::string& generator_url) {
    return w.format == config::WebhookConfig::Format::alertmanager ? alertmanager_payload(a, generator_url)
                                                                   : generic_payload(a);
}

} // namespace relaymeter::alerts

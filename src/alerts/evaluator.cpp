#include "relaymeter/alerts/evaluator.hpp"

#include <cmath>

#include <fmt/format.h>

namespace relaymeter::alerts {

namespace {

double round_to(double v, double scale) { return std::round(v * scale) / scale; }

double latency_threshold(const config::AlertsConfig& cfg, const std::string& model) {
    const auto it = cfg.models.find(model);
    return it != cfg.models.end() && it->second.latency_p95_ms ? *it->second.latency_p95_ms : cfg.latency_p95_ms;
}

double error_threshold(const config::AlertsConfig& cfg, const std::string& model) {
    const auto it = cfg.models.find(model);
    return it != cfg.models.end() && it->second.error_rate_percent ? *it->second.error_rate_percent
                                                                    : cfg.error_rate_percent;
}

} // namespace

Evaluator::Evaluator(config::AlertsConfig cfg) : cfg_(std::move(cfg)) {}

void Evaluator::set_config(config::AlertsConfig cfg) {
    const std::lock_guard lock(mu_);
    cfg_ = std::move(cfg);
}

config::AlertsConfig Evaluator::config() const {
    const std::lock_guard lock(mu_);
    return cfg_;
}

double Evaluator::latency_threshold_ms(const std::string& model) const {
    const std::lock_guard lock(mu_);
    return latency_threshold(cfg_, model);
}

double Evaluator::error_rate_threshold(const std::string& model) const {
    const std::lock_guard lock(mu_);
    return error_threshold(cfg_, model);
}

std::vector<Alert> Evaluator::evaluate(const metrics::Snapshot& window, const metrics::Snapshot& hour,
                                       std::chrono::system_clock::time_point now) {
    const std::lock_guard lock(mu_);
    std::vector<Alert> out;
    const auto window_s = static_cast<long long>(std::llround(cfg_.window_s));

    // Every model seen in the window, plus those with an active alert (they may have gone quiet).
    std::map<std::string, const metrics::ModelStats*> models;
    for (const auto& [name, stats] : window.models) models[name] = &stats;
    for (const auto& [key, alert] : active_) {
        if (key.first != AlertType::high_cost) models.try_emplace(key.second, nullptr);
    }

    for (const auto& [name, stats] : models) {
        const std::uint64_t requests = stats ? stats->requests : 0;
        const bool enough = requests > 0 && requests >= cfg_.min_requests;
        const std::string span = fmt::format("over the last {} s, {} requests", window_s, requests);

        Observation lat;
        lat.threshold = latency_threshold(cfg_, name);
        lat.value = stats ? round_to(stats->latency.quantile(0.95) * 1000.0, 1000) : 0.0;
        lat.holds = enough && lat.value > lat.threshold;
        lat.message = fmt::format("{}: P95 latency {:.1f}ms {} threshold {:g}ms ({})", name, lat.value,
                                  lat.holds ? "exceeds" : "is within", lat.threshold, span);
        if (!enough) {
            lat.message = fmt::format("{}: {} requests in the last {} s, fewer than alerts.min_requests ({}): no "
                                      "latency alert", name, requests, window_s, cfg_.min_requests);
        }

        Observation err;
        err.threshold = error_threshold(cfg_, name);
        err.value = requests == 0 ? 0.0
                                  : round_to(100.0 * static_cast<double>(stats->errors) / static_cast<double>(requests),
                                             100);
        err.holds = enough && err.value > err.threshold;
        err.message = fmt::format("{}: Error rate {:.2f}% {} threshold {:g}% ({})", name, err.value,
                                  err.holds ? "exceeds" : "is within", err.threshold, span);
        if (!enough) {
            err.message = fmt::format("{}: {} requests in the last {} s, fewer than alerts.min_requests ({}): no "
                                      "error-rate alert", name, requests, window_s, cfg_.min_requests);
        }

        step({AlertType::high_latency, name}, name, lat, now, out);
        step({AlertType::high_error_rate, name}, name, err, now, out);
    }

    Observation cost;
    cost.threshold = cfg_.cost_per_hour_usd;
    cost.value = hour.overall().cost_usd;
    cost.holds = cost.value > cost.threshold;
    cost.message = fmt::format("Hourly cost ${:.2f} {} threshold ${:g} (all models, trailing 60 minutes)", cost.value,
                               cost.holds ? "exceeds" : "is within", cost.threshold);
    step({AlertType::high_cost, ""}, std::nullopt, cost, now, out);
    return out;
}

void Evaluator::step(const Key& key, const std::optional<std::string>& model, const Observation& obs,
                     std::chrono::system_clock::time_point now, std::vector<Alert>& out) {
    const auto it = active_.find(key);
    if (!obs.holds) {
        if (it == active_.end()) return;
        Alert a = it->second;
        active_.erase(it);
        if (a.state != AlertState::firing) return; // pending that never fired: nobody was told
        a.state = AlertState::resolved;
        a.resolved_at = now;
        a.value = obs.value;
        a.threshold = obs.threshold;
        a.message = "resolved: " + obs.message;
        out.push_back(std::move(a));
        return;
    }

    Alert* a = nullptr;
    if (it == active_.end()) {
        Alert fresh;
        fresh.type = key.first;
        fresh.model = model;
        fresh.since = now;
        fresh.state = AlertState::pending;
        a = &active_.emplace(key, std::move(fresh)).first->second;
    } else {
        a = &it->second;
    }
    a->value = obs.value;
    a->threshold = obs.threshold;
    a->message = obs.message;

    const auto held = std::chrono::duration<double>(now - a->since).count();
    if (a->state == AlertState::pending) {
        if (held >= cfg_.for_s) {
            a->state = AlertState::firing;
            out.push_back(*a);
        } else if (it == active_.end()) {
            out.push_back(*a); // newly pending
        }
    }
}

std::vector<Alert> Evaluator::in_state(AlertState state) const {
    const std::lock_guard lock(mu_);
    std::vector<Alert> out;
    for (const auto& [key, a] : active_) {
        if (a.state == state) out.push_back(a);
    }
    return out;
}

std::vector<Alert> Evaluator::firing() const { return in_state(AlertState::firing); }

std::vector<Alert> Evaluator::pending() const { return in_state(AlertState::pending); }

} // namespace relaymeter::alerts

// Alert evaluation: thresholds of config `alerts:` against windowed figures.
// Pure (no I/O, the caller passes the snapshots and the time); thread-safe so
// that the admin endpoints can read firing() while the alert thread evaluates.
//
// Conditions (strictly greater than the threshold, as in the seed):
//  high_latency     per model: p95 latency over alerts.window_s, ms
//  high_error_rate  per model: non-2xx share over alerts.window_s, percent
//  high_cost        all models: cost over the trailing 60 minutes, USD
// The two per-model conditions need at least alerts.min_requests requests in
// the window; below that they do not hold (a firing alert resolves).
//
// States: a condition that starts to hold makes the alert pending (since = now);
// once it has held for alerts.for_s it is firing (for_s 0: firing at the first
// evaluation that sees it, with no separate pending step). A firing alert whose
// condition no longer holds is resolved and forgotten; a pending one is just
// dropped (it never fired, nobody was told).
#pragma once

#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "relaymeter/alerts/alert.hpp"
#include "relaymeter/config/config.hpp"
#include "relaymeter/metrics/engine.hpp"

namespace relaymeter::alerts {

class Evaluator {
public:
    explicit Evaluator(config::AlertsConfig cfg);

    // SIGHUP: new thresholds apply from the next evaluation; states are kept.
    void set_config(config::AlertsConfig cfg);
    config::AlertsConfig config() const;

    // window: figures over alerts.window_s; hour: over the trailing 60 minutes.
    // Returns the transitions of this evaluation (state pending, firing or
    // resolved), in a stable order (type, then model).
    std::vector<Alert> evaluate(const metrics::Snapshot& window, const metrics::Snapshot& hour,
                                std::chrono::system_clock::time_point now);

    std::vector<Alert> firing() const; // ordered by type, then model
    std::vector<Alert> pending() const;

    // The thresholds that apply to `model` (overrides, else the global ones).
    double latency_threshold_ms(const std::string& model) const;
    double error_rate_threshold(const std::string& model) const;

private:
    std::vector<Alert> in_state(AlertState state) const; // active_ in map order
    using Key = std::pair<AlertType, std::string>; // model "" for high_cost

    struct Observation {
        bool holds = false;
        double value = 0;
        double threshold = 0;
        std::string message;
    };

    void step(const Key& key, const std::optional<std::string>& model, const Observation& obs,
              std::chrono::system_clock::time_point now, std::vector<Alert>& out);

    mutable std::mutex mu_;
    config::AlertsConfig cfg_;
    std::map<Key, Alert> active_; // pending and firing
};

} // namespace relaymeter::alerts

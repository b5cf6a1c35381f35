// The alert loop: every alerts.interval_s, on its own thread, takes the
// engine's windowed snapshots, runs the Evaluator, logs each transition (warn
// when firing, info when pending or resolved) and hands firing/resolved ones
// to the notifier callback. Never runs on the proxy's worker threads.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "relaymeter/alerts/alert.hpp"
#include "relaymeter/alerts/evaluator.hpp"
#include "relaymeter/config/config.hpp"
#include "relaymeter/metrics/engine.hpp"

namespace relaymeter::alerts {

class Monitor {
public:
    // A firing or resolved transition (must not block: queue it).
    using Notify = std::function<void(const Alert&)>;
    // The firing alerts, again, every kRefreshInterval (Alertmanager forgets
    // an alert that is not re-sent within its resolve_timeout).
    using Refresh = std::function<void(const std::vector<Alert>&)>;
    static constexpr std::chrono::seconds kRefreshInterval{60};

    Monitor(metrics::Engine& engine, config::AlertsConfig cfg, Notify notify = {}, Refresh refresh = {});
    ~Monitor(); // stop()
    Monitor(const Monitor&) = delete;
    Monitor& operator=(const Monitor&) = delete;

    void start();
    void stop();
    // SIGHUP: new thresholds, window, interval (webhooks are the notifier's).
    void reload(config::AlertsConfig cfg);

    // One evaluation now (the loop calls this; tests may too).
    void evaluate_once(std::chrono::system_clock::time_point now = std::chrono::system_clock::now());

    std::vector<Alert> firing() const { return evaluator_.firing(); }
    const Evaluator& evaluator() const { return evaluator_; }

private:
    void loop();

    metrics::Engine& engine_;
    Evaluator evaluator_;
    Notify notify_;
    Refresh refresh_;
    std::chrono::system_clock::time_point last_refresh_{};

    std::mutex mu_; // guards stop_ and interval_ for the loop
    std::condition_variable cv_;
    bool stop_ = false;
    double interval_s_;
    std::thread thread_;
};

} // namespace relaymeter::alerts

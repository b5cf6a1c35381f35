#include "relaymeter/alerts/monitor.hpp"

#include <cmath>

#include <spdlog/spdlog.h>

namespace relaymeter::alerts {

Monitor::Monitor(metrics::Engine& engine, config::AlertsConfig cfg, Notify notify, Refresh refresh)
    : engine_(engine),
      evaluator_(cfg),
      notify_(std::move(notify)),
      refresh_(std::move(refresh)),
      interval_s_(cfg.interval_s) {}

Monitor::~Monitor() { stop(); }

void Monitor::start() {
    if (thread_.joinable()) return;
    {
        const std::lock_guard lock(mu_);
        stop_ = false;
    }
    thread_ = std::thread([this] { loop(); });
}

void Monitor::stop() {
    {
        const std::lock_guard lock(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
}

void Monitor::reload(config::AlertsConfig cfg) {
    {
        const std::lock_guard lock(mu_);
        interval_s_ = cfg.interval_s;
    }
    evaluator_.set_config(std::move(cfg));
    cv_.notify_all(); // the new interval applies from now
}

void Monitor::evaluate_once(std::chrono::system_clock::time_point now) {
    const double window_s = evaluator_.config().window_s;
    const auto window = engine_.snapshot_window(std::chrono::seconds(std::llround(window_s)), now);
    const auto hour = engine_.snapshot_window(std::chrono::seconds(3600), now);
    const auto transitions = evaluator_.evaluate(window, hour, now);
    for (const auto& a : transitions) {
        const std::string model = a.model ? *a.model : "(all)";
        switch (a.state) {
        case AlertState::firing:
            spdlog::warn("alert firing: {} {} model={} value={} threshold={}: {}", type_name(a.type), severity(a.type),
                         model, a.value, a.threshold, a.message);
            break;
        case AlertState::resolved:
            spdlog::info("alert resolved: {} model={}: {}", type_name(a.type), model, a.message);
            break;
        case AlertState::pending:
            spdlog::info("alert pending: {} model={}: {}", type_name(a.type), model, a.message);
            break;
        }
        if (a.state != AlertState::pending && notify_) notify_(a);
    }
    if (last_refresh_ == std::chrono::system_clock::time_point{}) last_refresh_ = now; // transitions were just sent
    if (refresh_ && now - last_refresh_ >= kRefreshInterval) {
        last_refresh_ = now;
        auto firing = evaluator_.firing();
        if (!firing.empty()) refresh_(firing);
    }
}

void Monitor::loop() {
    std::unique_lock lock(mu_);
    while (!stop_) {
        const auto wait = std::chrono::duration<double>(interval_s_);
        const auto deadline = std::chrono::steady_clock::now() +
                              std::chrono::duration_cast<std::chrono::steady_clock::duration>(wait);
        if (cv_.wait_until(lock, deadline, [&] { return stop_; })) break; // stop() wakes it at once
        lock.unlock();
        try {
            evaluate_once();
        } catch (const std::exception& e) {
            spdlog::error("alert evaluation failed: {}", e.what());
        }
        lock.lock();
    }
}

} // namespace relaymeter::alerts

// What the notifier sends: the request target and body of a webhook POST for
// an alert transition, in the generic or the Alertmanager v2 format, and the
// bounded queue of pending deliveries. Pure: the sending is server/notifier.
#pragma once

#include <cstddef>
#include <deque>
#include <string>
#include <utility>

#include "relaymeter/alerts/alert.hpp"
#include "relaymeter/config/config.hpp"

namespace relaymeter::alerts {

// Generic: the URL's path as written. Alertmanager: the URL is the
// Alertmanager base, /api/v2/alerts is appended to its path.
std::string webhook_target(const config::WebhookConfig& w);

// Generic format: the alert object (to_json, with state).
std::string generic_payload(const Alert& a);

// Alertmanager v2 (POST /api/v2/alerts): a one-element array
// [{labels:{alertname, severity, type, model?}, annotations:{summary, description},
//   startsAt, endsAt (on resolve), generatorURL (when given)}].
// alertname is HighLatency, HighErrorRate or HighCost: the names of the
// Prometheus rules in docker/prometheus/alerts.yml; label source="relaymeter".
std::string alertmanager_payload(const Alert& a, const std::string& generator_url = {});
std::string alertname(AlertType t);

// The body for `w`'s format.
std::string payload_for(const config::WebhookConfig& w, const Alert& a, const std::string& generator_url = {});

// A FIFO with a fixed capacity: pushing onto a full queue drops the oldest
// entry (the caller logs it). Not synchronised.
template <class T>
class BoundedQueue {
public:
    explicit BoundedQueue(std::size_t capacity) : capacity_(capacity == 0 ? 1 : capacity) {}

    // Returns true when the oldest entry was dropped to make room.
    bool push(T item) {
        bool dropped = false;
        if (items_.size() >= capacity_) {
            items_.pop_front();
            dropped = true;
        }
        items_.push_back(std::move(item));
        return dropped;
    }
    bool empty() const { return items_.empty(); }
    std::size_t size() const { return items_.size(); }
    std::size_t capacity() const { return capacity_; }
    T pop() {
        T item = std::move(items_.front());
        items_.pop_front();
        return item;
    }
    void clear() { items_.clear(); }

private:
    std::size_t capacity_;
    std::deque<T> items_;
};

// Retry policy of one delivery: at most kMaxAttempts attempts; before attempt
// k (k >= 1) wait backoff_ms(k) = 500 ms * 2^(k-1), capped at 8 s. Retried:
// connection failures, timeouts, 408, 429 and 5xx; not retried: other statuses.
inline constexpr int kMaxAttempts = 4;
inline int backoff_ms(int attempt) {
    int ms = 500;
    for (int k = 1; k < attempt && ms < 8000; ++k) ms *= 2;
    return ms > 8000 ? 8000 : ms;
}
inline bool retryable_status(int status) { return status == 408 || status == 429 || status >= 500; }

} // namespace relaymeter::alerts

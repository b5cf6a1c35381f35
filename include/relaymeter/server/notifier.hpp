// Webhook notifier: sends alert transitions to alerts.webhooks from its own
// thread and io_context (never the proxy's workers). One bounded queue per
// webhook (the oldest entry is dropped, with a warning, when it is full), one
// delivery at a time per webhook, each attempt bounded by the webhook's
// timeout_s, failed attempts retried with backoff (alerts::kMaxAttempts).
// Logs name a webhook by scheme://host:port only: its path may hold a secret.
// Kept free of networking headers.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "relaymeter/alerts/alert.hpp"
#include "relaymeter/config/config.hpp"

namespace relaymeter::server {

class Notifier {
public:
    static constexpr std::size_t kQueueCapacity = 256; // per webhook

    // generator_url: put in Alertmanager alerts' generatorURL ("" to omit).
    explicit Notifier(std::vector<config::WebhookConfig> webhooks, std::string generator_url = {});
    ~Notifier(); // stops the thread; undelivered notifications are dropped
    Notifier(const Notifier&) = delete;
    Notifier& operator=(const Notifier&) = delete;

    // A firing or resolved alert, to every webhook. Thread-safe, never blocks on I/O.
    void notify(const alerts::Alert& a);
    // Firing alerts re-sent to the Alertmanager-format webhooks only.
    void refresh(const std::vector<alerts::Alert>& firing);
    // SIGHUP: replaces the webhooks. One still configured (same url and
    // format) keeps its queued notifications; those of removed ones are dropped.
    void reconfigure(std::vector<config::WebhookConfig> webhooks);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace relaymeter::server

// The listener: one io_context and one SO_REUSEPORT acceptor per thread,
// keep-alive HTTP/1.1 sessions, routing of /v1/ to proxy and of the admin
// endpoints to metrics. Kept free of networking headers.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "relaymeter/alerts/alert.hpp"
#include "relaymeter/config/config.hpp"
#include "relaymeter/metrics/engine.hpp"

namespace relaymeter::metrics {
struct ExpositionOptions;
}

namespace relaymeter::server {

struct Hooks {
    std::function<void()> on_reload; // SIGHUP, called on the signal thread
    // The firing alerts, for /alerts, /summary and /metrics (thread-safe; none when unset).
    std::function<std::vector<alerts::Alert>()> firing_alerts;
    // More series for /metrics, rendered with its options (thread-safe; none when unset).
    std::function<std::string(const metrics::ExpositionOptions&)> extra_metrics;
};

// Binds, logs "listening on HOST:PORT", serves until SIGTERM/SIGINT, then
// drains (server.drain_timeout_s). Returns the process exit code. Throws
// std::runtime_error when it cannot bind or set up TLS.
int run(const config::Config& cfg, metrics::Engine& engine, Hooks hooks);

// SIGHUP (reload) held blocked on this thread, and on threads it starts
// afterwards, or let through again: run_daemon holds it from start-up until
// run() handles it, so that one sent meanwhile is a reload, not the end.
void hold_reload_signal(bool held);

} // namespace relaymeter::server

#include "relaymeter/server/daemon.hpp"

#include <cstdio>
#include <iostream>
#include <memory>

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "relaymeter/alerts/monitor.hpp"
#include "relaymeter/config/cli.hpp"
#include "relaymeter/config/config.hpp"
#include "relaymeter/ledger/ledger.hpp"
#include "relaymeter/metrics/engine.hpp"
#include "relaymeter/server/notifier.hpp"
#include "relaymeter/server/server.hpp"

namespace relaymeter {

namespace {

config::Config load(const config::CliOptions& cli) {
    auto cfg = config::load_file(cli.config_path);
    config::apply_overrides(cfg, cli);
    return cfg;
}

void print_errors(const config::ConfigError& e) {
    for (const auto& line : e.errors()) std::fprintf(stderr, "%s\n", line.c_str());
}

} // namespace

int run_daemon(int argc, const char* const* argv) {
    config::CliOptions cli;
    try {
        cli = config::parse_cli(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "relaymeter: %s\n\n%s", e.what(), config::cli_help().c_str());
        return 2;
    }
    if (cli.help) {
        std::fputs(config::cli_help().c_str(), stdout);
        return 0;
    }
    if (cli.version) {
        std::printf("relaymeter %s\n", RELAYMETER_VERSION);
        return 0;
    }
    if (cli.check_config) {
        try {
            config::CliOptions check = cli;
            check.config_path = *cli.check_config;
            (void)load(check);
            std::puts("ok");
            return 0;
        } catch (const config::ConfigError& e) {
            print_errors(e);
            return 2;
        }
    }

    // SIGHUP asks for a reload. Until server::run installs its handler, its
    // default action would kill the daemon (during a long ledger replay, say):
    // it is held until then and delivered, as a reload, once the handler is there.
    server::hold_reload_signal(true);

    config::Config cfg;
    try {
        cfg = load(cli);
    } catch (const config::ConfigError& e) {
        print_errors(e);
        return 2;
    }

    // Logs go to stderr; the access log is one info line per request.
    auto logger = spdlog::stderr_logger_mt("relaymeter");
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %^%l%$ %v", spdlog::pattern_time_type::utc);
    spdlog::set_default_logger(logger);
    spdlog::set_level(spdlog::level::from_str(cfg.log.level));
    spdlog::flush_on(spdlog::level::warn);
    spdlog::flush_every(std::chrono::seconds(1));

    // The ledger: opened before anything starts (a path that cannot be opened
    // or created is a start-up error), replayed into the engine before serving.
    std::unique_ptr<ledger::Ledger> led;
    if (cfg.ledger.enabled) {
        ledger::Options lo;
        lo.path = cfg.ledger.path;
        lo.flush_interval = std::chrono::milliseconds(cfg.ledger.flush_interval_ms);
        lo.max_bytes = cfg.ledger.max_bytes;
        lo.keep = cfg.ledger.keep;
        lo.fsync = cfg.ledger.fsync;
        lo.buffer_bytes = cfg.ledger.buffer_bytes;
        try {
            led = std::make_unique<ledger::Ledger>(std::move(lo));
        } catch (const ledger::LedgerError& e) {
            std::fprintf(stderr, "%s: ledger.path: %s\n", cfg.source.c_str(), e.what());
            return 2;
        }
    }

    metrics::Engine engine({cfg.metrics.max_models, cfg.pricing, cfg.auth.enabled, cfg.metrics.max_keys});
    if (led) {
        try {
            spdlog::info("ledger: replaying {}", cfg.ledger.path);
            const auto st = ledger::replay(cfg.ledger.path, [&](const metrics::Record& r) { engine.record(r); });
            for (const auto& w : st.warnings) spdlog::warn("ledger: {}", w);
            if (st.bad_lines > st.warnings.size())
                spdlog::warn("ledger: {} more bad lines skipped", st.bad_lines - st.warnings.size());
            spdlog::info("ledger: replayed {} records from {} files ({:.1f} MiB) in {:.3f} s ({:.0f} lines/s); {} bad "
                         "lines skipped",
                         st.records, st.files, static_cast<double>(st.bytes) / (1 << 20), st.seconds,
                         st.seconds > 0 ? static_cast<double>(st.records + st.bad_lines) / st.seconds : 0.0,
                         st.bad_lines);
        } catch (const ledger::LedgerError& e) {
            std::fprintf(stderr, "%s: ledger.path: %s\n", cfg.source.c_str(), e.what());
            return 2;
        }
        // From now on every record is appended (on the recording thread, outside the engine's locks).
        engine.set_sink([l = led.get()](const metrics::Record& r, const metrics::Pricing& p) { l->append(r, p); });
    }
    // Alerts: evaluated on their own thread, notified from the notifier's own thread.
    server::Notifier notifier(cfg.alerts.webhooks);
    alerts::Monitor monitor(
        engine, cfg.alerts, [&](const alerts::Alert& a) { notifier.notify(a); },
        [&](const std::vector<alerts::Alert>& firing) { notifier.refresh(firing); });
    server::Hooks hooks;
    hooks.firing_alerts = [&] { return monitor.firing(); };
    if (led) {
        hooks.extra_metrics = [&led](const metrics::ExpositionOptions& o) {
            return ledger::render_prometheus(led->stats(), o);
        };
    }
    hooks.on_reload = [&] {
        // Prices, alert thresholds and webhooks, and the log level are reloaded; the rest needs a restart.
        try {
            auto fresh = load(cli);
            engine.set_prices(fresh.pricing);
            spdlog::set_level(spdlog::level::from_str(fresh.log.level));
            notifier.reconfigure(fresh.alerts.webhooks);
            monitor.reload(fresh.alerts);
            spdlog::info("SIGHUP: reloaded prices ({} models), alert thresholds ({} webhooks) and log level {} from {}",
                         fresh.pricing.size(), fresh.alerts.webhooks.size(), fresh.log.level, fresh.source);
        } catch (const config::ConfigError& e) {
            spdlog::error("SIGHUP: {} is not valid, keeping the running config:", cli.config_path);
            for (const auto& line : e.errors()) spdlog::error("  {}", line);
        }
    };
    // After the drain no request records any more: what the ledger holds is
    // written (and synced with fsync on) before the exit.
    const auto close_ledger = [&] {
        if (!led) return true;
        const bool ok = led->close();
        if (ok) spdlog::info("ledger: flushed and closed {}", cfg.ledger.path);
        return ok;
    };
    try {
        monitor.start();
        int rc = server::run(cfg, engine, hooks);
        monitor.stop();
        if (!close_ledger() && rc == 0) rc = 1;
        spdlog::default_logger()->flush();
        return rc;
    } catch (const std::exception& e) {
        spdlog::critical("cannot start: {}", e.what());
        close_ledger();
        spdlog::default_logger()->flush();
        return 1;
    }
}

} // namespace relaymeter

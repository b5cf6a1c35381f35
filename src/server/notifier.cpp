#include "relaymeter/server/notifier.hpp"

#include <algorithm>

#include <mutex>
#include <thread>

#include <spdlog/spdlog.h>

#include "relaymeter/alerts/webhook.hpp"
#include "relaymeter/net.hpp"
#include "relaymeter/upstream/pool.hpp"
#include "relaymeter/util/duration.hpp"

namespace relaymeter::server {

namespace {

// scheme://host:port — never the path or anything after it.
std::string shown(const config::WebhookConfig& w) {
    const bool v6 = w.host.find(':') != std::string::npos;
    return std::string(w.tls ? "https://" : "http://") + (v6 ? "[" + w.host + "]" : w.host) + ":" +
           std::to_string(w.port);
}

struct Target {
    explicit Target(config::WebhookConfig c) : cfg(std::move(c)), name(shown(cfg)), target(alerts::webhook_target(cfg)) {}
    const config::WebhookConfig cfg;
    const std::string name;
    const std::string target;
    alerts::BoundedQueue<std::string> queue{Notifier::kQueueCapacity}; // bodies; guarded by Impl::mu
    bool busy = false;                                                  // a drain coroutine runs; guarded by Impl::mu
};

} // namespace

struct Notifier::Impl {
    asio::io_context io{1};
    asio::executor_work_guard<asio::io_context::executor_type> work = asio::make_work_guard(io);
    std::unique_ptr<ssl::context> tls; // made by the first https delivery (notifier thread only)
    std::string generator_url;
    std::mutex mu;
    std::vector<std::shared_ptr<Target>> targets; // guarded by mu
    std::thread thread;

    void enqueue(const std::shared_ptr<Target>& t, std::string body);
    void start_drain(const std::shared_ptr<Target>& t); // under mu
    awaitable<void> drain(std::shared_ptr<Target> t);
    awaitable<void> deliver(const Target& t, const std::string& body);
    // One attempt: the HTTP status, or 0 with `why` set on a transport failure.
    awaitable<int> post_once(const Target& t, const std::string& body, std::string& why);
};

void Notifier::Impl::enqueue(const std::shared_ptr<Target>& t, std::string body) {
    // Under mu.
    if (t->queue.push(std::move(body))) {
        spdlog::warn("webhook {}: queue full ({} notifications), dropped the oldest", t->name, t->queue.capacity());
    }
    start_drain(t);
}

void Notifier::Impl::start_drain(const std::shared_ptr<Target>& t) {
    if (t->busy || t->queue.empty()) return;
    t->busy = true;
    asio::post(io, [this, t] { asio::co_spawn(io, drain(t), asio::detached); });
}

awaitable<void> Notifier::Impl::drain(std::shared_ptr<Target> t) {
    for (;;) {
        std::string body;
        {
            const std::lock_guard lock(mu);
            if (t->queue.empty()) {
                t->busy = false;
                co_return;
            }
            body = t->queue.pop();
        }
        try {
            co_await deliver(*t, body);
        } catch (const std::exception& e) {
            spdlog::warn("webhook {}: {}", t->name, e.what());
        }
    }
}

awaitable<void> Notifier::Impl::deliver(const Target& t, const std::string& body) {
    std::string why;
    for (int attempt = 1; attempt <= alerts::kMaxAttempts; ++attempt) {
        if (attempt > 1) {
            steady_timer timer(io, std::chrono::milliseconds(alerts::backoff_ms(attempt - 1)));
            error_code ec;
            co_await timer.async_wait(asio::redirect_error(use_awaitable, ec));
        }
        why.clear();
        const int status = co_await post_once(t, body, why);
        if (status >= 200 && status < 300) {
            spdlog::debug("webhook {}: delivered (HTTP {})", t.name, status);
            co_return;
        }
        if (status != 0) why = "HTTP " + std::to_string(status);
        if (status != 0 && !alerts::retryable_status(status)) {
            spdlog::warn("webhook {}: rejected the notification ({}), not retried", t.name, why);
            co_return;
        }
        if (attempt < alerts::kMaxAttempts) {
            spdlog::info("webhook {}: attempt {} failed ({}), retrying", t.name, attempt, why);
        }
    }
    spdlog::warn("webhook {}: giving up after {} attempts ({})", t.name, alerts::kMaxAttempts, why);
}

awaitable<int> Notifier::Impl::post_once(const Target& t, const std::string& body, std::string& why) {
    error_code ec;
    tcp::resolver resolver(io);
    const auto results =
        co_await resolver.async_resolve(t.cfg.host, std::to_string(t.cfg.port), asio::redirect_error(use_awaitable, ec));
    if (ec) {
        why = "resolve: " + ec.message();
        co_return 0;
    }

    http::request<http::string_body> req{http::verb::post, t.target, 11};
    const bool default_port = t.cfg.port == (t.cfg.tls ? 443 : 80);
    const bool v6 = t.cfg.host.find(':') != std::string::npos;
    std::string host = v6 ? "[" + t.cfg.host + "]" : t.cfg.host;
    if (!default_port) host += ":" + std::to_string(t.cfg.port);
    req.set(http::field::host, host);
    req.set(http::field::content_type, "application/json");
    req.set(http::field::user_agent, "relaymeter/" RELAYMETER_VERSION);
    req.keep_alive(false);
    req.body() = body;
    req.prepare_payload();

    beast::flat_buffer buf;
    http::response_parser<http::string_body> parser;
    parser.body_limit(1024 * 1024);

    tcp_stream stream(io);
    stream.expires_after(seconds(t.cfg.timeout_s)); // the whole attempt
    co_await stream.async_connect(results, asio::redirect_error(use_awaitable, ec));
    if (ec) {
        why = "connect: " + ec.message();
        co_return 0;
    }
    if (!t.cfg.tls) {
        co_await http::async_write(stream, req, asio::redirect_error(use_awaitable, ec));
        if (!ec) co_await http::async_read(stream, buf, parser, asio::redirect_error(use_awaitable, ec));
        error_code ignored; // (not `ec`: it holds why the exchange failed, a timeout say)
        stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    } else {
        // Made on first use (on this thread): initialising OpenSSL costs
        // about 4 MiB of resident memory that a daemon without https
        // webhooks need not pay.
        if (!tls) tls = upstream::make_tls_context(config::UpstreamConfig{}); // system trust store, peer verified
        beast::ssl_stream<tcp_stream> tls_stream(std::move(stream), *tls);
        if (!SSL_set_tlsext_host_name(tls_stream.native_handle(), t.cfg.host.c_str())) {
            why = "TLS: cannot set SNI";
            co_return 0;
        }
        tls_stream.set_verify_callback(ssl::host_name_verification(t.cfg.host));
        co_await tls_stream.async_handshake(ssl::stream_base::client, asio::redirect_error(use_awaitable, ec));
        if (!ec) co_await http::async_write(tls_stream, req, asio::redirect_error(use_awaitable, ec));
        if (!ec) co_await http::async_read(tls_stream, buf, parser, asio::redirect_error(use_awaitable, ec));
        error_code ignored;
        beast::get_lowest_layer(tls_stream).socket().shutdown(tcp::socket::shutdown_both, ignored);
    }
    if (ec && !parser.is_header_done()) {
        why = ec == beast::error::timeout ? "timed out" : ec.message();
        co_return 0;
    }
    co_return static_cast<int>(parser.get().result_int());
}

Notifier::Notifier(std::vector<config::WebhookConfig> webhooks, std::string generator_url)
    : impl_(std::make_unique<Impl>()) {
    impl_->generator_url = std::move(generator_url);
    reconfigure(std::move(webhooks));
    impl_->thread = std::thread([impl = impl_.get()] {
        for (;;) {
            try {
                impl->io.run();
                return;
            } catch (const std::exception& e) {
                spdlog::error("notifier: {}", e.what());
            }
        }
    });
}

Notifier::~Notifier() {
    impl_->work.reset();
    impl_->io.stop();
    if (impl_->thread.joinable()) impl_->thread.join();
}

void Notifier::reconfigure(std::vector<config::WebhookConfig> webhooks) {
    const std::lock_guard lock(impl_->mu);
    auto old = std::move(impl_->targets);
    std::vector<std::shared_ptr<Target>> fresh;
    for (auto& w : webhooks) {
        // A receiver still configured (same url and format) keeps what is
        // queued for it: a reload loses no notification.
        const auto same = std::find_if(old.begin(), old.end(), [&](const std::shared_ptr<Target>& t) {
            return t && t->cfg.url == w.url && t->cfg.format == w.format;
        });
        if (same != old.end() && (*same)->cfg.timeout_s == w.timeout_s) {
            fresh.push_back(std::move(*same));
            continue;
        }
        auto t = std::make_shared<Target>(std::move(w));
        if (same != old.end()) {
            // Only its timeout changed: the queue moves to the new settings.
            while (!(*same)->queue.empty()) t->queue.push((*same)->queue.pop());
            impl_->start_drain(t);
            *same = nullptr;
        }
        fresh.push_back(std::move(t));
    }
    // Receivers no longer configured: what was queued for them is dropped (a
    // running drain finishes its current delivery).
    for (auto& t : old) {
        if (t) t->queue.clear();
    }
    impl_->targets = std::move(fresh);
}

void Notifier::notify(const alerts::Alert& a) {
    const std::lock_guard lock(impl_->mu);
    for (const auto& t : impl_->targets) impl_->enqueue(t, alerts::payload_for(t->cfg, a, impl_->generator_url));
}

void Notifier::refresh(const std::vector<alerts::Alert>& firing) {
    const std::lock_guard lock(impl_->mu);
    for (const auto& t : impl_->targets) {
        if (t->cfg.format != config::WebhookConfig::Format::alertmanager) continue;
        for (const auto& a : firing) impl_->enqueue(t, alerts::payload_for(t->cfg, a, impl_->generator_url));
    }
}

} // namespace relaymeter::server

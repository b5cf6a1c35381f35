#include "relaymeter/upstream/pool.hpp"

#include <sys/socket.h>

#include <cerrno>

#include "relaymeter/util/duration.hpp"

namespace relaymeter::upstream {

namespace {
// An idle upstream connection older than this is closed rather than reused:
// most servers drop idle keep-alive connections after 60 s or so, and a
// request written into a connection the peer is closing is lost.
constexpr auto kMaxIdle = std::chrono::seconds(30);
constexpr auto kResolveCache = std::chrono::seconds(30);
constexpr auto kTrustIdle = std::chrono::milliseconds(50);
constexpr auto kSweepEvery = std::chrono::seconds(5);
// A sweep makes at most this many syscalls (a MSG_PEEK or a close each), so
// that a pool of hundreds of idle connections does not stall the worker for a
// millisecond every kSweepEvery (it showed as the p99 of a stream's time to
// first chunk). The rest is looked at in further sweeps, kSweepBacklog apart.
constexpr std::size_t kSweepBatch = 16;
constexpr auto kSweepBacklog = std::chrono::milliseconds(500);
} // namespace

const char* to_string(ConnectError e) {
    switch (e) {
    case ConnectError::none: return "none";
    case ConnectError::resolve: return "resolve";
    case ConnectError::connect: return "connect";
    case ConnectError::tls: return "tls";
    case ConnectError::timeout: return "timeout";
    case ConnectError::pool_timeout: return "pool_timeout";
    case ConnectError::stopped: return "stopped";
    }
    return "unknown";
}

bool Connection::looks_alive() {
    auto& sock = tcp().socket();
    if (!sock.is_open()) return false;
    if (buffer_.size() != 0) return false;
    char c;
    ssize_t n = ::recv(sock.native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) return false;                              // orderly close
    if (n > 0) return false;                               // stray bytes (or a TLS alert): unusable
    return errno == EAGAIN || errno == EWOULDBLOCK;        // nothing to read: alive
}

Pool::Pool(asio::io_context& io, const config::UpstreamConfig& cfg, ssl::context* tls, unsigned limit)
    : io_(io), cfg_(cfg), tls_(tls), limit_(limit == 0 ? 1 : limit), sweep_timer_(io), resolver_(io) {}

Pool::~Pool() = default;

void Pool::close_all() {
    closed_ = true;
    sweep_timer_.cancel();
    for (auto& c : idle_) {
        error_code ec;
        c->tcp().socket().shutdown(tcp::socket::shutdown_both, ec);
        c->tcp().socket().close(ec);
    }
    open_ -= idle_.size();
    idle_.clear();
    for (auto& w : waiters_) w->cancel();
    waiters_.clear();
}

void Pool::wake_one() {
    while (!waiters_.empty()) {
        auto w = std::move(waiters_.front());
        waiters_.pop_front();
        if (w->cancel() > 0) return; // woke a live waiter
    }
}

void Pool::release(std::unique_ptr<Connection> conn, bool reusable) {
    if (!conn) return;
    if (reusable && !closed_ && conn->buffer().size() == 0) {
        conn->idle_since = clock::now();
        idle_.push_back(std::move(conn));
        if (!sweep_armed_) arm_sweep(kSweepEvery);
    } else {
        error_code ec;
        conn->tcp().socket().shutdown(tcp::socket::shutdown_both, ec);
        conn->tcp().socket().close(ec);
        --open_;
    }
    wake_one();
}

void Pool::arm_sweep(clock::duration after) {
    sweep_armed_ = true;
    sweep_timer_.expires_after(after);
    sweep_timer_.async_wait([this](const error_code& ec) {
        if (ec) return; // cancelled (close_all or the pool going away): `this` may be gone
        sweep_armed_ = false;
        const bool backlog = sweep();
        if (!idle_.empty() && !closed_) arm_sweep(backlog ? clock::duration(kSweepBacklog) : clock::duration(kSweepEvery));
    });
}

bool Pool::sweep() {
    const auto now = clock::now();
    const auto before = idle_.size();
    std::size_t syscalls = 0;
    bool backlog = false;
    // Oldest first (idle_ is LIFO); each connection is looked at once a round.
    std::erase_if(idle_, [&](std::unique_ptr<Connection>& conn) {
        const auto idle = now - conn->idle_since;
        if (idle < kTrustIdle || conn->swept_in == sweep_round_) return false;
        if (syscalls == kSweepBatch) {
            backlog = true;
            return false;
        }
        ++syscalls;
        conn->swept_in = sweep_round_;
        if (idle < kMaxIdle && conn->looks_alive()) return false;
        error_code ec;
        conn->tcp().socket().close(ec);
        return true;
    });
    if (!backlog) ++sweep_round_; // every idle connection has been looked at
    open_ -= before - idle_.size();
    if (idle_.size() != before) wake_one(); // a waiter may open a fresh connection now
    return backlog;
}

std::unique_ptr<Connection> Pool::take_idle(bool trust_recent) {
    if (closed_) return nullptr;
    const auto now = clock::now();
    while (!idle_.empty()) {
        auto conn = std::move(idle_.back());
        idle_.pop_back();
        // A connection used moments ago is taken as it is (saves a syscall
        // per request under load); one idle for longer is checked first.
        const auto idle = now - conn->idle_since;
        if (idle < kMaxIdle && ((trust_recent && idle < kTrustIdle) || conn->looks_alive())) return conn;
        error_code ec;
        conn->tcp().socket().close(ec);
        --open_;
    }
    return nullptr;
}

awaitable<Lease> Pool::acquire(clock::time_point deadline, bool trust_recent) {
    for (;;) {
        if (closed_) co_return Lease{nullptr, false, ConnectError::stopped, "shutting down"};
        if (auto conn = take_idle(trust_recent)) co_return Lease{std::move(conn), true, ConnectError::none, {}};
        if (open_ < limit_) {
            ++open_;
            Lease lease = co_await connect(deadline);
            if (!lease.conn) {
                --open_;
                wake_one();
            }
            co_return lease;
        }
        // At the limit: wait for a release (the timer is cancelled) or the deadline.
        auto timer = std::make_shared<steady_timer>(io_);
        timer->expires_at(deadline);
        waiters_.push_back(timer);
        error_code ec;
        co_await timer->async_wait(asio::redirect_error(use_awaitable, ec));
        if (!ec) co_return Lease{nullptr, false, ConnectError::pool_timeout,
                                 "no upstream connection became free (upstream.max_connections)"};
    }
}

awaitable<Lease> Pool::connect(clock::time_point deadline) {
    Lease lease;
    error_code ec;
    const auto now = clock::now();
    if (endpoints_.empty() || now >= endpoints_expiry_) {
        auto results = co_await resolver_.async_resolve(cfg_.host, std::to_string(cfg_.port),
                                                        asio::redirect_error(use_awaitable, ec));
        if (ec) {
            lease.error = ConnectError::resolve;
            lease.detail = "cannot resolve " + cfg_.host + ": " + ec.message();
            co_return lease;
        }
        endpoints_.assign(results.begin(), results.end());
        endpoints_expiry_ = now + kResolveCache;
    }

    const auto connect_deadline =
        std::min(deadline, now + seconds(cfg_.connect_timeout_s));
    tcp_stream tcp_s(io_);
    tcp_s.expires_at(connect_deadline);
    co_await tcp_s.async_connect(endpoints_, asio::redirect_error(use_awaitable, ec));
    if (ec) {
        lease.error = ec == beast::error::timeout ? ConnectError::timeout : ConnectError::connect;
        lease.detail = "cannot connect to " + cfg_.host + ":" + std::to_string(cfg_.port) + ": " + ec.message();
        endpoints_.clear(); // resolve again next time
        co_return lease;
    }
    tcp_s.socket().set_option(tcp::no_delay(true), ec);
    tcp_s.socket().non_blocking(true, ec); // the exchange writes directly first

    if (!cfg_.tls) {
        lease.conn = std::make_unique<Connection>(Connection::Stream(std::in_place_index<0>, std::move(tcp_s)));
        co_return lease;
    }

    tls_stream tls_s(std::move(tcp_s), *tls_);
    // SNI (not for IP literals) and host-name verification.
    error_code addr_ec;
    asio::ip::make_address(cfg_.host, addr_ec);
    if (addr_ec && !SSL_set_tlsext_host_name(tls_s.native_handle(), cfg_.host.c_str())) {
        lease.error = ConnectError::tls;
        lease.detail = "cannot set TLS SNI";
        co_return lease;
    }
    if (cfg_.tls_options.verify) {
        tls_s.set_verify_mode(ssl::verify_peer);
        tls_s.set_verify_callback(ssl::host_name_verification(cfg_.host));
    } else {
        tls_s.set_verify_mode(ssl::verify_none);
    }
    beast::get_lowest_layer(tls_s).expires_at(connect_deadline);
    co_await tls_s.async_handshake(ssl::stream_base::client, asio::redirect_error(use_awaitable, ec));
    if (ec) {
        lease.error = ec == beast::error::timeout ? ConnectError::timeout : ConnectError::tls;
        std::string reason = ec.message();
        const long verify = SSL_get_verify_result(tls_s.native_handle());
        if (verify != X509_V_OK) reason += std::string(" (") + X509_verify_cert_error_string(verify) + ")";
        lease.detail = "TLS handshake with " + cfg_.host + " failed: " + reason;
        co_return lease;
    }
    lease.conn = std::make_unique<Connection>(Connection::Stream(std::in_place_index<1>, std::move(tls_s)));
    co_return lease;
}

std::unique_ptr<ssl::context> make_tls_context(const config::UpstreamConfig& cfg) {
    auto ctx = std::make_unique<ssl::context>(ssl::context::tls_client);
    ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                     ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
    if (cfg.tls_options.verify) {
        if (!cfg.tls_options.ca_file.empty()) {
            ctx->load_verify_file(cfg.tls_options.ca_file); // throws with the reason on a bad file
        } else {
            ctx->set_default_verify_paths();
        }
        ctx->set_verify_mode(ssl::verify_peer);
    } else {
        ctx->set_verify_mode(ssl::verify_none);
    }
    // Resume TLS sessions across pooled connections.
    SSL_CTX_set_session_cache_mode(ctx->native_handle(), SSL_SESS_CACHE_CLIENT);
    return ctx;
}

} // namespace relaymeter::upstream

// Pooled keep-alive connections to the upstream relay, plain TCP or TLS.
// One Pool per worker thread (io_context): no locks, no sharing.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "relaymeter/config/config.hpp"
#include "relaymeter/net.hpp"

namespace relaymeter::upstream {

using clock = std::chrono::steady_clock;
using tls_stream = beast::ssl_stream<tcp_stream>;

class Connection {
public:
    using Stream = std::variant<tcp_stream, tls_stream>;

    // The read buffer starts at 16 KiB: Beast reads at most the buffer's free
    // capacity (512 bytes at first), which split even small responses into
    // several reads and writes.
    explicit Connection(Stream stream)
        : stream_(std::move(stream)), read_deadline_(tcp().get_executor()) {
        buffer_.reserve(16 * 1024);
    }

    Stream& stream() { return stream_; }
    tcp_stream& tcp() {
        return stream_.index() == 0 ? std::get<0>(stream_) : beast::get_lowest_layer(std::get<1>(stream_));
    }
    beast::flat_buffer& buffer() { return buffer_; }
    // The deadline of the exchange's reads on a plain connection.
    ReadDeadline& read_deadline() { return read_deadline_; }
    // True when nothing is readable on an idle connection: not closed by the
    // peer, no stray bytes (checked with a non-blocking MSG_PEEK, no syscall wait).
    bool looks_alive();

    clock::time_point idle_since{};
    std::uint64_t swept_in = 0; // the pool's sweep round that last looked at it

private:
    Stream stream_;
    beast::flat_buffer buffer_;
    ReadDeadline read_deadline_;
};

enum class ConnectError { none, resolve, connect, tls, timeout, pool_timeout, stopped };
const char* to_string(ConnectError e);

struct Lease {
    std::unique_ptr<Connection> conn;
    bool reused = false;
    ConnectError error = ConnectError::none;
    std::string detail; // human-readable reason when error != none (no secrets)
};

class Pool {
public:
    // `limit`: most connections (idle + busy) this pool opens at once.
    Pool(asio::io_context& io, const config::UpstreamConfig& cfg, ssl::context* tls, unsigned limit);
    ~Pool();

    // An idle live connection, or a new one (resolve, connect, TLS handshake
    // with SNI and host-name verification). Waits for a free slot when at the
    // limit, until `deadline`. `trust_recent`: see take_idle().
    awaitable<Lease> acquire(clock::time_point deadline, bool trust_recent = true);
    // An idle live connection when there is one, without suspending (the
    // common case under load: no coroutine frame); else null and acquire().
    // One used moments ago is taken unchecked unless !trust_recent; others
    // are checked (MSG_PEEK) for a close from the upstream first.
    std::unique_ptr<Connection> take_idle(bool trust_recent = true);
    // Give a connection back. reusable = the exchange ended cleanly with a
    // keep-alive response and nothing left unread; otherwise it is closed.
    void release(std::unique_ptr<Connection> conn, bool reusable);

    // Close idle connections (shutdown) and refuse new waits.
    void close_all();

    std::size_t open_count() const { return open_; }
    std::size_t idle_count() const { return idle_.size(); }

private:
    awaitable<Lease> connect(clock::time_point deadline);
    void wake_one();
    // Closes idle connections the peer has closed (or that are too old), so
    // that a quiet proxy does not hold half-closed sockets until its next
    // request; re-arms itself while connections are idle.
    void arm_sweep(clock::duration after);
    // True when connections were left for a further sweep (kSweepBatch).
    bool sweep();

    asio::io_context& io_;
    const config::UpstreamConfig& cfg_;
    ssl::context* tls_;
    const unsigned limit_;
    std::size_t open_ = 0;
    bool closed_ = false;
    std::vector<std::unique_ptr<Connection>> idle_; // LIFO: the warmest connection first
    std::deque<std::shared_ptr<steady_timer>> waiters_;
    steady_timer sweep_timer_;
    bool sweep_armed_ = false;
    std::uint64_t sweep_round_ = 1;
    tcp::resolver resolver_;
    std::vector<tcp::endpoint> endpoints_; // cached resolution
    clock::time_point endpoints_expiry_{};
};

// Make the TLS client context for the upstream: peer verification unless
// tls.verify is false, ca_file or the system trust store.
std::unique_ptr<ssl::context> make_tls_context(const config::UpstreamConfig& cfg);

} // namespace relaymeter::upstream

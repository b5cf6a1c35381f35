#include "relaymeter/server/server.hpp"

#include <openssl/crypto.h>
#include <sys/socket.h>

#include <atomic>
#include <csignal>
#include <condition_variable>
#include <limits>
#include <list>
#include <mutex>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "relaymeter/alerts/alert.hpp"
#include "relaymeter/metrics/exposition.hpp"
#include "relaymeter/server/dashboard.hpp"
#include "relaymeter/net.hpp"
#include "relaymeter/proxy/exchange.hpp"
#include "relaymeter/proxy/field.hpp"
#include "relaymeter/proxy/request.hpp"
#include "relaymeter/upstream/pool.hpp"
#include "relaymeter/usage/usage.hpp"
#include "relaymeter/util/duration.hpp"
#include "relaymeter/util/lease.hpp"

namespace relaymeter::server {

namespace {

using clock = std::chrono::steady_clock;
using reuse_port = asio::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>;

// Process-wide state shared by the workers (read-mostly).
struct Shared {
    const config::Config& cfg;
    metrics::Engine& engine;
    const Hooks& hooks;
    metrics::ExpositionOptions expo;
    ssl::context* tls = nullptr;
    std::string host_header;
    bool protect = false; // protected mode: only loopback clients

    std::atomic<bool> stopping{false};
    std::atomic<int> busy{0}; // sessions with a request in progress
    std::mutex mu{};
    std::condition_variable cv{};

    void busy_done() {
        if (busy.fetch_sub(1) == 1 && stopping.load()) {
            std::lock_guard lk(mu);
            cv.notify_all();
        }
    }
};

bool is_loopback(const asio::ip::address& a) {
    if (a.is_loopback()) return true;
    if (a.is_v6() && a.to_v6().is_v4_mapped()) return asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6()).is_loopback();
    return false;
}

bool constant_time_equal(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

// "Bearer X" -> "X" (case-insensitive scheme); empty when absent.
std::string_view bearer(std::string_view auth) {
    if (auth.size() > 7 && beast::iequals(auth.substr(0, 7), "bearer ")) {
        auth.remove_prefix(7);
        while (!auth.empty() && auth.front() == ' ') auth.remove_prefix(1);
        return auth;
    }
    return {};
}

// The value of `name` in the query string; nullopt when absent.
std::optional<std::string_view> query_param(std::string_view target, std::string_view name) {
    const auto q = target.find('?');
    if (q == std::string_view::npos) return std::nullopt;
    std::string_view query = target.substr(q + 1);
    while (!query.empty()) {
        const auto amp = query.find('&');
        const auto item = query.substr(0, amp);
        const auto eq = item.find('=');
        if (item.substr(0, eq) == name) return eq == std::string_view::npos ? std::string_view() : item.substr(eq + 1);
        if (amp == std::string_view::npos) break;
        query.remove_prefix(amp + 1);
    }
    return std::nullopt;
}

// ?window=SECONDS: an integer within [kMinWindow, kMaxWindow]; nullopt otherwise.
std::optional<std::chrono::seconds> parse_window(std::string_view text) {
    if (text.empty() || text.size() > 6) return std::nullopt;
    long value = 0;
    for (const char c : text) {
        if (c < '0' || c > '9') return std::nullopt;
        value = value * 10 + (c - '0');
    }
    const std::chrono::seconds w(value);
    if (w < metrics::Engine::kMinWindow || w > metrics::Engine::kMaxWindow) return std::nullopt;
    return w;
}

bool query_has(std::string_view target, std::string_view param) {
    auto q = target.find('?');
    if (q == std::string_view::npos) return false;
    std::string_view query = target.substr(q + 1);
    while (!query.empty()) {
        auto amp = query.find('&');
        auto item = query.substr(0, amp);
        if (item == param) return true;
        if (amp == std::string_view::npos) break;
        query.remove_prefix(amp + 1);
    }
    return false;
}

class Worker;

struct Session {
    tcp_stream stream;
    ReadDeadline deadline; // of the wait for the next request (server.idle_timeout_s)
    std::optional<proxy::RequestParser> parser; // of the request being handled
    bool unread = false; // the last request was not read to its end (refused body, bad head)
    bool idle = true;
    explicit Session(tcp_socket s) : stream(std::move(s)), deadline(stream.get_executor()) {}
};

// Why a /v1/ request is answered by relaymeter itself rather than forwarded.
struct Refusal {
    http::status status;
    std::string_view code;
    std::string message;
};

// A head relaymeter will not serve whatever its target, for /v1/ and admin
// requests alike: a transfer coding other than chunked alone would reach the
// upstream still encoded (Transfer-Encoding is hop-by-hop): 501, as nginx
// does (Content-Length together with Transfer-Encoding is a 400 from the
// parser); an HTTP/1.1 request without Host, or any with more than one, is a
// 400 (RFC 9112 3.2).
std::optional<Refusal> malformed_head(const proxy::Request& req) {
    proxy::TransferCodings te;
    std::size_t hosts = 0;
    for (const auto& f : req) { // one pass over the fields, for every request
        if (f.name() == http::field::transfer_encoding) te.add(f.value());
        else if (f.name() == http::field::host) ++hosts;
    }
    if (te.any() && !te.chunked_only()) {
        return Refusal{http::status::not_implemented, "unsupported_transfer_encoding",
                       "only the chunked transfer coding is supported"};
    }
    if (hosts > 1) return Refusal{http::status::bad_request, "invalid_host", "the request has more than one Host field"};
    if (hosts == 0 && req.version() >= 11) {
        return Refusal{http::status::bad_request, "missing_host", "an HTTP/1.1 request needs a Host field"};
    }
    return std::nullopt;
}

// The 413 of a declared (Content-Length) or read body over the limit, for
// /v1/ and admin requests alike.
Refusal body_too_large() {
    return {http::status::payload_too_large, "body_too_large", "request body exceeds server.max_request_body_bytes"};
}

class Worker {
public:
    Worker(Shared& shared, unsigned pool_limit)
        : shared_(shared),
          acceptor_(io_),
          pool_(io_, shared.cfg.upstream, shared.tls, pool_limit),
          pctx_{shared.cfg, shared.engine, pool_, shared.host_header} {}

    asio::io_context& io() { return io_; }

    // Binds; port 0 is replaced by the port of the first worker's acceptor.
    tcp::endpoint listen(tcp::endpoint ep) {
        acceptor_.open(ep.protocol());
        acceptor_.set_option(asio::socket_base::reuse_address(true));
        acceptor_.set_option(reuse_port(true));
        acceptor_.bind(ep);
        acceptor_.listen(asio::socket_base::max_listen_connections);
        return acceptor_.local_endpoint();
    }

    void start() { asio::co_spawn(io_, accept_loop(), asio::detached); }

    // On this worker's thread: stop accepting, close idle sessions.
    void begin_drain() {
        asio::post(io_, [this] {
            error_code ec;
            acceptor_.close(ec);
            for (auto* s : sessions_) {
                if (s->idle) s->stream.socket().close(ec);
            }
            pool_.close_all();
        });
    }

    void stop() { io_.stop(); }

private:
    awaitable<void> accept_loop();
    awaitable<void> session(tcp_socket sock);
    awaitable<bool> handle_one(Session& s, beast::flat_buffer& buf, bool local_client);
    awaitable<bool> admin(Session& s, proxy::Request& req);
    awaitable<bool> reply(Session& s, http::response<http::string_body>& res);
    awaitable<bool> reply_error(Session& s, http::status status, std::string_view code, std::string message,
                                unsigned version, std::string_view request_id = {});
    awaitable<bool> send_continue(Session& s, unsigned version);
    awaitable<void> linger_close(Session& s, beast::flat_buffer& buf);
    awaitable<bool> head_failed(Session& s, error_code ec, const beast::flat_buffer& buf, clock::time_point arrival);
    std::optional<Refusal> check_head(const proxy::Request& req,
                                      boost::optional<std::uint64_t> content_length,
                                      bool local_client, proxy::Origin& origin) const;
    static Refusal body_refusal(const error_code& ec);
    std::string meter_unparsed(int status, std::string_view note, std::string_view target,
                               const beast::flat_buffer& buf, clock::time_point arrival);

    // One thread runs each worker's context, and its sockets and timers are
    // touched only from that thread (begin_drain posts): the reactor's
    // per-descriptor locking is not needed (2% of the instructions per
    // request). Posting from other threads stays safe.
    asio::io_context io_{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
    Shared& shared_;
    tcp_acceptor acceptor_;
    upstream::Pool pool_;
    proxy::Context pctx_;
    std::list<Session*> sessions_;
};

awaitable<void> Worker::accept_loop() {
    for (;;) {
        error_code ec;
        tcp_socket sock = co_await acceptor_.async_accept(asio::redirect_error(use_awaitable, ec));
        if (ec) {
            if (shared_.stopping || ec == asio::error::operation_aborted || !acceptor_.is_open()) co_return;
            // Out of file descriptors or a transient error: back off briefly rather than spin.
            spdlog::warn("accept failed: {}", ec.message());
            steady_timer t(io_, std::chrono::milliseconds(50));
            co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
            continue;
        }
        asio::co_spawn(io_, session(std::move(sock)), asio::detached);
    }
}

awaitable<void> Worker::session(tcp_socket sock) {
    error_code ec;
    sock.set_option(tcp::no_delay(true), ec);
    sock.non_blocking(true, ec); // direct writes must never block the worker; async_read_exhausting needs it
    const auto remote = sock.remote_endpoint(ec);
    const bool local_client = !ec && is_loopback(remote.address());
    Session s(std::move(sock));
    auto it = sessions_.insert(sessions_.end(), &s);
    beast::flat_buffer buf;
    const auto& cfg = shared_.cfg.server;
    bool linger = false;

    for (;;) {
        if (shared_.stopping) break;
        if (buf.size() == 0) {
            // Idle keep-alive: wait for the first byte of the next request.
            s.idle = true;
            // The probe finds a client that half-closed with its last request
            // (ReadDeadline::arm): it is closed within kPeerClosedProbe, not at
            // the idle timeout.
            const auto now = std::chrono::steady_clock::now();
            s.deadline.arm(s.stream.socket(), now + seconds(cfg.idle_timeout_s), now + kPeerClosedProbe);
            const std::size_t n = co_await async_read_exhausting(s.stream.socket(), s.deadline, buf.prepare(4096),
                                                                 asio::redirect_error(use_awaitable, ec));
            s.deadline.disarm();
            s.idle = false;
            if (ec) break; // closed, idle timeout or drained
            buf.commit(n);
        }
        shared_.busy.fetch_add(1);
        bool keep = false;
        try {
            keep = co_await handle_one(s, buf, local_client);
        } catch (const std::exception& e) {
            spdlog::error("session error: {}", e.what());
        }
        shared_.busy_done();
        if (!keep) {
            linger = s.unread || buf.size() > 0;
            break;
        }
    }
    s.stream.socket().shutdown(tcp::socket::shutdown_send, ec);
    if (linger && !shared_.stopping) co_await linger_close(s, buf);
    s.stream.socket().close(ec);
    sessions_.erase(it);
}

// Lingering close, as nginx's lingering_close: when an answer ends the
// connection while the client may still be sending (a body refused before it
// was read, a head that could not be parsed), read and discard what comes
// until the client closes. Closing with its bytes unread would send a reset,
// and a reset can destroy the answer on its way or in the client's buffers
// before the client reads it. At most kLingerRead between reads and
// kLingerTotal in all; a draining daemon closes it at once (idle).
awaitable<void> Worker::linger_close(Session& s, beast::flat_buffer& buf) {
    constexpr auto kLingerRead = std::chrono::seconds(5);
    constexpr auto kLingerTotal = std::chrono::seconds(30);
    s.idle = true;
    const auto until = std::chrono::steady_clock::now() + kLingerTotal;
    error_code ec;
    // Once directly first: the client's FIN may have come with the last bytes
    // read, without a later edge (async_read_exhausting, net.hpp).
    std::size_t n = 0;
    read_now(s.stream.socket(), buf.prepare(16 * 1024), n, ec);
    while (!ec && std::chrono::steady_clock::now() < until) {
        buf.consume(buf.size());
        s.deadline.arm(s.stream.socket(), std::min(std::chrono::steady_clock::now() + kLingerRead, until));
        co_await async_read_exhausting(s.stream.socket(), s.deadline, buf.prepare(16 * 1024),
                                       asio::redirect_error(use_awaitable, ec));
        s.deadline.disarm();
    }
}

// Returns the record's request id ("" when not metered), for the answer.
std::string Worker::meter_unparsed(int status, std::string_view note, std::string_view target,
                                   const beast::flat_buffer& buf, clock::time_point arrival) {
    // A request whose head could not be parsed is metered only when its
    // request line shows it was for /v1/: the target the parser got (Beast
    // consumes the request line as soon as it has it, so a bad field after it
    // leaves only the fields in the buffer), else the raw bytes still buffered.
    if (target.empty()) {
        const std::string_view raw(static_cast<const char*>(buf.data().data()), buf.size());
        const auto sp = raw.find(' ');
        if (sp == std::string_view::npos) return {};
        target = proxy::origin_form(raw.substr(sp + 1));
    }
    if (target.substr(0, 4) != "/v1/") return {};
    const proxy::Origin origin{proxy::request_id({}), shared_.cfg.auth.enabled ? "none" : "", arrival};
    proxy::record_unread(pctx_, origin, status, note);
    return origin.request_id;
}

awaitable<bool> Worker::reply(Session& s, http::response<http::string_body>& res) {
    error_code ec;
    s.stream.expires_after(seconds(shared_.cfg.server.header_timeout_s));
    co_await http::async_write(s.stream, res, asio::redirect_error(use_awaitable, ec));
    co_return !ec && res.keep_alive();
}

// A request head that could not be read: metered when it was for /v1/,
// answered when there is still someone to answer.
awaitable<bool> Worker::head_failed(Session& s, error_code ec, const beast::flat_buffer& buf,
                                    clock::time_point arrival) {
    const std::string_view seen_target = s.parser->get().target();
    if (ec == http::error::header_limit) {
        const std::string rid = meter_unparsed(431, "header_too_large", seen_target, buf, arrival);
        spdlog::info("rejected a request head over server.max_header_bytes");
        co_await reply_error(s, http::status::request_header_fields_too_large, "header_too_large",
                             "request head exceeds server.max_header_bytes", 11, rid);
    } else if (ec == beast::error::timeout) {
        // Slow head (slow-loris): the stream closed the socket when its
        // deadline passed, so there is no 408 to send, as with nginx. The
        // record says 408 when the request line was for /v1/.
        meter_unparsed(408, "header_timeout", seen_target, buf, arrival);
        spdlog::info("closed a connection whose request head did not arrive within server.header_timeout_s");
    } else if (ec == http::error::partial_message || ec == asio::error::eof ||
               ec == asio::error::connection_reset) {
        // The client went away in the middle of its head.
        meter_unparsed(499, "client_closed", seen_target, buf, arrival);
    } else if (ec != http::error::end_of_stream && ec != asio::error::operation_aborted) {
        const std::string rid = meter_unparsed(400, "bad_request", seen_target, buf, arrival);
        spdlog::info("rejected a malformed request head: {}", ec.message());
        co_await reply_error(s, http::status::bad_request, "bad_request", "malformed HTTP request: " + ec.message(),
                             11, rid);
    }
    co_return false;
}

std::optional<Refusal> Worker::check_head(const proxy::Request& req,
                                          boost::optional<std::uint64_t> content_length,
                                          bool local_client, proxy::Origin& origin) const {
    const auto& cfg = shared_.cfg;
    if (auto malformed = malformed_head(req)) return malformed;
    if (shared_.protect && !local_client) {
        return Refusal{http::status::forbidden, "protected_mode",
                       "relaymeter spends its own upstream key and serves only loopback clients: configure "
                       "auth.keys or set server.protected_mode: false"};
    }
    if (cfg.auth.enabled) {
        const auto presented = bearer(req[http::field::authorization]);
        // Every key is compared, in constant time, whichever matches.
        const config::AuthKey* match = nullptr;
        for (const auto& k : cfg.auth.keys) {
            if (constant_time_equal(presented, k.key)) match = &k;
        }
        if (match == nullptr) return Refusal{http::status::unauthorized, "invalid_api_key", "missing or invalid relaymeter API key"};
        origin.key = match->name;
    }
    if (proxy::has_dot_segment(req.target())) {
        return Refusal{http::status::bad_request, "invalid_path",
                       "the request path has a '.' or '..' segment; relaymeter forwards only paths under /v1/"};
    }
    if (content_length && *content_length > cfg.server.max_request_body_bytes) return body_too_large();
    return std::nullopt;
}

Refusal Worker::body_refusal(const error_code& ec) {
    if (ec == http::error::body_limit) return body_too_large();
    if (ec == beast::error::timeout) return {http::status::request_timeout, "body_timeout", "request body not received in time"};
    // The client went away or sent a broken body: record it, answer if we still can.
    const bool gone = ec == http::error::end_of_stream || ec == http::error::partial_message || ec == asio::error::eof ||
                      ec == asio::error::connection_reset;
    if (gone) return {static_cast<http::status>(499), "client_closed", "malformed request body: " + ec.message()};
    return {http::status::bad_request, "bad_request", "malformed request body: " + ec.message()};
}

// The error answers and the interim 100 of handle_one, each in its own
// (rarely made) coroutine frame: as locals of handle_one they made its frame,
// allocated for every request, 2.3 KiB.
awaitable<bool> Worker::reply_error(Session& s, http::status status, std::string_view code, std::string message,
                                    unsigned version, std::string_view request_id) {
    auto res = proxy::error_response(status, code, message, version, false, request_id);
    co_return co_await reply(s, res);
}

awaitable<bool> Worker::send_continue(Session& s, unsigned version) {
    http::response<http::empty_body> cont{http::status::continue_, version};
    error_code ec;
    s.stream.expires_after(seconds(shared_.cfg.server.header_timeout_s));
    co_await http::async_write(s.stream, cont, asio::redirect_error(use_awaitable, ec));
    co_return !ec;
}

awaitable<bool> Worker::handle_one(Session& s, beast::flat_buffer& buf, bool local_client) {
    const auto arrival = clock::now();
    const auto& cfg = shared_.cfg;
    error_code ec;

    // The parser lives in the session, not in this coroutine's frame, which
    // is allocated for every request; it is let go when the request is done.
    // The request it fills is a reused one (its buffers keep their capacity).
    util::Lease<proxy::Request> request;
    auto& parser = s.parser.emplace(*request);
    std::size_t whole = 0; // bytes of a request parsed without Beast
    bool refused = false;  // answered without reading the rest: linger before the close
    struct Release {
        Session& s;
        const std::size_t& whole;
        const bool& refused;
        ~Release() {
            s.unread = refused || (whole == 0 && !s.parser->is_done());
            s.parser.reset();
        }
    } release{s, whole, refused};
    // A request that is all in the buffer already, in plain form (nearly
    // every request of an SDK), is parsed without Beast, in a third of the
    // instructions; any other goes to Beast's parser (proxy::parse_whole_request).
    boost::optional<std::uint64_t> whole_length;
    whole = proxy::parse_whole_request({static_cast<const char*>(buf.data().data()), buf.size()},
                                       cfg.server.max_header_bytes, cfg.server.max_request_body_bytes, *request,
                                       whole_length);
    buf.consume(whole);
    parser.header_limit(cfg.server.max_header_bytes);
    // The body limit is set once the head is in: Beast checks Content-Length
    // against it while finishing the head, and we answer that case ourselves
    // (413, metered) rather than as a malformed head.
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    // What is already buffered (usually the whole request) is parsed here:
    // async_read_header/async_read complete through the scheduler even when
    // no byte has to be read, a round trip per call. When that is not all,
    // the socket is read once directly before Beast waits for more: the
    // session's read may have taken the client's FIN or reset together with
    // the first bytes, which raises no later edge (async_read_exhausting,
    // net.hpp), and Beast's read would then wait for the header timeout.
    auto parse_buffered = [&](bool body) {
        if (whole) return;
        parser.eager(body);
        const auto done = [&] { return body ? parser.is_done() : parser.is_header_done(); };
        bool socket_read = false;
        for (;;) {
            while (buf.size() > 0 && !done()) {
                const std::size_t n = parser.put(buf.data(), ec);
                buf.consume(n);
                if (ec == http::error::need_more) {
                    ec = {};
                    break;
                }
                if (ec || n == 0) break;
            }
            if (ec || done() || socket_read) break;
            socket_read = true;
            std::size_t n = 0;
            if (!read_now(s.stream.socket(), buf.prepare(16 * 1024), n, ec)) break; // nothing yet: Beast waits
            buf.commit(n);
            if (ec) break; // end of stream or reset: the client went away
        }
    };
    const auto body_done = [&] { return whole > 0 || parser.is_done(); };
    parse_buffered(false);
    if (!ec && !whole && !parser.is_header_done()) {
        s.stream.expires_after(seconds(cfg.server.header_timeout_s));
        co_await http::async_read_header(s.stream, buf, parser, asio::redirect_error(use_awaitable, ec));
    }
    if (ec) co_return co_await head_failed(s, ec, buf, arrival);

    parser.body_limit(cfg.server.max_request_body_bytes);
    auto& req = *request;
    const auto content_length = whole ? whole_length : parser.content_length();
    const std::string_view target = req.target();
    if (target.substr(0, 4) != "/v1/") {
        if (auto r = malformed_head(req)) {
            co_await reply_error(s, r->status, r->code, std::move(r->message), req.version());
            co_return false;
        }
        // Admin endpoints and 404s: read (and bound) the body, never metered.
        if (content_length && *content_length > cfg.server.max_request_body_bytes) {
            Refusal r = body_too_large();
            co_await reply_error(s, r.status, r.code, std::move(r.message), req.version());
            co_return false;
        }
        parse_buffered(true);
        if (!ec && !body_done()) {
            s.stream.expires_after(seconds(cfg.server.header_timeout_s));
            co_await http::async_read(s.stream, buf, parser, asio::redirect_error(use_awaitable, ec));
        }
        if (ec) {
            if (ec == http::error::body_limit) {
                Refusal r = body_too_large();
                co_await reply_error(s, r.status, r.code, std::move(r.message), req.version());
            }
            co_return false;
        }
        co_return co_await admin(s, req);
    }

    // A /v1/ request: metered whatever happens from here on.
    shared_.engine.request_started();
    struct InFlight {
        metrics::Engine& e;
        ~InFlight() { e.request_finished(); }
    } in_flight{shared_.engine};

    proxy::Origin origin{proxy::request_id(req["X-Request-Id"]), cfg.auth.enabled ? "none" : "", arrival};
    const unsigned version = req.version();
    const bool keep_alive = req.keep_alive();

    // Refusals of the head, then of the body, all answered at one place (each
    // co_await of its own made the frame of this coroutine bigger).
    std::optional<Refusal> refusal = check_head(req, content_length, local_client, origin);
    if (!refusal) {
        parse_buffered(true);
        if (!ec && !body_done()) {
            // (An HTTP/1.0 client's expectation is ignored: RFC 9110 10.1.1.)
            if (version >= 11 && beast::iequals(req[http::field::expect], "100-continue")) {
                if (!co_await send_continue(s, version)) co_return false;
            }
            s.stream.expires_after(seconds(cfg.upstream.request_timeout_s));
            co_await http::async_read(s.stream, buf, parser, asio::redirect_error(use_awaitable, ec));
        }
        if (ec) refusal = body_refusal(ec);
    }
    if (refusal) {
        refused = true;
        co_return co_await proxy::reject(pctx_, s.stream, refusal->status, refusal->code, refusal->message, version,
                                         false, "none", origin);
    }
    const bool keep = co_await proxy::forward(pctx_, s.stream, req, origin);
    co_return keep && keep_alive;
}

awaitable<bool> Worker::admin(Session& s, proxy::Request& req) {
    const std::string_view target = req.target();
    const std::string_view path = target.substr(0, target.find('?'));
    const unsigned version = req.version();
    const bool keep_alive = req.keep_alive();
    const auto& cfg = shared_.cfg;

    auto text = [&](http::status st, std::string body, std::string_view type) {
        http::response<http::string_body> res{st, version};
        res.set(http::field::content_type, type);
        res.set(http::field::cache_control, "no-store");
        res.body() = std::move(body);
        res.keep_alive(keep_alive);
        res.prepare_payload();
        return res;
    };

    const bool known = path == "/metrics" || path == "/summary" || path == "/healthz" || path == "/alerts" ||
                       path == "/dashboard";
    if (!known) {
        auto res = proxy::error_response(http::status::not_found, "not_found",
                                         "no such endpoint; the API is under /v1/", version, keep_alive, {});
        co_return co_await reply(s, res);
    }
    if (req.method() != http::verb::get && req.method() != http::verb::head) {
        auto res = proxy::error_response(http::status::method_not_allowed, "method_not_allowed",
                                         "use GET", version, keep_alive, {});
        res.set(http::field::allow, "GET, HEAD");
        co_return co_await reply(s, res);
    }
    // /dashboard is static HTML with no figures in it: a browser cannot send a
    // bearer header on a page load, so the page is open and sends the token
    // (from its ?token= parameter) on its own /summary and /alerts requests.
    if (path != "/healthz" && path != "/dashboard" && !cfg.admin.token.empty() &&
        !constant_time_equal(bearer(req[http::field::authorization]), cfg.admin.token)) {
        auto res = proxy::error_response(http::status::unauthorized, "invalid_admin_token",
                                         "this endpoint needs the admin bearer token", version, keep_alive, {});
        res.set(http::field::www_authenticate, "Bearer");
        co_return co_await reply(s, res);
    }

    const auto firing = [&] {
        return shared_.hooks.firing_alerts ? shared_.hooks.firing_alerts() : std::vector<alerts::Alert>{};
    };

    http::response<http::string_body> res;
    if (path == "/healthz") {
        res = text(http::status::ok, "ok\n", "text/plain; charset=utf-8");
    } else if (path == "/metrics") {
        res = text(http::status::ok,
                   metrics::render_prometheus(shared_.engine.snapshot(), shared_.expo) +
                       alerts::render_prometheus(firing(), shared_.expo) +
                       (shared_.hooks.extra_metrics ? shared_.hooks.extra_metrics(shared_.expo) : std::string()),
                   "text/plain; version=0.0.4; charset=utf-8");
    } else if (path == "/alerts") {
        const nlohmann::json body = {{"alerts", alerts::to_json(firing())}};
        res = text(http::status::ok, body.dump(2) + "\n", "application/json");
    } else if (path == "/dashboard") {
        res = text(http::status::ok, std::string(dashboard_html()), "text/html; charset=utf-8");
    } else {
        // /summary, since start or over ?window=SECONDS.
        std::optional<std::chrono::seconds> window;
        if (const auto w = query_param(target, "window")) {
            window = parse_window(*w);
            if (!window) {
                auto bad = proxy::error_response(
                    http::status::bad_request, "bad_window",
                    "window must be a whole number of seconds from 60 to 3600 (minute resolution)", version,
                    keep_alive, {});
                co_return co_await reply(s, bad);
            }
        }
        const auto snap = window ? shared_.engine.snapshot_window(*window) : shared_.engine.snapshot();
        if (query_has(target, "format=table")) {
            res = text(http::status::ok, metrics::render_summary_table(snap), "text/plain; charset=utf-8");
        } else {
            auto body = metrics::render_summary(snap);
            if (window) {
                body["window_seconds"] = window->count();
                body["window_start"] = alerts::iso8601(snap.window_start);
            }
            body["alerts"] = alerts::to_json(firing());
            res = text(http::status::ok, body.dump(2) + "\n", "application/json");
        }
    }
    if (req.method() == http::verb::head) {
        const auto len = res.body().size();
        res.body().clear();
        res.content_length(len);
    }
    co_return co_await reply(s, res);
}

std::string host_header(const config::UpstreamConfig& u) {
    const bool v6 = u.host.find(':') != std::string::npos;
    std::string h = v6 ? "[" + u.host + "]" : u.host;
    if (u.port != (u.tls ? 443 : 80)) h += ":" + std::to_string(u.port);
    return h;
}

} // namespace

void hold_reload_signal(bool held) {
    sigset_t hup;
    sigemptyset(&hup);
    sigaddset(&hup, SIGHUP);
    pthread_sigmask(held ? SIG_BLOCK : SIG_UNBLOCK, &hup, nullptr);
}

int run(const config::Config& cfg, metrics::Engine& engine, Hooks hooks) {
    Shared shared{cfg, engine, hooks, {}, nullptr, host_header(cfg.upstream)};
    shared.expo.const_labels = cfg.metrics.labels;
    shared.expo.version = RELAYMETER_VERSION;
    shared.protect = cfg.server.protected_mode && !cfg.upstream.api_key.empty() && !cfg.auth.enabled;

    std::unique_ptr<ssl::context> tls;
    if (cfg.upstream.tls) {
        tls = upstream::make_tls_context(cfg.upstream);
        shared.tls = tls.get();
    }

    unsigned threads = cfg.server.threads ? cfg.server.threads : std::max(1u, std::thread::hardware_concurrency());
    const unsigned per_worker = std::max(1u, cfg.upstream.max_connections / threads);

    // Resolve the listen address.
    asio::io_context setup;
    tcp::resolver resolver(setup);
    auto results = resolver.resolve(cfg.server.listen_host, std::to_string(cfg.server.listen_port),
                                    tcp::resolver::passive);
    tcp::endpoint ep = results.begin()->endpoint();

    std::vector<std::unique_ptr<Worker>> workers;
    for (unsigned i = 0; i < threads; ++i) {
        workers.push_back(std::make_unique<Worker>(shared, per_worker));
        ep = workers.back()->listen(ep); // the first bind fixes the port when 0 was asked
    }
    const std::string shown = ep.address().is_v6() ? "[" + ep.address().to_string() + "]" : ep.address().to_string();
    spdlog::info("listening on {}:{} ({} threads), upstream {}", shown, ep.port(), threads, cfg.upstream.base_url);
    if (shared.protect) {
        spdlog::warn("protected mode: upstream.api_key is set and auth is off, so only loopback clients are served; "
                     "configure auth.keys or set server.protected_mode: false");
    }

    // Signals are handled on this thread.
    asio::io_context sig_io{1};
    asio::signal_set signals(sig_io, SIGTERM, SIGINT, SIGHUP);
    std::function<void(const error_code&, int)> on_signal = [&](const error_code& ec, int sig) {
        if (ec) return;
        if (sig == SIGHUP) {
            if (hooks.on_reload) hooks.on_reload();
            signals.async_wait(on_signal);
            return;
        }
        spdlog::info("signal {}: draining (up to {} s)", sig, cfg.server.drain_timeout_s);
        sig_io.stop();
    };
    signals.async_wait(on_signal);
    hold_reload_signal(false); // a SIGHUP held since start-up is delivered now, to the handler

    for (auto& w : workers) w->start();
    std::vector<std::thread> pool;
    for (auto& w : workers) {
        pool.emplace_back([&w] {
            for (;;) {
                try {
                    w->io().run();
                    return;
                } catch (const std::exception& e) {
                    spdlog::error("worker: {}", e.what());
                }
            }
        });
    }

    sig_io.run();
    // Draining: a second SIGTERM/SIGINT (a supervisor repeating itself) must
    // not kill the process mid-drain; the drain is bounded by drain_timeout_s.
    // (clear() restores the default action, so ignore right after it.)
    {
        error_code ignored;
        signals.clear(ignored);
        std::signal(SIGTERM, SIG_IGN);
        std::signal(SIGINT, SIG_IGN);
        std::signal(SIGHUP, SIG_IGN);
    }

    // Drain: stop accepting, close idle connections, let in-flight requests finish.
    shared.stopping = true;
    for (auto& w : workers) w->begin_drain();
    {
        std::unique_lock lk(shared.mu);
        const bool drained = shared.cv.wait_for(lk, std::chrono::duration<double>(cfg.server.drain_timeout_s),
                                                [&] { return shared.busy.load() == 0; });
        if (!drained) spdlog::warn("drain timeout: {} requests still in flight are cut off", shared.busy.load());
    }
    for (auto& w : workers) w->stop();
    for (auto& t : pool) t.join();
    workers.clear();
    spdlog::info("stopped");
    return 0;
}

} // namespace relaymeter::server

#include "relaymeter/proxy/exchange.hpp"

#include <array>
#include <cstdio>
#include <limits>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <type_traits>
#include <unordered_set>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "relaymeter/metrics/price_table.hpp"
#include "relaymeter/usage/encoded.hpp"
#include "relaymeter/usage/usage.hpp"
#include "relaymeter/util/duration.hpp"

namespace relaymeter::proxy {

namespace {

bool iequals(std::string_view a, std::string_view b) { return beast::iequals(a, b); }

// Hop-by-hop headers are dropped in both directions (RFC 9110 7.6.1).
template <bool isRequest>
void erase_hop_by_hop(http::header<isRequest, http::fields>& h) {
    // Connection may name further hop-by-hop headers.
    std::vector<std::string> named;
    for (auto [it, end] = h.equal_range(http::field::connection); it != end; ++it) {
        for (auto const& name : http::token_list{it->value()}) {
            if (!iequals(name, "close") && !iequals(name, "keep-alive")) named.emplace_back(name);
        }
    }
    for (const auto& name : named) h.erase(name);
    h.erase(http::field::connection);
    h.erase(http::field::keep_alive);
    h.erase(http::field::proxy_authorization);
    h.erase(http::field::proxy_authenticate);
    h.erase("Proxy-Connection");
    h.erase(http::field::te);
    h.erase(http::field::trailer);
    h.erase(http::field::transfer_encoding);
    h.erase(http::field::upgrade);
}

bool is_completions_path(std::string_view target) {
    auto q = target.find('?');
    auto path = target.substr(0, q);
    return path == "/v1/chat/completions" || path == "/v1/completions";
}

double since(clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); }

// Logs a model without a price entry once per process (a per-thread cache
// keeps the shared set off the path of later requests).
void note_unpriced(const std::string& model) {
    thread_local std::unordered_set<std::string> seen_here;
    if (seen_here.count(model)) return;
    if (seen_here.size() < 4096) seen_here.insert(model);
    static std::mutex mu;
    static std::unordered_set<std::string> logged;
    std::lock_guard lk(mu);
    if (logged.size() >= 4096 || !logged.insert(model).second) return;
    spdlog::warn("model '{}' has no entry in pricing: its requests cost 0 and are counted as unpriced", model);
}

// Everything known about one exchange, recorded when it ends.
struct Meter {
    Meter(Context& c, const Origin& o) : ctx(c), rid(o.request_id), key(o.key), arrival(o.arrival) {}
    Context& ctx;
    const std::string& rid;
    std::string_view key;
    clock::time_point arrival;
    std::string model = "none";
    std::shared_ptr<const metrics::PriceTable> prices;
    int status = 0;
    bool streamed = false;
    double ttft_s = -1;
    usage::Usage use;
    std::string upstream_rid;
    std::string_view note; // why relaymeter failed the request, if it did

    void finish() {
        metrics::Record r;
        r.model = model;
        r.key = key;
        r.request_id = rid;
        r.status = status;
        r.latency_s = since(arrival);
        r.ttft_s = ttft_s;
        r.streamed = streamed;
        r.usage = use;
        r.finished_at = std::chrono::system_clock::now();
        r.prices = prices;
        const double cost = ctx.engine.record(r);
        if (cost == 0 && model != "none" && prices && !prices->find(model)) note_unpriced(model);
        if (spdlog::should_log(spdlog::level::info)) {
            spdlog::info("access rid={} model={} status={} latency_ms={:.3f} in={} out={} cached={} reasoning={} "
                         "cost_usd={:.9g} streamed={} ttft_ms={:.3f} upstream_rid={}{}{}",
                         rid, model, status, r.latency_s * 1e3, use.input, use.output, use.cached_input,
                         use.reasoning, cost, streamed ? "yes" : "no", ttft_s < 0 ? 0.0 : ttft_s * 1e3,
                         upstream_rid.empty() ? "-" : upstream_rid, note.empty() ? "" : " error=", note);
        }
    }
};

template <class Stream>
beast::tcp_stream& lowest(Stream& s) {
    return beast::get_lowest_layer(s);
}

// Writes as much of `buffers` as the socket takes right now, without
// suspending: a request or a small response usually fits the socket buffer,
// and then no completion handler has to go round the scheduler. Returns the
// bytes written; `ec` is set only for a real error (not would_block).
template <class Buffers>
std::size_t write_now(tcp::socket& sock, const Buffers& buffers, error_code& ec) {
    if (!sock.non_blocking()) {
        sock.non_blocking(true, ec);
        if (ec) return 0;
    }
    const std::size_t n = sock.write_some(buffers, ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) ec = {};
    return ec ? 0 : n;
}

// write_now, then an asynchronous write of whatever is left.
template <class Buffers>
awaitable<void> write_all(beast::tcp_stream& stream, const Buffers& buffers, error_code& ec) {
    const std::size_t total = asio::buffer_size(buffers);
    const std::size_t n = write_now(stream.socket(), buffers, ec);
    if (ec || n == total) co_return;
    beast::buffers_suffix<Buffers> rest(buffers);
    rest.consume(n);
    co_await asio::async_write(stream, rest, asio::redirect_error(use_awaitable, ec));
}

// The request head as sent upstream (the fields after rewriting).
void serialize_request_head(std::string& out, const http::request_header<>& req) {
    out.clear();
    out.append(req.method_string()).push_back(' ');
    out.append(req.target()).append(" HTTP/1.1\r\n");
    for (auto const& f : req) out.append(f.name_string()).append(": ").append(f.value()).append("\r\n");
    out.append("\r\n");
}

// The client's response head: the upstream's status and headers less the
// hop-by-hop ones, plus our request id and the framing chosen for the client.
void build_head(std::string& out, const http::response_header<>& up, unsigned version, bool keep_length,
                bool chunked, bool keep_alive, std::string_view rid) {
    // Headers named by Connection are hop-by-hop too (rare: collected only then).
    std::vector<std::string_view> named;
    for (auto [it, end] = up.equal_range(http::field::connection); it != end; ++it)
        for (auto const& name : http::token_list{it->value()}) named.push_back(name);

    out.clear();
    out.append(version >= 11 ? "HTTP/1.1 " : "HTTP/1.0 ");
    out.append(std::to_string(up.result_int()));
    out.push_back(' ');
    out.append(up.reason());
    out.append("\r\n");
    for (auto const& f : up) {
        switch (f.name()) {
        case http::field::connection:
        case http::field::keep_alive:
        case http::field::proxy_authenticate:
        case http::field::proxy_authorization:
        case http::field::te:
        case http::field::trailer:
        case http::field::transfer_encoding:
        case http::field::upgrade:
            continue;
        case http::field::content_length:
            if (!keep_length) continue;
            break;
        default:
            if (beast::iequals(f.name_string(), "proxy-connection")) continue;
            break;
        }
        bool listed = false;
        for (auto n : named) listed |= beast::iequals(n, f.name_string());
        if (listed) continue;
        out.append(f.name_string()).append(": ").append(f.value()).append("\r\n");
    }
    out.append("X-Relaymeter-Request-Id: ").append(rid).append("\r\n");
    if (chunked) out.append("Transfer-Encoding: chunked\r\n");
    if (version >= 11 && !keep_alive) out.append("Connection: close\r\n");
    if (version < 11 && keep_alive) out.append("Connection: keep-alive\r\n");
    out.append("\r\n");
}

// A 16 KiB relay buffer from a per-thread free list: no allocation per
// exchange once warm, and nothing held by idle connections.
class RelayBuffer {
public:
    static constexpr std::size_t kSize = 16 * 1024;
    RelayBuffer() {
        auto& fl = free_list();
        if (fl.empty()) {
            buf_ = std::make_unique<char[]>(kSize);
        } else {
            buf_ = std::move(fl.back());
            fl.pop_back();
        }
    }
    ~RelayBuffer() {
        auto& fl = free_list();
        if (fl.size() < 64) fl.push_back(std::move(buf_));
    }
    RelayBuffer(const RelayBuffer&) = delete;
    RelayBuffer& operator=(const RelayBuffer&) = delete;
    char* data() { return buf_.get(); }
    static constexpr std::size_t size() { return kSize; }

private:
    static std::vector<std::unique_ptr<char[]>>& free_list() {
        thread_local std::vector<std::unique_ptr<char[]>> list;
        return list;
    }
    std::unique_ptr<char[]> buf_;
};

class Exchange {
public:
    Exchange(Context& ctx, beast::tcp_stream& client, Request& req, const Origin& origin)
        : ctx_(ctx), cfg_(ctx.cfg), client_(client), req_(req), meter_(ctx, origin) {}

    awaitable<bool> run();

private:
    template <class Stream>
    awaitable<void> relay(Stream& up);
    awaitable<void> fail(http::status status, std::string_view code, std::string message);
    // Writes what the client has not had yet: the response head (first call
    // only), `data` (chunk-framed when chunked), and the last chunk when
    // `last`, in one gather write. False when the client went away.
    awaitable<bool> send(std::string_view data, bool last);

    Context& ctx_;
    const config::Config& cfg_;
    beast::tcp_stream& client_;
    Request& req_;
    Meter meter_;
    unsigned client_version_ = 11;
    bool client_keep_alive_ = true;
    bool strip_ = false;
    bool chunked_out_ = false;
    bool reusable_ = false;
    bool head_sent_ = false;
    bool client_timed_out_ = false; // a write to the client hit its deadline
    std::string head_; // the client's response head, serialized
    upstream::Connection* conn_ = nullptr;
};

awaitable<void> Exchange::fail(http::status status, std::string_view code, std::string message) {
    meter_.status = static_cast<int>(status);
    spdlog::warn("rid={} {} ({})", meter_.rid, message, code);
    meter_.note = code;
    auto res = error_response(status, code, message, client_version_, client_keep_alive_, meter_.rid);
    client_.expires_after(seconds(cfg_.upstream.request_timeout_s));
    error_code ec;
    co_await http::async_write(client_, res, asio::redirect_error(use_awaitable, ec));
    if (ec) {
        meter_.status = 499;
        client_keep_alive_ = false;
    }
}

awaitable<bool> Exchange::send(std::string_view data, bool last) {
    std::array<asio::const_buffer, 5> bufs;
    std::size_t n = 0;
    if (!head_sent_) bufs[n++] = asio::buffer(head_);
    char size_line[24];
    if (!data.empty()) {
        if (chunked_out_) {
            const int len = std::snprintf(size_line, sizeof size_line, "%zx\r\n", data.size());
            bufs[n++] = asio::buffer(size_line, static_cast<std::size_t>(len));
            bufs[n++] = asio::buffer(data);
            bufs[n++] = asio::buffer("\r\n", 2);
        } else {
            bufs[n++] = asio::buffer(data);
        }
    }
    if (last && chunked_out_) bufs[n++] = asio::buffer("0\r\n\r\n", 5);
    if (n == 0) co_return true;
    head_sent_ = true;
    error_code ec;
    const std::span<const asio::const_buffer> all(bufs.data(), n);
    const std::size_t total = asio::buffer_size(all);
    const std::size_t done = write_now(client_.socket(), all, ec);
    if (!ec && done < total) {
        // The client takes the bytes slower than they come. Each wait for it
        // is bounded (a stream's by streaming.idle_timeout_s): a client that
        // stops reading is dropped, never buffered for, while one that reads
        // on keeps its response (the upstream side has its own deadline).
        client_.expires_after(seconds(meter_.streamed ? cfg_.streaming.idle_timeout_s : cfg_.upstream.request_timeout_s));
        beast::buffers_suffix<std::span<const asio::const_buffer>> rest(all);
        rest.consume(done);
        co_await asio::async_write(client_, rest, asio::redirect_error(use_awaitable, ec));
        if (ec == beast::error::timeout) client_timed_out_ = true;
    }
    co_return !ec;
}

awaitable<bool> Exchange::run() {
    client_version_ = req_.version();
    client_keep_alive_ = req_.keep_alive();

    const auto info = usage::inspect_request(req_.body());
    meter_.model = info.model;
    meter_.prices = ctx_.engine.prices();

    if (cfg_.streaming.inject_include_usage && info.stream && !info.include_usage &&
        is_completions_path(req_.target())) {
        std::string edited;
        if (usage::inject_include_usage(req_.body(), edited)) {
            req_.body() = std::move(edited);
            strip_ = true;
        }
    }

    // Rewrite the request for the upstream.
    const std::string_view target = req_.target();
    std::string up_target;
    up_target.reserve(cfg_.upstream.base_path.size() + target.size());
    up_target.append(cfg_.upstream.base_path).append(target.substr(3)); // "/v1/x?y" -> base_path + "/x?y"
    req_.target(up_target);
    erase_hop_by_hop(req_.base());
    req_.erase(http::field::expect);
    // Identity encoding: the usage block must be readable in the response.
    req_.erase(http::field::accept_encoding);
    req_.set(http::field::host, ctx_.host_header);
    if (!cfg_.upstream.api_key.empty()) {
        req_.set(http::field::authorization, "Bearer " + cfg_.upstream.api_key);
    } else if (cfg_.auth.enabled) {
        req_.erase(http::field::authorization); // the client's relaymeter key is not the upstream's
    }
    req_.set("X-Request-Id", meter_.rid);
    req_.version(11);
    req_.keep_alive(true);
    req_.prepare_payload();

    const auto deadline = meter_.arrival + seconds(cfg_.upstream.request_timeout_s);
    auto lease = co_await ctx_.pool.acquire(deadline);
    if (!lease.conn) {
        using E = upstream::ConnectError;
        if (lease.error == E::timeout || lease.error == E::pool_timeout) {
            co_await fail(http::status::gateway_timeout, "upstream_timeout", lease.detail);
        } else if (lease.error == E::tls) {
            co_await fail(http::status::bad_gateway, "upstream_tls_error", lease.detail);
        } else if (lease.error == E::stopped) {
            co_await fail(http::status::service_unavailable, "shutting_down", lease.detail);
        } else {
            co_await fail(http::status::bad_gateway, "upstream_unreachable", lease.detail);
        }
        meter_.finish();
        co_return client_keep_alive_;
    }

    conn_ = lease.conn.get();
    co_await std::visit([this](auto& s) { return relay(s); }, lease.conn->stream());
    ctx_.pool.release(std::move(lease.conn), reusable_);
    meter_.finish();
    co_return client_keep_alive_;
}

template <class Stream>
awaitable<void> Exchange::relay(Stream& up) {
    error_code ec;
    const auto deadline = meter_.arrival + seconds(cfg_.upstream.request_timeout_s);
    auto& up_tcp = lowest(up);

    up_tcp.expires_at(deadline);
    if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
        std::string head;
        serialize_request_head(head, req_.base());
        const std::array<asio::const_buffer, 2> bufs{asio::buffer(head), asio::buffer(req_.body())};
        co_await write_all(up, bufs, ec);
    } else {
        co_await http::async_write(up, req_, asio::redirect_error(use_awaitable, ec));
    }
    if (ec) {
        // Some bytes may have reached the upstream: never retried.
        if (ec == beast::error::timeout)
            co_await fail(http::status::gateway_timeout, "upstream_timeout", "upstream did not accept the request in time");
        else
            co_await fail(http::status::bad_gateway, "upstream_unreachable", "sending the request upstream failed: " + ec.message());
        co_return;
    }

    http::response_parser<http::buffer_body> parser;
    // Not boost::none: Beast 1.74 compares a Content-Length against an empty
    // optional as "over the limit" (basic_parser.ipp, finish_header).
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    parser.header_limit(64 * 1024);
    if (req_.method() == http::verb::head) parser.skip(true);
    co_await http::async_read_header(up, conn_->buffer(), parser, asio::redirect_error(use_awaitable, ec));
    if (ec) {
        if (ec == beast::error::timeout)
            co_await fail(http::status::gateway_timeout, "upstream_timeout",
                          "upstream did not answer within upstream.request_timeout_s");
        else
            co_await fail(http::status::bad_gateway, "upstream_bad_response", "reading the upstream response failed: " + ec.message());
        co_return;
    }

    auto& ures = parser.get();
    meter_.status = ures.result_int();
    if (auto it = ures.find("x-request-id"); it != ures.end()) meter_.upstream_rid = std::string(it->value().substr(0, 128));
    const bool sse = beast::iequals(ures[http::field::content_type].substr(0, 17), "text/event-stream");
    meter_.streamed = sse;
    const bool upstream_keep_alive = ures.keep_alive();
    // The upstream compressed although it was not asked to: the client gets
    // the coded bytes unchanged (nothing can be stripped from them) and the
    // usage is read from a copy inflated on the side.
    auto coding = usage::ContentCoding::identity;
    if (auto it = ures.find(http::field::content_encoding); it != ures.end()) {
        coding = usage::content_coding(it->value());
        if (coding != usage::ContentCoding::identity) strip_ = false;
    }

    // Framing towards the client: the upstream's Content-Length when the bytes
    // are relayed unchanged, chunked otherwise (close-delimited for HTTP/1.0).
    const bool body_expected = !parser.is_done();
    bool keep_length = true;
    if (body_expected && (strip_ || !ures.has_content_length())) {
        keep_length = false;
        if (client_version_ >= 11)
            chunked_out_ = true;
        else
            client_keep_alive_ = false;
    }
    build_head(head_, ures, client_version_, keep_length, chunked_out_, client_keep_alive_, meter_.rid);

    // Only the scanner this body needs (each allocates its state).
    std::optional<usage::JsonUsageScanner> json;
    std::optional<usage::StreamMeter> stream;
    std::optional<usage::EncodedBodyMeter> coded;
    if (coding != usage::ContentCoding::identity)
        coded.emplace(coding, sse);
    else if (sse)
        stream.emplace(strip_);
    else
        json.emplace();
    std::string out;
    RelayBuffer buf;
    const auto stream_deadline = cfg_.streaming.total_timeout_s > 0
                                     ? meter_.arrival + seconds(cfg_.streaming.total_timeout_s)
                                     : clock::time_point::max();
    bool client_ok = true;
    error_code up_ec;
    if (!body_expected) client_ok = co_await send({}, true);
    while (client_ok && !parser.is_done()) {
        parser.get().body().data = buf.data();
        parser.get().body().size = buf.size();
        if (sse) up_tcp.expires_at(std::min(clock::now() + seconds(cfg_.streaming.idle_timeout_s), stream_deadline));
        co_await http::async_read_some(up, conn_->buffer(), parser, asio::redirect_error(use_awaitable, up_ec));
        if (up_ec == http::error::need_buffer) up_ec = {};
        if (up_ec) break;
        const std::size_t n = buf.size() - parser.get().body().size;
        const bool last = parser.is_done();
        std::string_view data(buf.data(), n);
        if (coded) {
            coded->feed(data);
            if (last) coded->finish();
        } else if (sse) {
            out.clear();
            stream->feed(data, out);
            if (last) stream->finish(out);
            data = out;
        } else {
            json->feed(data);
        }
        if (!data.empty() || last) {
            client_ok = co_await send(data, last);
            if (client_ok && sse && meter_.ttft_s < 0 && (coded ? coded->saw_content() : stream->saw_content()))
                meter_.ttft_s = since(meter_.arrival);
        }
    }
    meter_.use = coded ? coded->usage() : sse ? stream->usage() : json->result();
    if (coded && !coded->problem().empty()) {
        // Once per response: the bytes were relayed as they came, the usage
        // is what could be read (usually none).
        spdlog::warn("rid={} {}-coded response body not readable ({}): relayed unchanged, usage not metered",
                     meter_.rid, usage::sanitize_model(ures[http::field::content_encoding].substr(0, 32)),
                     coded->problem());
    }

    if (!client_ok) {
        // The client went away: the upstream connection is dropped, not pooled.
        meter_.status = 499;
        meter_.note = client_timed_out_ ? "client_timeout" : "client_closed";
        client_keep_alive_ = false;
        co_return;
    }
    if (up_ec) {
        meter_.note = up_ec == beast::error::timeout ? "upstream_timeout_mid_response" : "upstream_failed_mid_response";
        if (!head_sent_) {
            // Nothing reached the client yet: it gets a proper error.
            co_await fail(up_ec == beast::error::timeout ? http::status::gateway_timeout : http::status::bad_gateway,
                          meter_.note, "the upstream failed while sending its response: " + up_ec.message());
            co_return;
        }
        // The client already has its status line: end its response and close.
        meter_.status = 502;
        spdlog::warn("rid={} upstream failed after the response began: {}", meter_.rid, up_ec.message());
        client_keep_alive_ = false;
        if (chunked_out_) co_await send({}, true);
        co_return;
    }
    reusable_ = upstream_keep_alive && parser.is_done();
}

} // namespace

std::string request_id(std::string_view client_value) {
    if (!client_value.empty() && client_value.size() <= 128) {
        bool sane = true;
        for (unsigned char c : client_value) {
            if (c < 0x21 || c > 0x7e) { sane = false; break; }
        }
        if (sane) return std::string(client_value);
    }
    // 128 bits per id: a per-thread splitmix64 stream seeded from the OS.
    thread_local std::uint64_t state = (static_cast<std::uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
    auto next = [] {
        std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    };
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out(32, '0');
    for (int half = 0; half < 2; ++half) {
        std::uint64_t v = next();
        for (int i = 15; i >= 0; --i, v >>= 4) out[static_cast<std::size_t>(half * 16 + i)] = kHex[v & 15];
    }
    return out;
}

http::response<http::string_body> error_response(http::status status, std::string_view code,
                                                 std::string_view message, unsigned version, bool keep_alive,
                                                 std::string_view rid) {
    nlohmann::json body = {{"error", {{"message", message}, {"type", "relaymeter_error"}, {"code", code}}}};
    http::response<http::string_body> res{status, version};
    res.set(http::field::content_type, "application/json");
    if (!rid.empty()) res.set("X-Relaymeter-Request-Id", rid);
    res.body() = body.dump();
    res.body() += '\n';
    res.keep_alive(keep_alive);
    res.prepare_payload();
    return res;
}

awaitable<bool> forward(Context& ctx, beast::tcp_stream& client, Request& req, const Origin& origin) {
    Exchange ex(ctx, client, req, origin);
    co_return co_await ex.run();
}

awaitable<bool> reject(Context& ctx, beast::tcp_stream& client, http::status status, std::string_view code,
                       std::string_view message, unsigned version, bool keep_alive, std::string model,
                       const Origin& origin) {
    Meter m(ctx, origin);
    m.model = std::move(model);
    m.status = static_cast<int>(status);
    m.note = code;
    if (!client.socket().is_open()) {
        // Closed by its deadline (a body that never came): nothing can be
        // sent, and the record keeps the status (408 rather than 499).
        m.finish();
        co_return false;
    }
    auto res = error_response(status, code, message, version, keep_alive, origin.request_id);
    client.expires_after(seconds(ctx.cfg.server.header_timeout_s));
    error_code ec;
    co_await http::async_write(client, res, asio::redirect_error(use_awaitable, ec));
    if (ec) m.status = 499;
    m.finish();
    co_return keep_alive && !ec;
}

} // namespace relaymeter::proxy

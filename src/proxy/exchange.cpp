#include "relaymeter/proxy/exchange.hpp"
#include "relaymeter/proxy/field.hpp"
#include "relaymeter/proxy/request.hpp"
#include "relaymeter/proxy/response.hpp"

#include <array>
#include <charconv>
#include <cstdio>
#include <deque>
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
#include "relaymeter/util/lease.hpp"

namespace relaymeter::proxy {

namespace {

using namespace std::string_view_literals;

// True for the fields that are hop-by-hop in either direction (RFC 9110
// 7.6.1), besides those a Connection header names. (Proxy-Connection has an
// id of its own in Beast's table, as field_id gives it.)
bool hop_by_hop(http::field f) {
    switch (f) {
    case http::field::connection:
    case http::field::keep_alive:
    case http::field::proxy_authenticate:
    case http::field::proxy_authorization:
    case http::field::proxy_connection:
    case http::field::te:
    case http::field::trailer:
    case http::field::transfer_encoding:
    case http::field::upgrade:
        return true;
    default:
        return false;
    }
}

// The field names a Connection header lists (besides close and keep-alive):
// hop-by-hop too. Rare, so only looked at when a Connection header is there.
template <class Fields>
bool named_by_connection(const Fields& fields, std::string_view name) {
    for (auto const& f : fields) {
        if (f.name() != http::field::connection) continue;
        for (auto const& token : http::token_list{f.value()})
            if (beast::iequals(token, name)) return true;
    }
    return false;
}

// The field's line as it stands in the head it was parsed from, when that
// is exactly "Name: value\r\n" (one space, no trailing blank, not folded:
// Beast copies a folded value elsewhere), so that it can be copied as it is;
// empty otherwise. The views must come from a complete parsed head.
std::string_view head_line(std::string_view name, std::string_view value) {
    const char* n = name.data();
    if (value.data() != n + name.size() + 2 || n[name.size()] != ':' || n[name.size() + 1] != ' ') return {};
    const char* end = value.data() + value.size();
    if (end[0] != '\r' || end[1] != '\n') return {};
    return {n, name.size() + 2 + value.size() + 2};
}

// Appends a head's field lines, adjacent ones in one copy: a forwarded head
// is mostly the received one less a few fields, so it takes a handful of
// copies rather than four appends per field.
class LineWriter {
public:
    explicit LineWriter(std::string& out) : out_(out) {}
    void field(std::string_view name, std::string_view value) {
        const auto line = head_line(name, value);
        if (line.empty()) {
            flush();
            out_.append(name).append(": "sv).append(value).append("\r\n"sv);
        } else if (run_.data() + run_.size() == line.data()) {
            run_ = {run_.data(), run_.size() + line.size()};
        } else {
            flush();
            run_ = line;
        }
    }
    // Call once the fields are done.
    void flush() {
        out_.append(run_);
        run_ = {};
    }

private:
    std::string& out_;
    std::string_view run_;
};

// The request head as sent upstream, serialized from the client's head
// without changing it: the target under upstream.base_path, the client's
// fields less the hop-by-hop ones and those relaymeter sets itself (Host,
// Content-Length, X-Request-Id; Expect, since the body is in hand;
// Accept-Encoding, identity since the usage block must be readable; Authorization when
// it is replaced or is the client's relaymeter key), then relaymeter's own.
void build_request_head(std::string& out, const Request& req, const config::Config& cfg,
                        std::string_view host, std::string_view rid, std::size_t body_size) {
    const bool drop_auth = !cfg.upstream.api_key.empty() || cfg.auth.enabled;
    const bool has_connection = req.count(http::field::connection) > 0;
    out.clear();
    out.append(req.method_string()).push_back(' ');
    out.append(cfg.upstream.base_path).append(req.target().substr(3)); // "/v1/x?y" -> base_path + "/x?y"
    out.append(" HTTP/1.1\r\n"sv);
    LineWriter lines(out);
    for (auto const& f : req) {
        const auto name = f.name_string();
        switch (f.name()) {
        case http::field::host:
        case http::field::content_length:
        case http::field::expect:
        case http::field::accept_encoding:
            continue;
        case http::field::authorization:
            if (drop_auth) continue;
            break;
        case http::field::unknown:
            if (beast::iequals(name, "x-request-id")) continue;
            break;
        default:
            break;
        }
        if (hop_by_hop(f.name())) continue;
        if (has_connection && named_by_connection(req, name)) continue;
        lines.field(name, f.value());
    }
    lines.flush();
    out.append("Host: "sv).append(host).append("\r\n"sv);
    if (!cfg.upstream.api_key.empty()) out.append("Authorization: Bearer "sv).append(cfg.upstream.api_key).append("\r\n"sv);
    out.append("X-Request-Id: "sv).append(rid).append("\r\n"sv);
    // Said, not just left out: without the field any coding is acceptable
    // (RFC 9110 12.5.3), and the usage block must stay readable.
    out.append("Accept-Encoding: identity\r\n"sv);
    // As Beast's prepare_payload: a length for any body, and for an empty
    // one with the methods that carry a body.
    const auto m = req.method();
    if (body_size > 0 || m == http::verb::post || m == http::verb::put || m == http::verb::options) {
        char len[24];
        const auto end = std::to_chars(len, len + sizeof len, body_size).ptr;
        out.append("Content-Length: "sv).append(len, end).append("\r\n"sv);
    }
    out.append("\r\n"sv);
}

bool is_completions_path(std::string_view target) {
    auto q = target.find('?');
    auto path = target.substr(0, q);
    return path == "/v1/chat/completions" || path == "/v1/completions";
}

// What a write to, or a read from, a pooled connection the upstream has
// closed ends with: its FIN (end of stream before any byte of a response),
// or the reset its kernel sends back to the request, or EPIPE after it.
bool upstream_closed(const error_code& ec) {
    return ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset ||
           ec == asio::error::broken_pipe || ec == ssl::error::stream_truncated;
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
    std::string coding_name; // the upstream's Content-Encoding, when it sent one
    std::string_view note; // why relaymeter failed the request, if it did
    bool recorded = false;

    void finish() {
        recorded = true;
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
tcp_stream& lowest(Stream& s) {
    return beast::get_lowest_layer(s);
}

// Writes as much of `buffers` as the socket takes right now, without
// suspending: a request or a small response usually fits the socket buffer,
// and then no completion handler has to go round the scheduler. Returns the
// bytes written; `ec` is set only for a real error (not would_block).
template <class Buffers>
std::size_t write_now(tcp_socket& sock, const Buffers& buffers, error_code& ec) {
    if (!sock.non_blocking()) {
        sock.non_blocking(true, ec);
        if (ec) return 0;
    }
    const std::size_t n = sock.write_some(buffers, ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) ec = {};
    return ec ? 0 : n;
}

// Per-exchange scratch from a per-thread free list: the serialized heads, the
// upstream response's fields and the pieces of body waiting for the client
// keep their capacity from one exchange to the next, so a warm worker
// allocates nothing for them.
struct Scratch {
    std::string up_head;     // the request head sent upstream
    std::string client_head; // the response head sent to the client
    std::string out;         // a stream's bytes after the usage-only chunk is stripped
    // The upstream response's head while it is parsed (its fields are read
    // like Beast's, so that named_by_connection serves both heads).
    ResponseHead head;
    // Folded (obs-fold) values of those fields: Beast joins them in a buffer
    // local to its parse_fields, gone by the time the head is complete. A
    // deque, so that a value already stored never moves.
    std::deque<std::string> folded;
    std::vector<std::string_view> pieces; // body bytes parsed, not yet sent
    std::vector<asio::const_buffer> bufs; // the gather write to the client
    // The usage scanner of the response (only the one its body needs). Kept
    // here rather than in the exchange's coroutine frame: together they are
    // over a kilobyte, and a frame that size missed the allocator's
    // per-thread cache on every request.
    std::optional<usage::JsonUsageScanner> json;
    std::optional<usage::StreamMeter> stream;
    std::optional<usage::EncodedBodyMeter> coded;

    // util::Lease: as many as the exchanges a busy worker runs at once (at
    // 256 connections a cap of 64 meant a new Scratch, and its heads grown
    // from empty, for 4 requests in 10: 9 of 20 allocations per request).
    static constexpr std::size_t kKeep = 512;
    void recycle() {
        json.reset();
        stream.reset();
        coded.reset(); // its inflate state is on the heap
        // An unusually large head or stream event is not kept for ever.
        constexpr std::size_t kKeepBytes = 8 * 1024;
        for (auto* str : {&up_head, &client_head, &out}) {
            if (str->capacity() > kKeepBytes) std::string().swap(*str);
        }
        if (head.fields.capacity() > 128) std::vector<ResponseField>().swap(head.fields);
    }
};

// The client's response head: the upstream's status and headers less the
// hop-by-hop ones, plus our request id and the framing chosen for the client.
void build_head(std::string& out, int status, std::string_view reason, const std::vector<ResponseField>& fields,
                unsigned version, bool keep_length, bool chunked, bool keep_alive, std::string_view rid) {
    bool has_connection = false;
    for (auto const& f : fields) has_connection |= f.name() == http::field::connection;
    out.clear();
    out.append(version >= 11 ? "HTTP/1.1 " : "HTTP/1.0 ");
    char code[16];
    out.append(code, std::to_chars(code, code + sizeof code, status).ptr).push_back(' ');
    out.append(reason);
    out.append("\r\n"sv);
    LineWriter lines(out);
    for (auto const& f : fields) {
        if (hop_by_hop(f.name())) continue;
        if (f.name() == http::field::content_length && !keep_length) continue;
        if (has_connection && named_by_connection(fields, f.name_string())) continue;
        lines.field(f.name_string(), f.value());
    }
    lines.flush();
    out.append("X-Relaymeter-Request-Id: "sv).append(rid).append("\r\n"sv);
    if (chunked) out.append("Transfer-Encoding: chunked\r\n"sv);
    if (version >= 11 && !keep_alive) out.append("Connection: close\r\n"sv);
    if (version < 11 && keep_alive) out.append("Connection: keep-alive\r\n"sv);
    out.append("\r\n"sv);
}

class Exchange;

// Parses the upstream's response in place, in the connection's read buffer:
// the fields and the body pieces are views into that buffer, handed to the
// exchange during put() (no header container, no copy of the body).
class UpstreamParser : public http::basic_parser<false> {
public:
    explicit UpstreamParser(Exchange& ex) : ex_(ex) {}
    // put() with what it parses (the fields' views are checked against it).
    std::size_t put_input(asio::const_buffer in, error_code& ec) {
        input_ = {static_cast<const char*>(in.data()), in.size()};
        return put(in, ec);
    }
    // Reads a head parse_whole_response_head() has read: the exchange takes it
    // from `head`, and this parser the framing, from framing_head() (without
    // the callbacks), to read the body that follows.
    void put_head(const ResponseHead& head, error_code& ec);

private:
    void on_request_impl(http::verb, beast::string_view, beast::string_view, int, error_code&) override {}
    void on_response_impl(int code, beast::string_view reason, int version, error_code& ec) override;
    void on_field_impl(http::field name, beast::string_view name_string, beast::string_view value,
                       error_code& ec) override;
    void on_header_impl(error_code& ec) override;
    void on_body_init_impl(const boost::optional<std::uint64_t>&, error_code&) override {}
    std::size_t on_body_impl(beast::string_view body, error_code& ec) override;
    void on_chunk_header_impl(std::uint64_t, beast::string_view, error_code&) override {}
    std::size_t on_chunk_body_impl(std::uint64_t, beast::string_view body, error_code& ec) override;
    void on_finish_impl(error_code&) override {}

    Exchange& ex_;
    std::string_view input_;
    bool quiet_ = false; // put_head()'s framing: not the upstream's head
};

class Exchange {
public:
    Exchange(Context& ctx, tcp_stream& client, Request& req, const Origin& origin)
        : ctx_(ctx), cfg_(ctx.cfg), client_(client), req_(req), meter_(ctx, origin) {}
    // Still unrecorded here, the request was in flight when the daemon
    // stopped (server.drain_timeout_s passed): its coroutine is destroyed
    // mid-way. It is recorded as 503 shutting_down, with what usage was read,
    // rather than lost.
    ~Exchange() {
        if (meter_.recorded) return;
        try {
            take_usage();
            meter_.status = 503;
            meter_.note = "shutting_down";
            meter_.finish();
        } catch (const std::exception&) {
        }
    }
    Exchange(const Exchange&) = delete;
    Exchange& operator=(const Exchange&) = delete;

    awaitable<bool> run();

private:
    friend class UpstreamParser;
    enum class Sent { all, pending, failed };

    template <class Stream>
    awaitable<void> relay(Stream& up);
    awaitable<void> fail(http::status status, std::string_view code, std::string message);
    // The usage the response's scanner read, into the meter.
    void take_usage() {
        if (json_ || stream_ || coded_)
            meter_.use = coded_ ? coded_->usage() : stream_ ? stream_->usage() : json_->result();
    }
    // Queues what the client has not had yet: the response head (first call
    // only), the parsed body pieces or `data` (one chunk when chunked), and
    // the last chunk when `last`; writes what the socket takes now, without
    // suspending. `pending`: flush() writes the rest.
    Sent send_now(bool last);
    awaitable<bool> flush();

    // UpstreamParser's callbacks (inside put()); on_head also for a head the
    // fast path read. `has_length`: the head has a Content-Length.
    void on_head(bool keep_alive, bool body_expected, bool has_length);
    void on_body(std::string_view piece);

    Context& ctx_;
    const config::Config& cfg_;
    tcp_stream& client_;
    Request& req_;
    Meter meter_;
    util::Lease<Scratch> scratch_;
    unsigned client_version_ = 11;
    bool client_keep_alive_ = true;
    bool strip_ = false;
    bool stream_asked_ = false; // the request has "stream": true
    bool sniff_ = false;        // the body's first bytes choose the usage scanner (on_head)
    bool chunked_out_ = false;
    bool reusable_ = false;
    bool head_sent_ = false;
    bool head_ready_ = false;
    bool client_timed_out_ = false; // a write to the client hit its deadline
    bool upstream_keep_alive_ = false;
    bool interim_ = false; // the head just parsed is a 1xx interim response
    int status_ = 0;
    std::string_view reason_;
    char size_line_[24] = {};
    std::size_t written_ = 0; // of which already written
    // Only the scanner this body needs (in the scratch).
    std::optional<usage::JsonUsageScanner>& json_ = scratch_->json;
    std::optional<usage::StreamMeter>& stream_ = scratch_->stream;
    std::optional<usage::EncodedBodyMeter>& coded_ = scratch_->coded;
    upstream::Connection* conn_ = nullptr;
    // The connection came from the pool and this is the first try: if the
    // upstream turns out to have closed it, relay() sets stale_ and returns.
    bool may_retry_ = false;
    bool stale_ = false;
};

void UpstreamParser::on_response_impl(int code, beast::string_view reason, int, error_code& ec) {
    if (quiet_) return;
    if (code == 101) {
        // Switching Protocols, never asked for (Upgrade is not forwarded):
        // relayed, it would hand the client a connection in another protocol.
        ec = http::error::bad_status;
        return;
    }
    ex_.status_ = code;
    ex_.reason_ = reason;
    ex_.scratch_->head.fields.clear();
    ex_.scratch_->folded.clear();
}

void UpstreamParser::on_field_impl(http::field name, beast::string_view name_string, beast::string_view value,
                                   error_code&) {
    if (quiet_) return;
    auto& sc = *ex_.scratch_;
    // A value outside the bytes being parsed is a folded one (see Scratch::folded).
    const bool in_input = value.data() >= input_.data() && value.data() + value.size() <= input_.data() + input_.size();
    if (!value.empty() && !in_input) value = sc.folded.emplace_back(value);
    sc.head.fields.push_back({name, name_string, value});
}

void UpstreamParser::put_head(const ResponseHead& head, error_code& ec) {
    char buf[96];
    const std::string_view framing = framing_head(head, buf);
    quiet_ = true;
    put(asio::buffer(framing.data(), framing.size()), ec); // stops at the head's end
    quiet_ = false;
    ex_.status_ = head.status;
    ex_.reason_ = head.reason;
    if (!ec) ex_.on_head(keep_alive(), !is_done(), content_length().has_value());
}

void UpstreamParser::on_header_impl(error_code& ec) {
    if (quiet_) return;
    // (The fast path takes only a lone "chunked".) Any other transfer coding
    // is a 502, as with nginx: relayed, the client would get coded bytes.
    TransferCodings te;
    for (const auto& f : ex_.scratch_->head.fields) {
        if (f.id == http::field::transfer_encoding) te.add(f.val);
    }
    if (te.any() && !te.chunked_only()) {
        ec = http::error::bad_transfer_encoding;
        return;
    }
    ex_.on_head(keep_alive(), !is_done(), content_length().has_value());
}

std::size_t UpstreamParser::on_body_impl(beast::string_view body, error_code&) {
    ex_.on_body(body);
    return body.size();
}

std::size_t UpstreamParser::on_chunk_body_impl(std::uint64_t, beast::string_view body, error_code&) {
    ex_.on_body(body);
    return body.size();
}

// The upstream's head is complete (its fields are views valid only now):
// choose the client's framing, serialize its head, pick the usage scanner.
void Exchange::on_head(bool keep_alive, bool body_expected, bool has_length) {
    if (status_ >= 100 && status_ < 200) {
        interim_ = true; // skipped by relay(); the final response follows
        return;
    }
    auto& sc = *scratch_;
    meter_.status = status_;
    bool sse = false;
    auto coding = usage::ContentCoding::identity;
    for (auto const& f : sc.head.fields) {
        if (f.id == http::field::content_type) {
            sse = beast::iequals(f.val.substr(0, 17), "text/event-stream");
        } else if (f.id == http::field::content_encoding) {
            coding = usage::content_coding(f.val);
            meter_.coding_name.assign(usage::sanitize_model(f.val.substr(0, 32)));
        } else if (f.id == http::field::unknown && beast::iequals(f.name_str, "x-request-id")) {
            meter_.upstream_rid.assign(f.val.substr(0, 128));
        }
    }
    meter_.streamed = sse;
    upstream_keep_alive_ = keep_alive;
    // The upstream compressed although it was not asked to: the client gets
    // the coded bytes unchanged (nothing can be stripped from them) and the
    // usage is read from a copy inflated on the side.
    if (coding != usage::ContentCoding::identity) strip_ = false;

    // Framing towards the client: the upstream's Content-Length when the bytes
    // are relayed unchanged, chunked otherwise (close-delimited for HTTP/1.0).
    bool keep_length = true;
    if (body_expected && (strip_ || !has_length)) {
        keep_length = false;
        if (client_version_ >= 11)
            chunked_out_ = true;
        else
            client_keep_alive_ = false;
    }
    build_head(sc.client_head, status_, reason_, sc.head.fields, client_version_, keep_length, chunked_out_,
               client_keep_alive_, meter_.rid);
    // A 2xx answer to a stream request without the event-stream type (some
    // relays send text/plain, application/json or none): the body decides,
    // an event stream unless it opens like a JSON document (a relay that
    // ignored "stream": true). Read by the Content-Type alone, its usage was
    // missed and the usage chunk relaymeter asked for reached the client.
    sniff_ = !sse && stream_asked_ && coding == usage::ContentCoding::identity && status_ >= 200 && status_ < 300;
    if (!sniff_) {
        if (coding != usage::ContentCoding::identity)
            coded_.emplace(coding, sse);
        else if (sse)
            stream_.emplace(strip_);
        else
            json_.emplace();
    }
    head_ready_ = true;
}

void Exchange::on_body(std::string_view piece) {
    if (piece.empty()) return;
    if (sniff_) {
        const auto first = piece.find_first_not_of(" \t\r\n");
        if (first == std::string_view::npos) {
            scratch_->pieces.push_back(piece); // blank: relayed as it is, the next piece decides
            return;
        }
        sniff_ = false;
        if (piece[first] == '{' || piece[first] == '[') {
            json_.emplace();
        } else {
            meter_.streamed = true;
            stream_.emplace(strip_);
            // Blank pieces not yet sent go first (a stream sends `out`).
            for (const auto held : scratch_->pieces) scratch_->out.append(held);
            scratch_->pieces.clear();
        }
    }
    if (stream_) {
        stream_->feed(piece, scratch_->out); // what to send is collected in `out`
        return;
    }
    if (coded_)
        coded_->feed(piece);
    else
        json_->feed(piece);
    scratch_->pieces.push_back(piece);
}

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

Exchange::Sent Exchange::send_now(bool last) {
    auto& sc = *scratch_;
    auto& bufs = sc.bufs;
    bufs.clear();
    if (!head_sent_) bufs.push_back(asio::buffer(sc.client_head));
    std::size_t body = 0;
    if (stream_) {
        if (!sc.out.empty()) {
            sc.pieces.clear();
            sc.pieces.push_back(sc.out);
        }
    }
    for (auto piece : sc.pieces) body += piece.size();
    if (body > 0) {
        if (chunked_out_) {
            char* end = std::to_chars(size_line_, size_line_ + sizeof size_line_ - 2, body, 16).ptr;
            *end++ = '\r';
            *end++ = '\n';
            bufs.push_back(asio::buffer(size_line_, static_cast<std::size_t>(end - size_line_)));
        }
        for (auto piece : sc.pieces)
            if (!piece.empty()) bufs.push_back(asio::buffer(piece));
        if (chunked_out_) bufs.push_back(asio::buffer("\r\n", 2));
    }
    if (last && chunked_out_) bufs.push_back(asio::buffer("0\r\n\r\n", 5));
    if (bufs.empty()) return Sent::all;
    head_sent_ = true;
    error_code ec;
    written_ = write_now(client_.socket(), bufs, ec);
    if (ec) return Sent::failed;
    return written_ == asio::buffer_size(bufs) ? Sent::all : Sent::pending;
}

awaitable<bool> Exchange::flush() {
    // The client takes the bytes slower than they come. Each wait for it is
    // bounded (a stream's by streaming.idle_timeout_s): a client that stops
    // reading is dropped, never buffered for, while one that reads on keeps
    // its response (the upstream side has its own deadline).
    client_.expires_after(seconds(meter_.streamed ? cfg_.streaming.idle_timeout_s : cfg_.upstream.request_timeout_s));
    beast::buffers_suffix<std::span<const asio::const_buffer>> rest(
        std::span<const asio::const_buffer>(scratch_->bufs.data(), scratch_->bufs.size()));
    rest.consume(written_);
    error_code ec;
    co_await asio::async_write(client_, rest, asio::redirect_error(use_awaitable, ec));
    if (ec == beast::error::timeout) client_timed_out_ = true;
    co_return !ec;
}

awaitable<bool> Exchange::run() {
    client_version_ = req_.version();
    client_keep_alive_ = req_.keep_alive();

    const auto info = usage::inspect_request(req_.body());
    meter_.model = info.model;
    meter_.prices = ctx_.engine.prices();
    stream_asked_ = info.stream;

    if (cfg_.streaming.inject_include_usage && info.stream && !info.include_usage &&
        is_completions_path(req_.target())) {
        std::string edited;
        if (usage::inject_include_usage(req_.body(), edited)) {
            req_.body() = std::move(edited);
            strip_ = true;
        }
    }
    // The request for the upstream (the client's head is left as it is).
    build_request_head(scratch_->up_head, req_, cfg_, ctx_.host_header, meter_.rid, req_.body().size());

    const auto deadline = meter_.arrival + seconds(cfg_.upstream.request_timeout_s);
    // Under load an idle pooled connection is there: taken without a frame.
    upstream::Lease lease;
    lease.conn = ctx_.pool.take_idle();
    lease.reused = true;
    if (!lease.conn) lease = co_await ctx_.pool.acquire(deadline);
    may_retry_ = lease.reused;
    for (;;) {
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
            break;
        }
        conn_ = lease.conn.get();
        if (auto* plain = std::get_if<tcp_stream>(&lease.conn->stream()))
            co_await relay(*plain);
        else
            co_await relay(std::get<upstream::tls_stream>(lease.conn->stream()));
        if (!stale_) {
            ctx_.pool.release(std::move(lease.conn), reusable_);
            break;
        }
        // The pooled connection had been closed by the upstream (it answered
        // nothing): once, on a connection that is new or checked alive.
        stale_ = false;
        may_retry_ = false;
        ctx_.pool.release(std::move(lease.conn), false);
        spdlog::debug("rid={} the upstream had closed the pooled connection; sent again on another", meter_.rid);
        lease = co_await ctx_.pool.acquire(deadline, false);
    }
    meter_.finish();
    co_return client_keep_alive_;
}

template <class Stream>
awaitable<void> Exchange::relay(Stream& up) {
    constexpr bool plain = std::is_same_v<Stream, tcp_stream>;
    error_code ec;
    const auto deadline = meter_.arrival + seconds(cfg_.upstream.request_timeout_s);
    auto& up_tcp = lowest(up);
    auto& sc = *scratch_;

    up_tcp.expires_at(deadline);
    {
        const std::array<asio::const_buffer, 2> bufs{asio::buffer(sc.up_head), asio::buffer(req_.body())};
        std::size_t done = 0;
        if constexpr (plain) done = write_now(up_tcp.socket(), bufs, ec);
        if (!ec && done < asio::buffer_size(bufs)) {
            beast::buffers_suffix<std::array<asio::const_buffer, 2>> rest(bufs);
            rest.consume(done);
            co_await asio::async_write(up, rest, asio::redirect_error(use_awaitable, ec));
        }
    }
    if (ec) {
        // A pooled connection the upstream had closed takes no request
        // (EPIPE, or its reset): sent again. Otherwise some bytes may have
        // reached the upstream: never retried.
        if (may_retry_ && upstream_closed(ec)) {
            stale_ = true;
            co_return;
        }
        if (ec == beast::error::timeout)
            co_await fail(http::status::gateway_timeout, "upstream_timeout", "upstream did not accept the request in time");
        else
            co_await fail(http::status::bad_gateway, "upstream_unreachable", "sending the request upstream failed: " + ec.message());
        co_return;
    }

    constexpr std::size_t kHeadLimit = 64 * 1024;
    std::optional<UpstreamParser> parser;
    bool head_unread = false; // the parser has had none of this response's bytes
    // Set when the fast path read a head with a Content-Length: the body's
    // bytes still to come, counted here; Beast's parser is not used then.
    std::optional<std::uint64_t> length_left;
    auto done = [&] { return length_left ? *length_left == 0 : parser->is_done(); };
    auto fresh_parser = [&] {
        parser.emplace(*this);
        length_left.reset();
        head_unread = req_.method() != http::verb::head; // (HEAD: Beast's skip())
        // Not boost::none: Beast 1.74 compares a Content-Length against an
        // empty optional as "over the limit" (basic_parser.ipp, finish_header).
        parser->body_limit(std::numeric_limits<std::uint64_t>::max());
        parser->header_limit(kHeadLimit);
        parser->eager(true);
        if (req_.method() == http::verb::head) parser->skip(true);
    };
    fresh_parser();
    int interim_seen = 0;
    bool read_any = false; // of this response (plain upstreams)
    bool got_bytes = false; // of this response

    auto& ubuf = conn_->buffer();
    const auto stream_deadline = cfg_.streaming.total_timeout_s > 0
                                     ? meter_.arrival + seconds(cfg_.streaming.total_timeout_s)
                                     : clock::time_point::max();
    bool client_ok = true;
    error_code up_ec; // the upstream failed (reading or a malformed response)
    bool bad_head = false;
    for (;;) {
        // Parse what is buffered; body pieces are views into ubuf, valid
        // until the next read.
        sc.pieces.clear();
        sc.out.clear();
        while (ubuf.size() > 0 && !done()) {
            if (length_left) {
                const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(*length_left, ubuf.size()));
                on_body({static_cast<const char*>(ubuf.data().data()), n});
                ubuf.consume(n);
                *length_left -= n;
                continue;
            }
            if (head_unread) {
                // The common case, a plain head all in the buffer, is read
                // without Beast (proxy/response.hpp), and then a body of a
                // given length too; Beast's parser reads the head otherwise,
                // and any other body.
                const std::string_view in(static_cast<const char*>(ubuf.data().data()), ubuf.size());
                if (const std::size_t n = parse_whole_response_head(in, kHeadLimit, sc.head)) {
                    head_unread = false;
                    if (sc.head.body == ResponseHead::Body::length) {
                        length_left = sc.head.content_length;
                        status_ = sc.head.status;
                        reason_ = sc.head.reason;
                        on_head(sc.head.keep_alive, *length_left > 0, true);
                    } else {
                        parser->put_head(sc.head, up_ec);
                    }
                    ubuf.consume(n);
                    if (up_ec) break;
                    continue;
                }
                // The rest of the head is still to come: read it first (Beast
                // would wait for it too, and the fast path may take it then).
                if (in.size() < kHeadLimit && in.find("\r\n\r\n") == std::string_view::npos) break;
                head_unread = false;
            }
            const std::size_t n = parser->put_input(ubuf.data(), up_ec);
            ubuf.consume(n);
            if (up_ec == http::error::need_more) {
                up_ec = {};
                break;
            }
            if (up_ec || n == 0) break;
            if (interim_ && parser->is_done()) {
                // An interim response (103 Early Hints, a stray 100
                // Continue) is not the answer: it is dropped and the final
                // response parsed after it. Left unread, the final response
                // would have been taken for the next request's answer on this
                // pooled connection.
                interim_ = false;
                if (++interim_seen > 8) {
                    up_ec = http::error::bad_status;
                    break;
                }
                fresh_parser();
            }
        }
        if (up_ec && !head_ready_) {
            bad_head = true;
            break;
        }
        // (A body that turns malformed still gets the bytes parsed before the
        // fault: the client sees the head and those, then the cut.)
        if (head_ready_) {
            const bool last = done();
            if (last) {
                if (coded_) coded_->finish();
                if (stream_) stream_->finish(sc.out);
            }
            // The head goes with the first body bytes (one write for a small
            // response), or alone when there is no body.
            if (last || (stream_ ? !sc.out.empty() : !sc.pieces.empty())) {
                const Sent sent = send_now(last);
                client_ok = sent != Sent::failed;
                if (sent == Sent::pending) client_ok = co_await flush();
                if (client_ok && meter_.streamed && meter_.ttft_s < 0 &&
                    (coded_ ? coded_->saw_content() : stream_ ? stream_->saw_content() : false))
                    meter_.ttft_s = since(meter_.arrival);
            }
            if (!client_ok || last || up_ec) break;
        }
        // Read more. The first read of the response waits for the upstream
        // (async_read_exhausting, net.hpp: no read that would fail with
        // EAGAIN). Later ones read at once first: a reset or FIN that came
        // with the last bytes raised no new edge for epoll to report.
        const auto read_by = meter_.streamed && head_ready_
                                 ? std::min(clock::now() + seconds(cfg_.streaming.idle_timeout_s), stream_deadline)
                                 : deadline;
        const auto space = ubuf.prepare(std::max<std::size_t>(ubuf.capacity() - ubuf.size(), 4096));
        std::size_t n = 0;
        if constexpr (plain) {
            auto& sock = up_tcp.socket();
            if (!read_any || !read_now(sock, space, n, up_ec)) {
                auto& dl = conn_->read_deadline();
                // A pooled connection's server may have half-closed it after
                // its last answer: the probe finds that FIN (no edge of its own).
                if (may_retry_ && !got_bytes)
                    dl.arm(sock, read_by, clock::now() + kPeerClosedProbe);
                else
                    dl.arm(sock, read_by);
                n = co_await async_read_exhausting(sock, dl, space, asio::redirect_error(use_awaitable, up_ec));
                dl.disarm();
                up_ec = dl.result(up_ec);
            }
            read_any = true;
        } else {
            up_tcp.expires_at(read_by);
            n = co_await up.async_read_some(space, asio::redirect_error(use_awaitable, up_ec));
        }
        ubuf.commit(n);
        got_bytes = got_bytes || n > 0;
        if (up_ec == asio::error::eof || (!plain && up_ec == ssl::error::stream_truncated)) {
            // The end of a close-delimited body, or a cut-off response.
            if (head_ready_ && !length_left && parser->need_eof()) {
                up_ec = {};
                parser->put_eof(up_ec);
                if (!up_ec) continue; // done: the last send
            } else {
                up_ec = length_left || parser->got_some() ? error_code(http::error::partial_message)
                                                          : error_code(http::error::end_of_stream);
            }
        }
        if (up_ec) break;
    }
    take_usage();
    if (coded_ && !coded_->problem().empty()) {
        // Once per response: the bytes were relayed as they came, the usage
        // is what could be read (usually none).
        spdlog::warn("rid={} {}-coded response body not readable ({}): relayed unchanged, usage not metered",
                     meter_.rid, meter_.coding_name, coded_->problem());
    }

    if (!client_ok) {
        // The client went away: the upstream connection is dropped, not pooled.
        meter_.status = 499;
        meter_.note = client_timed_out_ ? "client_timeout" : "client_closed";
        client_keep_alive_ = false;
        co_return;
    }
    if (up_ec) {
        if (may_retry_ && !got_bytes && upstream_closed(up_ec)) {
            // A pooled connection closed by the upstream before it read the
            // request (it answered nothing): run() sends it again.
            stale_ = true;
            co_return;
        }
        if (bad_head || !head_sent_) {
            // Nothing reached the client yet: it gets a proper error.
            // (The message is built before co_await: GCC 12 destroys
            // temporaries of a conditional expression inside a co_await
            // operand twice.)
            const bool timeout = up_ec == beast::error::timeout;
            std::string message;
            if (timeout && !head_ready_) {
                meter_.note = "upstream_timeout";
                message = "upstream did not answer within upstream.request_timeout_s";
            } else if (!head_ready_) {
                meter_.note = "upstream_bad_response";
                message = "reading the upstream response failed: " + up_ec.message();
            } else {
                meter_.note = timeout ? "upstream_timeout_mid_response" : "upstream_failed_mid_response";
                message = "the upstream failed while sending its response: " + up_ec.message();
            }
            co_await fail(timeout ? http::status::gateway_timeout : http::status::bad_gateway, meter_.note,
                          std::move(message));
            co_return;
        }
        meter_.note = up_ec == beast::error::timeout ? "upstream_timeout_mid_response" : "upstream_failed_mid_response";
        // The client already has its status line: the connection is closed
        // without the last chunk (or short of Content-Length), so that the
        // client sees a cut-off response, never a complete-looking one.
        meter_.status = 502;
        spdlog::warn("rid={} upstream failed after the response began: {}", meter_.rid, up_ec.message());
        client_keep_alive_ = false;
        co_return;
    }
    reusable_ = upstream_keep_alive_ && done();
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

awaitable<bool> forward(Context& ctx, tcp_stream& client, Request& req, const Origin& origin) {
    Exchange ex(ctx, client, req, origin);
    co_return co_await ex.run();
}

void record_unread(Context& ctx, const Origin& origin, int status, std::string_view note) {
    Meter m(ctx, origin);
    m.status = status;
    m.note = note;
    m.finish();
}

awaitable<bool> reject(Context& ctx, tcp_stream& client, http::status status, std::string_view code,
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

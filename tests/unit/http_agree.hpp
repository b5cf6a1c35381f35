// The fast paths that read a whole request (proxy::parse_whole_request) or a
// whole response head (proxy::parse_whole_response_head) without Beast,
// against Beast's parser reading the same bytes: whatever a fast path takes,
// Beast must accept too and read the same message from it; anything else the
// fast path must decline (0) and leave to Beast. Shared by the unit tests
// (test_request.cpp, test_response.cpp) and the fuzz target fuzz/fuzz_http.cpp.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <string_view>

#include "relaymeter/proxy/request.hpp"
#include "relaymeter/proxy/response.hpp"

namespace relaymeter::testsupport {

struct Agreement {
    bool taken = false;  // the fast path read the message
    std::string problem; // what differs from Beast; "" when nothing does
};

namespace http_agree_detail {

// `in` copied into an allocation of exactly its size, so that ASan sees any
// read past the end.
inline std::unique_ptr<char[]> exact_copy(std::string_view in) {
    auto p = std::make_unique<char[]>(in.size());
    if (!in.empty()) std::memcpy(p.get(), in.data(), in.size());
    return p;
}

inline void differ(std::string& problem, const char* what, const std::string& fast, const std::string& beast) {
    problem += std::string(what) + ": fast path [" + fast + "], Beast [" + beast + "]\n";
}

inline std::string dump(const proxy::Request& r) {
    std::string s = std::string(r.method_string()) + "|" + std::to_string(static_cast<int>(r.method())) + "|" +
                    std::string(r.target()) + "|" + std::to_string(r.version()) + "|" +
                    (r.keep_alive() ? "ka" : "close") + "\n";
    for (auto const& f : r) {
        s += std::to_string(static_cast<int>(f.name())) + "|" + std::string(f.name_string()) + "|" +
             std::string(f.value()) + "\n";
    }
    return s + "body:" + r.body();
}

inline std::string dump(const proxy::ResponseHead& h) {
    std::string s = std::to_string(h.status) + "|" + std::string(h.reason) + "|" + std::to_string(h.version) + "\n";
    for (auto const& f : h.fields)
        s += std::to_string(static_cast<int>(f.name())) + "|" + std::string(f.name_string()) + "|" +
             std::string(f.value()) + "\n";
    return s;
}

inline std::string str(const boost::optional<std::uint64_t>& v) { return v ? std::to_string(*v) : "none"; }

// A response parser that keeps what Beast reads (the fields as text, since a
// folded value lives only during the callback).
class Capture : public http::basic_parser<false> {
public:
    std::string head;
    std::string body;

    std::string framing() const {
        return std::string(keep_alive() ? "ka" : "close") + "|" + (chunked() ? "chunked" : "") + "|" +
               str(content_length()) + "|" + (need_eof() ? "eof" : "") + "|" + (is_done() ? "done" : "");
    }

    // Feeds `in` as the proxy does (whatever the parser takes, until done or
    // an error); returns the bytes taken, and whether there was no error.
    std::size_t feed(std::string_view in, bool& ok) {
        std::size_t used = 0;
        error_code ec;
        while (used < in.size() && !is_done()) {
            const auto n = put(asio::buffer(in.data() + used, in.size() - used), ec);
            used += n;
            if (ec == http::error::need_more) ec = {};
            if (ec || n == 0) break;
        }
        ok = !ec;
        return used;
    }

private:
    void on_request_impl(http::verb, beast::string_view, beast::string_view, int, error_code&) override {}
    void on_response_impl(int code, beast::string_view reason, int v, error_code&) override {
        head += std::to_string(code) + "|" + std::string(reason) + "|" + std::to_string(v) + "\n";
    }
    void on_field_impl(http::field id, beast::string_view name, beast::string_view value, error_code&) override {
        head += std::to_string(static_cast<int>(id)) + "|" + std::string(name) + "|" + std::string(value) + "\n";
    }
    void on_header_impl(error_code&) override {}
    void on_body_init_impl(const boost::optional<std::uint64_t>&, error_code&) override {}
    std::size_t on_body_impl(beast::string_view b, error_code&) override {
        body.append(b.data(), b.size());
        return b.size();
    }
    void on_chunk_header_impl(std::uint64_t, beast::string_view, error_code&) override {}
    std::size_t on_chunk_body_impl(std::uint64_t, beast::string_view b, error_code& ec) override {
        return on_body_impl(b, ec);
    }
    void on_finish_impl(error_code&) override {}
};

} // namespace http_agree_detail

// A request, as the server reads one: the fast path, else Beast's parser
// (proxy::RequestParser) with the same limits.
inline Agreement request_agreement(std::string_view in, std::size_t header_limit = 64 * 1024,
                                   std::uint64_t body_limit = 1 << 20) {
    using namespace http_agree_detail;
    Agreement a;
    proxy::Request fast, slow;
    boost::optional<std::uint64_t> length;
    const auto exact = exact_copy(in);
    const std::size_t used =
        proxy::parse_whole_request({exact.get(), in.size()}, header_limit, body_limit, fast, length);
    if (used == 0) {
        if (fast.field_count() != 0 || !fast.target().empty()) a.problem = "declined, but left a partial request\n";
        return a;
    }
    a.taken = true;

    proxy::RequestParser p(slow);
    p.header_limit(header_limit);
    p.body_limit(body_limit);
    p.eager(true);
    std::size_t beast_used = 0;
    error_code ec;
    while (beast_used < in.size() && !p.is_done()) {
        const auto n = p.put(asio::buffer(in.data() + beast_used, in.size() - beast_used), ec);
        beast_used += n;
        if (ec || n == 0) break;
    }
    if (ec || !p.is_done()) {
        a.problem = "taken by the fast path, not a whole request to Beast: " +
                    (ec ? ec.message() : std::string("incomplete")) + "\n";
        return a;
    }
    if (used != beast_used) differ(a.problem, "bytes", std::to_string(used), std::to_string(beast_used));
    if (length != p.content_length()) differ(a.problem, "Content-Length", str(length), str(p.content_length()));
    if (dump(fast) != dump(slow)) differ(a.problem, "request", dump(fast), dump(slow));
    return a;
}

// A response head: the fast path, else Beast's basic_parser<false>. When the
// fast path takes it, Beast's parser given proxy::framing_head() in its place
// must also read the same body from the bytes that follow as after the real
// head.
inline Agreement response_agreement(std::string_view in, std::size_t header_limit = 64 * 1024) {
    using namespace http_agree_detail;
    Agreement a;
    const auto exact = exact_copy(in);
    proxy::ResponseHead fast;
    const std::size_t used = proxy::parse_whole_response_head({exact.get(), in.size()}, header_limit, fast);
    if (used == 0) {
        if (!fast.fields.empty()) a.problem = "declined, but left fields\n";
        return a;
    }
    a.taken = true;

    // Limits as the proxy sets them on its upstream parser.
    Capture slow;
    slow.header_limit(static_cast<std::uint32_t>(header_limit));
    slow.body_limit(std::numeric_limits<std::uint64_t>::max());
    slow.eager(false);
    error_code ec;
    const std::size_t head_len = slow.put(asio::buffer(in.data(), in.size()), ec);
    if (ec || !slow.is_header_done()) {
        a.problem = "taken by the fast path, not a whole head to Beast: " +
                    (ec ? ec.message() : std::string("incomplete")) + "\n";
        return a;
    }
    if (used != head_len) differ(a.problem, "head bytes", std::to_string(used), std::to_string(head_len));
    if (dump(fast) != slow.head) differ(a.problem, "head", dump(fast), slow.head);
    if (fast.keep_alive != slow.keep_alive())
        differ(a.problem, "keep-alive", std::to_string(fast.keep_alive), std::to_string(slow.keep_alive()));

    // The body, through Beast after the real head and after framing_head().
    Capture framed;
    framed.body_limit(std::numeric_limits<std::uint64_t>::max());
    char buf[96];
    const std::string_view synthetic = proxy::framing_head(fast, buf);
    const std::size_t framed_len = framed.put(asio::buffer(synthetic.data(), synthetic.size()), ec);
    if (ec || framed_len != synthetic.size()) {
        a.problem += "Beast does not take framing_head() [" + std::string(synthetic) + "] whole\n";
        return a;
    }
    if (framed.framing() != slow.framing()) differ(a.problem, "framing", framed.framing(), slow.framing());
    slow.eager(true);
    framed.eager(true);
    const std::string_view rest = in.substr(used);
    bool ok = false, framed_ok = false;
    const std::size_t slow_body = slow.feed(rest, ok);
    const std::size_t framed_body = framed.feed(rest, framed_ok);
    if (framed_body != slow_body)
        differ(a.problem, "body bytes taken", std::to_string(framed_body), std::to_string(slow_body));
    if (framed_ok != ok) differ(a.problem, "body ok", std::to_string(framed_ok), std::to_string(ok));
    if (framed.body != slow.body) differ(a.problem, "body", framed.body, slow.body);
    if (framed.framing() != slow.framing())
        differ(a.problem, "framing after the body", framed.framing(), slow.framing());
    return a;
}

} // namespace relaymeter::testsupport

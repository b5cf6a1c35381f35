// A client's request as relaymeter keeps it while serving it, and the parser
// that fills it.
//
// Beast's request<string_body> allocates every field on its own and keeps them
// in a case-insensitive tree: with the 17 fields an OpenAI SDK sends, that was
// 17 allocations, 17 tree insertions and 17 frees per request. Here the
// request line and the fields are copied back to back into one buffer, with
// a small table of where each is (each field stored as the line it makes
// in a head, ready to be forwarded), and the body goes to a string; all three
// keep their capacity from one request to the next (util::Lease). Beast's
// basic_parser still does all the parsing and checking.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "relaymeter/net.hpp"

namespace relaymeter::proxy {

class Request {
public:
    // One field as received (read like a Beast field).
    class Field {
    public:
        Field(http::field id, std::string_view name, std::string_view value) : id_(id), name_(name), value_(value) {}
        http::field name() const { return id_; }
        std::string_view name_string() const { return name_; }
        std::string_view value() const { return value_; }

    private:
        http::field id_;
        std::string_view name_;
        std::string_view value_;
    };

    class const_iterator {
    public:
        const_iterator(const Request* r, std::size_t i) : r_(r), i_(i) {}
        Field operator*() const { return r_->field(i_); }
        const_iterator& operator++() {
            ++i_;
            return *this;
        }
        bool operator==(const const_iterator& o) const { return i_ == o.i_; }

    private:
        const Request* r_;
        std::size_t i_;
    };

    http::verb method() const { return method_; }
    std::string_view method_string() const { return text(method_at_); }
    std::string_view target() const { return text(target_at_); }
    unsigned version() const { return version_; }
    // As Beast's message::keep_alive(): HTTP/1.1 unless a Connection field
    // says close, HTTP/1.0 only when one says keep-alive.
    bool keep_alive() const { return keep_alive_; }

    // The first value of a field, "" when there is none.
    std::string_view operator[](http::field id) const;
    // The same by name, case-insensitively (for fields Beast does not know).
    std::string_view operator[](std::string_view name) const;
    std::size_t count(http::field id) const;

    std::size_t field_count() const { return fields_.size(); }
    Field field(std::size_t i) const {
        const Entry& e = fields_[i];
        return {e.id, text(e.name), text(e.value)};
    }
    const_iterator begin() const { return {this, 0}; }
    const_iterator end() const { return {this, fields_.size()}; }

    std::string& body() { return body_; }
    const std::string& body() const { return body_; }

    // util::Lease
    static constexpr std::size_t kKeep = 512;
    void recycle();

private:
    friend class RequestParser;
    friend std::size_t parse_whole_request(std::string_view, std::size_t, std::uint64_t, Request&,
                                           boost::optional<std::uint64_t>&);
    struct Span {
        std::uint32_t at = 0;
        std::uint32_t len = 0;
    };
    struct Entry {
        http::field id;
        Span name;
        Span value;
    };

    std::string_view text(Span s) const { return {text_.data() + s.at, s.len}; }
    Span add(std::string_view s);
    void add_field(http::field id, std::string_view name, std::string_view value);
    void clear();

    std::string text_; // the method, the target, then each field as "Name: value\r\n"
    std::vector<Entry> fields_;
    std::string body_;
    Span method_at_;
    Span target_at_;
    http::verb method_ = http::verb::unknown;
    unsigned version_ = 11;
    bool keep_alive_ = true;
};

// The origin form ("/v1/models?x") of a request target in absolute form
// ("http://host:port/v1/models?x"), which a server must accept (RFC 9112
// 3.2.2; a client that takes relaymeter for a forward proxy sends it): both
// parsers keep that as the target. Any other target is returned as it is; an
// absolute form without a path is "/" (its query, if any, dropped).
std::string_view origin_form(std::string_view target);

// Beast's basic_parser, filling a Request (cleared first). Its limits,
// eager() and skip() are basic_parser's.
class RequestParser final : public http::basic_parser<true> {
public:
    explicit RequestParser(Request& req) : req_(req) { req_.clear(); }
    Request& get() { return req_; }
    const Request& get() const { return req_; }

private:
    void on_request_impl(http::verb method, beast::string_view method_str, beast::string_view target, int version,
                         error_code& ec) override;
    void on_response_impl(int, beast::string_view, int, error_code&) override {}
    void on_field_impl(http::field name, beast::string_view name_string, beast::string_view value,
                       error_code& ec) override;
    void on_header_impl(error_code& ec) override;
    void on_body_init_impl(const boost::optional<std::uint64_t>& content_length, error_code& ec) override;
    std::size_t on_body_impl(beast::string_view body, error_code& ec) override;
    void on_chunk_header_impl(std::uint64_t, beast::string_view, error_code&) override {}
    std::size_t on_chunk_body_impl(std::uint64_t, beast::string_view body, error_code& ec) override;
    void on_finish_impl(error_code&) override {}

    Request& req_;
};

// The common case without Beast: `in` holds a whole request in the plainest
// form of HTTP/1.x (a known method; HTTP/1.1 or 1.0; every line ending in
// CRLF; no folded line; no Transfer-Encoding or Upgrade; at most one
// Content-Length of plain digits, within `body_limit`, its body all in `in`;
// Connection lists of plain tokens; the head shorter than `header_limit`).
// Then it fills `req` (cleared first) and `content_length` exactly as
// RequestParser would from the same bytes and returns how many bytes the
// request took. Anything else returns 0 and leaves `req` cleared: Beast's
// parser takes it, and decides on it as before (tests/unit/test_request.cpp
// checks the two agree).
std::size_t parse_whole_request(std::string_view in, std::size_t header_limit, std::uint64_t body_limit,
                                Request& req, boost::optional<std::uint64_t>& content_length);

// Whether the path of a request target (before any '?') has a "." or ".."
// segment, spelt plainly or percent-encoded ("%2e", "%2E"). Such a target is
// refused rather than forwarded: "/v1/../../admin" would reach paths of the
// upstream's host outside upstream.base_url, with relaymeter's own key.
bool has_dot_segment(std::string_view target);

} // namespace relaymeter::proxy

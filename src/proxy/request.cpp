#include "relaymeter/proxy/request.hpp"

#include <algorithm>
#include <cstring>

#include "grammar.hpp"

namespace relaymeter::proxy {

std::string_view Request::operator[](http::field id) const {
    for (const Entry& e : fields_) {
        if (e.id == id) return text(e.value);
    }
    return {};
}

std::string_view Request::operator[](std::string_view name) const {
    const http::field id = field_id(name);
    if (id != http::field::unknown) return (*this)[id];
    for (const Entry& e : fields_) {
        if (e.id == http::field::unknown && beast::iequals(text(e.name), name)) return text(e.value);
    }
    return {};
}

std::size_t Request::count(http::field id) const {
    std::size_t n = 0;
    for (const Entry& e : fields_) n += e.id == id ? 1 : 0;
    return n;
}

Request::Span Request::add(std::string_view s) {
    const Span at{static_cast<std::uint32_t>(text_.size()), static_cast<std::uint32_t>(s.size())};
    text_.append(s);
    return at;
}

void Request::clear() {
    text_.clear();
    fields_.clear();
    body_.clear();
    method_at_ = target_at_ = {};
    method_ = http::verb::unknown;
    version_ = 11;
    keep_alive_ = true;
}

void Request::recycle() {
    clear();
    // A large head or body is not kept: a worker keeps up to kKeep requests
    // (512 × 24 KiB at most).
    if (text_.capacity() > 8 * 1024) std::string().swap(text_);
    if (fields_.capacity() > 128) std::vector<Entry>().swap(fields_);
    if (body_.capacity() > 16 * 1024) std::string().swap(body_);
}

std::string_view origin_form(std::string_view target) {
    if (target.empty() || target[0] == '/') return target;
    std::size_t scheme = 0;
    if (target.size() >= 7 && beast::iequals(target.substr(0, 7), "http://")) scheme = 7;
    else if (target.size() >= 8 && beast::iequals(target.substr(0, 8), "https://")) scheme = 8;
    if (scheme == 0) return target;
    const std::size_t path = target.find_first_of("/?", scheme);
    if (path == std::string_view::npos || target[path] == '?') return "/";
    return target.substr(path);
}

void RequestParser::on_request_impl(http::verb method, beast::string_view method_str, beast::string_view target,
                                    int version, error_code&) {
    req_.method_ = method;
    req_.method_at_ = req_.add(method_str);
    req_.target_at_ = req_.add(origin_form(target));
    req_.version_ = static_cast<unsigned>(version);
}

void RequestParser::on_field_impl(http::field name, beast::string_view name_string, beast::string_view value,
                                  error_code&) {
    req_.add_field(name, name_string, value);
}

void Request::add_field(http::field id, std::string_view name_string, std::string_view value) {
    // One resize and two copies rather than four appends.
    std::string& t = text_;
    const std::size_t at = t.size();
    t.resize(at + name_string.size() + 2 + value.size() + 2);
    char* p = t.data() + at;
    std::memcpy(p, name_string.data(), name_string.size());
    p += name_string.size();
    *p++ = ':';
    *p++ = ' ';
    std::memcpy(p, value.data(), value.size());
    p += value.size();
    *p++ = '\r';
    *p = '\n';
    const auto name_at = static_cast<std::uint32_t>(at);
    const auto value_at = static_cast<std::uint32_t>(at + name_string.size() + 2);
    fields_.push_back({id, {name_at, static_cast<std::uint32_t>(name_string.size())},
                       {value_at, static_cast<std::uint32_t>(value.size())}});
}

// basic_parser's own reading of the Connection fields (all of them, as the
// parser saw them) decides keep-alive.
void RequestParser::on_header_impl(error_code&) { req_.keep_alive_ = keep_alive(); }

void RequestParser::on_body_init_impl(const boost::optional<std::uint64_t>& content_length, error_code&) {
    // Room for the declared body, up to a bound: the parser checks the
    // length against the body limit only as the body arrives, so a declared
    // length is not trusted with memory (string_body's reader reserved it
    // whole, and a GET /healthz declaring 100 GB ended in bad_alloc).
    constexpr std::uint64_t kMaxReserve = 8 * 1024 * 1024;
    if (content_length) req_.body_.reserve(static_cast<std::size_t>(std::min(*content_length, kMaxReserve)));
}

std::size_t RequestParser::on_body_impl(beast::string_view body, error_code&) {
    req_.body_.append(body.data(), body.size());
    return body.size();
}

std::size_t RequestParser::on_chunk_body_impl(std::uint64_t, beast::string_view body, error_code& ec) {
    return on_body_impl(body, ec);
}

using namespace grammar;

std::size_t parse_whole_request(std::string_view in, std::size_t header_limit, std::uint64_t body_limit,
                                Request& req, boost::optional<std::uint64_t>& content_length) {
    req.clear();
    content_length = boost::none;
    const auto fail = [&] {
        req.clear();
        content_length = boost::none;
        return std::size_t{0};
    };
    const std::size_t head_end = in.substr(0, header_limit).find("\r\n\r\n");
    if (head_end == std::string_view::npos) return fail();
    const std::size_t head_len = head_end + 4;
    if (head_len >= header_limit) return fail();
    const char* p = in.data();
    const char* const end = p + head_end + 2; // one past the last field line's CRLF
    const char* const last = p + head_len;    // one past the blank line

    // request line
    const char* q = p;
    while (kTchar(*q)) ++q;
    if (q == p || *q != ' ') return fail();
    const std::string_view method(p, static_cast<std::size_t>(q - p));
    const http::verb verb = http::string_to_verb(method);
    if (verb == http::verb::unknown) return fail();
    p = ++q;
    while (kTarget(*q)) ++q;
    if (q == p || *q != ' ') return fail();
    const std::string_view target(p, static_cast<std::size_t>(q - p));
    p = q + 1;
    if (end - p < 10 || std::memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '1' && p[7] != '0') || p[8] != '\r' ||
        p[9] != '\n')
        return fail();
    req.method_ = verb;
    req.method_at_ = req.add(method);
    req.target_at_ = req.add(origin_form(target));
    req.version_ = p[7] == '1' ? 11 : 10;
    p += 10;

    Framing framing;
    const bool plain = field_lines(p, end, last, [&](http::field id, std::string_view name, std::string_view value) {
        if (!framing.field(id, value, false)) return false;
        req.add_field(id, name, value);
        return true;
    });
    if (!plain) return fail();
    if (framing.has_length) content_length = framing.length;
    req.keep_alive_ = framing.keeps_alive(req.version_);

    std::size_t total = head_len;
    if (content_length) {
        if (*content_length > body_limit || *content_length > in.size() - head_len) return fail();
        const auto n = static_cast<std::size_t>(*content_length);
        req.body_.assign(in.data() + head_len, n);
        total += n;
    }
    return total;
}

bool has_dot_segment(std::string_view target) {
    const std::string_view path = target.substr(0, target.find('?'));
    std::size_t start = 0;
    while (start <= path.size()) {
        const std::size_t end = std::min(path.find('/', start), path.size());
        // The segment with each "%2e" read as '.': "." or ".." is 1 or 2 dots.
        std::size_t dots = 0;
        bool only_dots = true;
        for (std::size_t i = start; i < end;) {
            if (path[i] == '.') {
                ++i;
            } else if (path[i] == '%' && end - i >= 3 && path[i + 1] == '2' && (path[i + 2] | 0x20) == 'e') {
                i += 3;
            } else {
                only_dots = false;
                break;
            }
            ++dots;
        }
        if (only_dots && (dots == 1 || dots == 2)) return true;
        start = end + 1;
    }
    return false;
}

} // namespace relaymeter::proxy

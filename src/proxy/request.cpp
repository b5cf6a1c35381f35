#include "relaymeter/proxy/request.hpp"

#include <algorithm>
#include <cstring>

namespace relaymeter::proxy {

std::string_view Request::operator[](http::field id) const {
    for (const Entry& e : fields_) {
        if (e.id == id) return text(e.value);
    }
    return {};
}

std::string_view Request::operator[](std::string_view name) const {
    const http::field id = http::string_to_field(name);
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
    // An unusually large head or body is not kept for ever.
    if (text_.capacity() > 16 * 1024) std::string().swap(text_);
    if (fields_.capacity() > 128) std::vector<Entry>().swap(fields_);
    if (body_.capacity() > 64 * 1024) std::string().swap(body_);
}

void RequestParser::on_request_impl(http::verb method, beast::string_view method_str, beast::string_view target,
                                    int version, error_code&) {
    req_.method_ = method;
    req_.method_at_ = req_.add(method_str);
    req_.target_at_ = req_.add(target);
    req_.version_ = static_cast<unsigned>(version);
}

void RequestParser::on_field_impl(http::field name, beast::string_view name_string, beast::string_view value,
                                  error_code&) {
    // One resize and two copies rather than four appends.
    std::string& t = req_.text_;
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
    req_.fields_.push_back({name, {name_at, static_cast<std::uint32_t>(name_string.size())},
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

std::size_t RequestParser::on_chunk_body_impl(std::uint64_t, beast::string_view body, error_code&) {
    req_.body_.append(body.data(), body.size());
    return body.size();
}

} // namespace relaymeter::proxy

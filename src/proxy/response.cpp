#include "relaymeter/proxy/response.hpp"

#include <charconv>
#include <cstring>

#include "grammar.hpp"

namespace relaymeter::proxy {

using namespace grammar;

std::size_t parse_whole_response_head(std::string_view in, std::size_t header_limit, ResponseHead& head) {
    head.fields.clear();
    const std::size_t head_end = in.substr(0, header_limit).find("\r\n\r\n");
    if (head_end == std::string_view::npos) return 0;
    const std::size_t head_len = head_end + 4;
    if (head_len >= header_limit) return 0;
    const char* p = in.data();
    const char* const end = p + head_end + 2; // one past the last field line's CRLF
    const char* const last = p + head_len;    // one past the blank line

    // status line: "HTTP/1.x DDD reason\r\n"
    if (end - p < 15 || std::memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '1' && p[7] != '0') || p[8] != ' ') return 0;
    const auto digit = [](char c) { return c >= '0' && c <= '9'; };
    if (!digit(p[9]) || !digit(p[10]) || !digit(p[11]) || p[12] != ' ') return 0;
    const int status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    if (status < 200 || status > 599 || status == 204 || status == 304) return 0;
    const char* const r = p + 13;
    const char* q = value_end(r, end);
    if (q[0] != '\r' || q[1] != '\n') return 0;
    head.status = status;
    head.version = p[7] == '1' ? 11 : 10;
    head.reason = {r, static_cast<std::size_t>(q - r)};
    p = q + 2;

    Framing framing;
    const bool plain = field_lines(p, end, last, [&](http::field id, std::string_view name, std::string_view value) {
        if (!framing.field(id, value, true)) return false;
        head.fields.push_back({id, name, value});
        return true;
    });
    if (!plain) {
        head.fields.clear();
        return 0;
    }
    head.body = framing.has_length ? ResponseHead::Body::length
                : framing.chunked  ? ResponseHead::Body::chunked
                                   : ResponseHead::Body::to_eof;
    head.content_length = framing.length;
    // A body read to the connection's end leaves nothing to keep.
    head.keep_alive = framing.keeps_alive(head.version) && head.body != ResponseHead::Body::to_eof;
    return head_len;
}

std::string_view framing_head(const ResponseHead& head, char (&buf)[96]) {
    char* p = buf;
    const auto put = [&p](std::string_view s) {
        std::memcpy(p, s.data(), s.size());
        p += s.size();
    };
    put(head.version == 11 ? "HTTP/1.1 200 OK\r\n" : "HTTP/1.0 200 OK\r\n");
    switch (head.body) {
    case ResponseHead::Body::length:
        put("Content-Length: ");
        p = std::to_chars(p, buf + sizeof buf, head.content_length).ptr; // at most 20 digits
        put("\r\n");
        break;
    case ResponseHead::Body::chunked:
        put("Transfer-Encoding: chunked\r\n");
        break;
    case ResponseHead::Body::to_eof:
        break;
    }
    // Keep-alive as the received head had it (to_eof: never, whatever it said).
    if (head.body != ResponseHead::Body::to_eof) {
        if (head.version == 11 && !head.keep_alive) put("Connection: close\r\n");
        if (head.version == 10 && head.keep_alive) put("Connection: keep-alive\r\n");
    }
    put("\r\n");
    return {buf, static_cast<std::size_t>(p - buf)};
}

} // namespace relaymeter::proxy

// The upstream response's head, read without Beast when it is plain.
//
// Beast's basic_parser<false> costs about 700 instructions per response field
// (with the ~20 fields api.openai.com sends, more than the rest of the
// exchange's parsing together). parse_whole_response_head reads the common
// form directly, as views into the read buffer; Beast's parser then reads only
// the body, after a head that carries the same framing (framing_head).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "relaymeter/net.hpp"

namespace relaymeter::proxy {

// One field of the upstream's response (read like a Beast field).
struct ResponseField {
    http::field id;
    std::string_view name_str;
    std::string_view val;
    http::field name() const { return id; }
    std::string_view name_string() const { return name_str; }
    std::string_view value() const { return val; }
};

struct ResponseHead {
    enum class Body { length, chunked, to_eof };
    int status = 0;
    std::string_view reason;
    unsigned version = 11;
    bool keep_alive = true; // as basic_parser::keep_alive()
    Body body = Body::length;
    std::uint64_t content_length = 0; // Body::length
    std::vector<ResponseField> fields; // the caller's, reused: views into the parsed bytes
};

// `in` starts with a whole response head in the plainest form: HTTP/1.1 or
// 1.0; a status of 200-599 but 204 and 304 (a body follows, framed by the
// head); every line ending in CRLF; no folded line; at most one Content-Length
// of plain digits, or else one Transfer-Encoding of exactly "chunked"; no
// Upgrade; Connection lists of plain tokens; the head shorter than
// `header_limit`. Then it fills `head` as Beast's basic_parser would read the
// same bytes and returns the head's length. Anything else returns 0: Beast's
// parser takes it (tests/unit/test_response.cpp checks the two agree).
std::size_t parse_whole_response_head(std::string_view in, std::size_t header_limit, ResponseHead& head);

// The smallest head from which Beast's parser reads the same body framing and
// keep-alive as from `head`'s: the status line's version, the framing field and
// the Connection field that keep-alive needs. Written to `buf`; returns it.
std::string_view framing_head(const ResponseHead& head, char (&buf)[96]);

} // namespace relaymeter::proxy

// The pieces of HTTP/1.x grammar that the fast head parsers share (request.cpp
// for the client's request, response.cpp for the upstream's response head).
// Each reads only the plainest forms and reports anything else, which then
// goes to Beast's basic_parser; the byte classes are basic_parser's.
#pragma once

#include <cstdint>
#include <string_view>

#include "relaymeter/net.hpp"
#include "relaymeter/proxy/field.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace relaymeter::proxy::grammar {

struct ByteClass {
    bool t[256] = {};
    constexpr bool operator()(char c) const { return t[static_cast<unsigned char>(c)]; }
};

// tchar (RFC 9110 5.6.2): method and field names, Connection tokens.
constexpr ByteClass make_tchar() {
    ByteClass b;
    for (int c = '0'; c <= '9'; ++c) b.t[c] = true;
    for (int c = 'a'; c <= 'z'; ++c) b.t[c] = true;
    for (int c = 'A'; c <= 'Z'; ++c) b.t[c] = true;
    for (char c : std::string_view("!#$%&'*+-.^_`|~")) b.t[static_cast<unsigned char>(c)] = true;
    return b;
}
inline constexpr ByteClass kTchar = make_tchar();

// The request target: any byte but controls, space and DEL.
constexpr ByteClass make_target() {
    ByteClass b;
    for (int c = 0x21; c < 256; ++c) b.t[c] = c != 0x7f;
    return b;
}
inline constexpr ByteClass kTarget = make_target();

// A field value or a reason phrase: HTAB, visible ASCII, space, and obs-text.
constexpr ByteClass make_value() {
    ByteClass b;
    b.t[static_cast<unsigned char>('\t')] = true;
    for (int c = 0x20; c < 256; ++c) b.t[c] = c != 0x7f;
    return b;
}
inline constexpr ByteClass kValue = make_value();

constexpr bool is_blank(char c) { return c == ' ' || c == '\t'; }

// The first byte of [p, last) that cannot be in a field value (a control
// other than HTAB, or DEL), or last. A head's values are most of its bytes.
inline const char* value_end(const char* p, const char* last) {
#if defined(__SSE2__)
    const __m128i tab = _mm_set1_epi8('\t');
    const __m128i space = _mm_set1_epi8(' ');
    const __m128i del = _mm_set1_epi8(0x7f);
    const __m128i minus_one = _mm_set1_epi8(-1);
    while (last - p >= 16) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        // As signed bytes, 0x00-0x1f are 0..31 and obs-text is negative.
        const __m128i ctl = _mm_and_si128(_mm_cmpgt_epi8(v, minus_one), _mm_cmplt_epi8(v, space));
        const __m128i bad = _mm_or_si128(_mm_andnot_si128(_mm_cmpeq_epi8(v, tab), ctl), _mm_cmpeq_epi8(v, del));
        const unsigned m = static_cast<unsigned>(_mm_movemask_epi8(bad));
        if (m != 0) return p + __builtin_ctz(m);
        p += 16;
    }
#endif
    while (p < last && kValue(*p)) ++p;
    return p;
}

// The first byte at or after p that is not a tchar: the end of a field name
// (the head's CRLF stops it before `last`). Names are mostly letters, digits
// and '-', which are checked 16 at a time; the scalar loop goes on from the
// first other byte (':' at once, or a rarer tchar).
inline const char* name_end(const char* p, const char* last) {
#if defined(__SSE2__)
    const __m128i case_bit = _mm_set1_epi8(0x20);
    while (last - p >= 16) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        // As signed bytes, so that obs-text (negative) is in no range.
        const __m128i lower = _mm_or_si128(v, case_bit);
        const __m128i alpha = _mm_and_si128(_mm_cmpgt_epi8(lower, _mm_set1_epi8('a' - 1)),
                                            _mm_cmplt_epi8(lower, _mm_set1_epi8('z' + 1)));
        const __m128i digit = _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8('0' - 1)),
                                            _mm_cmplt_epi8(v, _mm_set1_epi8('9' + 1)));
        const __m128i dash = _mm_cmpeq_epi8(v, _mm_set1_epi8('-'));
        const unsigned plain = static_cast<unsigned>(_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(alpha, digit), dash)));
        if (plain != 0xffff) {
            p += __builtin_ctz(~plain);
            break;
        }
        p += 16;
    }
#endif
    while (kTchar(*p)) ++p;
    return p;
}

// A Connection (or Proxy-Connection) value: plain tokens separated by commas
// with optional blanks, each seen as basic_parser sees it. False for any
// other form (quoted strings, empty elements, upgrade), which Beast then reads.
inline bool connection_tokens(std::string_view v, bool& close, bool& keep_alive) {
    std::size_t i = 0;
    for (;;) {
        while (i < v.size() && is_blank(v[i])) ++i;
        const std::size_t start = i;
        while (i < v.size() && kTchar(v[i])) ++i;
        if (i == start) return false;
        const std::string_view token = v.substr(start, i - start);
        if (beast::iequals(token, "close")) close = true;
        if (beast::iequals(token, "keep-alive")) keep_alive = true;
        if (beast::iequals(token, "upgrade")) return false; // Beast's own handling
        while (i < v.size() && is_blank(v[i])) ++i;
        if (i == v.size()) return true;
        if (v[i] != ',') return false;
        ++i;
    }
}

// What a head's fields say about its framing and keep-alive, read from the
// plainest forms only (as basic_parser reads them).
struct Framing {
    bool close = false;       // a Connection token "close"
    bool keep_alive = false;  // a Connection token "keep-alive"
    bool has_length = false;
    std::uint64_t length = 0; // Content-Length
    bool chunked = false;     // Transfer-Encoding: chunked

    // Takes one field; false when it is not plain: a Content-Length other
    // than one value of at most 19 plain digits; a Transfer-Encoding unless
    // `chunked_ok` and it is exactly one "chunked" without Content-Length;
    // Upgrade; a Connection that is not a list of plain tokens.
    bool field(http::field id, std::string_view v, bool chunked_ok) {
        switch (id) {
        case http::field::content_length: {
            if (has_length || chunked || v.empty() || v.size() > 19) return false;
            std::uint64_t n = 0;
            for (char c : v) {
                if (c < '0' || c > '9') return false;
                n = n * 10 + static_cast<std::uint64_t>(c - '0');
            }
            has_length = true;
            length = n;
            return true;
        }
        case http::field::transfer_encoding:
            if (!chunked_ok || chunked || has_length || !beast::iequals(v, "chunked")) return false;
            chunked = true;
            return true;
        case http::field::upgrade:
            return false;
        case http::field::connection:
        case http::field::proxy_connection:
            return connection_tokens(v, close, keep_alive);
        default:
            return true;
        }
    }
    // As basic_parser::keep_alive() for a head of this version (a body read
    // to the connection's end aside).
    bool keeps_alive(unsigned version) const { return version == 11 ? !close : keep_alive; }
};

// The field lines of a head: [p, end) holds them, each ending in CRLF, and
// `last` is one past the head's blank line. Calls on_field(id, name, value)
// for each (value without its leading and trailing blanks), stopping when
// it returns false. False for any line that is not "name: value" of plain
// bytes with CRLF, or that is folded into the next one.
template <class OnField>
bool field_lines(const char* p, const char* end, const char* last, OnField&& on_field) {
    while (p < end) {
        const char* q = name_end(p, last);
        if (q == p || *q != ':') return false;
        const std::string_view name(p, static_cast<std::size_t>(q - p));
        ++q;
        while (is_blank(*q)) ++q;
        const char* const v = q;
        q = value_end(q, last);
        // The line must end in CRLF, and the next one must not be folded
        // into it (the head's last CRLF is followed by the blank line's CR).
        if (q[0] != '\r' || q[1] != '\n' || is_blank(q[2])) return false;
        const char* ve = q;
        while (ve > v && is_blank(ve[-1])) --ve;
        p = q + 2;
        if (!on_field(field_id(name), name, std::string_view(v, static_cast<std::size_t>(ve - v))))
            return false;
    }
    return true;
}

} // namespace relaymeter::proxy::grammar

#include "usage/json_scan.hpp"

#include <algorithm>
#include <cstring>

namespace relaymeter::usage::detail {

namespace {

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// Four hex digits at s[i..i+4), or -1.
long hex4(std::string_view s, std::size_t i) {
    if (i + 4 > s.size()) return -1;
    long v = 0;
    for (std::size_t k = 0; k < 4; ++k) {
        const int h = hex_value(s[i + k]);
        if (h < 0) return -1;
        v = v * 16 + h;
    }
    return v;
}

// Output of decode_into() into a fixed buffer of `cap` bytes. It counts what
// std::string would hold (decode_into may overshoot its limit by the tail of
// a UTF-8 sequence, then cuts back), writing only what fits.
struct FixedOut {
    char* data;
    std::size_t cap;
    std::size_t len = 0;
    std::size_t size() const { return len; }
    void push_back(char c) {
        if (len < cap) data[len] = c;
        ++len;
    }
    void append(const char* p, std::size_t n) { // callers never pass more than fits
        std::memcpy(data + len, p, n);
        len += n;
    }
    void resize(std::size_t n) { len = n; } // only ever shrinks
};

template <class Out>
void append_utf8(Out& out, unsigned long cp) {
    if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
}

template <class Out>
void decode_into(std::string_view raw, Out& out, std::size_t max_out) {
    const std::size_t limit = out.size() + max_out;
    std::size_t i = 0;
    while (i < raw.size() && out.size() < limit) {
        const char* p = raw.data() + i;
        const auto* bs = static_cast<const char*>(std::memchr(p, '\\', raw.size() - i));
        const std::size_t plain = bs ? static_cast<std::size_t>(bs - p) : raw.size() - i;
        out.append(p, std::min(plain, limit - out.size()));
        i += plain;
        if (i >= raw.size() || out.size() >= limit) break;
        // raw[i] is a backslash.
        if (i + 1 >= raw.size()) break; // cut-off escape
        const char e = raw[i + 1];
        i += 2;
        switch (e) {
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
            const long hi = hex4(raw, i);
            if (hi < 0) return; // cut off or malformed: stop here
            i += 4;
            unsigned long cp = static_cast<unsigned long>(hi);
            if (hi >= 0xD800 && hi <= 0xDBFF) {
                const long lo = (i + 1 < raw.size() && raw[i] == '\\' && raw[i + 1] == 'u')
                                    ? hex4(raw, i + 2)
                                    : -1;
                if (lo >= 0xDC00 && lo <= 0xDFFF) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (static_cast<unsigned long>(lo) - 0xDC00);
                    i += 6;
                } else {
                    cp = 0xFFFD;
                }
            } else if (hi >= 0xDC00 && hi <= 0xDFFF) {
                cp = 0xFFFD;
            }
            append_utf8(out, cp);
            break;
        }
        default: out.push_back(e); break; // \" \\ \/ (and, leniently, anything else)
        }
    }
    if (out.size() > limit) out.resize(limit);
}

} // namespace

void decode_json_string(std::string_view raw, std::string& out, std::size_t max_out) {
    decode_into(raw, out, max_out);
}

std::size_t decode_json_string(std::string_view raw, char* out, std::size_t max_out) {
    FixedOut fixed{out, max_out};
    decode_into(raw, fixed, max_out);
    return fixed.len;
}

std::string_view trim_json_ws(std::string_view s) {
    while (!s.empty() && is_ws(s.front())) s.remove_prefix(1);
    while (!s.empty() && is_ws(s.back())) s.remove_suffix(1);
    return s;
}

void JsonScanner::reset() {
    mode_ = Mode::root;
    escape_ = false;
    in_string_ = false;
    skip_depth_ = 0;
    consumed_ = 0;
    walk_depth_ = 0;
    key_long_ = false;
    key_escaped_ = false;
    soft_depth_ = 0;
    value_malformed_ = false;
    directive_ = {};
    value_first_ = 0;
    value_begin_ = 0;
    capturing_ = false;
    capture_truncated_ = false;
    capture_spilled_ = false;
    capture_from_ = 0;
    capture_.clear();
}

JsonScanner::Status JsonScanner::finish() const {
    switch (mode_) {
    case Mode::done: return Status::complete;
    case Mode::root:
    case Mode::not_object: return Status::not_object;
    default: return Status::error;
    }
}

// The walk inside the open soft object found a malformed byte (between two
// tokens of a walked object: no string or skipped value is open). From here
// the soft object is skipped as a skipped value is: its walked objects still
// open are the nesting depth, and the byte is read again as part of it.
void JsonScanner::soften() {
    skip_depth_ = static_cast<std::size_t>(walk_depth_ - soft_depth_ + 1);
    walk_depth_ = soft_depth_ - 1;
    value_first_ = '{';
    value_begin_ = levels_[static_cast<std::size_t>(soft_depth_ - 1)].open;
    value_malformed_ = true;
    soft_depth_ = 0;
    in_string_ = false;
    escape_ = false;
    capturing_ = false;
    directive_ = {Walk::descend, 0}; // reported as a descended value is
}

void JsonScanner::append_capture(const char* p, std::size_t len) {
    const std::size_t limit = directive_.limit;
    const std::size_t room = limit - std::min(limit, capture_.size());
    if (len > room) {
        capture_truncated_ = true;
        len = room;
    }
    capture_.append(p, len);
}

} // namespace relaymeter::usage::detail

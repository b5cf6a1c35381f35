#include "usage/json_scan.hpp"

#include <algorithm>
#include <cstring>

namespace relaymeter::usage::detail {

namespace {

constexpr std::size_t npos = static_cast<std::size_t>(-1);

constexpr bool is_ws(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

// Bytes that can continue a number or a literal (true/false/null).
constexpr bool is_scalar_byte(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           c == '-' || c == '+' || c == '.';
}

constexpr bool is_scalar_start(char c) {
    return (c >= '0' && c <= '9') || c == '-' || c == 't' || c == 'f' || c == 'n';
}

// Bytes that matter while skipping a container.
struct StructuralTable {
    bool t[256] = {};
    constexpr StructuralTable() {
        t[static_cast<unsigned char>('"')] = true;
        t[static_cast<unsigned char>('{')] = true;
        t[static_cast<unsigned char>('}')] = true;
        t[static_cast<unsigned char>('[')] = true;
        t[static_cast<unsigned char>(']')] = true;
    }
};
constexpr StructuralTable kStructural;

std::size_t skip_ws(const char* p, std::size_t i, std::size_t n) {
    while (i < n && is_ws(p[i])) ++i;
    return i;
}

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

// Scans string bytes from p[i] (just after the opening quote, or where the
// previous chunk left off). Returns the index one past the closing quote, or
// npos when the string goes on past the chunk (escape_ then says whether the
// chunk ended inside an escape). A quote is escaped iff an odd run of
// backslashes precedes it; runs are counted back to `clean`, a position known
// not to be escaped, so the work stays linear.
std::size_t JsonScanner::scan_string(const char* p, std::size_t i, std::size_t n) {
    if (escape_) {
        if (i == n) return npos;
        escape_ = false;
        ++i;
    }
    std::size_t clean = i;
    for (;;) {
        const auto* q = static_cast<const char*>(std::memchr(p + i, '"', n - i));
        const std::size_t j = q ? static_cast<std::size_t>(q - p) : n;
        std::size_t k = j;
        while (k > clean && p[k - 1] == '\\') --k;
        const bool odd = ((j - k) & 1U) != 0;
        if (!q) {
            escape_ = odd;
            return npos;
        }
        if (!odd) return j + 1;
        i = j + 1;
        clean = i;
    }
}

void JsonScanner::open_object(std::size_t i) {
    Level& level = levels_[static_cast<std::size_t>(walk_depth_++)];
    level.open = abs(i);
    level.members = 0;
    level.last_value_end = abs(i) + 1;
    level.key_len = 0;
    mode_ = Mode::key_or_end;
}

// p[i] is the '}' of the innermost walked object.
void JsonScanner::close_object(std::size_t i, JsonScanHandler& handler) {
    const Level& level = levels_[static_cast<std::size_t>(walk_depth_ - 1)];
    handler.on_object_end({walk_depth_, level.open, abs(i), level.members, level.last_value_end});
    const std::size_t open = level.open;
    --walk_depth_;
    if (walk_depth_ == 0) {
        mode_ = Mode::done;
        return;
    }
    // The object was a member value of its parent.
    Level& parent = levels_[static_cast<std::size_t>(walk_depth_ - 1)];
    MemberValue v;
    v.depth = walk_depth_;
    v.key = parent.key_view();
    v.first = '{';
    v.begin = open;
    v.end = abs(i) + 1;
    handler.on_value(v);
    ++parent.members;
    parent.last_value_end = v.end;
    mode_ = Mode::after_value;
}

// The raw key is in level.key (unless key_long_): unescape it in place.
void JsonScanner::end_key(JsonScanHandler& handler) {
    Level& level = levels_[static_cast<std::size_t>(walk_depth_ - 1)];
    if (key_long_) {
        level.key_len = 0;
    } else if (std::memchr(level.key.data(), '\\', level.key_len) != nullptr) {
        std::array<char, kMaxKey> decoded; // an escape never decodes longer than it is written
        level.key_len = decode_json_string(level.key_view(), decoded.data(), kMaxKey);
        std::memcpy(level.key.data(), decoded.data(), level.key_len);
    }
    directive_ = handler.on_key(level.key_view(), walk_depth_);
    mode_ = Mode::colon;
}

// p[i] is the first byte of a member value. Returns the next index.
std::size_t JsonScanner::start_value(const char* p, std::size_t i) {
    const char c = p[i];
    value_first_ = c;
    value_begin_ = abs(i);
    if (c == '{' && directive_.walk == Walk::descend && walk_depth_ < kMaxWalkDepth) {
        open_object(i);
        return i + 1;
    }
    if (c == '{' || c == '[') {
        mode_ = Mode::in_container;
        skip_depth_ = 1;
        in_string_ = false;
    } else if (c == '"') {
        mode_ = Mode::in_string;
        escape_ = false;
    } else if (is_scalar_start(c)) {
        mode_ = Mode::in_scalar;
    } else {
        mode_ = Mode::error;
        return i;
    }
    if (directive_.walk == Walk::capture) {
        capturing_ = true;
        capture_truncated_ = false;
        capture_spilled_ = false;
        capture_from_ = i;
    }
    return i + 1;
}

// The value ends just before p[i].
void JsonScanner::end_value(const char* p, std::size_t i, JsonScanHandler& handler) {
    Level& level = levels_[static_cast<std::size_t>(walk_depth_ - 1)];
    MemberValue v;
    v.depth = walk_depth_;
    v.key = level.key_view();
    v.first = value_first_;
    v.begin = value_begin_;
    v.end = abs(i);
    if (capturing_) {
        capturing_ = false;
        if (capture_spilled_) {
            append_capture(p + capture_from_, i - capture_from_);
            v.text = capture_;
            v.truncated = capture_truncated_;
        } else { // the whole value is in this chunk: no copy
            const std::size_t len = i - capture_from_;
            v.truncated = len > directive_.limit;
            v.text = {p + capture_from_, v.truncated ? directive_.limit : len};
        }
    }
    handler.on_value(v);
    ++level.members;
    level.last_value_end = v.end;
    mode_ = Mode::after_value;
}

void JsonScanner::append_capture(const char* p, std::size_t len) {
    const std::size_t room = directive_.limit - std::min(directive_.limit, capture_.size());
    if (len > room) {
        capture_truncated_ = true;
        len = room;
    }
    capture_.append(p, len);
}

void JsonScanner::feed(std::string_view chunk, JsonScanHandler& handler) {
    const char* p = chunk.data();
    const std::size_t n = chunk.size();
    std::size_t i = 0;
    capture_from_ = 0;
    while (i < n) {
        switch (mode_) {
        case Mode::root:
            i = skip_ws(p, i, n);
            if (i == n) break;
            if (p[i] != '{') {
                mode_ = Mode::not_object;
                return;
            }
            open_object(i);
            ++i;
            break;

        case Mode::key_or_end:
        case Mode::key_required:
            i = skip_ws(p, i, n);
            if (i == n) break;
            if (p[i] == '"') {
                mode_ = Mode::key;
                levels_[static_cast<std::size_t>(walk_depth_ - 1)].key_len = 0;
                key_long_ = false;
                escape_ = false;
                ++i;
            } else if (p[i] == '}' && mode_ == Mode::key_or_end) {
                close_object(i, handler);
                ++i;
            } else {
                mode_ = Mode::error;
                return;
            }
            break;

        case Mode::key: {
            const std::size_t j = scan_string(p, i, n);
            const std::size_t stop = j == npos ? n : j - 1; // exclude the closing quote
            const std::size_t len = stop - i;
            Level& level = levels_[static_cast<std::size_t>(walk_depth_ - 1)];
            if (key_long_ || level.key_len + len > kMaxKey) {
                key_long_ = true;
            } else {
                std::memcpy(level.key.data() + level.key_len, p + i, len);
                level.key_len += len;
            }
            if (j == npos) {
                i = n;
                break;
            }
            i = j;
            end_key(handler);
            break;
        }

        case Mode::colon:
            i = skip_ws(p, i, n);
            if (i == n) break;
            if (p[i] != ':') {
                mode_ = Mode::error;
                return;
            }
            mode_ = Mode::value;
            ++i;
            break;

        case Mode::value:
            i = skip_ws(p, i, n);
            if (i == n) break;
            i = start_value(p, i);
            if (mode_ == Mode::error) return;
            break;

        case Mode::in_string: {
            const std::size_t j = scan_string(p, i, n);
            if (j == npos) {
                i = n;
                break;
            }
            i = j;
            end_value(p, i, handler);
            break;
        }

        case Mode::in_container:
            while (i < n) {
                if (in_string_) {
                    const std::size_t j = scan_string(p, i, n);
                    if (j == npos) {
                        i = n;
                        break;
                    }
                    i = j;
                    in_string_ = false;
                    continue;
                }
                while (i < n && !kStructural.t[static_cast<unsigned char>(p[i])]) ++i;
                if (i == n) break;
                const char c = p[i++];
                if (c == '"') {
                    in_string_ = true;
                    escape_ = false;
                } else if (c == '{' || c == '[') {
                    ++skip_depth_;
                } else if (--skip_depth_ == 0) { // '}' or ']'
                    end_value(p, i, handler);
                    break;
                }
            }
            break;

        case Mode::in_scalar:
            while (i < n && is_scalar_byte(p[i])) ++i;
            if (i < n) end_value(p, i, handler);
            break;

        case Mode::after_value:
            i = skip_ws(p, i, n);
            if (i == n) break;
            if (p[i] == ',') {
                mode_ = Mode::key_required;
            } else if (p[i] == '}') {
                close_object(i, handler);
            } else {
                mode_ = Mode::error;
                return;
            }
            ++i;
            break;

        case Mode::done:
            i = skip_ws(p, i, n);
            if (i < n) {
                mode_ = Mode::error;
                return;
            }
            break;

        case Mode::not_object:
        case Mode::error:
            return;
        }
    }
    // Keep the captured part of a value that goes on in the next chunk.
    if (capturing_) {
        if (!capture_spilled_) {
            capture_.clear();
            capture_spilled_ = true;
        }
        append_capture(p + capture_from_, n - capture_from_);
    }
    consumed_ += n;
}

} // namespace relaymeter::usage::detail

// Private to the usage module: a small incremental JSON structural scanner.
//
// It walks JSON text fed in chunks split anywhere, tracking strings, escapes
// and nesting, and reports the members of the objects it is told to walk: the
// root object always, and any member value the handler asks to descend into.
// Every other value is skipped without building anything (strings and
// containers 16 bytes at a time with SSE2 where available, a depth counter for
// nesting), or handed over as text (a view of the chunk, or a bounded copy
// when it spans chunks) when the handler asks for it. Memory is fixed: a few small
// buffers plus the capture, whatever the size of the input.
//
// The scanner checks the structure of the walked objects strictly and is
// lenient inside skipped values (it does not validate numbers, literals or
// bracket kinds there): it finds things, it is not a validator.
//
// This one piece of code serves inspect_request, inject_include_usage,
// JsonUsageScanner and StreamMeter's per-event checks.
#pragma once

#if defined(__SSE2__) && !defined(RELAYMETER_USAGE_NO_SIMD)
#include <emmintrin.h>
#define RELAYMETER_USAGE_SSE2 1
#endif

#include <array>
#include <cstddef>
#include <cstring>
#include <cstdint>
#include <string>
#include <string_view>

namespace relaymeter::usage::detail {

// What to do with the value of the member whose key was just read.
enum class Walk : std::uint8_t {
    skip,    // pass over it
    capture, // pass over it and hand its text to on_value (at most `limit` bytes)
    descend, // if it is an object, walk its members too (else: skip)
};

struct Directive { // 8 bytes: returned in a register
    Walk walk = Walk::skip;
    std::uint32_t limit = 0; // capture: bytes kept; a longer value's text is a prefix
    // descend only: if the object turns out malformed inside, do not fail the
    // scan: skip the rest of it as a skipped value would be skipped (leniently)
    // and report it with MemberValue::malformed. What was reported from inside
    // it before is then to be discarded by the handler. Not nested: inside a
    // soft object, `soft` is ignored (the outer one takes the failure).
    bool soft = false;
};

// A member value that has just ended.
struct MemberValue {
    int depth = 0;          // depth of the object holding it: 1 = root object
    std::string_view key;   // its key, unescaped ("" for keys over kMaxKey bytes)
    char first = 0;         // first byte: '{', '[', '"', 't', 'f', 'n', '-' or a digit
    std::size_t begin = 0;  // absolute offset of its first byte in the whole input
    std::size_t end = 0;    // absolute offset one past its last byte
    std::string_view text;  // Walk::capture only: its bytes (a prefix if truncated)
    bool truncated = false; // the capture hit its limit
    bool malformed = false; // a soft descended object that was not well-formed
};

// A walked object that has just closed.
struct ObjectEnd {
    int depth = 0;           // 1 = root object
    std::size_t open = 0;    // absolute offset of its '{'
    std::size_t close = 0;   // absolute offset of its '}'
    std::size_t members = 0; // number of members
    std::size_t last_value_end = 0; // end of its last member's value (open + 1 when empty)
};

class JsonScanHandler {
public:
    virtual ~JsonScanHandler() = default;
    // A key of a walked object has been read (depth 1 = root object).
    virtual Directive on_key(std::string_view key, int depth) = 0;
    // The value of a member of a walked object has ended, for the members
    // on_key asked to capture or descend into (skipped ones are not
    // reported). Descended objects report on_object_end first, then on_value
    // (with empty text).
    virtual void on_value(const MemberValue& value) = 0;
    virtual void on_object_end(const ObjectEnd&) {}
};

class JsonScanner {
public:
    enum class Status : std::uint8_t {
        complete,   // one object, then only whitespace
        not_object, // empty, or the first non-blank byte is not '{'
        error,      // malformed, truncated, or trailing garbage
    };

    static constexpr int kMaxWalkDepth = 4;      // deeper descents are skipped
    static constexpr std::size_t kMaxKey = 64;   // longer raw keys are reported as ""

    JsonScanner() = default;

    // Scans the next piece of the input. Cheap no-op once the scan has failed.
    // A template (defined below) so that a `final` handler's calls are direct.
    template <class Handler>
    void feed(std::string_view chunk, Handler& handler);
    // The input has ended: what it was.
    Status finish() const;
    // True once the input can no longer be one JSON object (feed ignores more).
    bool failed() const { return mode_ == Mode::not_object || mode_ == Mode::error; }
    // True once the root object has closed.
    bool closed() const { return mode_ == Mode::done; }
    void reset();

private:
    enum class Mode : std::uint8_t {
        root,         // before the root value
        key_or_end,   // after '{'
        key_required, // after ','
        key,          // inside a key string
        colon,        // after a key
        value,        // after ':'
        in_string,    // inside a skipped string value
        in_container, // inside a skipped array/object value
        in_scalar,    // inside a number or literal
        after_value,  // expecting ',' or '}'
        done,         // root closed: only whitespace may follow
        not_object,
        error,
    };

    struct Level {
        std::size_t open = 0;
        std::size_t members = 0;
        std::size_t last_value_end = 0;
        // Key of the member being read in this object: raw bytes while the
        // key is read, unescaped once it has ended (never longer than raw).
        std::size_t key_len = 0;
        // During feed() only: the key lies in the chunk, here (not copied).
        // feed() copies it into `key` before it returns.
        const char* key_ext = nullptr;
        std::array<char, kMaxKey> key{};
        std::string_view key_view() const { return {key_ext ? key_ext : key.data(), key_len}; }
    };

    std::size_t scan_string(const char* p, std::size_t i, std::size_t n, bool& saw_escape);
    void open_object(std::size_t i, bool soft);
    template <class Handler>
    void close_object(std::size_t i, Handler& handler);
    void soften();
    template <class Handler>
    void end_value(const char* p, std::size_t i, Handler& handler);
    void append_capture(const char* p, std::size_t len);
    std::size_t abs(std::size_t i) const { return consumed_ + i; }

    Mode mode_ = Mode::root;
    bool escape_ = false;         // a string's last byte so far was an unpaired backslash
    bool in_string_ = false;      // in_container: inside a string
    std::size_t skip_depth_ = 0;  // in_container: nesting depth
    std::size_t consumed_ = 0;    // bytes fed before the current chunk

    std::array<Level, kMaxWalkDepth> levels_;
    int walk_depth_ = 0; // walked objects open

    bool key_long_ = false;    // the key being read is over kMaxKey raw bytes
    bool key_escaped_ = false; // ...and has a backslash in it
    int soft_depth_ = 0;       // walk depth of the open soft object (its members'), 0: none
    bool value_malformed_ = false; // the skipped value is a soft object that failed

    Directive directive_;          // for the value being read
    char value_first_ = 0;
    std::size_t value_begin_ = 0;

    // A captured value that ends in the chunk it started in is handed over as
    // a view of that chunk; only one that spans chunks is copied, into capture_
    // (bounded by the directive's limit, capacity kept across reset()).
    bool capturing_ = false;
    bool capture_truncated_ = false;
    bool capture_spilled_ = false; // capture_ holds the value's bytes from earlier chunks
    std::size_t capture_from_ = 0; // index in the current chunk where capture resumes
    std::string capture_;
};

// Appends the unescaped form of the inside of a JSON string (without the
// quotes) to `out`, at most `max_out` bytes; \u escapes become UTF-8 (lone
// surrogates U+FFFD). An escape cut off at the end of `raw` is dropped.
void decode_json_string(std::string_view raw, std::string& out, std::size_t max_out);
// The same into a fixed buffer of at least `max_out` bytes: writes the bytes
// the std::string form would append, returns how many.
std::size_t decode_json_string(std::string_view raw, char* out, std::size_t max_out);

// key == lit, for a string literal: a length check and a fixed-size compare
// the compiler inlines (std::string_view's == goes through an ordering compare).
template <std::size_t N>
inline bool key_is(std::string_view key, const char (&lit)[N]) {
    return key.size() == N - 1 && __builtin_memcmp(key.data(), lit, N - 1) == 0;
}

// Strips JSON whitespace (space, tab, CR, LF) from both ends.
std::string_view trim_json_ws(std::string_view s);

// ---------------------------------------------------------------------------
// The scanner's hot path, inline: the byte finders and JsonScanner::feed.

namespace scan {

inline constexpr std::size_t npos = static_cast<std::size_t>(-1);

constexpr bool is_ws(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

struct ByteTable {
    bool t[256] = {};
    constexpr bool operator[](char c) const { return t[static_cast<unsigned char>(c)]; }
};

// Bytes that can continue a number or a literal (true/false/null).
constexpr ByteTable make_scalar_table() {
    ByteTable b;
    for (int c = 0; c < 256; ++c)
        b.t[c] = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' ||
                 c == '+' || c == '.';
    return b;
}
constexpr ByteTable kScalarByte = make_scalar_table();

constexpr bool is_scalar_start(char c) {
    return (c >= '0' && c <= '9') || c == '-' || c == 't' || c == 'f' || c == 'n';
}

// Bytes that matter while skipping a container (outside its strings).
constexpr ByteTable make_structural_table() {
    ByteTable b;
    for (char c : {'"', '{', '}', '[', ']'}) b.t[static_cast<unsigned char>(c)] = true;
    return b;
}
constexpr ByteTable kStructural = make_structural_table();

inline std::size_t skip_ws(const char* p, std::size_t i, std::size_t n) {
    while (i < n && is_ws(p[i])) ++i;
    return i;
}

#if defined(RELAYMETER_USAGE_SSE2)
// The index of the first byte of p[i, n) that `match` flags, or n. Whole
// 16-byte loads only: inside [0, n), never past it (a tail shorter than 16
// bytes is loaded as the last 16 bytes of the chunk when it has them).
template <class Match>
inline std::size_t find_simd(const char* p, std::size_t i, std::size_t n, Match match) {
    while (i + 16 <= n) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
        const unsigned m = static_cast<unsigned>(_mm_movemask_epi8(match(v)));
        if (m != 0) return i + static_cast<std::size_t>(__builtin_ctz(m));
        i += 16;
    }
    if (i == n) return n;
    if (n >= 16) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + n - 16));
        const unsigned m = static_cast<unsigned>(_mm_movemask_epi8(match(v))) >> (16 - (n - i));
        return m != 0 ? i + static_cast<std::size_t>(__builtin_ctz(m)) : n;
    }
    return npos; // fewer than 16 bytes in all: the caller loops
}
#endif

// First '"' or '\\' in p[i, n), or n.
inline std::size_t find_quote_or_backslash(const char* p, std::size_t i, std::size_t n) {
#if defined(RELAYMETER_USAGE_SSE2)
    const std::size_t j = find_simd(p, i, n, [](__m128i v) {
        return _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')), _mm_cmpeq_epi8(v, _mm_set1_epi8('\\')));
    });
    if (j != npos) return j;
    while (i < n && p[i] != '"' && p[i] != '\\') ++i;
    return i;
#else
    // memchr is vectorized where it matters; two passes bound by the quote.
    const auto* q = static_cast<const char*>(std::memchr(p + i, '"', n - i));
    const std::size_t end = q ? static_cast<std::size_t>(q - p) : n;
    const auto* b = static_cast<const char*>(std::memchr(p + i, '\\', end - i));
    return b ? static_cast<std::size_t>(b - p) : end;
#endif
}

// First '"', '{', '}', '[' or ']' in p[i, n), or n.
inline std::size_t find_structural(const char* p, std::size_t i, std::size_t n) {
#if defined(RELAYMETER_USAGE_SSE2)
    // c | 0x20 is '{' for '{' and '[' only, '}' for '}' and ']' only.
    const std::size_t j = find_simd(p, i, n, [](__m128i v) {
        const __m128i lower = _mm_or_si128(v, _mm_set1_epi8(0x20));
        return _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')),
                            _mm_or_si128(_mm_cmpeq_epi8(lower, _mm_set1_epi8('{')),
                                         _mm_cmpeq_epi8(lower, _mm_set1_epi8('}'))));
    });
    if (j != npos) return j;
#endif
    while (i < n && !kStructural[p[i]]) ++i;
    return i;
}

#if defined(RELAYMETER_USAGE_SSE2)
// Skipping a container outside its strings, 16 bytes at a time: returns the
// index one past the byte that closes it (depth back to 0), or where the
// block walk stopped: at a block with a backslash in it (the caller steps
// over it one structural byte at a time), or with fewer than 16 bytes left.
// `in_string` says whether the walk stopped inside a string (just after its
// opening quote, which was in the last block; the caller scans on from
// there). Without backslashes, a byte is inside a string iff an odd number
// of quotes precedes it in the container, so the quotes' prefix XOR gives the
// string bytes and the brackets outside them are counted.
inline std::size_t skip_container_blocks(const char* p, std::size_t i, std::size_t n, std::size_t& depth,
                                         bool& in_string) {
    while (i + 16 <= n) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
        const unsigned bs = static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8('\\'))));
        if (bs != 0) break;
        const unsigned q = static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8('"'))));
        const __m128i lower = _mm_or_si128(v, _mm_set1_epi8(0x20));
        const unsigned open = static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(lower, _mm_set1_epi8('{'))));
        const unsigned close = static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(lower, _mm_set1_epi8('}'))));
        unsigned inside = q; // bit k: odd number of quotes at 0..k of the block
        inside ^= inside << 1;
        inside ^= inside << 2;
        inside ^= inside << 4;
        inside ^= inside << 8;
        inside &= 0xFFFFU;
        unsigned brackets = (open | close) & ~inside; // a quote's own bit is "inside": not a bracket
        while (brackets != 0) {
            const unsigned k = static_cast<unsigned>(__builtin_ctz(brackets));
            brackets &= brackets - 1;
            if ((open >> k) & 1U) {
                ++depth;
            } else if (--depth == 0) {
                return i + k + 1;
            }
        }
        i += 16;
        if ((inside >> 15) & 1U) { // a string goes on past the block
            // Its opening quote is the last one of the block; the rest of
            // the string is the caller's to scan (it may hold escapes).
            in_string = true;
            const unsigned last_quote = 31U - static_cast<unsigned>(__builtin_clz(q));
            return i - 16 + last_quote + 1;
        }
    }
    return i;
}
#endif

} // namespace scan

using namespace scan; // private header of the usage module

// Scans string bytes from p[i] (just after the opening quote, or where the
// previous chunk left off). Returns the index one past the closing quote, or
// npos when the string goes on past the chunk (escape_ then says whether the
// chunk ended just after a backslash, whose escaped byte comes next). A
// backslash escapes the byte after it, whatever it is; `saw_escape` is set
// when there is one.
inline std::size_t JsonScanner::scan_string(const char* p, std::size_t i, std::size_t n, bool& saw_escape) {
    if (escape_) {
        if (i == n) return npos;
        escape_ = false;
        ++i;
    }
    for (;;) {
        i = find_quote_or_backslash(p, i, n);
        if (i == n) return npos;
        if (p[i] == '"') return i + 1;
        saw_escape = true;
        if (i + 1 == n) {
            escape_ = true;
            return npos;
        }
        i += 2;
    }
}

inline void JsonScanner::open_object(std::size_t i, bool soft) {
    Level& level = levels_[static_cast<std::size_t>(walk_depth_++)];
    level.open = abs(i);
    level.members = 0;
    level.last_value_end = abs(i) + 1;
    level.key_len = 0;
    level.key_ext = nullptr;
    if (soft && soft_depth_ == 0) soft_depth_ = walk_depth_;
}

// p[i] is the '}' of the innermost walked object.
template <class Handler>
inline void JsonScanner::close_object(std::size_t i, Handler& handler) {
    const Level& level = levels_[static_cast<std::size_t>(walk_depth_ - 1)];
    handler.on_object_end({walk_depth_, level.open, abs(i), level.members, level.last_value_end});
    const std::size_t open = level.open;
    if (walk_depth_ == soft_depth_) soft_depth_ = 0;
    --walk_depth_;
    if (walk_depth_ == 0) return;
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
}

// The value ends just before p[i].
template <class Handler>
inline void JsonScanner::end_value(const char* p, std::size_t i, Handler& handler) {
    Level& level = levels_[static_cast<std::size_t>(walk_depth_ - 1)];
    ++level.members;
    level.last_value_end = abs(i);
    if (directive_.walk == Walk::skip) return; // not reported
    MemberValue v;
    v.depth = walk_depth_;
    v.key = level.key_view();
    v.first = value_first_;
    v.begin = value_begin_;
    v.end = abs(i);
    v.malformed = value_malformed_;
    value_malformed_ = false;
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
}

// One pass over the chunk. Each state is a label; the walk goes from one to
// the next directly, and mode_ is stored only where the chunk runs out (or the
// scan stops), so that the next feed() resumes there.
// Moves i to the next non-blank byte, or stops the feed in `mode` at the end
// of the chunk. Most JSON has no blank here: one compare says so.
#define RELAYMETER_SCAN_NEXT(mode)                                                                  \
    if (i >= n || static_cast<unsigned char>(p[i]) <= ' ') {                                       \
        i = skip_ws(p, i, n);                                                                      \
        if (i == n) {                                                                              \
            mode_ = (mode);                                                                        \
            goto out;                                                                              \
        }                                                                                          \
    }

template <class Handler>
void JsonScanner::feed(std::string_view chunk, Handler& handler) {
    const char* const p = chunk.data();
    const std::size_t n = chunk.size();
    std::size_t i = 0;
    std::size_t kj = 0; // a key's scan_string() result
    capture_from_ = 0;
    if (n == 0) return;

    switch (mode_) {
    case Mode::root: goto root;
    case Mode::key_or_end: goto key_or_end;
    case Mode::key_required: goto key_required;
    case Mode::key: goto key;
    case Mode::colon: goto colon;
    case Mode::value: goto value;
    case Mode::in_string: goto in_string;
    case Mode::in_container: goto in_container;
    case Mode::in_scalar: goto in_scalar;
    case Mode::after_value: goto after_value;
    case Mode::done: goto done;
    case Mode::not_object:
    case Mode::error: return;
    }

root:
    RELAYMETER_SCAN_NEXT(Mode::root);
    if (p[i] != '{') {
        mode_ = Mode::not_object;
        goto out;
    }
    open_object(i, false);
    ++i;
    // fall through
key_or_end:
    RELAYMETER_SCAN_NEXT(Mode::key_or_end);
    if (p[i] == '}') goto close;
    if (p[i] != '"') goto fail;
    ++i;
    goto key_start;

key_required:
    RELAYMETER_SCAN_NEXT(Mode::key_required);
    if (p[i] != '"') goto fail;
    ++i;
    // fall through
key_start: {
    // The common case: a plain key within the chunk, used where it is.
    const std::size_t j = find_quote_or_backslash(p, i, n);
    if (j < n && p[j] == '"' && j - i <= kMaxKey) {
        Level& level = levels_[static_cast<std::size_t>(walk_depth_ - 1)];
        level.key_ext = p + i;
        level.key_len = j - i;
        i = j + 1;
        goto key_end;
    }
    Level& level = levels_[static_cast<std::size_t>(walk_depth_ - 1)];
    level.key_len = 0;
    level.key_ext = nullptr;
    key_long_ = false;
    key_escaped_ = false;
    escape_ = false;
    kj = scan_string(p, i, n, key_escaped_);
    goto key_tail;
}

key:
    kj = scan_string(p, i, n, key_escaped_);
    // fall through
key_tail: {
    // Raw bytes go to level.key (when they fit), unescaped once the key ends.
    const std::size_t stop = kj == npos ? n : kj - 1; // exclude the closing quote
    const std::size_t len = stop - i;
    Level& level = levels_[static_cast<std::size_t>(walk_depth_ - 1)];
    if (key_long_ || level.key_len + len > kMaxKey) {
        key_long_ = true;
    } else {
        std::memcpy(level.key.data() + level.key_len, p + i, len);
        level.key_len += len;
    }
    if (kj == npos) {
        mode_ = Mode::key;
        goto out;
    }
    i = kj;
    if (key_long_) {
        level.key_len = 0;
    } else if (key_escaped_) {
        std::array<char, kMaxKey> decoded; // an escape never decodes longer than it is written
        level.key_len = decode_json_string(level.key_view(), decoded.data(), kMaxKey);
        std::memcpy(level.key.data(), decoded.data(), level.key_len);
    }
}
    // fall through
key_end: {
    Level& level = levels_[static_cast<std::size_t>(walk_depth_ - 1)];
    directive_ = handler.on_key(level.key_view(), walk_depth_);
}
    // fall through
colon:
    RELAYMETER_SCAN_NEXT(Mode::colon);
    if (p[i] != ':') goto fail;
    ++i;
    // fall through
value: {
    RELAYMETER_SCAN_NEXT(Mode::value);
    const char c = p[i];
    value_first_ = c;
    value_begin_ = abs(i);
    if (c == '{' && directive_.walk == Walk::descend && walk_depth_ < kMaxWalkDepth) {
        open_object(i, directive_.soft);
        ++i;
        goto key_or_end;
    }
    const bool capture = directive_.walk == Walk::capture;
    if (c == '"') {
        escape_ = false;
    } else if (c == '{' || c == '[') {
        skip_depth_ = 1;
        in_string_ = false;
    } else if (!is_scalar_start(c)) {
        goto fail;
    }
    if (capture) {
        capturing_ = true;
        capture_truncated_ = false;
        capture_spilled_ = false;
        capture_from_ = i;
    }
    ++i;
    if (c == '"') {
        const std::size_t j = find_quote_or_backslash(p, i, n);
        if (j < n && p[j] == '"') { // a plain string within the chunk
            i = j + 1;
            end_value(p, i, handler);
            goto after_value;
        }
        goto in_string;
    }
    if (c == '{' || c == '[') goto in_container;
    goto in_scalar;
}

in_string: {
    bool unused = false;
    const std::size_t j = scan_string(p, i, n, unused);
    if (j == npos) {
        mode_ = Mode::in_string;
        i = n;
        goto out;
    }
    i = j;
    end_value(p, i, handler);
    goto after_value;
}

in_container:
    for (;;) {
        if (in_string_) {
            bool unused = false;
            const std::size_t j = scan_string(p, i, n, unused);
            if (j == npos) {
                i = n;
                break;
            }
            i = j;
            in_string_ = false;
        }
#if defined(RELAYMETER_USAGE_SSE2)
        i = skip_container_blocks(p, i, n, skip_depth_, in_string_);
        if (skip_depth_ == 0) {
            end_value(p, i, handler);
            goto after_value;
        }
        if (in_string_) {
            escape_ = false;
            continue;
        }
#endif
        i = find_structural(p, i, n);
        if (i == n) break;
        const char c = p[i++];
        if (c == '"') {
            in_string_ = true;
            escape_ = false;
        } else if (c == '{' || c == '[') {
            ++skip_depth_;
        } else if (--skip_depth_ == 0) { // '}' or ']'
            end_value(p, i, handler);
            goto after_value;
        }
    }
    mode_ = Mode::in_container;
    goto out;

in_scalar:
    while (i < n && kScalarByte[p[i]]) ++i;
    if (i == n) {
        mode_ = Mode::in_scalar;
        goto out;
    }
    end_value(p, i, handler);
    // fall through
after_value:
    RELAYMETER_SCAN_NEXT(Mode::after_value);
    if (p[i] == ',') {
        ++i;
        goto key_required;
    }
    if (p[i] != '}') goto fail;
    // fall through
close:
    close_object(i, handler);
    ++i;
    if (walk_depth_ != 0) goto after_value;
    // fall through
done:
    i = skip_ws(p, i, n);
    mode_ = i == n ? Mode::done : Mode::error;
    goto out;

fail:
    if (soft_depth_ > 0) {
        soften(); // p[i] is read again, inside the skipped object
        goto in_container;
    }
    mode_ = Mode::error;
    // fall through
out:
    // Keep the captured part of a value that goes on in the next chunk.
    if (capturing_) {
        if (!capture_spilled_) {
            capture_.clear();
            capture_spilled_ = true;
        }
        append_capture(p + capture_from_, n - capture_from_);
    }
    // Keys read in place must outlive the chunk.
    for (int d = 0; d < walk_depth_; ++d) {
        Level& level = levels_[static_cast<std::size_t>(d)];
        if (level.key_ext != nullptr) {
            std::memmove(level.key.data(), level.key_ext, level.key_len);
            level.key_ext = nullptr;
        }
    }
    consumed_ += n;
}

#undef RELAYMETER_SCAN_NEXT

} // namespace relaymeter::usage::detail

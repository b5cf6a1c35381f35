// Private to the usage module: a small incremental JSON structural scanner.
//
// It walks JSON text fed in chunks split anywhere, tracking strings, escapes
// and nesting, and reports the members of the objects it is told to walk: the
// root object always, and any member value the handler asks to descend into.
// Every other value is skipped without building anything (strings with
// memchr, containers with a depth counter), or copied into a bounded capture
// buffer when the handler asks for its text. Memory is fixed: a few small
// buffers plus the capture, whatever the size of the input.
//
// The scanner checks the structure of the walked objects strictly and is
// lenient inside skipped values (it does not validate numbers, literals or
// bracket kinds there): it finds things, it is not a validator.
//
// This one piece of code serves inspect_request, inject_include_usage,
// JsonUsageScanner and StreamMeter's per-event checks.
#pragma once

#include <array>
#include <cstddef>
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

struct Directive {
    Walk walk = Walk::skip;
    std::size_t limit = 0; // capture: bytes kept; a longer value's text is a prefix
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
    // The value of a member of a walked object has ended. Descended objects
    // report on_object_end first, then on_value (with empty text).
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
    void feed(std::string_view chunk, JsonScanHandler& handler);
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
        std::array<char, kMaxKey> key{};
        std::string_view key_view() const { return {key.data(), key_len}; }
    };

    std::size_t scan_string(const char* p, std::size_t i, std::size_t n);
    void open_object(std::size_t i);
    void close_object(std::size_t i, JsonScanHandler& handler);
    void end_key(JsonScanHandler& handler);
    std::size_t start_value(const char* p, std::size_t i);
    void end_value(const char* p, std::size_t i, JsonScanHandler& handler);
    void append_capture(const char* p, std::size_t len);
    std::size_t abs(std::size_t i) const { return consumed_ + i; }

    Mode mode_ = Mode::root;
    bool escape_ = false;         // a string's last byte so far was an unpaired backslash
    bool in_string_ = false;      // in_container: inside a string
    std::size_t skip_depth_ = 0;  // in_container: nesting depth
    std::size_t consumed_ = 0;    // bytes fed before the current chunk

    std::array<Level, kMaxWalkDepth> levels_;
    int walk_depth_ = 0; // walked objects open

    bool key_long_ = false; // the key being read is over kMaxKey raw bytes

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

// Strips JSON whitespace (space, tab, CR, LF) from both ends.
std::string_view trim_json_ws(std::string_view s);

} // namespace relaymeter::usage::detail

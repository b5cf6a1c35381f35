// JsonUsageScanner (plain JSON response bodies) and StreamMeter (SSE bodies).
// Both find usage with the same JsonScanner walk (UsageCollector below), fed
// incrementally, so neither ever holds a whole body or a whole data line.
#include <algorithm>
#include <array>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>

#include "relaymeter/usage/usage.hpp"
#include "usage/json_scan.hpp"
#include "usage/usage_reader.hpp"

namespace relaymeter::usage {

namespace {

using detail::Directive;
using detail::JsonScanner;
using detail::MemberValue;
using detail::Walk;

// A usage object larger than this (its text, braces included) is not a usage
// object we want to read.
constexpr std::size_t kMaxUsageText = 64 * 1024;
// Enough of "choices" to tell an empty array ("[]", "[ ]") from a non-empty one.
constexpr std::size_t kChoicesProbe = 16;

// Index of the first '\r' or '\n' in p[i, n), or n (memchr is vectorized;
// a byte-at-a-time loop here was most of the meter's own work, and a 16-byte
// SSE2 loop for both bytes costs more than memchr's wider one on data lines).
std::size_t find_eol(const char* p, std::size_t i, std::size_t n) {
    const auto* lf = static_cast<const char*>(std::memchr(p + i, '\n', n - i));
    const std::size_t end = lf ? static_cast<std::size_t>(lf - p) : n;
    const auto* cr = static_cast<const char*>(std::memchr(p + i, '\r', end - i));
    return cr ? static_cast<std::size_t>(cr - p) : end;
}

// Finds the usage in one JSON document: the top-level "usage" object, or
// "response"."usage" (Responses API events and envelopes), read in the same
// walk (descended into, softly: a malformed usage object is skipped, not an
// error, as it was when its text was captured and parsed apart). Also notes
// whether the top-level "choices" is an empty array, which with a top-level
// usage object makes a chat stream's usage-only chunk.
class UsageCollector final : public detail::JsonScanHandler {
public:
    Directive on_key(std::string_view key, int depth) override {
        if (usage_depth_ != 0) return reader_.on_key(key, depth - usage_depth_ + 1);
        if (depth == 1) {
            if (detail::key_is(key, "usage")) return begin_usage(2);
            if (detail::key_is(key, "choices")) return {Walk::capture, kChoicesProbe};
            if (detail::key_is(key, "response")) return {Walk::descend, 0};
        } else if (depth == 2 && detail::key_is(key, "usage")) { // "response" is the only object walked
            return begin_usage(3);
        }
        return {};
    }

    void on_value(const MemberValue& v) override {
        if (usage_depth_ != 0) {
            if (v.depth >= usage_depth_) {
                reader_.on_value(v);
                return;
            }
            // The "usage" member itself. Last wins; null (or anything not an
            // object, or not well-formed, or too large) means "no usage here".
            usage_depth_ = 0;
            const bool ok = v.first == '{' && !v.malformed && v.end - v.begin <= kMaxUsageText;
            if (ok) last_ = reader_.result();
            if (v.depth == 1) top_usage_object_ = ok;
        } else if (v.depth == 1 && detail::key_is(v.key, "choices")) {
            choices_empty_ = v.first == '[' && !v.truncated &&
                             detail::trim_json_ws(v.text.substr(1, v.text.size() - 2)).empty();
        }
    }

    const Usage& last() const { return last_; }
    // The chunk relaymeter's injected include_usage adds: "choices":[] and a usage object.
    bool usage_only() const { return choices_empty_ && top_usage_object_; }
    void reset() { *this = UsageCollector{}; }

private:
    // `depth` is the walk depth of the usage object's members.
    Directive begin_usage(int depth) {
        usage_depth_ = depth;
        reader_.begin();
        Directive d{Walk::descend, 0};
        d.soft = true;
        return d;
    }

    Usage last_;
    bool top_usage_object_ = false;
    bool choices_empty_ = false;
    int usage_depth_ = 0; // inside a usage object: the walk depth of its members
    detail::UsageReader reader_;
};

} // namespace

// ---------------------------------------------------------------------------
// JsonUsageScanner

struct JsonUsageScanner::Impl {
    JsonScanner scanner_;
    UsageCollector collector_;
};

// Impl lives in storage_ (no allocation per scanner); a moved-from scanner
// keeps a valid Impl, as any other.
JsonUsageScanner::Impl& JsonUsageScanner::impl() noexcept { return *std::launder(reinterpret_cast<Impl*>(storage_)); }
const JsonUsageScanner::Impl& JsonUsageScanner::impl() const noexcept {
    return *std::launder(reinterpret_cast<const Impl*>(storage_));
}

JsonUsageScanner::JsonUsageScanner() {
    static_assert(sizeof(Impl) <= kImplSize, "raise JsonUsageScanner::kImplSize");
    static_assert(alignof(Impl) <= alignof(JsonUsageScanner));
    static_assert(std::is_nothrow_move_constructible_v<Impl> && std::is_nothrow_move_assignable_v<Impl>);
    ::new (static_cast<void*>(storage_)) Impl();
}
JsonUsageScanner::~JsonUsageScanner() { impl().~Impl(); }
JsonUsageScanner::JsonUsageScanner(JsonUsageScanner&& other) noexcept {
    ::new (static_cast<void*>(storage_)) Impl(std::move(other.impl()));
}
JsonUsageScanner& JsonUsageScanner::operator=(JsonUsageScanner&& other) noexcept {
    impl() = std::move(other.impl());
    return *this;
}

void JsonUsageScanner::feed(std::string_view chunk) { impl().scanner_.feed(chunk, impl().collector_); }

Usage JsonUsageScanner::result() const { return impl().collector_.last(); }

void JsonUsageScanner::reset() {
    impl().scanner_.reset();
    impl().collector_.reset();
}

// ---------------------------------------------------------------------------
// StreamMeter
//
// An incremental SSE parser (WHATWG essentials: \n, \r\n or \r line ends,
// ':' comments, "field:value" with one optional space, blank line ends an
// event). The value of each data line goes straight into the event's
// JsonScanner, multi-line data joined with '\n', so memory does not depend on
// the size of an event.
//
// Output (strip mode only): bytes outside events, and comments and blank lines
// between events, are forwarded as they come. An event starts at the first
// byte of its first field line; from there its bytes are held until the blank
// line that ends it, then either released or (the usage-only chunk) dropped,
// terminator included. When the terminator is "\r\n" the decision is taken at
// the '\r' and the following '\n' (maybe in the next chunk) follows it.

struct StreamMeter::Impl {
    explicit Impl(bool strip) : strip_(strip) {}

    void feed(std::string_view chunk, std::string& out);
    void finish(std::string& out);

    enum class Line : std::uint8_t {
        start,       // at the first byte of a line
        field,       // reading a field name
        value_start, // a data field's ':' just seen: one space may follow
        data,        // in a data field's value
        skip,        // in a comment or another field's value
    };

    void end_line(const char* p, std::size_t i, std::string& out);
    void begin_event(const char* p, std::size_t i, std::string& out);
    void dispatch(const char* p, std::size_t i, std::string& out);
    void start_data_line();
    void add_data(const char* p, std::size_t len);
    bool data_is_done() const;
    bool field_is_data() const { return field_len_ == 4 && std::memcmp(field_.data(), "data", 4) == 0; }
    void release_held_memory() {
        held_.clear();
        if (held_.capacity() > kKeepCapacity) std::string().swap(held_);
    }

    static constexpr std::size_t kKeepCapacity = 64 * 1024;
    static constexpr std::size_t kDataHead = 16;

    bool strip_; // not const: Impl is move-assigned in place

    // Line parser.
    Line line_ = Line::start;
    bool cr_pending_ = false; // the last line ended with '\r': a '\n' next is part of it
    bool drop_lf_ = false;    // ...and that '\r' ended a stripped event
    std::array<char, 5> field_{};
    std::size_t field_len_ = 0; // > field_.size(): a longer name, of no interest

    // Current event.
    bool in_event_ = false;
    std::size_t data_lines_ = 0;
    std::size_t data_len_ = 0;             // bytes in the (joined) data
    std::array<char, kDataHead> data_head_{}; // its first bytes, to spot [DONE]
    JsonScanner json_;
    UsageCollector collector_;

    // Output, strip mode. Indexes are into the chunk being fed.
    bool holding_ = false;
    std::string held_;
    std::size_t fwd_from_ = 0;  // start of the bytes not yet forwarded
    std::size_t hold_from_ = 0; // start of the bytes not yet appended to held_

    Usage usage_;
    bool saw_done_ = false;
    bool saw_content_ = false;
    std::uint64_t events_ = 0;
};

void StreamMeter::Impl::feed(std::string_view chunk, std::string& out) {
    if (!strip_) out.append(chunk); // metering only: output is the input, at once
    const char* p = chunk.data();
    const std::size_t n = chunk.size();
    fwd_from_ = 0;
    hold_from_ = 0;
    std::size_t i = 0;
    while (i < n) {
        const char c = p[i];
        if (cr_pending_) {
            cr_pending_ = false;
            const bool drop = std::exchange(drop_lf_, false);
            if (c == '\n') { // second half of a "\r\n" already acted on
                if (drop) {
                    out.append(p + fwd_from_, i - fwd_from_);
                    fwd_from_ = i + 1;
                }
                ++i;
                continue;
            }
        }
        if (c == '\r' || c == '\n') {
            end_line(p, i, out);
            cr_pending_ = c == '\r';
            ++i;
            continue;
        }
        switch (line_) {
        case Line::start:
            if (c == ':') { // comment: part of the event if inside one, else forwarded
                line_ = Line::skip;
                ++i;
                break;
            }
            if (!in_event_) begin_event(p, i, out);
            line_ = Line::field;
            field_len_ = 0;
            break; // p[i] is read as part of the field name

        case Line::field: {
            std::size_t j = i;
            while (j < n && p[j] != ':' && p[j] != '\r' && p[j] != '\n') ++j;
            const std::size_t len = j - i;
            if (field_len_ + len <= field_.size())
                std::memcpy(field_.data() + field_len_, p + i, len);
            field_len_ += len;
            i = j;
            if (i < n && p[i] == ':') {
                ++i;
                if (field_is_data()) {
                    start_data_line();
                    line_ = Line::value_start;
                } else {
                    line_ = Line::skip; // event:, id:, retry:, unknown: not needed
                }
            }
            break;
        }

        case Line::value_start:
            line_ = Line::data;
            if (c == ' ') ++i;
            break;

        case Line::data: {
            const std::size_t j = find_eol(p, i, n);
            add_data(p + i, j - i);
            i = j;
            break;
        }

        case Line::skip:
            i = find_eol(p, i, n);
            break;
        }
    }
    if (!strip_) return;
    if (holding_) {
        const std::size_t len = n - hold_from_;
        if (held_.size() + len > kMaxHeldEvent) {
            // Too big to hold: forward it as it is; it will not be stripped.
            out.append(held_);
            out.append(p + hold_from_, len);
            release_held_memory();
            holding_ = false;
        } else {
            held_.append(p + hold_from_, len);
        }
    } else {
        out.append(p + fwd_from_, n - fwd_from_);
    }
}

// p[i] is the '\r' or '\n' ending the current line.
void StreamMeter::Impl::end_line(const char* p, std::size_t i, std::string& out) {
    switch (line_) {
    case Line::start: // a blank line
        if (in_event_) dispatch(p, i, out);
        break;
    case Line::field: // a line without ':' is a field with an empty value
        if (field_is_data()) start_data_line();
        break;
    default: break;
    }
    line_ = Line::start;
}

// p[i] is the first byte of the event's first line.
void StreamMeter::Impl::begin_event(const char* p, std::size_t i, std::string& out) {
    in_event_ = true;
    data_lines_ = 0;
    data_len_ = 0;
    json_.reset();
    collector_.reset();
    if (strip_) {
        out.append(p + fwd_from_, i - fwd_from_);
        holding_ = true;
        hold_from_ = i;
    }
}

void StreamMeter::Impl::start_data_line() {
    if (data_lines_ > 0) add_data("\n", 1);
    ++data_lines_;
}

void StreamMeter::Impl::add_data(const char* p, std::size_t len) {
    if (data_len_ < kDataHead)
        std::memcpy(data_head_.data() + data_len_, p, std::min(len, kDataHead - data_len_));
    data_len_ += len;
    json_.feed({p, len}, collector_);
}

bool StreamMeter::Impl::data_is_done() const {
    if (data_len_ > kDataHead) return false;
    return detail::trim_json_ws({data_head_.data(), data_len_}) == "[DONE]";
}

// p[i] is the terminator of the blank line ending the current event.
void StreamMeter::Impl::dispatch(const char* p, std::size_t i, std::string& out) {
    bool strip = false;
    if (data_lines_ > 0) {
        ++events_;
        if (data_is_done()) {
            saw_done_ = true;
        } else {
            if (json_.finish() == JsonScanner::Status::complete) {
                if (collector_.last().present) usage_ = collector_.last();
                strip = strip_ && holding_ && collector_.usage_only() &&
                        held_.size() + (i + 1 - hold_from_) <= kMaxHeldEvent;
            }
            if (!strip) saw_content_ = true;
        }
    }
    if (holding_) {
        if (strip) {
            drop_lf_ = p[i] == '\r';
        } else {
            out.append(held_);
            out.append(p + hold_from_, i + 1 - hold_from_);
        }
        release_held_memory();
        holding_ = false;
        fwd_from_ = i + 1;
    }
    in_event_ = false;
}

void StreamMeter::Impl::finish(std::string& out) {
    // An event cut off by the end of the body (no final blank line) is not an
    // SSE event, but a sloppy relay may end that way: meter it, never strip it.
    if (in_event_ && data_lines_ > 0) {
        ++events_;
        if (data_is_done()) {
            saw_done_ = true;
        } else {
            if (json_.finish() == JsonScanner::Status::complete && collector_.last().present)
                usage_ = collector_.last();
            saw_content_ = true;
        }
    }
    in_event_ = false;
    if (holding_) {
        out.append(held_);
        release_held_memory();
        holding_ = false;
    }
    line_ = Line::start;
    cr_pending_ = false;
    drop_lf_ = false;
}

StreamMeter::Impl& StreamMeter::impl() noexcept { return *std::launder(reinterpret_cast<Impl*>(storage_)); }
const StreamMeter::Impl& StreamMeter::impl() const noexcept {
    return *std::launder(reinterpret_cast<const Impl*>(storage_));
}

StreamMeter::StreamMeter(bool strip_usage_only) {
    static_assert(sizeof(Impl) <= kImplSize, "raise StreamMeter::kImplSize");
    static_assert(alignof(Impl) <= alignof(StreamMeter));
    static_assert(std::is_nothrow_move_constructible_v<Impl> && std::is_nothrow_move_assignable_v<Impl>);
    ::new (static_cast<void*>(storage_)) Impl(strip_usage_only);
}
StreamMeter::~StreamMeter() { impl().~Impl(); }
StreamMeter::StreamMeter(StreamMeter&& other) noexcept {
    ::new (static_cast<void*>(storage_)) Impl(std::move(other.impl()));
}
StreamMeter& StreamMeter::operator=(StreamMeter&& other) noexcept {
    impl() = std::move(other.impl());
    return *this;
}

void StreamMeter::feed(std::string_view chunk, std::string& out) { impl().feed(chunk, out); }
void StreamMeter::finish(std::string& out) { impl().finish(out); }
Usage StreamMeter::usage() const { return impl().usage_; }
bool StreamMeter::saw_done() const { return impl().saw_done_; }
bool StreamMeter::saw_content() const { return impl().saw_content_; }
std::uint64_t StreamMeter::events() const { return impl().events_; }

} // namespace relaymeter::usage

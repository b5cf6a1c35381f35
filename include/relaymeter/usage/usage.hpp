// Token usage reported by the upstream, and the pure scanners that find it.
// No sockets, no networking headers: unit-tested directly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace relaymeter::usage {

struct Usage {
    std::uint64_t input = 0;        // prompt_tokens | input_tokens (includes cached)
    std::uint64_t output = 0;       // completion_tokens | output_tokens (includes reasoning)
    std::uint64_t cached_input = 0; // *_tokens_details.cached_tokens
    std::uint64_t reasoning = 0;    // *_tokens_details.reasoning_tokens
    bool present = false;           // a usage object was found

    friend bool operator==(const Usage&, const Usage&) = default;
};

// Parse one `usage` JSON object (the text of the object itself, "{...}").
// Understands chat/completions/embeddings (prompt_tokens, completion_tokens,
// prompt_tokens_details, completion_tokens_details) and the Responses API
// (input_tokens, output_tokens, input_tokens_details, output_tokens_details).
// Returns present=false for null, non-objects or unparsable text. Negative,
// fractional or non-numeric counts, and numbers spelled in more than 40 bytes,
// are ignored (treated as 0).
Usage parse_usage_object(std::string_view json_object);

// What relaymeter needs from a request body, found without building a DOM.
struct RequestInfo {
    std::string model;          // label-safe model name; "none" when absent/not a string
    bool is_json_object = false; // body starts (after whitespace) with '{' and scanned cleanly
    bool stream = false;         // top-level "stream": true
    bool include_usage = false;  // top-level stream_options.include_usage == true
};

// Max length kept of a model name; longer names are truncated.
inline constexpr std::size_t kMaxModelName = 128;

// Scans only the top level of the body; nested "model" keys are ignored.
RequestInfo inspect_request(std::string_view body);

// Make a model name safe as a label value and log field: printable ASCII only
// (other bytes become '_'), at most kMaxModelName bytes, "none" when empty.
std::string sanitize_model(std::string_view raw);

// Rewrite a JSON request body so that stream_options.include_usage is true,
// changing nothing else: bytes outside the edit are kept as they are.
// - no stream_options: `,"stream_options":{"include_usage":true}` is inserted
//   before the closing brace of the top-level object;
// - stream_options without include_usage: `"include_usage":true` is inserted
//   into it;
// - include_usage false/null: that value is replaced by true.
// Returns false (and leaves `out` unspecified) if the body is not a JSON object
// or stream_options is not an object.
bool inject_include_usage(std::string_view body, std::string& out);

// Incremental scanner of a (non-streamed) JSON response body: fed the body in
// chunks split anywhere, it reads the value of the top-level "usage" key (or
// of "response"."usage" for Responses API envelopes) in the same single pass,
// in fixed memory, as parse_usage_object would read it. Bodies that are not
// JSON give present=false, never an error.
class JsonUsageScanner {
public:
    JsonUsageScanner();
    ~JsonUsageScanner();
    JsonUsageScanner(JsonUsageScanner&&) noexcept;
    JsonUsageScanner& operator=(JsonUsageScanner&&) noexcept;
    void feed(std::string_view chunk);
    // Call after the last chunk. A usage object seen more than once: the last wins.
    Usage result() const;
    void reset();

private:
    // Private state is the usage module's business (bounded, no DOM). It lives
    // in place, not on the heap: stream_meter.cpp checks that it fits.
    struct Impl;
    static constexpr std::size_t kImplSize = 672;
    Impl& impl() noexcept;
    const Impl& impl() const noexcept;
    alignas(8) std::byte storage_[kImplSize];
};

// Meter for an upstream `text/event-stream` body. Fed raw bytes split at any
// position (\n or \r\n line ends, comments, multi-line data:), it tracks the
// usage reported by the stream:
//   - chat.completion.chunk with a non-null "usage" (choices empty or not),
//   - legacy text_completion chunks with "usage",
//   - Responses API events ("response.completed" etc. with response.usage),
// and `data: [DONE]`. The last usage seen wins (it is cumulative upstream).
//
// With strip_usage_only = true (relaymeter injected include_usage), the
// usage-only event (a chunk whose "choices" is an empty array and whose
// "usage" is an object) is removed from the output; every other byte is
// forwarded unchanged. To decide, bytes of an event that has not ended yet are
// held back until its terminating blank line arrives (bounded: an event over
// kMaxHeldEvent bytes is forwarded as it is and never stripped).
// With strip_usage_only = false the output is always exactly the input.
class StreamMeter {
public:
    static constexpr std::size_t kMaxHeldEvent = 1 << 20;

    explicit StreamMeter(bool strip_usage_only);
    ~StreamMeter();
    StreamMeter(StreamMeter&&) noexcept;
    StreamMeter& operator=(StreamMeter&&) noexcept;

    // Appends to `out` the bytes to send to the client now.
    void feed(std::string_view chunk, std::string& out);
    // Upstream body ended: appends whatever is still held back.
    void finish(std::string& out);

    Usage usage() const;
    bool saw_done() const;     // a `data: [DONE]` event was seen
    bool saw_content() const;  // a data event other than [DONE] / the stripped one was output
    std::uint64_t events() const; // data events seen

private:
    struct Impl; // in place, as JsonUsageScanner's
    static constexpr std::size_t kImplSize = 848;
    Impl& impl() noexcept;
    const Impl& impl() const noexcept;
    alignas(8) std::byte storage_[kImplSize];
};

} // namespace relaymeter::usage

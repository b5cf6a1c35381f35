// Metering a content-coded (gzip, deflate) response body. relaymeter asks the
// upstream for identity encoding (it sends Accept-Encoding: identity), but an upstream
// may compress anyway: the client then gets the coded bytes unchanged, and the
// usage is read from a copy inflated on the side. Only this path pays for it:
// an identity-coded body never touches zlib. No networking headers here.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

#include "relaymeter/usage/usage.hpp"

namespace relaymeter::usage {

enum class ContentCoding : std::uint8_t { identity, gzip, deflate, unsupported };

// From a Content-Encoding value, case-insensitively: "" or "identity" is
// identity, "gzip" or "x-gzip" gzip, "deflate" deflate; anything else,
// stacked codings ("gzip, br") included, is unsupported.
ContentCoding content_coding(std::string_view header_value);
const char* to_string(ContentCoding coding);

// Fed the coded body in chunks split anywhere, inflates it in bounded memory
// (zlib's state and a 16 KiB output window, whatever the body's size) and
// passes the text to the usage scanner the body needs (plain JSON, or SSE when
// `sse`, metering only: nothing is stripped from a coded stream). Concatenated
// gzip members are read one after the other; "deflate" may be zlib-wrapped
// (RFC 9110) or raw, as some servers send it. Corrupt data stops the decoding
// (usage stays what was read before it); it is never an exception.
class EncodedBodyMeter {
public:
    EncodedBodyMeter(ContentCoding coding, bool sse);
    ~EncodedBodyMeter();
    EncodedBodyMeter(const EncodedBodyMeter&) = delete;
    EncodedBodyMeter& operator=(const EncodedBodyMeter&) = delete;

    void feed(std::string_view coded);
    // The body ended: a coded stream that had not ended is reported truncated.
    void finish();

    Usage usage() const;
    bool saw_content() const; // SSE: a content event was decoded
    std::uint64_t decoded_bytes() const;
    // Why the usage could not be read, for a warning: empty when it could (or
    // when nothing was fed); otherwise "corrupt data", "truncated" or
    // "unsupported content coding".
    std::string_view problem() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace relaymeter::usage

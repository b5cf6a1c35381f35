// EncodedBodyMeter: zlib's inflate on a copy of a content-coded body. Kept in
// its own file so that only it needs zlib (the fuzz build compiles the other
// usage sources alone).
#include "relaymeter/usage/encoded.hpp"

#include <zlib.h>

#include <array>
#include <optional>
#include <string>

namespace relaymeter::usage {

namespace {

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
        if (x != y) return false;
    }
    return true;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

} // namespace

ContentCoding content_coding(std::string_view header_value) {
    const auto v = trim(header_value);
    if (v.empty() || iequals(v, "identity")) return ContentCoding::identity;
    if (iequals(v, "gzip") || iequals(v, "x-gzip")) return ContentCoding::gzip;
    if (iequals(v, "deflate")) return ContentCoding::deflate;
    return ContentCoding::unsupported;
}

const char* to_string(ContentCoding coding) {
    switch (coding) {
    case ContentCoding::identity: return "identity";
    case ContentCoding::gzip: return "gzip";
    case ContentCoding::deflate: return "deflate";
    case ContentCoding::unsupported: return "unsupported";
    }
    return "unknown";
}

struct EncodedBodyMeter::Impl {
    enum class State : std::uint8_t { sniffing, inflating, member_end, failed };

    ContentCoding coding;
    bool sse;
    State state = State::sniffing;
    bool z_ready = false;
    bool fed = false;
    std::string_view problem;
    std::uint64_t decoded = 0;
    z_stream zs{};
    // deflate: the first two bytes tell a zlib header from raw deflate.
    std::array<unsigned char, 2> head{};
    std::size_t head_len = 0;
    std::optional<JsonUsageScanner> json;
    std::optional<StreamMeter> stream;
    std::string scratch; // StreamMeter's output (metering only: a copy we drop)
    std::array<char, 16 * 1024> out{};

    Impl(ContentCoding c, bool s) : coding(c), sse(s) {
        if (sse)
            stream.emplace(false);
        else
            json.emplace();
        if (coding == ContentCoding::unsupported || coding == ContentCoding::identity) state = State::failed;
        if (coding == ContentCoding::gzip) start(16 + MAX_WBITS); // gzip only; members one after the other
    }
    ~Impl() {
        if (z_ready) inflateEnd(&zs);
    }

    bool start(int window_bits) {
        if (inflateInit2(&zs, window_bits) != Z_OK) {
            fail("corrupt data");
            return false;
        }
        z_ready = true;
        state = State::inflating;
        return true;
    }

    void fail(std::string_view why) {
        state = State::failed;
        if (problem.empty()) problem = why;
    }

    void text(const char* p, std::size_t n) {
        decoded += n;
        if (sse) {
            scratch.clear();
            stream->feed({p, n}, scratch);
        } else {
            json->feed({p, n});
        }
    }

    void inflate_some(const unsigned char* p, std::size_t n) {
        zs.next_in = const_cast<Bytef*>(p);
        zs.avail_in = static_cast<uInt>(n);
        while (state == State::inflating || (state == State::member_end && zs.avail_in > 0)) {
            if (state == State::member_end) {
                // zlib and raw deflate streams are single: bytes after the end
                // are junk, whether or not they came in the same chunk.
                if (coding != ContentCoding::gzip) return fail("corrupt data");
                // Another gzip member follows the one that ended.
                if (inflateReset(&zs) != Z_OK) return fail("corrupt data");
                state = State::inflating;
            }
            zs.next_out = reinterpret_cast<Bytef*>(out.data());
            zs.avail_out = static_cast<uInt>(out.size());
            const int rc = inflate(&zs, Z_NO_FLUSH);
            const std::size_t produced = out.size() - zs.avail_out;
            if (produced > 0) text(out.data(), produced);
            if (rc == Z_STREAM_END) {
                state = State::member_end;
                if (coding != ContentCoding::gzip) {
                    // zlib and raw deflate streams are single: trailing bytes are junk.
                    if (zs.avail_in > 0) fail("corrupt data");
                    return;
                }
                continue;
            }
            if (rc == Z_BUF_ERROR || (rc == Z_OK && zs.avail_in == 0 && zs.avail_out > 0)) return; // wants input
            if (rc != Z_OK) return fail("corrupt data");
        }
    }

    void feed(std::string_view coded) {
        if (coded.empty()) return;
        fed = true;
        auto p = reinterpret_cast<const unsigned char*>(coded.data());
        std::size_t n = coded.size();
        if (state == State::sniffing) {
            // deflate: RFC 9110 means the zlib format, but raw deflate is seen too.
            while (head_len < 2 && n > 0) {
                head[head_len++] = *p++;
                --n;
            }
            if (head_len < 2) return;
            const bool zlib_header = (head[0] & 0x0f) == 8 && ((head[0] << 8) | head[1]) % 31 == 0;
            if (!start(zlib_header ? MAX_WBITS : -MAX_WBITS)) return;
            inflate_some(head.data(), 2);
        }
        if (n > 0 && state != State::failed) inflate_some(p, n);
    }

    void finish() {
        if (sse) {
            scratch.clear();
            stream->finish(scratch);
        }
        if (fed && (state == State::inflating || state == State::sniffing)) fail("truncated");
    }
};

EncodedBodyMeter::EncodedBodyMeter(ContentCoding coding, bool sse) : impl_(std::make_unique<Impl>(coding, sse)) {}
EncodedBodyMeter::~EncodedBodyMeter() = default;

void EncodedBodyMeter::feed(std::string_view coded) { impl_->feed(coded); }
void EncodedBodyMeter::finish() { impl_->finish(); }

Usage EncodedBodyMeter::usage() const { return impl_->sse ? impl_->stream->usage() : impl_->json->result(); }
bool EncodedBodyMeter::saw_content() const { return impl_->sse && impl_->stream->saw_content(); }
std::uint64_t EncodedBodyMeter::decoded_bytes() const { return impl_->decoded; }

std::string_view EncodedBodyMeter::problem() const {
    if (!impl_->fed) return {};
    if (impl_->coding == ContentCoding::unsupported || impl_->coding == ContentCoding::identity)
        return "unsupported content coding";
    return impl_->problem;
}

} // namespace relaymeter::usage

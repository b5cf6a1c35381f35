// libFuzzer target: the HTTP fast paths that read a whole request
// (proxy::parse_whole_request) or a whole response head
// (proxy::parse_whole_response_head) without Beast, against Beast's parser on
// the same bytes (tests/unit/http_agree.hpp, which the unit tests use too).
// Whatever a fast path takes must read exactly as Beast reads it (method,
// target, fields, framing, keep-alive, bytes used, and for a response the
// body Beast then reads after framing_head()), and what it declines must leave
// nothing behind. Each input is tried as a request and as a response, with the
// proxy's limits and with small ones (so that the limit checks are reached).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "http_agree.hpp"

namespace {

void check(const relaymeter::testsupport::Agreement& a, const char* what, std::size_t header_limit) {
    if (a.problem.empty()) return;
    std::fprintf(stderr, "fuzz invariant violated: %s (header limit %zu): the fast path and Beast differ\n%s", what,
                 header_limit, a.problem.c_str());
    std::abort();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view in(reinterpret_cast<const char*>(data), size);
    using relaymeter::testsupport::request_agreement;
    using relaymeter::testsupport::response_agreement;
    for (const auto& [header_limit, body_limit] : {std::pair<std::size_t, std::uint64_t>{64 * 1024, 1 << 20},
                                                   std::pair<std::size_t, std::uint64_t>{200, 16}}) {
        check(request_agreement(in, header_limit, body_limit), "request", header_limit);
        check(response_agreement(in, header_limit), "response", header_limit);
    }
    return 0;
}

// One proxied exchange: rewrite the request, take an upstream connection,
// relay the response to the client as it arrives, and hand the finished
// record to metrics. The byte path never parses OpenAI JSON itself: it passes
// body chunks to the usage module's scanners.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "relaymeter/config/config.hpp"
#include "relaymeter/metrics/engine.hpp"
#include "relaymeter/net.hpp"
#include "relaymeter/upstream/pool.hpp"

namespace relaymeter::proxy {

using clock = std::chrono::steady_clock;
class Request;

// Per worker thread.
struct Context {
    const config::Config& cfg;
    metrics::Engine& engine;
    upstream::Pool& pool;
    std::string host_header; // Host sent upstream: host[:port]
};

// Who sent a /v1/ request and when: what every record of it carries.
struct Origin {
    std::string request_id;
    std::string_view key;        // auth on: the client key's name ("none" without a valid key); auth off: empty
    clock::time_point arrival;
};

// The client's X-Request-Id when sane (printable ASCII, 1..128 chars), else a
// fresh random id.
std::string request_id(std::string_view client_value);

// relaymeter's own error, in the OpenAI error shape.
http::response<http::string_body> error_response(http::status status, std::string_view code,
                                                 std::string_view message, unsigned version, bool keep_alive,
                                                 std::string_view request_id);

// Forward a complete /v1/ request (body read) and write the response to the
// client. Returns true when the client connection may serve another request.
awaitable<bool> forward(Context& ctx, tcp_stream& client, Request& req, const Origin& origin);

// Write relaymeter's own error for a /v1/ request and meter it (model from
// the body when there is one). A client connection already closed (by a
// deadline) gets nothing and the record keeps `status`; a failed write is 499.
awaitable<bool> reject(Context& ctx, tcp_stream& client, http::status status, std::string_view code,
                       std::string_view message, unsigned version, bool keep_alive, std::string model,
                       const Origin& origin);

// Meter a /v1/ request that ended before its head could be read (malformed,
// too large, too slow, or cut off by the client): its record and its access
// line, as for any other request; `note` is the error code.
void record_unread(Context& ctx, const Origin& origin, int status, std::string_view note);

} // namespace relaymeter::proxy

// An OpenAI-compatible fake upstream, over HTTP or HTTPS, for the tests, the
// benchmark and the demo. Runs its own io_context thread(s); binds 127.0.0.1
// port 0 by default. Kept free of Beast/Asio in this header.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace relaymeter::fake {

// A latch the test opens from its own thread; a response step can wait on it.
class Gate {
public:
    void open();
    bool is_open() const;
    // Blocks the caller (the test thread) until open or timeout. True if open.
    bool wait(std::chrono::milliseconds timeout) const;

private:
    friend class FakeUpstream;
    // Registers fn to be called (on the opening thread) when the gate opens;
    // returns false without registering if it is already open.
    bool add_waiter(std::function<void()> fn);
    mutable std::mutex mu_;
    mutable std::condition_variable cv_;
    bool open_ = false;
    std::vector<std::function<void()>> waiters_; // called once when opened
};

struct Request {
    std::string method;
    std::string target;                         // as received, with query
    std::map<std::string, std::string> headers; // names lower-cased; repeated names joined with ", "
    std::string body;
};

// What the fake writes back, step by step, as raw bytes on the socket: the
// test controls every byte (status line, headers, chunked framing, garbage).
struct Step {
    enum class Kind { Write, Delay, WaitGate, Close, Reset, Hang };
    Kind kind = Kind::Write;
    std::string bytes;                        // Write
    std::chrono::microseconds delay{0};       // Delay (milliseconds convert implicitly)
    std::shared_ptr<Gate> gate;               // WaitGate
    // Close: graceful shutdown of the connection; Reset: RST (SO_LINGER 0);
    // Hang: do nothing more until the peer goes away or the fake stops.
};

struct Response {
    std::vector<Step> steps;
    bool keep_alive = true; // after the last step, read the next request on this connection

    Response& write(std::string bytes);
    Response& delay(std::chrono::microseconds d);
    Response& wait(std::shared_ptr<Gate> gate);
    Response& close();
    Response& reset();
    Response& hang();

    // Helpers that build whole responses.
    static Response json(int status, const std::string& body,
                         const std::map<std::string, std::string>& extra_headers = {});
    // text/event-stream, chunked transfer encoding, one HTTP chunk per event
    // (each event string is sent as given, so it must end in "\n\n").
    // If gates is non-empty, chunk k (k >= 1) waits on gates[k-1] before it is sent;
    // the last-chunk "0\r\n\r\n" counts as chunk events.size() (so a gate
    // gates[events.size()-1], if given, holds back the end of the stream).
    // The head goes out together with chunk 0. `interval` is waited before
    // every chunk k >= 1 (events only, not the last-chunk).
    static Response sse(const std::vector<std::string>& events,
                        const std::vector<std::shared_ptr<Gate>>& gates = {},
                        std::chrono::microseconds interval = std::chrono::microseconds(0));
};

using Handler = std::function<Response(const Request&)>;

// Deterministic OpenAI-like behaviour (the default handler):
//  POST /v1/chat/completions  plain or "stream": true (honours stream_options.include_usage)
//  POST /v1/completions       likewise, legacy shape
//  POST /v1/embeddings        prompt_tokens only
//  POST /v1/responses         Responses API shape, plain or stream (event: lines)
// Usage: prompt/input tokens = options.prompt_tokens, completion/output tokens =
// options.completion_tokens (unless the request's "max_tokens" is smaller), cached
// and reasoning as configured. Latency, chunk count/interval, error rate and
// status as configured.
struct OpenAIOptions {
    std::uint64_t prompt_tokens = 12;
    std::uint64_t completion_tokens = 34;
    std::uint64_t cached_tokens = 0;
    std::uint64_t reasoning_tokens = 0;
    std::chrono::microseconds latency{0};        // before the response head
    // Per-model latency, replacing `latency` for requests naming that model.
    std::map<std::string, std::chrono::microseconds> model_latency;
    unsigned stream_chunks = 5;                  // content chunks per stream
    std::chrono::microseconds chunk_interval{0}; // between stream chunks
    double error_rate = 0.0;                     // fraction of requests answered with error_status
    int error_status = 500;
    // Plain (non-stream) answers carry the ~20 header fields api.openai.com
    // sends behind Cloudflare (openai-*, x-ratelimit-*, cf-ray, set-cookie...)
    // rather than x-request-id alone.
    bool openai_headers = false;
    // The same, but only for requests whose User-Agent starts with "OpenAI/"
    // (an OpenAI SDK's): the benchmark's SDK rows get OpenAI's answer.
    bool openai_headers_for_sdk = false;
};
Handler openai_handler(OpenAIOptions options = {});

struct Options {
    std::string host = "127.0.0.1";
    std::uint16_t port = 0;
    unsigned threads = 1;
    // TLS when cert_file is set (PEM files).
    std::string cert_file;
    std::string key_file;
    // Keep every Request (with its body) for requests(); the standalone
    // benchmark program turns this off (request_count() still counts).
    bool record_requests = true;
    std::size_t body_limit = 64u * 1024 * 1024; // larger request bodies: connection closed
};

class FakeUpstream {
public:
    explicit FakeUpstream(Options options = {}, Handler handler = openai_handler());
    ~FakeUpstream(); // stops and joins
    FakeUpstream(const FakeUpstream&) = delete;
    FakeUpstream& operator=(const FakeUpstream&) = delete;

    std::uint16_t port() const;
    std::string base_url() const; // "http(s)://127.0.0.1:PORT/v1"
    void set_handler(Handler handler);
    std::vector<Request> requests() const; // every request received so far
    std::size_t request_count() const;
    std::size_t connections_accepted() const;
    std::size_t connections_open() const;
    // Block until `n` requests have been received or timeout; true if reached.
    bool wait_requests(std::size_t n, std::chrono::milliseconds timeout) const;
    // Block until connections_open() == n or timeout.
    bool wait_connections_open(std::size_t n, std::chrono::milliseconds timeout) const;
    void stop();

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace relaymeter::fake

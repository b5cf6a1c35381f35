// Test-side helpers: a blocking HTTP/1.1 client, raw sockets, TLS test
// certificates, and a running relaymeter daemon (the real binary) on port 0.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace relaymeter::testsupport {

struct HttpResponse {
    int status = 0;
    std::map<std::string, std::string> headers; // lower-cased names
    std::string body;
    bool chunked = false;
    std::string header(const std::string& lower_name) const;
};

// One keep-alive connection to 127.0.0.1:port. Every operation has a timeout
// (default 10 s) and throws std::runtime_error on failure or timeout.
class HttpClient {
public:
    explicit HttpClient(std::uint16_t port, std::chrono::milliseconds timeout = std::chrono::seconds(10));
    ~HttpClient();
    HttpClient(const HttpClient&) = delete;
    HttpClient& operator=(const HttpClient&) = delete;

    HttpResponse request(const std::string& method, const std::string& target,
                         const std::string& body = {},
                         const std::map<std::string, std::string>& headers = {});
    HttpResponse get(const std::string& target) { return request("GET", target); }
    HttpResponse post_json(const std::string& target, const std::string& body,
                           const std::map<std::string, std::string>& headers = {}) {
        auto h = headers;
        h.emplace("Content-Type", "application/json");
        return request("POST", target, body, h);
    }
    // Streams the response body: on_chunk is called with each piece of body
    // (de-chunked) as soon as it is read from the socket. Returns the response
    // with the whole body as well.
    HttpResponse request_streaming(const std::string& method, const std::string& target,
                                   const std::string& body,
                                   const std::map<std::string, std::string>& headers,
                                   const std::function<void(const std::string&)>& on_chunk);
    // Sends the request head and reads only the response head; then close().
    // Used to disconnect mid-stream.
    int start_and_read_head(const std::string& method, const std::string& target, const std::string& body,
                            const std::map<std::string, std::string>& headers = {});
    // Reads some body bytes after start_and_read_head (raw, still chunk-framed);
    // "" when the peer closed the connection.
    std::string read_some_raw();
    void close();

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Raw TCP to 127.0.0.1:port: send bytes, read until close or timeout.
class RawConnection {
public:
    explicit RawConnection(std::uint16_t port);
    ~RawConnection();
    RawConnection(const RawConnection&) = delete;
    RawConnection& operator=(const RawConnection&) = delete;
    void send(const std::string& bytes);
    // Reads until the peer closes or `timeout` passes; returns what arrived
    // (a reset counts as a close).
    std::string read_until_close(std::chrono::milliseconds timeout);
    // Reads until `needle` has arrived (or timeout; throws on timeout).
    // Returns the bytes up to and including the needle; what arrived after it
    // is kept for the next read.
    std::string read_until(const std::string& needle, std::chrono::milliseconds timeout);
    bool peer_closed(std::chrono::milliseconds timeout); // true if EOF/reset arrives within timeout
    void shutdown_send(); // half-close: the peer reads end-of-stream, this side can still read
    // Sends `bytes` and the half-close in one TCP segment (corked), so that the
    // peer's first read finds the end of stream already behind the bytes.
    void send_with_fin(const std::string& bytes);
    void close();

private:
    int fd_ = -1;
    std::string pending_; // read but not yet returned
};

// Self-signed CA and leaf certificates made with the OpenSSL API, written as
// PEM into a fresh temporary directory (removed by the destructor).
struct TestCerts {
    std::string dir;
    std::string ca_cert;       // CA certificate (PEM file path)
    std::string server_cert;   // leaf for 127.0.0.1 / localhost, signed by the CA
    std::string server_key;
    std::string wrong_host_cert; // leaf signed by the CA for "wrong.example" only
    std::string wrong_host_key;
    std::string self_signed_cert; // leaf for 127.0.0.1 NOT signed by the CA
    std::string self_signed_key;
    static std::shared_ptr<TestCerts> make();
    ~TestCerts();
};

// The real relaymeter binary started on 127.0.0.1 port 0 with a config file
// written from `yaml` (the test's YAML text). The port is learned from the
// daemon's start-up line on stderr ("listening on 127.0.0.1:PORT").
// `--listen 127.0.0.1:0` is added to the command line unless extra_args has a
// --listen or the yaml a `listen:` key. The constructor throws (with the log)
// if the daemon exits, or prints no "listening on" line within 20 s.
class Daemon {
public:
    // Called once, from the constructor, when the daemon's output first
    // contains `needle` before its "listening on" line (for a test of what
    // happens during start-up); the argument is the daemon's pid.
    struct StartHook {
        std::string needle;
        std::function<void(int pid)> fn;
    };
    explicit Daemon(const std::string& yaml, const std::vector<std::string>& extra_args = {},
                    const std::map<std::string, std::string>& env = {}, const StartHook& hook = {});
    ~Daemon(); // SIGTERM, then waits (SIGKILL after 10 s)
    Daemon(const Daemon&) = delete;
    Daemon& operator=(const Daemon&) = delete;
    std::uint16_t port() const { return port_; }
    int pid() const { return pid_; }
    // SIGTERM and wait; returns the exit status (or -signal).
    int stop(std::chrono::milliseconds timeout = std::chrono::seconds(15));
    void signal(int sig);
    std::string log() const; // everything the daemon wrote to stdout/stderr so far
    // Waits until log() contains `needle`; true if it did within timeout.
    bool wait_log(const std::string& needle, std::chrono::milliseconds timeout) const;
    // Waits until log() contains `needle` at least `n` times (a record is
    // visible in /summary a moment before its access line is written).
    bool wait_log_count(const std::string& needle, std::size_t n, std::chrono::milliseconds timeout) const;

    const std::string& config_path() const { return config_path_; }
    bool running() const; // not yet reaped

private:
    struct Output; // the log buffer shared with the reader thread
    void wait_exit(std::chrono::milliseconds timeout);
    void cleanup();
    int pid_ = -1;
    std::uint16_t port_ = 0;
    std::string dir_;
    std::string log_path_;    // the log is also written here (removed with dir_)
    std::string config_path_;
    std::shared_ptr<Output> out_;
    std::thread reader_;
    bool reaped_ = false;
    int status_ = -1; // exit status, or -signal
};

// Run the relaymeter binary with args, capture stdout+stderr and exit status
// (-signal if it was killed; it is killed after 60 s).
struct RunResult {
    int status = -1;
    std::string output;
};
RunResult run_binary(const std::vector<std::string>& args, const std::map<std::string, std::string>& env = {});

} // namespace relaymeter::testsupport

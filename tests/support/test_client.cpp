// Test-side helpers: blocking HTTP client (Beast), raw sockets (POSIX),
// TLS test certificates (OpenSSL 3), the relaymeter daemon as a child process.
#include "support/test_client.hpp"

#include <relaymeter/net.hpp>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <optional>
#include <stdexcept>

#ifndef RELAYMETER_BINARY
#define RELAYMETER_BINARY "relaymeter"
#endif

extern char** environ;

namespace relaymeter::testsupport {

namespace {

using Clock = std::chrono::steady_clock;

std::string lower(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

int remaining_ms(Clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return 0;
    return left > std::numeric_limits<int>::max() ? std::numeric_limits<int>::max() : static_cast<int>(left);
}

std::string make_temp_dir(const char* prefix) {
    std::string templ = (std::filesystem::temp_directory_path() / (std::string(prefix) + "XXXXXX")).string();
    if (!::mkdtemp(templ.data())) throw std::runtime_error("mkdtemp: " + std::string(std::strerror(errno)));
    return templ;
}

} // namespace

std::string HttpResponse::header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? std::string() : it->second;
}

// ---------------------------------------------------------------- HttpClient

struct HttpClient::Impl {
    std::uint16_t port;
    std::chrono::milliseconds timeout;
    asio::io_context ioc{1};
    std::optional<beast::tcp_stream> stream;
    beast::flat_buffer buf;

    Impl(std::uint16_t p, std::chrono::milliseconds t) : port(p), timeout(t) {}

    // Runs the io_context until the operation started by `start` completes;
    // the tcp_stream's expiry bounds it.
    // last_bytes is the operation's byte count.
    template <class Start>
    error_code run(Start&& start) {
        error_code result = asio::error::would_block;
        last_bytes = 0;
        start([this, &result](error_code ec, std::size_t n) {
            result = ec;
            last_bytes = n;
        });
        ioc.restart();
        ioc.run();
        return result;
    }
    std::size_t last_bytes = 0;

    [[noreturn]] void fail(const char* what, const error_code& ec) {
        close();
        std::string msg = std::string("HttpClient: ") + what + " 127.0.0.1:" + std::to_string(port) + ": ";
        msg += ec == beast::error::timeout ? "timed out after " + std::to_string(timeout.count()) + " ms" : ec.message();
        throw std::runtime_error(msg);
    }

    void connect() {
        if (stream && stream->socket().is_open()) return;
        stream.emplace(ioc);
        buf.clear();
        stream->expires_after(timeout);
        tcp::endpoint ep(asio::ip::make_address_v4("127.0.0.1"), port);
        auto ec = run([&](auto handler) {
            stream->async_connect(ep, [handler](error_code e) mutable { handler(e, 0); });
        });
        if (ec) fail("connect to", ec);
        stream->socket().set_option(tcp::no_delay(true), ec);
    }

    void close() {
        if (!stream) return;
        error_code ec;
        stream->socket().shutdown(tcp::socket::shutdown_both, ec);
        stream->socket().close(ec);
        stream.reset();
        buf.clear();
    }

    http::request<http::string_body> make_request(const std::string& method, const std::string& target,
                                                  const std::string& body,
                                                  const std::map<std::string, std::string>& headers) const {
        http::request<http::string_body> req;
        auto verb = http::string_to_verb(method);
        if (verb == http::verb::unknown)
            req.method_string(method);
        else
            req.method(verb);
        req.target(target);
        req.version(11);
        req.set(http::field::host, "127.0.0.1:" + std::to_string(port));
        bool framed = false;
        for (const auto& [name, value] : headers) {
            auto n = lower(name);
            framed = framed || n == "content-length" || n == "transfer-encoding";
            req.set(name, value);
        }
        req.body() = body;
        if (!framed) req.prepare_payload();
        return req;
    }

    void write(http::request<http::string_body>& req) {
        connect();
        stream->expires_after(timeout);
        auto ec = run([&](auto handler) { http::async_write(*stream, req, std::move(handler)); });
        if (ec) fail("write to", ec);
    }

    template <class Body>
    void read_header(http::response_parser<Body>& p) {
        stream->expires_after(timeout);
        auto ec = run([&](auto handler) { http::async_read_header(*stream, buf, p, std::move(handler)); });
        if (ec) fail("read response head from", ec);
    }

    template <class Fields>
    static void fill_head(HttpResponse& r, const Fields& msg_fields, unsigned status, bool chunked) {
        r.status = static_cast<int>(status);
        r.chunked = chunked;
        for (const auto& f : msg_fields) {
            auto name = lower(std::string(f.name_string().data(), f.name_string().size()));
            std::string value(f.value().data(), f.value().size());
            auto [it, fresh] = r.headers.try_emplace(name, value);
            if (!fresh) it->second += ", " + value;
        }
    }
};

HttpClient::HttpClient(std::uint16_t port, std::chrono::milliseconds timeout)
    : impl_(std::make_unique<Impl>(port, timeout)) {
    impl_->connect();
}

HttpClient::~HttpClient() = default;

HttpResponse HttpClient::request(const std::string& method, const std::string& target, const std::string& body,
                                 const std::map<std::string, std::string>& headers) {
    auto& im = *impl_;
    auto req = im.make_request(method, target, body, headers);
    im.write(req);
    http::response_parser<http::string_body> p;
    p.body_limit(std::numeric_limits<std::uint64_t>::max());
    p.header_limit(1024 * 1024);
    if (req.method() == http::verb::head) p.skip(true);
    im.stream->expires_after(im.timeout);
    auto ec = im.run([&](auto handler) { http::async_read(*im.stream, im.buf, p, std::move(handler)); });
    if (ec) im.fail("read response from", ec);
    HttpResponse r;
    const auto& msg = p.get();
    Impl::fill_head(r, msg, msg.result_int(), msg.chunked());
    r.body = msg.body();
    if (!p.keep_alive()) im.close();
    return r;
}

HttpResponse HttpClient::request_streaming(const std::string& method, const std::string& target,
                                           const std::string& body,
                                           const std::map<std::string, std::string>& headers,
                                           const std::function<void(const std::string&)>& on_chunk) {
    auto& im = *impl_;
    auto req = im.make_request(method, target, body, headers);
    im.write(req);
    http::response_parser<http::buffer_body> p;
    p.body_limit(std::numeric_limits<std::uint64_t>::max());
    p.header_limit(1024 * 1024);
    if (req.method() == http::verb::head) p.skip(true);
    im.read_header(p);
    HttpResponse r;
    Impl::fill_head(r, p.get(), p.get().result_int(), p.get().chunked());
    std::array<char, 16384> tmp;
    while (!p.is_done()) {
        p.get().body().data = tmp.data();
        p.get().body().size = tmp.size();
        im.stream->expires_after(im.timeout); // per piece: silence between chunks is what times out
        auto ec = im.run([&](auto handler) { http::async_read_some(*im.stream, im.buf, p, std::move(handler)); });
        if (ec == http::error::need_buffer) ec = {};
        if (ec) im.fail("read response body from", ec);
        std::size_t n = tmp.size() - p.get().body().size;
        if (n > 0) {
            std::string piece(tmp.data(), n);
            r.body += piece;
            if (on_chunk) on_chunk(piece);
        }
    }
    if (!p.keep_alive()) im.close();
    return r;
}

int HttpClient::start_and_read_head(const std::string& method, const std::string& target, const std::string& body,
                                    const std::map<std::string, std::string>& headers) {
    auto& im = *impl_;
    auto req = im.make_request(method, target, body, headers);
    im.write(req);
    http::response_parser<http::buffer_body> p;
    p.header_limit(1024 * 1024);
    im.read_header(p);
    return static_cast<int>(p.get().result_int());
}

std::string HttpClient::read_some_raw() {
    auto& im = *impl_;
    if (im.buf.size() > 0) {
        auto s = beast::buffers_to_string(im.buf.data());
        im.buf.consume(im.buf.size());
        return s;
    }
    if (!im.stream) throw std::runtime_error("HttpClient: read_some_raw on a closed connection");
    im.stream->expires_after(im.timeout);
    auto space = im.buf.prepare(65536);
    auto ec = im.run([&](auto handler) { im.stream->async_read_some(space, std::move(handler)); });
    if (ec == asio::error::eof || ec == asio::error::connection_reset) {
        im.close();
        return {};
    }
    if (ec) im.fail("read from", ec);
    im.buf.commit(im.last_bytes);
    auto s = beast::buffers_to_string(im.buf.data());
    im.buf.consume(im.buf.size());
    return s;
}

void HttpClient::close() { impl_->close(); }

// ---------------------------------------------------------------- RawConnection

RawConnection::RawConnection(std::uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) throw std::runtime_error("RawConnection: socket: " + std::string(std::strerror(errno)));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        int err = errno;
        ::close(fd_);
        fd_ = -1;
        throw std::runtime_error("RawConnection: connect 127.0.0.1:" + std::to_string(port) + ": " +
                                 std::strerror(err));
    }
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

RawConnection::~RawConnection() { close(); }

void RawConnection::send(const std::string& bytes) {
    if (fd_ < 0) throw std::runtime_error("RawConnection: send on a closed connection");
    auto deadline = Clock::now() + std::chrono::seconds(10);
    std::size_t off = 0;
    while (off < bytes.size()) {
        pollfd p{fd_, POLLOUT, 0};
        int r = ::poll(&p, 1, remaining_ms(deadline));
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) throw std::runtime_error("RawConnection: send timed out");
        ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
            throw std::runtime_error("RawConnection: send: " + std::string(std::strerror(errno)));
        }
        off += static_cast<std::size_t>(n);
    }
}

namespace {

// Reads once (waiting up to the deadline) into `into`. Returns false when the
// peer closed or reset the connection; `timed_out` tells the other exit.
bool read_once(int fd, std::string& into, Clock::time_point deadline, bool& timed_out) {
    timed_out = false;
    for (;;) {
        pollfd p{fd, POLLIN, 0};
        int r = ::poll(&p, 1, remaining_ms(deadline));
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) {
            timed_out = true;
            return true;
        }
        char buf[16384];
        ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            into.append(buf, static_cast<std::size_t>(n));
            return true;
        }
        if (n == 0) return false;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
        return false; // ECONNRESET and friends
    }
}

} // namespace

std::string RawConnection::read_until_close(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    bool timed_out = false;
    while (fd_ >= 0 && read_once(fd_, pending_, deadline, timed_out) && !timed_out) {
    }
    std::string out;
    out.swap(pending_);
    return out;
}

std::string RawConnection::read_until(const std::string& needle, std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    for (;;) {
        if (auto pos = pending_.find(needle); pos != std::string::npos) {
            std::string out = pending_.substr(0, pos + needle.size());
            pending_.erase(0, pos + needle.size());
            return out;
        }
        bool timed_out = false;
        bool open = fd_ >= 0 && read_once(fd_, pending_, deadline, timed_out);
        if (pending_.find(needle) != std::string::npos) continue;
        if (!open || timed_out)
            throw std::runtime_error(std::string("RawConnection: ") + (open ? "timed out" : "connection closed") +
                                     " waiting for \"" + needle + "\"; received: \"" + pending_ + "\"");
    }
}

bool RawConnection::peer_closed(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    for (;;) {
        bool timed_out = false;
        if (fd_ < 0 || !read_once(fd_, pending_, deadline, timed_out)) return true;
        if (timed_out) return false;
    }
}

void RawConnection::shutdown_send() {
    if (fd_ >= 0) ::shutdown(fd_, SHUT_WR);
}

void RawConnection::send_with_fin(const std::string& bytes) {
    if (bytes.size() > 16 * 1024) throw std::runtime_error("RawConnection: send_with_fin: more than one segment");
    int on = 1;
    int off = 0;
    // Corked, the bytes wait in the send queue, and the shutdown tacks the FIN
    // onto them (tcp_send_fin) instead of sending a segment of its own.
    if (::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &off, sizeof off) != 0 ||
        ::setsockopt(fd_, IPPROTO_TCP, TCP_CORK, &on, sizeof on) != 0)
        throw std::runtime_error("RawConnection: TCP_CORK: " + std::string(std::strerror(errno)));
    send(bytes);
    shutdown_send();
}

void RawConnection::close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
}

// ---------------------------------------------------------------- TestCerts

namespace {

struct PKeyFree {
    void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct X509Free {
    void operator()(X509* x) const { X509_free(x); }
};
using PKey = std::unique_ptr<EVP_PKEY, PKeyFree>;
using Cert = std::unique_ptr<X509, X509Free>;

[[noreturn]] void ssl_fail(const char* what) { throw std::runtime_error(std::string("TestCerts: ") + what + " failed"); }

PKey make_key() {
    PKey k(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
    if (!k) ssl_fail("EC P-256 key generation");
    return k;
}

void add_ext(X509* x, X509V3_CTX* ctx, int nid, const std::string& value) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, ctx, nid, value.c_str());
    if (!ext) ssl_fail(("extension " + value).c_str());
    int ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    if (!ok) ssl_fail("X509_add_ext");
}

// issuer == nullptr: self-signed with `key`.
Cert make_cert(const std::string& cn, EVP_PKEY* key, X509* issuer, EVP_PKEY* issuer_key, bool ca,
               const std::string& san) {
    static std::atomic<long> serial{static_cast<long>(::time(nullptr) % 1000000) * 100};
    Cert x(X509_new());
    if (!x) ssl_fail("X509_new");
    X509_set_version(x.get(), 2); // v3
    ASN1_INTEGER_set(X509_get_serialNumber(x.get()), ++serial);
    X509_gmtime_adj(X509_getm_notBefore(x.get()), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x.get()), 30L * 24 * 3600);
    if (!X509_set_pubkey(x.get(), key)) ssl_fail("X509_set_pubkey");
    X509_NAME* name = X509_get_subject_name(x.get());
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("relaymeter tests"),
                               -1, -1, 0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1,
                               0);
    X509_set_issuer_name(x.get(), issuer ? X509_get_subject_name(issuer) : name);
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer ? issuer : x.get(), x.get(), nullptr, nullptr, 0);
    add_ext(x.get(), &ctx, NID_basic_constraints, ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
    add_ext(x.get(), &ctx, NID_key_usage, ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
    if (!ca) add_ext(x.get(), &ctx, NID_ext_key_usage, "serverAuth,clientAuth");
    add_ext(x.get(), &ctx, NID_subject_key_identifier, "hash");
    if (issuer) add_ext(x.get(), &ctx, NID_authority_key_identifier, "keyid:always");
    if (!san.empty()) add_ext(x.get(), &ctx, NID_subject_alt_name, san);
    if (!X509_sign(x.get(), issuer ? issuer_key : key, EVP_sha256())) ssl_fail("X509_sign");
    return x;
}

void write_cert(const std::string& path, X509* x) {
    BIO* b = BIO_new_file(path.c_str(), "w");
    if (!b) ssl_fail(("open " + path).c_str());
    int ok = PEM_write_bio_X509(b, x);
    BIO_free(b);
    if (!ok) ssl_fail("PEM_write_bio_X509");
}

void write_key(const std::string& path, EVP_PKEY* k) {
    BIO* b = BIO_new_file(path.c_str(), "w");
    if (!b) ssl_fail(("open " + path).c_str());
    int ok = PEM_write_bio_PrivateKey(b, k, nullptr, nullptr, 0, nullptr, nullptr);
    BIO_free(b);
    if (!ok) ssl_fail("PEM_write_bio_PrivateKey");
    ::chmod(path.c_str(), 0600);
}

} // namespace

std::shared_ptr<TestCerts> TestCerts::make() {
    auto c = std::make_shared<TestCerts>();
    c->dir = make_temp_dir("relaymeter-certs-");
    auto ca_key = make_key();
    auto ca = make_cert("relaymeter test CA", ca_key.get(), nullptr, nullptr, true, "");
    auto server_key = make_key();
    auto server = make_cert("localhost", server_key.get(), ca.get(), ca_key.get(), false,
                            "IP:127.0.0.1,DNS:localhost");
    auto wrong_key = make_key();
    auto wrong = make_cert("wrong.example", wrong_key.get(), ca.get(), ca_key.get(), false, "DNS:wrong.example");
    auto self_key = make_key();
    auto self = make_cert("localhost", self_key.get(), nullptr, nullptr, false, "IP:127.0.0.1,DNS:localhost");

    c->ca_cert = c->dir + "/ca.pem";
    c->server_cert = c->dir + "/server.pem";
    c->server_key = c->dir + "/server.key";
    c->wrong_host_cert = c->dir + "/wrong_host.pem";
    c->wrong_host_key = c->dir + "/wrong_host.key";
    c->self_signed_cert = c->dir + "/self_signed.pem";
    c->self_signed_key = c->dir + "/self_signed.key";
    write_cert(c->ca_cert, ca.get());
    write_cert(c->server_cert, server.get());
    write_key(c->server_key, server_key.get());
    write_cert(c->wrong_host_cert, wrong.get());
    write_key(c->wrong_host_key, wrong_key.get());
    write_cert(c->self_signed_cert, self.get());
    write_key(c->self_signed_key, self_key.get());
    return c;
}

TestCerts::~TestCerts() {
    if (dir.empty()) return;
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
}

// ---------------------------------------------------------------- processes

namespace {

struct Child {
    int pid = -1;
    int out_fd = -1; // read end of the child's stdout+stderr
};

Child spawn(const std::vector<std::string>& args, const std::map<std::string, std::string>& env) {
    // Everything the child needs is built before fork: after it, only
    // async-signal-safe calls.
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    std::vector<std::string> env_strings;
    for (char** e = environ; e && *e; ++e) {
        std::string_view kv(*e);
        auto name = kv.substr(0, kv.find('='));
        if (!env.count(std::string(name))) env_strings.emplace_back(kv);
    }
    for (const auto& [k, v] : env) env_strings.push_back(k + "=" + v);
    std::vector<char*> envp;
    for (auto& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);

    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2: " + std::string(std::strerror(errno)));
    pid_t pid = ::fork();
    if (pid < 0) {
        int err = errno;
        ::close(fds[0]);
        ::close(fds[1]);
        throw std::runtime_error("fork: " + std::string(std::strerror(err)));
    }
    if (pid == 0) {
        ::dup2(fds[1], 1);
        ::dup2(fds[1], 2);
        int devnull = ::open("/dev/null", O_RDONLY);
        if (devnull >= 0) ::dup2(devnull, 0);
        if (::close_range(3, ~0u, 0) != 0)
            for (int fd = 3; fd < 4096; ++fd) ::close(fd);
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        ::signal(SIGPIPE, SIG_DFL);
        ::signal(SIGTERM, SIG_DFL);
        ::signal(SIGINT, SIG_DFL);
        ::execve(argv[0], argv.data(), envp.data());
        const char msg[] = "exec failed: ";
        [[maybe_unused]] auto w1 = ::write(2, msg, sizeof msg - 1);
        [[maybe_unused]] auto w2 = ::write(2, argv[0], std::strlen(argv[0]));
        [[maybe_unused]] auto w3 = ::write(2, "\n", 1);
        ::_exit(127);
    }
    ::close(fds[1]);
    return {pid, fds[0]};
}

int decode_status(int st) {
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return -WTERMSIG(st);
    return -1;
}

// Waits for the child to exit, up to timeout; true (and *status) if it was reaped.
bool wait_child(int pid, std::chrono::milliseconds timeout, int* status) {
    int st = 0;
    int r = ::waitpid(pid, &st, WNOHANG);
    if (r == pid) {
        *status = decode_status(st);
        return true;
    }
    int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (pidfd >= 0) {
        auto deadline = Clock::now() + timeout;
        for (;;) {
            pollfd p{pidfd, POLLIN, 0};
            int pr = ::poll(&p, 1, remaining_ms(deadline));
            if (pr < 0 && errno == EINTR) continue;
            break;
        }
        ::close(pidfd);
        r = ::waitpid(pid, &st, WNOHANG);
    } else {
        // No pidfd (kernel < 5.3): the only way left is to poll waitpid.
        auto deadline = Clock::now() + timeout;
        while ((r = ::waitpid(pid, &st, WNOHANG)) == 0 && Clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (r == pid) {
        *status = decode_status(st);
        return true;
    }
    return false;
}

// The port from the first complete line containing "listening on HOST:PORT"
// (HOST may be "[v6]", and a scheme may precede it).
std::optional<std::uint16_t> find_port(const std::string& log, bool eof) {
    static const std::string marker = "listening on ";
    std::size_t from = 0;
    for (;;) {
        auto pos = log.find(marker, from);
        if (pos == std::string::npos) return std::nullopt;
        auto line_end = log.find('\n', pos);
        if (line_end == std::string::npos && !eof) return std::nullopt; // wait for the whole line
        std::string token = log.substr(pos + marker.size(),
                                       (line_end == std::string::npos ? log.size() : line_end) - pos - marker.size());
        token = token.substr(0, token.find_first_of(" \t\r,;)"));
        if (auto s = token.find("://"); s != std::string::npos) token = token.substr(s + 3);
        if (auto slash = token.find('/'); slash != std::string::npos) token = token.substr(0, slash);
        std::size_t colon = std::string::npos;
        if (!token.empty() && token[0] == '[') {
            auto close = token.find(']');
            if (close != std::string::npos && close + 1 < token.size() && token[close + 1] == ':') colon = close + 1;
        } else {
            colon = token.rfind(':');
        }
        if (colon != std::string::npos) {
            std::string digits = token.substr(colon + 1);
            if (!digits.empty() && digits.size() <= 5 &&
                digits.find_first_not_of("0123456789") == std::string::npos) {
                unsigned long p = std::stoul(digits);
                if (p > 0 && p <= 65535) return static_cast<std::uint16_t>(p);
            }
        }
        from = pos + marker.size();
    }
}

} // namespace

struct Daemon::Output {
    std::mutex mu;
    std::condition_variable cv;
    std::string text;
    bool eof = false;
};

Daemon::Daemon(const std::string& yaml, const std::vector<std::string>& extra_args,
               const std::map<std::string, std::string>& env, const StartHook& hook)
    : out_(std::make_shared<Output>()) {
    try {
        dir_ = make_temp_dir("relaymeter-daemon-");
        config_path_ = dir_ + "/relaymeter.yaml";
        log_path_ = dir_ + "/daemon.log";
        {
            std::ofstream f(config_path_);
            f << yaml;
            if (!f) throw std::runtime_error("Daemon: cannot write " + config_path_);
        }
        std::vector<std::string> args{RELAYMETER_BINARY, "--config", config_path_};
        bool has_listen = yaml.find("listen:") != std::string::npos;
        for (const auto& a : extra_args) has_listen = has_listen || a.rfind("--listen", 0) == 0;
        if (!has_listen) {
            args.emplace_back("--listen");
            args.emplace_back("127.0.0.1:0");
        }
        args.insert(args.end(), extra_args.begin(), extra_args.end());

        Child child = spawn(args, env);
        pid_ = child.pid;
        reader_ = std::thread([out = out_, fd = child.out_fd, path = log_path_] {
            std::ofstream file(path, std::ios::binary);
            char buf[8192];
            for (;;) {
                ssize_t n = ::read(fd, buf, sizeof buf);
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0) break;
                file.write(buf, n);
                file.flush();
                {
                    std::lock_guard lk(out->mu);
                    out->text.append(buf, static_cast<std::size_t>(n));
                }
                out->cv.notify_all();
            }
            ::close(fd);
            {
                std::lock_guard lk(out->mu);
                out->eof = true;
            }
            out->cv.notify_all();
        });

        std::optional<std::uint16_t> port;
        std::string log_now;
        bool eof = false;
        bool hooked = hook.needle.empty();
        {
            std::unique_lock lk(out_->mu);
            out_->cv.wait_for(lk, std::chrono::seconds(20), [&] {
                if (!hooked && out_->text.find(hook.needle) != std::string::npos) {
                    hooked = true;
                    hook.fn(pid_);
                }
                port = find_port(out_->text, out_->eof);
                return port.has_value() || out_->eof;
            });
            log_now = out_->text;
            eof = out_->eof;
        }
        if (port) {
            port_ = *port;
            return;
        }
        if (eof) {
            wait_exit(std::chrono::seconds(5));
            throw std::runtime_error("Daemon: relaymeter exited" +
                                     (reaped_ ? " with status " + std::to_string(status_) : std::string()) +
                                     " before printing \"listening on\"; output:\n" + log_now);
        }
        throw std::runtime_error("Daemon: relaymeter printed no \"listening on HOST:PORT\" line within 20 s; output:\n" +
                                 log_now);
    } catch (...) {
        cleanup();
        throw;
    }
}

Daemon::~Daemon() {
    try {
        if (!reaped_ && pid_ > 0) stop(std::chrono::seconds(10));
    } catch (...) {
    }
    cleanup();
}

void Daemon::wait_exit(std::chrono::milliseconds timeout) {
    if (reaped_ || pid_ <= 0) return;
    int st = -1;
    if (wait_child(pid_, timeout, &st)) {
        reaped_ = true;
        status_ = st;
    }
}

void Daemon::cleanup() {
    if (pid_ > 0 && !reaped_) {
        ::kill(pid_, SIGKILL);
        int st = 0;
        if (::waitpid(pid_, &st, 0) == pid_) status_ = decode_status(st);
        reaped_ = true;
    }
    if (reader_.joinable()) reader_.join();
    if (!dir_.empty()) {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
        dir_.clear();
    }
}

int Daemon::stop(std::chrono::milliseconds timeout) {
    if (!reaped_ && pid_ > 0) {
        ::kill(pid_, SIGTERM);
        wait_exit(timeout);
        if (!reaped_) {
            ::kill(pid_, SIGKILL);
            int st = 0;
            if (::waitpid(pid_, &st, 0) == pid_) status_ = decode_status(st);
            reaped_ = true;
        }
    }
    if (reader_.joinable()) reader_.join(); // the whole log is in out_ now
    return status_;
}

void Daemon::signal(int sig) {
    if (!reaped_ && pid_ > 0) ::kill(pid_, sig);
}

bool Daemon::running() const {
    if (reaped_ || pid_ <= 0) return false;
    siginfo_t info{};
    if (::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) != 0) return false;
    return info.si_pid == 0;
}

std::string Daemon::log() const {
    std::lock_guard lk(out_->mu);
    return out_->text;
}

bool Daemon::wait_log(const std::string& needle, std::chrono::milliseconds timeout) const {
    return wait_log_count(needle, 1, timeout);
}

bool Daemon::wait_log_count(const std::string& needle, std::size_t n, std::chrono::milliseconds timeout) const {
    const auto enough = [&] {
        std::size_t seen = 0;
        for (auto at = out_->text.find(needle); at != std::string::npos && seen < n;
             at = out_->text.find(needle, at + needle.size()))
            ++seen;
        return seen >= n;
    };
    std::unique_lock lk(out_->mu);
    out_->cv.wait_for(lk, timeout, [&] { return enough() || out_->eof; });
    return enough();
}

RunResult run_binary(const std::vector<std::string>& args, const std::map<std::string, std::string>& env) {
    std::vector<std::string> argv{RELAYMETER_BINARY};
    argv.insert(argv.end(), args.begin(), args.end());
    Child child = spawn(argv, env);
    RunResult result;
    auto deadline = Clock::now() + std::chrono::seconds(60);
    bool killed = false;
    for (;;) {
        pollfd p{child.out_fd, POLLIN, 0};
        int r = ::poll(&p, 1, remaining_ms(deadline));
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) {
            if (killed) break;
            ::kill(child.pid, SIGKILL); // hung: kill it, keep what it wrote
            killed = true;
            deadline = Clock::now() + std::chrono::seconds(5);
            continue;
        }
        char buf[8192];
        ssize_t n = ::read(child.out_fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        result.output.append(buf, static_cast<std::size_t>(n));
    }
    ::close(child.out_fd);
    int st = 0;
    if (::waitpid(child.pid, &st, 0) == child.pid) result.status = decode_status(st);
    return result;
}

} // namespace relaymeter::testsupport

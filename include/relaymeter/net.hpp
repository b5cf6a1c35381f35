// The one header that brings in Asio, Beast and OpenSSL, with the namespace
// aliases the networking code uses. Include it only from networking
// translation units (server, proxy, upstream, tests' network helpers): it is
// slow to compile. Asio and Beast are separately compiled (src/net.cpp).
#pragma once

// Boost 1.74's awaitable.hpp uses std::exchange without including <utility>.
#include <utility>

#include <cerrno>
#include <chrono>
#include <memory>

#include <sys/socket.h>

#include <boost/version.hpp>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

namespace relaymeter {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
namespace ssl = boost::asio::ssl;
using tcp = boost::asio::ip::tcp;
using boost::system::error_code;

// Every worker runs one io_context on one thread, so the networking code uses
// its concrete executor type rather than the type-erased any_io_executor
// (whose copies and moves in every operation and handler were 4-8% of the
// instructions per request).
using executor = asio::io_context::executor_type;
// Asio 1.74 has co_await with GCC only, not with clang 14 and libstdc++: the
// fuzz build (clang) compiles the HTTP parsers, which need none of it.
#if defined(BOOST_ASIO_HAS_CO_AWAIT)
template <class T>
using awaitable = asio::awaitable<T, executor>;
inline constexpr asio::use_awaitable_t<executor> use_awaitable{};
#endif
using tcp_socket = tcp::socket::rebind_executor<executor>::other;
using tcp_acceptor = tcp::acceptor::rebind_executor<executor>::other;
using tcp_stream = beast::basic_stream<tcp, executor>;
using steady_timer = asio::steady_timer::rebind_executor<executor>::other;
// An asynchronous read that tells the reactor when it emptied the socket.
//
// Boost 1.74's epoll reactor reads speculatively when a read starts unless
// the previous read on that socket was "exhausted", and its socket read marks
// only end-of-stream as exhausted. So on a keep-alive connection every wait
// for the next request or the next response began with a recv that failed
// with EAGAIN: 2 of the 6 syscalls per proxied request. This read marks a
// short read (fewer bytes than asked for: the socket is empty) as exhausted,
// so the next read waits for epoll's edge instead; any byte arriving later
// raises a new edge, which re-enables the speculative read. Falls back to the
// socket's own async_read_some where the shortcut does not apply, and with
// any other Boost than the 1.74 whose reactor internals this relies on.
//
// The catch: a FIN or reset that arrives with the bytes of a short read
// raises no later edge, so a read that must notice it promptly (the rest of
// a response) first reads directly (read_now). Where the next read is the
// wait for the next message, nothing is lost: a pooled upstream connection
// closed that way fails on the next request's write or at the pool's check,
// and a client that half-closes right after its request is found by the
// deadline's probe (ReadDeadline::arm) within half a second.
#if BOOST_VERSION == 107400 && defined(BOOST_ASIO_HAS_EPOLL)
#define RELAYMETER_EXHAUSTING_READ 1
#else
#define RELAYMETER_EXHAUSTING_READ 0
#endif
#if RELAYMETER_EXHAUSTING_READ
namespace detail {

template <class Socket>
struct SocketImplAccess : Socket {
    static constexpr auto member() { return &SocketImplAccess::impl_; }
};

template <class Handler, class IoExecutor>
class ExhaustingRecvOp : public asio::detail::reactor_op {
public:
    BOOST_ASIO_DEFINE_HANDLER_PTR(ExhaustingRecvOp);

    ExhaustingRecvOp(asio::detail::socket_type s, asio::mutable_buffer b, Handler& h, const IoExecutor& io_ex)
        : reactor_op(error_code(), &ExhaustingRecvOp::do_perform, &ExhaustingRecvOp::do_complete),
          socket_(s), buffer_(b), handler_(std::move(h)), work_(handler_, io_ex) {}

    static status do_perform(reactor_op* base) {
        auto* o = static_cast<ExhaustingRecvOp*>(base);
        if (!asio::detail::socket_ops::non_blocking_recv1(o->socket_, o->buffer_.data(), o->buffer_.size(), 0,
                                                         true, o->ec_, o->bytes_transferred_))
            return not_done; // EAGAIN: wait for the edge
        return o->ec_ || o->bytes_transferred_ < o->buffer_.size() ? done_and_exhausted : done;
    }

    static void do_complete(void* owner, asio::detail::operation* base, const error_code&, std::size_t) {
        auto* o = static_cast<ExhaustingRecvOp*>(base);
        ptr p = {std::addressof(o->handler_), o, o};
        asio::detail::handler_work<Handler, IoExecutor> w(std::move(o->work_));
        asio::detail::binder2<Handler, error_code, std::size_t> handler(o->handler_, o->ec_, o->bytes_transferred_);
        p.h = std::addressof(handler.handler_);
        p.reset();
        if (owner) {
            asio::detail::fenced_block b(asio::detail::fenced_block::half);
            w.complete(handler, handler.handler_);
        }
    }

private:
    asio::detail::socket_type socket_;
    asio::mutable_buffer buffer_;
    Handler handler_;
    asio::detail::handler_work<Handler, IoExecutor> work_;
};

struct InitiateExhaustingRead {
    template <class Handler>
    void operator()(Handler&& handler, tcp_socket* sock, asio::detail::reactor* reactor, asio::mutable_buffer b) const {
        using H = std::decay_t<Handler>;
        auto& impl = (sock->*SocketImplAccess<tcp_socket>::member()).get_implementation();
        if (b.size() == 0 || !sock->is_open() || !(impl.state_ & asio::detail::socket_ops::non_blocking)) {
            sock->async_read_some(b, std::forward<Handler>(handler));
            return;
        }
        H h(std::forward<Handler>(handler));
        using Op = ExhaustingRecvOp<H, executor>;
        const bool cont = boost_asio_handler_cont_helpers::is_continuation(h);
        typename Op::ptr p = {std::addressof(h), Op::ptr::allocate(h), nullptr};
        p.p = new (p.v) Op(impl.socket_, b, h, sock->get_executor());
        reactor->start_op(asio::detail::reactor::read_op, impl.socket_, impl.reactor_data_, p.p, cont, true);
        p.v = p.p = nullptr;
    }
};

} // namespace detail
#endif

// Reads from a non-blocking `sock` into `b` without waiting. False: nothing
// was there (EAGAIN), `ec` clear; true: `n` bytes read, or `ec` set (eof, ...).
inline bool read_now(tcp_socket& sock, asio::mutable_buffer b, std::size_t& n, error_code& ec) {
    if (!sock.non_blocking()) return false; // never block the worker
    n = sock.read_some(b, ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) {
        ec = {};
        return false;
    }
    return true;
}

// How soon a read armed with a probe (ReadDeadline::arm) finds a peer that
// had half-closed: the deadline's timer ticks at most this often per busy
// connection.
inline constexpr auto kPeerClosedProbe = std::chrono::milliseconds(500);

// The deadline of a connection's async_read_exhausting reads (Beast's
// tcp_stream timeouts cover only the reads made through the tcp_stream).
// Moving the deadline costs no timer operation: the timer is re-armed only
// when it fires before the current deadline. When it fires at or after it, it
// cancels the socket's pending read (operation_aborted), which result()
// reports as Beast's timeout error until the next arm().
class ReadDeadline {
public:
    using time_point = std::chrono::steady_clock::time_point;

    explicit ReadDeadline(const executor& ex)
        : st_(std::make_shared<State>(ex)), reactor_(&asio::use_service<asio::detail::reactor>(ex.context())) {}
    ~ReadDeadline() {
        st_->sock = nullptr; // a handler already queued must not touch the socket
        st_->timer.cancel();
    }
    ReadDeadline(const ReadDeadline&) = delete;
    ReadDeadline& operator=(const ReadDeadline&) = delete;

    // Before a read on `sock` that must end by `at`.
    //
    // With `probe_by`, by then (at the timer's next tick) the socket is peeked
    // at once: a FIN that came with the bytes of the last short read raised
    // no edge of its own (async_read_exhausting). Without the peek, a client
    // that sent its request and half-closed (`nc -N`, `printf ... | nc`)
    // would wait for its close until `at`, and so would the request written
    // into a pooled upstream connection whose server had half-closed it
    // after its last answer (and reads and drops what comes, as nginx's
    // lingering close). The timer ticks at most once per `probe_by` interval
    // while the connection is busy, so the peek costs one recv per connection
    // per tick, not one per request.
    void arm(tcp_socket& sock, time_point at, time_point probe_by = time_point::max()) {
        State& st = *st_;
        st.sock = &sock;
        st.at = at;
        st.fired = false;
        st.probe = probe_by < at;
        st.peer_closed = false;
        const time_point next = std::min(at, probe_by);
        if (!st.waiting || st.timer.expiry() > next) wait(st_, next);
    }
    // After the read: no deadline until the next arm().
    void disarm() { st_->at = time_point::max(); }
    // The read's error as the caller should see it: a cancellation by the
    // deadline is Beast's timeout error, as with a tcp_stream, and one by the
    // probe is the end of stream it found.
    error_code result(const error_code& ec) const {
        if (ec != asio::error::operation_aborted) return ec;
        if (st_->fired) return beast::error::timeout;
        if (st_->peer_closed) return asio::error::eof;
        return ec;
    }
    // The context's reactor, looked up once (use_service locks and searches).
    asio::detail::reactor& reactor() const { return *reactor_; }

private:
    struct State {
        explicit State(const executor& ex) : timer(ex) {}
        steady_timer timer;
        tcp_socket* sock = nullptr;
        time_point at = time_point::max();
        bool waiting = false;
        bool fired = false;
        bool probe = false;       // peek at the socket at the next tick
        bool peer_closed = false; // the peek found the end of stream (or an error)
    };

    static void wait(const std::shared_ptr<State>& st, time_point when) {
        st->waiting = true;
        st->timer.expires_at(when); // cancels a wait for a later time: its handler sees operation_aborted
        st->timer.async_wait([st](const error_code& ec) {
            if (ec == asio::error::operation_aborted) return; // superseded, or the owner went away
            st->waiting = false;
            if (!st->sock || st->at == time_point::max()) return;
            error_code ignored;
            if (std::chrono::steady_clock::now() >= st->at) {
                st->fired = true;
                st->sock->cancel(ignored);
                return;
            }
            if (st->probe) {
                st->probe = false;
                if (peer_gone(*st->sock)) {
                    st->peer_closed = true;
                    st->sock->cancel(ignored);
                    return;
                }
            }
            wait(st, st->at);
        });
    }
    // Whether the peer's end of stream (or an error) waits in the socket.
    // Peeked: a byte that is there stays for the read, whose edge is on its way.
    static bool peer_gone(tcp_socket& sock) {
        char c;
        const ssize_t r = ::recv(sock.native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
        return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
    }

    std::shared_ptr<State> st_;
    asio::detail::reactor* reactor_;
};

// Reads some bytes from `sock` into `b` (see "An asynchronous read that tells
// the reactor..." above); `dl` is the deadline armed for it.
template <class Token>
auto async_read_exhausting(tcp_socket& sock, ReadDeadline& dl, asio::mutable_buffer b, Token&& token) {
#if RELAYMETER_EXHAUSTING_READ
    return asio::async_initiate<Token, void(error_code, std::size_t)>(detail::InitiateExhaustingRead{}, token,
                                                                      &sock, &dl.reactor(), b);
#else
    (void)dl;
    return sock.async_read_some(b, std::forward<Token>(token));
#endif
}

} // namespace relaymeter

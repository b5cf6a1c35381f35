// The one header that brings in Asio, Beast and OpenSSL, with the namespace
// aliases the networking code uses. Include it only from networking
// translation units (server, proxy, upstream, tests' network helpers): it is
// slow to compile. Asio and Beast are separately compiled (src/net.cpp).
#pragma once

// Boost 1.74's awaitable.hpp uses std::exchange without including <utility>.
#include <utility>

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
template <class T>
using awaitable = asio::awaitable<T, executor>;
inline constexpr asio::use_awaitable_t<executor> use_awaitable{};
using tcp_socket = tcp::socket::rebind_executor<executor>::other;
using tcp_acceptor = tcp::acceptor::rebind_executor<executor>::other;
using tcp_stream = beast::basic_stream<tcp, executor>;
using steady_timer = asio::steady_timer::rebind_executor<executor>::other;
// Whether to read without waiting before reading asynchronously. On a busy
// worker the bytes are usually there already, and a direct read saves a trip
// through the scheduler; on a quiet one they are not, and the try is a wasted
// syscall (Asio makes its own speculative read anyway). One tally per worker
// thread and purpose: after a miss, the next 8 reads go straight to Asio.
class DirectReads {
public:
    // Reads from a non-blocking `sock` into `buffers` now, when worth it.
    // False: nothing was read and nothing went wrong, so the caller waits
    // for bytes asynchronously; true: `n` bytes read, or `ec` set (eof, ...).
    template <class Socket, class Buffers>
    bool try_read(Socket& sock, const Buffers& buffers, std::size_t& n, error_code& ec) {
        if (!sock.non_blocking() || !worth_trying()) return false;
        n = sock.read_some(buffers, ec);
        const bool would_block = ec == asio::error::would_block || ec == asio::error::try_again;
        result(!would_block);
        if (would_block) ec = {};
        return !would_block;
    }

private:
    bool worth_trying() {
        if (credit_ < 0) {
            ++credit_;
            return false;
        }
        return true;
    }
    void result(bool got_bytes) { credit_ = got_bytes ? (credit_ < 16 ? credit_ + 1 : 16) : -8; }

    int credit_ = 0;
};

} // namespace relaymeter

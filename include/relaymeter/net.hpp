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

template <class T>
using awaitable = asio::awaitable<T>;
inline constexpr auto use_awaitable = asio::use_awaitable;
} // namespace relaymeter

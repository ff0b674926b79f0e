// Connecting to an endpoint: a fresh socket per attempt, every attempt bounded by a timeout.
// All endpoint kinds yield the same socket type, so the guest link handles one stream type.
// Threads and executors: async_connect may be awaited from any executor, by any number of
// coroutines at once (each attempt has its own socket and timer). The socket it returns is bound
// to the awaiting coroutine's executor; use it from that executor (or one strand) only, as with
// any Asio socket.
#pragma once

#include <chrono>
#include <string>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/system/error_code.hpp>
#include <boost/system/result.hpp>

#include <stereos/transport/endpoint.hpp>

namespace stereos::transport {

using stream_socket = boost::asio::generic::stream_protocol::socket;

inline constexpr std::chrono::milliseconds default_connect_timeout{2000};

enum class error {
    connect_timeout = 1,      // the attempt did not finish within its timeout
    hybrid_handshake_failed,  // the hybrid vsock proxy did not answer "OK <n>\n"
    resolve_failed,           // the TCP host name did not resolve
};
const boost::system::error_category& transport_category() noexcept;
inline boost::system::error_code make_error_code(error e) noexcept {
    return {static_cast<int>(e), transport_category()};
}

// A failed attempt: the code, plus detail for operators (e.g. what the proxy answered instead
// of "OK", shown printable and bounded).
struct connect_error {
    boost::system::error_code code;
    std::string detail;
    // "<endpoint>: <code message>[: <detail>]"
    std::string describe(const endpoint& target) const;
};
[[noreturn]] void throw_exception_from_error(const connect_error& e,
                                             const boost::source_location& location);

// Connects on the calling coroutine's executor. TCP sockets get TCP_NODELAY (lock-step
// request/reply latency). Cancellation of the awaiting coroutine closes the attempt.
// `timeout` bounds the whole call: name resolution, each resolved address in turn, and the
// hybrid handshake; expiry gives error::connect_timeout with the stage it was in as detail.
// A cancelled call returns asio::error::operation_aborted (as a value, it does not throw).
// A hybrid handshake reads its reply byte by byte, so guest bytes that follow "OK <n>\n"
// stay in the returned socket.
boost::asio::awaitable<boost::system::result<stream_socket, connect_error>> async_connect(
    const endpoint& target, std::chrono::milliseconds timeout = default_connect_timeout);

}  // namespace stereos::transport

template <>
struct boost::system::is_error_code_enum<stereos::transport::error> : std::true_type {};

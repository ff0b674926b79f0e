// Where a guest's stereosd listens, parsed from the config/API string form:
//   tcp:HOST:PORT   vsock:CID[:PORT]   unix:/path   hybrid:/path/to/v.sock:PORT
// Threads: plain values and pure functions, usable from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>

#include <boost/assert/source_location.hpp>
#include <boost/system/result.hpp>

namespace stereos::transport {

inline constexpr std::uint32_t default_vsock_port = 1024;

struct tcp_endpoint {
    // A name, an IPv4 address, or an IPv6 address written as [::1]: parse_endpoint keeps the
    // brackets, async_connect strips them before resolving.
    std::string host;
    std::uint16_t port = 0;
    bool operator==(const tcp_endpoint&) const = default;
};
struct vsock_endpoint {
    std::uint32_t cid = 0;
    std::uint32_t port = default_vsock_port;
    bool operator==(const vsock_endpoint&) const = default;
};
struct unix_endpoint {
    std::string path;
    bool operator==(const unix_endpoint&) const = default;
};
// Firecracker / Cloud Hypervisor host side of vsock: a unix socket plus a CONNECT handshake.
struct hybrid_vsock_endpoint {
    std::string path;
    std::uint32_t port = default_vsock_port;
    bool operator==(const hybrid_vsock_endpoint&) const = default;
};

using endpoint = std::variant<tcp_endpoint, vsock_endpoint, unix_endpoint, hybrid_vsock_endpoint>;

// Why a string is not an endpoint, in words for an operator, e.g.
// "vsock:abc:1024: CID must be a number". The message starts with the input (printable,
// bounded), then the problem.
struct endpoint_error {
    std::string message;
};
[[noreturn]] void throw_exception_from_error(const endpoint_error& e,
                                             const boost::source_location& location);

boost::system::result<endpoint, endpoint_error> parse_endpoint(std::string_view text);

// The canonical string form; parse_endpoint(to_string(e)) == e.
std::string to_string(const endpoint& e);

}  // namespace stereos::transport

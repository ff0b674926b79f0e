#include <stereos/transport/endpoint.hpp>

#include <sys/un.h>

#include <charconv>
#include <limits>
#include <stdexcept>

#include <boost/asio/ip/address_v6.hpp>
#include <boost/throw_exception.hpp>

#include <stereos/protocol/redact.hpp>

namespace stereos::transport {

namespace {

using parse_result = boost::system::result<endpoint, endpoint_error>;

// sun_path must hold the path and its terminating NUL.
constexpr std::size_t max_unix_path_bytes = sizeof(sockaddr_un{}.sun_path) - 1;

constexpr std::string_view known_forms =
    "tcp:HOST:PORT, vsock:CID[:PORT], unix:/PATH or hybrid:/PATH:PORT";

// Every message starts with the input, made printable and bounded: the string may come from an
// API client and ends up in logs.
endpoint_error fail(std::string_view text, std::string_view problem) {
    return {protocol::printable_excerpt(text, 256) + ": " + std::string(problem)};
}

// Appended, not `"\"" + string`: that prepend makes g++ 12 -O2 warn -Wrestrict falsely inside
// libstdc++ (GCC bug 105329).
std::string quoted(std::string_view part) {
    std::string text(1, '"');
    text += protocol::printable_excerpt(part, 64);
    text += '"';
    return text;
}

enum class number_problem { none, not_a_number, out_of_range };

// Decimal digits only: no sign, no blanks, no "0x".
template <class T>
number_problem parse_number(std::string_view digits, T min, T max, T& out) {
    if (digits.empty()) {
        return number_problem::not_a_number;
    }
    for (const char c : digits) {
        if (c < '0' || c > '9') {
            return number_problem::not_a_number;
        }
    }
    std::uint64_t value = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (ec == std::errc::result_out_of_range || value < min || value > max) {
        return number_problem::out_of_range;
    }
    if (ec != std::errc{} || end != digits.data() + digits.size()) {
        return number_problem::not_a_number;
    }
    out = static_cast<T>(value);
    return number_problem::none;
}

// Parses a port of a tcp or hybrid endpoint; returns the problem in words, or "" when fine.
template <class T>
std::string port_problem(std::string_view digits, T min, T max, T& out) {
    if (digits.empty()) {
        return "missing port";
    }
    switch (parse_number(digits, min, max, out)) {
        case number_problem::none:
            return {};
        case number_problem::not_a_number:
            return "port " + quoted(digits) + " is not a number";
        case number_problem::out_of_range:
            return "port " + std::string(digits) + " is out of range " + std::to_string(min) + "-" +
                   std::to_string(max);
    }
    return "bad port";
}

std::string path_problem(std::string_view path) {
    if (path.empty()) {
        return "empty socket path";
    }
    if (path.find('\0') != std::string_view::npos) {
        return "socket path contains a NUL byte";
    }
    if (path.size() > max_unix_path_bytes) {
        return "socket path is " + std::to_string(path.size()) + " bytes, longer than the " +
               std::to_string(max_unix_path_bytes) + " a unix socket allows";
    }
    return {};
}

parse_result parse_tcp(std::string_view text, std::string_view rest) {
    tcp_endpoint result;
    std::string_view port_text;
    if (rest.starts_with('[')) {
        const auto close = rest.find(']');
        if (close == std::string_view::npos) {
            return fail(text, "missing ']' after the IPv6 address");
        }
        const auto address = rest.substr(1, close - 1);
        if (address.empty()) {
            return fail(text, "empty host");
        }
        boost::system::error_code ec;
        boost::asio::ip::make_address_v6(std::string(address), ec);
        if (ec) {
            return fail(text, quoted(address) + " is not an IPv6 address");
        }
        const auto after = rest.substr(close + 1);
        if (after.empty()) {
            return fail(text, "missing port (expected tcp:[IPV6]:PORT)");
        }
        if (after.front() != ':') {
            return fail(text, "expected ':' and a port after ']'");
        }
        result.host = std::string(rest.substr(0, close + 1));
        port_text = after.substr(1);
    } else {
        const auto colon = rest.rfind(':');
        if (colon == std::string_view::npos) {
            return fail(text, "missing port (expected tcp:HOST:PORT)");
        }
        const auto host = rest.substr(0, colon);
        if (host.empty()) {
            return fail(text, "empty host");
        }
        if (host.find(':') != std::string_view::npos) {
            return fail(text, "an IPv6 address must be in brackets, e.g. tcp:[::1]:1024");
        }
        result.host = std::string(host);
        port_text = rest.substr(colon + 1);
    }
    if (auto problem = port_problem<std::uint16_t>(port_text, 1, 65535, result.port);
        !problem.empty()) {
        return fail(text, problem);
    }
    return endpoint{std::move(result)};
}

parse_result parse_vsock(std::string_view text, std::string_view rest) {
    vsock_endpoint result;
    const auto colon = rest.find(':');
    const auto cid_text = rest.substr(0, colon);
    if (cid_text.empty()) {
        return fail(text, "missing CID (expected vsock:CID[:PORT])");
    }
    switch (parse_number<std::uint32_t>(cid_text, 0, std::numeric_limits<std::uint32_t>::max(),
                                        result.cid)) {
        case number_problem::none:
            break;
        case number_problem::not_a_number:
            return fail(text, "CID must be a number");
        case number_problem::out_of_range:
            return fail(text, "CID is out of range 0-4294967295");
    }
    if (colon != std::string_view::npos) {
        if (auto problem = port_problem<std::uint32_t>(
                rest.substr(colon + 1), 0, std::numeric_limits<std::uint32_t>::max(), result.port);
            !problem.empty()) {
            return fail(text, problem);
        }
    }
    return endpoint{result};
}

parse_result parse_unix(std::string_view text, std::string_view path) {
    if (auto problem = path_problem(path); !problem.empty()) {
        return fail(text, problem);
    }
    return endpoint{unix_endpoint{std::string(path)}};
}

parse_result parse_hybrid(std::string_view text, std::string_view rest) {
    // The path may itself contain ':'; the port never does.
    const auto colon = rest.rfind(':');
    if (colon == std::string_view::npos) {
        return fail(text, "missing port (expected hybrid:/PATH:PORT)");
    }
    hybrid_vsock_endpoint result;
    const auto path = rest.substr(0, colon);
    if (auto problem = path_problem(path); !problem.empty()) {
        return fail(text, problem);
    }
    if (auto problem = port_problem<std::uint32_t>(
            rest.substr(colon + 1), 0, std::numeric_limits<std::uint32_t>::max(), result.port);
        !problem.empty()) {
        return fail(text, problem);
    }
    result.path = std::string(path);
    return endpoint{std::move(result)};
}

}  // namespace

void throw_exception_from_error(const endpoint_error& e, const boost::source_location& location) {
    boost::throw_exception(std::invalid_argument(e.message), location);
}

boost::system::result<endpoint, endpoint_error> parse_endpoint(std::string_view text) {
    if (text.empty()) {
        return endpoint_error{"empty endpoint; expected " + std::string(known_forms)};
    }
    const auto colon = text.find(':');
    if (colon == std::string_view::npos) {
        return fail(text, "expected SCHEME:ADDRESS, one of " + std::string(known_forms));
    }
    const auto scheme = text.substr(0, colon);
    const auto rest = text.substr(colon + 1);
    if (scheme == "tcp") {
        return parse_tcp(text, rest);
    }
    if (scheme == "vsock") {
        return parse_vsock(text, rest);
    }
    if (scheme == "unix") {
        return parse_unix(text, rest);
    }
    if (scheme == "hybrid") {
        return parse_hybrid(text, rest);
    }
    return fail(text, "unknown scheme " + quoted(scheme) + " (known: tcp, vsock, unix, hybrid)");
}

std::string to_string(const endpoint& e) {
    struct visitor {
        std::string operator()(const tcp_endpoint& tcp) const {
            // An IPv6 address built in code may lack the brackets the string form needs.
            const bool needs_brackets =
                tcp.host.find(':') != std::string::npos && !tcp.host.starts_with('[');
            return "tcp:" + (needs_brackets ? "[" + tcp.host + "]" : tcp.host) + ":" +
                   std::to_string(tcp.port);
        }
        std::string operator()(const vsock_endpoint& vsock) const {
            return "vsock:" + std::to_string(vsock.cid) + ":" + std::to_string(vsock.port);
        }
        std::string operator()(const unix_endpoint& unix_socket) const {
            return "unix:" + unix_socket.path;
        }
        std::string operator()(const hybrid_vsock_endpoint& hybrid) const {
            return "hybrid:" + hybrid.path + ":" + std::to_string(hybrid.port);
        }
    };
    return std::visit(visitor{}, e);
}

}  // namespace stereos::transport

// The text forms the stereos-fakeguest program reads: listen addresses (with --count
// expansion), durations like "250ms", lifecycle scripts like "1s:booting,2s:ready", and uptime
// sequences like "5,9223372036854775807".
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <stereos/protocol/messages.hpp>

namespace stereos::testing {

// VMADDR_CID_ANY, without the kernel header.
inline constexpr std::uint32_t any_vsock_cid = 0xFFFFFFFF;

// Where one fake guest listens:
//   tcp:HOST:PORT    HOST an IP address ([::1] for IPv6); PORT 0 picks a free port
//   unix:PATH
//   hybrid:PATH:PORT Firecracker-style vsock proxy socket answering "CONNECT PORT"
//   vsock:CID:PORT   a real AF_VSOCK listener; CID a number or ANY (inside a VM)
struct listen_spec {
    enum class kind { tcp, unix_socket, hybrid, vsock };
    kind what = kind::tcp;
    std::string host;  // tcp, without brackets
    std::uint16_t port = 0;
    std::string path;                 // unix and hybrid
    std::uint32_t vsock_port = 1024;  // hybrid and vsock
    std::uint32_t vsock_cid = any_vsock_cid;
    bool operator==(const listen_spec&) const = default;
};

// Throws std::invalid_argument with a message naming the problem.
listen_spec parse_listen_spec(std::string_view text);

// `count` guests from one spec: TCP ports PORT, PORT+1, ... (all 0 stays all 0, each gets its
// own free port), vsock ports likewise; unix and hybrid paths must contain "%d", replaced by 0, 1,
// ... count-1. Throws std::invalid_argument when that is impossible.
std::vector<listen_spec> expand_listen_spec(const listen_spec& spec, std::size_t count);

// "250ms", "2s", "1.5s", "1m", "500us" (rounded down to milliseconds). Throws
// std::invalid_argument on anything else, including a bare number.
std::chrono::milliseconds parse_duration(std::string_view text);

struct scheduled_lifecycle {
    std::chrono::milliseconds offset;
    protocol::lifecycle_state state;
    bool operator==(const scheduled_lifecycle&) const = default;
};

// "1s:booting,2s:ready,4s:healthy" -> events sorted by offset. Throws std::invalid_argument.
std::vector<scheduled_lifecycle> parse_lifecycle_script(std::string_view text);

// "5,9223372036854775807" -> {5, 9223372036854775807}, in order. Any 64-bit integers, negative
// ones too: the sequence plays a broken guest. Throws std::invalid_argument on an empty item or
// anything that is not such a number.
std::vector<std::int64_t> parse_uptime_sequence(std::string_view text);

}  // namespace stereos::testing

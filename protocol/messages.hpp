// The wire messages of stereosd (seed package `vsock` v0.2.1): one JSON object per line,
// {"type": T, "payload": {...}}. Plain data; the JSON mapping lives in codec.hpp.
// Threads: plain values and pure functions, usable from any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace stereos::protocol {

enum class lifecycle_state { booting, ready, healthy, degraded, shutdown };

std::string_view to_string(lifecycle_state state) noexcept;
std::optional<lifecycle_state> parse_lifecycle_state(std::string_view text) noexcept;

// ---- host -> guest -------------------------------------------------------------------------

struct ping_request {
    bool operator==(const ping_request&) const = default;
};
struct get_health_request {
    bool operator==(const get_health_request&) const = default;
};
// set_config. `content` is jcard.toml, which carries secrets: never log it (see redact.hpp).
struct config_payload {
    std::string content;
    bool operator==(const config_payload&) const = default;
};
// inject_secret. `mode` 0 means "guest default" and is omitted on the wire.
struct secret_payload {
    std::string name;
    std::string value;
    std::uint32_t mode = 0;
    bool operator==(const secret_payload&) const = default;
};
struct ssh_key_payload {
    std::string user;
    std::string public_key;
    bool operator==(const ssh_key_payload&) const = default;
};
struct mount_payload {
    std::string tag;
    std::string guest_path;
    std::string fs_type;
    bool read_only = false;
    bool operator==(const mount_payload&) const = default;
};
struct shutdown_payload {
    std::string reason;
    bool operator==(const shutdown_payload&) const = default;
};

using host_message = std::variant<ping_request, get_health_request, config_payload, secret_payload,
                                  ssh_key_payload, mount_payload, shutdown_payload>;

// ---- guest -> host -------------------------------------------------------------------------

struct pong_reply {
    bool operator==(const pong_reply&) const = default;
};
struct agent_status {
    std::string name;
    bool running = false;
    std::string session;
    std::int64_t restarts = 0;
    std::string error;
    bool operator==(const agent_status&) const = default;
};
// A guest reporting an uptime outside [0, this] is broken: the decoder refuses it, since the
// value goes into time arithmetic (an int64 of nanoseconds holds about 292 years).
inline constexpr std::int64_t max_uptime_seconds = 100LL * 366 * 24 * 3600;  // 100 years

struct health_payload {
    lifecycle_state state = lifecycle_state::booting;
    std::vector<agent_status> agents;
    std::int64_t uptime_seconds = 0;  // 0..max_uptime_seconds
    bool operator==(const health_payload&) const = default;
};
struct ack_payload {
    std::string reply_to;
    bool ok = false;
    std::string error;
    bool operator==(const ack_payload&) const = default;
};
struct lifecycle_payload {
    lifecycle_state state = lifecycle_state::booting;
    std::string message;
    bool operator==(const lifecycle_payload&) const = default;
};
// A type this library does not know: newer guests may send some. Carried so it can be reported.
struct unknown_message {
    std::string type;
    bool operator==(const unknown_message&) const = default;
};

using guest_message =
    std::variant<pong_reply, health_payload, ack_payload, lifecycle_payload, unknown_message>;

// The wire `type` string of a message.
std::string_view type_name(const host_message& message);
std::string_view type_name(const guest_message& message);

// The reply kind the guest answers a request with. Replies carry no request id: each answers
// the oldest outstanding request, so a reply of another kind means the link is out of step.
enum class reply_kind { pong, health, ack };
reply_kind expected_reply(const host_message& request) noexcept;

}  // namespace stereos::protocol

#include <stereos/protocol/messages.hpp>

#include <array>
#include <utility>

#include <stereos/util/overloaded.hpp>

namespace stereos::protocol {

namespace {
constexpr std::array<std::pair<lifecycle_state, std::string_view>, 5> state_names{{
    {lifecycle_state::booting, "booting"},
    {lifecycle_state::ready, "ready"},
    {lifecycle_state::healthy, "healthy"},
    {lifecycle_state::degraded, "degraded"},
    {lifecycle_state::shutdown, "shutdown"},
}};
}  // namespace

std::string_view to_string(lifecycle_state state) noexcept {
    for (const auto& [s, name] : state_names) {
        if (s == state)
            return name;
    }
    return "unknown";
}

std::optional<lifecycle_state> parse_lifecycle_state(std::string_view text) noexcept {
    for (const auto& [s, name] : state_names) {
        if (name == text)
            return s;
    }
    return std::nullopt;
}

std::string_view type_name(const host_message& message) {
    return std::visit(overloaded{
                          [](const ping_request&) { return std::string_view("ping"); },
                          [](const get_health_request&) { return std::string_view("get_health"); },
                          [](const config_payload&) { return std::string_view("set_config"); },
                          [](const secret_payload&) { return std::string_view("inject_secret"); },
                          [](const ssh_key_payload&) { return std::string_view("inject_ssh_key"); },
                          [](const mount_payload&) { return std::string_view("mount"); },
                          [](const shutdown_payload&) { return std::string_view("shutdown"); },
                      },
                      message);
}

std::string_view type_name(const guest_message& message) {
    return std::visit(overloaded{
                          [](const pong_reply&) { return std::string_view("pong"); },
                          [](const health_payload&) { return std::string_view("health"); },
                          [](const ack_payload&) { return std::string_view("ack"); },
                          [](const lifecycle_payload&) { return std::string_view("lifecycle"); },
                          [](const unknown_message& m) { return std::string_view(m.type); },
                      },
                      message);
}

reply_kind expected_reply(const host_message& request) noexcept {
    if (std::holds_alternative<ping_request>(request))
        return reply_kind::pong;
    if (std::holds_alternative<get_health_request>(request))
        return reply_kind::health;
    return reply_kind::ack;
}

}  // namespace stereos::protocol

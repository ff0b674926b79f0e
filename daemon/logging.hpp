// The daemon's logging front end: one call per record, with the structured fields journald
// indexes (GUEST=, GUEST_STATE=, ...). Boost.Log does the routing; its sinks (stderr text or
// journald) are chosen once at start. Never pass a secret here: render messages with
// protocol::redacted().
#pragma once

#include <optional>
#include <source_location>
#include <string>
#include <string_view>

namespace stereos::log {

enum class severity { trace, debug, info, notice, warning, error };

std::string_view to_string(severity level) noexcept;
std::optional<severity> parse_severity(std::string_view text) noexcept;
// syslog priority: error 3, warning 4, notice 5, info 6, debug and trace 7.
int syslog_priority(severity level) noexcept;

// Structured fields of a record; empty ones are left out.
struct fields {
    std::string_view guest{};         // GUEST=
    std::string_view guest_state{};   // GUEST_STATE=
    std::string_view endpoint{};      // GUEST_ENDPOINT=
    std::string_view message_type{};  // MESSAGE_TYPE= (wire type, e.g. "get_health")
    std::string_view request{};       // REQUEST= (API method and path)
    std::string_view message_id{};    // MESSAGE_ID= (128-bit id, e.g. for state transitions)
    // The audit trail of API requests: who asked (SO_PEERCRED) and what they got.
    std::string_view peer_uid{};   // API_PEER_UID=
    std::string_view peer_gid{};   // API_PEER_GID=
    std::string_view peer_pid{};   // API_PEER_PID=
    std::string_view peer_user{};  // API_PEER_USER= (when the uid has a name)
    std::string_view status{};     // API_STATUS= (the HTTP status answered)
};

// MESSAGE_ID of every guest state transition, so `journalctl MESSAGE_ID=...` lists them all.
inline constexpr std::string_view state_transition_message_id = "7d9a3c4e1b2f4a6c8e0d5f1a2b3c4d5e";

enum class sink_kind { stderr_text, journal };

// Installs the sink and level. stderr_text prefixes "<N>" priorities when `under_systemd`.
void setup(sink_kind sink, severity level, bool under_systemd);
void set_level(severity level);
severity level() noexcept;
bool enabled(severity level) noexcept;

// CODE_FILE=: a path under the source tree relative to it ("daemon/host_daemon.cpp"), whether
// the compiler named it absolute or relative to the build tree ("../../daemon/host_daemon.cpp").
std::string_view source_relative_path(std::string_view path) noexcept;
// CODE_FUNC=: a qualified name without return type, parameters or template arguments, also for
// coroutines, whose std::source_location names an actor taking a "...Frame*":
// "void ns::f(ns::f()::_ZN2ns1fEv.Frame*)" -> "ns::f".
std::string readable_function_name(std::string_view name);

// True when stderr is connected to the journal ($JOURNAL_STREAM names stderr's device:inode).
bool stderr_is_journal();

// Records with a guest name it first ("vm1: link up") in every sink; GUEST= holds it too.
void write(severity level, std::string_view message, const fields& structured = {},
           std::source_location where = std::source_location::current());

inline void trace(std::string_view m, const fields& f = {},
                  std::source_location w = std::source_location::current()) {
    write(severity::trace, m, f, w);
}
inline void debug(std::string_view m, const fields& f = {},
                  std::source_location w = std::source_location::current()) {
    write(severity::debug, m, f, w);
}
inline void info(std::string_view m, const fields& f = {},
                 std::source_location w = std::source_location::current()) {
    write(severity::info, m, f, w);
}
inline void notice(std::string_view m, const fields& f = {},
                   std::source_location w = std::source_location::current()) {
    write(severity::notice, m, f, w);
}
inline void warning(std::string_view m, const fields& f = {},
                    std::source_location w = std::source_location::current()) {
    write(severity::warning, m, f, w);
}
inline void error(std::string_view m, const fields& f = {},
                  std::source_location w = std::source_location::current()) {
    write(severity::error, m, f, w);
}

}  // namespace stereos::log

// JSON codec for wire messages: byte-exact encoding (as the reference Go client writes it) and
// tolerant-but-strict decoding that returns errors instead of throwing.
// Threads: no shared state; every function here may be called from any thread at once.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include <boost/json/fwd.hpp>
#include <boost/json/value.hpp>
#include <boost/system/result.hpp>

#include <stereos/protocol/error.hpp>
#include <stereos/protocol/messages.hpp>

namespace stereos::protocol {

// The guest's bufio.Scanner limit: a line of at most this many bytes including its '\n'.
inline constexpr std::size_t max_line_bytes = 1024 * 1024;

// Encodes one line, '\n' included. Strings are escaped as Go's encoding/json does (`<` as
// \u003c, `>`, `&`, U+2028, U+2029), so our bytes equal the reference client's.
// Fails with error::line_too_long rather than produce a line the guest would drop.
boost::system::result<std::string> encode(const host_message& message);
boost::system::result<std::string> encode(const guest_message& message);

// Appends the encoded line to `out`; on failure `out` is left as it was.
boost::system::error_code encode_into(std::string& out, const host_message& message);

// Decodes one line (without its '\n'; a trailing '\r' and surrounding blanks are tolerated).
// Unknown fields are ignored and keys match case-insensitively, as Go does. A type this library
// does not know yields unknown_message rather than an error.
decode_result<guest_message> decode_guest_line(std::string_view line);

// What a guest sees: the message, or only its type string when the type is unknown.
struct host_request {
    std::string type;
    std::optional<host_message> message;
};
decode_result<host_request> decode_host_line(std::string_view line);

// The message as compact JSON without Go's escaping or the newline, for humans. Never log this
// for host messages directly: use redacted() from redact.hpp.
std::string render_json(const host_message& message);
std::string render_json(const guest_message& message);

// Re-applies Go's HTML-safe escaping to already-serialized JSON text.
void escape_like_go(std::string& json_text);

// ---- Boost.JSON conversions (value_from / value_to) ----------------------------------------
// value_to throws boost::system::system_error on bad input; the link uses the decode_* functions.

#define STEREOS_PROTOCOL_DECLARE_CONVERSIONS(T)                                              \
    void tag_invoke(boost::json::value_from_tag, boost::json::value& out, const T& payload); \
    T tag_invoke(boost::json::value_to_tag<T>, const boost::json::value& in);

STEREOS_PROTOCOL_DECLARE_CONVERSIONS(config_payload)
STEREOS_PROTOCOL_DECLARE_CONVERSIONS(secret_payload)
STEREOS_PROTOCOL_DECLARE_CONVERSIONS(ssh_key_payload)
STEREOS_PROTOCOL_DECLARE_CONVERSIONS(mount_payload)
STEREOS_PROTOCOL_DECLARE_CONVERSIONS(shutdown_payload)
STEREOS_PROTOCOL_DECLARE_CONVERSIONS(agent_status)
STEREOS_PROTOCOL_DECLARE_CONVERSIONS(health_payload)
STEREOS_PROTOCOL_DECLARE_CONVERSIONS(ack_payload)
STEREOS_PROTOCOL_DECLARE_CONVERSIONS(lifecycle_payload)
STEREOS_PROTOCOL_DECLARE_CONVERSIONS(lifecycle_state)

#undef STEREOS_PROTOCOL_DECLARE_CONVERSIONS

}  // namespace stereos::protocol

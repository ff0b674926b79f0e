// Log-safe renderings. Every log line in the project that shows a message goes through here:
// inject_secret.value and set_config.content (jcard.toml carries secrets) are replaced by
// "<redacted N bytes>".
// Threads: pure functions, callable from any thread at once.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include <stereos/protocol/messages.hpp>

namespace stereos::protocol {

// The message as compact JSON (no trailing newline) with secret fields redacted.
std::string redacted(const host_message& message);
std::string redacted(const guest_message& message);

// What replaces a secret of `size` bytes.
std::string redaction_marker(std::size_t size);

// A bounded, printable excerpt of raw bytes from a peer, for error logs: control and non-ASCII
// bytes become \xNN and the text is cut at `max_bytes` with a note of the full size.
std::string printable_excerpt(std::string_view bytes, std::size_t max_bytes = 160);

}  // namespace stereos::protocol

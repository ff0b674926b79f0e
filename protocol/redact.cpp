#include <stereos/protocol/redact.hpp>

#include <array>
#include <cstdio>

#include <stereos/protocol/codec.hpp>

namespace stereos::protocol {

std::string redaction_marker(std::size_t size) {
    return "<redacted " + std::to_string(size) + " bytes>";
}

std::string redacted(const host_message& message) {
    if (const auto* secret = std::get_if<secret_payload>(&message)) {
        auto copy = *secret;
        copy.value = redaction_marker(secret->value.size());
        return render_json(host_message{std::move(copy)});
    }
    if (const auto* config = std::get_if<config_payload>(&message)) {
        return render_json(host_message{config_payload{redaction_marker(config->content.size())}});
    }
    return render_json(message);
}

std::string redacted(const guest_message& message) {
    return render_json(message);
}

std::string printable_excerpt(std::string_view bytes, std::size_t max_bytes) {
    std::string out;
    const auto shown = bytes.substr(0, max_bytes);
    out.reserve(shown.size() + 32);
    for (const unsigned char c : shown) {
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            out += static_cast<char>(c);
        } else {
            std::array<char, 8> hex{};
            std::snprintf(hex.data(), hex.size(), "\\x%02x", c);
            out += hex.data();
        }
    }
    if (bytes.size() > shown.size()) {
        out += "... (" + std::to_string(bytes.size()) + " bytes)";
    }
    return out;
}

}  // namespace stereos::protocol

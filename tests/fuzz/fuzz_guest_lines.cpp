// Fuzz target: what a guest can send us. Arbitrary bytes go through the line framer in chunks
// chosen by the input, and every framed line through the guest-line (and host-line) decoder.
// Input: byte 0 picks the line limit, bytes 1-4 the chunk sizes and how each is handed over
// (prepare/commit or feed), the rest is the stream.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <stereos/protocol/codec.hpp>
#include <stereos/protocol/line_framer.hpp>
#include <stereos/protocol/redact.hpp>

namespace {

namespace protocol = stereos::protocol;

void check(bool condition, const char* what) {
    if (!condition) {
        std::fprintf(stderr, "fuzz_guest_lines: invariant broken: %s\n", what);
        std::abort();
    }
}

// A decoded message must survive encode -> decode unchanged, and encoding must be stable.
template <class Message, class Decode>
void check_round_trip(const Message& message, Decode decode) {
    auto encoded = protocol::encode(message);
    check(encoded.has_value(), "a decoded message fails to encode");
    check(!encoded->empty() && encoded->back() == '\n', "an encoded line does not end in \\n");
    check(encoded->find('\n') == encoded->size() - 1, "an encoded line holds a raw \\n");
    std::string_view line(*encoded);
    line.remove_suffix(1);
    auto again = decode(line);
    check(again.has_value(), "a re-encoded message does not decode");
    check(*again == message, "a re-encoded message decodes to something else");
    auto encoded_again = protocol::encode(*again);
    check(encoded_again.has_value() && *encoded_again == *encoded, "encoding is not stable");
}

void decode_line(std::string_view line) {
    if (auto guest = protocol::decode_guest_line(line)) {
        check_round_trip(*guest, [](std::string_view l) {
            auto r = protocol::decode_guest_line(l);
            return r ? std::optional<protocol::guest_message>(*r) : std::nullopt;
        });
        (void)protocol::redacted(*guest);
        (void)protocol::render_json(*guest);
    } else {
        check(!guest.error().detail.empty() || guest.error().code.failed(),
              "a decode error says nothing");
    }
    // The same bytes as a guest would read them (the fake guest and golden tests use this).
    if (auto host = protocol::decode_host_line(line); host && host->message) {
        check_round_trip(*host->message, [](std::string_view l) {
            auto r = protocol::decode_host_line(l);
            return r && r->message ? r->message : std::nullopt;
        });
        // The rendering for logs must not depend on a secret's bytes, only on its length.
        auto blanked = *host->message;
        if (auto* secret = std::get_if<protocol::secret_payload>(&blanked))
            secret->value.assign(secret->value.size(), '*');
        if (auto* config = std::get_if<protocol::config_payload>(&blanked))
            config->content.assign(config->content.size(), '*');
        check(protocol::redacted(*host->message) == protocol::redacted(blanked),
              "redacted() depends on a secret's content");
    }
}

// What a chunking-independent framer must return for `stream`: every non-empty line (one
// trailing '\r' dropped) up to the first line that cannot fit, then line_too_long.
struct expected_lines {
    std::vector<std::string_view> lines;
    bool too_long = false;
};

expected_lines reference_split(std::string_view stream, std::size_t max_line) {
    expected_lines out;
    while (true) {
        const auto newline = stream.find('\n');
        if (newline == std::string_view::npos) {
            out.too_long = stream.size() >= max_line;  // even a '\n' next would be one too many
            return out;
        }
        auto line = stream.substr(0, newline);
        if (line.size() + 1 > max_line) {
            out.too_long = true;
            return out;
        }
        if (!line.empty() && line.back() == '\r')
            line.remove_suffix(1);
        if (!line.empty())
            out.lines.push_back(line);
        stream.remove_prefix(newline + 1);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 5)
        return 0;
    // Small limits reach the over-long paths with short inputs; 255 means the real 1 MiB.
    const std::size_t max_line =
        data[0] == 255 ? protocol::max_line_bytes : std::size_t{2} + data[0] * 4u;
    const std::uint8_t pattern[4] = {data[1], data[2], data[3], data[4]};
    const std::string_view stream(reinterpret_cast<const char*>(data) + 5, size - 5);
    const auto expected = reference_split(stream, max_line);

    protocol::line_framer framer(max_line);
    check(framer.max_line() == max_line, "the framer changed its limit");
    std::vector<std::string> got;  // copies: views die at the next feed
    bool failed = false;
    std::size_t offset = 0;
    for (std::size_t step = 0; offset < stream.size(); ++step) {
        const std::uint8_t p = pattern[step % 4];
        const std::size_t chunk = std::min<std::size_t>(stream.size() - offset, 1 + (p & 0x3f));
        const auto bytes = stream.substr(offset, chunk);
        offset += chunk;
        if (p & 0x80) {
            framer.feed(bytes);
        } else {
            // As the link reads: a larger prepared buffer, partly filled.
            auto space = framer.prepare(chunk + (p & 0x40 ? 100 : 0));
            check(space.size() >= chunk, "prepare() gave less space than asked");
            std::memcpy(space.data(), bytes.data(), chunk);
            framer.commit(chunk);
        }
        check(framer.buffered() <= max_line + chunk, "the framer holds more than a line + a chunk");
        while (true) {
            auto next = framer.next_line();
            if (!next) {
                check(next.error() == protocol::error::line_too_long, "unexpected framer error");
                check(framer.failed(), "line_too_long is not sticky");
                check(!framer.next_line(), "line_too_long cleared itself");
                if (!failed)
                    check(expected.too_long, "line_too_long where every line fits");
                failed = true;
                framer.reset();
                check(!framer.failed() && framer.buffered() == 0, "reset() left state behind");
                break;
            }
            if (!*next)
                break;
            const auto line = **next;
            check(!line.empty(), "an empty line was returned");
            check(line.size() < max_line, "a line longer than the limit was returned");
            check(line.find('\n') == std::string_view::npos, "a line holds a \\n");
            if (!failed)
                got.emplace_back(line);
            decode_line(line);
        }
    }
    // Until the first failure, chunking must not matter.
    check(got.size() <= expected.lines.size(), "more lines than the stream holds");
    for (std::size_t i = 0; i < got.size(); ++i)
        check(got[i] == expected.lines[i], "a line differs from the unchunked split");
    check(got.size() == expected.lines.size(), "a complete line was not returned");
    check(failed == expected.too_long, "an over-long line was not reported");
    return 0;
}

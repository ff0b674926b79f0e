// Fuzz target: the config loader, TOML text in. Whatever the text, the loader returns a config
// or a list of "<source>:<line>: <key>: <what>" errors; it never throws or crashes. A config it
// accepts must be internally consistent (unique guest names, valid endpoints and durations).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <set>
#include <string>
#include <string_view>

#include "config/config.hpp"

namespace {

void check(bool condition, const char* what) {
    if (!condition) {
        std::fprintf(stderr, "fuzz_config: invariant broken: %s\n", what);
        std::abort();
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    namespace config = stereos::config;
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    auto loaded = config::load_config_text(text, "fuzz.toml");
    if (!loaded) {
        const auto& messages = loaded.error().messages;
        check(!messages.empty(), "a rejected config without a reason");
        for (const auto& m : messages)
            check(m.starts_with("fuzz.toml"), "an error does not name the source");
        (void)config::to_string(loaded.error());
        return 0;
    }
    std::set<std::string, std::less<>> names;
    for (const auto& guest : loaded->guests) {
        check(config::check_guest_name(guest.name).has_value(),
              "an accepted guest name is invalid");
        check(names.insert(guest.name).second, "two guests share a name");
        check(loaded->find_guest(guest.name) == &guest, "find_guest() finds another guest");
        auto endpoint = stereos::transport::parse_endpoint(guest.endpoint_text);
        check(endpoint && *endpoint == guest.endpoint,
              "a guest's endpoint does not match its text");
        check(guest.timeouts == guest.overrides.resolve(loaded->daemon.timeouts),
              "effective timeouts differ from the overrides applied to the defaults");
        for (auto d : {guest.timeouts.request_timeout, guest.timeouts.connect_timeout,
                       guest.timeouts.keepalive_interval, guest.timeouts.health_interval,
                       guest.timeouts.reconnect_max}) {
            check(d.count() > 0, "an accepted timeout is not positive");
            auto back = config::parse_duration(config::format_duration(d));
            check(back && *back == d, "format_duration() does not read back");
        }
    }
    // A config compared with itself has no differences.
    const auto diff = config::diff_guests(*loaded, *loaded);
    check(diff.added.empty() && diff.removed.empty() && diff.changed.empty() &&
              diff.unchanged.size() == loaded->guests.size(),
          "a config differs from itself");
    return 0;
}

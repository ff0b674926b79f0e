// The rules about a guest's values (guest_rules.hpp): guest_checker judges a guest as read, and
// the single values (names, durations, timeouts, modes) are parsed and checked here. The files a
// guest names are probed through the file_probe it is given.
#include "config/guest_rules.hpp"

#include <algorithm>
#include <array>
#include <map>
#include <sstream>
#include <utility>

#include <stereos/protocol/codec.hpp>
#include "config/config.hpp"

namespace stereos::config {

namespace {

using std::chrono::milliseconds;

constexpr std::string_view name_chars =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";

bool only_name_chars(std::string_view text) {
    return text.find_first_not_of(name_chars) == std::string_view::npos;
}

std::string in_quotes(std::string_view text) {
    std::string out = "\"";
    out += text;
    out += '"';
    return out;
}

std::string octal(std::int64_t value) {
    if (value < 0) {
        return std::to_string(value);
    }
    std::ostringstream out;
    out << "0o" << std::oct << value;
    return out.str();
}

// The sane range of each link timing key.
struct duration_range {
    std::string_view key;
    milliseconds min;
    milliseconds max;
    milliseconds link_timeouts::*field;
    std::optional<milliseconds> link_timeout_overrides::*override_field;
};

constexpr std::array<duration_range, 6> duration_ranges{{
    {"request_timeout", 10ms, 1h, &link_timeouts::request_timeout,
     &link_timeout_overrides::request_timeout},
    {"connect_timeout", 10ms, 5min, &link_timeouts::connect_timeout,
     &link_timeout_overrides::connect_timeout},
    {"keepalive_interval", 100ms, 1h, &link_timeouts::keepalive_interval,
     &link_timeout_overrides::keepalive_interval},
    {"health_interval", 100ms, 1h, &link_timeouts::health_interval,
     &link_timeout_overrides::health_interval},
    {"reconnect_max", 10ms, 1h, &link_timeouts::reconnect_max,
     &link_timeout_overrides::reconnect_max},
    {"unresponsive_grace", 100ms, 24h, &link_timeouts::unresponsive_grace,
     &link_timeout_overrides::unresponsive_grace},
}};

const duration_range* find_duration_range(std::string_view key) {
    for (const auto& range : duration_ranges) {
        if (range.key == key) {
            return &range;
        }
    }
    return nullptr;
}

// Public keys and secrets are small; anything larger than this is a wrong path.
constexpr std::uintmax_t max_small_file = 64 * 1024;

// The rules about a guest's values, whatever document it came from.
class guest_checker {
  public:
    guest_checker(load_options options, const file_probe& files)
        : options_(options), files_(files), credentials_directory_(files.credentials_directory()) {}

    std::vector<model_error> take_errors() { return std::move(errors_); }

    void check(guest_config& guest, const std::string& prefix, const link_timeouts& defaults) {
        if (auto valid = check_guest_name(guest.name); !valid) {
            error(prefix + "name", valid.error().message);
        }
        if (auto parsed = check_endpoint(guest.endpoint_text); !parsed) {
            error(prefix + "endpoint", parsed.error().message);
        } else {
            guest.endpoint = *parsed;
        }
        guest.timeouts = guest.overrides.resolve(defaults);
        check_provision(guest.provision, prefix + "provision.");
    }

    // Duplicates are looked for among all well-named guests, valid or not.
    void check_unique_names(const std::vector<guest_config>& guests) {
        std::map<std::string_view, std::string> first_key;
        for (std::size_t i = 0; i < guests.size(); ++i) {
            const std::string key = "guest[" + std::to_string(i) + "].name";
            if (!check_guest_name(guests[i].name)) {
                continue;
            }
            if (auto [it, inserted] = first_key.emplace(guests[i].name, key); !inserted) {
                duplicate(key, "duplicate guest name " + in_quotes(guests[i].name), it->second);
            }
        }
    }

  private:
    void error(std::string key, std::string message) {
        errors_.push_back({std::move(key), std::move(message), {}, false});
    }
    void duplicate(std::string key, std::string message, std::string first_key) {
        errors_.push_back({std::move(key), std::move(message), std::move(first_key), false});
    }

    // Whether a host reference may be followed; if not, records why. Checked before the file is
    // opened, so a refused caller learns nothing about it.
    bool reference_allowed(const std::string& key) {
        if (options_.allow_host_references) {
            return true;
        }
        errors_.push_back({key,
                           "naming a host file or credential for the daemon to read needs root or "
                           "the daemon's own user; send the value itself instead",
                           {},
                           true});
        return false;
    }

    void check_provision(provision_config& provision, const std::string& prefix) {
        if (provision.config_file && reference_allowed(prefix + "config_file")) {
            // The content goes out as one line of at most 1 MiB.
            if (auto problem =
                    files_.file_problem(*provision.config_file, false, protocol::max_line_bytes)) {
                error(prefix + "config_file", *problem);
            }
        }
        if (provision.config_content) {
            if (!options_.allow_values) {
                error(prefix + "config",
                      "the jcard.toml may not be written inline here; use config_file");
            } else if (provision.config_file) {
                error(prefix + "config", "set config or config_file, not both");
            } else if (provision.config_content->size() > protocol::max_line_bytes / 2) {
                // Escaped on the wire, it must still fit one line of at most 1 MiB.
                error(prefix + "config", "is too large (at most " +
                                             std::to_string(protocol::max_line_bytes / 2) +
                                             " bytes)");
            }
        }
        for (std::size_t i = 0; i < provision.ssh_keys.size(); ++i) {
            check_ssh_key(provision.ssh_keys[i], prefix + "ssh_keys[" + std::to_string(i) + "]");
        }
        std::map<std::string_view, std::string> first_secret;
        for (std::size_t i = 0; i < provision.secrets.size(); ++i) {
            const std::string key = prefix + "secrets[" + std::to_string(i) + "]";
            check_secret(provision.secrets[i], key);
            const std::string& name = provision.secrets[i].name;
            // It becomes a file name in the guest: no directories, nothing hidden by "..".
            if (auto valid = check_secret_name(name); !valid) {
                error(key + ".name", valid.error().message);
            } else if (auto [it, inserted] = first_secret.emplace(name, key + ".name"); !inserted) {
                duplicate(key + ".name", "duplicate secret name " + in_quotes(name), it->second);
            }
        }
        std::map<std::string_view, std::string> first_mount;
        for (std::size_t i = 0; i < provision.mounts.size(); ++i) {
            const std::string key = prefix + "mounts[" + std::to_string(i) + "]";
            const auto& mount = provision.mounts[i];
            // virtio-fs tags hold at most 36 bytes.
            if (mount.tag.empty() || mount.tag.size() > 36 || !only_name_chars(mount.tag)) {
                error(key + ".tag", "invalid mount tag " + in_quotes(mount.tag) +
                                        " (1 to 36 of A-Z a-z 0-9 . _ -)");
            }
            if (auto valid = check_mount_guest_path(mount.guest_path); !valid) {
                error(key + ".guest_path", valid.error().message);
            } else if (auto [it, inserted] =
                           first_mount.emplace(mount.guest_path, key + ".guest_path");
                       !inserted) {
                duplicate(key + ".guest_path",
                          "duplicate mount point " + in_quotes(mount.guest_path), it->second);
            }
            if (auto valid = check_fs_type(mount.fs_type); !valid) {
                error(key + ".fs_type", valid.error().message);
            }
        }
    }

    void check_ssh_key(ssh_key_config& key, const std::string& where) {
        const std::string& user = key.user;
        if (user.empty() || user.size() > 32 || !only_name_chars(user) || user.front() == '-') {
            error(where + ".user", "invalid user name " + in_quotes(user) +
                                       " (1 to 32 of A-Z a-z 0-9 . _ -, not starting with -)");
        }
        const bool has_inline = !key.public_key.empty();
        const bool has_file = !key.public_key_file.empty();
        if (has_inline && has_file) {
            error(where, "set exactly one of public_key or public_key_file, not both");
        } else if (!has_inline && !has_file) {
            error(where, "set exactly one of public_key or public_key_file");
        } else if (has_inline) {
            const auto first = key.public_key.find_first_not_of(" \t\r\n");
            if (first == std::string::npos) {
                error(where + ".public_key", "is empty");
                return;
            }
            const auto last = key.public_key.find_last_not_of(" \t\r\n");
            key.public_key = key.public_key.substr(first, last - first + 1);
            if (auto valid = check_ssh_public_key(key.public_key); !valid) {
                error(where + ".public_key", valid.error().message);
            }
        } else if (reference_allowed(where + ".public_key_file")) {
            // Checked now, so that a wrong path or a wrong file is reported when the config is
            // loaded, not when a guest boots.
            if (auto problem =
                    files_.public_key_file_problem(key.public_key_file, max_small_file)) {
                error(where + ".public_key_file", *problem);
            }
        }
    }

    void check_secret(secret_config& secret, const std::string& where) {
        const std::string prefix = where + ".";
        // Checked before anything else so that an inline value is never silently accepted. Its
        // content is never quoted.
        if (secret.value && !options_.allow_values) {
            error(prefix + "value",
                  "secret values may not be written inline; use file or credential");
        } else if (secret.value && secret.value->size() > max_small_file) {
            error(prefix + "value",
                  "is too large (at most " + std::to_string(max_small_file) + " bytes)");
        }
        const bool has_file = !secret.file.empty();
        const bool has_credential = !secret.credential.empty();
        // A refused inline value is no source: it was already told to use file or credential.
        const bool inline_value = secret.value && options_.allow_values;
        const int sources = int{has_file} + int{has_credential} + int{inline_value};
        const std::string choices =
            options_.allow_values ? "value, file or credential" : "file or credential";
        if (sources > 1) {
            error(where, "set exactly one of " + choices + ", not more");
        } else if (sources == 0) {
            if (!secret.value) {
                error(where, "set exactly one of " + choices);
            }
        } else if (inline_value) {
            // Nothing to open.
        } else if (!reference_allowed(prefix + (has_file ? "file" : "credential"))) {
            // Refused before the file is opened.
        } else if (has_file) {
            if (auto problem = files_.file_problem(secret.file, false, max_small_file)) {
                error(prefix + "file", *problem);
            }
        } else if (!only_name_chars(secret.credential) || secret.credential == "." ||
                   secret.credential == "..") {
            error(prefix + "credential", "invalid credential name " + in_quotes(secret.credential) +
                                             " (a simple file name: A-Z a-z 0-9 . _ -)");
        } else if (credentials_directory_.empty()) {
            error(prefix + "credential",
                  "$CREDENTIALS_DIRECTORY is not set: credential " + in_quotes(secret.credential) +
                      " needs LoadCredential= (or SetCredential=) in the service unit");
        } else {
            secret.file = credentials_directory_ / secret.credential;
            if (auto problem = files_.file_problem(secret.file, false, max_small_file)) {
                error(prefix + "credential", *problem);
            }
        }
    }

    load_options options_;
    const file_probe& files_;
    std::filesystem::path credentials_directory_;
    std::vector<model_error> errors_;
};

}  // namespace

namespace detail {

const std::vector<std::string_view>& timeout_keys() {
    static const std::vector<std::string_view> keys = [] {
        std::vector<std::string_view> out;
        for (const auto& range : duration_ranges) {
            out.push_back(range.key);
        }
        return out;
    }();
    return keys;
}

void set_override(link_timeout_overrides& overrides, std::string_view key, milliseconds value) {
    if (const duration_range* range = find_duration_range(key)) {
        overrides.*range->override_field = value;
    }
}

}  // namespace detail

// ---- the model's rules ---------------------------------------------------------------------

std::vector<model_error> check_guest(guest_config& guest, std::string_view key_prefix,
                                     const link_timeouts& defaults, load_options options,
                                     const file_probe& files) {
    guest_checker checker(options, files);
    checker.check(guest, std::string(key_prefix), defaults);
    return checker.take_errors();
}

std::vector<model_error> check_guests(config& c, load_options options, const file_probe& files) {
    guest_checker checker(options, files);
    for (std::size_t i = 0; i < c.guests.size(); ++i) {
        checker.check(c.guests[i], "guest[" + std::to_string(i) + "].", c.daemon.timeouts);
    }
    checker.check_unique_names(c.guests);
    return checker.take_errors();
}

boost::system::result<std::uint32_t, value_error> check_secret_mode(std::int64_t mode) {
    if (mode < 0 || mode > 07777) {
        return value_error{"must be between 0 and 0o7777, got " + octal(mode)};
    }
    return static_cast<std::uint32_t>(mode);
}

link_timeouts link_timeout_overrides::resolve(const link_timeouts& defaults) const {
    link_timeouts out = defaults;
    for (const auto& range : duration_ranges) {
        if (const auto& value = this->*range.override_field) {
            out.*range.field = *value;
        }
    }
    return out;
}

// ---- single values -------------------------------------------------------------------------

boost::system::result<void, value_error> check_guest_name(std::string_view name) {
    if (name.empty() || name.size() > 64 || !only_name_chars(name)) {
        return value_error{"invalid guest name " + in_quotes(name) +
                           " (1 to 64 of A-Z a-z 0-9 . _ -)"};
    }
    return {};
}

boost::system::result<milliseconds, value_error> parse_duration(std::string_view text) {
    const auto invalid = [&] {
        return value_error{"invalid duration " + in_quotes(text) +
                           " (expected a number and a unit: ms, s, m or h, e.g. \"10s\")"};
    };
    // A week is far beyond any range we accept; the bound keeps the arithmetic from overflowing.
    constexpr std::int64_t max_ms = 7LL * 24 * 3600 * 1000;
    if (text.empty()) {
        return invalid();
    }
    std::int64_t total = 0;
    std::string_view rest = text;
    while (!rest.empty()) {
        std::size_t digits = 0;
        std::int64_t number = 0;
        while (digits < rest.size() && rest[digits] >= '0' && rest[digits] <= '9') {
            number = number * 10 + (rest[digits] - '0');
            if (number > max_ms) {
                return value_error{"duration " + in_quotes(text) + " is too large"};
            }
            ++digits;
        }
        if (digits == 0) {
            return invalid();
        }
        rest.remove_prefix(digits);
        std::int64_t unit = 0;
        if (rest.starts_with("ms")) {
            unit = 1;
            rest.remove_prefix(2);
        } else if (rest.starts_with("s")) {
            unit = 1000;
            rest.remove_prefix(1);
        } else if (rest.starts_with("m")) {
            unit = 60 * 1000;
            rest.remove_prefix(1);
        } else if (rest.starts_with("h")) {
            unit = 3600 * 1000;
            rest.remove_prefix(1);
        } else {
            return invalid();
        }
        total += number * unit;
        if (total > max_ms) {
            return value_error{"duration " + in_quotes(text) + " is too large"};
        }
    }
    if (total == 0) {
        return value_error{"duration " + in_quotes(text) + " must be greater than 0"};
    }
    return milliseconds(total);
}

std::string format_duration(milliseconds duration) {
    std::int64_t ms = duration.count();
    if (ms <= 0) {
        return std::to_string(ms) + "ms";
    }
    std::string out;
    constexpr std::array<std::pair<std::int64_t, std::string_view>, 4> units{
        {{3600 * 1000, "h"}, {60 * 1000, "m"}, {1000, "s"}, {1, "ms"}}};
    for (const auto& [size, suffix] : units) {
        if (ms >= size) {
            out += std::to_string(ms / size);
            out += suffix;
            ms %= size;
        }
    }
    return out;
}

boost::system::result<milliseconds, value_error> parse_timeout(std::string_view key,
                                                               std::string_view text) {
    auto parsed = parse_duration(text);
    if (!parsed) {
        return parsed;
    }
    if (const duration_range* range = find_duration_range(key)) {
        if (*parsed < range->min || *parsed > range->max) {
            return value_error{std::string(key) + " must be between " +
                               format_duration(range->min) + " and " + format_duration(range->max) +
                               ", got " + in_quotes(text)};
        }
    }
    return parsed;
}

}  // namespace stereos::config

// The daemon's TOML config (/etc/stereos-hostd/config.toml): a plain model with documented
// defaults and the entry points the daemon uses. Each concern has its own file: the loader that
// validates the whole file and reports every error (toml_reader), the model's rules shared with
// guests added through the API (guest_rules), the checks of the host files a guest names
// (file_checks) and the reload diff (reload_diff); their headers are included here.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/assert/source_location.hpp>
#include <boost/system/result.hpp>

#include <stereos/protocol/messages.hpp>
#include <stereos/transport/endpoint.hpp>
#include "config/guest_rules.hpp"
#include "config/input_rules.hpp"
#include "config/reload_diff.hpp"

namespace stereos::config {

using namespace std::chrono_literals;

inline constexpr std::string_view default_config_path = "/etc/stereos-hostd/config.toml";

// The config file to read: the explicit `--config` value if given, else
// $CONFIGURATION_DIRECTORY/config.toml (systemd ConfigurationDirectory=), else the default path.
std::filesystem::path choose_config_path(std::optional<std::string_view> explicit_path);

enum class log_level { trace, debug, info, notice, warning, error };
std::string_view to_string(log_level level) noexcept;
std::optional<log_level> parse_log_level(std::string_view text) noexcept;

// The timing of one guest link. The daemon's values are the defaults of every guest.
struct link_timeouts {
    std::chrono::milliseconds request_timeout = 10s;  // deadline of one request (Go client: 10 s)
    std::chrono::milliseconds connect_timeout = 2s;   // bound on one connect attempt
    std::chrono::milliseconds keepalive_interval = 15s;  // ping after this long without traffic
    std::chrono::milliseconds health_interval = 5s;      // get_health poll period
    std::chrono::milliseconds reconnect_max = 5s;        // cap of the reconnect backoff
    // How long an open connection is kept while the guest does not answer (a paused VM's
    // connection carries on after `cont`); then it is dropped and reconnected.
    std::chrono::milliseconds unresponsive_grace = 120s;
    bool operator==(const link_timeouts&) const = default;
};

// The per-guest overrides as written in the file; unset means "the daemon's value".
struct link_timeout_overrides {
    std::optional<std::chrono::milliseconds> request_timeout;
    std::optional<std::chrono::milliseconds> connect_timeout;
    std::optional<std::chrono::milliseconds> keepalive_interval;
    std::optional<std::chrono::milliseconds> health_interval;
    std::optional<std::chrono::milliseconds> reconnect_max;
    std::optional<std::chrono::milliseconds> unresponsive_grace;
    bool operator==(const link_timeout_overrides&) const = default;

    link_timeouts resolve(const link_timeouts& defaults) const;
};

struct daemon_settings {
    std::filesystem::path api_socket = "/run/stereos-hostd/api.sock";
    std::string api_group = "stereos";      // group allowed to use the API; empty = owner only
    std::string api_read_group;             // may also use GET routes; empty = api_group's rule
    std::size_t api_max_connections = 256;  // open API connections; more get 503 server_busy
    std::filesystem::path state_dir = "/var/lib/stereos-hostd";
    log_level level = log_level::info;
    // On stop under systemd, live guest connections go to its fd store for the next process.
    bool hand_over_connections = true;
    link_timeouts timeouts;
    bool operator==(const daemon_settings&) const = default;
};

// An SSH key to inject: either inline (`public_key`) or read at provisioning time from
// `public_key_file` (then `public_key` is empty). A file's content meets check_ssh_public_key
// when the config is checked and again when it is read, before it is sent.
struct ssh_key_config {
    std::string user;
    std::string public_key;
    std::filesystem::path public_key_file;
    bool operator==(const ssh_key_config&) const = default;
};

// A secret to inject. From the config file only where to read it is kept: `file` is the path to
// read at provisioning time; for a systemd credential it is $CREDENTIALS_DIRECTORY/<credential>.
// A guest added through the API may carry the value itself, kept only in memory.
struct secret_config {
    std::string name;  // the file name in the guest's secret directory
    std::filesystem::path file;
    std::string credential;  // the credential name when the secret comes from LoadCredential=
    std::uint32_t mode = 0;  // 0 = the guest's default (omitted on the wire)
    std::optional<std::string> value;  // the value given through the API; never persisted
    bool operator==(const secret_config&) const = default;
};

struct provision_config {
    std::optional<std::filesystem::path> config_file;  // jcard.toml sent with set_config
    std::optional<std::string> config_content;         // jcard.toml given through the API (a value)
    std::vector<ssh_key_config> ssh_keys;
    std::vector<secret_config> secrets;
    std::vector<protocol::mount_payload> mounts;
    bool operator==(const provision_config&) const = default;

    bool empty() const noexcept {
        return !config_file && !config_content && ssh_keys.empty() && secrets.empty() &&
               mounts.empty();
    }
};

struct guest_config {
    std::string name;
    std::string endpoint_text;  // as written in the file
    transport::endpoint endpoint;
    link_timeout_overrides overrides;  // what the file says
    link_timeouts timeouts;            // effective: override, else the daemon's value
    provision_config provision;
    bool operator==(const guest_config&) const = default;
};

struct config {
    std::string source;  // the file (or source name) it was loaded from
    daemon_settings daemon;
    std::vector<guest_config> guests;  // in file order, names unique

    const guest_config* find_guest(std::string_view name) const noexcept;
};

// Every problem found in a config, each as "<file>:<line>: <key>: <what>", in file order.
// Secret values never appear: the loader opens secret files to check them but never reads them.
struct config_errors {
    std::vector<std::string> messages;
    // Some messages are host references that load_options refused (not mere mistakes).
    bool refused_references = false;
};
[[noreturn]] void throw_exception_from_error(const config_errors& e,
                                             const boost::source_location& location);
// All messages, one a line.
std::string to_string(const config_errors& e);

using config_result = boost::system::result<config, config_errors>;

// Reads and validates a config file. Provisioning files must exist and be readable now, so that
// a bad path is reported at start-up (or reload), not when a guest boots.
config_result load_config_file(const std::filesystem::path& path);
// The same from text; `source_name` prefixes every message. For tests and fuzzing.
config_result load_config_text(std::string_view text, std::string_view source_name,
                               load_options options = {});

// A runtime guest as the API takes it: the name, the endpoint and a provision object of the
// shape of a [guest.provision] table, read and checked by the file's rules, with `defaults` as
// its timeouts. Each message is "<key>: <why>" with keys as in the request ("endpoint",
// "provision.secrets[0].name"). Secret values are copied only into the returned guest.
boost::system::result<guest_config, config_errors> read_runtime_guest(
    std::string_view name, std::string_view endpoint, const boost::json::object& provision,
    const link_timeouts& defaults, load_options options);

}  // namespace stereos::config

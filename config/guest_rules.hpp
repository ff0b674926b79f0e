// The rules about a guest's values, wherever the guest comes from (the config file, an API
// request): its name, endpoint, timings and provisioning values, and the parsing of single values
// (durations, timeouts, modes). No file system access here: the files a guest names are probed
// through a file_probe (file_checks.hpp), so these rules can be tested without touching a file.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <boost/system/result.hpp>

#include "config/file_checks.hpp"
#include "config/input_rules.hpp"

namespace stereos::config {

// The model (config.hpp), which includes this header.
struct config;
struct guest_config;
struct link_timeouts;
struct link_timeout_overrides;

// Where a config comes from decides what its provisioning may say.
struct load_options {
    // Values inline (a secret's `value`, the jcard.toml as `config`): only from the API, so
    // that the config file, which is kept on disk, never holds one.
    bool allow_values = false;
    // Host files and credentials to read (config_file, public_key_file, a secret's file or
    // credential): the config file, which only root edits, and API peers that are root or the
    // daemon's user. Refused ones are errors that do not open the file, marked in
    // config_errors::refused_references.
    bool allow_host_references = true;
};

// ---- The model's rules, shared by the file and the API (guests added at run time) ----------

// One problem in a config model, named by its key path ("guest[0].provision.secrets[1].name").
// The loader adds the file and line; the API names the key in its 400 error.
struct model_error {
    std::string key;
    std::string message;
    // For a duplicate: the key of the entry it repeats (the loader shows that entry's line).
    std::string first_key;
    // A host file or credential that load_options refused.
    bool refused_reference = false;
};

// Checks a guest as read (from the file or an API request) against every rule about its values,
// and completes it: the endpoint parsed from endpoint_text, the effective timeouts resolved
// from `defaults`, an inline public key trimmed, a credential resolved to its file under
// $CREDENTIALS_DIRECTORY. Host files are checked through `files` (opened; a public_key_file is
// also read and must hold a key: public keys are not secret, and its content is never quoted).
// Secret files are never read. Keys are `key_prefix` + the guest's keys ("guest[0]." in the file).
std::vector<model_error> check_guest(guest_config& guest, std::string_view key_prefix,
                                     const link_timeouts& defaults, load_options options,
                                     const file_probe& files = host_file_probe());

// check_guest for every guest of `c` (keys "guest[i]."), and their names unique.
std::vector<model_error> check_guests(config& c, load_options options,
                                      const file_probe& files = host_file_probe());

// ---- Single-value checks, shared with the API (guests added at run time) ------------------

// A secret file's mode as written: 0..0o7777.
boost::system::result<std::uint32_t, value_error> check_secret_mode(std::int64_t mode);

// [A-Za-z0-9._-]{1,64}
boost::system::result<void, value_error> check_guest_name(std::string_view name);

// "250ms", "10s", "5m", "1h", or a sum such as "1m30s". Must be > 0.
boost::system::result<std::chrono::milliseconds, value_error> parse_duration(std::string_view text);
// The shortest form parse_duration reads back, e.g. "1m30s", "250ms".
std::string format_duration(std::chrono::milliseconds duration);

// A duration for one of the link_timeouts keys ("request_timeout", ...), checked against that
// key's sane range (e.g. request_timeout 10ms..1h).
boost::system::result<std::chrono::milliseconds, value_error> parse_timeout(std::string_view key,
                                                                            std::string_view text);

namespace detail {

// The link timing keys ("request_timeout", ...) and how to set one in the overrides; for the
// readers (model_reader.hpp).
const std::vector<std::string_view>& timeout_keys();
void set_override(link_timeout_overrides& overrides, std::string_view key,
                  std::chrono::milliseconds value);

}  // namespace detail

}  // namespace stereos::config

// The provisioning sequence the reference host sends when a guest comes up: set_config, then
// inject_ssh_key per key, inject_secret per secret, mount per mount. Files (jcard.toml, key
// files, secrets, credentials) are read when the step runs, so rotated secrets are picked up
// on the next boot, and secret bytes read from files live only as long as the request. Values
// given through the API are held in memory by the guest's definition.
#pragma once

#include <string>
#include <vector>

#include <boost/system/result.hpp>

#include "config/config.hpp"
#include "protocol/messages.hpp"

namespace stereos::daemon {

struct provisioning_step {
    std::string name;  // for status and logs, e.g. "inject_secret ANTHROPIC_API_KEY"
    // Builds the request; may read a file. The error text names the file, never its content.
    std::function<boost::system::result<protocol::host_message, std::string>()> build;
};

std::vector<provisioning_step> provisioning_steps(const config::provision_config& provision);

// Reads a whole file; the error is "cannot read PATH: reason".
boost::system::result<std::string, std::string> read_file(const std::filesystem::path& path);

// Removes from a guest's error text any value it may echo from what we sent: the secret
// value, or values of the jcard.toml (e.g. a TOML parse error quoting a line).
std::string scrub_guest_error(std::string text, const protocol::host_message& sent);

// Overwrites secret bytes in a sent message before it is freed.
void wipe_secrets(protocol::host_message& message);

}  // namespace stereos::daemon

// A guest's provisioning as items, in the order the reference host sends them: set_config, one
// inject_ssh_key per user (all of that user's keys, one per line: stereosd rewrites the whole
// authorized_keys with each request), inject_secret per secret, mount per mount. Each item has
// the delivery ledger's key. Files (jcard.toml, key files, secrets, credentials) are read each
// time an item is built, so a rotated secret shows as a changed digest; secret bytes read from
// files live only as long as the request. Values given through the API are held in memory by
// the guest's definition.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include <boost/system/result.hpp>

#include <stereos/protocol/messages.hpp>
#include "config/config.hpp"

namespace stereos::daemon {

struct provisioning_item {
    std::string key;   // the delivery ledger's, e.g. "secret ANTHROPIC_API_KEY"
    std::string name;  // for status and logs, e.g. "inject_secret ANTHROPIC_API_KEY"
    // Builds the request; may read a file. The error text names the file, never its content.
    std::function<boost::system::result<protocol::host_message, std::string>()> build;
};

// Public keys added through the API in the current run, per user (delivery_ledger::api_keys):
// they are sent along with that user's configured keys.
using api_key_map = std::map<std::string, std::vector<std::string>, std::less<>>;

std::vector<provisioning_item> provisioning_items(const config::provision_config& provision,
                                                  const api_key_map& api_keys = {});

// One user's keys as stereosd takes them: every line checked (stereosd checks only the
// first), duplicates dropped keeping the first, one per line. The error names the bad line's
// position, never a key.
boost::system::result<std::string, std::string> join_public_keys(
    const std::vector<std::string>& keys);

// Reads a whole file; the error is "cannot read PATH: reason".
boost::system::result<std::string, std::string> read_file(const std::filesystem::path& path);

// Removes from a guest's error text any value it may echo from what we sent: the secret
// value, or values of the jcard.toml (e.g. a TOML parse error quoting a line).
std::string scrub_guest_error(std::string text, const protocol::host_message& sent);

// Overwrites secret bytes in a sent message before it is freed.
void wipe_secrets(protocol::host_message& message);

}  // namespace stereos::daemon

#include "daemon/guest/provisioning.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>  // also explicit_bzero (glibc)
#include <fstream>
#include <sstream>

#include <stereos/protocol/redact.hpp>
#include "daemon/guest/delivery_ledger.hpp"

namespace stereos::daemon {

namespace {
constexpr std::size_t shortest_scrubbed = 4;  // shorter values are too common to hide

void replace_all(std::string& text, std::string_view needle, std::string_view with) {
    if (needle.size() < shortest_scrubbed)
        return;
    for (auto pos = text.find(needle); pos != std::string::npos;
         pos = text.find(needle, pos + with.size())) {
        text.replace(pos, needle.size(), with);
    }
}

std::string trim_line_end(std::string text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r'))
        text.pop_back();
    return text;
}

// The right-hand sides of `key = value` lines, unquoted: the parts of a jcard.toml that may be
// secret.
std::vector<std::string> toml_values(std::string_view content) {
    std::vector<std::string> values;
    std::istringstream lines{std::string(content)};
    std::string line;
    while (std::getline(lines, line)) {
        const auto eq = line.find('=');
        if (eq == std::string::npos)
            continue;
        std::string value = line.substr(eq + 1);
        const auto first = value.find_first_not_of(" \t\"'");
        const auto last = value.find_last_not_of(" \t\r\"',");
        if (first == std::string::npos || last < first)
            continue;
        values.push_back(value.substr(first, last - first + 1));
    }
    return values;
}
}  // namespace

boost::system::result<std::string, std::string> read_file(const std::filesystem::path& path) {
    using result = boost::system::result<std::string, std::string>;
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        return result(boost::system::in_place_error,
                      "cannot read " + path.string() + ": " + std::strerror(errno));
    }
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) {
        return result(boost::system::in_place_error,
                      "cannot read " + path.string() + ": read error");
    }
    return result(boost::system::in_place_value, text.str());
}

boost::system::result<std::string, std::string> join_public_keys(
    const std::vector<std::string>& keys) {
    using result = boost::system::result<std::string, std::string>;
    std::vector<std::string> lines;
    std::size_t position = 0;
    for (const auto& key : keys) {
        std::istringstream split(key);
        std::string line;
        while (std::getline(split, line)) {
            line = trim_line_end(std::move(line));
            if (line.empty())
                continue;
            ++position;
            if (auto checked = config::check_ssh_public_key(line); !checked) {
                return result(boost::system::in_place_error,
                              "key " + std::to_string(position) + ": " + checked.error().message);
            }
            if (std::find(lines.begin(), lines.end(), line) == lines.end())
                lines.push_back(std::move(line));
        }
    }
    std::string joined;
    for (const auto& line : lines) {
        if (!joined.empty())
            joined += '\n';
        joined += line;
    }
    return result(boost::system::in_place_value, std::move(joined));
}

std::vector<provisioning_item> provisioning_items(const config::provision_config& provision,
                                                  const api_key_map& api_keys) {
    std::vector<provisioning_item> items;
    using built = boost::system::result<protocol::host_message, std::string>;
    if (provision.config_content) {
        items.push_back(
            {config_item_key(), "set_config", [content = *provision.config_content]() -> built {
                 return protocol::host_message{protocol::config_payload{content}};
             }});
    } else if (provision.config_file) {
        items.push_back(
            {config_item_key(), "set_config", [path = *provision.config_file]() -> built {
                 auto content = read_file(path);
                 if (!content)
                     return content.error();
                 return protocol::host_message{protocol::config_payload{std::move(*content)}};
             }});
    }
    // Users in the order they first appear, then those with keys from the API only.
    std::vector<std::string> users;
    for (const auto& key : provision.ssh_keys) {
        if (std::find(users.begin(), users.end(), key.user) == users.end())
            users.push_back(key.user);
    }
    for (const auto& [user, keys] : api_keys) {
        if (std::find(users.begin(), users.end(), user) == users.end())
            users.push_back(user);
    }
    for (const auto& user : users) {
        std::vector<config::ssh_key_config> configured;
        for (const auto& key : provision.ssh_keys) {
            if (key.user == user)
                configured.push_back(key);
        }
        std::vector<std::string> added;
        if (auto it = api_keys.find(user); it != api_keys.end())
            added = it->second;
        items.push_back(
            {ssh_keys_item_key(user), "inject_ssh_key " + user,
             [user, configured = std::move(configured), added = std::move(added)]() -> built {
                 std::vector<std::string> keys;
                 for (const auto& key : configured) {
                     if (key.public_key_file.empty()) {
                         keys.push_back(key.public_key);
                         continue;
                     }
                     auto text = read_file(key.public_key_file);
                     if (!text)
                         return text.error();
                     // The file may have changed since the config was loaded. Its content is
                     // never quoted: a wrong path may name a secret.
                     auto line = trim_line_end(std::move(*text));
                     if (!config::check_ssh_public_key(line)) {
                         return key.public_key_file.string() +
                                ": does not hold one SSH public key line (content not shown)";
                     }
                     keys.push_back(std::move(line));
                 }
                 keys.insert(keys.end(), added.begin(), added.end());
                 auto joined = join_public_keys(keys);
                 if (!joined)
                     return "keys for " + user + ": " + joined.error();
                 return protocol::host_message{protocol::ssh_key_payload{user, std::move(*joined)}};
             }});
    }
    for (const auto& secret : provision.secrets) {
        items.push_back(
            {secret_item_key(secret.name), "inject_secret " + secret.name, [secret]() -> built {
                 if (secret.value) {
                     return protocol::host_message{
                         protocol::secret_payload{secret.name, *secret.value, secret.mode}};
                 }
                 auto value = read_file(secret.file);
                 if (!value)
                     return value.error();
                 return protocol::host_message{
                     protocol::secret_payload{secret.name, std::move(*value), secret.mode}};
             }});
    }
    for (const auto& mount : provision.mounts) {
        items.push_back({mount_item_key(mount.guest_path), "mount " + mount.tag,
                         [mount]() -> built { return protocol::host_message{mount}; }});
    }
    return items;
}

std::string scrub_guest_error(std::string text, const protocol::host_message& sent) {
    if (const auto* secret = std::get_if<protocol::secret_payload>(&sent)) {
        replace_all(text, secret->value, protocol::redaction_marker(secret->value.size()));
        replace_all(text, trim_line_end(secret->value),
                    protocol::redaction_marker(secret->value.size()));
    } else if (const auto* config = std::get_if<protocol::config_payload>(&sent)) {
        for (const auto& value : toml_values(config->content)) {
            replace_all(text, value, "<redacted>");
        }
    }
    return text;
}

void wipe_secrets(protocol::host_message& message) {
    auto wipe = [](std::string& s) {
        if (!s.empty())
            explicit_bzero(s.data(), s.size());
        s.clear();
    };
    if (auto* secret = std::get_if<protocol::secret_payload>(&message))
        wipe(secret->value);
    if (auto* config = std::get_if<protocol::config_payload>(&message))
        wipe(config->content);
}

}  // namespace stereos::daemon

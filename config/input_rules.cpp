#include "config/input_rules.hpp"

#include <array>
#include <stdexcept>

#include <boost/throw_exception.hpp>

namespace stereos::config {

namespace {

constexpr std::string_view name_chars =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";

std::string in_quotes(std::string_view text) {
    std::string out = "\"";
    out += text;
    out += '"';
    return out;
}

// The directories stereosd refuses as mount points, and everything under them.
constexpr std::array<std::string_view, 8> refused_mount_roots{"/nix", "/etc",  "/bin", "/boot",
                                                              "/dev", "/proc", "/sys", "/run"};

// The key types stereosd recognises (OpenSSH's plain and FIDO keys; no certificates).
constexpr std::array<std::string_view, 8> ssh_key_types{
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
};

// A bounded, printable excerpt of what was given, for messages about non-secret fields.
std::string excerpt(std::string_view text) {
    std::string out;
    for (char c : text.substr(0, 64)) {
        const auto byte = static_cast<unsigned char>(c);
        out += byte >= 0x20 && byte < 0x7f ? c : '?';
    }
    if (text.size() > 64)
        out += "...";
    return in_quotes(out);
}

}  // namespace

void throw_exception_from_error(const value_error& e, const boost::source_location& location) {
    boost::throw_exception(std::invalid_argument(e.message), location);
}

rule_result check_secret_name(std::string_view name) {
    if (name.empty() || name.size() > 255 || name.find_first_not_of(name_chars) != name.npos ||
        name == "." || name.find("..") != name.npos) {
        return value_error{"invalid secret name " + excerpt(name) +
                           " (a simple file name: 1 to 255 of A-Z a-z 0-9 . _ -, no \"..\")"};
    }
    return {};
}

rule_result check_mount_guest_path(std::string_view path) {
    if (path.empty() || path.front() != '/')
        return value_error{"must be an absolute path, got " + excerpt(path)};
    // Compared component by component, so "//etc/" and "/etc/x" are both under /etc.
    std::string normal;
    std::string_view rest = path;
    while (!rest.empty()) {
        const auto slash = rest.find('/');
        const auto part = rest.substr(0, slash);
        if (part == "." || part == "..")
            return value_error{"must not contain \".\" or \"..\" components, got " + excerpt(path)};
        if (!part.empty()) {
            normal += '/';
            normal += part;
        }
        if (slash == std::string_view::npos)
            break;
        rest.remove_prefix(slash + 1);
    }
    if (normal.empty())
        return value_error{"the guest refuses to mount over \"/\""};
    for (auto root : refused_mount_roots) {
        if (normal == root || (normal.starts_with(root) && normal[root.size()] == '/')) {
            return value_error{"the guest refuses mounts at or under " + in_quotes(root) +
                               ", got " + excerpt(path)};
        }
    }
    return {};
}

rule_result check_fs_type(std::string_view fs_type) {
    if (fs_type != "9p" && fs_type != "virtiofs") {
        return value_error{"unknown file system type " + excerpt(fs_type) +
                           " (expected 9p or virtiofs)"};
    }
    return {};
}

rule_result check_ssh_public_key(std::string_view key) {
    const auto first = key.find_first_not_of(" \t\r\n");
    if (first == key.npos)
        return value_error{"is empty"};
    key = key.substr(first, key.find_last_not_of(" \t\r\n") - first + 1);
    if (key.find_first_of("\r\n") != key.npos)
        return value_error{"must be a single line"};
    const auto space = key.find(' ');
    const auto type = key.substr(0, space);
    bool known = false;
    for (auto t : ssh_key_types)
        known = known || type == t;
    if (!known) {
        return value_error{
            "does not start with a known SSH key type (such as ssh-ed25519, "
            "ssh-rsa or ecdsa-sha2-nistp256), got " +
            excerpt(type)};
    }
    if (space == key.npos || key.find_first_not_of(' ', space) == key.npos)
        return value_error{"has a key type but no key data"};
    return {};
}

boost::system::result<transport::endpoint, value_error> check_endpoint(std::string_view text) {
    auto parsed = transport::parse_endpoint(text);
    if (!parsed)
        return value_error{parsed.error().message};
    const std::string* path = nullptr;
    if (auto* u = std::get_if<transport::unix_endpoint>(&*parsed))
        path = &u->path;
    if (auto* h = std::get_if<transport::hybrid_vsock_endpoint>(&*parsed))
        path = &h->path;
    if (path && !path->starts_with('/')) {
        return value_error{excerpt(text) +
                           ": the socket path must be absolute (the daemon's working directory is "
                           "not the caller's)"};
    }
    return *parsed;
}

std::vector<std::string> provision_rule_violations(const boost::json::object& provision) {
    std::vector<std::string> problems;
    // Calls `check` on obj[key] of every object in provision[list], when it is a string.
    auto each = [&](std::string_view list, std::string_view key, auto check) {
        const auto* items = provision.if_contains(list);
        if (!items || !items->is_array())
            return;
        for (std::size_t i = 0; i < items->get_array().size(); ++i) {
            const auto& item = items->get_array()[i];
            const auto* value = item.is_object() ? item.get_object().if_contains(key) : nullptr;
            if (!value || !value->is_string())
                continue;
            if (auto ok = check(value->get_string()); !ok) {
                problems.push_back("provision." + std::string(list) + "[" + std::to_string(i) +
                                   "]." + std::string(key) + ": " + ok.error().message);
            }
        }
    };
    each("secrets", "name", [](std::string_view v) { return check_secret_name(v); });
    each("mounts", "guest_path", [](std::string_view v) { return check_mount_guest_path(v); });
    each("mounts", "fs_type", [](std::string_view v) { return check_fs_type(v); });
    each("ssh_keys", "public_key", [](std::string_view v) { return check_ssh_public_key(v); });
    return problems;
}

}  // namespace stereos::config

// The guest's own input rules, checked on the host before anything is sent: by the config loader
// (with file:line), by the API (400 naming the field) and by stereosctl (before calling the
// daemon). Each check returns why a value is refused, without the field's name: callers add it.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <boost/json/object.hpp>
#include <boost/system/result.hpp>

#include <stereos/transport/endpoint.hpp>

namespace stereos::config {

// Why one value is not acceptable, without file or line (the caller adds its own context).
struct value_error {
    std::string message;
};
[[noreturn]] void throw_exception_from_error(const value_error& e,
                                             const boost::source_location& location);

using rule_result = boost::system::result<void, value_error>;

// A file name in the guest's secret directory: 1 to 255 of A-Z a-z 0-9 . _ -, no "..".
rule_result check_secret_name(std::string_view name);

// Absolute, without "." or ".." components, and neither "/" nor at or under a directory the
// guest refuses to mount over (/nix, /etc, /bin, /boot, /dev, /proc, /sys, /run).
rule_result check_mount_guest_path(std::string_view path);

// "9p" or "virtiofs".
rule_result check_fs_type(std::string_view fs_type);

// One line: a key type stereosd recognises, then the key data ("ssh-ed25519 AAAA...").
rule_result check_ssh_public_key(std::string_view key);

// A guest's endpoint: parse_endpoint's syntax, and unix/hybrid socket paths must be absolute (the
// daemon's working directory is "/" under systemd, not the caller's).
boost::system::result<transport::endpoint, value_error> check_endpoint(std::string_view text);

// The rules above applied to a provision object as the API takes it (the shape of a
// [guest.provision] table). Each problem is "provision.<field>: <why>"; other shape errors are
// left to the loader. For stereosctl, which checks a --provision file before sending it.
std::vector<std::string> provision_rule_violations(const boost::json::object& provision);

}  // namespace stereos::config

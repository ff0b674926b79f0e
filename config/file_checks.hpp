// The checks of a config that touch the host: whether a file a guest's provisioning names (its
// jcard.toml, a public key file, a secret's file or credential) can be read now, so that a wrong
// path is reported when the config is loaded, not when a guest boots. The guest rules
// (guest_rules.hpp) ask through file_probe, so that they can be tested without touching a file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace stereos::config {

class file_probe {
  public:
    virtual ~file_probe() = default;

    // Why `path` cannot be read at provisioning time (not absolute, cannot be opened, not a
    // regular file, empty when it must not be, larger than `max_size`), or nothing. The file is
    // opened but never read: secret files' bytes must not end up in any message.
    virtual std::optional<std::string> file_problem(const std::filesystem::path& path,
                                                    bool must_be_non_empty,
                                                    std::uintmax_t max_size) const = 0;

    // file_problem's checks (non-empty), then the file must hold one SSH public key. Its content
    // is never quoted: a wrong path may name a secret.
    virtual std::optional<std::string> public_key_file_problem(const std::filesystem::path& path,
                                                               std::uintmax_t max_size) const = 0;

    // $CREDENTIALS_DIRECTORY (systemd LoadCredential=), empty when it is not set.
    virtual std::filesystem::path credentials_directory() const = 0;
};

// The probe of this host's files and environment.
const file_probe& host_file_probe();

}  // namespace stereos::config

// The key that seals runtime guests' values in the state directory: the systemd credential
// stereos-hostd.seal-key (LoadCredentialEncrypted=, made by make-seal-key), read once at start.
// Without it the values stay in memory only, as the returned reason says.
#pragma once

#include <filesystem>
#include <string_view>

#include "daemon/guest/value_seal.hpp"

namespace stereos::daemon {

inline constexpr std::string_view seal_key_credential = "stereos-hostd.seal-key";

// `credentials_directory`: $CREDENTIALS_DIRECTORY, null when it is not set. The key must be
// exactly 32 bytes; the reason for anything else never shows its bytes.
values_at_rest load_seal_key(const char* credentials_directory);

}  // namespace stereos::daemon

// Keyed digests of provisioning items (libsodium's BLAKE2b with a 32-byte key). The ledger and
// the API show digests, never values; a key that stays in the state directory means that an API
// reader who sees a digest cannot test guesses of a short secret against it.
#pragma once

#include <array>
#include <filesystem>
#include <string>
#include <string_view>

#include <boost/system/result.hpp>

namespace stereos::daemon {

class item_digest {
  public:
    static constexpr std::size_t key_size = 32;
    using key_type = std::array<unsigned char, key_size>;

    explicit item_digest(const key_type& key) : key_(key) {}
    // A random key, for a daemon without a usable state directory: digests then hold for this
    // process only.
    static item_digest with_random_key();
    // Reads the key at `path`, or makes one there (mode 0600) if there is none. The error says
    // what failed; the key itself is never shown.
    static boost::system::result<item_digest, std::string> load_or_create(
        const std::filesystem::path& path);

    // 32 bytes as 64 lowercase hex digits.
    std::string of(std::string_view bytes) const;

  private:
    key_type key_;
};

}  // namespace stereos::daemon

// Runtime guests' provisioning values sealed for the state directory, so a daemon restart keeps
// them without a plaintext copy on disk. libsodium's XChaCha20-Poly1305 (IETF) with a random
// nonce per value; the additional data binds each sealed value to its guest and slot, so a value
// moved to another guest or slot does not open. Pure: the key is handed in, nothing is read or
// written here (seal_key.hpp loads the key).
#pragma once

#include <array>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <boost/system/result.hpp>

namespace stereos::daemon {

class value_seal {
  public:
    static constexpr std::size_t key_size = 32;
    using key_type = std::array<unsigned char, key_size>;

    explicit value_seal(const key_type& key);
    ~value_seal();  // wipes its copy of the key
    value_seal(const value_seal&) = delete;
    value_seal& operator=(const value_seal&) = delete;

    // Names the key without revealing it (a keyed BLAKE2b of a fixed label, 32 hex digits), so
    // values sealed with another key are told from tampered ones.
    const std::string& key_id() const noexcept { return key_id_; }

    // base64 of nonce || ciphertext || tag.
    std::string seal(std::string_view guest, std::string_view slot,
                     std::string_view plaintext) const;

    enum class open_error {
        malformed,      // not base64, or too short to hold a nonce and a tag
        not_authentic,  // tampered with, or sealed for another guest, slot or key
    };
    boost::system::result<std::string, open_error> open(std::string_view guest,
                                                        std::string_view slot,
                                                        std::string_view sealed) const;

  private:
    key_type key_;
    std::string key_id_;
};

// One guest's sealed values as the state directory keeps them: the id of the key that sealed
// them and, per slot ("config", "secret API_KEY"), the sealed text.
struct sealed_values {
    std::string key_id;
    std::map<std::string, std::string, std::less<>> slots;
    bool empty() const noexcept { return slots.empty(); }
    bool operator==(const sealed_values&) const = default;
};

// Seals every (slot, plaintext) of `guest`.
sealed_values seal_all(const value_seal& seal, std::string_view guest,
                       const std::vector<std::pair<std::string, std::string>>& values);

// What could be opened of a guest's sealed values: the plaintexts by slot, and for each slot
// that could not be opened, why (never the value).
struct opened_values {
    std::map<std::string, std::string, std::less<>> values;
    std::map<std::string, std::string, std::less<>> failures;
    ~opened_values();  // wipes the plaintexts
};
opened_values open_all(const value_seal& seal, std::string_view guest, const sealed_values& sealed);

// Overwrites a plaintext temporary before it is released.
void wipe(std::string& text) noexcept;

// How the daemon keeps runtime guests' values: sealed in the state directory with `seal`, or in
// memory only (`seal` null), `reason` saying why.
struct values_at_rest {
    std::shared_ptr<const value_seal> seal;
    std::string reason;
};

}  // namespace stereos::daemon

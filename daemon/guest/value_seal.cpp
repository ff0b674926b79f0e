#include "daemon/guest/value_seal.hpp"

#include <sodium.h>

#include <stdexcept>

namespace stereos::daemon {

namespace {
using aead_nonce = std::array<unsigned char, crypto_aead_xchacha20poly1305_ietf_NPUBBYTES>;
static_assert(value_seal::key_size == crypto_aead_xchacha20poly1305_ietf_KEYBYTES);
constexpr std::size_t tag_size = crypto_aead_xchacha20poly1305_ietf_ABYTES;
constexpr int base64_variant = sodium_base64_VARIANT_ORIGINAL;

// The fixed label whose keyed hash names the key. A new label would be a new key format.
constexpr std::string_view key_id_label = "stereos-hostd value seal key id v1";
// Prefixes the additional data, so a value sealed here cannot pass for another use of the key.
constexpr std::string_view context = "stereos-hostd sealed value v1";

const unsigned char* bytes(std::string_view text) {
    return reinterpret_cast<const unsigned char*>(text.data());
}

// Length-prefixed parts: no guest and slot pair reads as another.
std::string additional_data(std::string_view guest, std::string_view slot) {
    std::string ad(context);
    for (const auto part : {guest, slot}) {
        ad += '\n';
        ad += std::to_string(part.size());
        ad += ':';
        ad += part;
    }
    return ad;
}
}  // namespace

value_seal::value_seal(const key_type& key) : key_(key) {
    if (sodium_init() < 0)
        throw std::runtime_error("libsodium cannot be initialised");
    std::array<unsigned char, 16> id{};
    crypto_generichash(id.data(), id.size(), bytes(key_id_label), key_id_label.size(), key_.data(),
                       key_.size());
    std::string hex(id.size() * 2 + 1, '\0');
    sodium_bin2hex(hex.data(), hex.size(), id.data(), id.size());
    hex.pop_back();
    key_id_ = std::move(hex);
}

value_seal::~value_seal() {
    sodium_memzero(key_.data(), key_.size());
}

std::string value_seal::seal(std::string_view guest, std::string_view slot,
                             std::string_view plaintext) const {
    const auto ad = additional_data(guest, slot);
    std::string box(sizeof(aead_nonce) + plaintext.size() + tag_size, '\0');
    auto* out = reinterpret_cast<unsigned char*>(box.data());
    randombytes_buf(out, sizeof(aead_nonce));
    unsigned long long written = 0;
    crypto_aead_xchacha20poly1305_ietf_encrypt(out + sizeof(aead_nonce), &written, bytes(plaintext),
                                               plaintext.size(), bytes(ad), ad.size(), nullptr, out,
                                               key_.data());
    std::string text(sodium_base64_ENCODED_LEN(box.size(), base64_variant), '\0');
    sodium_bin2base64(text.data(), text.size(), out, box.size(), base64_variant);
    text.resize(text.size() - 1);  // the terminating NUL
    return text;
}

boost::system::result<std::string, value_seal::open_error> value_seal::open(
    std::string_view guest, std::string_view slot, std::string_view sealed) const {
    using result = boost::system::result<std::string, open_error>;
    std::string box(sealed.size() / 4 * 3 + 3, '\0');
    std::size_t box_size = 0;
    if (sodium_base642bin(reinterpret_cast<unsigned char*>(box.data()), box.size(), sealed.data(),
                          sealed.size(), nullptr, &box_size, nullptr, base64_variant) != 0 ||
        box_size < sizeof(aead_nonce) + tag_size)
        return result(boost::system::in_place_error, open_error::malformed);
    const auto ad = additional_data(guest, slot);
    const auto* in = reinterpret_cast<const unsigned char*>(box.data());
    std::string plaintext(box_size - sizeof(aead_nonce) - tag_size, '\0');
    unsigned long long opened = 0;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(
            reinterpret_cast<unsigned char*>(plaintext.data()), &opened, nullptr,
            in + sizeof(aead_nonce), box_size - sizeof(aead_nonce), bytes(ad), ad.size(), in,
            key_.data()) != 0) {
        wipe(plaintext);
        return result(boost::system::in_place_error, open_error::not_authentic);
    }
    return result(boost::system::in_place_value, std::move(plaintext));
}

sealed_values seal_all(const value_seal& seal, std::string_view guest,
                       const std::vector<std::pair<std::string, std::string>>& values) {
    sealed_values sealed{seal.key_id(), {}};
    for (const auto& [slot, plaintext] : values)
        sealed.slots[slot] = seal.seal(guest, slot, plaintext);
    return sealed;
}

opened_values open_all(const value_seal& seal, std::string_view guest,
                       const sealed_values& sealed) {
    opened_values out;
    for (const auto& [slot, text] : sealed.slots) {
        if (sealed.key_id != seal.key_id()) {
            out.failures[slot] = "sealed with another key (key id " + sealed.key_id +
                                 ", this daemon's is " + seal.key_id() + ")";
            continue;
        }
        auto opened = seal.open(guest, slot, text);
        if (opened) {
            out.values[slot] = std::move(*opened);
        } else if (opened.error() == value_seal::open_error::malformed) {
            out.failures[slot] = "its sealed text is malformed";
        } else {
            out.failures[slot] =
                "does not open with this key (altered, or sealed for another guest or slot)";
        }
    }
    return out;
}

opened_values::~opened_values() {
    for (auto& [slot, value] : values)
        wipe(value);
}

void wipe(std::string& text) noexcept {
    sodium_memzero(text.data(), text.size());
}

}  // namespace stereos::daemon

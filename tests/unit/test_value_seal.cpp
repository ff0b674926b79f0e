// value_seal: a sealed value opens only with the same key, for the same guest and slot, and
// unaltered; a different key is named as such.
#include <boost/test/unit_test.hpp>

#include "daemon/guest/value_seal.hpp"

using stereos::daemon::open_all;
using stereos::daemon::seal_all;
using stereos::daemon::sealed_values;
using stereos::daemon::value_seal;

namespace {
value_seal::key_type key_of(unsigned char fill) {
    value_seal::key_type key{};
    key.fill(fill);
    key[0] = 0x5a;
    return key;
}

const std::string secret_text = R"({"name":"API_KEY","value":"sk-very-secret-value"})";

// Flips one bit of the decoded box by re-encoding: base64 text with one character changed
// decodes to different bytes (the last characters may only carry padding bits, so change one in
// the middle).
std::string altered(std::string sealed) {
    auto& c = sealed[sealed.size() / 2];
    c = c == 'A' ? 'B' : 'A';
    return sealed;
}
}  // namespace

BOOST_AUTO_TEST_SUITE(value_sealing)

BOOST_AUTO_TEST_CASE(a_sealed_value_opens_to_the_same_bytes) {
    const value_seal seal(key_of(1));
    const std::string binary("a\0b\xff\n", 5);
    for (const auto& plaintext : {secret_text, std::string(), binary, std::string(100000, 'x')}) {
        const auto sealed = seal.seal("vm1", "secret API_KEY", plaintext);
        auto opened = seal.open("vm1", "secret API_KEY", sealed);
        BOOST_TEST_REQUIRE(opened.has_value());
        BOOST_TEST(*opened == plaintext);
    }
}

BOOST_AUTO_TEST_CASE(the_sealed_text_holds_no_plaintext_and_differs_each_time) {
    const value_seal seal(key_of(1));
    const auto first = seal.seal("vm1", "secret API_KEY", secret_text);
    const auto second = seal.seal("vm1", "secret API_KEY", secret_text);
    BOOST_TEST(first != second, "a nonce was reused");
    BOOST_TEST(first.find("secret") == std::string::npos);
    BOOST_TEST(first.find("sk-very") == std::string::npos);
    // base64 of a 24-byte nonce, the text and a 16-byte tag.
    BOOST_TEST(first.size() == (24 + secret_text.size() + 16 + 2) / 3 * 4);
}

BOOST_AUTO_TEST_CASE(another_key_does_not_open_it) {
    const value_seal seal(key_of(1));
    const value_seal other(key_of(2));
    const auto sealed = seal.seal("vm1", "config", "mixtape = \"base\"\n");
    auto opened = other.open("vm1", "config", sealed);
    BOOST_TEST_REQUIRE(!opened.has_value());
    BOOST_TEST((opened.error() == value_seal::open_error::not_authentic));
}

BOOST_AUTO_TEST_CASE(an_altered_sealed_text_does_not_open) {
    const value_seal seal(key_of(1));
    const auto sealed = seal.seal("vm1", "secret API_KEY", secret_text);
    auto opened = seal.open("vm1", "secret API_KEY", altered(sealed));
    BOOST_TEST_REQUIRE(!opened.has_value());
    BOOST_TEST((opened.error() == value_seal::open_error::not_authentic));
    // Cut short, or not base64 at all.
    for (const auto& bad : {sealed.substr(0, 20), std::string("not base64!"), std::string()}) {
        auto refused = seal.open("vm1", "secret API_KEY", bad);
        BOOST_TEST_REQUIRE(!refused.has_value(), bad);
        BOOST_TEST((refused.error() == value_seal::open_error::malformed), bad);
    }
}

BOOST_AUTO_TEST_CASE(a_value_moved_to_another_guest_or_slot_does_not_open) {
    const value_seal seal(key_of(1));
    const auto sealed = seal.seal("vm1", "secret API_KEY", secret_text);
    BOOST_TEST(!seal.open("vm2", "secret API_KEY", sealed).has_value());
    BOOST_TEST(!seal.open("vm1", "secret OTHER", sealed).has_value());
    BOOST_TEST(!seal.open("vm1", "config", sealed).has_value());
    // The parts are length-prefixed: moving a character from the guest to the slot is another
    // binding.
    const auto joined = seal.seal("vm1s", "ecret API_KEY", secret_text);
    BOOST_TEST(!seal.open("vm1", "secret API_KEY", joined).has_value());
    BOOST_TEST(seal.open("vm1", "secret API_KEY", sealed).has_value());
}

BOOST_AUTO_TEST_CASE(the_key_id_names_the_key_without_showing_it) {
    const value_seal seal(key_of(1));
    const value_seal same(key_of(1));
    const value_seal other(key_of(2));
    BOOST_TEST(seal.key_id() == same.key_id());
    BOOST_TEST(seal.key_id() != other.key_id());
    BOOST_TEST(seal.key_id().size() == 32u);
    BOOST_TEST(seal.key_id().find_first_not_of("0123456789abcdef") == std::string::npos);
    // Not the key in hex.
    BOOST_TEST(seal.key_id().find("5a01") == std::string::npos);
}

BOOST_AUTO_TEST_CASE(open_all_names_another_key_apart_from_tampering) {
    const value_seal seal(key_of(1));
    const value_seal other(key_of(2));
    auto sealed = seal_all(seal, "vm1", {{"config", "\"jcard\""}, {"secret K", secret_text}});
    BOOST_TEST(sealed.key_id == seal.key_id());
    BOOST_TEST(sealed.slots.size() == 2u);

    auto opened = open_all(seal, "vm1", sealed);
    BOOST_TEST(opened.failures.empty());
    BOOST_TEST(opened.values.at("config") == "\"jcard\"");
    BOOST_TEST(opened.values.at("secret K") == secret_text);

    auto with_other = open_all(other, "vm1", sealed);
    BOOST_TEST(with_other.values.empty());
    BOOST_TEST_REQUIRE(with_other.failures.size() == 2u);
    BOOST_TEST(with_other.failures.at("config").find("another key") != std::string::npos);
    BOOST_TEST(with_other.failures.at("config").find(other.key_id()) != std::string::npos);

    // The key id says "this key", but the text was altered: tampering, not another key.
    sealed.slots["secret K"] = altered(sealed.slots["secret K"]);
    auto tampered = open_all(seal, "vm1", sealed);
    BOOST_TEST(tampered.values.size() == 1u);
    BOOST_TEST_REQUIRE(tampered.failures.size() == 1u);
    BOOST_TEST(tampered.failures.at("secret K").find("does not open") != std::string::npos);
    BOOST_TEST(tampered.failures.at("secret K").find("sk-very") == std::string::npos);

    // A key id that is not this key's, on a text this key sealed: refused by the id alone.
    sealed_values relabelled = seal_all(seal, "vm1", {{"config", "\"jcard\""}});
    relabelled.key_id = other.key_id();
    auto mismatch = open_all(seal, "vm1", relabelled);
    BOOST_TEST(mismatch.values.empty());
    BOOST_TEST(mismatch.failures.at("config").find("another key") != std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()

// Provisioning steps, secret scrubbing and the per-guest log throttle: pure helpers of the
// daemon core.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <boost/test/unit_test.hpp>

#include "daemon/guest/delivery_ledger.hpp"
#include "daemon/guest/provisioning.hpp"
#include "daemon/log_throttle.hpp"

using namespace stereos;
using namespace std::chrono_literals;

namespace {
struct temp_file {
    explicit temp_file(const std::string& content) {
        std::string pattern = "/tmp/stereos-prov-XXXXXX";
        const int fd = ::mkstemp(pattern.data());
        ::close(fd);
        path = pattern;
        std::ofstream(path) << content;
    }
    ~temp_file() { std::filesystem::remove(path); }
    std::filesystem::path path;
};
}  // namespace

BOOST_AUTO_TEST_SUITE(provisioning_sequence)

BOOST_AUTO_TEST_CASE(values_given_through_the_api_are_sent_without_reading_any_file) {
    config::provision_config p;
    p.config_content = "mixtape = \"inline\"\n";
    p.secrets = {{"API_KEY", {}, "", 0600, "in-memory-value"}};
    auto steps = daemon::provisioning_items(p);
    BOOST_TEST_REQUIRE(steps.size() == 2u);
    auto config = steps[0].build();
    BOOST_TEST_REQUIRE(config.has_value());
    BOOST_TEST(std::get<protocol::config_payload>(*config).content == "mixtape = \"inline\"\n");
    auto sent = steps[1].build();
    BOOST_TEST_REQUIRE(sent.has_value());
    BOOST_TEST((std::get<protocol::secret_payload>(*sent) ==
                protocol::secret_payload{"API_KEY", "in-memory-value", 0600}));
}

BOOST_AUTO_TEST_CASE(a_key_file_that_is_not_a_public_key_fails_its_step_before_sending) {
    temp_file not_a_key("-----BEGIN OPENSSH PRIVATE KEY-----\n");
    config::provision_config p;
    p.ssh_keys = {{"admin", "", not_a_key.path}};
    auto steps = daemon::provisioning_items(p);
    BOOST_TEST_REQUIRE(steps.size() == 1u);
    auto built = steps[0].build();
    BOOST_TEST_REQUIRE(built.has_error());
    BOOST_TEST(built.error().find("does not hold one SSH public key line") != std::string::npos,
               built.error());
    BOOST_TEST(built.error().find(not_a_key.path.string()) != std::string::npos, built.error());
}

BOOST_AUTO_TEST_CASE(a_key_file_holding_a_secret_is_refused_without_quoting_it) {
    temp_file token("ghp_TopSecretTokenValue123\n");
    config::provision_config p;
    p.ssh_keys = {{"admin", "", token.path}};
    auto steps = daemon::provisioning_items(p);
    BOOST_TEST_REQUIRE(steps.size() == 1u);
    auto built = steps[0].build();
    BOOST_TEST_REQUIRE(built.has_error());
    BOOST_TEST(built.error().find("TopSecret") == std::string::npos, built.error());
}

BOOST_AUTO_TEST_CASE(items_follow_the_reference_host_order) {
    temp_file jcard("mixtape = \"base\"\n");
    temp_file key("ssh-ed25519 AAAAkey user@host\n");
    temp_file secret("hunter2");
    config::provision_config p;
    p.config_file = jcard.path;
    p.ssh_keys = {{"admin", "ssh-ed25519 AAAAinline", {}}, {"root", "", key.path}};
    p.secrets = {{"API_KEY", secret.path, "", 0600, std::nullopt}};
    p.mounts = {{"share0", "/w", "9p", false}};
    auto steps = daemon::provisioning_items(p);
    std::vector<std::string> names;
    names.reserve(steps.size());
    for (const auto& s : steps)
        names.push_back(s.name);
    BOOST_TEST(names == (std::vector<std::string>{"set_config", "inject_ssh_key admin",
                                                  "inject_ssh_key root", "inject_secret API_KEY",
                                                  "mount share0"}),
               boost::test_tools::per_element());

    auto config = steps[0].build();
    BOOST_TEST_REQUIRE(config.has_value());
    BOOST_TEST(std::get<protocol::config_payload>(*config).content == "mixtape = \"base\"\n");
    // A key file's trailing newline is not part of the key.
    auto from_file = steps[2].build();
    BOOST_TEST(std::get<protocol::ssh_key_payload>(*from_file).public_key ==
               "ssh-ed25519 AAAAkey user@host");
    auto s = steps[3].build();
    BOOST_TEST((std::get<protocol::secret_payload>(*s) ==
                protocol::secret_payload{"API_KEY", "hunter2", 0600}));
}

// stereosd rewrites a user's authorized_keys with each request: all of a user's keys go in one
// request, one per line, duplicates once, keys added through the API included.
BOOST_AUTO_TEST_CASE(all_of_a_users_keys_go_in_one_request) {
    temp_file key("ssh-ed25519 AAAAfile admin@laptop\n");
    config::provision_config p;
    p.ssh_keys = {{"admin", "ssh-ed25519 AAAAfirst admin@desk", {}},
                  {"root", "ssh-rsa AAAAroot root@host", {}},
                  {"admin", "", key.path},
                  {"admin", "ssh-ed25519 AAAAfirst admin@desk", {}}};
    const daemon::api_key_map api_keys{{"admin", {"ssh-ed25519 AAAAapi admin@ci"}},
                                       {"deploy", {"ssh-ed25519 AAAAdeploy ci"}}};
    auto items = daemon::provisioning_items(p, api_keys);
    std::vector<std::string> keys;
    for (const auto& item : items)
        keys.push_back(item.key);
    BOOST_TEST(
        keys == (std::vector<std::string>{"ssh_keys admin", "ssh_keys root", "ssh_keys deploy"}),
        boost::test_tools::per_element());
    auto admin = items[0].build();
    BOOST_TEST_REQUIRE(admin.has_value());
    BOOST_TEST(std::get<protocol::ssh_key_payload>(*admin).public_key ==
               "ssh-ed25519 AAAAfirst admin@desk\nssh-ed25519 AAAAfile admin@laptop\n"
               "ssh-ed25519 AAAAapi admin@ci");
    auto deploy = items[2].build();
    BOOST_TEST_REQUIRE(deploy.has_value());
    BOOST_TEST(std::get<protocol::ssh_key_payload>(*deploy).public_key ==
               "ssh-ed25519 AAAAdeploy ci");
}

// stereosd checks only the start of the payload: every line is checked here.
BOOST_AUTO_TEST_CASE(every_key_line_is_checked_not_only_the_first) {
    auto joined = daemon::join_public_keys({"ssh-ed25519 AAAAgood a", "not a key at all"});
    BOOST_TEST_REQUIRE(joined.has_error());
    BOOST_TEST(joined.error().find("key 2") == 0u, joined.error());
    auto several = daemon::join_public_keys({"ssh-ed25519 AAAAone a\nssh-rsa AAAAtwo b\n\n"});
    BOOST_TEST_REQUIRE(several.has_value());
    BOOST_TEST(*several == "ssh-ed25519 AAAAone a\nssh-rsa AAAAtwo b");
}

// One ledger key per mount point however the path is spelled: mount(8) sees one directory.
BOOST_AUTO_TEST_CASE(mount_keys_name_the_directory_not_its_spelling) {
    BOOST_TEST(daemon::mount_item_key("/work") == "mount /work");
    BOOST_TEST(daemon::mount_item_key("/work/") == "mount /work");
    BOOST_TEST(daemon::mount_item_key("//work//data/") == "mount /work/data");
    BOOST_TEST(daemon::mount_item_key("/") == "mount /");
}

BOOST_AUTO_TEST_CASE(a_missing_file_fails_its_step_naming_the_file_only) {
    config::provision_config p;
    p.secrets = {{"K", "/nonexistent/secret-file", "", 0, std::nullopt}};
    auto steps = daemon::provisioning_items(p);
    auto built = steps.at(0).build();
    BOOST_TEST_REQUIRE(built.has_error());
    BOOST_TEST(built.error() == "cannot read /nonexistent/secret-file: No such file or directory");
}

BOOST_AUTO_TEST_CASE(guest_errors_are_scrubbed_of_what_we_sent) {
    const protocol::host_message secret = protocol::secret_payload{"K", "topsecret-value", 0};
    BOOST_TEST(daemon::scrub_guest_error("bad value topsecret-value here", secret) ==
               "bad value <redacted 15 bytes> here");
    const protocol::host_message config = protocol::config_payload{
        "[agent]\nprompt = \"do the thing\"\n[secrets]\nKEY = \"sk-123456\"\n"};
    BOOST_TEST(daemon::scrub_guest_error("toml: line 4: bad KEY = \"sk-123456\"", config) ==
               "toml: line 4: bad KEY = \"<redacted>\"");
    const protocol::host_message mount = protocol::mount_payload{"t", "/p", "9p", false};
    BOOST_TEST(daemon::scrub_guest_error("mount t at /p: exit status 32", mount) ==
               "mount t at /p: exit status 32");
}

BOOST_AUTO_TEST_CASE(sent_secrets_are_wiped) {
    protocol::host_message secret = protocol::secret_payload{"K", "value", 0};
    daemon::wipe_secrets(secret);
    BOOST_TEST(std::get<protocol::secret_payload>(secret).value.empty());
    protocol::host_message config = protocol::config_payload{"content"};
    daemon::wipe_secrets(config);
    BOOST_TEST(std::get<protocol::config_payload>(config).content.empty());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(log_throttling)

BOOST_AUTO_TEST_CASE(repeats_within_the_window_are_counted_not_logged) {
    daemon::log_throttle throttle(30s);
    const daemon::log_throttle::clock::time_point t0{};
    BOOST_TEST(throttle.admit("cannot connect: refused", t0 + 1s).value_or("") ==
               "cannot connect: refused");
    for (int i = 1; i <= 49; ++i) {
        BOOST_TEST(!throttle.admit("cannot connect: refused", t0 + 1s + i * 100ms).has_value());
    }
    BOOST_TEST(throttle.admit("cannot connect: refused", t0 + 32s).value_or("") ==
               "cannot connect: refused (repeated 49 times in the last 30s)");
}

BOOST_AUTO_TEST_CASE(a_different_message_is_logged_at_once) {
    daemon::log_throttle throttle(30s);
    const daemon::log_throttle::clock::time_point t0{};
    BOOST_TEST(throttle.admit("a", t0).has_value());
    BOOST_TEST(!throttle.admit("a", t0 + 1s).has_value());
    BOOST_TEST(throttle.admit("b", t0 + 2s).value_or("") == "b");
    throttle.reset();
    BOOST_TEST(throttle.admit("b", t0 + 3s).has_value());
}

BOOST_AUTO_TEST_SUITE_END()

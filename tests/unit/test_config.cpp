// The TOML config loader: defaults, overrides, every validation error with its file:line:key,
// the example file, path choice and credentials from the environment, and the reload diff; the
// guest rules alone, with a fake host's files.
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <boost/json/parse.hpp>
#include <boost/test/unit_test.hpp>

#include <stereos/protocol/codec.hpp>
#include "config/config.hpp"
#include "config/toml_reader.hpp"
#include "tests/support/child_process.hpp"

using namespace stereos::config;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

// A fresh private directory, removed with everything in it.
struct temp_dir : stereos::testing::temp_directory {
    temp_dir() : temp_directory("stereos-config-test", 0700) {}
};

// Sets (or unsets, with nullptr) an environment variable for one scope.
class scoped_env {
  public:
    scoped_env(const char* name, const char* value) : name_(name) {
        if (const char* old = std::getenv(name)) {
            old_ = old;
        }
        if (value != nullptr) {
            ::setenv(name, value, 1);
        } else {
            ::unsetenv(name);
        }
    }
    ~scoped_env() {
        if (old_) {
            ::setenv(name_.c_str(), old_->c_str(), 1);
        } else {
            ::unsetenv(name_.c_str());
        }
    }
    scoped_env(const scoped_env&) = delete;
    scoped_env& operator=(const scoped_env&) = delete;

  private:
    std::string name_;
    std::optional<std::string> old_;
};

void replace_all(std::string& text, std::string_view from, std::string_view to) {
    for (auto at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
        text.replace(at, from.size(), to);
    }
}

config load_ok(std::string_view text) {
    auto result = load_config_text(text, "t.toml");
    BOOST_TEST_REQUIRE(result.has_value(), "unexpected errors:\n"
                                               << (result ? "" : to_string(result.error())));
    return *result;
}

std::vector<std::string> errors_of(std::string_view text) {
    auto result = load_config_text(text, "t.toml");
    BOOST_TEST_REQUIRE(result.has_error(), "expected errors for:\n" << text);
    return result.error().messages;
}

std::string read_text(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    BOOST_TEST_REQUIRE(in.good(), "cannot open " << path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

const fs::path example_file = fs::path(STEREOS_TEST_DATA_DIR) / "../../config/stereos-hostd.toml";

}  // namespace

BOOST_AUTO_TEST_SUITE(config_loader)

BOOST_AUTO_TEST_CASE(an_empty_file_gives_the_documented_defaults) {
    const config c = load_ok("");
    BOOST_TEST(c.source == "t.toml");
    BOOST_TEST(c.daemon.api_socket == fs::path("/run/stereos-hostd/api.sock"));
    BOOST_TEST(c.daemon.api_group == "stereos");
    BOOST_TEST(c.daemon.state_dir == fs::path("/var/lib/stereos-hostd"));
    BOOST_TEST((c.daemon.level == log_level::info));
    BOOST_TEST(c.daemon.timeouts.request_timeout.count() == 10'000);
    BOOST_TEST(c.daemon.timeouts.connect_timeout.count() == 2'000);
    BOOST_TEST(c.daemon.timeouts.keepalive_interval.count() == 15'000);
    BOOST_TEST(c.daemon.timeouts.health_interval.count() == 5'000);
    BOOST_TEST(c.daemon.timeouts.reconnect_max.count() == 5'000);
    BOOST_TEST(c.guests.empty());
}

BOOST_AUTO_TEST_CASE(daemon_keys_are_read) {
    const config c = load_ok(R"(
[daemon]
api_socket = "/tmp/x/api.sock"
api_group = ""
api_read_group = "adm"
api_max_connections = 32
state_dir = "/srv/stereos"
log_level = "debug"
request_timeout = "1m30s"
connect_timeout = "250ms"
keepalive_interval = "1h"
health_interval = "2s"
reconnect_max = "30s"
)");
    BOOST_TEST(c.daemon.api_socket == fs::path("/tmp/x/api.sock"));
    BOOST_TEST(c.daemon.api_group.empty());
    BOOST_TEST(c.daemon.api_read_group == "adm");
    BOOST_TEST(c.daemon.api_max_connections == 32u);
    BOOST_TEST(c.daemon.state_dir == fs::path("/srv/stereos"));
    BOOST_TEST((c.daemon.level == log_level::debug));
    BOOST_TEST(c.daemon.timeouts.request_timeout.count() == 90'000);
    BOOST_TEST(c.daemon.timeouts.connect_timeout.count() == 250);
    BOOST_TEST(c.daemon.timeouts.keepalive_interval.count() == 3'600'000);
    BOOST_TEST(c.daemon.timeouts.health_interval.count() == 2'000);
    BOOST_TEST(c.daemon.timeouts.reconnect_max.count() == 30'000);
}

BOOST_AUTO_TEST_CASE(guest_timeouts_default_to_the_daemon_values_and_overrides_win) {
    const config c = load_ok(R"(
[daemon]
request_timeout = "20s"
health_interval = "7s"

[[guest]]
name = "plain"
endpoint = "vsock:3"

[[guest]]
name = "tuned"
endpoint = "tcp:10.0.0.2:1024"
request_timeout = "30s"
reconnect_max = "1m"
)");
    BOOST_TEST_REQUIRE(c.guests.size() == 2u);
    const guest_config& plain = c.guests[0];
    BOOST_TEST(plain.name == "plain");
    BOOST_TEST(plain.endpoint_text == "vsock:3");
    BOOST_TEST((plain.endpoint ==
                stereos::transport::endpoint{stereos::transport::vsock_endpoint{3, 1024}}));
    BOOST_TEST(plain.timeouts.request_timeout.count() == 20'000);
    BOOST_TEST(plain.timeouts.health_interval.count() == 7'000);
    BOOST_TEST(plain.timeouts.connect_timeout.count() == 2'000);
    BOOST_TEST(!plain.overrides.request_timeout.has_value());
    BOOST_TEST(plain.provision.empty());

    const guest_config& tuned = *c.find_guest("tuned");
    BOOST_TEST(tuned.timeouts.request_timeout.count() == 30'000);
    BOOST_TEST(tuned.timeouts.reconnect_max.count() == 60'000);
    BOOST_TEST(tuned.timeouts.health_interval.count() == 7'000);
    BOOST_TEST(tuned.overrides.request_timeout.has_value());
    BOOST_TEST(!tuned.overrides.health_interval.has_value());
    BOOST_TEST((std::holds_alternative<stereos::transport::tcp_endpoint>(tuned.endpoint)));
    BOOST_TEST(c.find_guest("absent") == nullptr);
}

// One row per error path: the text, and what the single error message must start with and
// contain. @DIR@ is replaced by a temp dir holding: key.pub, empty.pub, secret, jcard.toml, sub/.
struct error_case {
    const char* what;
    const char* text;
    const char* prefix;
    const char* fragment;
};

const auto error_cases = std::to_array<error_case>({
    {"toml syntax", "[daemon]\nlog_level = \"info\n", "t.toml:2:", ""},
    {"unknown top-level key", "\n[demon]\nx = 1\n", "t.toml:2: demon: ", "unknown key"},
    {"typo in a daemon key", "[daemon]\n\nrequest_timout = \"10s\"\n",
     "t.toml:3: daemon.request_timout: ", "unknown key (did you mean request_timeout?)"},
    {"wrong type", "[daemon]\napi_group = 5\n",
     "t.toml:2: daemon.api_group: ", "expected a string, got an integer"},
    {"daemon not a table", "daemon = \"x\"\n", "t.toml:1: daemon: ", "expected a table"},
    {"relative api_socket", "[daemon]\napi_socket = \"api.sock\"\n",
     "t.toml:2: daemon.api_socket: ", "absolute path"},
    {"api_socket too long",
     "[daemon]\napi_socket = "
     "\"/run/"
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
     "aaaaaaaaaaaaaaaaaaaaaaa.sock\"\n",
     "t.toml:2: daemon.api_socket: ", "too long"},
    {"relative state_dir", "[daemon]\nstate_dir = \"var/lib\"\n",
     "t.toml:2: daemon.state_dir: ", "absolute path"},
    {"bad api_group", "[daemon]\napi_group = \"-wheel\"\n",
     "t.toml:2: daemon.api_group: ", "invalid group name"},
    {"api_max_connections out of range", "[daemon]\napi_max_connections = 0\n",
     "t.toml:2: daemon.api_max_connections: ", "must be between 1 and 65536"},
    {"bad api_read_group", "[daemon]\napi_read_group = \"a b\"\n",
     "t.toml:2: daemon.api_read_group: ", "invalid group name"},
    {"unknown log level", "[daemon]\nlog_level = \"verbose\"\n",
     "t.toml:2: daemon.log_level: ", "unknown log level \"verbose\""},
    {"duration without unit", "[daemon]\nrequest_timeout = \"10\"\n",
     "t.toml:2: daemon.request_timeout: ", "invalid duration \"10\""},
    {"duration with unknown unit", "[daemon]\nconnect_timeout = \"10x\"\n",
     "t.toml:2: daemon.connect_timeout: ", "invalid duration \"10x\""},
    {"negative duration", "[daemon]\nhealth_interval = \"-1s\"\n",
     "t.toml:2: daemon.health_interval: ", "invalid duration"},
    {"zero duration", "[daemon]\nreconnect_max = \"0s\"\n",
     "t.toml:2: daemon.reconnect_max: ", "must be greater than 0"},
    {"duration above range", "[daemon]\nrequest_timeout = \"2h\"\n",
     "t.toml:2: daemon.request_timeout: ", "request_timeout must be between 10ms and 1h"},
    {"duration below range", "[daemon]\nkeepalive_interval = \"5ms\"\n",
     "t.toml:2: daemon.keepalive_interval: ", "between 100ms and 1h"},
    {"huge duration", "[daemon]\nrequest_timeout = \"99999999999999999999h\"\n",
     "t.toml:2: daemon.request_timeout: ", "too large"},
    {"duration as a number", "[daemon]\nrequest_timeout = 10\n",
     "t.toml:2: daemon.request_timeout: ", "expected a duration string"},
    {"guest as a plain table", "[guest]\nname = \"vm1\"\n",
     "t.toml:1: guest: ", "expected an array of tables"},
    {"guest without name", "[[guest]]\nendpoint = \"vsock:3\"\n",
     "t.toml:1: guest[0].name: ", "missing"},
    {"guest without endpoint", "[[guest]]\nname = \"vm1\"\n",
     "t.toml:1: guest[0].endpoint: ", "missing"},
    {"bad guest name", "[[guest]]\nname = \"vm 1\"\nendpoint = \"vsock:3\"\n",
     "t.toml:2: guest[0].name: ", "invalid guest name \"vm 1\""},
    {"guest name too long",
     "[[guest]]\nname = "
     "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\nendpoint = "
     "\"vsock:3\"\n",
     "t.toml:2: guest[0].name: ", "invalid guest name"},
    {"duplicate guest names",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[[guest]]\nname = \"vm1\"\nendpoint = "
     "\"vsock:4\"\n",
     "t.toml:5: guest[1].name: ", "duplicate guest name \"vm1\" (also at line 2)"},
    {"unknown endpoint scheme",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3:1024\"\n[[guest]]\nname = \"vm2\"\nendpoint "
     "= \"vsok:3:1024\"\n",
     "t.toml:6: guest[1].endpoint: ", "unknown scheme \"vsok\""},
    {"typo in a guest key",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\nrequest_timout = \"30s\"\n",
     "t.toml:4: guest[0].request_timout: ", "did you mean request_timeout?"},
    {"guest override out of range",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\nconnect_timeout = \"10m\"\n",
     "t.toml:4: guest[0].connect_timeout: ", "between 10ms and 5m"},
    {"provision not a table", "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\nprovision = 1\n",
     "t.toml:4: guest[0].provision: ", "expected a table"},
    {"unknown provision key",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nconfig = \"x\"\n",
     "t.toml:5: guest[0].provision.config: ", "may not be written inline here; use config_file"},
    {"config_file missing",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nconfig_file = "
     "\"@DIR@/nope.toml\"\n",
     "t.toml:5: guest[0].provision.config_file: ", "No such file or directory"},
    {"config_file relative",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nconfig_file = "
     "\"jcard.toml\"\n",
     "t.toml:5: guest[0].provision.config_file: ", "must be an absolute path"},
    {"config_file a directory",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nconfig_file = "
     "\"@DIR@/sub\"\n",
     "t.toml:5: guest[0].provision.config_file: ", "is not a regular file"},
    {"ssh key without a key",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nssh_keys = [ { user "
     "= \"admin\" } ]\n",
     "t.toml:5: guest[0].provision.ssh_keys[0]: ", "set exactly one of public_key or"},
    {"ssh key with both",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nssh_keys = [\n  { "
     "user = \"admin\", public_key = \"ssh-ed25519 AAAA\", public_key_file = \"@DIR@/key.pub\" "
     "},\n]\n",
     "t.toml:6: guest[0].provision.ssh_keys[0]: ", "not both"},
    {"ssh key empty",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nssh_keys = [ { user "
     "= \"admin\", public_key = \"  \" } ]\n",
     "t.toml:5: guest[0].provision.ssh_keys[0].public_key: ", "is empty"},
    {"ssh key file missing",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nssh_keys = [ { user "
     "= \"admin\", public_key_file = \"@DIR@/gone.pub\" } ]\n",
     "t.toml:5: guest[0].provision.ssh_keys[0].public_key_file: ", "cannot open"},
    {"ssh key file empty",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nssh_keys = [ { user "
     "= \"admin\", public_key_file = \"@DIR@/empty.pub\" } ]\n",
     "t.toml:5: guest[0].provision.ssh_keys[0].public_key_file: ", "is empty"},
    {"ssh key without user",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nssh_keys = [ { "
     "public_key = \"ssh-ed25519 AAAA\" } ]\n",
     "t.toml:5: guest[0].provision.ssh_keys[0].user: ", "missing"},
    {"ssh key bad user",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nssh_keys = [ { user "
     "= \"ad min\", public_key = \"ssh-ed25519 AAAA\" } ]\n",
     "t.toml:5: guest[0].provision.ssh_keys[0].user: ", "invalid user name"},
    {"ssh keys element not a table",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nssh_keys = [ "
     "\"ssh-ed25519 AAAA\" ]\n",
     "t.toml:5: guest[0].provision.ssh_keys[0]: ", "expected a table, got a string"},
    {"secret with inline value",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nsecrets = [\n  { name "
     "= \"K\", file = \"@DIR@/secret\" },\n  { name = \"K2\", value = \"sk-do-not-print\" },\n]\n",
     "t.toml:7: guest[0].provision.secrets[1].value: ",
     "secret values may not be written inline; use file or credential"},
    {"secret with file and credential",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nsecrets = [ { name = "
     "\"K\", file = \"@DIR@/secret\", credential = \"k\" } ]\n",
     "t.toml:5: guest[0].provision.secrets[0]: ", "set exactly one of file or credential"},
    {"secret with neither",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nsecrets = [ { name = "
     "\"K\" } ]\n",
     "t.toml:5: guest[0].provision.secrets[0]: ", "set exactly one of file or credential"},
    {"secret name with a slash",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nsecrets = [ { name = "
     "\"../etc/passwd\", file = \"@DIR@/secret\" } ]\n",
     "t.toml:5: guest[0].provision.secrets[0].name: ", "a simple file name"},
    {"secret name dot-dot",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nsecrets = [ { name = "
     "\"..\", file = \"@DIR@/secret\" } ]\n",
     "t.toml:5: guest[0].provision.secrets[0].name: ", "a simple file name"},
    {"duplicate secret names",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nsecrets = [\n  { name "
     "= \"K\", file = \"@DIR@/secret\" },\n  { name = \"K\", file = \"@DIR@/secret\" },\n]\n",
     "t.toml:7: guest[0].provision.secrets[1].name: ",
     "duplicate secret name \"K\" (also at line 6)"},
    {"secret mode too large",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nsecrets = [ { name = "
     "\"K\", file = \"@DIR@/secret\", mode = 0o10000 } ]\n",
     "t.toml:5: guest[0].provision.secrets[0].mode: ", "between 0 and 0o7777, got 0o10000"},
    {"secret mode negative",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nsecrets = [ { name = "
     "\"K\", file = \"@DIR@/secret\", mode = -1 } ]\n",
     "t.toml:5: guest[0].provision.secrets[0].mode: ", "between 0 and 0o7777"},
    {"secret mode as a string",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nsecrets = [ { name = "
     "\"K\", file = \"@DIR@/secret\", mode = \"0600\" } ]\n",
     "t.toml:5: guest[0].provision.secrets[0].mode: ", "expected an integer, got a string"},
    {"secret file missing",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nsecrets = [ { name = "
     "\"K\", file = \"@DIR@/gone\" } ]\n",
     "t.toml:5: guest[0].provision.secrets[0].file: ", "cannot open"},
    {"mount with unknown fs_type",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nmounts = [ { tag = "
     "\"s0\", guest_path = \"/w\", fs_type = \"ext4\" } ]\n",
     "t.toml:5: guest[0].provision.mounts[0].fs_type: ", "expected 9p or virtiofs"},
    {"mount with relative guest_path",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nmounts = [ { tag = "
     "\"s0\", guest_path = \"w\", fs_type = \"9p\" } ]\n",
     "t.toml:5: guest[0].provision.mounts[0].guest_path: ", "must be an absolute path"},
    {"mount without tag",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nmounts = [ { "
     "guest_path = \"/w\", fs_type = \"9p\" } ]\n",
     "t.toml:5: guest[0].provision.mounts[0].tag: ", "missing"},
    {"mount with bad tag",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nmounts = [ { tag = "
     "\"a b\", guest_path = \"/w\", fs_type = \"9p\" } ]\n",
     "t.toml:5: guest[0].provision.mounts[0].tag: ", "invalid mount tag"},
    {"mount read_only not a boolean",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nmounts = [ { tag = "
     "\"s0\", guest_path = \"/w\", fs_type = \"9p\", read_only = \"yes\" } ]\n",
     "t.toml:5: guest[0].provision.mounts[0].read_only: ", "expected a boolean"},
    {"two mounts on one path",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nmounts = [\n  { tag = "
     "\"s0\", guest_path = \"/w\", fs_type = \"9p\" },\n  { tag = \"s1\", guest_path = \"/w\", "
     "fs_type = \"virtiofs\" },\n]\n",
     "t.toml:7: guest[0].provision.mounts[1].guest_path: ", "duplicate mount point \"/w\""},
    {"mount over /",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nmounts = [ { tag = "
     "\"s0\", guest_path = \"/\", fs_type = \"9p\" } ]\n",
     "t.toml:5: guest[0].provision.mounts[0].guest_path: ", "refuses to mount over \"/\""},
    {"mount at /etc",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nmounts = [ { tag = "
     "\"s0\", guest_path = \"/etc\", fs_type = \"9p\" } ]\n",
     "t.toml:5: guest[0].provision.mounts[0].guest_path: ", "at or under \"/etc\""},
    {"mount under /nix",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nmounts = [ { tag = "
     "\"s0\", guest_path = \"/nix/store\", fs_type = \"9p\" } ]\n",
     "t.toml:5: guest[0].provision.mounts[0].guest_path: ", "at or under \"/nix\""},
    {"mount under /run with a doubled slash",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nmounts = [ { tag = "
     "\"s0\", guest_path = \"//run/x/\", fs_type = \"9p\" } ]\n",
     "t.toml:5: guest[0].provision.mounts[0].guest_path: ", "at or under \"/run\""},
    {"mount escaping with dot-dot",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nmounts = [ { tag = "
     "\"s0\", guest_path = \"/data/../proc\", fs_type = \"9p\" } ]\n",
     "t.toml:5: guest[0].provision.mounts[0].guest_path: ", "\"..\" components"},
    {"secret name with dot-dot inside",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nsecrets = [ { name = "
     "\"a..b\", file = \"@DIR@/secret\" } ]\n",
     "t.toml:5: guest[0].provision.secrets[0].name: ", "no \"..\""},
    {"ssh key of no known type",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nssh_keys = [ { user = "
     "\"admin\", public_key = \"AAAAC3Nza admin\" } ]\n",
     "t.toml:5: guest[0].provision.ssh_keys[0].public_key: ", "known SSH key type"},
    {"ssh key type without data",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nssh_keys = [ { user = "
     "\"admin\", public_key = \"ssh-ed25519\" } ]\n",
     "t.toml:5: guest[0].provision.ssh_keys[0].public_key: ", "no key data"},
    {"unix endpoint with a relative path",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"unix:relative/path.sock\"\n",
     "t.toml:3: guest[0].endpoint: ", "must be absolute"},
    {"hybrid endpoint with a relative path",
     "[[guest]]\nname = \"vm1\"\nendpoint = \"hybrid:v.sock:1024\"\n",
     "t.toml:3: guest[0].endpoint: ", "must be absolute"},
});

BOOST_AUTO_TEST_CASE(each_error_names_the_file_line_and_key) {
    temp_dir dir;
    dir.write("key.pub", "ssh-ed25519 AAAA admin\n");
    dir.write("empty.pub", "");
    dir.write("secret", "s3cr3t");
    dir.write("jcard.toml", "mixtape = \"base\"\n");
    fs::create_directories(dir.path() / "sub");
    for (const auto& row : error_cases) {
        BOOST_TEST_CONTEXT(row.what) {
            std::string text = row.text;
            replace_all(text, "@DIR@", dir.path().string());
            const auto errors = errors_of(text);
            BOOST_TEST_REQUIRE(errors.size() == 1u, "got " << errors.size() << " errors: "
                                                           << (errors.empty() ? "" : errors[0]));
            BOOST_TEST(errors[0].starts_with(row.prefix), errors[0]);
            BOOST_TEST(errors[0].find(row.fragment) != std::string::npos, errors[0]);
        }
    }
}

BOOST_AUTO_TEST_CASE(all_errors_are_reported_in_line_order) {
    const auto errors = errors_of(R"([[guest]]
name = "vm1"
endpoint = "vsok:3"
request_timout = "1s"

[daemon]
log_level = "loud"
health_interval = "0s"
)");
    BOOST_TEST_REQUIRE(errors.size() == 4u);
    BOOST_TEST(errors[0].starts_with("t.toml:3: guest[0].endpoint: "));
    BOOST_TEST(errors[1].starts_with("t.toml:4: guest[0].request_timout: "));
    BOOST_TEST(errors[2].starts_with("t.toml:7: daemon.log_level: "));
    BOOST_TEST(errors[3].starts_with("t.toml:8: daemon.health_interval: "));
}

BOOST_AUTO_TEST_CASE(syntax_errors_carry_line_and_column) {
    const auto errors = errors_of("[daemon]\nlog_level = = \"info\"\n");
    BOOST_TEST_REQUIRE(errors.size() == 1u);
    BOOST_TEST(errors[0].starts_with("t.toml:2:13: "), errors[0]);
}

BOOST_AUTO_TEST_CASE(secret_values_never_appear_in_messages) {
    temp_dir dir;
    const auto secret = dir.write("secret", "the-secret-content");
    const std::string text =
        "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n"
        "[guest.provision]\nsecrets = [\n"
        "  { name = \"A\", value = \"sk-inline-value\" },\n"
        "  { name = \"B\", file = \"" +
        secret.string() +
        "\", valeu = \"sk-typo-value\" },\n"
        "  { name = \"C\", file = \"" +
        secret.string() + "\", mode = \"sk-wrong-type\" },\n]\n";
    const auto errors = errors_of(text);
    BOOST_TEST(errors.size() == 3u);
    for (const auto& message : errors) {
        BOOST_TEST(message.find("sk-") == std::string::npos, message);
        BOOST_TEST(message.find("the-secret-content") == std::string::npos, message);
    }
}

BOOST_AUTO_TEST_CASE(an_unreadable_provisioning_file_is_reported) {
    if (::geteuid() == 0) {
        BOOST_TEST_MESSAGE("running as root: every file is readable, nothing to check");
        return;
    }
    temp_dir dir;
    const auto file = dir.write("jcard.toml", "x");
    fs::permissions(file, fs::perms::none);
    const auto errors = errors_of(
        "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n"
        "[guest.provision]\nconfig_file = \"" +
        file.string() + "\"\n");
    BOOST_TEST_REQUIRE(errors.size() == 1u);
    BOOST_TEST(errors[0].find("Permission denied") != std::string::npos, errors[0]);
}

BOOST_AUTO_TEST_CASE(provisioning_is_loaded_with_paths_only) {
    temp_dir dir;
    const auto jcard = dir.write("jcard.toml", "mixtape = \"base\"\n");
    const auto key = dir.write("admin.pub", "ssh-ed25519 BBBB admin@host\n");
    const auto gh = dir.write("gh", "ghp_token");
    dir.write("creds/anthropic", "sk-ant");
    scoped_env credentials("CREDENTIALS_DIRECTORY", (dir.path() / "creds").c_str());

    const config c = load_ok(R"([[guest]]
name = "vm1"
endpoint = "vsock:3:1024"

[guest.provision]
config_file = ")" + jcard.string() +
                             R"("
ssh_keys = [
  { user = "admin", public_key = " ssh-ed25519 AAAA admin@host " },
  { user = "admin", public_key_file = ")" +
                             key.string() + R"(" },
]
secrets = [
  { name = "ANTHROPIC_API_KEY", credential = "anthropic" },
  { name = "GH", file = ")" + gh.string() +
                             R"(", mode = 0o600 },
]
mounts = [
  { tag = "share0", guest_path = "/home/admin/workspace", fs_type = "9p", read_only = false },
  { tag = "data", guest_path = "/data", fs_type = "virtiofs", read_only = true },
]
)");
    BOOST_TEST_REQUIRE(c.guests.size() == 1u);
    const provision_config& p = c.guests[0].provision;
    BOOST_TEST((p.config_file == jcard));
    BOOST_TEST_REQUIRE(p.ssh_keys.size() == 2u);
    BOOST_TEST(p.ssh_keys[0].user == "admin");
    BOOST_TEST(p.ssh_keys[0].public_key == "ssh-ed25519 AAAA admin@host");
    BOOST_TEST(p.ssh_keys[0].public_key_file.empty());
    BOOST_TEST(p.ssh_keys[1].public_key.empty());
    BOOST_TEST(p.ssh_keys[1].public_key_file == key);
    BOOST_TEST_REQUIRE(p.secrets.size() == 2u);
    BOOST_TEST(p.secrets[0].name == "ANTHROPIC_API_KEY");
    BOOST_TEST(p.secrets[0].credential == "anthropic");
    BOOST_TEST(p.secrets[0].file == dir.path() / "creds" / "anthropic");
    BOOST_TEST(p.secrets[0].mode == 0u);
    BOOST_TEST(p.secrets[1].name == "GH");
    BOOST_TEST(p.secrets[1].file == gh);
    BOOST_TEST(p.secrets[1].credential.empty());
    BOOST_TEST(p.secrets[1].mode == 0600u);
    BOOST_TEST_REQUIRE(p.mounts.size() == 2u);
    BOOST_TEST((p.mounts[0] ==
                stereos::protocol::mount_payload{"share0", "/home/admin/workspace", "9p", false}));
    BOOST_TEST(
        (p.mounts[1] == stereos::protocol::mount_payload{"data", "/data", "virtiofs", true}));
}

BOOST_AUTO_TEST_CASE(a_public_key_file_must_hold_a_key_when_the_config_is_loaded) {
    temp_dir dir;
    const auto good = dir.write("good.pub", "ssh-ed25519 AAAA admin@host\r\n");
    const auto token = dir.write("token", "sk-not-a-key-but-a-token\n");
    const auto two = dir.write("two.pub", "ssh-ed25519 AAAA a\nssh-rsa BBBB b\n");
    const std::string head =
        "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nssh_keys = [\n";
    load_ok(head + "  { user = \"admin\", public_key_file = \"" + good.string() + "\" },\n]\n");
    for (const auto& file : {token, two}) {
        BOOST_TEST_CONTEXT(file) {
            const auto errors = errors_of(head + "  { user = \"admin\", public_key_file = \"" +
                                          file.string() + "\" },\n]\n");
            BOOST_TEST_REQUIRE(errors.size() == 1u);
            BOOST_TEST(
                errors[0].starts_with("t.toml:6: guest[0].provision.ssh_keys[0].public_key_file: "),
                errors[0]);
            BOOST_TEST(errors[0].find("does not hold one SSH public key") != std::string::npos,
                       errors[0]);
            // The content is never quoted: a wrong path may name a secret.
            BOOST_TEST(errors[0].find("sk-not") == std::string::npos, errors[0]);
        }
    }
}

BOOST_AUTO_TEST_CASE(a_credential_needs_credentials_directory) {
    const std::string text =
        "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n"
        "[guest.provision]\nsecrets = [ { name = \"K\", credential = "
        "\"anthropic\" } ]\n";
    {
        scoped_env unset("CREDENTIALS_DIRECTORY", nullptr);
        const auto errors = errors_of(text);
        BOOST_TEST_REQUIRE(errors.size() == 1u);
        BOOST_TEST(errors[0].starts_with("t.toml:5: guest[0].provision.secrets[0].credential: "));
        BOOST_TEST(errors[0].find("$CREDENTIALS_DIRECTORY is not set") != std::string::npos);
    }
    {
        temp_dir dir;  // set, but the credential is not there
        scoped_env set("CREDENTIALS_DIRECTORY", dir.path().c_str());
        const auto errors = errors_of(text);
        BOOST_TEST_REQUIRE(errors.size() == 1u);
        BOOST_TEST(errors[0].starts_with("t.toml:5: guest[0].provision.secrets[0].credential: "));
        BOOST_TEST(errors[0].find((dir.path() / "anthropic").string()) != std::string::npos);
    }
}

BOOST_AUTO_TEST_CASE(the_example_file_loads_with_the_defaults) {
    const auto result = load_config_file(example_file);
    BOOST_TEST_REQUIRE(result.has_value(), (result ? "" : to_string(result.error())));
    const config& c = *result;
    BOOST_TEST((c.daemon == daemon_settings{}));
    BOOST_TEST_REQUIRE(c.guests.size() == 1u);
    BOOST_TEST(c.guests[0].name == "vm1");
    BOOST_TEST(c.guests[0].endpoint_text == "vsock:3:1024");
    BOOST_TEST((c.guests[0].timeouts == link_timeouts{}));
}

// The example's commented provisioning block, uncommented and pointed at files made here.
BOOST_AUTO_TEST_CASE(the_example_provisioning_block_loads_when_uncommented) {
    temp_dir dir;
    std::string text = read_text(example_file);
    const auto block = text.find("# [guest.provision]");
    BOOST_TEST_REQUIRE(block != std::string::npos);
    std::string head = text.substr(0, block);
    std::istringstream lines(text.substr(block));
    std::string line;
    std::string uncommented;
    while (std::getline(lines, line)) {
        if (line.starts_with("# ")) {
            line.erase(0, 2);
        } else if (line == "#") {
            line.clear();
        }
        uncommented += line + "\n";
    }
    text = head + uncommented;
    replace_all(text, "/etc/stereos-hostd/vm1/jcard.toml",
                dir.write("jcard.toml", "mixtape = \"base\"\n").string());
    replace_all(text, "/etc/stereos-hostd/vm1/admin.pub",
                dir.write("admin.pub", "ssh-ed25519 AAAA\n").string());
    replace_all(text, "/etc/stereos-hostd/vm1/gh-token", dir.write("gh-token", "x").string());
    dir.write("creds/anthropic", "x");
    scoped_env credentials("CREDENTIALS_DIRECTORY", (dir.path() / "creds").c_str());

    const auto result = load_config_text(text, "example");
    BOOST_TEST_REQUIRE(result.has_value(), (result ? "" : to_string(result.error())));
    const provision_config& p = result->guests.at(0).provision;
    BOOST_TEST((p.config_file == dir.path() / "jcard.toml"));
    BOOST_TEST(p.ssh_keys.size() == 2u);
    BOOST_TEST(p.secrets.size() == 2u);
    BOOST_TEST(p.secrets[1].mode == 0600u);
    BOOST_TEST(p.mounts.size() == 1u);
}

BOOST_AUTO_TEST_CASE(a_file_on_disk_names_itself_in_messages) {
    temp_dir dir;
    const auto file = dir.write("config.toml", "[daemon]\nlog_level = \"chatty\"\n");
    const auto result = load_config_file(file);
    BOOST_TEST_REQUIRE(result.has_error());
    BOOST_TEST(result.error().messages.at(0).starts_with(file.string() + ":2: daemon.log_level: "));

    const auto missing = load_config_file(dir.path() / "absent.toml");
    BOOST_TEST_REQUIRE(missing.has_error());
    BOOST_TEST(missing.error().messages.at(0).starts_with((dir.path() / "absent.toml").string()));
    BOOST_TEST(missing.error().messages.at(0).find("No such file") != std::string::npos);
    BOOST_CHECK_THROW(missing.value(), std::runtime_error);
}

BOOST_AUTO_TEST_CASE(the_config_path_comes_from_the_flag_then_the_environment) {
    {
        scoped_env env("CONFIGURATION_DIRECTORY", "/etc/from-systemd");
        BOOST_TEST(choose_config_path("/tmp/explicit.toml") == fs::path("/tmp/explicit.toml"));
        BOOST_TEST(choose_config_path(std::nullopt) == fs::path("/etc/from-systemd/config.toml"));
    }
    {
        scoped_env env("CONFIGURATION_DIRECTORY", "/etc/first:/etc/second");
        BOOST_TEST(choose_config_path(std::nullopt) == fs::path("/etc/first/config.toml"));
    }
    {
        scoped_env env("CONFIGURATION_DIRECTORY", nullptr);
        BOOST_TEST(choose_config_path(std::nullopt) == fs::path("/etc/stereos-hostd/config.toml"));
    }
    {
        scoped_env env("CONFIGURATION_DIRECTORY", "");
        BOOST_TEST(choose_config_path(std::nullopt) == fs::path(default_config_path));
    }
}

BOOST_AUTO_TEST_CASE(durations_parse_and_format_back) {
    BOOST_TEST(parse_duration("250ms").value().count() == 250);
    BOOST_TEST(parse_duration("10s").value().count() == 10'000);
    BOOST_TEST(parse_duration("5m").value().count() == 300'000);
    BOOST_TEST(parse_duration("1h").value().count() == 3'600'000);
    BOOST_TEST(parse_duration("1h2m3s4ms").value().count() == 3'723'004);
    for (const char* bad : {"", "s", "10", "1.5s", "10 s", " 10s", "10S", "-5s", "5d"}) {
        BOOST_TEST(parse_duration(bad).has_error(), bad);
    }
    for (const char* text : {"250ms", "10s", "5m", "1h", "1m30s", "1h2m3s4ms"}) {
        BOOST_TEST(format_duration(parse_duration(text).value()) == text);
    }
    BOOST_TEST(parse_timeout("request_timeout", "2h").has_error());
    BOOST_TEST(parse_timeout("request_timeout", "1h").value().count() == 3'600'000);
    BOOST_TEST(check_guest_name("vm-1.test_2").has_value());
    BOOST_TEST(check_guest_name("").has_error());
    BOOST_TEST(check_guest_name("vm/1").has_error());
}

BOOST_AUTO_TEST_CASE(reload_diff_sorts_guests_by_what_changed) {
    temp_dir dir;
    const auto jcard = dir.write("jcard.toml", "x");
    const config before = load_ok(R"(
[[guest]]
name = "same"
endpoint = "vsock:3"
[[guest]]
name = "respelled"
endpoint = "vsock:4"
[[guest]]
name = "moved"
endpoint = "vsock:5"
[[guest]]
name = "retimed"
endpoint = "vsock:6"
[[guest]]
name = "provisioned"
endpoint = "vsock:8"
[[guest]]
name = "gone"
endpoint = "vsock:9"
)");
    const config after = load_ok(R"(
[[guest]]
name = "new"
endpoint = "vsock:10"
[[guest]]
name = "same"
endpoint = "vsock:3"
[[guest]]
name = "respelled"
endpoint = "vsock:4:1024"
[[guest]]
name = "moved"
endpoint = "vsock:15"
[[guest]]
name = "retimed"
endpoint = "vsock:6"
keepalive_interval = "30s"
[[guest]]
name = "provisioned"
endpoint = "vsock:8"
[guest.provision]
config_file = ")" + jcard.string() +
                                 R"("
)");
    const guest_diff diff = diff_guests(before, after);
    using names = std::vector<std::string>;
    BOOST_TEST(diff.added == (names{"new"}), boost::test_tools::per_element());
    BOOST_TEST(diff.removed == (names{"gone"}), boost::test_tools::per_element());
    // Only a new endpoint needs a new link; timings and provisioning apply to the live one.
    BOOST_TEST(diff.changed == (names{"moved"}), boost::test_tools::per_element());
    BOOST_TEST(diff.updated == (names{"retimed", "provisioned"}), boost::test_tools::per_element());
    BOOST_TEST(diff.unchanged == (names{"same", "respelled"}), boost::test_tools::per_element());

    const guest_diff nothing = diff_guests(after, after);
    BOOST_TEST(nothing.added.empty());
    BOOST_TEST(nothing.removed.empty());
    BOOST_TEST(nothing.changed.empty());
    BOOST_TEST(nothing.updated.empty());
    BOOST_TEST(nothing.unchanged.size() == after.guests.size());
}

// Effective timeouts count: a new daemon default changes the guests that inherit it.
BOOST_AUTO_TEST_CASE(reload_diff_sees_a_changed_daemon_default_through_inheriting_guests) {
    const std::string guests = R"(
[[guest]]
name = "inherits"
endpoint = "vsock:3"
[[guest]]
name = "pinned"
endpoint = "vsock:4"
request_timeout = "20s"
)";
    const config before = load_ok("[daemon]\nrequest_timeout = \"10s\"\n" + guests);
    const config after = load_ok("[daemon]\nrequest_timeout = \"20s\"\n" + guests);
    const guest_diff diff = diff_guests(before, after);
    using names = std::vector<std::string>;
    BOOST_TEST(diff.updated == (names{"inherits"}), boost::test_tools::per_element());
    BOOST_TEST(diff.changed.empty());
    BOOST_TEST(diff.unchanged == (names{"pinned"}), boost::test_tools::per_element());
    BOOST_TEST(diff.added.empty());
    BOOST_TEST(diff.removed.empty());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(runtime_guest_definition)

boost::system::result<guest_config, config_errors> read_request(std::string_view provision_json,
                                                                bool host_trusted = true) {
    return read_runtime_guest("vm1", "vsock:3", boost::json::parse(provision_json).as_object(),
                              link_timeouts{},
                              {.allow_values = true, .allow_host_references = host_trusted});
}

BOOST_AUTO_TEST_CASE(a_valid_request_reads_into_the_model_with_its_values) {
    temp_dir dir;
    const auto key = dir.write("key.pub", "ssh-ed25519 AAAA admin\n");
    const auto read = read_request(R"({"config": "mixtape = 1",
        "ssh_keys": [{"user": "admin", "public_key": " ssh-ed25519 AAAA a "},
                     {"user": "admin", "public_key_file": ")" +
                                   key.string() + R"("}],
        "secrets": [{"name": "K", "value": "v4lue", "mode": 384, "file": null}],
        "mounts": [{"tag": "s0", "guest_path": "/w", "fs_type": "9p", "read_only": true}]})");
    BOOST_TEST_REQUIRE(read.has_value(), (read ? "" : to_string(read.error())));
    BOOST_TEST(read->name == "vm1");
    BOOST_TEST((read->endpoint ==
                stereos::transport::endpoint{stereos::transport::vsock_endpoint{3, 1024}}));
    BOOST_TEST(read->timeouts.request_timeout.count() == 10'000);
    const auto& p = read->provision;
    BOOST_TEST(p.config_content.value_or("") == "mixtape = 1");
    BOOST_TEST(p.ssh_keys.at(0).public_key == "ssh-ed25519 AAAA a");
    BOOST_TEST(p.ssh_keys.at(1).public_key_file == key);
    BOOST_TEST(p.secrets.at(0).value.value_or("") == "v4lue");
    BOOST_TEST(p.secrets.at(0).mode == 0600u);
    BOOST_TEST(p.mounts.at(0).read_only);
}

BOOST_AUTO_TEST_CASE(errors_name_the_request_field_with_the_file_rules_wording) {
    const auto read = read_request(R"({
        "secrets": [{"name": "K", "value": "sk-secret-one", "valeu": "sk-typo"},
                    {"name": "K", "value": "sk-secret-two", "mode": 4096},
                    {"name": "L", "value": 5}],
        "mounts": [{"tag": "s0", "guest_path": "/w", "fs_type": "ext4", "read_only": "yes"}],
        "ssh_keys": ["ssh-ed25519 AAAA"]})");
    BOOST_TEST_REQUIRE(read.has_error());
    BOOST_TEST(!read.error().refused_references);
    const std::vector<std::string> expected{
        "provision.ssh_keys[0]: expected a table, got a string",
        "provision.secrets[0].valeu: unknown key (did you mean value?)",
        "provision.secrets[1].mode: must be between 0 and 0o7777, got 0o10000",
        "provision.secrets[2].value: expected a string, got an integer",
        "provision.mounts[0].read_only: expected a boolean, got a string",
        "provision.secrets[1].name: duplicate secret name \"K\" (also at "
        "provision.secrets[0].name)",
        "provision.mounts[0].fs_type: unknown file system type \"ext4\" (expected 9p or virtiofs)",
    };
    const auto& messages = read.error().messages;
    BOOST_TEST(messages == expected, boost::test_tools::per_element());
    for (const auto& message : messages) {
        BOOST_TEST(message.find("sk-") == std::string::npos, message);
    }
}

BOOST_AUTO_TEST_CASE(the_name_and_endpoint_are_checked_like_the_files) {
    auto read = read_runtime_guest("vm 1", "unix:relative.sock", {}, link_timeouts{}, {});
    BOOST_TEST_REQUIRE(read.has_error());
    BOOST_TEST_REQUIRE(read.error().messages.size() == 2u);
    BOOST_TEST(read.error().messages[0].starts_with("name: invalid guest name \"vm 1\""));
    BOOST_TEST(read.error().messages[1].starts_with("endpoint: "));
    BOOST_TEST(read.error().messages[1].find("must be absolute") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(a_caller_without_host_trust_may_not_name_host_files) {
    const auto read = read_request(
        R"({"config_file": "/nonexistent/jcard.toml",
            "secrets": [{"name": "A", "credential": "a"}]})",
        false);
    BOOST_TEST_REQUIRE(read.has_error());
    BOOST_TEST(read.error().refused_references);
    BOOST_TEST_REQUIRE(read.error().messages.size() == 2u);
    BOOST_TEST(read.error().messages[0].starts_with("provision.config_file: naming a host file"));
    BOOST_TEST(read.error().messages[1].starts_with(
        "provision.secrets[0].credential: naming a host file"));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(input_rules)

BOOST_AUTO_TEST_CASE(the_guests_rules_accept_ordinary_values) {
    for (auto name : {"API_KEY", "a.b", "id_ed25519", ".hidden"})
        BOOST_TEST(check_secret_name(name).has_value(), name);
    for (auto path : {"/data", "/home/admin/workspace", "/etcetera", "/runner/x", "/srv/"})
        BOOST_TEST(check_mount_guest_path(path).has_value(), path);
    for (auto type : {"9p", "virtiofs"})
        BOOST_TEST(check_fs_type(type).has_value(), type);
    for (auto key :
         {"ssh-ed25519 AAAAC3 admin@host", "ssh-rsa AAAAB3", "ecdsa-sha2-nistp256 AAAAE2",
          "sk-ssh-ed25519@openssh.com AAAAGn", "ssh-ed25519 AAAA\n"})
        BOOST_TEST(check_ssh_public_key(key).has_value(), key);
    for (auto endpoint :
         {"unix:/run/vm.sock", "hybrid:/run/v.sock:1024", "tcp:127.0.0.1:1", "vsock:3"})
        BOOST_TEST(check_endpoint(endpoint).has_value(), endpoint);
}

BOOST_AUTO_TEST_CASE(the_guests_rules_refuse_what_the_guest_would_refuse) {
    for (auto name : {"../x", "a/b", "..", ".", "a..b", "", "sp ace"})
        BOOST_TEST(!check_secret_name(name).has_value(), name);
    for (auto path : {"/", "//", "relative", "", "/nix", "/etc/x", "/bin", "/boot/efi", "/dev",
                      "/proc/1", "/sys", "/run/user", "/data/../etc", "/./data"})
        BOOST_TEST(!check_mount_guest_path(path).has_value(), path);
    for (auto type : {"ext4", "", "9P"})
        BOOST_TEST(!check_fs_type(type).has_value(), type);
    for (auto key :
         {"AAAAC3Nza", "ssh-ed25519", "ssh-ed25519 ", "rsa AAAA", "ssh-rsa AAAA\nssh-rsa BBBB", ""})
        BOOST_TEST(!check_ssh_public_key(key).has_value(), key);
    for (auto endpoint : {"unix:relative/path", "unix:./x.sock", "hybrid:v.sock:1024"}) {
        auto checked = check_endpoint(endpoint);
        BOOST_TEST_REQUIRE(!checked.has_value(), endpoint);
        BOOST_TEST(checked.error().message.find("must be absolute") != std::string::npos);
    }
}

BOOST_AUTO_TEST_CASE(a_provision_object_is_checked_field_by_field) {
    const auto provision = boost::json::parse(R"({
        "secrets": [{"name": "OK", "value": "v"}, {"name": "../x", "value": "v"}],
        "mounts": [{"tag": "t", "guest_path": "/etc", "fs_type": "ext4"}],
        "ssh_keys": [{"user": "admin", "public_key": "not-a-key"}]})")
                               .as_object();
    const auto problems = provision_rule_violations(provision);
    BOOST_TEST_REQUIRE(problems.size() == 4u);
    BOOST_TEST(problems[0].starts_with("provision.secrets[1].name: "), problems[0]);
    BOOST_TEST(problems[1].starts_with("provision.mounts[0].guest_path: "), problems[1]);
    BOOST_TEST(problems[2].starts_with("provision.mounts[0].fs_type: "), problems[2]);
    BOOST_TEST(problems[3].starts_with("provision.ssh_keys[0].public_key: "), problems[3]);
}

BOOST_AUTO_TEST_CASE(inline_values_are_for_the_api_only) {
    const std::string text =
        "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\n"
        "config = \"mixtape = 1\"\nsecrets = [ { name = \"K\", value = \"v4lue\" } ]\n";
    auto from_file = load_config_text(text, "t.toml");
    BOOST_TEST_REQUIRE(from_file.has_error());
    BOOST_TEST(from_file.error().messages.size() == 2u);
    auto from_api = load_config_text(text, "request", {.allow_values = true});
    BOOST_TEST_REQUIRE(from_api.has_value(), (from_api ? "" : to_string(from_api.error())));
    const auto& provision = from_api->guests.at(0).provision;
    BOOST_TEST(provision.config_content.value_or("") == "mixtape = 1");
    BOOST_TEST(provision.secrets.at(0).value.value_or("") == "v4lue");
}

BOOST_AUTO_TEST_CASE(refused_host_references_are_reported_without_opening_the_file) {
    // The file does not exist: a refused caller must not learn even that.
    const std::string text =
        "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\n"
        "config_file = \"/nonexistent/jcard.toml\"\n"
        "ssh_keys = [ { user = \"admin\", public_key_file = \"/nonexistent/key.pub\" } ]\n"
        "secrets = [ { name = \"A\", file = \"/nonexistent/a\" }, { name = \"B\", "
        "credential = \"b\" } ]\n";
    auto refused =
        load_config_text(text, "request", {.allow_values = true, .allow_host_references = false});
    BOOST_TEST_REQUIRE(refused.has_error());
    BOOST_TEST(refused.error().refused_references);
    const auto& messages = refused.error().messages;
    BOOST_TEST_REQUIRE(messages.size() == 4u, to_string(refused.error()));
    const std::vector<std::string> keys{
        "provision.config_file", "provision.ssh_keys[0].public_key_file",
        "provision.secrets[0].file", "provision.secrets[1].credential"};
    for (std::size_t i = 0; i < keys.size(); ++i) {
        BOOST_TEST(messages[i].find(keys[i] + ": ") != std::string::npos, messages[i]);
        BOOST_TEST(messages[i].find("needs root") != std::string::npos, messages[i]);
        BOOST_TEST(messages[i].find("No such file") == std::string::npos, messages[i]);
    }
    // The same text from the config file follows the references (and finds them missing).
    auto from_file = load_config_text(text, "t.toml");
    BOOST_TEST_REQUIRE(from_file.has_error());
    BOOST_TEST(!from_file.error().refused_references);
}

BOOST_AUTO_TEST_SUITE_END()

// The guest rules alone, with a fake host: no file is opened, so the paths need not exist.
BOOST_AUTO_TEST_SUITE(guest_rules)

namespace {

// A host whose files are whatever the test says, and which notes every question it is asked.
class fake_host_files final : public file_probe {
  public:
    std::map<fs::path, std::string> problems;  // the problem each path has; others are fine
    fs::path credentials;
    mutable std::vector<std::string> asked;

    std::optional<std::string> file_problem(const fs::path& path, bool must_be_non_empty,
                                            std::uintmax_t max_size) const override {
        asked.push_back("file " + path.string() + (must_be_non_empty ? " non-empty" : "") +
                        " max " + std::to_string(max_size));
        return problem_of(path);
    }
    std::optional<std::string> public_key_file_problem(const fs::path& path,
                                                       std::uintmax_t max_size) const override {
        asked.push_back("key " + path.string() + " max " + std::to_string(max_size));
        return problem_of(path);
    }
    fs::path credentials_directory() const override { return credentials; }

  private:
    std::optional<std::string> problem_of(const fs::path& path) const {
        if (auto it = problems.find(path); it != problems.end())
            return it->second;
        return std::nullopt;
    }
};

guest_config guest_naming_host_files() {
    guest_config guest;
    guest.name = "vm1";
    guest.endpoint_text = "vsock:3:1024";
    guest.provision.config_file = "/nowhere/jcard.toml";
    guest.provision.ssh_keys.push_back({"admin", "", "/nowhere/admin.pub"});
    guest.provision.secrets.push_back({"GH", "/nowhere/gh", "", 0, std::nullopt});
    guest.provision.secrets.push_back({"KEY", "", "anthropic", 0, std::nullopt});
    return guest;
}

}  // namespace

BOOST_AUTO_TEST_CASE(each_named_file_is_asked_of_the_host_once_with_its_size_limit) {
    fake_host_files host;
    host.credentials = "/run/credentials/stereos-hostd.service";
    guest_config guest = guest_naming_host_files();
    const auto errors = check_guest(guest, "", link_timeouts{}, {}, host);
    BOOST_TEST(errors.empty());
    const std::vector<std::string> expected{
        "file /nowhere/jcard.toml max " + std::to_string(stereos::protocol::max_line_bytes),
        "key /nowhere/admin.pub max 65536",
        "file /nowhere/gh max 65536",
        "file /run/credentials/stereos-hostd.service/anthropic max 65536",
    };
    BOOST_TEST(host.asked == expected, boost::test_tools::per_element());
    // Completed as the daemon needs it: the endpoint parsed, the credential resolved.
    BOOST_TEST((guest.endpoint ==
                stereos::transport::endpoint{stereos::transport::vsock_endpoint{3, 1024}}));
    BOOST_TEST(guest.provision.secrets[1].file ==
               fs::path("/run/credentials/stereos-hostd.service/anthropic"));
}

BOOST_AUTO_TEST_CASE(the_hosts_answer_is_reported_under_the_key_naming_the_file) {
    fake_host_files host;
    host.problems["/nowhere/admin.pub"] = "\"/nowhere/admin.pub\" does not hold a key";
    guest_config guest = guest_naming_host_files();
    const auto errors = check_guest(guest, "guest[0].", link_timeouts{}, {}, host);
    // No credentials directory: the credential is refused without asking the host.
    BOOST_TEST_REQUIRE(errors.size() == 2u);
    BOOST_TEST(errors[0].key == "guest[0].provision.ssh_keys[0].public_key_file");
    BOOST_TEST(errors[0].message == "\"/nowhere/admin.pub\" does not hold a key");
    BOOST_TEST(errors[1].key == "guest[0].provision.secrets[1].credential");
    BOOST_TEST(errors[1].message.starts_with("$CREDENTIALS_DIRECTORY is not set"));
    BOOST_TEST(host.asked.size() == 3u);

    // Through the TOML reader the same answer gets the line of the key.
    fake_host_files toml_host;
    toml_host.problems["/nowhere/admin.pub"] = "\"/nowhere/admin.pub\" does not hold a key";
    const auto loaded = read_toml_config(
        "[[guest]]\nname = \"vm1\"\nendpoint = \"vsock:3\"\n[guest.provision]\nssh_keys = [\n"
        "  { user = \"admin\", public_key_file = \"/nowhere/admin.pub\" },\n]\n",
        "t.toml", {}, toml_host);
    BOOST_TEST_REQUIRE(loaded.has_error());
    BOOST_TEST_REQUIRE(loaded.error().messages.size() == 1u);
    BOOST_TEST(loaded.error().messages[0] ==
               "t.toml:6: guest[0].provision.ssh_keys[0].public_key_file: \"/nowhere/admin.pub\" "
               "does not hold a key");
}

BOOST_AUTO_TEST_CASE(a_refused_reference_is_never_asked_of_the_host) {
    fake_host_files host;
    host.credentials = "/run/credentials/stereos-hostd.service";
    guest_config guest = guest_naming_host_files();
    const auto errors =
        check_guest(guest, "", link_timeouts{}, {.allow_host_references = false}, host);
    BOOST_TEST(errors.size() == 4u);
    for (const auto& e : errors)
        BOOST_TEST(e.refused_reference, e.key);
    BOOST_TEST(host.asked.empty());
}

BOOST_AUTO_TEST_CASE(single_values_are_judged_with_the_files_wording) {
    BOOST_TEST(check_guest_name("vm-1.a_b").has_value());
    BOOST_TEST(check_guest_name(std::string(64, 'a')).has_value());
    BOOST_TEST(check_guest_name(std::string(65, 'a')).has_error());
    BOOST_TEST(check_guest_name("").has_error());
    BOOST_TEST(check_guest_name("a/b").error().message ==
               "invalid guest name \"a/b\" (1 to 64 of A-Z a-z 0-9 . _ -)");
    BOOST_TEST(check_secret_mode(0600).value() == 0600u);
    BOOST_TEST(check_secret_mode(010000).error().message ==
               "must be between 0 and 0o7777, got 0o10000");
    BOOST_TEST(check_secret_mode(-1).error().message == "must be between 0 and 0o7777, got -1");
    BOOST_TEST(parse_timeout("connect_timeout", "5m").value().count() == 300'000);
    BOOST_TEST(parse_timeout("connect_timeout", "6m").error().message ==
               "connect_timeout must be between 10ms and 5m, got \"6m\"");
    BOOST_TEST(parse_duration("0s").error().message == "duration \"0s\" must be greater than 0");
}

BOOST_AUTO_TEST_SUITE_END()

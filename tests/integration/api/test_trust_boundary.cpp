// The API as a trust boundary, end to end with a real stereos-hostd and fake guests: host files
// and credentials only on the word of root or the daemon's user, values kept out of the state
// directory, and the guest's input rules enforced before anything is sent (API and stereosctl).
#include <grp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <optional>
#include <random>

#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include "tests/integration/api/api_test_support.hpp"

namespace json = boost::json;
using namespace stereos::api_test;

namespace {

std::string provision_state(const std::string& socket, const std::string& guest) {
    return std::string(status_of(socket, guest).at("provision").at("state").as_string());
}

// A file only root may read, holding a distinctive token.
std::string root_only_file(const temp_dir& dir, const std::string& name,
                           const std::string& content) {
    const auto path = dir.file(name);
    write_text(path, content);
    BOOST_TEST_REQUIRE(::chmod(path.c_str(), 0600) == 0);
    return path;
}

std::size_t count_of(const std::string& text, const std::string& needle) {
    std::size_t count = 0;
    for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1))
        ++count;
    return count;
}

// Every regular file under `directory`, concatenated.
std::string everything_under(const std::string& directory) {
    std::string all;
    for (const auto& entry : std::filesystem::recursive_directory_iterator(directory)) {
        if (entry.is_regular_file())
            all += read_text(entry.path().string());
    }
    return all;
}

// The four kinds of host reference the exploit below uses, each in an otherwise valid body.
struct reference_case {
    std::string what;
    std::string provision;  // JSON
    std::string token;      // the file's content the guest would receive
};

struct reference_fixture {
    explicit reference_fixture(const temp_dir& dir) {
        std::filesystem::create_directories(dir.path / "credentials");
        secret_token = random_token("filesecret");
        config_token = random_token("configsecret");
        key_token = "ssh-ed25519 AAAA" + random_token("hostkey");
        credential_token = random_token("credentialsecret");
        const auto secret = root_only_file(dir, "daemon-only-secret", secret_token);
        const auto config = root_only_file(dir, "daemon-only.toml", "t = \"" + config_token + "\"");
        const auto key = root_only_file(dir, "daemon-only.pub", key_token + "\n");
        root_only_file(dir, "credentials/anthropic", credential_token);
        cases = {
            {"file", R"({"secrets":[{"name":"A","file":")" + secret + R"("}]})", secret_token},
            {"config_file", R"({"config_file":")" + config + R"("})", config_token},
            {"public_key_file",
             R"({"ssh_keys":[{"user":"admin","public_key_file":")" + key + R"("}]})",
             key_token.substr(16)},
            {"credential", R"({"secrets":[{"name":"A","credential":"anthropic"}]})",
             credential_token},
        };
    }
    std::map<std::string, std::string> daemon_env(const temp_dir& dir) const {
        return {{"CREDENTIALS_DIRECTORY", (dir.path / "credentials").string()}};
    }
    std::string secret_token, config_token, key_token, credential_token;
    std::vector<reference_case> cases;
};

std::string add_body(const std::string& name, const std::string& endpoint,
                     const std::string& provision) {
    return R"({"name":")" + name + R"(","endpoint":")" + endpoint + R"(","provision":)" +
           provision + "}";
}

}  // namespace

BOOST_AUTO_TEST_SUITE(trust_boundary)

// The exploit: a member of the API group (not root) names files only the daemon can read
// and points the guest at its own listener.
BOOST_AUTO_TEST_CASE(host_references_from_an_api_group_member_are_refused_with_403) {
    if (!can_switch_users() || ::getgrnam("nogroup") == nullptr) {
        // Printed for scripts/test, which lists every SKIP: line after a stage.
        std::cout << "SKIP: trust_boundary: the exploit test needs root, setpriv, curl and the "
                     "group nogroup\n";
        BOOST_TEST_MESSAGE("skipped: needs root, setpriv, curl and the group nogroup");
        return;
    }
    temp_dir dir;
    reference_fixture files(dir);
    fake_guests listener(dir, "caller", 1);  // the caller's own listener
    hostd_process hostd(dir, {}, "trace", quick_daemon, "nogroup", files.daemon_env(dir));
    const auto& sock = hostd.socket();
    const auto gid = std::to_string(::getgrnam("nogroup")->gr_gid);
    auto as_group_member = [&](const std::string& method, const std::string& target,
                               const std::string& body) {
        return run_command(
            {"setpriv", "--reuid=65534", "--regid=" + gid, "--clear-groups", "curl", "-s", "-w",
             "\n%{http_code}", "--unix-socket", sock, "-X", method, "-H",
             "Content-Type: application/json", "--data-binary", "@-", "http://localhost" + target},
            body);
    };

    int index = 0;
    for (const auto& c : files.cases) {
        BOOST_TEST_CONTEXT(c.what) {
            const auto name = "evil" + std::to_string(index++);
            auto answer = as_group_member("POST", "/v1/guests",
                                          add_body(name, listener.endpoint(), c.provision));
            BOOST_TEST(answer.out.ends_with("\n403"), answer.out << answer.err);
            BOOST_TEST(answer.out.find("\"forbidden\"") != std::string::npos, answer.out);
            BOOST_TEST(answer.out.find(c.what) != std::string::npos, answer.out);
            BOOST_TEST(answer.out.find("needs root") != std::string::npos, answer.out);
            BOOST_TEST(answer.out.find("send the value") != std::string::npos, answer.out);
            check_error(get(sock, "/v1/guests/" + name), 404, "guest_not_found");
        }
    }
    // Values are the group's to send: the same caller may add a guest that carries them.
    const auto value = random_token("groupvalue");
    auto with_value =
        as_group_member("POST", "/v1/guests",
                        add_body("ok", listener.endpoint(),
                                 R"({"secrets":[{"name":"A","value":")" + value + R"("}]})"));
    BOOST_TEST(with_value.out.ends_with("\n201"), with_value.out << with_value.err);
    BOOST_TEST(with_value.out.find(value) == std::string::npos, "the value was echoed");
    BOOST_TEST(eventually([&] { return provision_state(sock, "ok") == "done"; }, 30s));
    // Nor may the group slip a reference in through the provisioning replacement.
    auto replaced = as_group_member("PUT", "/v1/guests/ok/provision",
                                    R"({"provision":)" + files.cases[0].provision + "}");
    BOOST_TEST(replaced.out.ends_with("\n403"), replaced.out << replaced.err);

    const auto received = read_text(listener.record_file());
    BOOST_TEST(received.find(value) != std::string::npos, "the allowed value was not sent");
    for (const auto& c : files.cases)
        BOOST_TEST(received.find(c.token) == std::string::npos, c.what << " reached the caller");
    const auto log = hostd.log();
    BOOST_TEST(log.find(value) == std::string::npos, "a value reached the log");
    BOOST_TEST(undeclared_responses(sock) == 0.0);
}

BOOST_AUTO_TEST_CASE(host_references_from_root_are_followed) {
    temp_dir dir;
    reference_fixture files(dir);
    fake_guests guests(dir, "fg", 1);
    hostd_process hostd(dir, {}, "info", quick_daemon, "", files.daemon_env(dir));
    const auto& sock = hostd.socket();
    int index = 0;
    for (const auto& c : files.cases) {
        BOOST_TEST_CONTEXT(c.what) {
            const auto name = "rootref" + std::to_string(index++);
            auto added = post(sock, "/v1/guests", add_body(name, guests.endpoint(), c.provision));
            BOOST_TEST_REQUIRE(added.status == 201u, added.body);
            BOOST_TEST(eventually([&] { return provision_state(sock, name) == "done"; }, 30s));
            BOOST_TEST(eventually([&] {
                return read_text(guests.record_file()).find(c.token) != std::string::npos;
            }));
        }
    }
    // References from root are not secret and persist as references.
    const auto state = everything_under(hostd.state_dir());
    BOOST_TEST(state.find("daemon-only-secret") != std::string::npos, state);
    BOOST_TEST(state.find(files.secret_token) == std::string::npos, state);
    BOOST_TEST(undeclared_responses(sock) == 0.0);
}

BOOST_AUTO_TEST_CASE(a_state_record_without_the_trust_mark_does_not_follow_host_references) {
    // As a daemon that did not tell callers apart wrote a group member's references: after an
    // upgrade they must not be followed. A record marked as root's still is.
    temp_dir dir;
    reference_fixture files(dir);
    fake_guests guests(dir, "fg", 2);
    const auto secret_file = dir.file("daemon-only-secret");
    std::filesystem::create_directories(dir.file("state"));
    const auto reference = R"({"secrets":[{"name":"A","file":")" + secret_file + R"("}]})";
    write_text(dir.file("state") + "/guests.json",
               R"({"version":1,"guests":[{"name":"legacy","endpoint":")" + guests.endpoints()[0] +
                   R"(","provision":)" + reference + R"(},{"name":"marked","endpoint":")" +
                   guests.endpoints()[1] + R"(","provision":)" + reference +
                   R"(,"references_trusted":true}]})" + "\n");
    hostd_process hostd(dir, {}, "info", quick_daemon, "", files.daemon_env(dir));
    const auto& sock = hostd.socket();
    BOOST_TEST(eventually([&] { return provision_state(sock, "marked") == "done"; }, 30s));
    BOOST_TEST(eventually([&] {
                   return hostd.log().find("runtime guest \"legacy\" is not started") !=
                          std::string::npos;
               }),
               hostd.log());
    // Only the marked guest's listener received the file's content.
    const auto received = read_text(guests.record_file());
    BOOST_TEST(count_of(received, files.secret_token) == 1u, received);
    // The refused record is kept, not lost: shown in state invalid with its reason.
    BOOST_TEST(read_text(dir.file("state") + "/guests.json").find("legacy") != std::string::npos);
    const auto legacy = get(sock, "/v1/guests/legacy");
    BOOST_TEST_REQUIRE(legacy.status == 200u, legacy.body);
    BOOST_TEST(legacy.json().at("state").as_string() == "invalid", legacy.body);
    const auto listed = json::serialize(get(sock, "/v1/guests").json());
    BOOST_TEST(listed.find("\"name\":\"legacy\"") != std::string::npos, listed);
    // Its name is taken: a new guest of that name is a conflict, not a duplicate record.
    check_error(post(sock, "/v1/guests", add_body("legacy", guests.endpoints()[0], "{}")), 409,
                "guest_exists");
    // Values-only provisioning replaces the refused one, and the guest starts.
    const auto replaced = http(sock, "PUT", "/v1/guests/legacy/provision",
                               R"({"provision":{"secrets":[{"name":"S","value":"v4lue"}]}})");
    BOOST_TEST(replaced.status == 200u, replaced.body);
    BOOST_TEST(eventually([&] { return provision_state(sock, "legacy") == "done"; }, 30s));
    BOOST_TEST(count_of(read_text(dir.file("state") + "/guests.json"), "legacy") == 1u);
}

BOOST_AUTO_TEST_CASE(an_invalid_runtime_record_can_be_removed) {
    temp_dir dir;
    fake_guests guests(dir, "fg", 1);
    std::filesystem::create_directories(dir.file("state"));
    write_text(dir.file("state") + "/guests.json",
               R"({"version":1,"guests":[{"name":"broken","endpoint":"tcp:not-an-endpoint"}]})"
               "\n");
    hostd_process hostd(dir, {}, "info", quick_daemon);
    const auto& sock = hostd.socket();
    const auto shown = get(sock, "/v1/guests/broken");
    BOOST_TEST_REQUIRE(shown.status == 200u, shown.body);
    BOOST_TEST(shown.json().at("state").as_string() == "invalid");
    BOOST_TEST(
        std::string(shown.json().at("reason").as_string()).find("endpoint") != std::string::npos,
        shown.body);
    const auto removed = http(sock, "DELETE", "/v1/guests/broken");
    BOOST_TEST(removed.status == 200u, removed.body);
    BOOST_TEST(get(sock, "/v1/guests/broken").status == 404u);
    BOOST_TEST(read_text(dir.file("state") + "/guests.json").find("broken") == std::string::npos);
}

BOOST_AUTO_TEST_CASE(values_stay_out_of_the_state_dir_and_are_asked_for_after_a_restart) {
    temp_dir dir;
    fake_guests guests(dir, "fg", 1);
    const auto secret = random_token("memonlysecret");
    const auto config_value = random_token("memonlyconfig");
    const auto provision =
        R"({"config":"token = \")" + config_value +
        R"(\"\n","secrets":[{"name":"API_KEY","value":")" + secret +
        R"(","mode":384}],"mounts":[{"tag":"s0","guest_path":"/data","fs_type":"9p"}]})";
    {
        hostd_process hostd(dir, {}, "trace", quick_daemon);
        auto added =
            post(hostd.socket(), "/v1/guests", add_body("rt", guests.endpoint(), provision));
        BOOST_TEST_REQUIRE(added.status == 201u, added.body);
        BOOST_TEST_REQUIRE(
            eventually([&] { return provision_state(hostd.socket(), "rt") == "done"; }, 30s));
        const auto state = everything_under(hostd.state_dir());
        BOOST_TEST(state.find("API_KEY") != std::string::npos, "the record is missing: " << state);
        BOOST_TEST(state.find(secret) == std::string::npos, state);
        BOOST_TEST(state.find(config_value) == std::string::npos, state);
    }
    const auto sent_before = read_text(guests.record_file());
    BOOST_TEST_REQUIRE(sent_before.find(secret) != std::string::npos);

    hostd_process hostd(dir, {}, "trace", quick_daemon);
    const auto& sock = hostd.socket();
    const auto status = status_of(sock, "rt");
    const auto& prov = status.at("provision").as_object();
    BOOST_TEST(prov.at("state").as_string() == "needs_values", status);
    const auto missing = json::serialize(prov.at("missing"));
    BOOST_TEST(missing == R"(["config","secret API_KEY"])");
    BOOST_TEST(std::string(prov.at("message").as_string()).find("PATCH /v1/guests/rt/provision") !=
               std::string::npos);
    // Nothing is provisioned while values are missing, even once the guest is up.
    BOOST_TEST(eventually([&] { return status_of(sock, "rt").at("link").at("up").as_bool(); }));
    check_error(post(sock, "/v1/guests/rt/provision"), 409, "needs_values");
    BOOST_TEST(count_of(read_text(guests.record_file()), "\"mount\"") ==
               count_of(sent_before, "\"mount\""));

    // stereosctl shows the state, then supplies the values again.
    auto shown = run_command({program_ctl(), "--socket", sock, "status", "rt"});
    BOOST_TEST(shown.exit_code == 0, shown.err);
    BOOST_TEST(shown.out.find("needs_values") != std::string::npos, shown.out);
    BOOST_TEST(shown.out.find("secret API_KEY") != std::string::npos, shown.out);
    // Only the values: the mount and the rest of the provisioning stay as they are.
    const auto values_file = dir.file("values.json");
    write_text(values_file, R"({"config":"token = \")" + config_value +
                                R"(\"\n","secrets":[{"name":"API_KEY","value":")" + secret +
                                R"(","mode":384}]})");
    auto supplied =
        run_command({program_ctl(), "--socket", sock, "provision", "rt", "--values", values_file});
    BOOST_TEST(supplied.exit_code == 0, supplied.out << supplied.err);
    BOOST_TEST(supplied.out.find("done") != std::string::npos, supplied.out);
    // The provisioning as held, values redacted.
    auto held = run_command({program_ctl(), "--socket", sock, "provision", "rt", "--show"});
    BOOST_TEST(held.exit_code == 0, held.err);
    BOOST_TEST(held.out.find("\"guest_path\":\"/data\"") != std::string::npos, held.out);
    BOOST_TEST(held.out.find("\"name\":\"API_KEY\"") != std::string::npos, held.out);
    BOOST_TEST(held.out.find("<redacted") != std::string::npos, held.out);
    BOOST_TEST(held.out.find(secret) == std::string::npos, held.out);
    BOOST_TEST(held.out.find(config_value) == std::string::npos, held.out);
    BOOST_TEST(held.out.find("missing") == std::string::npos, held.out);
    const auto after = status_of(sock, "rt").at("provision").as_object();
    BOOST_TEST(after.at("state").as_string() == "done");
    BOOST_TEST(!after.contains("missing"));
    // The guest's run is the one the values went to before the restart (its ledger says so):
    // they are held for its next run, and nothing is sent again now.
    BOOST_TEST(after.at("already").as_int64() == 3, after);
    BOOST_TEST(after.at("sent").as_int64() == 0, after);
    const auto sent_after = read_text(guests.record_file()).substr(sent_before.size());
    BOOST_TEST(sent_after.find(secret) == std::string::npos, "the value was sent again");
    BOOST_TEST(sent_after.find(config_value) == std::string::npos);

    const auto state = everything_under(hostd.state_dir());
    BOOST_TEST(state.find(secret) == std::string::npos, state);
    BOOST_TEST(state.find(config_value) == std::string::npos, state);
    BOOST_TEST(hostd.log().find(secret) == std::string::npos, "a value reached the log");
}

BOOST_AUTO_TEST_CASE(each_input_rule_is_a_400_naming_the_field_before_anything_is_sent) {
    temp_dir dir;
    fake_guests guests(dir, "fg", 1);
    hostd_process hostd(dir, {{"vm1", guests.endpoint()}}, "info", quick_daemon);
    const auto& sock = hostd.socket();
    BOOST_TEST_REQUIRE(
        eventually([&] { return status_of(sock, "vm1").at("state").as_string() == "ready"; }));

    // A runtime guest, whose provisioning the API may replace.
    BOOST_TEST_REQUIRE(
        post(sock, "/v1/guests", R"({"name":"rt","endpoint":")" + guests.endpoint() + R"("})")
            .status == 201u);

    struct rule_case {
        std::string what, method, target, body, field;
    };
    const auto ep = guests.endpoint();
    const std::vector<rule_case> cases{
        {"secret name with a path", "POST", "/v1/guests/vm1/secrets",
         R"({"name":"../x","value":"v"})", "\"name\""},
        {"secret name with dot-dot", "POST", "/v1/guests/vm1/secrets",
         R"({"name":"a..b","value":"v"})", "\"name\""},
        {"mount over /etc", "POST", "/v1/guests/vm1/mounts",
         R"({"tag":"t","guest_path":"/etc","fs_type":"9p"})", "\"guest_path\""},
        {"mount under /nix", "POST", "/v1/guests/vm1/mounts",
         R"({"tag":"t","guest_path":"/nix/store/x","fs_type":"9p"})", "\"guest_path\""},
        {"mount relative", "POST", "/v1/guests/vm1/mounts",
         R"({"tag":"t","guest_path":"data","fs_type":"9p"})", "\"guest_path\""},
        {"mount fs_type", "POST", "/v1/guests/vm1/mounts",
         R"({"tag":"t","guest_path":"/data","fs_type":"ext4"})", "\"fs_type\""},
        {"ssh key type", "POST", "/v1/guests/vm1/ssh-keys",
         R"({"user":"admin","public_key":"AAAAC3Nza admin"})", "\"public_key\""},
        {"relative unix endpoint", "POST", "/v1/guests",
         R"({"name":"rel","endpoint":"unix:relative/path.sock"})", "endpoint"},
        {"relative hybrid endpoint", "POST", "/v1/guests",
         R"({"name":"rel","endpoint":"hybrid:v.sock:1024"})", "endpoint"},
        {"provision secret name", "POST", "/v1/guests",
         add_body("p1", ep, R"({"secrets":[{"name":"../x","value":"v"}]})"),
         "provision.secrets[0].name"},
        {"provision mount path", "POST", "/v1/guests",
         add_body("p2", ep, R"({"mounts":[{"tag":"t","guest_path":"/","fs_type":"9p"}]})"),
         "provision.mounts[0].guest_path"},
        {"provision fs_type", "POST", "/v1/guests",
         add_body("p3", ep, R"({"mounts":[{"tag":"t","guest_path":"/d","fs_type":"nfs"}]})"),
         "provision.mounts[0].fs_type"},
        {"provision ssh key", "POST", "/v1/guests",
         add_body("p4", ep, R"({"ssh_keys":[{"user":"admin","public_key":"hello"}]})"),
         "provision.ssh_keys[0].public_key"},
        {"replaced provisioning", "PUT", "/v1/guests/rt/provision",
         R"({"provision":{"secrets":[{"name":"a/b","value":"v"}]}})", "provision.secrets[0].name"},
    };
    for (const auto& c : cases) {
        BOOST_TEST_CONTEXT(c.what) {
            auto answer = http(sock, c.method, c.target, c.body);
            check_error(answer, 400, "bad_request");
            BOOST_TEST(answer.error_message().find(c.field) != std::string::npos, answer.body);
        }
    }
    // None of them reached the guest, nor added a guest.
    const auto received = read_text(guests.record_file());
    for (auto sent : {"inject_secret", "\"mount\"", "inject_ssh_key", "../x"})
        BOOST_TEST(received.find(sent) == std::string::npos, sent << " was sent: " << received);
    BOOST_TEST(get(sock, "/v1/guests").json().at("guests").as_array().size() == 2u);
    // A config guest's provisioning is the config file's.
    check_error(http(sock, "PUT", "/v1/guests/vm1/provision", R"({"provision":{}})"), 409,
                "guest_in_config");
    BOOST_TEST(undeclared_responses(sock) == 0.0);
}

BOOST_AUTO_TEST_CASE(stereosctl_refuses_bad_input_before_calling_the_daemon) {
    temp_dir dir;
    // Nothing listens here: an input error must come first, as a usage error (2), never as
    // "cannot reach the daemon" (3).
    const auto sock = dir.file("nobody.sock");
    const auto provision_file = dir.file("provision.json");
    write_text(provision_file, R"({"secrets":[{"name":"../x","value":"v"}],)"
                               R"("mounts":[{"tag":"t","guest_path":"/run/x","fs_type":"9p"}]})");
    const auto key_file = dir.file("key.pub");
    write_text(key_file, "not a key\n");
    struct ctl_case {
        std::vector<std::string> args;
        std::string field;
    };
    const std::vector<ctl_case> cases{
        {{"add", "vm9", "unix:relative.sock"}, "ENDPOINT"},
        {{"add", "vm9", "tcp:127.0.0.1:1", "--provision", provision_file},
         "provision.secrets[0].name"},
        {{"provision", "vm9", "--set", provision_file}, "provision.mounts[0].guest_path"},
        {{"secret", "vm9", "../x", "--from-file", key_file}, "SECRET_NAME"},
        {{"mount", "vm9", "t", "/proc"}, "PATH"},
        {{"ssh-key", "vm9", "admin", key_file}, "known SSH key type"},
    };
    for (const auto& c : cases) {
        std::vector<std::string> argv{program_ctl(), "--socket", sock};
        argv.insert(argv.end(), c.args.begin(), c.args.end());
        BOOST_TEST_CONTEXT(c.args[0] << " " << c.field) {
            auto result = run_command(argv);
            BOOST_TEST(result.exit_code == 2, result.out << result.err);
            BOOST_TEST(result.err.find(c.field) != std::string::npos, result.err);
        }
    }
}

BOOST_AUTO_TEST_SUITE_END()

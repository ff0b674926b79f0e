// stereos-hostd as a real process with real fake-guest processes over TCP, a unix socket and
// hybrid vsock: states, provisioning (the exact messages the guest received), guest restarts,
// SIGHUP reloads and a clean stop. The daemon's stderr log is how the tests observe it.
#include <algorithm>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <boost/test/unit_test.hpp>

#include <stereos/protocol/codec.hpp>
#include "tests/support/child_process.hpp"

using namespace std::chrono_literals;
using namespace stereos;
using testing::child_process;
using testing::read_text_file;
using testing::temp_directory;
using testing::write_text_file;

namespace {

constexpr auto patience = 30s;  // generous: the suite also runs under ASan on 2 busy cores

// One fake guest process; its endpoint comes from its "listening" line.
struct guest_process {
    guest_process(const temp_directory& dir, const std::string& label, const std::string& listen,
                  std::vector<std::string> extra = {})
        : record(dir / (label + ".rec")) {
        std::vector<std::string> argv{STEREOS_FAKEGUEST_BINARY, "--listen", listen, "--record",
                                      record.string()};
        argv.insert(argv.end(), extra.begin(), extra.end());
        process = std::make_unique<child_process>(argv, dir.path(), label);
        BOOST_TEST_REQUIRE(process->wait_for_output("listening ", patience, false).has_value(),
                           label << " did not start: " << process->stderr_text());
        endpoint = process->stdout_lines_with("listening ").at(0);
    }
    // SIGTERM (not the SIGKILL of child_process) so the program exits through LeakSanitizer;
    // it must leave no sanitizer report.
    ~guest_process() {
        process->send_signal(SIGTERM);
        process->wait_exit(patience);
        BOOST_TEST(process->stderr_text().find("Sanitizer") == std::string::npos,
                   process->stderr_text());
    }
    std::vector<std::string> received_lines() const {
        std::vector<std::string> lines;
        std::istringstream in(read_text_file(record));
        for (std::string line; std::getline(in, line);)
            lines.push_back(line);
        return lines;
    }
    // What the guest received apart from polling (get_health) and keepalive (ping).
    std::vector<std::string> received_commands() const {
        std::vector<std::string> out;
        for (auto& l : received_lines()) {
            if (l != R"({"type":"get_health"})" && l != R"({"type":"ping"})")
                out.push_back(l);
        }
        return out;
    }
    std::filesystem::path record;
    std::unique_ptr<child_process> process;
    std::string endpoint;
};

std::string line_of(const protocol::host_message& m) {
    auto line = protocol::encode(m);
    line->pop_back();
    return *line;
}

std::string daemon_section(const temp_directory& dir) {
    return testing::test_daemon_section(dir,
                                        "health_interval = \"200ms\"\nlog_level = \"debug\"\n");
}

std::string guest_section(const std::string& name, const std::string& endpoint) {
    return "\n[[guest]]\nname = \"" + name + "\"\nendpoint = \"" + endpoint + "\"\n";
}

std::unique_ptr<child_process> start_daemon(const temp_directory& dir,
                                            const std::string& label = "hostd",
                                            const std::map<std::string, std::string>& env = {}) {
    return std::make_unique<child_process>(
        std::vector<std::string>{STEREOS_HOSTD_BINARY, "--config", (dir / "config.toml").string(),
                                 "--log", "stderr"},
        dir.path(), label, env);
}

std::size_t occurrences(const std::string& text, const std::string& needle) {
    std::size_t n = 0;
    for (auto pos = text.find(needle); pos != std::string::npos; pos = text.find(needle, pos + 1))
        ++n;
    return n;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(daemon_process)

BOOST_AUTO_TEST_CASE(three_guests_over_tcp_unix_and_hybrid_come_up_and_get_provisioned) {
    temp_directory dir("stereos-daemon");
    guest_process tcp_guest(dir, "tcp-guest", "tcp:127.0.0.1:0", {"--health-state", "healthy"});
    guest_process unix_guest(dir, "unix-guest", "unix:" + (dir / "unix-guest.sock").string());
    guest_process hybrid_guest(dir, "hybrid-guest",
                               "hybrid:" + (dir / "v.sock").string() + ":1024");

    const std::string secret = "sk-provision-secret-4f1d";
    const std::string jcard = "mixtape = \"base\"\n[secrets]\nTOKEN = \"jcard-secret-77aa\"\n";
    write_text_file(dir / "secret", secret);
    write_text_file(dir / "jcard.toml", jcard);
    write_text_file(dir / "key.pub", "ssh-ed25519 AAAAfromfile admin@host\n");
    write_text_file(
        dir / "config.toml",
        daemon_section(dir) + guest_section("vm-tcp", tcp_guest.endpoint) +
            "[guest.provision]\n"
            "config_file = \"" +
            (dir / "jcard.toml").string() +
            "\"\n"
            "ssh_keys = [ { user = \"admin\", public_key = \"ssh-ed25519 AAAAinline admin\" },\n"
            "             { user = \"root\", public_key_file = \"" +
            (dir / "key.pub").string() +
            "\" } ]\n"
            "secrets = [ { name = \"API_KEY\", file = \"" +
            (dir / "secret").string() +
            "\", mode = 0o600 } ]\n"
            "mounts = [ { tag = \"share0\", guest_path = \"/home/admin/workspace\", fs_type = "
            "\"9p\" },\n"
            "           { tag = \"share1\", guest_path = \"/data\", fs_type = \"virtiofs\", "
            "read_only = true } ]\n" +
            guest_section("vm-unix", unix_guest.endpoint) +
            guest_section("vm-hybrid", hybrid_guest.endpoint));
    auto hostd = start_daemon(dir);

    BOOST_TEST(hostd->wait_for_output("vm-tcp: state connecting -> healthy", patience).has_value(),
               hostd->stderr_text());
    BOOST_TEST(hostd->wait_for_output("vm-unix: state connecting -> ready", patience).has_value());
    BOOST_TEST(
        hostd->wait_for_output("vm-hybrid: state connecting -> ready", patience).has_value());
    BOOST_TEST_REQUIRE(hostd->wait_for_output("vm-tcp: provisioned", patience).has_value(),
                       hostd->stderr_text());

    // The exact sequence the reference host sends, byte for byte.
    const std::vector<std::string> expected{
        line_of(protocol::config_payload{jcard}),
        line_of(protocol::ssh_key_payload{"admin", "ssh-ed25519 AAAAinline admin"}),
        line_of(protocol::ssh_key_payload{"root", "ssh-ed25519 AAAAfromfile admin@host"}),
        line_of(protocol::secret_payload{"API_KEY", secret, 0600}),
        line_of(protocol::mount_payload{"share0", "/home/admin/workspace", "9p", false}),
        line_of(protocol::mount_payload{"share1", "/data", "virtiofs", true}),
    };
    BOOST_TEST(tcp_guest.received_commands() == expected, boost::test_tools::per_element());
    // Guests without a provision table get nothing but polling.
    BOOST_TEST(unix_guest.received_commands().empty());
    BOOST_TEST(hybrid_guest.received_commands().empty());

    hostd->send_signal(SIGTERM);
    BOOST_TEST(hostd->wait_exit(patience).value_or(-1) == 0);
    const auto log = hostd->stderr_text();
    BOOST_TEST(log.find(secret) == std::string::npos, "the secret reached the log");
    BOOST_TEST(log.find("jcard-secret-77aa") == std::string::npos,
               "config content reached the log");
    // Stopping the daemon never shuts a guest down.
    for (const auto* g : {&tcp_guest, &unix_guest, &hybrid_guest}) {
        for (const auto& l : g->received_lines())
            BOOST_TEST(l.find("shutdown") == std::string::npos);
    }
}

BOOST_AUTO_TEST_CASE(a_restarted_guest_goes_disconnected_then_back_and_is_provisioned_again) {
    temp_directory dir("stereos-daemon");
    auto guest = std::make_unique<guest_process>(dir, "guest-1", "tcp:127.0.0.1:0");
    const auto endpoint = guest->endpoint;
    write_text_file(dir / "secret", "restart-secret");
    write_text_file(dir / "config.toml",
                    daemon_section(dir) + guest_section("vm1", endpoint) +
                        "[guest.provision]\nsecrets = [ { name = \"K\", file = \"" +
                        (dir / "secret").string() + "\" } ]\n");
    auto hostd = start_daemon(dir);
    auto first = hostd->wait_for_output("vm1: provisioned", patience);
    BOOST_TEST_REQUIRE(first.has_value(), hostd->stderr_text());
    // Long enough that the new run's start time is clearly later than the first's (a shift
    // beyond the 3 s tolerance).
    std::this_thread::sleep_for(4500ms);

    guest->process->send_signal(SIGKILL);
    guest->process->wait_exit(patience);
    BOOST_TEST(hostd->wait_for_output("vm1: state ready -> disconnected", patience, true, *first)
                   .has_value(),
               hostd->stderr_text());

    // Same address, new process: a rebooted guest.
    guest = std::make_unique<guest_process>(dir, "guest-2", endpoint);
    auto back = hostd->wait_for_output("vm1: state disconnected -> ready", patience, true, *first);
    BOOST_TEST_REQUIRE(back.has_value(), hostd->stderr_text());
    BOOST_TEST(hostd->wait_for_output("vm1: provisioned", patience, true, *back).has_value(),
               hostd->stderr_text());
    BOOST_TEST(
        guest->received_commands() ==
            std::vector<std::string>{line_of(protocol::secret_payload{"K", "restart-secret", 0})},
        boost::test_tools::per_element());
    hostd->send_signal(SIGTERM);
    BOOST_TEST(hostd->wait_exit(patience).value_or(-1) == 0);
}

BOOST_AUTO_TEST_CASE(sighup_adds_and_removes_guests_and_a_bad_reload_is_rejected) {
    temp_directory dir("stereos-daemon");
    guest_process g1(dir, "g1", "tcp:127.0.0.1:0");
    guest_process g2(dir, "g2", "unix:" + (dir / "g2.sock").string());
    guest_process g3(dir, "g3", "hybrid:" + (dir / "g3.vsock").string() + ":1024");
    write_text_file(dir / "config.toml", daemon_section(dir) + guest_section("vm1", g1.endpoint) +
                                             guest_section("vm2", g2.endpoint));
    auto hostd = start_daemon(dir);
    BOOST_TEST_REQUIRE(
        hostd->wait_for_output("vm1: state connecting -> ready", patience).has_value());
    BOOST_TEST_REQUIRE(
        hostd->wait_for_output("vm2: state connecting -> ready", patience).has_value());

    // vm2 removed, vm3 added, vm1 untouched.
    write_text_file(dir / "config.toml", daemon_section(dir) + guest_section("vm1", g1.endpoint) +
                                             guest_section("vm3", g3.endpoint));
    hostd->send_signal(SIGHUP);
    BOOST_TEST(hostd
                   ->wait_for_output("reload applied: 1 added, 1 removed, 0 with a new "
                                     "endpoint, 0 updated, 1 unchanged",
                                     patience)
                   .has_value(),
               hostd->stderr_text());
    BOOST_TEST(hostd->wait_for_output("vm3: state connecting -> ready", patience).has_value());
    BOOST_TEST(hostd->wait_for_output("vm2: guest link stopped", patience).has_value());
    const auto after_reload = hostd->stderr_text();
    BOOST_TEST(occurrences(after_reload, "vm1: link up") == 1u, "vm1's link was disturbed");

    // A bad file is rejected, naming the key; the running guests stay.
    write_text_file(dir / "config.toml", daemon_section(dir) + guest_section("vm1", g1.endpoint) +
                                             "request_timout = \"5s\"\n");
    hostd->send_signal(SIGHUP);
    BOOST_TEST(
        hostd->wait_for_output("reload rejected", patience, true, after_reload.size()).has_value());
    const auto log = hostd->stderr_text();
    BOOST_TEST(log.find("request_timout", after_reload.size()) != std::string::npos);
    BOOST_TEST(log.find("vm3: guest link stopped") == std::string::npos);
    BOOST_TEST(occurrences(log, "vm1: link up") == 1u);

    hostd->send_signal(SIGTERM);
    BOOST_TEST(hostd->wait_exit(patience).value_or(-1) == 0);
}

BOOST_AUTO_TEST_CASE(runtime_guests_survive_sigkill_and_restart) {
    temp_directory dir("stereos-daemon");
    guest_process g1(dir, "g1", "tcp:127.0.0.1:0");
    guest_process g2(dir, "g2", "unix:" + (dir / "g2.sock").string());
    write_text_file(dir / "config.toml", daemon_section(dir));
    auto hostd = start_daemon(dir);
    BOOST_TEST_REQUIRE(hostd->wait_for_output("starting stereos-hostd", patience).has_value());
    const auto api = [&](const std::vector<std::string>& args) {
        std::vector<std::string> argv{"/usr/bin/curl", "-sS",
                                      "--max-time",    "20",
                                      "--unix-socket", (dir / "api.sock").string()};
        argv.insert(argv.end(), args.begin(), args.end());
        return testing::run_command(argv);
    };
    for (const auto& [name, endpoint] :
         {std::pair{"rt1", g1.endpoint}, std::pair{"rt2", g2.endpoint}}) {
        auto added =
            api({"-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d",
                 R"({"name":")" + std::string(name) + R"(","endpoint":")" + endpoint + R"("})",
                 "http://localhost/v1/guests"});
        BOOST_TEST(added.out == "201", added.err);
    }
    BOOST_TEST_REQUIRE(
        hostd->wait_for_output("rt2: state connecting -> ready", patience).has_value());

    // No clean stop: the state file must already hold both guests, and nothing half-written.
    hostd->send_signal(SIGKILL);
    hostd->wait_exit(patience);
    // Beside it: the ledgers' digest key. These guests were given nothing, so they have no
    // delivery ledger to write.
    std::vector<std::string> state_files;
    for (const auto& e : std::filesystem::directory_iterator(dir / "state"))
        state_files.push_back(e.path().filename().string());
    std::sort(state_files.begin(), state_files.end());
    BOOST_TEST(state_files == (std::vector<std::string>{"guests.json", "ledger.key"}),
               boost::test_tools::per_element());

    auto restarted = start_daemon(dir, "hostd-2");
    BOOST_TEST(restarted->wait_for_output("rt1: state connecting -> ready", patience).has_value(),
               restarted->stderr_text());
    BOOST_TEST(restarted->wait_for_output("rt2: state connecting -> ready", patience).has_value());
    auto status = api({"http://localhost/v1/guests/rt1"});
    BOOST_TEST(status.out.find("\"source\":\"runtime\"") != std::string::npos, status.out);
    restarted->send_signal(SIGTERM);
    BOOST_TEST(restarted->wait_exit(patience).value_or(-1) == 0);
}

// ---- exactly once per run of the guest ----------------------------------------------------

namespace {
std::string provisioned_guest_config(const temp_directory& dir, const std::string& endpoint,
                                     const std::string& daemon_extra = "") {
    return testing::test_daemon_section(
               dir, "health_interval = \"200ms\"\nlog_level = \"debug\"\n" + daemon_extra) +
           guest_section("vm1", endpoint) + "[guest.provision]\nconfig_file = \"" +
           (dir / "jcard.toml").string() +
           "\"\n"
           "ssh_keys = [ { user = \"admin\", public_key = \"ssh-ed25519 AAAAfirst one@desk\" },\n"
           "             { user = \"admin\", public_key = \"ssh-ed25519 AAAAsecond two@laptop\" } "
           "]\n"
           "secrets = [ { name = \"K1\", file = \"" +
           (dir / "secret").string() +
           "\" } ]\n"
           "mounts = [ { tag = \"work\", guest_path = \"/work\", fs_type = \"virtiofs\" } ]\n";
}
}  // namespace

BOOST_AUTO_TEST_CASE(a_daemon_restart_sends_nothing_again_and_a_new_host_boot_sends_all) {
    temp_directory dir("stereos-daemon");
    guest_process guest(dir, "guest", "tcp:127.0.0.1:0");
    write_text_file(dir / "jcard.toml", "mixtape = \"base\"\n");
    write_text_file(dir / "secret", "ledger-secret-9c1e");
    write_text_file(dir / "config.toml", provisioned_guest_config(dir, guest.endpoint));
    auto hostd = start_daemon(dir);
    BOOST_TEST_REQUIRE(hostd->wait_for_output("vm1: provisioned", patience).has_value(),
                       hostd->stderr_text());
    const auto first = guest.received_commands();
    // Both of admin's keys in one request: stereosd rewrites the file with each.
    BOOST_TEST(first == (std::vector<std::string>{
                            line_of(protocol::config_payload{"mixtape = \"base\"\n"}),
                            line_of(protocol::ssh_key_payload{"admin",
                                                              "ssh-ed25519 AAAAfirst one@desk\n"
                                                              "ssh-ed25519 AAAAsecond two@laptop"}),
                            line_of(protocol::secret_payload{"K1", "ledger-secret-9c1e", 0}),
                            line_of(protocol::mount_payload{"work", "/work", "virtiofs", false})}),
               boost::test_tools::per_element());
    hostd->send_signal(SIGTERM);
    BOOST_TEST_REQUIRE(hostd->wait_exit(patience).value_or(-1) == 0);
    const auto ledger_file = dir / "state" / "ledgers" / "vm1.ledger.json";
    const auto ledger = read_text_file(ledger_file);
    BOOST_TEST(ledger.find("secret K1") != std::string::npos, ledger);
    BOOST_TEST(ledger.find("ledger-secret-9c1e") == std::string::npos, "a value in the ledger");

    // Restarted, the guest untouched: the same run, nothing sent again.
    auto again = start_daemon(dir, "hostd-2");
    BOOST_TEST_REQUIRE(
        again
            ->wait_for_output("vm1: the same run of the guest as before the daemon started: 4 "
                              "items already delivered",
                              patience)
            .has_value(),
        again->stderr_text());
    BOOST_TEST_REQUIRE(
        again->wait_for_output("vm1: provisioning: nothing missing in this run", patience)
            .has_value(),
        again->stderr_text());
    std::this_thread::sleep_for(1s);  // five health polls
    BOOST_TEST(guest.received_commands().size() == first.size());
    again->send_signal(SIGTERM);
    BOOST_TEST_REQUIRE(again->wait_exit(patience).value_or(-1) == 0);

    // A ledger from another host boot: every guest restarted since, so all of it is sent.
    auto text = read_text_file(ledger_file);
    const auto at = text.find("\"boot_id\":\"");
    BOOST_TEST_REQUIRE(at != std::string::npos, text);
    text.replace(at + 11, 8, "00000000");
    write_text_file(ledger_file, text);
    auto third = start_daemon(dir, "hostd-3");
    BOOST_TEST_REQUIRE(
        third->wait_for_output("vm1: provisioned: 4 items sent", patience).has_value(),
        third->stderr_text());
    BOOST_TEST(guest.received_commands().size() == 2 * first.size());
    third->send_signal(SIGTERM);
    BOOST_TEST(third->wait_exit(patience).value_or(-1) == 0);
    for (const auto* log : {&hostd, &again, &third})
        BOOST_TEST((*log)->stderr_text().find("ledger-secret-9c1e") == std::string::npos);
}

BOOST_AUTO_TEST_CASE(a_reload_sends_only_what_changed_and_keeps_the_link) {
    temp_directory dir("stereos-daemon");
    guest_process guest(dir, "guest", "tcp:127.0.0.1:0");
    write_text_file(dir / "jcard.toml", "mixtape = \"base\"\n");
    write_text_file(dir / "secret", "before-rotation-1111");
    write_text_file(dir / "config.toml", provisioned_guest_config(dir, guest.endpoint));
    auto hostd = start_daemon(dir);
    auto provisioned = hostd->wait_for_output("vm1: provisioned", patience);
    BOOST_TEST_REQUIRE(provisioned.has_value(), hostd->stderr_text());
    const auto sent_before = guest.received_commands().size();

    // Only an interval changes: applied to the live link, nothing sent, no reconnect.
    write_text_file(dir / "config.toml",
                    provisioned_guest_config(dir, guest.endpoint, "keepalive_interval = \"3s\"\n"));
    hostd->send_signal(SIGHUP);
    auto reloaded = hostd->wait_for_output("reload applied", patience, true, *provisioned);
    BOOST_TEST_REQUIRE(reloaded.has_value(), hostd->stderr_text());
    BOOST_TEST(hostd->stderr_text().find("new timings applied to the live link", *provisioned) !=
               std::string::npos);
    std::this_thread::sleep_for(1s);
    BOOST_TEST(guest.received_commands().size() == sent_before);

    // The secret file rotated: that secret alone goes to the running guest.
    write_text_file(dir / "secret", "after-rotation-2222");
    hostd->send_signal(SIGHUP);
    auto rotated = hostd->wait_for_output("vm1: provisioned: 1 items sent, 3 already delivered",
                                          patience, true, *reloaded);
    BOOST_TEST_REQUIRE(rotated.has_value(), hostd->stderr_text());
    const auto commands = guest.received_commands();
    BOOST_TEST_REQUIRE(commands.size() == sent_before + 1);
    BOOST_TEST(commands.back() ==
               line_of(protocol::secret_payload{"K1", "after-rotation-2222", 0}));
    // One connection throughout: the link was never restarted.
    BOOST_TEST(occurrences(hostd->stderr_text(), "vm1: link up") == 1u, hostd->stderr_text());
    hostd->send_signal(SIGTERM);
    BOOST_TEST(hostd->wait_exit(patience).value_or(-1) == 0);
}

// A guest whose uptime answers alternate between 5 and 2^63-1: the wild value is a protocol
// violation, and the link resets; the 5 after each reconnect is an earlier start than the
// guest's last word, so it is never taken for a restart.
BOOST_AUTO_TEST_CASE(wild_uptimes_are_protocol_errors_not_a_provisioning_storm) {
    temp_directory dir("stereos-daemon");
    guest_process guest(dir, "guest", "tcp:127.0.0.1:0",
                        {"--uptime-sequence", "5,9223372036854775807"});
    write_text_file(dir / "secret", "storm-secret-3c3c");
    write_text_file(dir / "config.toml",
                    daemon_section(dir) + guest_section("vm1", guest.endpoint) +
                        "[guest.provision]\nsecrets = [ { name = \"K\", file = \"" +
                        (dir / "secret").string() + "\" } ]\n");
    auto hostd = start_daemon(dir);
    BOOST_TEST_REQUIRE(hostd->wait_for_output("vm1: provisioned", patience).has_value(),
                       hostd->stderr_text());
    std::this_thread::sleep_for(6s);  // dozens of 200 ms polls, each other one wild
    const auto log = hostd->stderr_text();
    BOOST_TEST(log.find("uptime_seconds: 9223372036854775807 is outside 0..") != std::string::npos,
               log);
    BOOST_TEST(occurrences(log, "protocol error") >= 2u, log);
    BOOST_TEST(guest.received_commands().size() == 1u);
    BOOST_TEST(occurrences(log, "guest restarted") == 0u);
    hostd->send_signal(SIGTERM);
    BOOST_TEST(hostd->wait_exit(patience).value_or(-1) == 0);
}

// A state file that exists but cannot be read holds guests the daemon must not lose: it stops
// with the reason, and leaves the file where it is.
// ---- runtime guests' values sealed at rest ---------------------------------------------------

namespace {
// A credentials directory as systemd makes it for LoadCredentialEncrypted=stereos-hostd.seal-key.
std::filesystem::path credentials_with_key(const temp_directory& dir, const std::string& name,
                                           char fill) {
    const auto credentials = dir / name;
    std::filesystem::create_directories(credentials);
    std::string key(32, fill);
    key[0] = '\x01';
    key[31] = '\x7f';
    write_text_file(credentials / "stereos-hostd.seal-key", key);
    return credentials;
}

testing::command_result api_call(const temp_directory& dir, const std::vector<std::string>& args) {
    std::vector<std::string> argv{
        "/usr/bin/curl", "-sS", "--max-time", "20", "--unix-socket", (dir / "api.sock").string()};
    argv.insert(argv.end(), args.begin(), args.end());
    return testing::run_command(argv);
}

// Every file under `root`, read whole: where a value must not be.
std::string every_file_under(const std::filesystem::path& root) {
    std::string all;
    for (const auto& e : std::filesystem::recursive_directory_iterator(root)) {
        if (e.is_regular_file())
            all += e.path().string() + "\n" + read_text_file(e.path()) + "\n";
    }
    return all;
}
}  // namespace

BOOST_AUTO_TEST_CASE(a_sealed_runtime_value_survives_a_daemon_restart_and_a_guest_reboot) {
    temp_directory dir("stereos-daemon");
    const auto credentials = credentials_with_key(dir, "credentials", 'k');
    const std::map<std::string, std::string> with_key{
        {"CREDENTIALS_DIRECTORY", credentials.string()}};
    const std::string value = "sealed-value-5c1e9a77d0";
    auto guest = std::make_unique<guest_process>(dir, "guest-1", "tcp:127.0.0.1:0");
    const auto endpoint = guest->endpoint;
    write_text_file(dir / "config.toml", daemon_section(dir));

    auto hostd = start_daemon(dir, "hostd-1", with_key);
    BOOST_TEST_REQUIRE(hostd->wait_for_output("API listening on", patience).has_value(),
                       hostd->stderr_text());
    BOOST_TEST(hostd->stderr_text().find("values are sealed in the state directory (key id") !=
                   std::string::npos,
               hostd->stderr_text());
    auto ping = api_call(dir, {"http://localhost/v1/ping"});
    BOOST_TEST(
        ping.out.find(R"("values_at_rest":{"mode":"sealed","key_id":")") != std::string::npos,
        ping.out << ping.err);
    auto added = api_call(
        dir, {"-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d",
              R"({"name":"rt1","endpoint":")" + endpoint +
                  R"(","provision":{"secrets":[{"name":"K","value":")" + value + R"("}]}})",
              "http://localhost/v1/guests"});
    BOOST_TEST(added.out == "201", added.err);
    BOOST_TEST_REQUIRE(hostd->wait_for_output("rt1: provisioned", patience).has_value(),
                       hostd->stderr_text());
    const auto given = std::vector<std::string>{line_of(protocol::secret_payload{"K", value, 0})};
    BOOST_TEST(guest->received_commands() == given, boost::test_tools::per_element());
    hostd->send_signal(SIGTERM);
    BOOST_TEST(hostd->wait_exit(patience).value_or(-1) == 0);
    BOOST_TEST(hostd->stderr_text().find(value) == std::string::npos, "the value is in the log");

    // A new run of the guest: its start time clearly later than the first's (beyond the 3 s
    // tolerance), at the same address.
    std::this_thread::sleep_for(4500ms);
    guest->process->send_signal(SIGKILL);
    guest->process->wait_exit(patience);
    guest = std::make_unique<guest_process>(dir, "guest-2", endpoint);

    auto restarted = start_daemon(dir, "hostd-2", with_key);
    BOOST_TEST_REQUIRE(restarted->wait_for_output("rt1: provisioned", patience).has_value(),
                       restarted->stderr_text());
    BOOST_TEST(restarted->stderr_text().find("rt1: runtime guest's 1 sealed value opened") !=
                   std::string::npos,
               restarted->stderr_text());
    BOOST_TEST(guest->received_commands() == given, boost::test_tools::per_element());
    restarted->send_signal(SIGTERM);
    BOOST_TEST(restarted->wait_exit(patience).value_or(-1) == 0);
    BOOST_TEST(restarted->stderr_text().find(value) == std::string::npos);
    const auto state = every_file_under(dir / "state");
    BOOST_TEST(state.find("sealed_values") != std::string::npos, state);
    BOOST_TEST(state.find(value) == std::string::npos, "the value is in the state directory");

    // The state directory on another host (another key): the guest waits for its values.
    temp_directory other("stereos-daemon-other");
    std::filesystem::copy(dir / "state", other / "state", std::filesystem::copy_options::recursive);
    write_text_file(other / "config.toml", daemon_section(other));
    auto elsewhere = start_daemon(
        other, "hostd-other",
        {{"CREDENTIALS_DIRECTORY", credentials_with_key(other, "credentials", 'o').string()}});
    BOOST_TEST_REQUIRE(elsewhere->wait_for_output("API listening on", patience).has_value(),
                       elsewhere->stderr_text());
    BOOST_TEST(
        elsewhere
            ->wait_for_output("rt1: runtime guest's sealed values cannot all be used", patience)
            .has_value(),
        elsewhere->stderr_text());
    BOOST_TEST(
        elsewhere->stderr_text().find("secret K: sealed with another key") != std::string::npos,
        elsewhere->stderr_text());
    auto status = api_call(other, {"http://localhost/v1/guests/rt1"});
    BOOST_TEST(status.out.find(R"("state":"needs_values")") != std::string::npos, status.out);
    elsewhere->send_signal(SIGTERM);
    BOOST_TEST(elsewhere->wait_exit(patience).value_or(-1) == 0);
    BOOST_TEST(elsewhere->stderr_text().find(value) == std::string::npos);
    // Nothing more was sent to the guest.
    BOOST_TEST(guest->received_commands() == given, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(without_a_seal_key_the_status_says_memory_and_why) {
    temp_directory dir("stereos-daemon");
    write_text_file(dir / "config.toml", daemon_section(dir));
    const auto check = [&](const std::map<std::string, std::string>& env, const std::string& label,
                           const std::string& reason) {
        auto hostd = start_daemon(dir, label, env);
        BOOST_TEST_REQUIRE(hostd->wait_for_output("API listening on", patience).has_value(),
                           hostd->stderr_text());
        auto ping = api_call(dir, {"http://localhost/v1/ping"});
        BOOST_TEST(ping.out.find(R"("values_at_rest":{"mode":"memory","reason":")" + reason) !=
                       std::string::npos,
                   label << ": " << ping.out << ping.err);
        BOOST_TEST(
            hostd->stderr_text().find("values stay in memory only: " + reason) != std::string::npos,
            hostd->stderr_text());
        hostd->send_signal(SIGTERM);
        BOOST_TEST(hostd->wait_exit(patience).value_or(-1) == 0);
    };
    check({{"CREDENTIALS_DIRECTORY", ""}}, "no-directory", "$CREDENTIALS_DIRECTORY is not set");
    std::filesystem::create_directories(dir / "empty-credentials");
    check({{"CREDENTIALS_DIRECTORY", (dir / "empty-credentials").string()}}, "no-credential",
          "no credential stereos-hostd.seal-key");
    write_text_file(dir / "empty-credentials" / "stereos-hostd.seal-key", "too short\n");
    check({{"CREDENTIALS_DIRECTORY", (dir / "empty-credentials").string()}}, "short-key",
          "credential stereos-hostd.seal-key is shorter than a key (32 bytes)");
}

BOOST_AUTO_TEST_CASE(an_unreadable_state_file_stops_start_up) {
    temp_directory dir("stereos-daemon");
    std::filesystem::create_directories(dir / "state" / "guests.json");
    write_text_file(dir / "config.toml", daemon_section(dir));
    auto hostd = start_daemon(dir);
    BOOST_TEST(hostd->wait_exit(patience).value_or(-1) == 1);
    BOOST_TEST(hostd->stderr_text().find("guests.json cannot be read: Is a directory") !=
                   std::string::npos,
               hostd->stderr_text());
    BOOST_TEST(std::filesystem::is_directory(dir / "state" / "guests.json"));
}

BOOST_AUTO_TEST_CASE(an_invalid_config_stops_start_up_with_every_error_named) {
    temp_directory dir("stereos-daemon");
    write_text_file(dir / "config.toml", daemon_section(dir) +
                                             guest_section("bad name!", "vsok:3") +
                                             guest_section("vm2", "tcp:127.0.0.1:99999"));
    auto check = testing::run_command(
        {STEREOS_HOSTD_BINARY, "--config", (dir / "config.toml").string(), "--check-config"});
    BOOST_TEST(check.status == 1);
    BOOST_TEST(check.err.find("guest[0].name") != std::string::npos, check.err);
    BOOST_TEST(check.err.find("guest[0].endpoint") != std::string::npos, check.err);
    BOOST_TEST(check.err.find("guest[1].endpoint") != std::string::npos, check.err);
    BOOST_TEST(check.err.find((dir / "config.toml").string() + ":") != std::string::npos);

    write_text_file(dir / "config.toml", daemon_section(dir));
    auto ok = testing::run_command(
        {STEREOS_HOSTD_BINARY, "--config", (dir / "config.toml").string(), "--check-config"});
    BOOST_TEST(ok.status == 0, ok.err);
}

BOOST_AUTO_TEST_SUITE_END()

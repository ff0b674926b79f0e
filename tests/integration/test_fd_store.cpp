// Guest connections across a restart through the fd store, with this test playing systemd: it
// receives what the daemon stores on SIGTERM (FDSTORE=1 datagrams with their fds on a real
// NOTIFY_SOCKET), then passes the fds to the next daemon process as systemd would (LISTEN_FDS,
// LISTEN_FDNAMES). Real fake-guest processes count their connections and deliveries.
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <boost/test/unit_test.hpp>

#include "tests/support/child_process.hpp"
#include "tests/support/fake_fd_store.hpp"

using namespace std::chrono_literals;
using stereos::testing::child_process;
using stereos::testing::fake_fd_store;
using stereos::testing::memfd_text;
using stereos::testing::read_text_file;
using stereos::testing::temp_directory;
using stereos::testing::write_text_file;

namespace {

constexpr auto patience = 30s;  // generous: the suite also runs under ASan on 2 busy cores

std::size_t occurrences(const std::string& text, const std::string& needle) {
    std::size_t n = 0;
    for (auto pos = text.find(needle); pos != std::string::npos; pos = text.find(needle, pos + 1))
        ++n;
    return n;
}

std::string guest_section(const std::string& name, const std::string& endpoint) {
    return "\n[[guest]]\nname = \"" + name + "\"\nendpoint = \"" + endpoint + "\"\n";
}

}  // namespace

BOOST_AUTO_TEST_SUITE(fd_store)

BOOST_AUTO_TEST_CASE(
    a_restart_through_the_fd_store_keeps_each_connection_and_provisions_nothing_again) {
    temp_directory dir("stereos-fdstore");
    std::mt19937_64 random{std::random_device{}()};
    const std::string secret = "sk-fdstore-" + std::to_string(random()) + "-value";
    write_text_file(dir / "secret", secret);
    // Four guests in one process; before the second start "gone" leaves the config and "moved"
    // is pointed at gone's socket.
    child_process guests(
        {STEREOS_FAKEGUEST_BINARY, "--listen", "unix:" + (dir / "g%d.sock").string(), "--count",
         "4", "--health-state", "healthy", "--log-connections", "--log-requests"},
        dir.path(), "guests");
    BOOST_TEST_REQUIRE(guests.wait_for_output("listening ", patience, false).has_value(),
                       guests.stderr_text());
    const auto daemon = stereos::testing::test_daemon_section(dir, "health_interval = \"200ms\"\n");
    const auto kept = guest_section("kept", "unix:" + (dir / "g0.sock").string()) +
                      "[guest.provision]\nsecrets = [ { name = \"API_KEY\", file = \"" +
                      (dir / "secret").string() + "\" } ]\n" +
                      guest_section("other", "unix:" + (dir / "g1.sock").string());
    write_text_file(dir / "config.toml",
                    daemon + kept + guest_section("gone", "unix:" + (dir / "g2.sock").string()) +
                        guest_section("moved", "unix:" + (dir / "g3.sock").string()));

    fake_fd_store store(dir / "notify.sock");
    const std::map<std::string, std::string> env{{"NOTIFY_SOCKET", (dir / "notify.sock").string()}};
    const std::vector<std::string> args{STEREOS_HOSTD_BINARY, "--config",
                                        (dir / "config.toml").string(), "--log", "stderr"};
    {
        child_process first(args, dir.path(), "first", env);
        for (const auto* guest : {"kept", "other", "gone", "moved"}) {
            BOOST_TEST_REQUIRE(
                first
                    .wait_for_output(std::string(guest) + ": state connecting -> healthy", patience)
                    .has_value(),
                first.stderr_text());
        }
        BOOST_TEST_REQUIRE(first.wait_for_output("kept: provisioned", patience).has_value());
        first.send_signal(SIGTERM);
        BOOST_TEST(first.wait_exit(patience).value_or(-1) == 0, first.stderr_text());
        BOOST_TEST(
            first.stderr_text().find("handed 4 of 4 live guest connections") != std::string::npos,
            first.stderr_text());
        BOOST_TEST(first.stderr_text().find("kept: state") != std::string::npos);
        BOOST_TEST(first.stderr_text().find("-> disconnected") == std::string::npos);
        // The store answered the barrier: systemd had read everything before the exit.
        BOOST_TEST(first.stderr_text().find("did not confirm") == std::string::npos,
                   first.stderr_text());
    }
    store.wait_quiet(500ms);
    const auto stored = store.stored();
    // Two fds, whatever the number of guests: the description and the socket pair's end.
    BOOST_TEST(stored.size() == 2u);
    BOOST_TEST_REQUIRE(stored.count("guest-links") == 1u);
    BOOST_TEST_REQUIRE(stored.count("guest-sockets") == 1u);
    // The description holds where each connection goes and what was unread, never a value.
    const auto description = memfd_text(stored.find("guest-links")->second);
    BOOST_TEST(description.find((dir / "g0.sock").string()) != std::string::npos, description);
    BOOST_TEST(description.find(secret) == std::string::npos);
    BOOST_TEST(description.find("sk-fdstore") == std::string::npos);
    const auto first_messages = store.messages();
    BOOST_TEST(std::count_if(first_messages.begin(), first_messages.end(),
                             [](const auto& m) { return m.starts_with("BARRIER=1"); }) == 1);

    // The next process: "gone" is no longer configured, "moved" has another endpoint.
    write_text_file(dir / "config.toml",
                    daemon + kept + guest_section("moved", "unix:" + (dir / "g2.sock").string()));
    std::vector<int> fds;
    std::vector<std::string> names;
    for (const auto& [name, fd] : stored) {
        fds.push_back(fd);
        names.push_back(name);
    }
    store.clear_messages();
    child_process second(args, dir.path(), "second", env, fds, names);
    // As systemd's store would, this process keeps its copies until told to remove them.
    BOOST_TEST_REQUIRE(second.wait_for_output("resuming 4 guest connections", patience).has_value(),
                       second.stderr_text());
    for (const auto* guest : {"kept", "other", "moved"}) {
        BOOST_TEST(
            second.wait_for_output(std::string(guest) + ": state connecting -> healthy", patience)
                .has_value(),
            second.stderr_text());
    }
    BOOST_TEST(second
                   .wait_for_output("that the previous daemon process handed over is closed: "
                                    "no such guest any more",
                                    patience)
                   .has_value(),
               second.stderr_text());
    BOOST_TEST(
        second.wait_for_output("kept: the same run of the guest as before", patience).has_value(),
        second.stderr_text());
    BOOST_TEST(second
                   .wait_for_output("moved: the connection the previous daemon process handed "
                                    "over is closed: it was made to unix:" +
                                        (dir / "g3.sock").string(),
                                    patience)
                   .has_value(),
               second.stderr_text());
    store.wait_quiet(500ms);
    const auto second_messages = store.messages();
    for (const auto* name : {"guest-sockets", "guest-links"}) {
        BOOST_TEST(std::count(second_messages.begin(), second_messages.end(),
                              "FDSTOREREMOVE=1\nFDNAME=" + std::string(name)) == 1,
                   name << " was not taken out of the store");
    }
    store.flush();

    // The guests saw one connection each (and "moved" a new one at its new endpoint), and the
    // secret went out once.
    const auto guest_log = guests.stdout_text();
    BOOST_TEST(occurrences(guest_log, "accepted ") == 5u, guest_log);
    BOOST_TEST(occurrences(guest_log, "g2.sock #2") == 1u, guest_log);
    BOOST_TEST(occurrences(guest_log, "delivered inject_secret") == 1u, guest_log);
    second.send_signal(SIGTERM);
    BOOST_TEST(second.wait_exit(patience).value_or(-1) == 0, second.stderr_text());
    BOOST_TEST(second.stderr_text().find(secret) == std::string::npos);
    guests.send_signal(SIGTERM);
    guests.wait_exit(patience);
}

BOOST_AUTO_TEST_CASE(without_a_notification_socket_a_stop_closes_every_connection_as_before) {
    temp_directory dir("stereos-fdstore");
    child_process guests({STEREOS_FAKEGUEST_BINARY, "--listen",
                          "unix:" + (dir / "g0.sock").string(), "--log-connections"},
                         dir.path(), "guests");
    BOOST_TEST_REQUIRE(guests.wait_for_output("listening ", patience, false).has_value());
    write_text_file(dir / "config.toml",
                    stereos::testing::test_daemon_section(dir) +
                        guest_section("g", "unix:" + (dir / "g0.sock").string()));
    child_process hostd(
        {STEREOS_HOSTD_BINARY, "--config", (dir / "config.toml").string(), "--log", "stderr"},
        dir.path(), "hostd", {{"NOTIFY_SOCKET", ""}});  // also where the tests run under systemd
    BOOST_TEST_REQUIRE(hostd.wait_for_output("g: state connecting -> ready", patience).has_value(),
                       hostd.stderr_text());
    hostd.send_signal(SIGTERM);
    BOOST_TEST(hostd.wait_exit(patience).value_or(-1) == 0);
    BOOST_TEST(hostd.stderr_text().find("fd store") == std::string::npos, hostd.stderr_text());
    BOOST_TEST(hostd.stderr_text().find("g: guest link stopped") != std::string::npos,
               hostd.stderr_text());
    guests.send_signal(SIGTERM);
    guests.wait_exit(patience);
}

BOOST_AUTO_TEST_SUITE_END()

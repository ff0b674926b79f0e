// stereos-hostd under systemd: socket activation, and the sd_notify protocol read from a real
// NOTIFY_SOCKET datagram socket:
// READY=1 once serving, STATUS=, WATCHDOG=1 at half of WATCHDOG_USEC, RELOADING=1 with
// MONOTONIC_USEC then READY=1 around SIGHUP, STOPPING=1 on SIGTERM.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <csignal>
#include <string>
#include <vector>

#include <boost/test/unit_test.hpp>

#include "tests/support/child_process.hpp"

using namespace std::chrono_literals;
using stereos::testing::child_process;
using stereos::testing::temp_directory;
using stereos::testing::write_text_file;

namespace {

class notify_listener {
  public:
    explicit notify_listener(const std::filesystem::path& path) : path_(path) {
        fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
        BOOST_TEST_REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        timeval tv{0, 100'000};
        ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    }
    ~notify_listener() { ::close(fd_); }

    // Collects datagrams until `done` says so or `limit` passes.
    template <class Predicate>
    bool collect_until(Predicate done, std::chrono::milliseconds limit) {
        const auto end = std::chrono::steady_clock::now() + limit;
        while (!done(messages)) {
            if (std::chrono::steady_clock::now() > end)
                return false;
            std::array<char, 4096> buffer{};
            const auto n = ::recv(fd_, buffer.data(), buffer.size(), 0);
            if (n > 0)
                messages.emplace_back(buffer.data(), static_cast<std::size_t>(n));
        }
        return true;
    }

    std::vector<std::string> messages;

  private:
    std::filesystem::path path_;
    int fd_ = -1;
};

std::size_t count_with(const std::vector<std::string>& messages, std::string_view prefix,
                       std::size_t from = 0) {
    std::size_t n = 0;
    for (std::size_t i = from; i < messages.size(); ++i)
        n += messages[i].starts_with(prefix);
    return n;
}

std::optional<std::size_t> index_of(const std::vector<std::string>& messages,
                                    std::string_view prefix, std::size_t from = 0) {
    for (std::size_t i = from; i < messages.size(); ++i) {
        if (messages[i].starts_with(prefix))
            return i;
    }
    return std::nullopt;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(systemd_notify)

BOOST_AUTO_TEST_CASE(the_daemon_reports_ready_status_watchdog_reload_and_stopping) {
    temp_directory dir("stereos-notify");
    write_text_file(dir / "config.toml", stereos::testing::test_daemon_section(dir) +
                                             "[[guest]]\nname = \"vm1\"\nendpoint = \"unix:" +
                                             (dir / "nobody.sock").string() + "\"\n");
    notify_listener listener(dir / "notify.sock");
    child_process daemon(
        {STEREOS_HOSTD_BINARY, "--config", (dir / "config.toml").string(), "--log", "stderr"},
        dir.path(), "hostd",
        {{"NOTIFY_SOCKET", (dir / "notify.sock").string()}, {"WATCHDOG_USEC", "400000"}});

    // Ready, a status line, then watchdog pings every ~200 ms.
    BOOST_TEST_REQUIRE(
        listener.collect_until([](const auto& m) { return count_with(m, "WATCHDOG=1") >= 3; }, 20s),
        daemon.stderr_text());
    BOOST_TEST(listener.messages.front() == "READY=1");
    const auto status = index_of(listener.messages, "STATUS=");
    BOOST_TEST_REQUIRE(status.has_value());
    BOOST_TEST(listener.messages[*status].starts_with("STATUS=1 guest: 1 "));

    // SIGHUP: RELOADING=1 with the monotonic time, then READY=1 again.
    const auto before_reload = listener.messages.size();
    daemon.send_signal(SIGHUP);
    BOOST_TEST_REQUIRE(listener.collect_until(
        [&](const auto& m) {
            auto reloading = index_of(m, "RELOADING=1", before_reload);
            return reloading && index_of(m, "READY=1", *reloading + 1);
        },
        20s));
    const auto& reloading =
        listener.messages[*index_of(listener.messages, "RELOADING=1", before_reload)];
    BOOST_TEST(reloading.find("\nMONOTONIC_USEC=") != std::string::npos);

    // SIGTERM: STOPPING=1 and a clean exit.
    const auto before_stop = listener.messages.size();
    daemon.send_signal(SIGTERM);
    BOOST_TEST(listener.collect_until(
        [&](const auto& m) { return index_of(m, "STOPPING=1", before_stop).has_value(); }, 20s));
    BOOST_TEST(daemon.wait_exit(20s).value_or(-1) == 0);
}

BOOST_AUTO_TEST_CASE(without_a_watchdog_no_watchdog_pings_are_sent) {
    temp_directory dir("stereos-notify");
    write_text_file(dir / "config.toml", stereos::testing::test_daemon_section(dir));
    notify_listener listener(dir / "notify.sock");
    child_process daemon({STEREOS_HOSTD_BINARY, "--config", (dir / "config.toml").string()},
                         dir.path(), "hostd", {{"NOTIFY_SOCKET", (dir / "notify.sock").string()}});
    BOOST_TEST_REQUIRE(listener.collect_until(
        [](const auto& m) { return index_of(m, "READY=1").has_value(); }, 20s));
    listener.collect_until([](const auto&) { return false; }, 1500ms);
    BOOST_TEST(count_with(listener.messages, "WATCHDOG=1") == 0u);
    daemon.send_signal(SIGTERM);
    BOOST_TEST(daemon.wait_exit(20s).value_or(-1) == 0);
}

// With WatchdogSec=30s the ping timer waits 15 s: stopping must cancel it (and every other
// timer) rather than wait for it, or systemd's stop hangs for that long.
BOOST_AUTO_TEST_CASE(sigterm_stops_the_daemon_within_a_second_despite_a_long_watchdog) {
    temp_directory dir("stereos-notify");
    std::string guests;
    for (const auto* name : {"vm1", "vm2", "vm3"})
        guests += "[[guest]]\nname = \"" + std::string(name) +
                  "\"\nendpoint = \"unix:" + (dir / (std::string(name) + ".sock")).string() +
                  "\"\n";
    write_text_file(dir / "config.toml", stereos::testing::test_daemon_section(dir) + guests);
    notify_listener listener(dir / "notify.sock");
    child_process daemon(
        {STEREOS_HOSTD_BINARY, "--config", (dir / "config.toml").string(), "--log", "stderr"},
        dir.path(), "hostd",
        {{"NOTIFY_SOCKET", (dir / "notify.sock").string()}, {"WATCHDOG_USEC", "30000000"}});
    BOOST_TEST_REQUIRE(listener.collect_until(
        [](const auto& m) { return count_with(m, "WATCHDOG=1") >= 1; }, 20s));
    // Let the guests' reconnect timers and the status timer get going too.
    listener.collect_until([](const auto&) { return false; }, 1500ms);

    const auto sent = std::chrono::steady_clock::now();
    daemon.send_signal(SIGTERM);
    const auto status = daemon.wait_exit(20s);
    const auto took = std::chrono::steady_clock::now() - sent;
    BOOST_TEST(status.value_or(-1) == 0, daemon.stderr_text());
    BOOST_TEST(took < 1s, std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                              << " ms from SIGTERM to exit");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(socket_activation)

BOOST_AUTO_TEST_CASE(the_daemon_serves_the_api_on_the_socket_systemd_passes) {
    temp_directory dir("stereos-activate");
    const auto activated = dir / "activated.sock";
    const auto configured = dir / "configured.sock";
    write_text_file(dir / "config.toml",
                    stereos::testing::test_daemon_section(dir, {}, "configured.sock"));
    // systemd-socket-activate listens, and starts the daemon on the first connection with the
    // listening socket as fd 3 named "api", as stereos-hostd.socket does.
    child_process activator(
        {"/usr/bin/systemd-socket-activate", "--listen", activated.string(), "--fdname=api",
         STEREOS_HOSTD_BINARY, "--config", (dir / "config.toml").string(), "--log", "stderr"},
        dir.path(), "activate");
    BOOST_TEST_REQUIRE(activator.wait_for_output("Listening on", 20s).has_value(),
                       activator.stderr_text());
    auto ping =
        stereos::testing::run_command({"/usr/bin/curl", "-sS", "--max-time", "20", "--unix-socket",
                                       activated.string(), "http://localhost/v1/ping"});
    BOOST_TEST(ping.status == 0, ping.err);
    BOOST_TEST(ping.out.find("\"status\":\"ok\"") != std::string::npos, ping.out);
    BOOST_TEST(activator.wait_for_output("activated.sock, passed by systemd", 20s).has_value(),
               activator.stderr_text());
    BOOST_TEST(activator.wait_for_output("configured.sock is not used", 20s).has_value(),
               activator.stderr_text());
    // The configured path is not used when a socket is passed.
    BOOST_TEST(!std::filesystem::exists(configured));
    activator.send_signal(SIGTERM);
    BOOST_TEST(activator.wait_exit(20s).value_or(-1) == 0, activator.stderr_text());
}

BOOST_AUTO_TEST_SUITE_END()

#include "daemon/host_daemon.hpp"

#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <string_view>

#include <systemd/sd-daemon.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/signal_set.hpp>

#include <stereos/util/completion_tokens.hpp>
#include "daemon/fd_store.hpp"
#include "daemon/logging.hpp"

namespace stereos::daemon {

namespace asio = boost::asio;

namespace {
using transport::rethrow_if_failed;
using transport::use_tuple;

// The path a listening unix socket is bound to; empty when it has none.
std::string unix_socket_path(int fd) {
    sockaddr_un address{};
    socklen_t size = sizeof address;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size) != 0 ||
        address.sun_family != AF_UNIX || size <= offsetof(sockaddr_un, sun_path) ||
        address.sun_path[0] == '\0')
        return {};
    return std::string(address.sun_path,
                       strnlen(address.sun_path, size - offsetof(sockaddr_un, sun_path)));
}

// How long a stop waits for replies guests owe before handing their connections on; a guest
// that has not answered by then has its connection closed, as without the hand-over.
constexpr auto connection_hand_over_wait = std::chrono::seconds(2);

std::uint64_t monotonic_usec() {
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    return static_cast<std::uint64_t>(now.tv_sec) * 1'000'000u +
           static_cast<std::uint64_t>(now.tv_nsec) / 1000u;
}
}  // namespace

std::uint64_t raise_file_limit() {
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0)
        return 0;
    if (limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
        getrlimit(RLIMIT_NOFILE, &limit);
    }
    return limit.rlim_cur;
}

host_daemon::host_daemon(asio::io_context& io, host_daemon_options options, config::config initial)
    : io_(io),
      options_(std::move(options)),
      config_(std::move(initial)),
      store_(config_.daemon.state_dir),
      registry_(io.get_executor(), bus_, store_, options_.at_rest),
      signals_(io, SIGINT, SIGTERM, SIGHUP),
      status_timer_(io),
      watchdog_timer_(io) {}

host_daemon::~host_daemon() = default;

void host_daemon::apply_log_level() {
    auto level = log::parse_severity(config::to_string(config_.daemon.level));
    if (options_.log_level_override)
        level = log::parse_severity(*options_.log_level_override);
    if (level)
        log::set_level(*level);
}

void host_daemon::start() {
    apply_log_level();
    std::error_code ec;
    std::filesystem::create_directories(config_.daemon.state_dir, ec);
    if (ec) {
        log::error("cannot create state directory " + config_.daemon.state_dir.string() + ": " +
                   ec.message() + "; runtime guests cannot be persisted");
    }
    const auto files = raise_file_limit();
    log::info("starting stereos-hostd " STEREOS_VERSION " with " +
              std::to_string(config_.guests.size()) + " configured guests (config " +
              options_.config_path.string() + ")");
    auto passed = fd_store::take_passed_fds();
    for (const auto& problem : passed.problems)
        log::warning(problem);
    if (!passed.connections.empty()) {
        log::notice("resuming " + std::to_string(passed.connections.size()) +
                    " guest connections the previous daemon process handed over");
    }
    registry_.offer_connections(std::move(passed.connections));
    for (const auto& problem : registry_.start(config_))
        log::error(problem);
    // Each guest holds one socket; the API and journal need a few more.
    if (files > 0 && registry_.size() + 64 > files) {
        log::warning("open-file limit " + std::to_string(files) + " is too low for " +
                     std::to_string(registry_.size()) +
                     " guests: raise LimitNOFILE= or some links will fail with EMFILE");
    }
    // Listening before READY=1, so clients started after us find the socket.
    api_ = std::make_unique<api_server>(io_.get_executor(), api_options_from(config_.daemon),
                                        registry_, bus_);
    if (auto fd = passed.api) {
        api_->adopt(*fd);
        const auto passed = unix_socket_path(*fd);
        if (passed != config_.daemon.api_socket)
            log::notice("api_socket " + config_.daemon.api_socket.string() +
                        " is not used: systemd passes the API socket" +
                        (passed.empty() ? std::string() : " " + passed));
    } else {
        api_->listen();
    }
    api_->start();
    asio::co_spawn(io_, handle_signals(), rethrow_if_failed);
    asio::co_spawn(io_, status_loop(), rethrow_if_failed);
    std::uint64_t watchdog_usec = 0;
    if (sd_watchdog_enabled(0, &watchdog_usec) > 0 && watchdog_usec > 0) {
        asio::co_spawn(io_, watchdog_loop(std::chrono::microseconds(watchdog_usec / 2)),
                       rethrow_if_failed);
    }
    sd_notify(0, "READY=1");
    notify_status();
}

// STATUS= follows the guests' states; once a second bounds the cost with thousands of guests.
asio::awaitable<void> host_daemon::status_loop() {
    while (!stopping_) {
        status_timer_.expires_after(std::chrono::seconds(1));
        co_await status_timer_.async_wait(use_tuple);
        // Every state change publishes an event: no event and the same guests, no work.
        if (!stopping_ &&
            (bus_.last_seq() != status_seq_ || registry_.size() != status_guest_count_)) {
            status_seq_ = bus_.last_seq();
            status_guest_count_ = registry_.size();
            notify_status();
        }
    }
}

// Pings systemd from the event loop itself, so a wedged loop stops the pings and gets restarted.
asio::awaitable<void> host_daemon::watchdog_loop(std::chrono::microseconds interval) {
    while (!stopping_) {
        sd_notify(0, "WATCHDOG=1");
        watchdog_timer_.expires_after(interval);
        co_await watchdog_timer_.async_wait(use_tuple);
    }
}

asio::awaitable<void> host_daemon::handle_signals() {
    while (!stopping_) {
        auto [ec, signal] = co_await signals_.async_wait(use_tuple);
        if (ec)
            co_return;
        if (signal == SIGHUP) {
            co_await async_reload();
        } else {
            log::notice(signal == SIGTERM ? "SIGTERM: stopping" : "SIGINT: stopping");
            co_await async_stop();
        }
    }
}

asio::awaitable<void> host_daemon::async_reload() {
    const auto usec = std::to_string(monotonic_usec());
    sd_notify(0, ("RELOADING=1\nMONOTONIC_USEC=" + usec).c_str());
    log::notice("SIGHUP: reloading " + options_.config_path.string());
    auto next = config::load_config_file(options_.config_path);
    if (!next) {
        log::error("reload rejected, the running config stays in force:\n" +
                   config::to_string(next.error()));
    } else if (auto problem = co_await registry_.async_apply(*next)) {
        log::error("reload rejected, the running config stays in force: " + *problem);
    } else {
        config_ = std::move(*next);
        apply_log_level();
    }
    sd_notify(0, "READY=1");
    notify_status();
}

asio::awaitable<void> host_daemon::async_stop() {
    if (stopping_)
        co_return;
    stopping_ = true;
    sd_notify(0, "STOPPING=1");
    if (api_)
        api_->stop();  // first: no new work while the links stop
    if (config_.daemon.hand_over_connections && fd_store::available()) {
        const auto until = std::chrono::steady_clock::now() + connection_hand_over_wait;
        auto handed = co_await registry_.async_hand_over_all(until);
        const auto live = handed.size();
        std::vector<std::string> problems;
        const auto stored = fd_store::store(std::move(handed), problems);
        for (const auto& problem : problems)
            log::warning(problem);
        // Sent, which is all a process can know: systemd 252 does not say what it kept (with
        // FileDescriptorStoreMax= too low it logs a warning itself).
        log::info("handed " + std::to_string(stored) + " of " + std::to_string(live) +
                  " live guest connections to systemd's fd store for the next process");
    } else {
        co_await registry_.async_stop_all();
    }
    // io.run() returns, and the process exits, only once nothing is left waiting.
    status_timer_.cancel();
    watchdog_timer_.cancel();
    boost::system::error_code ignored;
    signals_.cancel(ignored);
    log::info("stopped");
}

std::string host_daemon::status_line() const {
    // Runs every second: count into an array indexed by state, no per-guest allocation.
    constexpr auto state_count = static_cast<std::size_t>(guest_state::shutdown) + 1;
    std::array<std::size_t, state_count> counts{};
    registry_.for_each(
        [&](const managed_guest& g) { ++counts[static_cast<std::size_t>(g.machine().state())]; });
    std::vector<std::pair<std::string_view, std::size_t>> present;
    for (std::size_t i = 0; i < state_count; ++i) {
        if (counts[i] != 0)
            present.emplace_back(to_string(static_cast<guest_state>(i)), counts[i]);
    }
    std::sort(present.begin(), present.end());  // by state name, as before
    std::string line =
        std::to_string(registry_.size()) + (registry_.size() == 1 ? " guest" : " guests");
    std::string_view sep = ": ";
    for (const auto& [state, n] : present) {
        line += sep;
        line += std::to_string(n);
        line += ' ';
        line += state;
        sep = ", ";
    }
    return line;
}

void host_daemon::notify_status() {
    auto line = status_line();
    if (line == last_status_)
        return;
    last_status_ = line;
    sd_notify(0, ("STATUS=" + line).c_str());
}

}  // namespace stereos::daemon

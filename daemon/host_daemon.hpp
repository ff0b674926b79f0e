// The running daemon: config, guest registry, event bus and signal handling on one
// io_context. main() parses the command line and hands over to this.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include "config/config.hpp"
#include "daemon/api/server.hpp"
#include "daemon/event_bus.hpp"
#include "daemon/guest/guest_registry.hpp"
#include "daemon/guest/state_store.hpp"

namespace stereos::daemon {

struct host_daemon_options {
    std::filesystem::path config_path;
    std::optional<std::string> log_level_override;  // --log-level wins over the config
    // The key sealing runtime guests' values in the state directory (load_seal_key), or why
    // there is none.
    values_at_rest at_rest;
};

class host_daemon {
  public:
    host_daemon(boost::asio::io_context& io, host_daemon_options options, config::config initial);
    ~host_daemon();

    // Starts guests and signal handling; the io_context then runs until SIGTERM/SIGINT.
    void start();

    // SIGHUP: re-reads the config; a bad one is logged and the old one stays in force.
    boost::asio::awaitable<void> async_reload();
    // SIGTERM/SIGINT: stops accepting work, stops links (guests are never shut down).
    boost::asio::awaitable<void> async_stop();

    guest_registry& registry() noexcept { return registry_; }
    event_bus& bus() noexcept { return bus_; }
    const config::config& current_config() const noexcept { return config_; }
    // The local API; null before start().
    api_server* api() noexcept { return api_.get(); }

    // "5 guests: 3 healthy, 1 booting, 1 disconnected"
    std::string status_line() const;

  private:
    boost::asio::awaitable<void> handle_signals();
    boost::asio::awaitable<void> status_loop();
    boost::asio::awaitable<void> watchdog_loop(std::chrono::microseconds interval);
    void apply_log_level();
    void notify_status();

    boost::asio::io_context& io_;
    host_daemon_options options_;
    config::config config_;
    event_bus bus_;
    state_store store_;
    guest_registry registry_;
    std::unique_ptr<api_server> api_;  // after registry_ and bus_: destroyed before them
    // Members, so that stopping can cancel them: a pending wait keeps io.run() from returning.
    boost::asio::signal_set signals_;
    boost::asio::steady_timer status_timer_;
    boost::asio::steady_timer watchdog_timer_;
    bool stopping_ = false;
    std::string last_status_;
    // The bus's last_seq() and the guest count when STATUS= was last worked out.
    std::uint64_t status_seq_ = 0;
    std::size_t status_guest_count_ = 0;
};

// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns the limit now in force.
std::uint64_t raise_file_limit();

}  // namespace stereos::daemon

// The local API's server: HTTP/1.1 on a unix socket with Boost.Beast. The socket file
// (api_socket_file.hpp), an accept loop with a connection limit, and one api_session per
// connection (api_session.hpp: timeouts, requests, the event stream), whose peer's rights come
// from SO_PEERCRED and the user database (peer.hpp). The routes are in routes.hpp. Runs on the
// daemon's one io_context, no mutexes; only the user database lookups, which may block, run on a
// pool of two threads (user_lookup_cache.hpp) and send back plain values.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>

#include "config/config.hpp"
#include "daemon/api/audit.hpp"
#include "daemon/api/metrics.hpp"
#include "daemon/api/peer.hpp"
#include "daemon/api/routes.hpp"
#include "daemon/api/session.hpp"
#include "daemon/api/user_lookup_cache.hpp"
#include "daemon/event_bus.hpp"
#include "daemon/guest/guest_registry.hpp"
#include "daemon/log_throttle.hpp"

namespace stereos::daemon {

struct api_server_options {
    std::filesystem::path socket_path = "/run/stereos-hostd/api.sock";
    // Members may use every route; "" = only root and the daemon's user. A group that does not
    // exist is logged and treated as "".
    std::string group;
    // Members may also use GET routes; "" = GET routes follow the rule above.
    std::string read_group;
    // Connections beyond this are answered 503 server_busy and closed (a few dozen more are
    // accepted to say so; past that, accepting pauses until one closes).
    std::size_t max_connections = 256;
    std::chrono::milliseconds idle_timeout{60'000};   // keep-alive connection with no request
    std::chrono::milliseconds read_timeout{10'000};   // from a request's first byte to its end
    std::chrono::milliseconds write_timeout{10'000};  // one response (or event batch) written
    // Asks the user database about a peer's uid, on the lookup pool (tests inject a slow one).
    user_lookup_cache::lookup_function user_lookup = &look_up_user;
    std::size_t event_queue_capacity = 1024;  // events queued per /v1/events subscriber
};

// The options the config gives (socket, groups); the rest keep their defaults. Reads
// `api_read_group` when the config model has it.
api_server_options api_options_from(const config::daemon_settings& settings);

// Joins the lookup pools that servers left behind because a lookup was hung in NSS (see
// ~api_server); blocks until those lookups return. For tests and tools, never the daemon's exit.
std::size_t join_lookup_pools_left_behind();

class api_server {
  public:
    api_server(const boost::asio::any_io_executor& executor, api_server_options options,
               guest_registry& registry, event_bus& bus);
    ~api_server();
    api_server(const api_server&) = delete;
    api_server& operator=(const api_server&) = delete;

    // Creates the socket: a stale socket file is replaced (but not one a live process still
    // serves, nor a file that is not a socket), mode 0660 with the group, or 0600 without one.
    // Throws std::runtime_error on failure (a start-up failure).
    void listen();
    // Takes over an already-listening socket (systemd socket activation); its file is not
    // ours, so stop() leaves it.
    void adopt(int listening_fd);
    // Starts accepting. listen() or adopt() first.
    void start();
    // Stops accepting, then ends every connection (requests in flight finish on their own);
    // removes the socket file listen() created. Idempotent.
    void stop();

    const std::filesystem::path& socket_path() const noexcept { return options_.socket_path; }
    const api_server_options& options() const noexcept { return options_; }
    api_metrics& metrics() noexcept { return metrics_; }
    std::size_t open_connections() const noexcept { return connections_.size(); }

  private:
    boost::asio::any_io_executor lookup_executor();
    using socket_type = boost::asio::local::stream_protocol::socket;

    boost::asio::awaitable<void> accept_loop();
    void start_session(socket_type socket);
    void release_memory_after_burst();

    boost::asio::any_io_executor executor_;
    api_server_options options_;
    guest_registry& registry_;
    event_bus& bus_;
    api_metrics metrics_;
    api::api_context context_;
    boost::asio::local::stream_protocol::acceptor acceptor_;
    boost::asio::steady_timer slot_freed_;  // the paused accept loop waits on it
    std::optional<gid_t> group_;
    std::optional<gid_t> read_group_;
    // Two threads: one user's slow lookup does not hold up another's. Declared before the
    // cache, so that the cache goes first and the pool then joins its threads, unless a lookup
    // is hung in NSS (the destructor leaves the pool behind rather than wedge the exit).
    std::unique_ptr<boost::asio::thread_pool> user_lookups_;  // started at the first lookup
    user_lookup_cache users_;
    api::api_audit audit_;
    api::hangup_watch hangups_;
    api_session_environment environment_;
    std::unordered_set<std::shared_ptr<api_session>> connections_;
    std::size_t connections_peak_ = 0;  // since memory was last given back (release_memory)
    log_throttle accept_errors_;
    log_throttle over_limit_;
    bool own_socket_file_ = false;
    ino_t socket_inode_ = 0;
    bool started_ = false;
    bool stopping_ = false;
};

}  // namespace stereos::daemon

// One API connection: requests read with Beast's parser from a beast::basic_stream whose
// expires_after bounds each phase (idle between requests, reading one, writing its answer),
// routed by api_routes, answered in order; or, after GET /v1/events, the event stream
// (event_stream.cpp). A client that hangs up while its request waits on a guest or a state
// cancels that wait: the session's coroutine is spawned with a cancellation slot that the
// server's hangup_watch signals (no system call per request). Who the peer is and what it may do
// is settled before the first request (peer.hpp). Single-threaded, on the daemon's executor.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/basic_stream.hpp>
#include <boost/beast/core/flat_buffer.hpp>

#include "daemon/api/audit.hpp"
#include "daemon/api/hangup_watch.hpp"
#include "daemon/api/metrics.hpp"
#include "daemon/api/peer.hpp"
#include "daemon/api/routes.hpp"
#include "daemon/event_bus.hpp"
#include "daemon/guest/guest_registry.hpp"

namespace stereos::daemon {

using api_stream =
    boost::beast::basic_stream<boost::asio::local::stream_protocol, boost::asio::any_io_executor,
                               boost::beast::unlimited_rate_policy>;

// The server's parts a session uses; owned by api_server, which outlives its sessions' use.
struct api_session_environment {
    std::chrono::milliseconds idle_timeout;
    std::chrono::milliseconds read_timeout;
    std::chrono::milliseconds write_timeout;
    std::size_t event_queue_capacity;
    std::size_t max_connections;
    api::api_context& context;  // context.stopping: the daemon stops
    api_metrics& metrics;
    api::api_audit& audit;
    guest_registry& registry;
    event_bus& bus;
    user_lookup_cache& users;         // what the user database says about peers
    std::optional<gid_t> group;       // api_group: every route
    std::optional<gid_t> read_group;  // api_read_group: the GET routes
    api::hangup_watch& hangups;
};

class api_session : public std::enable_shared_from_this<api_session> {
  public:
    using socket_type = boost::asio::local::stream_protocol::socket;

    // `peer`: what the kernel said when the connection was accepted (nothing: SO_PEERCRED
    // failed, and the peer may do nothing). `over_limit`: the connection limit was reached;
    // every request gets 503 server_busy.
    api_session(socket_type socket, std::optional<peer_facts> peer, bool over_limit,
                api_session_environment& environment);

    // Serves the connection until it ends. Spawn it with hangup_slot() bound.
    boost::asio::awaitable<void> run();
    boost::asio::cancellation_slot hangup_slot() { return hangup_.slot(); }
    // The daemon stops: a request in flight finishes on its own and its connection then closes;
    // an event stream ends with its last chunk, within a short bound.
    void stop();
    void close();

  private:
    boost::asio::awaitable<bool> send(api::http_response& response);
    boost::asio::awaitable<void> linger_close();
    boost::asio::awaitable<void> serve_events(const std::string& guest_filter, unsigned version);
    boost::asio::awaitable<void> stream_events(event_subscription& subscription,
                                               const std::string& guest_filter,
                                               std::string& pending, bool chunked);
    boost::asio::awaitable<bool> write_events(const std::string& batch, bool last, bool chunked);
    // A hangup from now on cancels the request in flight (until waiting_on_cancellable_ is
    // cleared): through the hangup_watch, or a read where it cannot watch the socket.
    void watch_for_hangup_while_waiting();
    // Registers the socket with the server's hangup_watch once; false if it cannot be watched.
    bool watched_for_hangups();
    // The hangup_watch says the peer shut its sending side (`gone`: the whole connection).
    void on_peer_hangup(bool gone);
    // A hangup, unless unread bytes say the client only shut its sending side after more
    // requests: cancels the request in flight.
    void cancel_if_hung_up(bool gone);
    // Until stop_watching(): the peer closing its end (or, with `any_input`, sending anything)
    // emits the hangup signal. A read: an event stream's client sends nothing, so it costs one
    // failed read a stream; for requests only where hangup_watch cannot watch the socket. Bytes
    // of a pipelined request are kept for the session (and, without `any_input`, are no hangup).
    void watch_for_hangup(bool any_input);
    // Ends the watch; once it returns, any bytes the watch read are at the end of `buffer`.
    boost::asio::awaitable<void> stop_watching(boost::beast::flat_buffer& buffer);

    api_stream stream_;
    std::optional<peer_facts> peer_;
    api::peer_access access_;  // from peer_, settled when run() starts
    bool over_limit_;
    api_session_environment& env_;
    boost::asio::cancellation_signal hangup_;
    boost::asio::steady_timer* event_wake_ = nullptr;  // set while serving /v1/events
    std::array<char, 4096> watch_buffer_{};
    std::string watched_input_;  // read by the watch: the start of a pipelined request
    bool watching_ = false;
    bool hung_up_ = false;
    std::optional<std::uint64_t> hangup_watch_id_;
    bool hangup_watch_failed_ = false;
    bool waiting_on_cancellable_ = false;  // a handler a hangup cancels is running
    // The watch reports a hangup once (edge-triggered): one seen while no request waited is
    // kept for the next wait, which may be the request the client sent just before going.
    bool hangup_pending_ = false;
    bool hangup_gone_ = false;
};

}  // namespace stereos::daemon

// One persistent, multiplexed connection to one guest's stereosd. Any number of coroutines may
// call async_request concurrently; lines go out in call order through a single writer, replies
// are matched FIFO (pending_requests), and unsolicited lifecycle pushes go to the event
// callback. Runs forever (connect, handshake, serve, back off, reconnect) until stopped.
//
// A connection counts as up only once the guest has answered its first request, a get_health:
// under QEMU user-mode forwarding connect() succeeds while nothing listens in the guest, so only
// a reply proves stereosd is there. The handshake's health report goes out with the `up` event.
//
// Threading: everything runs on the one executor given at construction; no mutexes.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/system/result.hpp>

#include "daemon/link_error.hpp"
#include "daemon/pending_requests.hpp"
#include "daemon/reconnect_backoff.hpp"
#include "daemon/retry_budget.hpp"
#include "protocol/line_framer.hpp"
#include "protocol/messages.hpp"
#include "transport/connect.hpp"
#include "transport/endpoint.hpp"

namespace stereos::daemon {

struct guest_link_options {
    std::chrono::milliseconds connect_timeout{2000};      // connect and handshake together
    std::chrono::milliseconds request_timeout{10000};     // the reference client's deadline
    std::chrono::milliseconds keepalive_interval{15000};  // idle time before our own ping
    std::chrono::milliseconds reconnect_initial{100};
    std::chrono::milliseconds reconnect_max{5000};
    std::chrono::milliseconds stable_after{1000};  // up this long: backoff starts over
    // After losing a link that was stable, at start, and on reconnect_now(): retry every
    // reconnect_initial for this long (a rebooting guest is back within seconds), then back
    // off exponentially to reconnect_max.
    std::chrono::milliseconds fast_retry_window{30000};
    // Shared by the daemon's links; a fast retry takes from it, and without a token the link
    // backs off as outside the window. Null: no bound.
    std::shared_ptr<retry_budget> fast_retry_budget;
    unsigned unresponsive_after_timeouts = 3;  // consecutive written-request timeouts
    std::size_t max_queued_requests = 4096;
    std::size_t max_queued_bytes = 8 * 1024 * 1024;
};

// What the link tells its owner, synchronously, on the link's executor.
namespace link_events {
struct connecting {
    std::uint64_t attempt;
};
struct connect_failed {
    boost::system::error_code error;
    std::string reason;
};
struct up {
    protocol::health_payload health;  // the guest's answer to the handshake
    std::chrono::steady_clock::time_point answered_at;
    std::chrono::steady_clock::time_point asked_at;  // when the handshake was sent
};
struct down {
    boost::system::error_code error;
    std::string reason;
    std::chrono::milliseconds retry_in;
};
// Emitted once per connection, which is then dropped: `cause` is guest_unresponsive (that many
// consecutive request timeouts) or keepalive_timeout.
struct unresponsive {
    boost::system::error_code cause;
    std::string reason;
};
struct protocol_violation {
    std::string detail;  // printable and bounded; the connection is reset after this
};
struct lifecycle {
    protocol::lifecycle_payload payload;
};
struct unknown_message {
    std::string type;  // skipped without a reset
};
}  // namespace link_events

using link_event =
    std::variant<link_events::connecting, link_events::connect_failed, link_events::up,
                 link_events::down, link_events::unresponsive, link_events::protocol_violation,
                 link_events::lifecycle, link_events::unknown_message>;

struct link_stats {
    std::uint64_t connects = 0;
    std::uint64_t connect_failures = 0;
    std::uint64_t disconnects = 0;
    std::uint64_t protocol_errors = 0;
    std::uint64_t requests = 0;
    std::uint64_t timeouts = 0;
    std::uint64_t late_replies_dropped = 0;
    std::uint64_t lifecycle_events = 0;
    std::uint64_t unknown_messages = 0;
    std::string last_error;
};

// A request's outcome: the guest's reply (an ack with ok:false included), or a link error.
using request_result = boost::system::result<protocol::guest_message>;

class guest_link : public std::enable_shared_from_this<guest_link> {
  public:
    using clock = std::chrono::steady_clock;
    using event_handler = std::function<void(const link_event&)>;

    static std::shared_ptr<guest_link> create(boost::asio::any_io_executor executor,
                                              transport::endpoint target,
                                              guest_link_options options, event_handler on_event);

    // Starts the connect/serve/reconnect loop. Call once.
    void start();

    // Cancels everything promptly: waiting requests complete with link_stopped, the socket
    // closes. async_stop() also waits until the loop has finished.
    void stop();
    boost::asio::awaitable<void> async_stop();

    // Sends one request and waits for its reply until the deadline (default: request_timeout
    // from now). Safe to call from any number of coroutines at once.
    // Pass a named message, not a temporary with strings: g++ 12 destroys temporaries of a
    // co_await full-expression twice (a double free with any non-trivial payload).
    boost::asio::awaitable<request_result> async_request(protocol::host_message request);
    boost::asio::awaitable<request_result> async_request(protocol::host_message request,
                                                         clock::time_point deadline);

    // "This guest just started": drops a connection that may be stale (a VM reset leaves the
    // old one silent; one that answered within the last second is kept), cuts a backoff wait
    // short, and retries fast for fast_retry_window.
    void reconnect_now();

    bool is_up() const noexcept { return connected_; }
    bool is_stopped() const noexcept { return finished_; }
    const link_stats& stats() const noexcept { return stats_; }
    const transport::endpoint& target() const noexcept { return target_; }
    const guest_link_options& options() const noexcept { return options_; }
    std::size_t queued_requests() const noexcept { return pending_.size(); }

    guest_link(boost::asio::any_io_executor executor, transport::endpoint target,
               guest_link_options options, event_handler on_event);

  private:
    struct request_waiter;
    struct handshake_outcome {
        std::optional<protocol::health_payload> health;
        boost::system::error_code error;
        std::string reason;  // why it failed, for operators
    };

    boost::asio::awaitable<void> run();
    boost::asio::awaitable<void> connection_loop();
    // Times out waiting requests from one timer for the whole link (see request_waiter).
    boost::asio::awaitable<void> deadline_loop();
    // Sends get_health and waits for its answer until `deadline`.
    boost::asio::awaitable<handshake_outcome> handshake(clock::time_point deadline);
    boost::asio::awaitable<handshake_outcome> exchange_handshake();
    // Waits out `delay`; cut short by reconnect_now(), or for unix and hybrid endpoints by the
    // socket file appearing (the VMM creates it as the VM starts).
    boost::asio::awaitable<void> wait_before_retry(std::chrono::milliseconds delay);
    boost::asio::awaitable<void> socket_file_created();
    // An inotify watch on the socket file's directory, while the link is down; false if the
    // endpoint has no socket file or the watch cannot be made.
    bool watch_socket_file();
    std::chrono::milliseconds next_retry_delay();
    void open_fast_retry_window();
    boost::asio::awaitable<void> serve_connection(const protocol::health_payload& greeting);
    boost::asio::awaitable<void> read_loop();
    boost::asio::awaitable<void> write_loop();
    boost::asio::awaitable<void> keepalive_loop();

    // Handles one line from the guest; false means the connection must be reset.
    bool handle_line(std::string_view line);
    // Ends the current connection, keeping the first reason given.
    void drop_connection(boost::system::error_code reason, std::string detail);
    // The one place a connection is judged unresponsive: emits once, then drops it.
    void declare_unresponsive(boost::system::error_code cause, std::string reason);
    void emit(const link_event& event);

    boost::asio::any_io_executor executor_;
    transport::endpoint target_;
    guest_link_options options_;
    event_handler on_event_;

    transport::stream_socket socket_;
    protocol::line_framer framer_;
    pending_requests pending_;
    reconnect_backoff backoff_;
    std::string write_buffer_;
    boost::asio::steady_timer write_signal_;    // the writer waits on it; cancel() wakes it
    boost::asio::steady_timer deadline_timer_;  // at the earliest waiting deadline
    std::multimap<clock::time_point, request_waiter*> deadlines_;
    boost::asio::steady_timer finished_signal_;  // cancelled when run() has ended
    boost::asio::steady_timer retry_timer_;      // the wait before reconnecting
    std::optional<boost::asio::posix::stream_descriptor> socket_watch_;  // inotify, while down
    std::string socket_file_name_;  // the watched file's name in its directory
    boost::asio::cancellation_signal stop_signal_;

    bool started_ = false;
    bool stopping_ = false;
    bool finished_ = false;
    bool connected_ = false;
    clock::time_point last_received_{};
    unsigned consecutive_timeouts_ = 0;
    bool declared_unresponsive_ = false;  // on this connection
    clock::time_point fast_retry_until_{};
    clock::time_point handshake_sent_at_{};
    bool retry_at_once_ = false;                             // reconnect_now() during a wait
    std::vector<protocol::lifecycle_payload> early_pushes_;  // pushed before the handshake reply
    boost::system::error_code drop_reason_;
    std::string drop_detail_;
    link_stats stats_;
};

}  // namespace stereos::daemon

// One persistent, multiplexed connection to one guest's stereosd. Any number of coroutines may
// call async_request concurrently; lines go out in call order through a single writer, replies
// are matched FIFO (pending_requests), and unsolicited lifecycle pushes go to the event
// callback. Runs forever (connect, serve, back off, reconnect) until stopped.
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

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/system/result.hpp>

#include "daemon/link_error.hpp"
#include "daemon/pending_requests.hpp"
#include "daemon/reconnect_backoff.hpp"
#include "protocol/line_framer.hpp"
#include "protocol/messages.hpp"
#include "transport/connect.hpp"
#include "transport/endpoint.hpp"

namespace stereos::daemon {

struct guest_link_options {
    std::chrono::milliseconds connect_timeout{2000};
    std::chrono::milliseconds request_timeout{10000};     // the reference client's deadline
    std::chrono::milliseconds keepalive_interval{15000};  // idle time before our own ping
    std::chrono::milliseconds reconnect_initial{100};
    std::chrono::milliseconds reconnect_max{5000};
    std::chrono::milliseconds stable_after{1000};  // up this long: backoff starts over
    unsigned unresponsive_after_timeouts = 3;      // consecutive written-request timeouts
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
struct up {};
struct down {
    boost::system::error_code error;
    std::string reason;
    std::chrono::milliseconds retry_in;
};
struct unresponsive {
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

    boost::asio::awaitable<void> run();
    boost::asio::awaitable<void> connection_loop();
    // Times out waiting requests from one timer for the whole link (see request_waiter).
    boost::asio::awaitable<void> deadline_loop();
    boost::asio::awaitable<void> serve_connection();
    boost::asio::awaitable<void> read_loop();
    boost::asio::awaitable<void> write_loop();
    boost::asio::awaitable<void> keepalive_loop();

    // Handles one line from the guest; false means the connection must be reset.
    bool handle_line(std::string_view line);
    // Ends the current connection, keeping the first reason given.
    void drop_connection(boost::system::error_code reason, std::string detail);
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
    boost::asio::cancellation_signal stop_signal_;

    bool started_ = false;
    bool stopping_ = false;
    bool finished_ = false;
    bool connected_ = false;
    clock::time_point last_received_{};
    unsigned consecutive_timeouts_ = 0;
    boost::system::error_code drop_reason_;
    std::string drop_detail_;
    link_stats stats_;
};

}  // namespace stereos::daemon

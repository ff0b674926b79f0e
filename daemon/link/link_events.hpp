// What a guest link reports to its owner (events, counters, request metrics) and how it is
// configured. Plain data, shared by link_core and guest_link.
//
// Threading: plain values; read them on the link's executor (see guest_link.hpp).
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <variant>

#include <boost/system/error_code.hpp>

#include <stereos/link/retry_budget.hpp>
#include <stereos/protocol/messages.hpp>

namespace stereos::link {

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
    // An unresponsive connection stays open this long for a late answer (a paused VM answers
    // after `cont`, and a connection that never broke cannot span a restart of the guest).
    std::chrono::milliseconds unresponsive_grace{120000};
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
    // When the guest last sent anything on the lost connection: its stereosd was alive then.
    std::chrono::steady_clock::time_point last_received;
};
// The connection stopped answering: `cause` is guest_unresponsive (that many consecutive request
// timeouts) or keepalive_timeout. It stays open for unresponsive_grace, then is dropped, unless
// the guest answers first (then `responsive`).
struct unresponsive {
    boost::system::error_code cause;
    std::string reason;
};
// An unresponsive connection answered again (a late reply counts): it was never broken.
struct responsive {};
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

using link_event = std::variant<link_events::connecting, link_events::connect_failed,
                                link_events::up, link_events::down, link_events::unresponsive,
                                link_events::responsive, link_events::protocol_violation,
                                link_events::lifecycle, link_events::unknown_message>;
using link_event_handler = std::function<void(const link_event&)>;

struct link_stats {
    std::uint64_t connects = 0;
    std::uint64_t connect_failures = 0;
    std::uint64_t disconnects = 0;
    std::uint64_t protocol_errors = 0;
    std::uint64_t requests = 0;  // queued, keepalives included
    std::uint64_t writes = 0;    // writes started: requests queued in one turn share one
    std::uint64_t timeouts = 0;  // written, then no reply in time
    std::uint64_t late_replies_dropped = 0;
    std::uint64_t lifecycle_events = 0;
    std::uint64_t unknown_messages = 0;
    // The deadline timer fired (a due request, handshake, keepalive or grace); moving it is free.
    std::uint64_t deadline_wakeups = 0;
    // Waits for a socket file that had to rely on the retry timer alone: no inotify watch could
    // be made (no instance left, the directory missing, the watch limit).
    std::uint64_t socket_watch_failures = 0;
    std::string last_error;
};

// How a request ended, for the per-type counters. to_string() gives the API's error codes where
// one exists (guest_timeout, guest_unavailable).
enum class request_outcome : std::uint8_t {
    ok,               // the guest replied (an ack with ok:true, a pong, a health report)
    guest_error,      // the guest replied with an ack with ok:false
    timeout,          // written, no reply within the deadline
    unavailable,      // not written within the deadline
    connection_lost,  // written, then the connection dropped
    protocol_error,   // written, then the link was reset for a protocol error
    stopped,          // the link stopped first
    cancelled,        // the caller stopped waiting
    refused,          // never queued: too large, queue full or link stopped
};
inline constexpr std::size_t request_outcome_count = 9;
std::string_view to_string(request_outcome outcome) noexcept;

// Every request on the link, the link's own health polls and keepalives included: counters by
// wire type and outcome, and one latency histogram from queueing to completion. Fixed arrays,
// so counting allocates nothing.
struct request_metrics {
    static constexpr std::size_t type_count = std::variant_size_v<protocol::host_message>;
    // Upper bounds of the latency buckets; one more bucket counts everything slower.
    static constexpr std::array<std::chrono::microseconds, 10> latency_bounds{
        std::chrono::microseconds{500},     std::chrono::microseconds{1000},
        std::chrono::microseconds{2500},    std::chrono::microseconds{5000},
        std::chrono::microseconds{10000},   std::chrono::microseconds{25000},
        std::chrono::microseconds{100000},  std::chrono::microseconds{500000},
        std::chrono::microseconds{2500000}, std::chrono::microseconds{10000000}};

    std::array<std::array<std::uint64_t, request_outcome_count>, type_count> counts{};
    std::array<std::uint64_t, latency_bounds.size() + 1> latency_buckets{};  // not cumulative
    std::uint64_t latency_count = 0;
    std::chrono::nanoseconds latency_sum{0};

    void record(std::size_t type_index, request_outcome outcome) noexcept {
        ++counts[type_index][static_cast<std::size_t>(outcome)];
    }
    void record_latency(std::chrono::nanoseconds latency) noexcept {
        std::size_t bucket = 0;
        while (bucket < latency_bounds.size() && latency > latency_bounds[bucket])
            ++bucket;
        ++latency_buckets[bucket];
        ++latency_count;
        latency_sum += latency;
    }
};

}  // namespace stereos::link

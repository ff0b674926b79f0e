// Prometheus text exposition of the daemon (GET /metrics): per-guest state, link and request
// figures, and the API's own counters. Requests are counted by each guest's link (API calls,
// health polls, provisioning and keepalives alike) and read from it at render time.
// Single-threaded, on the daemon's executor.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "daemon/event_bus.hpp"

namespace stereos::daemon {

class guest_registry;

class api_metrics {
  public:
    // Watches `bus` for provisioning failures (every one, including automatic runs).
    explicit api_metrics(event_bus& bus);
    ~api_metrics();
    api_metrics(const api_metrics&) = delete;
    api_metrics& operator=(const api_metrics&) = delete;

    void connection_opened() noexcept { ++connections_open_; }
    void connection_closed() noexcept { --connections_open_; }
    void connection_rejected() noexcept { ++connections_rejected_; }
    void accept_failed() noexcept { ++accept_errors_; }
    void event_stream_opened() noexcept { ++event_streams_; }
    void event_stream_closed() noexcept { --event_streams_; }
    void response_sent(unsigned status);
    // A response its route's table entry does not declare (routes.hpp).
    void undeclared_response() noexcept { ++undeclared_responses_; }
    std::uint64_t undeclared_responses() const noexcept { return undeclared_responses_; }

    std::uint64_t connections_open() const noexcept { return connections_open_; }
    std::uint64_t event_streams() const noexcept { return event_streams_; }
    std::uint64_t accept_errors() const noexcept { return accept_errors_; }

    // The exposition (text format 0.0.4). Figures of guests no longer in `registry` are
    // forgotten here.
    std::string render(const guest_registry& registry, const event_bus& bus);

  private:
    struct guest_figures {
        std::uint64_t provisioning_failures = 0;
    };
    void on_event(const std::string& line);

    std::map<std::string, guest_figures, std::less<>> guests_;
    std::map<unsigned, std::uint64_t> responses_;  // by HTTP status
    std::shared_ptr<event_subscription> observer_;
    std::uint64_t connections_open_ = 0;
    std::uint64_t connections_rejected_ = 0;
    std::uint64_t accept_errors_ = 0;
    std::uint64_t event_streams_ = 0;
    std::uint64_t undeclared_responses_ = 0;
};

}  // namespace stereos::daemon

// In-process publish/subscribe of daemon events (state, lifecycle, link, provision) for the
// API's event stream. Each event is serialized once and shared by every subscriber. A
// subscriber has a bounded queue: one that falls behind is cut off with an "overflow" marker
// instead of slowing the daemon or the others. Single-threaded; no I/O.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <boost/json/object.hpp>

namespace stereos::daemon {

class event_bus;

class event_subscription {
  public:
    // The next serialized event line (with '\n'), or nullopt when none is queued.
    std::optional<std::shared_ptr<const std::string>> next();
    // True once the queue overflowed: the reader should send the overflow line and close.
    bool overflowed() const noexcept { return overflowed_; }
    std::size_t queued() const noexcept { return queue_.size(); }
    // Called (synchronously, from publish) whenever something new is available.
    void set_notify(std::function<void()> notify) { notify_ = std::move(notify); }
    // Stops delivery; the bus forgets this subscriber.
    void close();
    ~event_subscription();

  private:
    friend class event_bus;
    event_subscription(event_bus* bus, std::string guest_filter, std::size_t capacity)
        : bus_(bus), guest_filter_(std::move(guest_filter)), capacity_(capacity) {}
    void deliver(const std::string& guest, const std::shared_ptr<const std::string>& line);

    event_bus* bus_;
    std::string guest_filter_;  // empty: every guest
    std::size_t capacity_;
    std::deque<std::shared_ptr<const std::string>> queue_;
    bool overflowed_ = false;
    std::function<void()> notify_;
};

class event_bus {
  public:
    using clock = std::chrono::system_clock;

    // Publishes {"seq","time","guest","kind",...fields}; returns its seq.
    std::uint64_t publish(std::string_view guest, std::string_view kind, boost::json::object fields,
                          clock::time_point at = clock::now());

    // A new subscriber seeing events for `guest_filter` (empty: all) from now on.
    std::shared_ptr<event_subscription> subscribe(std::string guest_filter,
                                                  std::size_t capacity = 1024);

    // A line for one subscriber only (the initial per-guest snapshot). It carries the seq of
    // the latest published event instead of taking a new one, so `seq` still rises by one per
    // published event and gaps mean lost events.
    std::shared_ptr<const std::string> snapshot_line(std::string_view guest, std::string_view kind,
                                                     boost::json::object fields,
                                                     clock::time_point at = clock::now()) const;

    std::size_t subscribers() const noexcept { return subscribers_.size(); }
    std::uint64_t events_dropped() const noexcept { return dropped_; }
    std::uint64_t last_seq() const noexcept { return seq_; }

    ~event_bus();

  private:
    friend class event_subscription;
    void forget(event_subscription* subscriber);
    static std::shared_ptr<const std::string> serialize_event(std::uint64_t seq,
                                                              std::string_view guest,
                                                              std::string_view kind,
                                                              boost::json::object fields,
                                                              clock::time_point at);

    std::vector<event_subscription*> subscribers_;
    std::uint64_t seq_ = 0;
    std::uint64_t dropped_ = 0;
};

// RFC 3339 UTC with milliseconds, e.g. "2026-11-28T14:11:23.123Z".
std::string format_utc(std::chrono::system_clock::time_point at);

}  // namespace stereos::daemon

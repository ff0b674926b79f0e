// When a guest link reconnects: the fast-retry window, the backoff starting over after a stable
// connection, the daemon-wide retry budget and reconnect_now()'s keep-a-live-link rule, as one
// pure class. Time is passed in and no clock is read, so every rule is tested in virtual time;
// guest_link only carries out what it returns.
//
// Threading: not thread-safe; one link's executor (the shared budget is single-threaded too).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>

#include <stereos/link/link_events.hpp>
#include <stereos/link/reconnect_backoff.hpp>
#include <stereos/link/retry_budget.hpp>

namespace stereos::link {

class reconnect_policy {
  public:
    using clock = std::chrono::steady_clock;
    using duration = std::chrono::milliseconds;

    // What reconnect_now() should do with the link.
    enum class reconnect_verdict {
        keep,             // up and answered within the last second: not a stale connection
        drop_connection,  // up but silent: drop it and connect again at once
        retry_at_once,    // down: cut the wait short
    };

    // `seed` makes the jitter; the fast-retry budget is the options' and stays for good.
    reconnect_policy(const guest_link_options& options, std::uint32_t seed);

    // The link starts, or its socket file appeared (the VM is starting): retry fast for a while.
    void open_fast_retry_window(clock::time_point now);
    // An attempt begins: a retry asked for by reconnect_now() is the one being made.
    void on_attempt() noexcept { retry_at_once_ = false; }
    void on_up(clock::time_point now) noexcept { up_since_ = now; }
    // The delay before the next attempt after a failed one.
    duration on_connect_failed(clock::time_point now) { return next_delay(now); }
    // The delay before reconnecting a link that was up. One that stayed up for stable_after and
    // then went is likely rebooting, so the window opens; one that drops at once keeps backing
    // off, so it is not hammered.
    duration on_down(clock::time_point now);
    // "This guest just started" (a VM reset leaves the old connection silent). Opens the window.
    reconnect_verdict on_reconnect_now(clock::time_point now, bool up,
                                       clock::time_point last_received);
    // New timings (a reload). The backoff starts over only when its bounds change, so a reload
    // that changes other timings does not make every disconnected guest retry at once.
    // The new backoff draws from the seed given at construction.
    void set_options(const guest_link_options& options);

    bool in_fast_retry_window(clock::time_point now) const noexcept {
        return now < fast_retry_until_;
    }
    duration backoff_step() const noexcept { return backoff_.current_step(); }

  private:
    duration next_delay(clock::time_point now);

    duration reconnect_initial_;
    duration reconnect_max_;
    duration stable_after_;
    duration fast_retry_window_;
    std::shared_ptr<retry_budget> budget_;
    std::uint32_t seed_;
    reconnect_backoff backoff_;
    clock::time_point fast_retry_until_{};
    clock::time_point up_since_{};
    bool retry_at_once_ = false;  // reconnect_now() while down, or a stale link dropped
};

}  // namespace stereos::link

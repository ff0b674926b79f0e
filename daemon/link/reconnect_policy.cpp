#include <stereos/link/reconnect_policy.hpp>

#include <utility>

namespace stereos::link {

namespace {
// A link that answered this recently is alive, whatever the caller believes.
constexpr std::chrono::seconds recently_answered{1};
}  // namespace

reconnect_policy::reconnect_policy(const guest_link_options& options, std::uint32_t seed)
    : reconnect_initial_(options.reconnect_initial),
      reconnect_max_(options.reconnect_max),
      stable_after_(options.stable_after),
      fast_retry_window_(options.fast_retry_window),
      budget_(options.fast_retry_budget),
      seed_(seed),
      backoff_(options.reconnect_initial, options.reconnect_max, seed) {}

void reconnect_policy::open_fast_retry_window(clock::time_point now) {
    fast_retry_until_ = now + fast_retry_window_;
    backoff_.reset();
}

reconnect_policy::duration reconnect_policy::on_down(clock::time_point now) {
    if (now - up_since_ >= stable_after_)
        open_fast_retry_window(now);
    return next_delay(now);
}

reconnect_policy::reconnect_verdict reconnect_policy::on_reconnect_now(
    clock::time_point now, bool up, clock::time_point last_received) {
    open_fast_retry_window(now);
    // Repeated calls must not make a healthy guest flap.
    if (up && now - last_received < recently_answered)
        return reconnect_verdict::keep;
    retry_at_once_ = true;
    return up ? reconnect_verdict::drop_connection : reconnect_verdict::retry_at_once;
}

void reconnect_policy::set_options(const guest_link_options& options) {
    const bool new_backoff =
        options.reconnect_initial != reconnect_initial_ || options.reconnect_max != reconnect_max_;
    reconnect_initial_ = options.reconnect_initial;
    reconnect_max_ = options.reconnect_max;
    stable_after_ = options.stable_after;
    fast_retry_window_ = options.fast_retry_window;
    if (new_backoff)
        backoff_ = reconnect_backoff(reconnect_initial_, reconnect_max_, seed_);
}

reconnect_policy::duration reconnect_policy::next_delay(clock::time_point now) {
    if (std::exchange(retry_at_once_, false))
        return duration{0};
    if (in_fast_retry_window(now) && (!budget_ || budget_->take(now)))
        return backoff_.initial_delay();
    // Outside the window, or the daemon-wide budget is spent: the exponential steps, which
    // opening the window resets.
    return backoff_.next();
}

}  // namespace stereos::link

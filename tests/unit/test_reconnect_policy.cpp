// When a guest link reconnects (reconnect_policy), in virtual time: the fast-retry window, the
// backoff starting over after a stable connection, the shared budget and reconnect_now's rule.
#include <chrono>
#include <memory>
#include <vector>

#include <boost/test/unit_test.hpp>

#include <stereos/link/reconnect_policy.hpp>

using namespace std::chrono_literals;
using stereos::link::guest_link_options;
using stereos::link::reconnect_policy;
using stereos::link::retry_budget;
using verdict = reconnect_policy::reconnect_verdict;
using std::chrono::milliseconds;

namespace {

using time_point = reconnect_policy::clock::time_point;
const time_point t0 = time_point{} + 1000h;

guest_link_options timings() {
    guest_link_options o;
    o.reconnect_initial = 100ms;
    o.reconnect_max = 5000ms;
    o.stable_after = 1000ms;
    o.fast_retry_window = 30000ms;
    return o;
}

// A delay is jittered within [step/2, step].
bool within_step(milliseconds delay, milliseconds step) {
    return delay >= step / 2 && delay <= step;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(reconnect_policy_tests)

BOOST_AUTO_TEST_CASE(inside_the_window_failures_retry_fast_then_back_off_exponentially) {
    reconnect_policy policy(timings(), 42);
    policy.open_fast_retry_window(t0);
    struct row {
        milliseconds at;    // since the window opened
        milliseconds step;  // the delay lies in [step/2, step]
    };
    const std::vector<row> table{
        {0ms, 100ms},  {1s, 100ms},   {29999ms, 100ms},  // fast: the first step, repeatedly
        {30s, 100ms},  {31s, 200ms},  {32s, 400ms},      // outside: doubling from the first
        {33s, 800ms},  {34s, 1600ms}, {35s, 3200ms},
        {36s, 5000ms}, {40s, 5000ms},  // capped at reconnect_max
    };
    for (const auto& r : table) {
        const auto delay = policy.on_connect_failed(t0 + r.at);
        BOOST_TEST(within_step(delay, r.step), "at " << r.at.count() << " ms: " << delay.count()
                                                     << " ms, step " << r.step.count());
    }
}

BOOST_AUTO_TEST_CASE(a_stable_connection_lost_reopens_the_window_and_a_brief_one_does_not) {
    reconnect_policy policy(timings(), 7);
    // Long outside any window: the steps have grown to the cap.
    for (int i = 0; i < 8; ++i)
        policy.on_connect_failed(t0);
    BOOST_TEST(policy.backoff_step() == 5000ms);

    // Up for half a second: dropped at once, it keeps backing off.
    policy.on_up(t0 + 10s);
    BOOST_TEST(within_step(policy.on_down(t0 + 10500ms), 5000ms));
    BOOST_TEST(!policy.in_fast_retry_window(t0 + 10500ms));

    // Up for stable_after: a rebooting guest, looked for often, from the first step.
    policy.on_up(t0 + 20s);
    BOOST_TEST(within_step(policy.on_down(t0 + 21s), 100ms));
    BOOST_TEST(policy.in_fast_retry_window(t0 + 21s));
    BOOST_TEST(within_step(policy.on_connect_failed(t0 + 50s), 100ms));
    BOOST_TEST(within_step(policy.on_connect_failed(t0 + 51s), 100ms));  // out: first step
    BOOST_TEST(within_step(policy.on_connect_failed(t0 + 52s), 200ms));
}

BOOST_AUTO_TEST_CASE(an_empty_budget_falls_back_to_the_exponential_steps_until_it_refills) {
    auto options = timings();
    options.fast_retry_budget = std::make_shared<retry_budget>(2);  // two fast retries a second
    reconnect_policy a(options, 1);
    reconnect_policy b(options, 2);
    a.open_fast_retry_window(t0);
    b.open_fast_retry_window(t0);
    // The budget is shared: a takes one, b takes the other, then both back off.
    BOOST_TEST(within_step(a.on_connect_failed(t0), 100ms));
    BOOST_TEST(within_step(b.on_connect_failed(t0), 100ms));
    const std::vector<milliseconds> steps{100ms, 200ms, 400ms, 800ms};
    for (auto step : steps)
        BOOST_TEST(within_step(a.on_connect_failed(t0 + 1ms), step));
    BOOST_TEST(within_step(b.on_connect_failed(t0 + 1ms), 100ms));
    // A second later the budget has refilled: fast again, inside the window.
    BOOST_TEST(within_step(a.on_connect_failed(t0 + 1s), 100ms));
}

BOOST_AUTO_TEST_CASE(reconnect_now_keeps_a_link_that_answered_within_the_last_second) {
    struct row {
        bool up;
        milliseconds since_last_received;
        verdict expected;
    };
    const std::vector<row> table{
        {true, 0ms, verdict::keep},
        {true, 999ms, verdict::keep},
        {true, 1000ms, verdict::drop_connection},
        {true, 60s, verdict::drop_connection},
        {false, 0ms, verdict::retry_at_once},  // down: whenever it last heard the guest
        {false, 60s, verdict::retry_at_once},
    };
    for (const auto& r : table) {
        reconnect_policy policy(timings(), 3);
        const auto now = t0 + 100s;
        BOOST_TEST((policy.on_reconnect_now(now, r.up, now - r.since_last_received) == r.expected),
                   "up " << r.up << ", " << r.since_last_received.count() << " ms");
        // Whatever it decided, the guest is starting: the window is open.
        BOOST_TEST(policy.in_fast_retry_window(now));
    }
}

BOOST_AUTO_TEST_CASE(a_reconnect_asked_for_happens_at_once_and_only_once) {
    reconnect_policy policy(timings(), 5);
    BOOST_TEST((policy.on_reconnect_now(t0, true, t0 - 5s) == verdict::drop_connection));
    BOOST_TEST(policy.on_down(t0).count() == 0);
    BOOST_TEST(policy.on_connect_failed(t0).count() > 0);

    BOOST_TEST((policy.on_reconnect_now(t0, false, t0 - 5s) == verdict::retry_at_once));
    policy.on_attempt();  // the attempt asked for is made: the next failure waits again
    BOOST_TEST(within_step(policy.on_connect_failed(t0), 100ms));
}

BOOST_AUTO_TEST_CASE(new_backoff_bounds_start_the_steps_over_and_other_timings_do_not) {
    reconnect_policy policy(timings(), 9);
    for (int i = 0; i < 4; ++i)
        policy.on_connect_failed(t0);
    BOOST_TEST(policy.backoff_step() == 1600ms);
    auto options = timings();
    options.stable_after = 2s;
    policy.set_options(options);
    BOOST_TEST(policy.backoff_step() == 1600ms);
    options.reconnect_max = 10s;
    policy.set_options(options);
    BOOST_TEST(policy.backoff_step() == 100ms);
}

BOOST_AUTO_TEST_SUITE_END()

// The fast-retry budget shared by a daemon's links, with injected time.
#include <boost/test/unit_test.hpp>

#include <stereos/link/retry_budget.hpp>

using stereos::link::retry_budget;
using namespace std::chrono_literals;

BOOST_AUTO_TEST_SUITE(retry_budget_tests)

BOOST_AUTO_TEST_CASE(a_full_budget_gives_one_seconds_worth_then_refuses) {
    retry_budget budget(100);
    const auto t0 = retry_budget::clock::time_point{} + 1h;
    int granted = 0;
    for (int i = 0; i < 250; ++i)
        granted += budget.take(t0) ? 1 : 0;
    BOOST_TEST(granted == 100);
}

BOOST_AUTO_TEST_CASE(it_refills_at_its_rate_and_never_beyond_one_second) {
    retry_budget budget(100);
    auto now = retry_budget::clock::time_point{} + 1h;
    while (budget.take(now)) {
    }
    now += 50ms;  // 5 attempts' worth
    int granted = 0;
    while (budget.take(now))
        ++granted;
    BOOST_TEST(granted == 5);
    now += 10s;  // capped at one second's worth
    granted = 0;
    while (budget.take(now))
        ++granted;
    BOOST_TEST(granted == 100);
}

BOOST_AUTO_TEST_CASE(ten_thousand_links_retrying_every_100_ms_get_the_rate_in_all) {
    // Each of 10,000 links asks 10 times a second for 3 s: 300,000 asks, about 3,000 + the
    // first second's worth granted.
    retry_budget budget(1000);
    auto now = retry_budget::clock::time_point{} + 1h;
    long granted = 0;
    for (int tick = 0; tick < 30; ++tick) {
        for (int link = 0; link < 10000; ++link)
            granted += budget.take(now) ? 1 : 0;
        now += 100ms;
    }
    BOOST_TEST(granted >= 3000);
    BOOST_TEST(granted <= 4000);
}

BOOST_AUTO_TEST_SUITE_END()

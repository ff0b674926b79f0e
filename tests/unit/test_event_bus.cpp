// event_bus: sequence numbers, per-guest filters and the bounded subscriber queue.
#include <boost/json/parse.hpp>
#include <boost/test/unit_test.hpp>

#include "daemon/event_bus.hpp"

namespace json = boost::json;
using stereos::daemon::event_bus;

namespace {
json::object parse_line(const std::shared_ptr<const std::string>& line) {
    BOOST_TEST_REQUIRE(!line->empty());
    BOOST_TEST(line->back() == '\n');
    return json::parse(*line).as_object();
}
}  // namespace

BOOST_AUTO_TEST_SUITE(event_stream_bus)

BOOST_AUTO_TEST_CASE(events_carry_seq_time_guest_kind_and_fields) {
    event_bus bus;
    auto sub = bus.subscribe("");
    const auto at =
        std::chrono::system_clock::time_point(std::chrono::milliseconds(1'780'000'000'123));
    bus.publish("vm1", "state", {{"from", "booting"}, {"to", "ready"}}, at);
    auto line = sub->next();
    BOOST_TEST_REQUIRE(line.has_value());
    auto e = parse_line(*line);
    BOOST_TEST(e.at("seq").to_number<std::uint64_t>() == 1u);
    BOOST_TEST(e.at("guest").as_string() == "vm1");
    BOOST_TEST(e.at("kind").as_string() == "state");
    BOOST_TEST(e.at("from").as_string() == "booting");
    BOOST_TEST(e.at("to").as_string() == "ready");
    BOOST_TEST(e.at("time").as_string() == "2026-05-28T20:26:40.123Z");
    BOOST_TEST(!sub->next().has_value());
}

BOOST_AUTO_TEST_CASE(seq_rises_by_one_per_event_and_snapshots_take_none) {
    event_bus bus;
    auto sub = bus.subscribe("");
    bus.publish("a", "link", {});
    auto snapshot = bus.snapshot_line("a", "state", {{"to", "ready"}});
    bus.publish("b", "link", {});
    BOOST_TEST(parse_line(snapshot).at("seq").to_number<std::uint64_t>() == 1u);
    BOOST_TEST(parse_line(*sub->next()).at("seq").to_number<std::uint64_t>() == 1u);
    BOOST_TEST(parse_line(*sub->next()).at("seq").to_number<std::uint64_t>() == 2u);
}

BOOST_AUTO_TEST_CASE(a_guest_filter_passes_only_that_guest) {
    event_bus bus;
    auto only_vm2 = bus.subscribe("vm2");
    bus.publish("vm1", "state", {});
    bus.publish("vm2", "state", {});
    bus.publish("vm10", "state", {});
    BOOST_TEST(only_vm2->queued() == 1u);
    BOOST_TEST(parse_line(*only_vm2->next()).at("guest").as_string() == "vm2");
}

BOOST_AUTO_TEST_CASE(a_slow_subscriber_overflows_without_affecting_others) {
    event_bus bus;
    auto slow = bus.subscribe("", 4);
    auto fast = bus.subscribe("", 4);
    int notified = 0;
    slow->set_notify([&] { ++notified; });
    for (int i = 0; i < 10; ++i) {
        bus.publish("vm1", "lifecycle", {});
        while (fast->next()) {
        }
    }
    BOOST_TEST(slow->overflowed());
    BOOST_TEST(slow->queued() == 0u);
    BOOST_TEST(!fast->overflowed());
    BOOST_TEST(bus.events_dropped() == 1u);
    BOOST_TEST(notified == 5);  // four queued, then the overflow; nothing after
}

BOOST_AUTO_TEST_CASE(closed_and_destroyed_subscriptions_are_forgotten) {
    event_bus bus;
    auto a = bus.subscribe("");
    {
        auto b = bus.subscribe("");
        BOOST_TEST(bus.subscribers() == 2u);
    }
    BOOST_TEST(bus.subscribers() == 1u);
    a->close();
    BOOST_TEST(bus.subscribers() == 0u);
    bus.publish("vm1", "state", {});
    BOOST_TEST(a->queued() == 0u);
}

BOOST_AUTO_TEST_CASE(a_notify_callback_may_close_its_own_subscription) {
    event_bus bus;
    auto a = bus.subscribe("");
    auto b = bus.subscribe("");
    a->set_notify([&] { a->close(); });
    bus.publish("vm1", "state", {});
    BOOST_TEST(bus.subscribers() == 1u);
    BOOST_TEST(b->queued() == 1u);
}

BOOST_AUTO_TEST_SUITE_END()

// The per-guest state machine, driven synchronously with injected timestamps: every transition
// (a table from each state), odd event orders, reboot detection and provisioning bookkeeping.
#include <array>
#include <set>
#include <string>
#include <vector>

#include <boost/test/unit_test.hpp>

#include "daemon/guest_state_machine.hpp"

using namespace stereos::daemon;
using stereos::protocol::lifecycle_state;
namespace ev = guest_events;
using namespace std::chrono_literals;

namespace {

using clock_type = guest_state_machine::clock;

guest_event health(lifecycle_state state, std::int64_t uptime) {
    return ev::health_received{{state, {}, uptime}};
}
guest_event lifecycle(lifecycle_state state, std::string message = {}) {
    return ev::lifecycle_pushed{{state, std::move(message)}};
}

// Feeds events one second apart from a fixed start, so each transition's time is predictable.
struct driver {
    guest_state_machine machine;
    clock_type::time_point now = clock_type::time_point{} + 24h * 365 * 55;

    event_result feed(const guest_event& event) {
        now += 1s;
        return machine.handle(event, now);
    }
    void feed_all(const std::vector<guest_event>& events) {
        for (const auto& event : events) {
            feed(event);
        }
    }
};

// The shortest way to each state from a fresh machine. The guest last reported healthy with
// uptime 100 in the states reached through healthy.
std::vector<guest_event> path_to(guest_state state) {
    std::vector<guest_event> to_booting{ev::link_connecting{}, ev::link_up{}};
    auto extend = [](std::vector<guest_event> base, std::initializer_list<guest_event> more) {
        base.insert(base.end(), more);
        return base;
    };
    switch (state) {
        case guest_state::unknown:
            return {};
        case guest_state::connecting:
            return {ev::link_connecting{}};
        case guest_state::booting:
            return to_booting;
        case guest_state::ready:
            return extend(to_booting, {health(lifecycle_state::ready, 100)});
        case guest_state::healthy:
            return extend(to_booting, {health(lifecycle_state::healthy, 100)});
        case guest_state::degraded:
            return extend(to_booting, {health(lifecycle_state::degraded, 100)});
        case guest_state::unresponsive:
            return extend(to_booting,
                          {health(lifecycle_state::healthy, 100), ev::keepalive_timed_out{}});
        case guest_state::disconnected:
            return extend(to_booting,
                          {health(lifecycle_state::healthy, 100), ev::link_lost{"reset"}});
        case guest_state::shutting_down:
            return extend(to_booting,
                          {health(lifecycle_state::healthy, 100), ev::shutdown_sent{"operator"}});
        case guest_state::shutdown:
            return extend(to_booting,
                          {health(lifecycle_state::healthy, 100), ev::shutdown_sent{"operator"},
                           ev::shutdown_acked{}, ev::link_lost{"end of file"}});
    }
    return {};
}

const std::array all_states{
    guest_state::unknown,      guest_state::connecting,   guest_state::booting,
    guest_state::ready,        guest_state::healthy,      guest_state::degraded,
    guest_state::unresponsive, guest_state::disconnected, guest_state::shutting_down,
    guest_state::shutdown,
};

// From a state, an event: the state after it and the transition's reason ("" = no transition).
struct transition_case {
    guest_state from;
    guest_event event;
    guest_state to;
    std::string reason;
};

using S = guest_state;
using L = lifecycle_state;

const std::vector<transition_case>& transition_table() {
    static const std::vector<transition_case> table = {
        // unknown
        {S::unknown, ev::link_connecting{}, S::connecting, "connecting"},
        {S::unknown, ev::link_up{}, S::booting, "link up"},
        {S::unknown, ev::link_lost{"connection refused"}, S::disconnected,
         "link lost: connection refused"},
        {S::unknown, health(L::healthy, 1), S::unknown, ""},
        {S::unknown, ev::keepalive_timed_out{}, S::unknown, ""},
        {S::unknown, ev::shutdown_sent{}, S::unknown, ""},
        // connecting
        {S::connecting, ev::link_connecting{}, S::connecting, ""},
        {S::connecting, ev::link_up{}, S::booting, "link up"},
        {S::connecting, ev::link_lost{"connection refused"}, S::disconnected,
         "link lost: connection refused"},
        {S::connecting, lifecycle(L::ready), S::connecting, ""},
        {S::connecting, ev::request_timed_out{"ping"}, S::connecting, ""},
        // booting
        {S::booting, ev::link_up{}, S::booting, ""},
        {S::booting, health(L::booting, 1), S::booting, ""},
        {S::booting, health(L::ready, 1), S::ready, "health: ready"},
        {S::booting, health(L::healthy, 1), S::healthy, "health: healthy"},
        {S::booting, health(L::degraded, 1), S::degraded, "health: degraded"},
        {S::booting, health(L::shutdown, 1), S::shutdown, "health: shutdown"},
        {S::booting, lifecycle(L::ready, "all subsystems started"), S::ready,
         "lifecycle: all subsystems started"},
        {S::booting, lifecycle(L::healthy), S::healthy, "lifecycle: healthy"},
        {S::booting, ev::keepalive_timed_out{}, S::unresponsive, "keepalive timeout"},
        {S::booting, ev::link_lost{"reset"}, S::disconnected, "link lost: reset"},
        {S::booting, ev::reply_received{}, S::booting, ""},
        {S::booting, ev::shutdown_sent{}, S::shutting_down, "shutdown sent"},
        // ready
        {S::ready, health(L::ready, 101), S::ready, ""},
        {S::ready, health(L::healthy, 101), S::healthy, "health: healthy"},
        {S::ready, health(L::degraded, 101), S::degraded, "health: degraded"},
        {S::ready, lifecycle(L::booting, "restarting agents"), S::booting,
         "lifecycle: restarting agents"},
        {S::ready, ev::request_timed_out{"get_health"}, S::unresponsive,
         "request timeout: get_health"},
        {S::ready, ev::link_lost{"reset"}, S::disconnected, "link lost: reset"},
        {S::ready, ev::shutdown_sent{"maintenance"}, S::shutting_down,
         "shutdown sent: maintenance"},
        // healthy
        {S::healthy, health(L::healthy, 101), S::healthy, ""},
        {S::healthy, health(L::degraded, 101), S::degraded, "health: degraded"},
        {S::healthy, lifecycle(L::degraded, "agent claude exited"), S::degraded,
         "lifecycle: agent claude exited"},
        {S::healthy, lifecycle(L::shutdown, "powering off"), S::shutdown,
         "lifecycle: powering off"},
        {S::healthy, ev::keepalive_timed_out{}, S::unresponsive, "keepalive timeout"},
        {S::healthy, ev::request_timed_out{"mount"}, S::unresponsive, "request timeout: mount"},
        {S::healthy, ev::reply_received{}, S::healthy, ""},
        {S::healthy, ev::shutdown_acked{}, S::healthy, ""},
        {S::healthy, ev::shutdown_failed{"refused"}, S::healthy, ""},
        {S::healthy, ev::link_connecting{}, S::healthy, ""},
        {S::healthy, ev::link_up{}, S::booting, "link up"},
        {S::healthy, ev::link_lost{"reset"}, S::disconnected, "link lost: reset"},
        {S::healthy, ev::shutdown_sent{"operator"}, S::shutting_down, "shutdown sent: operator"},
        // degraded
        {S::degraded, health(L::healthy, 101), S::healthy, "health: healthy"},
        {S::degraded, health(L::degraded, 101), S::degraded, ""},
        {S::degraded, ev::keepalive_timed_out{}, S::unresponsive, "keepalive timeout"},
        {S::degraded, ev::link_lost{"reset"}, S::disconnected, "link lost: reset"},
        {S::degraded, ev::shutdown_sent{}, S::shutting_down, "shutdown sent"},
        // unresponsive (the guest last reported healthy)
        {S::unresponsive, ev::keepalive_timed_out{}, S::unresponsive, ""},
        {S::unresponsive, ev::request_timed_out{"ping"}, S::unresponsive, ""},
        {S::unresponsive, ev::reply_received{}, S::healthy, "reply received: recovered"},
        {S::unresponsive, health(L::degraded, 130), S::degraded, "health: degraded"},
        {S::unresponsive, lifecycle(L::ready, "back"), S::ready, "lifecycle: back"},
        {S::unresponsive, ev::link_lost{"timed out"}, S::disconnected, "link lost: timed out"},
        {S::unresponsive, ev::shutdown_sent{}, S::shutting_down, "shutdown sent"},
        // disconnected
        {S::disconnected, ev::link_connecting{}, S::disconnected, ""},
        {S::disconnected, ev::link_lost{"connection refused"}, S::disconnected, ""},
        {S::disconnected, ev::link_up{}, S::booting, "link up"},
        {S::disconnected, health(L::healthy, 101), S::disconnected, ""},
        {S::disconnected, lifecycle(L::healthy), S::disconnected, ""},
        {S::disconnected, ev::keepalive_timed_out{}, S::disconnected, ""},
        {S::disconnected, ev::reply_received{}, S::disconnected, ""},
        {S::disconnected, ev::shutdown_sent{}, S::disconnected, ""},
        // shutting_down (not yet acked)
        {S::shutting_down, ev::shutdown_acked{}, S::shutting_down, ""},
        {S::shutting_down, health(L::healthy, 101), S::shutting_down, ""},
        {S::shutting_down, lifecycle(L::shutdown, "bye"), S::shutdown, "lifecycle: bye"},
        {S::shutting_down, health(L::shutdown, 101), S::shutdown, "health: shutdown"},
        {S::shutting_down, ev::keepalive_timed_out{}, S::shutting_down, ""},
        {S::shutting_down, ev::shutdown_sent{}, S::shutting_down, ""},
        {S::shutting_down, ev::shutdown_failed{"refused"}, S::healthy, "shutdown failed: refused"},
        {S::shutting_down, ev::link_lost{"reset"}, S::disconnected, "link lost: reset"},
        // shutdown
        {S::shutdown, ev::link_connecting{}, S::shutdown, ""},
        {S::shutdown, ev::link_lost{"connection refused"}, S::shutdown, ""},
        {S::shutdown, health(L::healthy, 1), S::shutdown, ""},
        {S::shutdown, ev::reply_received{}, S::shutdown, ""},
        {S::shutdown, ev::shutdown_sent{}, S::shutdown, ""},
        {S::shutdown, ev::link_up{}, S::booting, "link up"},
    };
    return table;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(guest_state_machine_tests)

BOOST_AUTO_TEST_CASE(a_new_machine_is_unknown_with_an_empty_history) {
    guest_state_machine machine;
    BOOST_TEST((machine.state() == guest_state::unknown));
    BOOST_TEST(machine.history().empty());
    BOOST_TEST(!machine.link_is_up());
    BOOST_TEST(machine.boot_count() == 0u);
    BOOST_TEST(!machine.needs_provisioning());
}

BOOST_AUTO_TEST_CASE(every_state_has_a_distinct_name) {
    std::set<std::string_view> names;
    for (auto state : all_states) {
        names.insert(to_string(state));
    }
    BOOST_TEST(names.size() == std::size(all_states));
    BOOST_TEST(to_string(guest_state::shutting_down) == "shutting_down");
    BOOST_TEST(to_string(guest_state::unresponsive) == "unresponsive");
}

BOOST_AUTO_TEST_CASE(paths_reach_their_states) {
    for (auto state : all_states) {
        driver d;
        d.feed_all(path_to(state));
        BOOST_TEST((d.machine.state() == state), to_string(state));
    }
}

BOOST_AUTO_TEST_CASE(the_transition_table_holds_from_every_state) {
    std::set<guest_state> covered_from;
    std::set<std::size_t> covered_events;
    for (const auto& row : transition_table()) {
        BOOST_TEST_CONTEXT(to_string(row.from) << " + " << event_name(row.event)) {
            covered_from.insert(row.from);
            covered_events.insert(row.event.index());
            driver d;
            d.feed_all(path_to(row.from));
            BOOST_TEST_REQUIRE((d.machine.state() == row.from));
            const auto history_before = d.machine.history().size();
            const auto since_before = d.machine.since();

            const event_result result = d.feed(row.event);

            BOOST_TEST(to_string(d.machine.state()) == to_string(row.to));
            if (row.reason.empty()) {
                BOOST_TEST(!result.transition.has_value());
                BOOST_TEST(d.machine.history().size() == history_before);
                BOOST_TEST((d.machine.since() == since_before));
            } else {
                BOOST_TEST_REQUIRE(result.transition.has_value());
                BOOST_TEST(to_string(result.transition->from) == to_string(row.from));
                BOOST_TEST(to_string(result.transition->to) == to_string(row.to));
                BOOST_TEST(result.transition->reason == row.reason);
                BOOST_TEST((result.transition->at == d.now));
                BOOST_TEST(d.machine.reason() == row.reason);
                BOOST_TEST((d.machine.since() == d.now));
                BOOST_TEST(d.machine.history().back().reason == row.reason);
            }
        }
    }
    BOOST_TEST(covered_from.size() == std::size(all_states));
    BOOST_TEST(covered_events.size() == std::variant_size_v<guest_event>);
}

BOOST_AUTO_TEST_CASE(link_loss_from_every_state) {
    for (auto state : all_states) {
        BOOST_TEST_CONTEXT(to_string(state)) {
            driver d;
            d.feed_all(path_to(state));
            const auto result = d.feed(ev::link_lost{"connection reset by peer"});
            BOOST_TEST(!d.machine.link_is_up());
            BOOST_TEST(d.machine.last_link_error() == "connection reset by peer");
            if (state == guest_state::shutdown || state == guest_state::disconnected) {
                BOOST_TEST(!result.transition.has_value());
                BOOST_TEST((d.machine.state() == state));
            } else {
                BOOST_TEST((d.machine.state() == guest_state::disconnected));
                BOOST_TEST(d.machine.reason() == "link lost: connection reset by peer");
            }
        }
    }
}

BOOST_AUTO_TEST_CASE(link_closed_after_an_acked_shutdown_means_shutdown) {
    driver d;
    d.feed_all(path_to(guest_state::shutting_down));
    BOOST_TEST(!d.feed(ev::shutdown_acked{}).transition.has_value());
    const auto result = d.feed(ev::link_lost{"end of file"});
    BOOST_TEST_REQUIRE(result.transition.has_value());
    BOOST_TEST((result.transition->to == guest_state::shutdown));
    BOOST_TEST(result.transition->reason == "link closed after shutdown: end of file");
}

BOOST_AUTO_TEST_CASE(a_lifecycle_push_before_the_first_health_reply_is_honoured) {
    driver d;
    d.feed_all({ev::link_connecting{}, ev::link_up{}});
    const auto pushed = d.feed(lifecycle(L::ready, "all subsystems started"));
    BOOST_TEST((d.machine.state() == guest_state::ready));
    BOOST_TEST(pushed.provisioning_due);  // first contact: boot 1 needs provisioning
    BOOST_TEST(d.machine.boot_count() == 1u);
    BOOST_TEST_REQUIRE(d.machine.last_lifecycle().has_value());
    BOOST_TEST(d.machine.last_lifecycle()->message == "all subsystems started");
    BOOST_TEST((d.machine.last_lifecycle_at() == d.now));
    BOOST_TEST(!d.machine.uptime_seconds().has_value());

    const auto polled = d.feed(health(L::healthy, 7));
    BOOST_TEST(!polled.rebooted);
    BOOST_TEST((d.machine.state() == guest_state::healthy));
    BOOST_TEST(d.machine.uptime_seconds().value_or(-1) == 7);
    BOOST_TEST(d.machine.boot_count() == 1u);
}

BOOST_AUTO_TEST_CASE(health_replies_update_uptime_and_agents_without_a_transition) {
    driver d;
    d.feed_all(path_to(guest_state::healthy));
    const auto history_size = d.machine.history().size();
    stereos::protocol::health_payload payload{L::healthy, {{"claude", true, "s1", 2, ""}}, 160};
    const auto result = d.feed(ev::health_received{payload});
    BOOST_TEST(!result.transition.has_value());
    BOOST_TEST(d.machine.history().size() == history_size);
    BOOST_TEST(d.machine.uptime_seconds().value_or(-1) == 160);
    BOOST_TEST((d.machine.uptime_at() == d.now));
    BOOST_TEST_REQUIRE(d.machine.agents().size() == 1u);
    BOOST_TEST(d.machine.agents()[0].restarts == 2);
}

BOOST_AUTO_TEST_CASE(duplicate_events_produce_no_transition) {
    driver d;
    d.feed_all(path_to(guest_state::healthy));
    const auto history_size = d.machine.history().size();
    const auto since = d.machine.since();
    for (int i = 0; i < 5; ++i) {
        BOOST_TEST(!d.feed(health(L::healthy, 101 + i)).transition.has_value());
        BOOST_TEST(!d.feed(lifecycle(L::healthy)).transition.has_value());
        BOOST_TEST(!d.feed(ev::reply_received{}).transition.has_value());
    }
    BOOST_TEST(d.machine.history().size() == history_size);
    BOOST_TEST((d.machine.since() == since));
    BOOST_TEST(d.machine.uptime_seconds().value_or(-1) == 105);
}

BOOST_AUTO_TEST_CASE(degraded_and_healthy_flap_with_a_transition_each_way) {
    driver d;
    d.feed_all(path_to(guest_state::healthy));
    for (int i = 0; i < 3; ++i) {
        auto down = d.feed(health(L::degraded, 200 + 2 * i));
        BOOST_TEST_REQUIRE(down.transition.has_value());
        BOOST_TEST((down.transition->from == guest_state::healthy));
        BOOST_TEST((down.transition->to == guest_state::degraded));
        auto up = d.feed(health(L::healthy, 201 + 2 * i));
        BOOST_TEST_REQUIRE(up.transition.has_value());
        BOOST_TEST((up.transition->to == guest_state::healthy));
        BOOST_TEST(up.transition->reason == "health: healthy");
        BOOST_TEST(!up.rebooted);
    }
}

BOOST_AUTO_TEST_CASE(history_keeps_the_last_64_transitions) {
    driver d;
    std::vector<guest_transition> all;
    auto record = [&](const event_result& r) {
        if (r.transition) {
            all.push_back(*r.transition);
        }
    };
    record(d.feed(ev::link_connecting{}));
    record(d.feed(ev::link_up{}));
    for (int i = 0; i < 100; ++i) {
        record(d.feed(health(i % 2 == 0 ? L::healthy : L::degraded, i)));
    }
    BOOST_TEST_REQUIRE(all.size() == 102u);
    const auto& history = d.machine.history();
    BOOST_TEST_REQUIRE(history.size() == guest_state_machine::history_limit);
    BOOST_TEST(guest_state_machine::history_limit == 64u);
    for (std::size_t i = 0; i < history.size(); ++i) {
        const auto& expected = all[all.size() - history.size() + i];
        BOOST_TEST((history[i].at == expected.at));
        BOOST_TEST((history[i].to == expected.to));
    }
}

BOOST_AUTO_TEST_CASE(unresponsive_recovers_to_the_last_reported_state) {
    driver d;
    d.feed_all(path_to(guest_state::degraded));
    d.feed(ev::request_timed_out{"get_health"});
    BOOST_TEST((d.machine.state() == guest_state::unresponsive));
    const auto recovered = d.feed(ev::reply_received{});
    BOOST_TEST_REQUIRE(recovered.transition.has_value());
    BOOST_TEST((recovered.transition->to == guest_state::degraded));

    // Timed out before the guest ever reported: back to booting.
    driver early;
    early.feed_all({ev::link_connecting{}, ev::link_up{}, ev::keepalive_timed_out{}});
    BOOST_TEST((early.machine.state() == guest_state::unresponsive));
    early.feed(ev::reply_received{});
    BOOST_TEST((early.machine.state() == guest_state::booting));
}

BOOST_AUTO_TEST_CASE(a_reconnect_without_reboot_keeps_the_provisioned_boot) {
    driver d;
    d.feed_all(path_to(guest_state::healthy));
    const auto ticket = d.machine.begin_provisioning();
    BOOST_TEST_REQUIRE(ticket.has_value());
    BOOST_TEST(d.machine.mark_provisioned(*ticket));
    BOOST_TEST((d.machine.provisioning() == provisioning_status::done));

    d.feed_all({ev::link_lost{"reset"}, ev::link_connecting{}, ev::link_up{}});
    const auto result = d.feed(health(L::healthy, 130));
    BOOST_TEST(!result.rebooted);
    BOOST_TEST(!result.provisioning_due);
    BOOST_TEST(d.machine.boot_count() == 1u);
    BOOST_TEST((d.machine.provisioning() == provisioning_status::done));
}

BOOST_AUTO_TEST_CASE(a_lower_uptime_after_reconnect_is_a_reboot_that_needs_provisioning) {
    driver d;
    d.feed_all(path_to(guest_state::healthy));  // uptime 100
    d.machine.mark_provisioned(*d.machine.begin_provisioning());

    d.feed_all({ev::link_lost{"reset"}, ev::link_up{}});
    // A push before the first health: up, but which boot is not known yet.
    const auto pushed = d.feed(lifecycle(L::ready, "all subsystems started"));
    BOOST_TEST((d.machine.state() == guest_state::ready));
    BOOST_TEST(!pushed.provisioning_due);
    BOOST_TEST(!d.machine.needs_provisioning());

    const auto polled = d.feed(health(L::healthy, 12));
    BOOST_TEST(polled.rebooted);
    BOOST_TEST_REQUIRE(polled.transition.has_value());
    BOOST_TEST(polled.transition->rebooted);
    BOOST_TEST(polled.provisioning_due);
    BOOST_TEST(d.machine.needs_provisioning());
    BOOST_TEST(d.machine.boot_count() == 2u);
    BOOST_TEST(d.machine.uptime_seconds().value_or(-1) == 12);
}

BOOST_AUTO_TEST_CASE(uptime_going_backwards_on_the_same_link_is_a_reboot) {
    driver d;
    d.feed_all(path_to(guest_state::healthy));
    d.machine.mark_provisioned(*d.machine.begin_provisioning());
    const auto result = d.feed(health(L::healthy, 3));
    BOOST_TEST(!result.transition.has_value());  // still healthy
    BOOST_TEST(result.rebooted);
    BOOST_TEST(result.provisioning_due);
    BOOST_TEST(d.machine.boot_count() == 2u);
    // The next, higher uptime is the same boot.
    BOOST_TEST(!d.feed(health(L::healthy, 8)).rebooted);
    BOOST_TEST(d.machine.boot_count() == 2u);
}

BOOST_AUTO_TEST_CASE(shutdown_then_reconnect_is_a_new_boot) {
    driver d;
    d.feed_all(path_to(guest_state::healthy));
    d.machine.mark_provisioned(*d.machine.begin_provisioning());
    d.feed_all({ev::shutdown_sent{"operator"}, ev::shutdown_acked{}, ev::link_lost{"eof"}});
    BOOST_TEST((d.machine.state() == guest_state::shutdown));
    // The link keeps retrying while the guest is off: nothing to report.
    for (int i = 0; i < 3; ++i) {
        BOOST_TEST(!d.feed(ev::link_connecting{}).transition.has_value());
        BOOST_TEST(!d.feed(ev::link_lost{"connection refused"}).transition.has_value());
    }
    const auto up = d.feed(ev::link_up{});
    BOOST_TEST_REQUIRE(up.transition.has_value());
    BOOST_TEST((up.transition->from == guest_state::shutdown));
    BOOST_TEST((up.transition->to == guest_state::booting));
    BOOST_TEST(up.rebooted);
    BOOST_TEST(up.transition->rebooted);
    BOOST_TEST(d.machine.boot_count() == 2u);
    // Its first health has a small uptime; that is the same new boot, not another.
    const auto first = d.feed(health(L::ready, 4));
    BOOST_TEST(!first.rebooted);
    BOOST_TEST(first.provisioning_due);
    BOOST_TEST(d.machine.boot_count() == 2u);
}

BOOST_AUTO_TEST_CASE(a_guest_reporting_shutdown_comes_back_as_a_new_boot) {
    driver d;
    d.feed_all(path_to(guest_state::healthy));
    d.feed(lifecycle(L::shutdown, "powering off"));
    BOOST_TEST((d.machine.state() == guest_state::shutdown));
    // A reply still in flight is stale.
    BOOST_TEST(!d.feed(health(L::healthy, 200)).transition.has_value());
    d.feed(ev::link_lost{"eof"});
    BOOST_TEST((d.machine.state() == guest_state::shutdown));
    const auto up = d.feed(ev::link_up{});
    BOOST_TEST(up.rebooted);
    BOOST_TEST((d.machine.state() == guest_state::booting));
}

BOOST_AUTO_TEST_CASE(provisioning_is_due_once_per_boot_when_up) {
    driver d;
    d.feed_all({ev::link_connecting{}, ev::link_up{}});
    BOOST_TEST(!d.feed(health(L::booting, 1)).provisioning_due);
    BOOST_TEST(!d.machine.begin_provisioning().has_value());
    const auto ready = d.feed(health(L::ready, 2));
    BOOST_TEST(ready.provisioning_due);
    const auto ticket = d.machine.begin_provisioning();
    BOOST_TEST_REQUIRE(ticket.has_value());
    BOOST_TEST((d.machine.provisioning() == provisioning_status::in_progress));
    BOOST_TEST(!d.machine.begin_provisioning().has_value());  // one attempt at a time
    // Reaching healthy in the same boot does not ask again.
    BOOST_TEST(!d.feed(health(L::healthy, 3)).provisioning_due);
    BOOST_TEST(d.machine.mark_provisioned(*ticket));
    BOOST_TEST(!d.machine.mark_provisioned(*ticket));  // only once
    BOOST_TEST(!d.feed(health(L::degraded, 4)).provisioning_due);
    BOOST_TEST(!d.feed(health(L::healthy, 5)).provisioning_due);
    BOOST_TEST(!d.machine.needs_provisioning());
}

BOOST_AUTO_TEST_CASE(a_failed_or_interrupted_attempt_is_due_again_after_reconnect) {
    driver d;
    d.feed_all(path_to(guest_state::ready));
    const auto failed = d.machine.begin_provisioning();
    BOOST_TEST(d.machine.mark_provisioning_failed(*failed));
    BOOST_TEST((d.machine.provisioning() == provisioning_status::failed));
    // Not retried on the same link.
    BOOST_TEST(!d.feed(health(L::healthy, 101)).provisioning_due);

    d.feed_all({ev::link_lost{"reset"}, ev::link_up{}});
    BOOST_TEST(d.feed(health(L::healthy, 120)).provisioning_due);

    // Interrupted by a link loss: the old ticket is stale after the reconnect.
    const auto interrupted = d.machine.begin_provisioning();
    d.feed_all({ev::link_lost{"reset"}, ev::link_up{}});
    BOOST_TEST(!d.machine.mark_provisioning_failed(*interrupted));
    BOOST_TEST(!d.machine.mark_provisioned(*interrupted));
    BOOST_TEST(d.feed(health(L::healthy, 140)).provisioning_due);
}

BOOST_AUTO_TEST_CASE(a_ticket_from_before_a_reboot_is_stale) {
    driver d;
    d.feed_all(path_to(guest_state::healthy));
    const auto old_ticket = d.machine.begin_provisioning();
    const auto rebooted = d.feed(health(L::healthy, 1));
    BOOST_TEST(rebooted.rebooted);
    BOOST_TEST(!d.machine.mark_provisioned(*old_ticket));
    BOOST_TEST(d.machine.needs_provisioning());
    const auto new_ticket = d.machine.begin_provisioning();
    BOOST_TEST_REQUIRE(new_ticket.has_value());
    BOOST_TEST(new_ticket->boot == 2u);
    BOOST_TEST(d.machine.mark_provisioned(*new_ticket));
}

BOOST_AUTO_TEST_CASE(provisioning_can_be_requested_again_in_the_same_boot) {
    driver d;
    BOOST_TEST(!d.machine.request_provisioning().provisioning_due);  // no guest seen yet
    d.feed_all(path_to(guest_state::healthy));
    const auto first = d.machine.begin_provisioning();
    d.machine.mark_provisioned(*first);
    BOOST_TEST(d.machine.request_provisioning().provisioning_due);
    const auto second = d.machine.begin_provisioning();
    BOOST_TEST_REQUIRE(second.has_value());
    BOOST_TEST(second->boot == first->boot);
    // While not up, the request waits until the guest is up again.
    d.feed(ev::keepalive_timed_out{});
    BOOST_TEST(!d.machine.request_provisioning().provisioning_due);
    BOOST_TEST(!d.machine.mark_provisioned(*second));  // superseded by the request
    BOOST_TEST(d.feed(ev::reply_received{}).provisioning_due);
}

BOOST_AUTO_TEST_CASE(a_failed_shutdown_returns_to_the_reported_state) {
    driver d;
    d.feed_all(path_to(guest_state::degraded));
    d.feed(ev::shutdown_sent{});
    const auto result = d.feed(ev::shutdown_failed{"timed out"});
    BOOST_TEST_REQUIRE(result.transition.has_value());
    BOOST_TEST((result.transition->to == guest_state::degraded));
    BOOST_TEST(result.transition->reason == "shutdown failed: timed out");
}

BOOST_AUTO_TEST_SUITE_END()

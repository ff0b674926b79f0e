// The per-guest state machine, driven synchronously with injected timestamps: every transition
// (a table from each state), odd event orders, restart detection by the guest daemon's start
// time, and provisioning bookkeeping.
#include <algorithm>
#include <array>
#include <set>
#include <string>
#include <vector>

#include <boost/test/unit_test.hpp>

#include "daemon/guest/guest_state_machine.hpp"

using namespace stereos::daemon;
using stereos::protocol::lifecycle_state;
namespace ev = guest_events;
using namespace std::chrono_literals;

namespace {

using clock_type = guest_state_machine::clock;
using steady = std::chrono::steady_clock;

guest_event health(lifecycle_state state, std::int64_t uptime) {
    return ev::health_received{{state, {}, uptime}};
}
guest_event up(lifecycle_state state, std::int64_t uptime) {
    return ev::link_up{{state, {}, uptime}};
}
guest_event lifecycle(lifecycle_state state, std::string message = {}) {
    return ev::lifecycle_pushed{{state, std::move(message)}};
}
guest_event unresponsive() {
    return ev::link_unresponsive{"3 consecutive requests timed out"};
}

// Feeds events one second apart from a fixed start, on both clocks, so each transition's time is
// predictable and a health answer's uptime says when the guest daemon started. Health answers
// without an arrival time are stamped with the time they are fed.
struct driver {
    guest_state_machine machine;
    clock_type::time_point now = clock_type::time_point{} + 24h * 365 * 55;
    steady::time_point steady_now = steady::time_point{} + 24h;

    event_result feed(guest_event event) {
        now += 1s;
        steady_now += 1s;
        if (auto* h = std::get_if<ev::health_received>(&event);
            h && h->answered_at == steady::time_point{})
            h->answered_at = steady_now;
        if (auto* u = std::get_if<ev::link_up>(&event); u && u->answered_at == steady::time_point{})
            u->answered_at = steady_now;
        return machine.handle(event, now);
    }
    void feed_all(const std::vector<guest_event>& events) {
        for (const auto& event : events) {
            feed(event);
        }
    }
    // Lets time pass with no event.
    void wait(std::chrono::seconds how_long) {
        now += how_long;
        steady_now += how_long;
    }
};

// The shortest way to each state from a fresh machine. The link comes up on the second event with
// the guest reporting uptime 100, so an answer fed k events later from the same run says 100 + k.
std::vector<guest_event> path_to(guest_state state) {
    auto with = [](lifecycle_state reported, std::initializer_list<guest_event> more) {
        std::vector<guest_event> events{ev::link_connecting{}, up(reported, 100)};
        events.insert(events.end(), more);
        return events;
    };
    switch (state) {
        case guest_state::unknown:
            return {};
        case guest_state::connecting:
            return {ev::link_connecting{}};
        case guest_state::booting:
            return with(lifecycle_state::booting, {});
        case guest_state::ready:
            return with(lifecycle_state::ready, {});
        case guest_state::healthy:
            return with(lifecycle_state::healthy, {});
        case guest_state::degraded:
            return with(lifecycle_state::degraded, {});
        case guest_state::unresponsive:
            return with(lifecycle_state::healthy, {unresponsive()});
        case guest_state::disconnected:
            return with(lifecycle_state::healthy, {ev::link_lost{"reset"}});
        case guest_state::shutting_down:
            return with(lifecycle_state::healthy, {ev::shutdown_sent{"operator"}});
        case guest_state::shutdown:
            return with(lifecycle_state::healthy,
                        {ev::shutdown_sent{"operator"}, ev::shutdown_acked{},
                         ev::link_lost{"end of file"}});
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
        {S::unknown, up(L::ready, 5), S::ready, "link up: ready"},
        {S::unknown, ev::connect_failed{"connection refused"}, S::unknown, ""},
        {S::unknown, ev::link_lost{"reset"}, S::unknown, ""},
        {S::unknown, health(L::healthy, 1), S::unknown, ""},
        {S::unknown, unresponsive(), S::unknown, ""},
        {S::unknown, ev::shutdown_sent{}, S::unknown, ""},
        // connecting: failed attempts (refused, silent, closed before answering) change nothing
        {S::connecting, ev::link_connecting{}, S::connecting, ""},
        {S::connecting, ev::connect_failed{"connection refused"}, S::connecting, ""},
        {S::connecting, up(L::booting, 1), S::booting, "link up: booting"},
        {S::connecting, up(L::healthy, 1), S::healthy, "link up: healthy"},
        {S::connecting, lifecycle(L::ready), S::connecting, ""},
        {S::connecting, unresponsive(), S::connecting, ""},
        // booting
        {S::booting, health(L::booting, 101), S::booting, ""},
        {S::booting, health(L::ready, 101), S::ready, "health: ready"},
        {S::booting, health(L::healthy, 101), S::healthy, "health: healthy"},
        {S::booting, health(L::degraded, 101), S::degraded, "health: degraded"},
        {S::booting, health(L::shutdown, 101), S::shutdown, "health: shutdown"},
        {S::booting, lifecycle(L::ready, "all subsystems started"), S::ready,
         "lifecycle: all subsystems started"},
        {S::booting, lifecycle(L::healthy), S::healthy, "lifecycle: healthy"},
        {S::booting, unresponsive(), S::unresponsive,
         "unresponsive: 3 consecutive requests timed out"},
        {S::booting, ev::link_lost{"reset"}, S::disconnected, "link lost: reset"},
        {S::booting, ev::reply_received{}, S::booting, ""},
        {S::booting, ev::shutdown_sent{}, S::shutting_down, "shutdown sent"},
        // ready
        {S::ready, health(L::ready, 101), S::ready, ""},
        {S::ready, health(L::healthy, 101), S::healthy, "health: healthy"},
        {S::ready, health(L::degraded, 101), S::degraded, "health: degraded"},
        {S::ready, lifecycle(L::booting, "restarting agents"), S::booting,
         "lifecycle: restarting agents"},
        {S::ready, ev::link_unresponsive{"keepalive ping unanswered within 10s"}, S::unresponsive,
         "unresponsive: keepalive ping unanswered within 10s"},
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
        {S::healthy, unresponsive(), S::unresponsive,
         "unresponsive: 3 consecutive requests timed out"},
        {S::healthy, ev::reply_received{}, S::healthy, ""},
        {S::healthy, ev::shutdown_acked{}, S::healthy, ""},
        {S::healthy, ev::shutdown_failed{"refused"}, S::healthy, ""},
        {S::healthy, ev::link_connecting{}, S::healthy, ""},
        {S::healthy, ev::connect_failed{"refused"}, S::healthy, ""},
        {S::healthy, up(L::healthy, 101), S::healthy, ""},
        {S::healthy, up(L::ready, 101), S::ready, "link up: ready"},
        {S::healthy, ev::link_lost{"reset"}, S::disconnected, "link lost: reset"},
        {S::healthy, ev::shutdown_sent{"operator"}, S::shutting_down, "shutdown sent: operator"},
        // degraded
        {S::degraded, health(L::healthy, 101), S::healthy, "health: healthy"},
        {S::degraded, health(L::degraded, 101), S::degraded, ""},
        {S::degraded, unresponsive(), S::unresponsive,
         "unresponsive: 3 consecutive requests timed out"},
        {S::degraded, ev::link_lost{"reset"}, S::disconnected, "link lost: reset"},
        {S::degraded, ev::shutdown_sent{}, S::shutting_down, "shutdown sent"},
        // unresponsive (the guest last reported healthy); the drop that follows keeps it
        {S::unresponsive, unresponsive(), S::unresponsive, ""},
        {S::unresponsive, ev::reply_received{}, S::healthy, "reply received: recovered"},
        {S::unresponsive, health(L::degraded, 102), S::degraded, "health: degraded"},
        {S::unresponsive, lifecycle(L::ready, "back"), S::ready, "lifecycle: back"},
        {S::unresponsive, ev::link_lost{"keepalive timeout"}, S::unresponsive, ""},
        {S::unresponsive, ev::shutdown_sent{}, S::shutting_down, "shutdown sent"},
        // disconnected
        {S::disconnected, ev::link_connecting{}, S::disconnected, ""},
        {S::disconnected, ev::connect_failed{"connection refused"}, S::disconnected, ""},
        {S::disconnected, ev::link_lost{"reset"}, S::disconnected, ""},
        {S::disconnected, up(L::healthy, 102), S::healthy, "link up: healthy"},
        {S::disconnected, health(L::healthy, 102), S::disconnected, ""},
        {S::disconnected, lifecycle(L::healthy), S::disconnected, ""},
        {S::disconnected, unresponsive(), S::disconnected, ""},
        {S::disconnected, ev::reply_received{}, S::disconnected, ""},
        {S::disconnected, ev::shutdown_sent{}, S::disconnected, ""},
        // shutting_down (not yet acked)
        {S::shutting_down, ev::shutdown_acked{}, S::shutting_down, ""},
        {S::shutting_down, health(L::healthy, 102), S::shutting_down, ""},
        {S::shutting_down, lifecycle(L::shutdown, "bye"), S::shutdown, "lifecycle: bye"},
        {S::shutting_down, health(L::shutdown, 102), S::shutdown, "health: shutdown"},
        {S::shutting_down, unresponsive(), S::shutting_down, ""},
        {S::shutting_down, ev::shutdown_sent{}, S::shutting_down, ""},
        {S::shutting_down, ev::shutdown_failed{"refused"}, S::healthy, "shutdown failed: refused"},
        {S::shutting_down, ev::link_lost{"reset"}, S::disconnected, "link lost: reset"},
        // shutdown
        {S::shutdown, ev::link_connecting{}, S::shutdown, ""},
        {S::shutdown, ev::connect_failed{"connection refused"}, S::shutdown, ""},
        {S::shutdown, ev::link_lost{"reset"}, S::shutdown, ""},
        {S::shutdown, health(L::healthy, 1), S::shutdown, ""},
        {S::shutdown, ev::reply_received{}, S::shutdown, ""},
        {S::shutdown, ev::shutdown_sent{}, S::shutdown, ""},
        {S::shutdown, up(L::booting, 2), S::booting, "link up, guest restarted: booting"},
    };
    return table;
}

// The states a sequence of events went through, first to last, as names.
std::vector<std::string> states_through(driver& d, const std::vector<guest_event>& events) {
    std::vector<std::string> seen;
    for (const auto& event : events) {
        if (auto result = d.feed(event); result.transition)
            seen.emplace_back(to_string(result.transition->to));
    }
    return seen;
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
            const bool unchanged = state == S::shutdown || state == S::disconnected ||
                                   state == S::unresponsive || state == S::unknown ||
                                   state == S::connecting;
            if (unchanged) {
                BOOST_TEST(!result.transition.has_value());
                BOOST_TEST((d.machine.state() == state));
            } else {
                BOOST_TEST((d.machine.state() == S::disconnected));
                BOOST_TEST(d.machine.reason() == "link lost: connection reset by peer");
            }
        }
    }
}

BOOST_AUTO_TEST_CASE(failed_connect_attempts_never_move_the_state) {
    for (auto state : all_states) {
        BOOST_TEST_CONTEXT(to_string(state)) {
            driver d;
            d.feed_all(path_to(state));
            const auto history = d.machine.history().size();
            for (int i = 0; i < 20; ++i) {
                const bool moved = d.feed(ev::link_connecting{}).transition.has_value();
                BOOST_TEST((!moved || state == S::unknown));
                BOOST_TEST(
                    !d.feed(ev::connect_failed{"closed before answering"}).transition.has_value());
            }
            BOOST_TEST(d.machine.last_link_error() == "closed before answering");
            if (state != S::unknown)
                BOOST_TEST(d.machine.history().size() == history);
        }
    }
}

BOOST_AUTO_TEST_CASE(a_boot_behind_forwarding_reads_connecting_then_what_the_guest_says) {
    // QEMU forwarding: connects succeed but stay silent or close until stereosd listens.
    driver d;
    const guest_event attempt = ev::link_connecting{};
    const guest_event silent = ev::connect_failed{"no answer to get_health within 2s"};
    const guest_event closed = ev::connect_failed{"closed before the guest answered"};
    std::vector<guest_event> events{attempt};
    for (int i = 0; i < 10; ++i)
        events.insert(events.end(), {silent, attempt, closed, attempt});
    events.push_back(up(L::ready, 0));
    events.push_back(health(L::healthy, 1));
    events.push_back(health(L::healthy, 2));
    const std::vector<std::string> expected{"connecting", "ready", "healthy"};
    BOOST_TEST(states_through(d, events) == expected, boost::test_tools::per_element());
    BOOST_TEST(d.machine.boot_count() == 1u);
    BOOST_TEST(d.machine.needs_provisioning());
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

BOOST_AUTO_TEST_CASE(a_lifecycle_push_is_honoured_and_kept) {
    driver d;
    d.feed_all({ev::link_connecting{}, up(L::booting, 0)});
    const auto pushed = d.feed(lifecycle(L::ready, "all subsystems started"));
    BOOST_TEST((d.machine.state() == guest_state::ready));
    BOOST_TEST(pushed.provisioning_due);  // first contact: boot 1 needs provisioning
    BOOST_TEST(d.machine.boot_count() == 1u);
    BOOST_TEST_REQUIRE(d.machine.last_lifecycle().has_value());
    BOOST_TEST(d.machine.last_lifecycle()->message == "all subsystems started");
    BOOST_TEST((d.machine.last_lifecycle_at() == d.now));

    const auto polled = d.feed(health(L::healthy, 2));
    BOOST_TEST(!polled.rebooted);
    BOOST_TEST((d.machine.state() == guest_state::healthy));
    BOOST_TEST(d.machine.uptime_seconds().value_or(-1) == 2);
    BOOST_TEST(d.machine.boot_count() == 1u);
}

BOOST_AUTO_TEST_CASE(health_replies_update_uptime_and_agents_without_a_transition) {
    driver d;
    d.feed_all(path_to(guest_state::healthy));
    const auto history_size = d.machine.history().size();
    stereos::protocol::health_payload payload{L::healthy, {{"claude", true, "s1", 2, ""}}, 101};
    const auto result = d.feed(ev::health_received{payload});
    BOOST_TEST(!result.transition.has_value());
    BOOST_TEST(!result.rebooted);
    BOOST_TEST(d.machine.history().size() == history_size);
    BOOST_TEST(d.machine.uptime_seconds().value_or(-1) == 101);
    BOOST_TEST((d.machine.uptime_at() == d.now));
    const auto started = d.machine.guest_started_within();
    BOOST_TEST_REQUIRE(started.has_value());
    BOOST_TEST((started->earliest == d.steady_now - 102s));
    BOOST_TEST((started->latest == d.steady_now - 101s));
    BOOST_TEST_REQUIRE(d.machine.agents().size() == 1u);
    BOOST_TEST(d.machine.agents()[0].restarts == 2);
}

BOOST_AUTO_TEST_CASE(duplicate_events_produce_no_transition) {
    driver d;
    d.feed_all(path_to(guest_state::healthy));
    const auto history_size = d.machine.history().size();
    const auto since = d.machine.since();
    std::int64_t uptime = 100;
    for (int i = 0; i < 5; ++i) {
        BOOST_TEST(!d.feed(health(L::healthy, ++uptime)).transition.has_value());
        ++uptime;
        BOOST_TEST(!d.feed(lifecycle(L::healthy)).transition.has_value());
        ++uptime;
        BOOST_TEST(!d.feed(ev::reply_received{}).transition.has_value());
    }
    BOOST_TEST(d.machine.history().size() == history_size);
    BOOST_TEST((d.machine.since() == since));
    BOOST_TEST(d.machine.boot_count() == 1u);
    BOOST_TEST(d.machine.uptime_seconds().value_or(-1) == 113);
}

BOOST_AUTO_TEST_CASE(degraded_and_healthy_flap_with_a_transition_each_way) {
    driver d;
    d.feed_all(path_to(guest_state::healthy));
    std::int64_t uptime = 100;
    for (int i = 0; i < 3; ++i) {
        auto down = d.feed(health(L::degraded, ++uptime));
        BOOST_TEST_REQUIRE(down.transition.has_value());
        BOOST_TEST((down.transition->from == guest_state::healthy));
        BOOST_TEST((down.transition->to == guest_state::degraded));
        auto back = d.feed(health(L::healthy, ++uptime));
        BOOST_TEST_REQUIRE(back.transition.has_value());
        BOOST_TEST((back.transition->to == guest_state::healthy));
        BOOST_TEST(back.transition->reason == "health: healthy");
        BOOST_TEST(!back.rebooted);
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
    record(d.feed(up(L::booting, 0)));
    for (int i = 0; i < 100; ++i) {
        record(d.feed(health(i % 2 == 0 ? L::healthy : L::degraded, i + 1)));
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

BOOST_AUTO_TEST_CASE(unresponsive_is_the_links_verdict_and_survives_the_drop) {
    driver d;
    d.feed_all(path_to(guest_state::degraded));
    const auto verdict = d.feed(unresponsive());
    BOOST_TEST_REQUIRE(verdict.transition.has_value());
    BOOST_TEST(verdict.transition->reason == "unresponsive: 3 consecutive requests timed out");
    // The link drops the connection next: still unresponsive, only the error is recorded.
    BOOST_TEST(!d.feed(ev::link_lost{"the guest stopped answering requests"}).transition);
    BOOST_TEST((d.machine.state() == guest_state::unresponsive));
    BOOST_TEST(!d.machine.link_is_up());
    // Reconnect attempts change nothing until the guest answers again.
    BOOST_TEST(!d.feed(ev::connect_failed{"no answer"}).transition);
    const auto back = d.feed(up(L::degraded, 105));
    BOOST_TEST_REQUIRE(back.transition.has_value());
    BOOST_TEST((back.transition->to == guest_state::degraded));
    BOOST_TEST(!back.rebooted);
}

BOOST_AUTO_TEST_CASE(a_reply_before_the_drop_recovers_to_the_last_reported_state) {
    driver d;
    d.feed_all(path_to(guest_state::degraded));
    d.feed(unresponsive());
    const auto recovered = d.feed(ev::reply_received{});
    BOOST_TEST_REQUIRE(recovered.transition.has_value());
    BOOST_TEST((recovered.transition->to == guest_state::degraded));
}

// ---- restarts of the guest daemon, by its start time ----------------------------------------

BOOST_AUTO_TEST_CASE(a_reconnect_without_a_restart_keeps_the_provisioned_boot) {
    driver d;
    d.feed_all(path_to(guest_state::healthy));  // stereosd started 100 s before the link came up
    const auto ticket = d.machine.begin_provisioning();
    BOOST_TEST_REQUIRE(ticket.has_value());
    BOOST_TEST(d.machine.mark_provisioned(*ticket));

    d.feed(ev::link_lost{"reset"});  // event 3
    d.wait(20s);
    d.feed(ev::link_connecting{});  // event 4, 20 s later
    // Event 5: the same run of stereosd, 23 s after the first answer.
    const auto result = d.feed(up(L::healthy, 123));
    BOOST_TEST(!result.rebooted);
    BOOST_TEST(!result.provisioning_due);
    BOOST_TEST(d.machine.boot_count() == 1u);
    BOOST_TEST((d.machine.provisioning() == provisioning_status::done));
}

BOOST_AUTO_TEST_CASE(a_reboot_whose_uptime_is_already_past_the_last_one_seen_is_a_restart) {
    // The old run answered uptime 100; the guest rebooted, and its first answer after the
    // reconnect comes 5 minutes later with uptime 250: higher, yet a new run of stereosd.
    driver d;
    d.feed_all(path_to(guest_state::healthy));
    d.machine.mark_provisioned(*d.machine.begin_provisioning());
    d.feed(ev::link_lost{"reset"});
    d.wait(300s);
    const auto result = d.feed(up(L::ready, 250));
    BOOST_TEST(result.rebooted);
    BOOST_TEST_REQUIRE(result.transition.has_value());
    BOOST_TEST(result.transition->rebooted);
    BOOST_TEST(result.transition->reason == "link up, guest restarted: ready");
    BOOST_TEST(result.provisioning_due);
    BOOST_TEST(d.machine.boot_count() == 2u);
    BOOST_TEST(d.machine.uptime_seconds().value_or(-1) == 250);
}

BOOST_AUTO_TEST_CASE(a_restart_of_stereosd_alone_is_a_restart) {
    // The VM kept running; stereosd restarted 2 s ago and the link came straight back.
    driver d;
    d.feed_all(path_to(guest_state::healthy));
    d.machine.mark_provisioned(*d.machine.begin_provisioning());
    d.feed(ev::link_lost{"the guest closed the connection"});
    const auto result = d.feed(up(L::healthy, 2));
    BOOST_TEST(result.rebooted);
    BOOST_TEST(result.provisioning_due);
    BOOST_TEST(d.machine.boot_count() == 2u);
}

BOOST_AUTO_TEST_CASE(start_times_within_the_tolerance_are_the_same_run) {
    for (const std::int64_t uptime : {0, 1, 2, 3, 50, 97, 98, 99, 100, 101, 102, 103, 104, 105}) {
        BOOST_TEST_CONTEXT("uptime " << uptime) {
            driver d;
            // Answered at t2: started within [t2 - 101, t2 - 100].
            d.feed_all({ev::link_connecting{}, up(L::healthy, 100)});
            d.machine.mark_provisioned(*d.machine.begin_provisioning());
            d.feed(ev::link_lost{"reset", d.steady_now});  // t3, heard last at t2
            // Answered at t4 = t2 + 2: started within [t2 + 1 - uptime, t2 + 2 - uptime], apart
            // from the first by max(99 - uptime, uptime - 103) seconds; a lower uptime counts
            // whatever the gap. Either is a restart only if the new start can be after the old
            // run last spoke (t2); before that, it is a pause.
            const auto result = d.feed(up(L::healthy, uptime));
            const auto gap = std::max<std::int64_t>({99 - uptime, uptime - 103, 0});
            const bool moved = gap > restart_tolerance.count() || uptime < 100;
            const bool after_last_word = 2 - uptime >= 0;
            BOOST_TEST(result.rebooted == (moved && after_last_word));
        }
    }
}

// Answers on one connection never show a restart: a restarted stereosd cannot answer on its
// predecessor's connection. Whatever they say, they re-anchor the start time.
BOOST_AUTO_TEST_CASE(answers_on_one_connection_are_one_run_whatever_their_uptime) {
    for (const std::int64_t uptime : {0, 3, 99, 100, 150, 100000}) {
        BOOST_TEST_CONTEXT("uptime " << uptime) {
            driver d;
            d.feed_all(path_to(guest_state::healthy));
            d.machine.mark_provisioned(*d.machine.begin_provisioning());
            const auto result = d.feed(health(L::healthy, uptime));
            BOOST_TEST(!result.rebooted);
            BOOST_TEST(!result.new_run);
            BOOST_TEST(!result.provisioning_due);
            BOOST_TEST(d.machine.boot_count() == 1u);
        }
    }
}

BOOST_AUTO_TEST_CASE(a_late_health_answer_is_not_a_restart) {
    // Asked 6 s before it arrived (a loaded guest or host): the uptime was counted somewhere in
    // between, so the reckoned start time is only known within those 6 s.
    driver d;
    d.feed_all(path_to(guest_state::healthy));  // answered at t2, uptime 100
    d.machine.mark_provisioned(*d.machine.begin_provisioning());
    d.wait(10s);
    const auto answered = d.steady_now + 1s;  // t2 + 11
    const auto result = d.feed(ev::health_received{{L::healthy, {}, 105}, answered, answered - 6s});
    BOOST_TEST(!result.rebooted);
    BOOST_TEST(!result.provisioning_due);
    BOOST_TEST(d.machine.boot_count() == 1u);
    // On a new connection, the late answer's wide interval still overlaps the last one.
    d.feed(ev::link_lost{"reset", d.steady_now});
    d.wait(3s);
    const auto later = d.steady_now + 1s;  // t2 + 16
    BOOST_TEST(!d.feed(ev::link_up{{L::healthy, {}, 108}, later, later - 6s}).rebooted);
}

BOOST_AUTO_TEST_CASE(slow_clock_drift_over_days_is_not_a_restart) {
    // The guest's clock runs 0.1% slow: after a day the reckoned start moved by 86 s, but never
    // by more than the tolerance between two answers.
    driver d;
    d.feed_all({ev::link_connecting{}, up(L::healthy, 0)});
    double guest_seconds = 1;
    for (int poll = 0; poll < 17280; ++poll) {  // every 5 s for a day
        d.wait(4s);
        guest_seconds += 5 * 0.999;
        const auto result = d.feed(health(L::healthy, static_cast<std::int64_t>(guest_seconds)));
        BOOST_TEST_REQUIRE(!result.rebooted, "poll " << poll);
    }
    BOOST_TEST(d.machine.boot_count() == 1u);
}

BOOST_AUTO_TEST_CASE(uptime_going_backwards_after_a_reconnect_is_a_restart) {
    driver d;
    d.feed_all(path_to(guest_state::healthy));
    d.machine.mark_provisioned(*d.machine.begin_provisioning());
    d.feed(ev::link_lost{"the guest closed the connection", d.steady_now});
    const auto result = d.feed(up(L::healthy, 0));
    BOOST_TEST(result.rebooted);
    BOOST_TEST(result.new_run);
    BOOST_TEST(result.provisioning_due);
    BOOST_TEST(d.machine.boot_count() == 2u);
    // The next answer from the same new run is the same boot.
    BOOST_TEST(!d.feed(health(L::healthy, 1)).rebooted);
    BOOST_TEST(d.machine.boot_count() == 2u);
}

BOOST_AUTO_TEST_CASE(five_resets_in_a_row_are_five_restarts) {
    driver d;
    d.feed_all(path_to(guest_state::healthy));
    d.machine.mark_provisioned(*d.machine.begin_provisioning());
    for (std::uint64_t reset = 1; reset <= 5; ++reset) {
        BOOST_TEST_CONTEXT("reset " << reset) {
            // The old connection goes silent; the link gives up on it.
            d.feed_all({unresponsive(), ev::link_lost{"keepalive timeout"}});
            for (int i = 0; i < 3; ++i)
                d.feed_all({ev::link_connecting{}, ev::connect_failed{"closed before answering"}});
            d.wait(6s);
            const auto result = d.feed(up(L::ready, 1));
            BOOST_TEST(result.rebooted);
            BOOST_TEST(result.provisioning_due);
            BOOST_TEST(d.machine.boot_count() == reset + 1);
            d.machine.mark_provisioned(*d.machine.begin_provisioning());
            d.wait(30s);
            d.feed(health(L::healthy, 32));
        }
    }
}

BOOST_AUTO_TEST_CASE(shutdown_then_reconnect_is_a_new_boot) {
    driver d;
    d.feed_all(path_to(guest_state::healthy));
    d.machine.mark_provisioned(*d.machine.begin_provisioning());
    d.feed_all({ev::shutdown_sent{"operator"}, ev::shutdown_acked{}, ev::link_lost{"eof"}});
    BOOST_TEST((d.machine.state() == guest_state::shutdown));
    for (int i = 0; i < 3; ++i) {
        BOOST_TEST(!d.feed(ev::link_connecting{}).transition.has_value());
        BOOST_TEST(!d.feed(ev::connect_failed{"connection refused"}).transition.has_value());
    }
    const auto back = d.feed(up(L::booting, 1));
    BOOST_TEST_REQUIRE(back.transition.has_value());
    BOOST_TEST((back.transition->from == guest_state::shutdown));
    BOOST_TEST((back.transition->to == guest_state::booting));
    BOOST_TEST(back.rebooted);
    BOOST_TEST(d.machine.boot_count() == 2u);
    const auto ready = d.feed(health(L::ready, 2));
    BOOST_TEST(!ready.rebooted);
    BOOST_TEST(ready.provisioning_due);
    BOOST_TEST(d.machine.boot_count() == 2u);
}

BOOST_AUTO_TEST_CASE(a_guest_reporting_shutdown_comes_back_as_a_new_boot) {
    driver d;
    d.feed_all(path_to(guest_state::healthy));
    d.feed(lifecycle(L::shutdown, "powering off"));
    BOOST_TEST((d.machine.state() == guest_state::shutdown));
    // A reply still in flight is stale.
    BOOST_TEST(!d.feed(health(L::healthy, 102)).transition.has_value());
    d.feed(ev::link_lost{"eof"});
    BOOST_TEST((d.machine.state() == guest_state::shutdown));
    const auto back = d.feed(up(L::booting, 1));
    BOOST_TEST(back.rebooted);
    BOOST_TEST((d.machine.state() == guest_state::booting));
}

// ---- provisioning ---------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(provisioning_is_due_once_per_boot_when_up) {
    driver d;
    d.feed_all({ev::link_connecting{}, up(L::booting, 0)});
    BOOST_TEST(!d.machine.needs_provisioning());
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

BOOST_AUTO_TEST_CASE(a_first_link_up_in_a_ready_state_is_due_at_once) {
    driver d;
    d.feed(ev::link_connecting{});
    const auto result = d.feed(up(L::healthy, 7));
    BOOST_TEST(result.provisioning_due);
    BOOST_TEST(d.machine.needs_provisioning());
}

BOOST_AUTO_TEST_CASE(a_failed_or_interrupted_attempt_is_due_again_after_reconnect) {
    driver d;
    d.feed_all(path_to(guest_state::ready));
    const auto failed = d.machine.begin_provisioning();
    BOOST_TEST(d.machine.mark_provisioning_failed(*failed));
    BOOST_TEST((d.machine.provisioning() == provisioning_status::failed));
    // Not retried on the same link.
    BOOST_TEST(!d.feed(health(L::healthy, 101)).provisioning_due);

    d.feed(ev::link_lost{"reset"});
    BOOST_TEST(d.feed(up(L::healthy, 103)).provisioning_due);

    // Interrupted by a link loss: the old ticket is stale after the reconnect.
    const auto interrupted = d.machine.begin_provisioning();
    d.feed(ev::link_lost{"reset"});
    BOOST_TEST(d.feed(up(L::healthy, 105)).provisioning_due);
    BOOST_TEST(!d.machine.mark_provisioning_failed(*interrupted));
    BOOST_TEST(!d.machine.mark_provisioned(*interrupted));
}

BOOST_AUTO_TEST_CASE(a_ticket_from_before_a_restart_is_stale) {
    driver d;
    d.feed_all(path_to(guest_state::healthy));
    const auto old_ticket = d.machine.begin_provisioning();
    d.feed(ev::link_lost{"the guest closed the connection", d.steady_now});
    d.wait(5s);
    const auto restarted = d.feed(up(L::healthy, 1));
    BOOST_TEST(restarted.rebooted);
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
    d.feed(unresponsive());
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

// The health poll's path: handle_health() does what the health_received event does, without
// the event (no copy of the payload); agents follow every answer, the reason only transitions.
BOOST_AUTO_TEST_CASE(handle_health_is_the_health_event_and_agents_follow_each_answer) {
    driver by_event, direct;
    by_event.feed_all(path_to(guest_state::ready));
    direct.feed_all(path_to(guest_state::ready));
    stereos::protocol::health_payload payload{L::healthy, {{"claude", true, "s1", 2, ""}}, 102};
    const auto evented = by_event.feed(ev::health_received{payload});
    direct.wait(1s);
    const auto handled =
        direct.machine.handle_health(payload, direct.steady_now, direct.steady_now, direct.now);
    BOOST_TEST_REQUIRE((evented.transition && handled.transition));
    BOOST_TEST(handled.transition->reason == "health: healthy");
    BOOST_TEST(evented.transition->reason == handled.transition->reason);
    BOOST_TEST((direct.machine.state() == by_event.machine.state()));
    BOOST_TEST((direct.machine.agents() == payload.agents));

    // The same answer again: no transition, the reason stays.
    payload.uptime_seconds = 103;
    direct.wait(1s);
    const auto same =
        direct.machine.handle_health(payload, direct.steady_now, direct.steady_now, direct.now);
    BOOST_TEST(!same.transition.has_value());
    BOOST_TEST(direct.machine.reason() == "health: healthy");
    // A changed agent list replaces the old one.
    payload.agents.front().running = false;
    payload.agents.push_back({"codex", true, "s2", 0, ""});
    direct.wait(1s);
    direct.machine.handle_health(payload, direct.steady_now, direct.steady_now, direct.now);
    BOOST_TEST((direct.machine.agents() == payload.agents));
    BOOST_TEST(direct.machine.agents().size() == 2u);
}

BOOST_AUTO_TEST_SUITE_END()

// The decisions the delivery ledger rests on, in virtual time: which first answer after a daemon
// start or a reconnect is the same run of stereosd (nothing re-sent) and which is a new one.
BOOST_AUTO_TEST_SUITE(guest_runs)

// A daemon's first view of a guest the ledger knows: the run was last reckoned to have started
// at `started` and was heard from at `heard` (both on the host's monotonic clock).
struct run_case {
    const char* what;
    std::int64_t uptime_at_first_answer;  // answered `later` after the remembered answer
    std::chrono::seconds later;
    bool remembered;  // false: the ledger is from another host boot (not passed on)
    bool new_run;
};

BOOST_AUTO_TEST_CASE(the_first_answer_after_a_daemon_start_is_matched_with_the_ledger) {
    // The remembered run: up 100 s when last answered, at T.
    const std::vector<run_case> cases{
        {"daemon restarted 5 s later, guest untouched", 105, 5s, true, false},
        {"daemon down for an hour, guest untouched", 3700, 3600s, true, false},
        {"guest answered slowly (start 1 s later)", 104, 5s, true, false},
        {"stereosd restarted alone meanwhile", 3, 60s, true, true},
        {"guest rebooted meanwhile", 20, 600s, true, true},
        {"guest paused 30 s while the daemon was down", 75, 5s + 0s, true, false},
        {"host rebooted: ledger from another boot", 105, 5s, false, true},
    };
    for (const auto& c : cases) {
        BOOST_TEST_CONTEXT(c.what) {
            driver d;
            const auto T = d.steady_now;
            if (c.remembered)
                d.machine.remember_run({T - 101s, T - 100s}, T);
            d.wait(c.later - 1s);
            const auto result = d.feed(up(L::healthy, c.uptime_at_first_answer));
            BOOST_TEST(result.new_run == c.new_run);
            BOOST_TEST(result.resumed_run == !c.new_run);
            BOOST_TEST(!result.rebooted);  // the first contact of this daemon
            BOOST_TEST(d.machine.boot_count() == 1u);
            BOOST_TEST(result.provisioning_due);  // the plan decides what, if anything, to send
        }
    }
}

// A VM paused (QMP stop): its clocks stop, ours run on. The connection stays open through the
// grace period; answers on it are one run. If the grace ran out and the link reconnected, the
// start time moved by the pause: still not a restart while it stays before the run's last word.
BOOST_AUTO_TEST_CASE(a_pause_shorter_or_longer_than_the_grace_is_not_a_restart) {
    {
        driver d;                                   // shorter: the same connection
        d.feed_all(path_to(guest_state::healthy));  // uptime 100 at t2
        d.machine.mark_provisioned(*d.machine.begin_provisioning());
        d.feed(unresponsive());
        d.wait(20s);
        const auto back = d.feed(ev::reply_received{});
        BOOST_TEST((d.machine.state() == guest_state::healthy));
        BOOST_TEST(!back.rebooted);
        const auto health_after = d.feed(health(L::healthy, 103));  // 20 s of guest time lost
        BOOST_TEST(!health_after.rebooted);
        BOOST_TEST(!health_after.provisioning_due);
    }
    {
        // Longer: dropped after the grace, then a reconnect. The guest has been up 1000 s, longer
        // than the pause.
        driver d;
        d.feed_all({ev::link_connecting{}, up(L::healthy, 1000)});
        d.machine.mark_provisioned(*d.machine.begin_provisioning());
        const auto last_word = d.steady_now;
        d.feed(unresponsive());
        d.wait(120s);
        d.feed(ev::link_lost{"no answer for 2m after the guest became unresponsive", last_word});
        d.wait(30s);  // paused about 150 s in all, then resumed
        const auto result = d.feed(up(L::healthy, 1003));
        BOOST_TEST(!result.rebooted);
        BOOST_TEST(!result.provisioning_due);
    }
    {
        // Longer than the guest's uptime: the start moved past its last word, and a pause cannot
        // be told from a restart. The safe side: a new run, provisioned again.
        driver d;
        d.feed_all({ev::link_connecting{}, up(L::healthy, 10)});
        d.machine.mark_provisioned(*d.machine.begin_provisioning());
        const auto last_word = d.steady_now;
        d.feed(unresponsive());
        d.wait(120s);
        d.feed(ev::link_lost{"no answer", last_word});
        const auto result = d.feed(up(L::healthy, 11));
        BOOST_TEST(result.rebooted);
        BOOST_TEST(result.provisioning_due);
    }
}

// A provisioning item that times out while the guest is paused fails the attempt; when the guest
// answers again on the same connection, the rest is due at once, without waiting for a
// reconnect that may never come.
BOOST_AUTO_TEST_CASE(a_failed_attempt_is_due_again_when_a_paused_guest_answers) {
    driver d;
    d.feed_all(path_to(guest_state::healthy));
    const auto ticket = d.machine.begin_provisioning();
    BOOST_TEST_REQUIRE(ticket.has_value());
    d.feed(unresponsive());
    BOOST_TEST(d.machine.mark_provisioning_failed(*ticket));
    BOOST_TEST(!d.machine.needs_provisioning());
    const auto back = d.feed(ev::reply_received{});
    BOOST_TEST(back.provisioning_due);
    BOOST_TEST(d.machine.needs_provisioning());
    BOOST_TEST(d.machine.boot_count() == 1u);  // the same run
}

BOOST_AUTO_TEST_SUITE_END()

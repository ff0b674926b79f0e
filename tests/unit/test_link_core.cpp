// link_core (the guest link's logic) and reconnect_backoff, tested without sockets or clocks:
// bytes go in as the guest would send them, time is passed in.
#include <chrono>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <boost/asio/error.hpp>
#include <boost/test/unit_test.hpp>

#include <stereos/link/link_core.hpp>
#include <stereos/link/link_error.hpp>
#include <stereos/link/reconnect_backoff.hpp>
#include <stereos/protocol/codec.hpp>

using namespace stereos;
using namespace std::chrono_literals;
using boost::system::error_code;
using link::link_core;
using link::link_error;
using link::link_event;
using link::request_outcome;
using protocol::guest_message;

namespace {

using time_point = link::link_core::clock::time_point;
const time_point t0 = time_point{} + 1000h;

// What a waiter was completed with.
struct recording_waiter final : link::link_core::waiter {
    std::optional<error_code> error;
    std::optional<guest_message> reply;
    int calls = 0;
    void complete(error_code ec, guest_message message) override {
        ++calls;
        if (ec)
            error = ec;
        else
            reply = std::move(message);
    }
    bool failed_with(link::link_error e) const { return error && *error == error_code(e); }
};

const protocol::host_message ping{protocol::ping_request{}};
const protocol::host_message health{protocol::get_health_request{}};
const protocol::host_message mount{protocol::mount_payload{"t", "/p", "9p", false}};

constexpr std::string_view pong_line = "{\"type\":\"pong\"}\n";
constexpr std::string_view health_line =
    "{\"type\":\"health\",\"payload\":{\"state\":\"healthy\",\"uptime_seconds\":5}}\n";
std::string health_with_uptime(int uptime) {
    return "{\"type\":\"health\",\"payload\":{\"state\":\"healthy\",\"uptime_seconds\":" +
           std::to_string(uptime) + "}}\n";
}

struct core_fixture {
    link::guest_link_options options = [] {
        link::guest_link_options o;
        o.connect_timeout = 2s;
        o.request_timeout = 10s;
        o.keepalive_interval = 15s;
        return o;
    }();
    // Every step's decisions, kept: the tests read the events told so far.
    link::link_actions actions;
    std::vector<link::link_event>& events = actions.events;
    link::link_core core{options};

    void on_bytes(std::string_view bytes, time_point now) { core.on_bytes(bytes, now, actions); }
    void on_deadline(time_point now) { core.on_deadline(now, actions); }

    template <class Event>
    std::size_t count() const {
        std::size_t n = 0;
        for (const auto& e : events)
            n += std::holds_alternative<Event>(e) ? 1 : 0;
        return n;
    }

    // Writes everything the core has to write, as a socket that takes it all would.
    std::string written() {
        std::string out;
        while (true) {
            const auto bytes = core.prepare_write();
            if (bytes.empty())
                return out;
            out += bytes;
            core.commit_write(bytes.size());
        }
    }

    // Connects at `now` and answers the handshake: the core is then serving.
    void bring_up(time_point now = t0) {
        core.on_connected(now, now + options.connect_timeout);
        BOOST_TEST_REQUIRE(written() == "{\"type\":\"get_health\"}\n");
        on_bytes(health_line, now);
        BOOST_TEST_REQUIRE(core.is_up());
    }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(link_core_handshake)

BOOST_AUTO_TEST_CASE(the_lines_written_without_the_codec_are_the_codecs_own) {
    BOOST_TEST(*protocol::encode(ping) == "{\"type\":\"ping\"}\n");
    BOOST_TEST(*protocol::encode(health) == "{\"type\":\"get_health\"}\n");
    const guest_message pong = protocol::pong_reply{};
    BOOST_TEST(*protocol::encode(pong) == pong_line);
}

BOOST_AUTO_TEST_CASE(a_health_answer_brings_the_link_up_and_earlier_pushes_follow_up) {
    core_fixture f;
    recording_waiter queued;
    BOOST_TEST_REQUIRE(f.core.add(ping, t0 + 10s, t0, &queued).has_value());
    f.core.on_connected(t0, t0 + 2s);
    // Only the handshake goes out before the guest answered.
    BOOST_TEST(f.written() == "{\"type\":\"get_health\"}\n");
    f.on_bytes("{\"type\":\"lifecycle\",\"payload\":{\"state\":\"ready\"}}\n", t0 + 1ms);
    BOOST_TEST(f.events.empty());
    f.on_bytes(health_line, t0 + 2ms);
    BOOST_TEST_REQUIRE(f.core.is_up());
    BOOST_TEST_REQUIRE(f.events.size() == 2u);
    const auto* up = std::get_if<link::link_events::up>(&f.events[0]);
    BOOST_TEST_REQUIRE(up != nullptr);
    BOOST_TEST(up->health.uptime_seconds == 5);
    BOOST_TEST((up->asked_at == t0));
    BOOST_TEST(std::holds_alternative<link::link_events::lifecycle>(f.events[1]));
    BOOST_TEST(f.core.stats().connects == 1u);
    // Now the queued request leaves.
    BOOST_TEST(f.written() == "{\"type\":\"ping\"}\n");
}

BOOST_AUTO_TEST_CASE(garbage_instead_of_an_answer_fails_the_attempt) {
    core_fixture f;
    f.core.on_connected(t0, t0 + 2s);
    f.written();
    f.on_bytes("HTTP/1.1 400 Bad Request\r\n", t0 + 1ms);
    BOOST_TEST(f.core.drop_requested());
    const auto end = f.core.on_connection_ended(false, t0 + 1ms);
    BOOST_TEST(!end.was_up);
    BOOST_TEST((end.reason == error_code(link::link_error::protocol_error)));
    BOOST_TEST(end.detail.find("undecodable line from guest") != std::string::npos);
    BOOST_TEST(f.events.empty());
}

BOOST_AUTO_TEST_CASE(a_reply_of_another_kind_fails_the_attempt) {
    core_fixture f;
    f.core.on_connected(t0, t0 + 2s);
    f.written();
    f.on_bytes(pong_line, t0 + 1ms);
    const auto end = f.core.on_connection_ended(false, t0 + 1ms);
    BOOST_TEST((end.reason == error_code(link::link_error::handshake_failed)));
    BOOST_TEST(end.detail.find("guest answered get_health with") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(silence_until_the_deadline_is_a_handshake_timeout) {
    core_fixture f;
    f.core.on_connected(t0, t0 + 2s);
    f.written();
    BOOST_TEST((f.core.next_deadline() == t0 + 2s));
    f.on_deadline(t0 + 1999ms);
    BOOST_TEST(!f.core.drop_requested());
    f.on_deadline(t0 + 2s);
    BOOST_TEST(f.core.drop_requested());
    const auto end = f.core.on_connection_ended(false, t0 + 2s);
    BOOST_TEST(!end.was_up);
    BOOST_TEST((end.reason == error_code(link::link_error::handshake_timeout)));
    BOOST_TEST(end.detail == "connected, but no answer to get_health within 2s of connecting");
}

BOOST_AUTO_TEST_CASE(eof_before_the_answer_is_a_failed_attempt) {
    core_fixture f;
    f.core.on_connected(t0, t0 + 2s);
    f.written();
    f.core.on_lost(boost::asio::error::eof, "read");
    const auto end = f.core.on_connection_ended(false, t0 + 1ms);
    BOOST_TEST(!end.was_up);
    BOOST_TEST((end.reason == error_code(link::link_error::handshake_failed)));
    BOOST_TEST(end.detail == "connected, but the connection closed before the guest answered");
    BOOST_TEST(f.core.stats().disconnects == 0u);
}

BOOST_AUTO_TEST_CASE(lines_after_the_answer_in_the_same_read_are_served) {
    core_fixture f;
    f.core.on_connected(t0, t0 + 2s);
    f.written();
    f.on_bytes(
        std::string(health_line) + "{\"type\":\"lifecycle\",\"payload\":{\"state\":\"healthy\"}}\n",
        t0 + 1ms);
    BOOST_TEST(f.core.is_up());
    BOOST_TEST(f.count<link::link_events::lifecycle>() == 1u);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(link_core_requests)

BOOST_AUTO_TEST_CASE(replies_complete_requests_in_fifo_order_from_one_gathered_write) {
    core_fixture f;
    f.bring_up();
    recording_waiter a, b, c;
    f.core.add(ping, t0 + 10s, t0, &a);
    f.core.add(health, t0 + 10s, t0, &b);
    f.core.add(mount, t0 + 10s, t0, &c);
    BOOST_TEST(f.core.queued_bytes() > 0u);
    const auto wire = f.written();
    BOOST_TEST(wire.find("ping") < wire.find("get_health"));
    BOOST_TEST(wire.find("get_health") < wire.find("mount"));
    BOOST_TEST(f.core.written_requests() == 3u);
    BOOST_TEST(f.core.queued_bytes() == 0u);

    f.on_bytes(
        std::string(pong_line) + health_with_uptime(9) +
            R"({"type":"ack","payload":{"reply_to":"mount","ok":false,"error":"no such tag"}})"
            "\n",
        t0 + 3ms);
    BOOST_TEST(a.calls == 1);
    BOOST_TEST(std::holds_alternative<protocol::pong_reply>(*a.reply));
    BOOST_TEST(std::get<protocol::health_payload>(*b.reply).uptime_seconds == 9);
    // ok:false is data for the caller, not an error.
    BOOST_TEST(!c.error.has_value());
    BOOST_TEST_REQUIRE(c.reply.has_value());
    BOOST_TEST(std::get<protocol::ack_payload>(*c.reply).error == "no such tag");
    BOOST_TEST(f.core.queued_requests() == 0u);
    const auto& m = f.core.metrics();
    BOOST_TEST(
        m.counts[mount.index()][static_cast<std::size_t>(link::request_outcome::guest_error)] ==
        1u);
    BOOST_TEST(m.counts[ping.index()][static_cast<std::size_t>(link::request_outcome::ok)] == 1u);
    // Three requests and the handshake, each within 500 µs or 5 ms.
    BOOST_TEST(m.latency_count == 4u);
    BOOST_TEST(m.latency_buckets[0] == 1u);  // the handshake, answered at once
    BOOST_TEST(m.latency_buckets[3] == 3u);  // 3 ms: under 5 ms
}

BOOST_AUTO_TEST_CASE(a_request_times_out_at_its_deadline_and_its_late_reply_is_dropped) {
    core_fixture f;
    f.bring_up();
    recording_waiter first, second;
    f.core.add(health, t0 + 10s, t0, &first);
    f.core.add(health, t0 + 20s, t0, &second);
    f.written();
    BOOST_TEST((f.core.next_deadline() == t0 + 10s));
    f.on_deadline(t0 + 10s);
    BOOST_TEST(first.failed_with(link::link_error::request_timeout));
    BOOST_TEST(second.calls == 0);
    BOOST_TEST(f.core.stats().timeouts == 1u);
    // The late reply to the first request must not reach the second.
    f.on_bytes(health_with_uptime(1), t0 + 11s);
    BOOST_TEST(second.calls == 0);
    BOOST_TEST(f.core.stats().late_replies_dropped == 1u);
    f.on_bytes(health_with_uptime(2), t0 + 11s);
    BOOST_TEST(std::get<protocol::health_payload>(*second.reply).uptime_seconds == 2);
    BOOST_TEST(first.calls == 1);
    BOOST_TEST(!f.core.drop_requested());
}

BOOST_AUTO_TEST_CASE(an_unwritten_request_past_its_deadline_is_unavailable_and_removed) {
    core_fixture f;
    recording_waiter a, b;
    f.core.add(ping, t0 + 1s, t0, &a);
    f.core.add(health, t0 + 5s, t0, &b);
    f.on_deadline(t0 + 1s);
    BOOST_TEST(a.failed_with(link::link_error::guest_unavailable));
    BOOST_TEST(f.core.queued_requests() == 1u);
    f.bring_up(t0 + 2s);
    BOOST_TEST(f.written() == "{\"type\":\"get_health\"}\n");
}

BOOST_AUTO_TEST_CASE(withdrawing_removes_an_unwritten_request_and_abandons_a_written_one) {
    core_fixture f;
    f.bring_up();
    recording_waiter written, unwritten, last;
    const auto written_id = *f.core.add(ping, t0 + 10s, t0, &written);
    f.written();
    const auto unwritten_id = *f.core.add(mount, t0 + 10s, t0, &unwritten);
    f.core.add(health, t0 + 10s, t0, &last);
    BOOST_TEST((f.core.withdraw(unwritten_id, t0) ==
                link::link_core::withdraw_outcome::removed_unwritten));
    BOOST_TEST(
        (f.core.withdraw(written_id, t0) == link::link_core::withdraw_outcome::abandoned_written));
    BOOST_TEST((f.core.withdraw(written_id, t0) == link::link_core::withdraw_outcome::not_found));
    BOOST_TEST(f.written() == "{\"type\":\"get_health\"}\n");
    f.on_bytes(std::string(pong_line) + health_with_uptime(3), t0 + 1ms);
    BOOST_TEST(written.calls == 0);
    BOOST_TEST(unwritten.calls == 0);
    BOOST_TEST(std::get<protocol::health_payload>(*last.reply).uptime_seconds == 3);
}

BOOST_AUTO_TEST_CASE(three_consecutive_timeouts_make_one_unresponsive_verdict) {
    core_fixture f;
    f.bring_up();
    recording_waiter w[4];
    for (int i = 0; i < 4; ++i)
        f.core.add(ping, t0 + 10s + std::chrono::seconds(i), t0, &w[i]);
    f.written();
    f.on_deadline(t0 + 10s);
    f.on_deadline(t0 + 11s);
    BOOST_TEST(!f.core.drop_requested());
    BOOST_TEST(f.count<link::link_events::unresponsive>() == 0u);
    f.on_deadline(t0 + 13s);  // the third and fourth at once
    BOOST_TEST(f.count<link::link_events::unresponsive>() == 1u);
    const auto& verdict = std::get<link::link_events::unresponsive>(f.events.back());
    BOOST_TEST((verdict.cause == error_code(link::link_error::guest_unresponsive)));
    BOOST_TEST(verdict.reason == "3 consecutive requests timed out");
    // Kept open for the grace period (a paused VM answers after `cont`), then dropped.
    BOOST_TEST(!f.core.drop_requested());
    BOOST_TEST((f.core.next_deadline() <= t0 + 13s + 120s));
    f.on_deadline(t0 + 13s + 120s - 1ms);
    BOOST_TEST(!f.core.drop_requested());
    f.on_deadline(t0 + 13s + 120s);
    BOOST_TEST(f.core.drop_requested());
    const auto end = f.core.on_connection_ended(false, t0 + 133s);
    BOOST_TEST(end.was_up);
    BOOST_TEST((end.reason == error_code(link::link_error::guest_unresponsive)));
    BOOST_TEST(end.detail == "no answer for 120s after the guest became unresponsive");
}

// A paused VM: its late answers arrive on the same connection, which was never broken.
BOOST_AUTO_TEST_CASE(an_answer_within_the_grace_ends_it_and_keeps_the_connection) {
    core_fixture f;
    f.bring_up();
    recording_waiter w[3], after;
    for (auto& waiter : w)
        f.core.add(ping, t0 + 10s, t0, &waiter);
    f.written();
    f.on_deadline(t0 + 10s);
    BOOST_TEST(f.count<link::link_events::unresponsive>() == 1u);
    BOOST_TEST(f.core.is_unresponsive());
    // 20 s later the guest resumes and answers everything in order: the abandoned requests'
    // replies are consumed, and the next request gets its own.
    f.core.add(ping, t0 + 40s, t0 + 29s, &after);
    f.written();
    std::string four;
    for (int i = 0; i < 4; ++i)
        four += pong_line;
    f.on_bytes(four, t0 + 30s);
    BOOST_TEST(f.count<link::link_events::responsive>() == 1u);
    BOOST_TEST(!f.core.is_unresponsive());
    BOOST_TEST(after.calls == 1);
    f.on_deadline(t0 + 200s);
    BOOST_TEST(!f.core.drop_requested());
    BOOST_TEST(f.core.stats().late_replies_dropped == 3u);
}

// A reload's new timings reach the live connection.
BOOST_AUTO_TEST_CASE(new_options_apply_to_the_live_connection) {
    core_fixture f;
    f.bring_up();
    auto options = f.core.options();
    options.keepalive_interval = 2s;
    f.core.set_options(options);
    BOOST_TEST(f.core.is_up());
    BOOST_TEST((f.core.keepalive_due() == t0 + 2s));
}

BOOST_AUTO_TEST_CASE(any_reply_resets_the_timeout_count_a_late_one_too) {
    core_fixture f;
    f.bring_up();
    recording_waiter w[5];
    for (int i = 0; i < 2; ++i)
        f.core.add(ping, t0 + 10s, t0, &w[i]);
    f.written();
    f.on_deadline(t0 + 10s);
    BOOST_TEST(f.core.consecutive_timeouts() == 2u);
    f.on_bytes(pong_line, t0 + 10s);  // late, dropped, but the guest lives
    BOOST_TEST(f.core.consecutive_timeouts() == 0u);
    for (int i = 2; i < 4; ++i)
        f.core.add(ping, t0 + 30s, t0 + 20s, &w[i]);
    f.written();
    f.on_deadline(t0 + 30s);
    BOOST_TEST(!f.core.drop_requested());
}

BOOST_AUTO_TEST_CASE(a_reply_of_the_wrong_kind_or_with_nothing_outstanding_is_a_violation) {
    {
        core_fixture f;
        f.bring_up();
        f.on_bytes(pong_line, t0);
        BOOST_TEST(f.count<link::link_events::protocol_violation>() == 1u);
        const auto end = f.core.on_connection_ended(false, t0);
        BOOST_TEST((end.reason == error_code(link::link_error::protocol_error)));
        BOOST_TEST(end.detail.find("no request outstanding") != std::string::npos);
    }
    {
        core_fixture f;
        f.bring_up();
        recording_waiter a, b;
        f.core.add(mount, t0 + 10s, t0, &a);
        f.written();
        f.core.add(ping, t0 + 10s, t0, &b);  // unwritten: stays for the next connection
        f.on_bytes(R"({"type":"ack","payload":{"reply_to":"set_config","ok":true}})"
                   "\n",
                   t0);
        const auto end = f.core.on_connection_ended(false, t0);
        BOOST_TEST(end.detail.find("expected ack for mount") != std::string::npos);
        BOOST_TEST(a.failed_with(link::link_error::protocol_error));
        BOOST_TEST(b.calls == 0);
        BOOST_TEST(f.core.queued_requests() == 1u);
        BOOST_TEST(f.core.stats().protocol_errors == 1u);
    }
}

BOOST_AUTO_TEST_CASE(pushes_interleaved_with_replies_byte_by_byte_never_complete_requests) {
    core_fixture f;
    f.bring_up();
    recording_waiter w[3];
    f.core.add(ping, t0 + 10s, t0, &w[0]);
    f.core.add(health, t0 + 10s, t0, &w[1]);
    f.core.add(ping, t0 + 10s, t0, &w[2]);
    f.written();
    const std::string push = "{\"type\":\"lifecycle\",\"payload\":{\"state\":\"degraded\"}}\r\n";
    const std::string stream = push + std::string(pong_line) + push + push + health_with_uptime(4) +
                               "\n" + std::string(pong_line) + push;
    for (char c : stream)
        f.on_bytes(std::string_view(&c, 1), t0);
    BOOST_TEST(f.count<link::link_events::lifecycle>() == 4u);
    BOOST_TEST(std::holds_alternative<protocol::pong_reply>(*w[0].reply));
    BOOST_TEST(std::get<protocol::health_payload>(*w[1].reply).uptime_seconds == 4);
    BOOST_TEST(std::holds_alternative<protocol::pong_reply>(*w[2].reply));
    BOOST_TEST(!f.core.drop_requested());
}

BOOST_AUTO_TEST_CASE(unknown_types_are_reported_and_skipped) {
    core_fixture f;
    f.bring_up();
    recording_waiter a;
    f.core.add(ping, t0 + 10s, t0, &a);
    f.written();
    f.on_bytes("{\"type\":\"telemetry\"}\n", t0);
    f.on_bytes(pong_line, t0);
    BOOST_TEST(f.count<link::link_events::unknown_message>() == 1u);
    BOOST_TEST(a.reply.has_value());
    BOOST_TEST(!f.core.drop_requested());
}

BOOST_AUTO_TEST_CASE(an_over_long_line_is_a_violation) {
    core_fixture f;
    f.bring_up();
    f.on_bytes(std::string(protocol::max_line_bytes + 10, 'x'), t0);
    BOOST_TEST(f.core.drop_requested());
    BOOST_TEST(f.count<link::link_events::protocol_violation>() == 1u);
}

BOOST_AUTO_TEST_CASE(oversized_requests_and_a_full_queue_are_refused) {
    core_fixture f;
    f.options.max_queued_requests = 2;
    link::link_core core{f.options};
    recording_waiter w;
    const protocol::host_message huge{
        protocol::config_payload{std::string(protocol::max_line_bytes, 'x')}};
    BOOST_TEST((core.add(huge, t0 + 1s, t0, &w).error() ==
                error_code(link::link_error::request_too_large)));
    BOOST_TEST(core.add(ping, t0 + 1s, t0, &w).has_value());
    BOOST_TEST(core.add(ping, t0 + 1s, t0, &w).has_value());
    BOOST_TEST(
        (core.add(ping, t0 + 1s, t0, &w).error() == error_code(link::link_error::queue_full)));
    BOOST_TEST(w.calls == 0);
    BOOST_TEST(core.queued_bytes() == 2 * std::string_view("{\"type\":\"ping\"}\n").size());
}

BOOST_AUTO_TEST_CASE(connection_loss_fails_written_and_keeps_unwritten_for_the_next) {
    core_fixture f;
    f.bring_up();
    recording_waiter written, abandoned, unwritten;
    f.core.add(ping, t0 + 10s, t0, &written);
    const auto gone = *f.core.add(ping, t0 + 10s, t0, &abandoned);
    f.written();
    f.core.withdraw(gone, t0);
    f.core.add(health, t0 + 10s, t0, &unwritten);
    f.core.on_lost(boost::asio::error::connection_reset, "read");
    const auto end = f.core.on_connection_ended(false, t0 + 1s);
    BOOST_TEST(end.was_up);
    BOOST_TEST(end.detail.find("read failed") == 0u);
    BOOST_TEST(written.failed_with(link::link_error::connection_lost));
    BOOST_TEST(abandoned.calls == 0);
    BOOST_TEST(unwritten.calls == 0);
    BOOST_TEST(f.core.stats().disconnects == 1u);

    f.bring_up(t0 + 2s);
    BOOST_TEST(f.written() == "{\"type\":\"get_health\"}\n");
    f.on_bytes(health_line, t0 + 2s);
    BOOST_TEST(unwritten.reply.has_value());
}

BOOST_AUTO_TEST_CASE(fail_all_completes_everything_live_once) {
    core_fixture f;
    f.bring_up();
    recording_waiter a, b, c;
    f.core.add(ping, t0 + 10s, t0, &a);
    const auto abandoned = *f.core.add(ping, t0 + 10s, t0, &b);
    f.written();
    f.core.withdraw(abandoned, t0);
    f.core.add(ping, t0 + 10s, t0, &c);
    f.core.fail_all(link::link_error::link_stopped, t0);
    BOOST_TEST(a.failed_with(link::link_error::link_stopped));
    BOOST_TEST(b.calls == 0);
    BOOST_TEST(c.failed_with(link::link_error::link_stopped));
    BOOST_TEST(f.core.queued_requests() == 0u);
    BOOST_TEST(f.core.queued_bytes() == 0u);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(link_core_keepalive_and_drops)

BOOST_AUTO_TEST_CASE(an_idle_link_pings_after_the_keepalive_interval_and_not_before) {
    core_fixture f;
    f.bring_up();
    BOOST_TEST((f.core.next_deadline() == t0 + 15s));
    f.on_deadline(t0 + 14s);
    BOOST_TEST(f.written().empty());
    // Anything received pushes the ping back.
    f.on_bytes("{\"type\":\"lifecycle\",\"payload\":{\"state\":\"healthy\"}}\n", t0 + 10s);
    f.on_deadline(t0 + 15s);
    BOOST_TEST(f.written().empty());
    f.on_deadline(t0 + 25s);
    BOOST_TEST(f.written() == "{\"type\":\"ping\"}\n");
    // One at a time, and answered it is forgotten.
    f.on_deadline(t0 + 26s);
    BOOST_TEST(f.written().empty());
    f.on_bytes(pong_line, t0 + 26s);
    BOOST_TEST(f.core.queued_requests() == 0u);
    BOOST_TEST((f.core.next_deadline() == t0 + 41s));
    BOOST_TEST(f.core.metrics().counts[ping.index()][0] == 1u);
}

BOOST_AUTO_TEST_CASE(an_unanswered_keepalive_is_a_keepalive_timeout) {
    core_fixture f;
    f.bring_up();
    f.on_deadline(t0 + 15s);
    f.written();
    f.on_deadline(t0 + 25s - 1ms);
    BOOST_TEST(!f.core.drop_requested());
    f.on_deadline(t0 + 25s);
    BOOST_TEST(f.count<link::link_events::unresponsive>() == 1u);
    const auto& verdict = std::get<link::link_events::unresponsive>(f.events.back());
    BOOST_TEST((verdict.cause == error_code(link::link_error::keepalive_timeout)));
    BOOST_TEST(verdict.reason == "keepalive ping unanswered within 10s");
    BOOST_TEST(!f.core.drop_requested());  // until the grace period ends
}

BOOST_AUTO_TEST_CASE(a_keepalive_timeout_that_is_also_the_nth_timeout_is_one_verdict) {
    core_fixture f;
    f.bring_up();
    recording_waiter a, b;
    f.core.add(ping, t0 + 24s, t0 + 14s, &a);
    f.core.add(ping, t0 + 24s, t0 + 14s, &b);
    f.on_deadline(t0 + 15s);  // idle since t0: the keepalive joins them
    f.written();
    f.on_deadline(t0 + 25s);
    BOOST_TEST(f.count<link::link_events::unresponsive>() == 1u);
    const auto& verdict = std::get<link::link_events::unresponsive>(f.events.back());
    BOOST_TEST((verdict.cause == error_code(link::link_error::guest_unresponsive)));
}

BOOST_AUTO_TEST_CASE(the_first_drop_reason_wins_and_stopping_decides_what_written_requests_get) {
    {
        core_fixture f;
        f.bring_up();
        f.core.drop(link::link_error::reconnect_requested, "reconnect requested");
        f.core.on_lost(boost::asio::error::operation_aborted, "read");  // the close it caused
        f.on_bytes(pong_line, t0);                                      // ignored once dropping
        const auto end = f.core.on_connection_ended(false, t0);
        BOOST_TEST((end.reason == error_code(link::link_error::reconnect_requested)));
        BOOST_TEST(end.detail == "reconnect requested");
    }
    {
        core_fixture f;
        f.bring_up();
        recording_waiter w;
        f.core.add(ping, t0 + 10s, t0, &w);
        f.written();
        f.core.on_lost(boost::asio::error::eof, "read");
        const auto end = f.core.on_connection_ended(false, t0);
        BOOST_TEST((end.reason == error_code(link::link_error::connection_closed)));
        BOOST_TEST(end.detail == "the guest closed the connection");
        BOOST_TEST(w.failed_with(link::link_error::connection_lost));
    }
    {
        core_fixture f;
        f.bring_up();
        recording_waiter w;
        f.core.add(ping, t0 + 10s, t0, &w);
        f.written();
        f.core.on_lost(boost::asio::error::operation_aborted, "read");
        f.core.on_connection_ended(true, t0);
        BOOST_TEST(w.failed_with(link::link_error::link_stopped));
    }
    {
        core_fixture f;
        f.bring_up();
        const auto end = f.core.on_connection_ended(false, t0);  // closed without a reason
        BOOST_TEST((end.reason == error_code(link::link_error::connection_closed)));
    }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(link_core_actions)

// What managed_guest's provisioning does: react to `up` by sending requests. The core told the
// owner after the step returned, so the request joins the queue behind the earlier ones.
BOOST_AUTO_TEST_CASE(an_owner_adding_a_request_on_up_gets_it_written_after_the_earlier_ones) {
    core_fixture f;
    recording_waiter mounted, pinged;
    BOOST_TEST_REQUIRE(f.core.add(mount, t0 + 10s, t0, &mounted).has_value());
    f.core.on_connected(t0, t0 + 2s);
    BOOST_TEST_REQUIRE(f.written() == "{\"type\":\"get_health\"}\n");
    f.on_bytes(
        std::string(health_line) + "{\"type\":\"lifecycle\",\"payload\":{\"state\":\"ready\"}}\n",
        t0 + 1ms);
    BOOST_TEST_REQUIRE(f.events.size() == 2u);
    BOOST_TEST(std::holds_alternative<link::link_events::up>(f.events[0]));
    BOOST_TEST(std::holds_alternative<link::link_events::lifecycle>(f.events[1]));
    BOOST_TEST(f.actions.write);  // the mount queued before the connection waits
    BOOST_TEST(!f.actions.close);

    // The owner's handler, run as the shell runs it: after the step, with the core consistent.
    for (const auto& event : f.events) {
        if (std::holds_alternative<link::link_events::up>(event))
            BOOST_TEST_REQUIRE(f.core.add(ping, t0 + 10s, t0 + 1ms, &pinged).has_value());
    }
    f.actions.clear();
    BOOST_TEST(f.written() == *protocol::encode(mount) + "{\"type\":\"ping\"}\n");
    f.on_bytes(R"({"type":"ack","payload":{"reply_to":"mount","ok":true}})"
               "\n" +
                   std::string(pong_line),
               t0 + 2ms);
    BOOST_TEST(mounted.reply.has_value());
    BOOST_TEST(pinged.reply.has_value());
    BOOST_TEST(f.events.empty());
    BOOST_TEST(f.core.stats().protocol_errors == 0u);
}

BOOST_AUTO_TEST_CASE(an_owner_reconnecting_on_an_event_finds_the_step_finished) {
    core_fixture f;
    f.bring_up();
    f.actions.clear();
    f.on_bytes(
        "{\"type\":\"lifecycle\",\"payload\":{\"state\":\"healthy\"}}\n"
        "{\"type\":\"lifecycle\",\"payload\":{\"state\":\"ready\"}}\n",
        t0 + 1ms);
    // Both lines were sorted before the owner heard of the first.
    BOOST_TEST(f.count<link::link_events::lifecycle>() == 2u);
    f.core.drop(link::link_error::reconnect_requested, "reconnect requested");
    f.on_bytes(pong_line, t0 + 2ms);  // nothing is sorted once dropping
    BOOST_TEST(f.count<link::link_events::protocol_violation>() == 0u);
    BOOST_TEST(f.actions.close);
    BOOST_TEST(!f.actions.write);
}

BOOST_AUTO_TEST_CASE(a_step_tells_the_owner_to_close_or_to_write) {
    {
        core_fixture f;
        f.bring_up();
        f.actions.clear();
        f.on_bytes(pong_line, t0 + 1ms);  // a reply with nothing outstanding
        BOOST_TEST(f.actions.close);
        BOOST_TEST(f.count<link::link_events::protocol_violation>() == 1u);
    }
    {
        core_fixture f;
        f.bring_up();
        f.actions.clear();
        f.on_deadline(t0 + 15s);  // idle for keepalive_interval: a ping is due
        BOOST_TEST(f.actions.write);
        BOOST_TEST(!f.actions.close);
        BOOST_TEST(f.written() == "{\"type\":\"ping\"}\n");
    }
}

BOOST_AUTO_TEST_CASE(a_large_request_gives_its_write_buffer_back_once_written) {
    core_fixture f;
    f.bring_up();
    const std::size_t small_bound = 128 * 1024;  // link_core keeps up to 64 KiB per buffer
    BOOST_TEST(f.core.write_capacity() <= small_bound);
    recording_waiter w;
    const protocol::host_message large{
        protocol::config_payload{std::string(protocol::max_line_bytes - 1024, 'c')}};
    BOOST_TEST_REQUIRE(f.core.add(large, t0 + 10s, t0, &w).has_value());
    BOOST_TEST(f.core.write_capacity() >= protocol::max_line_bytes - 1024);
    // Written in pieces, as a socket takes it.
    std::size_t written = 0;
    for (auto bytes = f.core.prepare_write(); !bytes.empty(); bytes = f.core.prepare_write()) {
        const auto piece = std::min<std::size_t>(bytes.size(), 200 * 1024);
        written += piece;
        f.core.commit_write(piece);
    }
    BOOST_TEST(written > protocol::max_line_bytes - 1024);
    BOOST_TEST(f.core.write_capacity() <= small_bound);
    // A small request afterwards does not bring the megabyte back.
    recording_waiter p;
    f.core.add(ping, t0 + 10s, t0, &p);
    BOOST_TEST(f.written() == "{\"type\":\"ping\"}\n");
    BOOST_TEST(f.core.write_capacity() <= small_bound);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(backoff)

using std::chrono::milliseconds;

BOOST_AUTO_TEST_CASE(delays_double_with_jitter_up_to_the_cap) {
    link::reconnect_backoff b(milliseconds{100}, milliseconds{5000}, 42);
    const std::vector<long> steps{100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000};
    for (long step : steps) {
        const auto d = b.next().count();
        BOOST_TEST(d >= step / 2);
        BOOST_TEST(d <= step);
    }
}

BOOST_AUTO_TEST_CASE(reset_starts_again_from_the_initial_delay) {
    link::reconnect_backoff b(milliseconds{100}, milliseconds{5000}, 7);
    for (int i = 0; i < 10; ++i)
        b.next();
    b.reset();
    BOOST_TEST(b.next().count() <= 100);
}

BOOST_AUTO_TEST_CASE(jitter_spreads_links_that_dropped_together) {
    std::set<long> first_delays;
    for (std::uint32_t seed = 1; seed <= 50; ++seed) {
        link::reconnect_backoff b(milliseconds{1000}, milliseconds{5000}, seed);
        first_delays.insert(b.next().count());
    }
    BOOST_TEST(first_delays.size() > 25u);
}

BOOST_AUTO_TEST_SUITE_END()

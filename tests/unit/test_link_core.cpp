// pending_requests and reconnect_backoff: the link's pure core, tested without sockets.
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <boost/test/unit_test.hpp>

#include "daemon/link/link_error.hpp"
#include "daemon/pending_requests.hpp"
#include "daemon/link/reconnect_backoff.hpp"

using namespace stereos;
using daemon::link_error;
using daemon::pending_requests;
using protocol::ack_payload;
using protocol::guest_message;
using protocol::health_payload;
using protocol::pong_reply;

namespace {

// What a completion delivered.
struct outcome {
    std::optional<boost::system::error_code> error;
    std::optional<guest_message> reply;
    int calls = 0;
};

pending_requests::completion record(outcome& into) {
    return [&into](boost::system::error_code ec, guest_message reply) {
        ++into.calls;
        if (ec) {
            into.error = ec;
        } else {
            into.reply = std::move(reply);
        }
    };
}

const protocol::host_message ping{protocol::ping_request{}};
const protocol::host_message health{protocol::get_health_request{}};
const protocol::host_message mount{protocol::mount_payload{"t", "/p", "9p", false}};

}  // namespace

BOOST_AUTO_TEST_SUITE(pending_request_queue)

BOOST_AUTO_TEST_CASE(replies_complete_requests_in_fifo_order) {
    pending_requests q;
    outcome a, b, c;
    q.add(ping, "P\n", record(a));
    q.add(health, "H\n", record(b));
    q.add(mount, "M\n", record(c));
    std::string wire;
    BOOST_TEST(q.take_unwritten(wire) == 3u);
    BOOST_TEST(wire == "P\nH\nM\n");

    BOOST_TEST((q.on_reply(pong_reply{}) == pending_requests::reply_outcome::completed));
    BOOST_TEST((q.on_reply(health_payload{}) == pending_requests::reply_outcome::completed));
    BOOST_TEST((q.on_reply(ack_payload{"mount", false, "no such tag"}) ==
                pending_requests::reply_outcome::completed));
    BOOST_TEST(a.calls == 1);
    BOOST_TEST(std::holds_alternative<pong_reply>(*a.reply));
    BOOST_TEST(std::holds_alternative<health_payload>(*b.reply));
    // ok:false is data for the caller, not an error.
    BOOST_TEST(!c.error.has_value());
    BOOST_TEST(std::get<ack_payload>(*c.reply).error == "no such tag");
    BOOST_TEST(q.empty());
}

BOOST_AUTO_TEST_CASE(everything_queued_leaves_in_one_gathered_write) {
    pending_requests q;
    outcome o;
    for (int i = 0; i < 100; ++i)
        q.add(ping, "{\"type\":\"ping\"}\n", record(o));
    BOOST_TEST(q.queued_bytes() == 1600u);
    std::string wire;
    BOOST_TEST(q.take_unwritten(wire) == 100u);
    BOOST_TEST(wire.size() == 1600u);
    BOOST_TEST(q.queued_bytes() == 0u);
    BOOST_TEST(q.written() == 100u);
    std::string again;
    BOOST_TEST(q.take_unwritten(again) == 0u);
    BOOST_TEST(again.empty());
}

BOOST_AUTO_TEST_CASE(a_late_reply_after_timeout_is_dropped) {
    pending_requests q;
    outcome first, second;
    const auto first_id = q.add(health, "H\n", record(first));
    q.add(health, "H\n", record(second));
    std::string wire;
    q.take_unwritten(wire);

    BOOST_TEST((q.cancel(first_id) == pending_requests::cancel_outcome::abandoned_written));
    // The late reply to the first request must not reach the second.
    health_payload late{protocol::lifecycle_state::booting, {}, 1};
    health_payload fresh{protocol::lifecycle_state::healthy, {}, 2};
    BOOST_TEST((q.on_reply(late) == pending_requests::reply_outcome::dropped_abandoned));
    BOOST_TEST(second.calls == 0);
    BOOST_TEST((q.on_reply(fresh) == pending_requests::reply_outcome::completed));
    BOOST_TEST(std::get<health_payload>(*second.reply).uptime_seconds == 2);
    BOOST_TEST(first.calls == 0);
}

BOOST_AUTO_TEST_CASE(cancelling_an_unwritten_request_removes_it) {
    pending_requests q;
    outcome a, b;
    const auto id = q.add(ping, "A\n", record(a));
    q.add(health, "B\n", record(b));
    BOOST_TEST((q.cancel(id) == pending_requests::cancel_outcome::removed_unwritten));
    std::string wire;
    q.take_unwritten(wire);
    BOOST_TEST(wire == "B\n");
    BOOST_TEST((q.on_reply(health_payload{}) == pending_requests::reply_outcome::completed));
    BOOST_TEST(a.calls == 0);
    BOOST_TEST(b.calls == 1);
    BOOST_TEST((q.cancel(id) == pending_requests::cancel_outcome::not_found));
}

BOOST_AUTO_TEST_CASE(a_reply_with_nothing_outstanding_is_a_protocol_error) {
    pending_requests q;
    outcome a;
    q.add(ping, "P\n", record(a));  // queued, not written
    BOOST_TEST((q.on_reply(pong_reply{}) == pending_requests::reply_outcome::nothing_outstanding));
    BOOST_TEST(a.calls == 0);
}

BOOST_AUTO_TEST_CASE(a_reply_of_the_wrong_kind_is_a_protocol_error) {
    pending_requests q;
    outcome a;
    q.add(health, "H\n", record(a));
    std::string wire;
    q.take_unwritten(wire);
    BOOST_TEST((q.on_reply(pong_reply{}) == pending_requests::reply_outcome::unexpected_kind));
    BOOST_TEST((q.on_reply(ack_payload{"get_health", true, ""}) ==
                pending_requests::reply_outcome::unexpected_kind));
    BOOST_TEST(a.calls == 0);
    BOOST_TEST(q.describe_oldest_written() == "health");
}

BOOST_AUTO_TEST_CASE(an_ack_naming_another_request_is_a_protocol_error) {
    pending_requests q;
    outcome a;
    q.add(mount, "M\n", record(a));
    std::string wire;
    q.take_unwritten(wire);
    BOOST_TEST(q.describe_oldest_written() == "ack for mount");
    BOOST_TEST((q.on_reply(ack_payload{"set_config", true, ""}) ==
                pending_requests::reply_outcome::mismatched_reply_to));
    BOOST_TEST(a.calls == 0);
}

BOOST_AUTO_TEST_CASE(connection_loss_fails_written_and_keeps_unwritten) {
    pending_requests q;
    outcome written, abandoned, unwritten;
    q.add(ping, "W\n", record(written));
    const auto gone = q.add(ping, "A\n", record(abandoned));
    std::string wire;
    q.take_unwritten(wire);
    q.cancel(gone);
    q.add(health, "U\n", record(unwritten));

    q.on_connection_lost(link_error::connection_lost);
    BOOST_TEST((written.error == boost::system::error_code(link_error::connection_lost)));
    BOOST_TEST(abandoned.calls == 0);
    BOOST_TEST(unwritten.calls == 0);
    BOOST_TEST(q.size() == 1u);
    BOOST_TEST(q.written() == 0u);

    // The survivor goes out on the next connection and completes normally.
    wire.clear();
    q.take_unwritten(wire);
    BOOST_TEST(wire == "U\n");
    BOOST_TEST((q.on_reply(health_payload{}) == pending_requests::reply_outcome::completed));
    BOOST_TEST(unwritten.reply.has_value());
}

BOOST_AUTO_TEST_CASE(fail_all_completes_everything_once) {
    pending_requests q;
    outcome a, b, c;
    q.add(ping, "A\n", record(a));
    const auto abandoned = q.add(ping, "B\n", record(b));
    std::string wire;
    q.take_unwritten(wire);
    q.cancel(abandoned);
    q.add(ping, "C\n", record(c));
    q.fail_all(link_error::link_stopped);
    BOOST_TEST(a.calls == 1);
    BOOST_TEST(b.calls == 0);
    BOOST_TEST(c.calls == 1);
    BOOST_TEST((c.error == boost::system::error_code(link_error::link_stopped)));
    BOOST_TEST(q.empty());
    BOOST_TEST(q.queued_bytes() == 0u);
}

BOOST_AUTO_TEST_CASE(a_completion_may_queue_a_new_request) {
    pending_requests q;
    outcome follow_up;
    bool queued = false;
    q.add(ping, "P\n", [&](boost::system::error_code, const guest_message&) {
        q.add(health, "H\n", record(follow_up));
        queued = true;
    });
    std::string wire;
    q.take_unwritten(wire);
    q.on_connection_lost(link_error::connection_lost);
    BOOST_TEST(queued);
    BOOST_TEST(q.unwritten() == 1u);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(backoff)

using std::chrono::milliseconds;

BOOST_AUTO_TEST_CASE(delays_double_with_jitter_up_to_the_cap) {
    daemon::reconnect_backoff b(milliseconds{100}, milliseconds{5000}, 42);
    const std::vector<long> steps{100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000};
    for (long step : steps) {
        const auto d = b.next().count();
        BOOST_TEST(d >= step / 2);
        BOOST_TEST(d <= step);
    }
}

BOOST_AUTO_TEST_CASE(reset_starts_again_from_the_initial_delay) {
    daemon::reconnect_backoff b(milliseconds{100}, milliseconds{5000}, 7);
    for (int i = 0; i < 10; ++i)
        b.next();
    b.reset();
    BOOST_TEST(b.next().count() <= 100);
}

BOOST_AUTO_TEST_CASE(jitter_spreads_links_that_dropped_together) {
    std::set<long> first_delays;
    for (std::uint32_t seed = 1; seed <= 50; ++seed) {
        daemon::reconnect_backoff b(milliseconds{1000}, milliseconds{5000}, seed);
        first_delays.insert(b.next().count());
    }
    BOOST_TEST(first_delays.size() > 25u);
}

BOOST_AUTO_TEST_SUITE_END()

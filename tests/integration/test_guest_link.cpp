// guest_link end to end over real TCP, unix and hybrid sockets against the scripted fake guest.
// Each test runs the link and the fake guest on one single-threaded io_context, as the daemon
// does; deadlines are generous because the suite also runs under ASan on a busy machine.
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/test/unit_test.hpp>

#include <stereos/link/guest_link.hpp>
#include <stereos/util/completion_tokens.hpp>
#include "tests/fakeguest/fake_guest.hpp"
#include "tests/support/child_process.hpp"

namespace asio = boost::asio;
using namespace std::chrono_literals;
using namespace stereos;
using link::guest_link;
using link::link_error;
using link::link_event;
using link::request_result;
using protocol::lifecycle_state;
using testing::fake_guest;
using transport::use_tuple;
using clock_type = std::chrono::steady_clock;

namespace {

asio::awaitable<void> sleep_for(std::chrono::milliseconds d) {
    asio::steady_timer t(co_await asio::this_coro::executor, d);
    co_await t.async_wait(use_tuple);
}

// Polls `condition` every 5 ms until it holds or `limit` passes; returns whether it held.
asio::awaitable<bool> eventually(std::function<bool()> condition,
                                 std::chrono::milliseconds limit = 10s) {
    const auto end = clock_type::now() + limit;
    while (!condition()) {
        if (clock_type::now() > end)
            co_return false;
        co_await sleep_for(5ms);
    }
    co_return true;
}

struct link_fixture {
    asio::io_context io;
    fake_guest guest{io.get_executor()};
    std::vector<link::link_event> events;
    std::shared_ptr<link::guest_link> link;
    testing::temp_directory dir{"stereos-link"};  // private directory for unix sockets

    link::guest_link_options quick_options() const {
        link::guest_link_options o;
        o.connect_timeout = 2s;
        o.request_timeout = 10s;
        o.keepalive_interval = 60s;  // out of the way unless a test is about it
        o.reconnect_initial = 20ms;
        o.reconnect_max = 200ms;
        return o;
    }

    std::shared_ptr<link::guest_link> make_link(
        const std::string& endpoint, std::optional<link::guest_link_options> options = {},
        std::vector<link::link_event>* sink = nullptr) {
        auto target = transport::parse_endpoint(endpoint);
        BOOST_TEST_REQUIRE(target.has_value(), endpoint);
        auto* into = sink ? sink : &events;
        auto l =
            link::guest_link::create(io.get_executor(), *target, options.value_or(quick_options()),
                                     [into](const link::link_event& e) { into->push_back(e); });
        l->start();
        return l;
    }

    template <class Event>
    std::size_t count(const std::vector<link::link_event>& list) const {
        std::size_t n = 0;
        for (const auto& e : list)
            n += std::holds_alternative<Event>(e) ? 1 : 0;
        return n;
    }
    template <class Event>
    std::size_t count() const {
        return count<Event>(events);
    }

    // Runs `body` to completion; the test fails if it throws or does not finish in time.
    void run(std::function<asio::awaitable<void>()> body, std::chrono::seconds limit = 60s) {
        bool finished = false;
        std::exception_ptr failure;
        asio::co_spawn(io, std::move(body), [&](std::exception_ptr e) {
            finished = true;
            failure = std::move(e);
            io.stop();  // the link keeps the io_context busy; the body is what we waited for
        });
        io.run_for(limit);
        if (failure)
            std::rethrow_exception(failure);
        BOOST_TEST_REQUIRE(finished,
                           "the test body did not finish within " << limit.count() << " s");
    }

    // Stops link and guest, then checks nothing is left running on the io_context.
    void shut_down_and_expect_idle() {
        asio::co_spawn(
            io,
            [this]() -> asio::awaitable<void> {
                if (link)
                    co_await link->async_stop();
                guest.stop();
            },
            [](const std::exception_ptr& e) {
                if (e)
                    std::rethrow_exception(e);
            });
        io.restart();
        const auto start = clock_type::now();
        io.run_for(10s);
        BOOST_TEST(io.stopped(), "work was left on the io_context after stopping");
        BOOST_TEST((clock_type::now() - start < 5s));
    }
};

template <class Event>
const Event* first_of(const std::vector<link::link_event>& events) {
    for (const auto& e : events) {
        if (const auto* found = std::get_if<Event>(&e))
            return found;
    }
    return nullptr;
}

// The process's inotify instances: its descriptors that are one.
std::size_t inotify_instances() {
    std::size_t n = 0;
    for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
        std::error_code ec;
        const auto target = std::filesystem::read_symlink(entry.path(), ec);
        n += !ec && target.string() == "anon_inode:inotify" ? 1 : 0;
    }
    return n;
}

bool is_pong(const link::request_result& r) {
    return r && std::holds_alternative<protocol::pong_reply>(*r);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(guest_link_over_sockets)

BOOST_AUTO_TEST_CASE(a_thousand_concurrent_requests_from_50_coroutines_complete_over_tcp) {
    link_fixture f;
    f.link = f.make_link(f.guest.listen_tcp());
    int correct = 0, wrong = 0;
    f.run([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        int finished_workers = 0;
        for (int worker = 0; worker < 50; ++worker) {
            asio::co_spawn(
                ex,
                [&, worker]() -> asio::awaitable<void> {
                    for (int i = 0; i < 20; ++i) {
                        switch ((worker + i) % 3) {
                            case 0: {
                                auto r = co_await f.link->async_request(protocol::ping_request{});
                                (is_pong(r) ? correct : wrong)++;
                                break;
                            }
                            case 1: {
                                auto r =
                                    co_await f.link->async_request(protocol::get_health_request{});
                                (r && std::holds_alternative<protocol::health_payload>(*r)
                                     ? correct
                                     : wrong)++;
                                break;
                            }
                            default: {
                                const protocol::host_message mount = protocol::mount_payload{
                                    "tag" + std::to_string(worker), "/w", "9p", false};
                                auto r = co_await f.link->async_request(mount);
                                const auto* ack =
                                    r ? std::get_if<protocol::ack_payload>(&*r) : nullptr;
                                (ack && ack->ok && ack->reply_to == "mount" ? correct : wrong)++;
                            }
                        }
                    }
                    ++finished_workers;
                },
                [](const std::exception_ptr& e) {
                    if (e)
                        std::rethrow_exception(e);
                });
        }
        BOOST_TEST(co_await eventually([&] { return finished_workers == 50; }, 30s));
    });
    BOOST_TEST(correct == 1000);
    BOOST_TEST(wrong == 0);
    BOOST_TEST(f.guest.received().size() == 1001u);  // and the handshake's get_health
    BOOST_TEST(f.link->stats().connects == 1u);
    f.shut_down_and_expect_idle();
}

BOOST_AUTO_TEST_CASE(cancelling_a_waiting_request_withdraws_it_and_its_late_reply_is_dropped) {
    // An API client hanging up cancels its request through the cancellation slot.
    link_fixture f;
    f.link = f.make_link(f.guest.listen_tcp());
    f.run([&]() -> asio::awaitable<void> {
        BOOST_TEST(co_await eventually([&] { return f.link->is_up(); }));
        f.guest.faults.reply_delay = 1s;
        asio::cancellation_signal hang_up;
        std::optional<boost::system::error_code> cancelled;
        const protocol::host_message ping = protocol::ping_request{};
        f.link->async_send(
            ping, clock_type::now() + 10s,
            asio::bind_cancellation_slot(
                hang_up.slot(), [&](boost::system::error_code ec, const protocol::guest_message&) {
                    cancelled = ec;
                }));
        co_await sleep_for(50ms);  // written by now; its pong comes a second later
        const auto hung_up_at = clock_type::now();
        hang_up.emit(asio::cancellation_type::terminal);
        f.guest.faults.reply_delay = 0ms;
        BOOST_TEST(co_await eventually([&] { return cancelled.has_value(); }, 5s));
        BOOST_TEST((cancelled && *cancelled == asio::error::operation_aborted));
        BOOST_TEST((clock_type::now() - hung_up_at < 800ms));  // not waiting for the pong
        // The abandoned request's pong is consumed, not given to this get_health.
        const protocol::host_message poll = protocol::get_health_request{};
        auto answer = co_await f.link->async_request(poll);
        BOOST_TEST((answer && std::holds_alternative<protocol::health_payload>(*answer)));
        BOOST_TEST(f.link->stats().late_replies_dropped == 1u);
        BOOST_TEST(f.link->queued_requests() == 0u);
    });
    f.shut_down_and_expect_idle();
}

BOOST_AUTO_TEST_CASE(unwritten_requests_wait_for_the_reconnect_after_a_guest_restart) {
    link_fixture f;
    f.link = f.make_link(f.guest.listen_tcp());
    link::request_result r;
    f.run([&]() -> asio::awaitable<void> {
        BOOST_TEST(co_await eventually([&] { return f.link->is_up(); }));
        f.guest.reboot();
        f.guest.refuse_connections_for(700ms);
        BOOST_TEST(co_await eventually([&] { return !f.link->is_up(); }));
        // The link is down; this request is queued and must go out once it reconnects.
        r = co_await f.link->async_request(protocol::get_health_request{}, clock_type::now() + 20s);
    });
    BOOST_TEST_REQUIRE(r.has_value());
    BOOST_TEST(std::holds_alternative<protocol::health_payload>(*r));
    BOOST_TEST(f.link->stats().connects == 2u);
    BOOST_TEST(f.link->stats().connect_failures >= 1u);
    BOOST_TEST(f.count<link::link_events::down>() == 1u);
    // Each connection's handshake, then the queued request on the second.
    const std::vector<std::string> expected(3, "{\"type\":\"get_health\"}");
    BOOST_TEST(f.guest.received_texts() == expected, boost::test_tools::per_element());
    f.shut_down_and_expect_idle();
}

BOOST_AUTO_TEST_CASE(a_guest_dropping_mid_reply_fails_the_request_and_the_link_recovers) {
    link_fixture f;
    f.link = f.make_link(f.guest.listen_tcp());
    link::request_result dropped, after;
    f.run([&]() -> asio::awaitable<void> {
        BOOST_TEST_REQUIRE(co_await eventually([&] { return f.link->is_up(); }));
        f.guest.faults.drop_mid_reply = true;
        dropped = co_await f.link->async_request(protocol::get_health_request{});
        f.guest.faults.drop_mid_reply = false;
        after = co_await f.link->async_request(protocol::ping_request{});
    });
    BOOST_TEST((dropped.error() == link::link_error::connection_lost));
    BOOST_TEST(is_pong(after));
    f.shut_down_and_expect_idle();
}

// Every protocol error: the outstanding request fails with protocol_error, the violation is
// reported, and the link reconnects and serves the next request.
struct protocol_error_case {
    const char* name;
    std::function<void(fake_guest&)> misbehave;
    std::function<void(fake_guest&)> behave;
    protocol::host_message request;
};

BOOST_AUTO_TEST_CASE(every_protocol_error_fails_outstanding_requests_and_reconnects) {
    const std::vector<protocol_error_case> cases{
        {"garbage reply", [](fake_guest& g) { g.faults.garbage_replies = true; },
         [](fake_guest& g) { g.faults.garbage_replies = false; }, protocol::ping_request{}},
        {"over-long line", [](fake_guest& g) { g.faults.overlong_replies = true; },
         [](fake_guest& g) { g.faults.overlong_replies = false; }, protocol::ping_request{}},
        {"wrong reply kind", [](fake_guest& g) { g.faults.wrong_reply_kind = true; },
         [](fake_guest& g) { g.faults.wrong_reply_kind = false; }, protocol::get_health_request{}},
        {"ack for another request",
         [](fake_guest& g) {
             g.expect("mount").reply(protocol::ack_payload{"set_config", true, ""});
         },
         [](fake_guest&) {}, protocol::mount_payload{"t", "/p", "9p", false}},
        {"unknown lifecycle state",
         [](fake_guest& g) {
             g.expect("ping")
                 .reply_raw("{\"type\":\"lifecycle\",\"payload\":{\"state\":\"zombie\"}}\n")
                 .then_close();
         },
         [](fake_guest&) {}, protocol::ping_request{}},
    };
    for (const auto& c : cases) {
        BOOST_TEST_CONTEXT(c.name) {
            link_fixture f;
            f.link = f.make_link(f.guest.listen_tcp());
            link::request_result failed, after;
            f.run([&]() -> asio::awaitable<void> {
                BOOST_TEST_REQUIRE(co_await eventually([&] { return f.link->is_up(); }));
                c.misbehave(f.guest);
                failed = co_await f.link->async_request(c.request);
                c.behave(f.guest);
                after = co_await f.link->async_request(protocol::ping_request{});
            });
            BOOST_TEST((failed.error() == link::link_error::protocol_error ||
                        failed.error() == link::link_error::connection_lost));
            BOOST_TEST(f.count<link::link_events::protocol_violation>() >= 1u);
            BOOST_TEST(f.link->stats().protocol_errors >= 1u);
            BOOST_TEST(is_pong(after));
            BOOST_TEST(f.link->stats().connects >= 2u);
            f.shut_down_and_expect_idle();
        }
    }
}

BOOST_AUTO_TEST_CASE(a_hung_guest_times_out_without_blocking_another_guests_link) {
    link_fixture f;
    fake_guest healthy_guest(f.io.get_executor());
    auto options = f.quick_options();
    options.unresponsive_after_timeouts = 3;
    options.unresponsive_grace = 300ms;  // then dropped, and the reconnect's handshake fails
    f.link = f.make_link(f.guest.listen_tcp(), options);
    std::vector<link::link_event> other_events;
    auto other = f.make_link(healthy_guest.listen_unix((f.dir / "healthy.sock").string()), {},
                             &other_events);
    std::vector<link::request_result> hung;
    int other_ok = 0;
    clock_type::duration slowest_other{};
    f.run([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        BOOST_TEST_REQUIRE(co_await eventually([&] { return f.link->is_up(); }));
        f.guest.faults.never_reply = true;
        bool hung_done = false;
        asio::co_spawn(
            ex,
            [&]() -> asio::awaitable<void> {
                for (int i = 0; i < 3; ++i) {
                    hung.push_back(co_await f.link->async_request(protocol::get_health_request{},
                                                                  clock_type::now() + 300ms));
                }
                hung_done = true;
            },
            [](const std::exception_ptr& e) {
                if (e)
                    std::rethrow_exception(e);
            });
        for (int i = 0; i < 100; ++i) {
            const auto start = clock_type::now();
            if (is_pong(co_await other->async_request(protocol::ping_request{})))
                ++other_ok;
            slowest_other = std::max(slowest_other, clock_type::now() - start);
        }
        BOOST_TEST(co_await eventually([&] { return hung_done; }));
        BOOST_TEST(co_await eventually([&] { return f.link->stats().connect_failures >= 1u; }));
        co_await other->async_stop();
        healthy_guest.stop();
    });
    BOOST_TEST(hung.size() == 3u);
    for (const auto& r : hung)
        BOOST_TEST((r.error() == link::link_error::request_timeout));
    BOOST_TEST(other_ok == 100);
    // Far below the hung guest's 300 ms deadline: the other link never waited on it.
    BOOST_TEST(std::chrono::duration_cast<std::chrono::milliseconds>(slowest_other).count() < 250);
    BOOST_TEST(f.count<link::link_events::unresponsive>() == 1u);
    BOOST_TEST(f.count<link::link_events::unresponsive>(other_events) == 0u);
    // The reconnects that follow are attempts the silent guest never answers: not links.
    BOOST_TEST(f.count<link::link_events::up>() == 1u);
    f.shut_down_and_expect_idle();
}

BOOST_AUTO_TEST_CASE(a_guest_that_never_reads_is_noticed_within_the_deadline) {
    link_fixture f;
    auto options = f.quick_options();
    options.unresponsive_after_timeouts = 2;
    f.link = f.make_link(f.guest.listen_tcp(), options);
    std::vector<link::request_result> results;
    f.run([&]() -> asio::awaitable<void> {
        co_await eventually([&] { return f.link->is_up(); });
        // From here on the guest reads nothing on this connection.
        f.guest.faults.accept_and_hang = true;
        // Big requests, so our writes back up in the socket buffers.
        const std::string big(512 * 1024, 'x');
        for (int i = 0; i < 2; ++i) {
            const auto start = clock_type::now();
            const protocol::host_message config = protocol::config_payload{big};
            results.push_back(co_await f.link->async_request(config, clock_type::now() + 400ms));
            BOOST_TEST((clock_type::now() - start < 5s));
        }
        BOOST_TEST(
            co_await eventually([&] { return f.count<link::link_events::unresponsive>() == 1u; }));
    });
    for (const auto& r : results)
        BOOST_TEST((r.error() == link::link_error::request_timeout));
    f.shut_down_and_expect_idle();
}

BOOST_AUTO_TEST_CASE(the_hybrid_vsock_handshake_carries_the_link) {
    link_fixture f;
    f.link = f.make_link(f.guest.listen_hybrid((f.dir / "v.sock").string(), 1024));
    link::request_result r;
    f.run([&]() -> asio::awaitable<void> {
        r = co_await f.link->async_request(protocol::get_health_request{});
    });
    BOOST_TEST_REQUIRE(r.has_value());
    BOOST_TEST(std::holds_alternative<protocol::health_payload>(*r));
    f.shut_down_and_expect_idle();
}

BOOST_AUTO_TEST_CASE(a_failed_hybrid_handshake_keeps_the_link_retrying) {
    link_fixture f;
    const auto endpoint = f.guest.listen_hybrid((f.dir / "v.sock").string(), 1024);
    // Ask for port 2048, which the proxy does not serve.
    f.link = f.make_link(endpoint.substr(0, endpoint.rfind(':')) + ":2048");
    link::request_result r;
    f.run([&]() -> asio::awaitable<void> {
        r = co_await f.link->async_request(protocol::ping_request{}, clock_type::now() + 500ms);
    });
    BOOST_TEST((r.error() == link::link_error::guest_unavailable));
    BOOST_TEST(f.link->stats().connects == 0u);
    BOOST_TEST(f.count<link::link_events::connect_failed>() >= 2u);
    const auto& failure = std::get<link::link_events::connect_failed>(
        *std::find_if(f.events.begin(), f.events.end(), [](const link::link_event& e) {
            return std::holds_alternative<link::link_events::connect_failed>(e);
        }));
    BOOST_TEST((failure.error == transport::error::hybrid_handshake_failed));
    f.shut_down_and_expect_idle();
}

BOOST_AUTO_TEST_CASE(stopping_with_requests_in_flight_completes_them_promptly) {
    link_fixture f;
    f.link = f.make_link(f.guest.listen_tcp());
    std::vector<link::request_result> results;
    clock_type::duration stop_took{};
    f.run([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        co_await eventually([&] { return f.link->is_up(); });
        f.guest.faults.never_reply = true;
        for (int i = 0; i < 10; ++i) {
            asio::co_spawn(
                ex,
                [&]() -> asio::awaitable<void> {
                    results.push_back(co_await f.link->async_request(protocol::ping_request{},
                                                                     clock_type::now() + 60s));
                },
                [](const std::exception_ptr& e) {
                    if (e)
                        std::rethrow_exception(e);
                });
        }
        BOOST_TEST(co_await eventually([&] { return f.guest.received().size() == 11u; }));
        const auto start = clock_type::now();
        co_await f.link->async_stop();
        stop_took = clock_type::now() - start;
        BOOST_TEST(co_await eventually([&] { return results.size() == 10u; }, 2s));
    });
    BOOST_TEST(results.size() == 10u);
    for (const auto& r : results)
        BOOST_TEST((r.error() == link::link_error::link_stopped));
    BOOST_TEST((stop_took < 2s));
    BOOST_TEST(f.link->is_stopped());
    f.shut_down_and_expect_idle();
}

BOOST_AUTO_TEST_CASE(stopping_a_link_that_cannot_connect_fails_its_queued_requests) {
    link_fixture f;
    f.link = f.make_link("unix:" + (f.dir / "nobody-listens.sock").string());
    link::request_result r;
    f.run([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        asio::co_spawn(
            ex,
            [&]() -> asio::awaitable<void> {
                co_await sleep_for(200ms);
                co_await f.link->async_stop();
            },
            [](const std::exception_ptr& e) {
                if (e)
                    std::rethrow_exception(e);
            });
        r = co_await f.link->async_request(protocol::ping_request{}, clock_type::now() + 30s);
    });
    BOOST_TEST((r.error() == link::link_error::link_stopped));
    BOOST_TEST(f.count<link::link_events::connect_failed>() >= 1u);
    f.shut_down_and_expect_idle();
}

BOOST_AUTO_TEST_CASE(a_request_after_the_stop_is_refused_and_counted_as_refused) {
    link_fixture f;
    f.link = f.make_link("unix:" + (f.dir / "nobody-listens.sock").string());
    link::request_result r;
    f.run([&]() -> asio::awaitable<void> {
        co_await f.link->async_stop();
        const protocol::host_message ping = protocol::ping_request{};
        const auto deadline = clock_type::now() + 30s;
        r = co_await f.link->async_request(ping, deadline);
    });
    BOOST_TEST((r.error() == link::link_error::link_stopped));
    const auto& ping_counts =
        f.link->metrics().counts[protocol::host_message(protocol::ping_request{}).index()];
    BOOST_TEST(ping_counts[static_cast<std::size_t>(link::request_outcome::refused)] == 1u);
    f.shut_down_and_expect_idle();
}

BOOST_AUTO_TEST_CASE(the_deadline_timer_fires_only_when_something_is_due) {
    // Requests every half request_timeout: a timer left at an answered request's deadline used
    // to fire for nothing about every other request.
    link_fixture f;
    auto options = f.quick_options();
    options.request_timeout = 200ms;
    f.link = f.make_link(f.guest.listen_tcp(), options);
    constexpr int request_count = 20;
    int answered = 0;
    f.run([&]() -> asio::awaitable<void> {
        BOOST_TEST_REQUIRE(co_await eventually([&] { return f.link->is_up(); }));
        for (int i = 0; i < request_count; ++i) {
            const protocol::host_message ping = protocol::ping_request{};
            auto reply = co_await f.link->async_request(ping);
            answered += is_pong(reply) ? 1 : 0;
            co_await sleep_for(100ms);
        }
    });
    BOOST_TEST(answered == request_count);
    BOOST_TEST(f.link->stats().timeouts == 0u);
    // Nothing was due: no request timed out, the handshake was answered, no keepalive (60 s).
    BOOST_TEST(f.link->stats().deadline_wakeups <= 2u);
    f.shut_down_and_expect_idle();
}

BOOST_AUTO_TEST_CASE(requests_sent_in_one_turn_leave_in_one_write) {
    link_fixture f;
    f.link = f.make_link(f.guest.listen_tcp());
    constexpr int request_count = 20;
    int answered = 0;
    f.run([&]() -> asio::awaitable<void> {
        BOOST_TEST_REQUIRE(co_await eventually([&] { return f.link->is_up(); }));
        const auto writes_before = f.link->stats().writes;
        const protocol::host_message ping = protocol::ping_request{};
        // As many API sessions do when their requests were read in one turn.
        for (int i = 0; i < request_count; ++i) {
            f.link->async_send(
                ping, f.link->default_deadline(),
                [&](boost::system::error_code error, protocol::guest_message reply) {
                    if (!error && std::holds_alternative<protocol::pong_reply>(reply))
                        ++answered;
                });
        }
        BOOST_TEST_REQUIRE(co_await eventually([&] { return answered == request_count; }));
        BOOST_TEST(f.link->stats().writes - writes_before == 1u);
    });
    f.shut_down_and_expect_idle();
}

// What managed_guest does on `up`: send requests from inside the event handler. The link tells
// the handler after link_core's step has returned, so the request simply joins the queue.
BOOST_AUTO_TEST_CASE(an_event_handler_may_send_requests_from_inside_up_after_every_connect) {
    link_fixture f;
    std::vector<request_result> replies;
    std::shared_ptr<guest_link> l;
    int ups = 0;
    auto target = transport::parse_endpoint(f.guest.listen_tcp());
    BOOST_TEST_REQUIRE(target.has_value());
    l = guest_link::create(
        f.io.get_executor(), *target, f.quick_options(), [&](const link_event& e) {
            f.events.push_back(e);
            if (!std::holds_alternative<link::link_events::up>(e))
                return;
            ++ups;
            for (int i = 0; i < 3; ++i) {
                const protocol::host_message ping = protocol::ping_request{};
                l->async_send(ping, l->default_deadline(),
                              [&](boost::system::error_code ec, protocol::guest_message reply) {
                                  replies.push_back(link::to_request_result(ec, reply));
                              });
            }
        });
    f.link = l;
    l->start();
    f.run([&]() -> asio::awaitable<void> {
        BOOST_TEST_REQUIRE(co_await eventually([&] { return replies.size() == 3u; }));
        f.guest.close_connections();  // the next `up` sends three more
        BOOST_TEST_REQUIRE(co_await eventually([&] { return replies.size() == 6u; }));
    });
    BOOST_TEST(ups == 2);
    for (const auto& r : replies)
        BOOST_TEST(is_pong(r));
    BOOST_TEST(l->stats().protocol_errors == 0u);
    f.shut_down_and_expect_idle();
}

BOOST_AUTO_TEST_CASE(reconnect_now_drops_a_silent_link_and_reconnects_at_once) {
    link_fixture f;
    auto options = f.quick_options();
    options.reconnect_initial = 10s;  // only an immediate retry can pass this test
    f.link = f.make_link(f.guest.listen_tcp(), options);
    clock_type::duration took{};
    f.run([&]() -> asio::awaitable<void> {
        BOOST_TEST_REQUIRE(co_await eventually([&] { return f.link->is_up(); }));
        // Answered just now: not a stale connection, so it is kept.
        BOOST_TEST(is_pong(co_await f.link->async_request(protocol::ping_request{})));
        f.link->reconnect_now();
        co_await sleep_for(300ms);
        BOOST_TEST(f.link->stats().connects == 1u);
        BOOST_TEST(f.link->is_up());
        // Silent for over a second, like the connection a VM reset leaves: dropped, and a new
        // one made at once.
        co_await sleep_for(1200ms);
        const auto start = clock_type::now();
        f.link->reconnect_now();
        BOOST_TEST(co_await eventually([&] { return f.link->stats().connects == 2u; }, 4s));
        took = clock_type::now() - start;
    });
    BOOST_TEST((took < 4s));
    const auto* down = first_of<link::link_events::down>(f.events);
    BOOST_TEST_REQUIRE(down != nullptr);
    BOOST_TEST((down->error == link::link_error::reconnect_requested));
    f.shut_down_and_expect_idle();
}

BOOST_AUTO_TEST_CASE(reconnect_now_cuts_a_retry_wait_short) {
    link_fixture f;
    auto options = f.quick_options();
    options.reconnect_initial = 20s;
    options.reconnect_max = 20s;
    const auto address = f.guest.listen_tcp();
    f.guest.refuse_connections_for(500ms);
    f.link = f.make_link(address, options);
    clock_type::duration took{};
    f.run([&]() -> asio::awaitable<void> {
        BOOST_TEST_REQUIRE(co_await eventually(
            [&] { return f.count<link::link_events::connect_failed>() == 1u; }));
        co_await sleep_for(1s);  // the guest listens again; the link waits at least 10 s more
        BOOST_TEST(!f.link->is_up());
        const auto start = clock_type::now();
        f.link->reconnect_now();
        BOOST_TEST(co_await eventually([&] { return f.link->is_up(); }, 5s));
        took = clock_type::now() - start;
    });
    BOOST_TEST((took < 5s));
    BOOST_TEST(f.count<link::link_events::connect_failed>() == 1u);
    f.shut_down_and_expect_idle();
}

BOOST_AUTO_TEST_CASE(a_unix_socket_file_appearing_ends_the_wait) {
    // The VMM creates the socket as the VM starts; the link is waiting out a long delay.
    link_fixture f;
    auto options = f.quick_options();
    options.reconnect_initial = 20s;
    options.reconnect_max = 20s;
    const auto path = (f.dir / "vm.sock").string();
    f.link = f.make_link("unix:" + path, options);
    clock_type::duration took{};
    f.run([&]() -> asio::awaitable<void> {
        BOOST_TEST_REQUIRE(co_await eventually(
            [&] { return f.count<link::link_events::connect_failed>() == 1u; }));
        co_await sleep_for(300ms);
        const auto start = clock_type::now();
        f.guest.listen_unix(path);
        BOOST_TEST(co_await eventually([&] { return f.link->is_up(); }, 5s));
        took = clock_type::now() - start;
    });
    BOOST_TEST((took < 5s));
    f.shut_down_and_expect_idle();
}

BOOST_AUTO_TEST_CASE(a_socket_directory_removed_and_made_again_is_still_watched) {
    // A VMM's per-VM directory goes with the VM and comes back with the next start.
    link_fixture f;
    auto options = f.quick_options();
    options.reconnect_initial = 3s;  // each wait 1.5-3 s unless the watch ends it
    options.reconnect_max = 3s;
    const auto vm_dir = f.dir / "vm";
    std::filesystem::create_directories(vm_dir);
    const auto path = (vm_dir / "vm.sock").string();
    f.link = f.make_link("unix:" + path, options);
    auto failures = [&] { return f.count<link::link_events::connect_failed>(); };
    clock_type::duration took{};
    f.run([&]() -> asio::awaitable<void> {
        BOOST_TEST_REQUIRE(co_await eventually([&] { return failures() == 1u; }));
        std::filesystem::remove(vm_dir);  // the watch on it dies
        BOOST_TEST_REQUIRE(co_await eventually([&] { return failures() == 2u; }));
        std::filesystem::create_directories(vm_dir);
        BOOST_TEST_REQUIRE(co_await eventually([&] { return failures() == 3u; }));
        co_await sleep_for(100ms);  // the link is in its wait, with a new watch
        const auto start = clock_type::now();
        f.guest.listen_unix(path);
        BOOST_TEST(co_await eventually([&] { return f.link->is_up(); }, 5s));
        took = clock_type::now() - start;
    });
    const auto took_ms = std::chrono::duration_cast<std::chrono::milliseconds>(took).count();
    BOOST_TEST(took_ms < 1000, "took " << took_ms << " ms: the retry timer, not the watch");
    f.shut_down_and_expect_idle();
}

BOOST_AUTO_TEST_CASE(two_hundred_links_waiting_for_their_sockets_share_one_inotify_instance) {
    // More links than the default limit of 128 inotify instances per user: each used to open its
    // own, and the ones beyond the limit silently waited out their timers.
    link_fixture f;
    auto options = f.quick_options();
    options.reconnect_initial = 30s;  // only the watch can bring them up within the test
    options.reconnect_max = 30s;
    constexpr std::size_t link_count = 200;
    std::vector<std::string> paths;
    for (std::size_t i = 0; i < link_count; ++i) {
        const auto vm_dir = f.dir / ("vms-" + std::to_string(i % 4));
        std::filesystem::create_directories(vm_dir);
        paths.push_back((vm_dir / ("vm-" + std::to_string(i) + ".sock")).string());
    }
    const auto instances_before = inotify_instances();
    std::vector<std::shared_ptr<guest_link>> links;
    std::vector<std::vector<link_event>> sinks(link_count);
    for (std::size_t i = 0; i < link_count; ++i)
        links.push_back(f.make_link("unix:" + paths[i], options, &sinks[i]));
    auto all = [&](auto predicate) { return std::all_of(links.begin(), links.end(), predicate); };
    std::size_t instances_while_down = 0;
    clock_type::duration took{};
    f.run([&]() -> asio::awaitable<void> {
        BOOST_TEST_REQUIRE(co_await eventually(
            [&] { return all([](const auto& l) { return l->stats().connect_failures == 1u; }); }));
        co_await sleep_for(100ms);  // every link is in its 15-30 s wait
        instances_while_down = inotify_instances() - instances_before;
        const auto start = clock_type::now();
        for (const auto& path : paths)
            f.guest.listen_unix(path);
        BOOST_TEST(co_await eventually(
            [&] { return all([](const auto& l) { return l->is_up(); }); }, 10s));
        took = clock_type::now() - start;
    });
    BOOST_TEST(instances_while_down == 1u);
    for (const auto& l : links) {
        BOOST_TEST(l->stats().socket_watch_failures == 0u);
        BOOST_TEST(l->stats().connect_failures == 1u);  // the timer never ended a wait
    }
    const auto took_ms = std::chrono::duration_cast<std::chrono::milliseconds>(took).count();
    BOOST_TEST(took_ms < 5000, "took " << took_ms << " ms");
    asio::co_spawn(
        f.io,
        [&]() -> asio::awaitable<void> {
            for (const auto& l : links)
                co_await l->async_stop();
            f.guest.stop();
        },
        [](const std::exception_ptr& e) {
            if (e)
                std::rethrow_exception(e);
        });
    f.io.restart();
    f.io.run_for(10s);
    BOOST_TEST(f.io.stopped(), "work was left on the io_context after stopping");
}

BOOST_AUTO_TEST_CASE(a_socket_directory_that_cannot_be_watched_is_counted_and_the_timer_retries) {
    link_fixture f;
    auto options = f.quick_options();
    options.reconnect_initial = 100ms;
    options.reconnect_max = 100ms;
    const auto path = (f.dir / "not-yet" / "vm.sock").string();  // no such directory
    f.link = f.make_link("unix:" + path, options);
    f.run([&]() -> asio::awaitable<void> {
        BOOST_TEST_REQUIRE(
            co_await eventually([&] { return f.link->stats().connect_failures >= 2u; }));
        BOOST_TEST(f.link->stats().socket_watch_failures >= 1u);
        std::filesystem::create_directories(f.dir / "not-yet");
        f.guest.listen_unix(path);
        BOOST_TEST(co_await eventually([&] { return f.link->is_up(); }, 5s));
    });
    f.shut_down_and_expect_idle();
}

// Options for the retry-window cases: 40 ms first step, a 1.5 s window after a stable link.
link::guest_link_options window_options(const link_fixture& f) {
    auto options = f.quick_options();
    options.reconnect_initial = 40ms;
    options.reconnect_max = 5s;
    options.stable_after = 200ms;
    options.fast_retry_window = 1500ms;
    return options;
}

// Connect attempts in the 1.5 s after a stable link is lost, and in the 1.5 s after that.
std::pair<std::size_t, std::size_t> attempts_after_a_loss(link_fixture& f,
                                                          const link::guest_link_options& o) {
    f.link = f.make_link(f.guest.listen_tcp(), o);
    std::size_t in_window = 0, after_window = 0;
    f.run([&]() -> asio::awaitable<void> {
        BOOST_TEST_REQUIRE(co_await eventually([&] { return f.link->is_up(); }));
        co_await sleep_for(400ms);  // stable
        f.guest.refuse_connections_for(60s);
        f.guest.close_connections();
        BOOST_TEST_REQUIRE(co_await eventually([&] { return !f.link->is_up(); }));
        const auto failures_at_loss = f.link->stats().connect_failures;
        co_await sleep_for(1500ms);
        in_window = f.link->stats().connect_failures - failures_at_loss;
        const auto failures_at_window_end = f.link->stats().connect_failures;
        co_await sleep_for(1500ms);
        after_window = f.link->stats().connect_failures - failures_at_window_end;
    });
    return {in_window, after_window};
}

BOOST_AUTO_TEST_CASE(losing_a_stable_link_retries_fast_then_backs_off) {
    link_fixture f;
    const auto [in_window, after_window] = attempts_after_a_loss(f, window_options(f));
    // Every 20-40 ms in the window (about 50 attempts); doubling from 40 ms after it (about 5).
    BOOST_TEST(in_window >= 15u);
    BOOST_TEST(after_window <= 8u);
    f.shut_down_and_expect_idle();
}

BOOST_AUTO_TEST_CASE(an_empty_retry_budget_makes_the_fast_window_back_off) {
    link_fixture f;
    auto options = window_options(f);
    options.fast_retry_budget = std::make_shared<link::retry_budget>(5.0);
    const auto [in_window, after_window] = attempts_after_a_loss(f, options);
    // About 50 attempts unbounded (the case above); a budget of 5 a second allows its 5, 7 more
    // as it refills, and the exponential steps once it is spent.
    BOOST_TEST(in_window <= 20u);
    BOOST_TEST(in_window >= 3u);
    f.shut_down_and_expect_idle();
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(handing_a_connection_to_the_next_process)

// Lifecycle events carrying `message`.
std::size_t lifecycles_saying(const std::vector<link::link_event>& events,
                              std::string_view message) {
    std::size_t n = 0;
    for (const auto& e : events) {
        if (const auto* l = std::get_if<link::link_events::lifecycle>(&e))
            n += l->payload.message == message ? 1 : 0;
    }
    return n;
}

BOOST_AUTO_TEST_CASE(an_adopted_connection_goes_on_with_no_new_connection_and_pushes_arrive_once) {
    // The first link plays the old daemon process, the second the new one; between them the
    // guest pushes, half of a line before the hand-over and the rest after it.
    link_fixture f;
    const auto endpoint = f.guest.listen_unix((f.dir.path() / "guest.sock").string());
    f.link = f.make_link(endpoint);
    const std::string push =
        "{\"type\":\"lifecycle\",\"payload\":{\"state\":\"ready\",\"message\":\"split\"}}\n";
    std::optional<link::handed_over_connection> handed;
    f.run([&]() -> asio::awaitable<void> {
        BOOST_TEST_REQUIRE(co_await eventually([&] { return f.link->is_up(); }));
        // One write, so one read: a whole line, then the start of the next.
        f.guest.push_raw(
            "{\"type\":\"lifecycle\",\"payload\":{\"state\":\"ready\",\"message\":\"before\"}}\n" +
            push.substr(0, 20));
        BOOST_TEST_REQUIRE(
            co_await eventually([&] { return lifecycles_saying(f.events, "before") == 1; }));
        handed = co_await f.link->async_hand_over(clock_type::now() + 2s);
    });
    BOOST_TEST_REQUIRE(handed.has_value());
    BOOST_TEST(handed->unread() == push.substr(0, 20));
    BOOST_TEST(f.link->is_stopped());
    BOOST_TEST(f.count<link::link_events::down>() == 0u);  // the first link ended with no event

    // No process reads the connection now: these wait in the socket.
    f.guest.push_raw(push.substr(20));
    f.guest.push_lifecycle(lifecycle_state::healthy, "meanwhile");
    std::vector<link::link_event> adopted_events;
    auto adopted = guest_link::create(
        f.io.get_executor(), *transport::parse_endpoint(endpoint), f.quick_options(),
        [&](const link::link_event& e) { adopted_events.push_back(e); });
    adopted->start(std::move(*handed));
    link::request_result answer;
    f.io.restart();
    f.run([&]() -> asio::awaitable<void> {
        BOOST_TEST_REQUIRE(co_await eventually([&] { return adopted->is_up(); }));
        BOOST_TEST(co_await eventually(
            [&] { return lifecycles_saying(adopted_events, "meanwhile") == 1; }));
        answer = co_await adopted->async_request(protocol::ping_request{});
        co_await adopted->async_stop();
    });
    BOOST_TEST(is_pong(answer));
    BOOST_TEST(f.guest.connections_accepted() == 1u);
    BOOST_TEST(lifecycles_saying(f.events, "split") == 0u);
    BOOST_TEST(lifecycles_saying(adopted_events, "split") == 1u);
    BOOST_TEST(lifecycles_saying(adopted_events, "meanwhile") == 1u);
    BOOST_TEST(lifecycles_saying(adopted_events, "before") == 0u);
    BOOST_TEST(adopted->stats().connects == 1u);
    f.shut_down_and_expect_idle();
}

BOOST_AUTO_TEST_CASE(a_hand_over_waits_for_the_replies_owed_and_refuses_new_requests) {
    link_fixture f;
    f.link = f.make_link(f.guest.listen_tcp());
    f.run([&]() -> asio::awaitable<void> {
        BOOST_TEST_REQUIRE(co_await eventually([&] { return f.link->is_up(); }));
        f.guest.faults.reply_delay = 300ms;
        std::optional<link::request_result> owed;
        const protocol::host_message ping = protocol::ping_request{};
        f.link->async_send(ping, clock_type::now() + 10s,
                           [&](boost::system::error_code ec, protocol::guest_message reply) {
                               owed = link::to_request_result(ec, std::move(reply));
                           });
        co_await sleep_for(50ms);  // written
        std::optional<std::optional<link::handed_over_connection>> handed;
        asio::co_spawn(f.io, f.link->async_hand_over(clock_type::now() + 5s),
                       [&](std::exception_ptr, std::optional<link::handed_over_connection> c) {
                           handed.emplace(std::move(c));
                       });
        co_await sleep_for(10ms);
        auto refused = co_await f.link->async_request(ping);
        BOOST_TEST((!refused && refused.error() == link_error::link_stopped));
        BOOST_TEST_REQUIRE(co_await eventually([&] { return handed.has_value(); }));
        BOOST_TEST_REQUIRE(owed.has_value());
        BOOST_TEST(is_pong(*owed));  // answered before the hand-over, not cut off
        BOOST_TEST(handed->has_value());
    });
    f.shut_down_and_expect_idle();
}

BOOST_AUTO_TEST_CASE(a_link_still_owed_a_reply_at_the_bound_is_closed_instead) {
    link_fixture f;
    f.link = f.make_link(f.guest.listen_tcp());
    f.run([&]() -> asio::awaitable<void> {
        BOOST_TEST_REQUIRE(co_await eventually([&] { return f.link->is_up(); }));
        f.guest.faults.never_reply = true;
        std::optional<boost::system::error_code> owed;
        const protocol::host_message ping = protocol::ping_request{};
        f.link->async_send(
            ping, clock_type::now() + 10s,
            [&](boost::system::error_code ec, const protocol::guest_message&) { owed = ec; });
        co_await sleep_for(50ms);
        const auto started = clock_type::now();
        auto handed = co_await f.link->async_hand_over(clock_type::now() + 300ms);
        BOOST_TEST(!handed.has_value());
        BOOST_TEST((clock_type::now() - started < 5s));
        BOOST_TEST(f.link->is_stopped());
        BOOST_TEST_REQUIRE(co_await eventually([&] { return owed.has_value(); }));
        BOOST_TEST((*owed == link_error::link_stopped));
        // The guest sees the connection close, as on any stop.
        BOOST_TEST(co_await eventually([&] { return f.guest.open_connections() == 0; }));
    });
    f.shut_down_and_expect_idle();
}

BOOST_AUTO_TEST_SUITE_END()

// managed_guest over a real socket to an in-process fake guest: what its waits do when several
// callers wait at once, and what a reload's new definition does to a live link.
#include <chrono>
#include <memory>
#include <optional>

#include <boost/asio.hpp>
#include <boost/test/unit_test.hpp>

#include <stereos/util/completion_tokens.hpp>
#include "daemon/event_bus.hpp"
#include "daemon/guest/managed_guest.hpp"
#include "tests/fakeguest/fake_guest.hpp"

namespace asio = boost::asio;
using namespace std::chrono_literals;
using namespace stereos;
using testing::fake_guest;
using transport::use_tuple;

namespace {

config::guest_config provisioned_guest(const std::string& endpoint) {
    config::guest_config definition;
    definition.name = "vm1";
    definition.endpoint_text = endpoint;
    definition.endpoint = *transport::parse_endpoint(endpoint);
    definition.timeouts.health_interval = 1h;  // out of the way: no polls to count
    definition.timeouts.keepalive_interval = 1h;
    definition.provision.secrets = {{"K1", {}, "", 0, "value-one"}};
    definition.provision.mounts = {{"work", "/work", "virtiofs", false}};
    return definition;
}

void rethrow(const std::exception_ptr& e) {
    if (e)
        std::rethrow_exception(e);
}

asio::awaitable<void> sleep_for(std::chrono::milliseconds how_long) {
    asio::steady_timer timer(co_await asio::this_coro::executor, how_long);
    co_await timer.async_wait(use_tuple);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(managed_guest_waits)

// Two provision_now() calls and a stop, all waiting on one slow provisioning run: each waits
// for its turn without cancelling the others' waits (which used to spin the loop), and all end.
BOOST_AUTO_TEST_CASE(concurrent_provisioning_and_stop_waits_end_without_spinning) {
    asio::io_context io(1);
    fake_guest guest(io.get_executor());
    const auto endpoint = guest.listen_tcp();
    daemon::event_bus bus;
    auto managed = daemon::managed_guest::create(io.get_executor(), provisioned_guest(endpoint),
                                                 daemon::guest_source::runtime, bus);
    int finished = 0;
    std::optional<std::size_t> sent_by_second;
    // Two waiters, as lambdas of this scope: a coroutine lambda's captures live in the lambda
    // object, which must outlive the coroutine.
    auto first = [&]() -> asio::awaitable<void> {
        co_await managed->provision_now();
        ++finished;
    };
    auto second = [&]() -> asio::awaitable<void> {
        const auto report = co_await managed->provision_now();
        sent_by_second = report.sent;
        ++finished;
    };
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            // The automatic run delivers both items; the waiters come while replies are slow.
            while (managed->provisioning().state != "done")
                co_await sleep_for(10ms);
            guest.faults.reply_delay = 300ms;
            managed->update_definition([&] {
                auto changed = provisioned_guest(endpoint);
                changed.provision.secrets[0].value = "value-two";
                return changed;
            }());
            auto ex = co_await asio::this_coro::executor;
            asio::co_spawn(ex, first(), rethrow);
            asio::co_spawn(ex, second(), rethrow);
            co_await sleep_for(50ms);
            co_await managed->async_stop();
            ++finished;
            guest.stop();
        },
        rethrow);
    managed->start();
    // Waiting runs a few handlers per request (47 here); waiters that cancelled each other's
    // waits ran one per turn for as long as the run lasted (42,116 when that was so).
    const auto handlers = io.run_for(20s);
    BOOST_TEST(finished == 3);
    BOOST_TEST_MESSAGE(handlers << " handlers ran");
    BOOST_TEST(handlers < 2000u, handlers << " handlers ran");
    // The changed secret went once; the waiters found nothing more to send.
    BOOST_TEST(sent_by_second.value_or(99) == 0u);
    std::size_t secrets_sent = 0;
    for (const auto& line : guest.received_texts())
        secrets_sent += line.find("inject_secret") != std::string::npos;
    BOOST_TEST(secrets_sent == 2u);
}

BOOST_AUTO_TEST_SUITE_END()

// The user database's lookups on a real thread pool, as the API server runs them: a slow lookup
// holds up neither the daemon's thread nor another user's connection, a waiter gives up after
// its limit (refused, fail closed), and only plain values cross between the threads (run under
// TSan with the other api_tests).
#include <atomic>
#include <future>
#include <optional>
#include <string>
#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/test/unit_test.hpp>

#include <stereos/util/completion_tokens.hpp>
#include "daemon/api/user_lookup_cache.hpp"

namespace asio = boost::asio;
using namespace std::chrono_literals;
using stereos::daemon::user_lookup_cache;
using stereos::daemon::user_record;
using stereos::transport::rethrow_if_failed;
using stereos::transport::use_tuple;

namespace {

asio::awaitable<void> find_into(user_lookup_cache* cache, uid_t uid,
                                std::optional<user_record>* out) {
    *out = co_await cache->find(uid);
}

asio::awaitable<void> tick_after(std::chrono::milliseconds delay, bool* ticked) {
    asio::steady_timer timer(co_await asio::this_coro::executor, delay);
    co_await timer.async_wait(use_tuple);
    *ticked = true;
}

// Runs `io` until `done` holds, for at most `limit` (generous: the machine may be busy).
template <class Condition>
bool run_until(asio::io_context& io, Condition done, std::chrono::seconds limit = 20s) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!done() && std::chrono::steady_clock::now() < end) {
        io.restart();
        io.run_for(10ms);
    }
    return done();
}

// A user database where user 1 answers only when the test says so, and others at once.
struct slow_user_database {
    std::promise<void> release_user_1;
    std::shared_future<void> user_1_released = release_user_1.get_future().share();
    std::atomic<int> lookups{0};
    std::atomic<bool> ran_on_the_loop_thread{false};
    std::thread::id loop_thread = std::this_thread::get_id();

    user_lookup_cache::lookup_function function() {
        return [this](uid_t uid) {
            ++lookups;
            if (std::this_thread::get_id() == loop_thread)
                ran_on_the_loop_thread = true;
            if (uid == 1)
                user_1_released.wait();
            return user_record{"user" + std::to_string(uid), std::vector<gid_t>{100}, false};
        };
    }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(user_lookups_off_the_loop)

BOOST_AUTO_TEST_CASE(a_slow_lookup_stalls_neither_the_loop_nor_another_user) {
    asio::io_context io;
    slow_user_database database;
    asio::thread_pool pool(2);
    user_lookup_cache cache(io.get_executor(), pool.get_executor(), database.function(), 60s);

    std::optional<user_record> slow, quick;
    bool ticked = false;
    asio::co_spawn(io, find_into(&cache, 1, &slow), rethrow_if_failed);
    asio::co_spawn(io, find_into(&cache, 2, &quick), rethrow_if_failed);
    asio::co_spawn(io, tick_after(20ms, &ticked), rethrow_if_failed);
    BOOST_TEST_REQUIRE(run_until(io, [&] { return quick.has_value() && ticked; }));
    BOOST_TEST(quick->name.value_or("") == "user2");
    BOOST_TEST(!slow.has_value());  // still waiting for its own answer

    database.release_user_1.set_value();
    BOOST_TEST_REQUIRE(run_until(io, [&] { return slow.has_value(); }));
    BOOST_TEST(slow->name.value_or("") == "user1");
    BOOST_TEST(database.lookups == 2);
    BOOST_TEST(!database.ran_on_the_loop_thread);
}

BOOST_AUTO_TEST_CASE(a_waiter_gives_up_after_its_limit_and_the_late_answer_is_kept) {
    asio::io_context io;
    slow_user_database database;
    asio::thread_pool pool(1);
    user_lookup_cache cache(io.get_executor(), pool.get_executor(), database.function(), 50ms);

    std::optional<user_record> first;
    asio::co_spawn(io, find_into(&cache, 1, &first), rethrow_if_failed);
    BOOST_TEST_REQUIRE(run_until(io, [&] { return first.has_value(); }));
    BOOST_TEST(first->failed);  // fail closed: in no group
    BOOST_TEST(!first->name.has_value());

    // The lookup is still hung: a later connection of the user is refused at once, not after
    // another wait of the limit.
    std::optional<user_record> meanwhile;
    asio::co_spawn(io, find_into(&cache, 1, &meanwhile), rethrow_if_failed);
    io.restart();
    io.poll();  // only what is ready: no timer may run
    BOOST_TEST_REQUIRE(meanwhile.has_value());
    BOOST_TEST(meanwhile->failed);
    BOOST_TEST(cache.lookups_started() == 1u);

    database.release_user_1.set_value();
    pool.join();  // the lookup has finished and posted its answer, which runs first
    std::optional<user_record> second;
    asio::co_spawn(io, find_into(&cache, 1, &second), rethrow_if_failed);
    BOOST_TEST_REQUIRE(run_until(io, [&] { return second.has_value(); }));
    // From the cache: a new lookup could not even run, the pool's threads are gone.
    BOOST_TEST(second->name.value_or("") == "user1");
    BOOST_TEST(database.lookups == 1);
    BOOST_TEST(cache.lookups_started() == 1u);
}

BOOST_AUTO_TEST_CASE(stopping_answers_every_waiter_at_once) {
    asio::io_context io;
    slow_user_database database;
    asio::thread_pool pool(1);
    user_lookup_cache cache(io.get_executor(), pool.get_executor(), database.function(), 60s);

    std::optional<user_record> waiting;
    asio::co_spawn(io, find_into(&cache, 1, &waiting), rethrow_if_failed);
    BOOST_TEST_REQUIRE(run_until(io, [&] { return database.lookups == 1; }));
    cache.stop();
    BOOST_TEST_REQUIRE(run_until(
        io, [&] { return waiting.has_value(); }, 5s));
    BOOST_TEST(waiting->failed);
    database.release_user_1.set_value();  // lets the pool's thread finish before it is joined
    pool.join();
}

BOOST_AUTO_TEST_SUITE_END()

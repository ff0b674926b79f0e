// The API peer's rights: the user database's answers cached for a TTL (time and the lookup
// injected, the lookup run on the test's own executor), and the pure decision from what the
// kernel and the user database said.
#include <chrono>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/test/unit_test.hpp>

#include "daemon/api/peer.hpp"
#include "daemon/api/user_lookup_cache.hpp"

namespace asio = boost::asio;
using namespace std::chrono_literals;
using stereos::daemon::peer_facts;
using stereos::daemon::user_lookup_cache;
using stereos::daemon::user_record;

namespace {

void rethrow(const std::exception_ptr& e) {
    if (e)
        std::rethrow_exception(e);
}

// A user database whose answers the test writes, counting the questions.
struct fake_user_database {
    std::vector<gid_t> groups{100};
    bool fail = false;
    int lookups = 0;

    user_record operator()(uid_t uid) {
        ++lookups;
        if (fail)
            return user_record{std::nullopt, std::nullopt, true};
        return user_record{"user" + std::to_string(uid), groups, false};
    }
};

// The cache under test, its clock in the test's hand and its lookups on the test's executor.
struct cache_fixture {
    asio::io_context io;
    fake_user_database database;
    user_lookup_cache::clock::time_point now{};  // the injected clock
    user_lookup_cache cache{io.get_executor(),
                            io.get_executor(),
                            [this](uid_t uid) { return database(uid); },
                            10s,
                            30s,
                            [this] { return now; }};

    std::vector<user_record> find_all(const std::vector<uid_t>& uids) {
        std::vector<user_record> found(uids.size());
        for (std::size_t i = 0; i < uids.size(); ++i)
            asio::co_spawn(io, find_into(&cache, uids[i], &found[i]), rethrow);
        io.restart();
        io.run();
        return found;
    }
    user_record find(uid_t uid) { return find_all({uid}).at(0); }

  private:
    static asio::awaitable<void> find_into(user_lookup_cache* cache, uid_t uid, user_record* out) {
        *out = co_await cache->find(uid);
    }
};

peer_facts peer(uid_t uid, gid_t gid, std::optional<std::vector<gid_t>> process_groups) {
    return peer_facts{{4242, uid, gid}, std::move(process_groups)};
}

user_record user(std::optional<std::vector<gid_t>> groups) {
    return user_record{"alice", std::move(groups), false};
}

constexpr uid_t daemon_uid = 990;
constexpr gid_t api_group = 500;
constexpr gid_t read_group = 501;

}  // namespace

BOOST_AUTO_TEST_SUITE(user_lookups)

BOOST_FIXTURE_TEST_CASE(a_burst_from_one_user_costs_one_lookup, cache_fixture) {
    const auto found = find_all({1000, 1000, 1000, 1000, 1000});
    BOOST_TEST(database.lookups == 1);
    for (const auto& record : found)
        BOOST_TEST(record.name.value_or("") == "user1000");
    // Another user is another lookup.
    BOOST_TEST(find(1001).name.value_or("") == "user1001");
    BOOST_TEST(database.lookups == 2);
    BOOST_TEST(cache.lookups_started() == 2u);
}

BOOST_FIXTURE_TEST_CASE(an_answer_is_kept_for_the_ttl_then_asked_again, cache_fixture) {
    BOOST_TEST((find(1000).groups == std::vector<gid_t>{100}));
    database.groups = {100, api_group};  // the user joins the API group
    now += 29s;
    BOOST_TEST((find(1000).groups == std::vector<gid_t>{100}));
    BOOST_TEST(database.lookups == 1);
    now += 1s;  // 30 s after the first lookup
    BOOST_TEST((find(1000).groups == std::vector<gid_t>{100, api_group}));
    BOOST_TEST(database.lookups == 2);
    now += 29s;
    find(1000);
    BOOST_TEST(database.lookups == 2);
}

BOOST_FIXTURE_TEST_CASE(a_failed_lookup_is_not_kept, cache_fixture) {
    database.fail = true;
    BOOST_TEST(find(1000).failed);
    BOOST_TEST(find(1000).failed);
    BOOST_TEST(database.lookups == 2);
    database.fail = false;
    BOOST_TEST(!find(1000).failed);
    find(1000);
    BOOST_TEST(database.lookups == 3);
}

BOOST_FIXTURE_TEST_CASE(after_stop_nothing_is_asked_and_every_answer_is_no, cache_fixture) {
    cache.stop();
    BOOST_TEST(find(1000).failed);
    BOOST_TEST(database.lookups == 0);
}

BOOST_AUTO_TEST_CASE(root_and_the_daemons_user_may_do_everything) {
    using stereos::daemon::access_for;
    for (uid_t uid : {uid_t{0}, daemon_uid}) {
        const auto access = access_for(peer(uid, 1, std::nullopt), user_record{}, daemon_uid,
                                       api_group, read_group);
        BOOST_TEST((access.may_read && access.may_write && access.may_reference_host));
    }
}

BOOST_AUTO_TEST_CASE(membership_comes_from_the_primary_group_then_the_process_then_the_user) {
    using stereos::daemon::access_for;
    const auto decide = [](const peer_facts& p, const user_record& u) {
        return access_for(p, u, daemon_uid, api_group, read_group);
    };
    // The primary group.
    auto access = decide(peer(1000, api_group, std::nullopt), user(std::nullopt));
    BOOST_TEST((access.may_read && access.may_write && !access.may_reference_host));
    // The process's groups decide when they are known, whatever the user database says.
    access = decide(peer(1000, 1, std::vector<gid_t>{read_group}), user(std::vector{api_group}));
    BOOST_TEST((access.may_read && !access.may_write));
    access = decide(peer(1000, 1, std::vector<gid_t>{}), user(std::vector{api_group}));
    BOOST_TEST((!access.may_read && !access.may_write));
    // A process not visible: its user's groups.
    access = decide(peer(1000, 1, std::nullopt), user(std::vector{api_group}));
    BOOST_TEST((access.may_read && access.may_write));
    BOOST_TEST(access.peer_user == "alice");
    BOOST_TEST(access.peer.value().uid == 1000u);
}

BOOST_AUTO_TEST_CASE(a_failed_lookup_means_no_group) {
    const auto access = stereos::daemon::access_for(
        peer(1000, 1, std::nullopt), user_record{{}, {}, true}, daemon_uid, api_group, read_group);
    BOOST_TEST((!access.may_read && !access.may_write && !access.may_reference_host));
    BOOST_TEST(access.peer_user.empty());
}

BOOST_AUTO_TEST_SUITE_END()

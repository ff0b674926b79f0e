// What the user database (NSS) says about API peers' users, asked off the daemon's thread:
// getpwuid_r and getgrouplist may block for seconds on LDAP or sssd, so they run on a small
// thread pool and only the plain user_record comes back, posted to the daemon's executor.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

namespace stereos::daemon {

// One user as NSS knows it. Plain data: it crosses from the lookup pool to the daemon's thread.
struct user_record {
    std::optional<std::string> name;  // nothing: no such user, or the lookup failed
    // The user's groups (getgrouplist, with the primary group); nothing: unknown.
    std::optional<std::vector<gid_t>> groups;
    // The lookup failed (an error, not an answer): means "not a member", and is not cached.
    bool failed = false;
};

// Asks NSS about `uid`. Blocking: call it on the lookup pool, never on the daemon's thread.
user_record look_up_user(uid_t uid);

// NSS answers by uid, in front of the lookups. Lives on the daemon's thread (one executor, no
// locks): the lookup function runs on `lookups` and its result is posted back by value.
//
// An answer is kept for `ttl` (30 s by default), so a burst of connections from one user costs
// one lookup, and a change of the user's name or groups takes effect within 30 s. Connections
// that come while a user's lookup runs wait for that same lookup. A failed lookup is not kept.
// A waiter gives up after `wait_limit` and gets a failed record (fail closed: not a member); the
// answer, when it comes, still fills the cache. While a lookup runs past that limit, a new
// waiter gets a failed record at once.
class user_lookup_cache {
  public:
    using clock = std::chrono::steady_clock;
    using lookup_function = std::function<user_record(uid_t)>;
    using clock_function = std::function<clock::time_point()>;
    static constexpr std::chrono::seconds default_ttl{30};

    using executor_source = std::function<boost::asio::any_io_executor()>;

    user_lookup_cache(boost::asio::any_io_executor loop, boost::asio::any_io_executor lookups,
                      lookup_function lookup, std::chrono::milliseconds wait_limit,
                      clock::duration ttl = default_ttl, clock_function now = &clock::now);
    // The lookups' executor is asked for at the first lookup (a pool started on demand).
    user_lookup_cache(boost::asio::any_io_executor loop, executor_source lookups,
                      lookup_function lookup, std::chrono::milliseconds wait_limit,
                      clock::duration ttl = default_ttl, clock_function now = &clock::now);
    ~user_lookup_cache();
    user_lookup_cache(const user_lookup_cache&) = delete;
    user_lookup_cache& operator=(const user_lookup_cache&) = delete;

    // The record of `uid`: the cached one while fresh, else the answer of a lookup. Await it on
    // the loop executor.
    boost::asio::awaitable<user_record> find(uid_t uid);

    // Every waiter gets a failed record now, and later ones at once: the daemon stops.
    void stop();

    std::size_t lookups_started() const noexcept;
    // Lookups still inside NSS (perhaps hung on LDAP): the pool cannot be joined without them.
    std::size_t lookups_in_nss() const noexcept;

  private:
    struct state;
    std::shared_ptr<state> state_;
};

}  // namespace stereos::daemon

#include "daemon/api/user_lookup_cache.hpp"

#include <grp.h>
#include <pwd.h>

#include <atomic>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <utility>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <stereos/util/completion_tokens.hpp>

namespace stereos::daemon {

namespace asio = boost::asio;
using transport::use_tuple;

namespace {

// Past this many users, answers older than the TTL are dropped when a new one comes in.
constexpr std::size_t prune_above = 1024;

user_record failed_record() {
    user_record record;
    record.failed = true;
    return record;
}

}  // namespace

user_record look_up_user(uid_t uid) {
    user_record record;
    std::vector<char> buffer(16384);
    passwd entry{};
    passwd* found = nullptr;
    if (getpwuid_r(uid, &entry, buffer.data(), buffer.size(), &found) != 0)
        return failed_record();
    if (!found)
        return record;  // no such user: an answer, not a failure
    record.name = found->pw_name;
    int count = 64;
    std::vector<gid_t> groups(static_cast<std::size_t>(count));
    if (getgrouplist(found->pw_name, found->pw_gid, groups.data(), &count) < 0) {
        groups.resize(static_cast<std::size_t>(count));
        if (getgrouplist(found->pw_name, found->pw_gid, groups.data(), &count) < 0) {
            record.failed = true;
            return record;
        }
    }
    groups.resize(static_cast<std::size_t>(count));
    record.groups = std::move(groups);
    return record;
}

// Where a pool thread hands its answer to the loop. Closed when the cache goes: a lookup that
// outlives the daemon (hung in NSS, its pool left behind) must not post to a destroyed loop.
// The only lock here, and it guards one post; the loop's own state never sees another thread.
struct loop_handoff {
    explicit loop_handoff(asio::any_io_executor loop_executor) : loop(std::move(loop_executor)) {}
    std::mutex mutex;
    bool open = true;
    asio::any_io_executor loop;
    std::atomic<std::size_t> in_nss{0};  // lookups not yet back from NSS
};

// Touched only on the loop executor. Lookups hold a weak_ptr to it: an answer that comes after
// the cache is gone is dropped.
struct user_lookup_cache::state : std::enable_shared_from_this<state> {
    struct cached_record {
        user_record record;
        clock::time_point asked_at;
    };
    struct running_lookup {
        explicit running_lookup(const asio::any_io_executor& loop)
            : answered(loop, asio::steady_timer::time_point::max()) {}
        asio::steady_timer answered;  // cancelled when the answer is in: a condition variable
        std::optional<user_record> record;
        clock::time_point asked_at;
    };

    state(asio::any_io_executor loop_executor, executor_source lookup_executor,
          lookup_function lookup_user, std::chrono::milliseconds limit, clock::duration keep_for,
          clock_function clock_now)
        : loop(std::move(loop_executor)),
          lookups_source(std::move(lookup_executor)),
          lookup(std::move(lookup_user)),
          wait_limit(limit),
          ttl(keep_for),
          now(std::move(clock_now)) {}

    std::shared_ptr<running_lookup> start(uid_t uid, clock::time_point asked_at) {
        auto lookup_in_flight = std::make_shared<running_lookup>(loop);
        lookup_in_flight->asked_at = asked_at;
        running.emplace(uid, lookup_in_flight);
        ++started;
        handoff->in_nss.fetch_add(1);
        // Only plain values cross: the uid out, the record back. The pool never touches `this`.
        if (!lookups)
            lookups = lookups_source();
        asio::post(*lookups, [lookup_copy = lookup, uid, to_loop = handoff,
                              weak = weak_from_this()]() mutable {
            user_record record;
            try {
                record = lookup_copy(uid);
            } catch (...) {
                record = failed_record();  // fail closed; a pool thread must not die of it
            }
            to_loop->in_nss.fetch_sub(1);
            const std::lock_guard closing(to_loop->mutex);
            if (!to_loop->open)
                return;
            asio::post(to_loop->loop,
                       [weak = std::move(weak), uid, record = std::move(record)]() mutable {
                           if (auto self = weak.lock())
                               self->answer(uid, std::move(record));
                       });
        });
        return lookup_in_flight;
    }

    void answer(uid_t uid, user_record record) {
        const auto it = running.find(uid);
        if (it == running.end())
            return;  // stop() answered its waiters already
        const auto lookup_done = std::move(it->second);
        running.erase(it);
        if (!record.failed) {
            if (records.size() >= prune_above) {
                const auto current = now();
                std::erase_if(records, [&](const auto& entry) {
                    return current - entry.second.asked_at >= ttl;
                });
            }
            records.insert_or_assign(uid, cached_record{record, lookup_done->asked_at});
        }
        lookup_done->record = std::move(record);
        lookup_done->answered.cancel();
    }

    asio::any_io_executor loop;
    executor_source lookups_source;
    std::optional<asio::any_io_executor> lookups;  // from lookups_source, at the first lookup
    lookup_function lookup;
    std::chrono::milliseconds wait_limit;
    clock::duration ttl;
    clock_function now;
    std::unordered_map<uid_t, cached_record> records;
    std::unordered_map<uid_t, std::shared_ptr<running_lookup>> running;
    std::size_t started = 0;
    std::shared_ptr<loop_handoff> handoff = std::make_shared<loop_handoff>(loop);
    bool stopped = false;
};

user_lookup_cache::user_lookup_cache(asio::any_io_executor loop, asio::any_io_executor lookups,
                                     lookup_function lookup, std::chrono::milliseconds wait_limit,
                                     clock::duration ttl, clock_function now)
    : user_lookup_cache(
          std::move(loop), [lookups = std::move(lookups)] { return lookups; }, std::move(lookup),
          wait_limit, ttl, std::move(now)) {}

user_lookup_cache::user_lookup_cache(asio::any_io_executor loop, executor_source lookups,
                                     lookup_function lookup, std::chrono::milliseconds wait_limit,
                                     clock::duration ttl, clock_function now)
    : state_(std::make_shared<state>(std::move(loop), std::move(lookups), std::move(lookup),
                                     wait_limit, ttl, std::move(now))) {}

user_lookup_cache::~user_lookup_cache() {
    stop();
    const std::lock_guard closing(state_->handoff->mutex);
    state_->handoff->open = false;
}

asio::awaitable<user_record> user_lookup_cache::find(uid_t uid) {
    using namespace asio::experimental::awaitable_operators;
    const std::shared_ptr<state> s = state_;  // the frame keeps it while it waits
    const auto now = s->now();
    if (const auto it = s->records.find(uid);
        it != s->records.end() && now - it->second.asked_at < s->ttl)
        co_return it->second.record;
    if (s->stopped)
        co_return failed_record();
    const auto running = s->running.find(uid);
    // Running past the wait limit: hung, and its waiters gave up. Later connections of the user
    // are refused at once rather than each waiting the limit again.
    if (running != s->running.end() && now - running->second->asked_at >= s->wait_limit)
        co_return failed_record();
    const auto lookup_in_flight =
        running != s->running.end() ? running->second : s->start(uid, now);
    if (!lookup_in_flight->record) {
        asio::steady_timer deadline(s->loop, s->wait_limit);
        auto answered = lookup_in_flight->answered.async_wait(use_tuple);
        auto expired = deadline.async_wait(use_tuple);
        auto first_of_both = std::move(answered) || std::move(expired);
        co_await std::move(first_of_both);
    }
    co_return lookup_in_flight->record ? *lookup_in_flight->record : failed_record();
}

void user_lookup_cache::stop() {
    state_->stopped = true;
    for (const auto& [uid, lookup_in_flight] : state_->running)
        lookup_in_flight->answered.cancel();
    state_->running.clear();
}

std::size_t user_lookup_cache::lookups_started() const noexcept {
    return state_->started;
}

std::size_t user_lookup_cache::lookups_in_nss() const noexcept {
    return state_->handoff->in_nss.load();
}

}  // namespace stereos::daemon

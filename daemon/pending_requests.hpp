// The queue of requests on one guest connection, without I/O (as Boost.Redis's multiplexer).
// The guest answers in order and there are no request ids on the wire, so a reply always
// belongs to the oldest written request; timed-out written requests stay as "abandoned" so
// their late replies are consumed instead of being given to the next request.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <string>

#include <boost/system/error_code.hpp>

#include "protocol/messages.hpp"

namespace stereos::daemon {

class pending_requests {
  public:
    // Called exactly once with either an error or the guest's reply, unless the request is
    // withdrawn with cancel() first. It must not call back into this object.
    using completion = std::function<void(boost::system::error_code, protocol::guest_message)>;

    enum class reply_outcome {
        completed,            // handed to the oldest written request
        dropped_abandoned,    // the late reply of a request that already timed out
        nothing_outstanding,  // protocol error: no written request to answer
        unexpected_kind,      // protocol error: e.g. a pong for a get_health
        mismatched_reply_to,  // protocol error: an ack naming another request type
    };

    enum class cancel_outcome { not_found, removed_unwritten, abandoned_written };

    // Queues a request whose encoded line is `line`; returns its id.
    std::uint64_t add(const protocol::host_message& request, std::string line, completion done);

    // Appends every queued line to `out`, in call order, and marks them written.
    std::size_t take_unwritten(std::string& out);

    // Matches a reply (never a lifecycle or unknown message) to the oldest written request.
    reply_outcome on_reply(protocol::guest_message reply);
    // What on_reply would do with `reply`, changing nothing: lets the caller describe a
    // protocol error before the reply is consumed, and only then.
    reply_outcome match_reply(const protocol::guest_message& reply) const;

    // Withdraws a request whose caller stopped waiting. An unwritten one is removed; a written
    // one stays as abandoned. The completion is not called.
    cancel_outcome cancel(std::uint64_t id);

    // The connection is gone: written requests (abandoned or not) are dropped, the live ones
    // completed with `written_error`. Unwritten requests stay for the next connection.
    void on_connection_lost(boost::system::error_code written_error);

    // Completes every request, written or not, with `error` and empties the queue.
    void fail_all(boost::system::error_code error);

    std::size_t size() const noexcept { return entries_.size(); }
    std::size_t written() const noexcept;
    std::size_t unwritten() const noexcept { return entries_.size() - written(); }
    std::size_t queued_bytes() const noexcept { return queued_bytes_; }
    bool empty() const noexcept { return entries_.empty(); }

    // What the oldest written request expects, for error messages; empty when none.
    std::string describe_oldest_written() const;

  private:
    enum class entry_state { unwritten, written, abandoned };
    struct entry {
        std::uint64_t id;
        protocol::reply_kind expects;
        std::string type;  // reply_to an ack must name
        std::string line;  // emptied once written
        entry_state state;
        completion done;
    };

    std::deque<entry> entries_;  // written entries always precede unwritten ones
    std::size_t written_count_ = 0;
    std::size_t queued_bytes_ = 0;  // bytes of unwritten lines
    std::uint64_t next_id_ = 1;
};

}  // namespace stereos::daemon

// The guest link's logic without I/O, as Boost.Redis's multiplexer is to its connection: line
// framing, the handshake, the FIFO of pending requests, the write buffer, request deadlines, the
// consecutive-timeout rule, keepalive and the precedence of drop reasons. The owner moves bytes
// (read_buffer/on_read, prepare_write/commit_write), passes the time in, and closes the socket
// when drop_requested() says so. Nothing here reads a clock or touches a socket.
//
// The core never calls its owner back with events: a step (on_read, on_bytes, on_deadline)
// appends what it decided to a caller-owned link_actions (the events to tell, whether to close
// or write), as Boost.Redis's reader and writer FSMs return actions. The owner carries them out
// once the step has returned, so an event handler may call straight back in (add a request on
// `up`, reconnect) and always finds the core consistent.
//
// The guest answers in order and the wire has no request ids, so a reply always belongs to the
// oldest written request; a written request that times out or is withdrawn stays queued as
// abandoned, so its late reply is consumed instead of being given to the next request.
//
// Threading: not thread-safe; every call on one thread (guest_link: the link's executor).
// Waiters are completed synchronously from inside these calls and must not call back in
// (guest_link's request_op only posts its completion): a reply is handed over where it is
// decoded, without being stored as an action first.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <boost/system/error_code.hpp>
#include <boost/system/result.hpp>

#include <stereos/link/link_error.hpp>
#include <stereos/link/link_events.hpp>
#include <stereos/protocol/line_framer.hpp>
#include <stereos/protocol/messages.hpp>

namespace stereos::link {

// What one step of link_core decided, for its owner to carry out after the step returned. A
// step appends events and sets the flags; the owner clears it once done, so one instance (and
// its vector's capacity) serves every step without allocating.
struct link_actions {
    std::vector<link_event> events;  // for the owner's handler, in the order decided
    bool close = false;              // a drop was decided: close the socket
    bool write = false;              // bytes are waiting: write unless a write is in flight

    void clear() noexcept {
        events.clear();
        close = false;
        write = false;
    }
};

class link_core {
  public:
    using clock = std::chrono::steady_clock;

    // One caller's wait for its reply: complete() is called once, with the reply (an ack with
    // ok:false included) or a link_error, unless the request is withdrawn first.
    class waiter {
      public:
        virtual void complete(boost::system::error_code error, protocol::guest_message reply) = 0;

      protected:
        ~waiter() = default;
    };

    enum class phase {
        disconnected,  // no connection; requests queue up
        handshaking,   // connected, get_health sent, waiting for the first reply
        serving,       // up: queued requests are written
    };
    enum class withdraw_outcome { not_found, removed_unwritten, abandoned_written };

    // How a connection ended: `was_up` tells a lost link (down) from a failed attempt.
    struct connection_end {
        bool was_up = false;
        boost::system::error_code reason;
        std::string detail;
    };

    explicit link_core(const guest_link_options& options);

    // Queues a request; `to_notify` is completed later. Fails with request_too_large or
    // queue_full (nothing queued, to_notify untouched).
    boost::system::result<std::uint64_t> add(const protocol::host_message& request,
                                             clock::time_point deadline, clock::time_point now,
                                             waiter* to_notify);
    // The owner turned a request away without add() (its link has stopped): counted as refused.
    void count_refused(const protocol::host_message& request) noexcept {
        metrics_.record(request.index(), request_outcome::refused);
    }
    // The caller stopped waiting: an unwritten request is removed, a written one abandoned.
    // The waiter is not completed.
    withdraw_outcome withdraw(std::uint64_t id, clock::time_point now);

    // A new connection: the handshake's get_health becomes the only thing to write, and the
    // guest must answer it by `handshake_deadline`.
    void on_connected(clock::time_point now, clock::time_point handshake_deadline);

    // Reading: space for up to `size` bytes, then how many arrived. on_bytes() does both.
    std::span<char> read_buffer(std::size_t size) { return framer_.prepare(size); }
    void on_read(std::size_t size, clock::time_point now, link_actions& out);
    void on_bytes(std::string_view bytes, clock::time_point now, link_actions& out);

    // Writing: the bytes to write next (empty: nothing), then how many were written. Requests
    // count as written from prepare_write() on, since the guest may act on a partial batch.
    std::string_view prepare_write();
    void commit_write(std::size_t size);
    bool has_bytes_to_write() const noexcept;

    // Times out requests, the handshake and keepalive pings; may queue a keepalive ping.
    void on_deadline(clock::time_point now, link_actions& out);
    // When on_deadline() has something to do next; time_point::max() when nothing.
    clock::time_point next_deadline() const;
    // When the next keepalive ping is due (max() when one is outstanding or the link is not
    // up): cheap, for the owner to check after reads, which may move it earlier.
    clock::time_point keepalive_due() const noexcept;

    // The socket failed during `operation` ("read" or "write"); EOF counts as closed.
    void on_lost(boost::system::error_code error, std::string_view operation);
    // Ends the connection for `reason`; the first reason given wins.
    void drop(boost::system::error_code reason, std::string detail);
    bool drop_requested() const noexcept { return static_cast<bool>(drop_reason_); }

    // After the socket is closed: written requests fail (they cannot be retried safely),
    // unwritten ones stay for the next connection.
    connection_end on_connection_ended(bool stopping, clock::time_point now);
    // Completes every request with `error` (the link stops).
    void fail_all(boost::system::error_code error, clock::time_point now);

    // What was read and not yet framed (an incomplete line): the stream's remainder, for a
    // connection handed to another process. nullopt while an overlong line is being skipped.
    std::optional<std::string_view> unread_bytes() const noexcept {
        if (framer_.skipping_overlong_line())
            return std::nullopt;
        return framer_.unconsumed();
    }

    phase current_phase() const noexcept { return phase_; }
    bool is_up() const noexcept { return phase_ == phase::serving; }
    clock::time_point last_received() const noexcept { return last_received_; }
    std::size_t queued_requests() const noexcept { return entries_.size(); }
    std::size_t written_requests() const noexcept { return written_count_; }
    std::size_t queued_bytes() const noexcept { return staged_.size(); }
    unsigned consecutive_timeouts() const noexcept { return consecutive_timeouts_; }

    link_stats& stats() noexcept { return stats_; }
    const link_stats& stats() const noexcept { return stats_; }
    const request_metrics& metrics() const noexcept { return metrics_; }
    const guest_link_options& options() const noexcept { return options_; }
    // New timings (a reload): they apply to requests queued from now on and to the next
    // deadline check; the connection is kept.
    void set_options(const guest_link_options& options) { options_ = options; }
    bool is_unresponsive() const noexcept { return declared_unresponsive_; }
    // The write buffers' reserved memory, to check that a large request's is given back.
    std::size_t write_capacity() const noexcept { return staged_.capacity() + writing_.capacity(); }

  private:
    enum class entry_state : std::uint8_t { unwritten, written, abandoned };
    struct entry {
        waiter* to_notify;  // null for abandoned entries and the link's own keepalive ping
        std::uint64_t id;
        clock::time_point deadline;
        clock::time_point queued_at;
        std::uint32_t line_size;  // its bytes in staged_ while unwritten
        std::uint8_t type_index;  // of protocol::host_message
        entry_state state;
        bool keepalive;
    };

    void sort_line(std::string_view line, clock::time_point now, link_actions& out);
    void on_handshake_line(std::string_view line, clock::time_point now, link_actions& out);
    void on_reply(protocol::guest_message reply, clock::time_point now, link_actions& out);
    void violation(std::string detail, link_actions& out);
    void declare_unresponsive(boost::system::error_code cause, std::string reason,
                              link_actions& out);
    // Ends a step: what the owner must do with the socket.
    void conclude(link_actions& out) const noexcept;
    void finish(entry& e, boost::system::error_code error, request_outcome outcome,
                clock::time_point now);
    std::size_t staged_offset(std::size_t index) const;
    void erase_unwritten(std::size_t index);
    void queue_keepalive(clock::time_point now);
    // Gives back the buffers' memory once they are empty and large.
    void release_spare_capacity();

    guest_link_options options_;
    protocol::line_framer framer_;
    phase phase_ = phase::disconnected;

    std::deque<entry> entries_;  // written (and abandoned) entries precede unwritten ones
    std::size_t written_count_ = 0;
    std::uint64_t next_id_ = 1;
    std::string staged_;   // lines of unwritten requests, in queue order
    std::string writing_;  // handed out by prepare_write(), not yet committed

    clock::time_point handshake_sent_at_{};
    clock::time_point handshake_deadline_{};
    std::vector<protocol::lifecycle_payload> early_pushes_;  // pushed before the handshake reply
    clock::time_point last_received_{};
    bool keepalive_outstanding_ = false;
    unsigned consecutive_timeouts_ = 0;
    bool declared_unresponsive_ = false;  // on this connection, until it answers again
    clock::time_point unresponsive_since_{};
    clock::time_point last_deadline_check_{};  // the `now` of the running on_deadline()
    boost::system::error_code drop_reason_;
    std::string drop_detail_;

    link_stats stats_;
    request_metrics metrics_;
};

}  // namespace stereos::link

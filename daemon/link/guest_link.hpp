// One persistent, multiplexed connection to one guest's stereosd. Any number of coroutines may
// call async_request concurrently; lines go out in call order through a single writer, replies
// are matched FIFO (link_core), and unsolicited lifecycle pushes go to the event
// callback. Runs forever (connect, handshake, serve, back off, reconnect) until stopped.
//
// A connection counts as up only once the guest has answered its first request, a get_health:
// under QEMU user-mode forwarding connect() succeeds while nothing listens in the guest, so only
// a reply proves stereosd is there. The handshake's health report goes out with the `up` event.
//
// The logic (framing, the handshake, the request FIFO, deadlines, keepalive) is link_core's and
// when to reconnect is reconnect_policy's; this class only runs the loops around them: connect
// and retry, read, write, and one deadline timer for the whole link that fires only when
// something is due. A waiting request is a small async operation that link_core completes, not
// a timer. While down, a unix or hybrid-vsock link waits for its socket file through the
// io_context's one socket_file_watcher.
//
// Events: link_core returns the events a step decided and this class delivers them once the
// step has returned, so the event handler may call back in (async_send on `up`,
// reconnect_now, stop); events decided meanwhile are delivered after the current ones, in
// order.
//
// Threading: create, start, stop, async_request/async_send, reconnect_now and every accessor
// must be called on the executor given at construction, and its io_context run by one thread
// (no mutexes). Events and completions are delivered on that executor (completions on the
// handler's associated executor, which should be the same).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_allocator.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/recycling_allocator.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/system/result.hpp>

#include <stereos/link/link_core.hpp>
#include <stereos/link/link_error.hpp>
#include <stereos/link/link_events.hpp>
#include <stereos/link/reconnect_policy.hpp>
#include <stereos/link/socket_file_watcher.hpp>
#include <stereos/protocol/messages.hpp>
#include <stereos/transport/connect.hpp>
#include <stereos/transport/endpoint.hpp>

namespace stereos::link {

// A request's outcome: the guest's reply (an ack with ok:false included), or a link error.
using request_result = boost::system::result<protocol::guest_message>;

inline request_result to_request_result(const boost::system::error_code& error,
                                        protocol::guest_message reply) {
    if (error)
        return error;
    return reply;
}

// A live connection passed from one process to the next across a restart (systemd's fd store):
// the connected socket and the bytes already read from it but not yet framed. Owns the fd.
class handed_over_connection {
  public:
    handed_over_connection() = default;
    handed_over_connection(int fd, std::string unread) noexcept
        : fd_(fd), unread_(std::move(unread)) {}
    handed_over_connection(handed_over_connection&& other) noexcept
        : fd_(std::exchange(other.fd_, -1)), unread_(std::move(other.unread_)) {}
    handed_over_connection& operator=(handed_over_connection&& other) noexcept;
    ~handed_over_connection();

    int fd() const noexcept { return fd_; }
    int release() noexcept { return std::exchange(fd_, -1); }
    const std::string& unread() const noexcept { return unread_; }

  private:
    int fd_ = -1;
    std::string unread_;
};

class guest_link;

namespace link_detail {
// One caller's wait for its reply: allocated once (from the handler's allocator, else Asio's
// recycling allocator, so steady traffic does not reach malloc), completed by link_core or by
// the caller's cancellation slot. link_core is never re-entered from a resumed caller: a reply
// read resumes its caller once the read step is over (in the same handler when the caller's
// executor allows), anything else through a post.
template <class Handler>
class request_op;
// A request the link's current read step answered, to be resumed after the step.
class answered_request {
  public:
    virtual void resume_now() = 0;

  protected:
    ~answered_request() = default;
};
}  // namespace link_detail

class guest_link : public std::enable_shared_from_this<guest_link> {
  public:
    using clock = std::chrono::steady_clock;
    using event_handler = link_event_handler;
    using reply_signature = void(boost::system::error_code, protocol::guest_message);

    static std::shared_ptr<guest_link> create(boost::asio::any_io_executor executor,
                                              transport::endpoint target,
                                              guest_link_options options, event_handler on_event);
    ~guest_link();

    // Starts the connect/serve/reconnect loop. Call once.
    void start();
    // Starts on a connection handed over by the previous process instead of connecting: the
    // handshake (a get_health) goes over it and the guest sees no new connection. If it fails,
    // the link connects anew as after any lost connection.
    void start(handed_over_connection adopted);

    // Cancels everything promptly: waiting requests complete with link_stopped, the socket
    // closes. async_stop() also waits until the loop has finished.
    void stop();
    boost::asio::awaitable<void> async_stop();

    // Ends the link by handing its connection on (a daemon restart) instead of closing it: new
    // requests are refused at once; those already sent get until `until` for their replies (the
    // link's own keepalive included). If the link is then up and owed nothing, its socket and
    // unread bytes are returned and the link ends with no event; otherwise it stops as by
    // async_stop() (nullopt). Either way the link is finished afterwards.
    boost::asio::awaitable<std::optional<handed_over_connection>> async_hand_over(
        clock::time_point until);

    // Sends one request and completes with (error, reply) by `deadline`. Cancelling it through
    // the handler's cancellation slot (any type) withdraws the request: an unwritten one is
    // removed from the queue, a written one abandoned (its late reply is dropped); it then
    // completes with operation_aborted. The caller keeps the link alive until completion.
    // `request` is encoded as the operation starts and not copied: it must live until then (with
    // a token that defers the start, until it starts).
    template <class CompletionToken>
    auto async_send(const protocol::host_message& request, clock::time_point deadline,
                    CompletionToken&& token) {
        return boost::asio::async_initiate<CompletionToken, reply_signature>(
            [this](auto handler, const protocol::host_message* message, clock::time_point until) {
                using op = link_detail::request_op<std::decay_t<decltype(handler)>>;
                op::start(std::move(handler), *this, *message, until);
            },
            token, &request, deadline);
    }

    // Where a request sent now times out: request_timeout from now.
    clock::time_point default_deadline() const {
        return clock::now() + core_.options().request_timeout;
    }

    // The same as a coroutine, with the deadline request_timeout from now by default. A hot path
    // awaits async_send itself (with to_request_result), which allocates no coroutine frame.
    // Pass a named message, not a temporary with strings: g++ 12 destroys temporaries of a
    // co_await full-expression twice (a double free with any non-trivial payload).
    boost::asio::awaitable<request_result> async_request(protocol::host_message request);
    boost::asio::awaitable<request_result> async_request(protocol::host_message request,
                                                         clock::time_point deadline);

    // "This guest just started": drops a connection that may be stale (a VM reset leaves the
    // old one silent; one that answered within the last second is kept), cuts a backoff wait
    // short, and retries fast for fast_retry_window.
    void reconnect_now();

    // New timings (a reload) for the live link: the connection is kept; the fast-retry budget
    // stays the one it was created with.
    void set_options(guest_link_options options);

    bool is_up() const noexcept { return core_.is_up(); }
    bool is_unresponsive() const noexcept { return core_.is_unresponsive(); }
    clock::time_point last_received() const noexcept { return core_.last_received(); }
    bool is_stopped() const noexcept { return finished_; }
    const link_stats& stats() const noexcept { return core_.stats(); }
    const request_metrics& metrics() const noexcept { return core_.metrics(); }
    const transport::endpoint& target() const noexcept { return target_; }
    const guest_link_options& options() const noexcept { return core_.options(); }
    std::size_t queued_requests() const noexcept { return core_.queued_requests(); }
    const boost::asio::any_io_executor& get_executor() const noexcept { return executor_; }

    guest_link(boost::asio::any_io_executor executor, transport::endpoint target,
               guest_link_options options, event_handler on_event);

  private:
    template <class Handler>
    friend class link_detail::request_op;

    // Queues a request for `to_notify`; starts a write and moves the deadline timer if needed.
    boost::system::result<std::uint64_t> submit(link_core::waiter& to_notify,
                                                const protocol::host_message& request,
                                                clock::time_point deadline);
    void withdraw(std::uint64_t id) { core_.withdraw(id, clock::now()); }

    boost::asio::awaitable<void> run();
    boost::asio::awaitable<void> connection_loop();
    // One timer for the whole link at link_core's next deadline.
    boost::asio::awaitable<void> deadline_loop();
    // Moves the timer earlier to `when` (a new request's deadline).
    void deadline_at(clock::time_point when);
    // Sets the timer to link_core's next deadline, later ones included, so that it does not
    // fire at the deadline of a request already answered.
    void deadline_at_next();
    // Waits out `delay`; cut short by reconnect_now(), or for unix and hybrid endpoints by the
    // socket file appearing (the VMM creates it as the VM starts).
    boost::asio::awaitable<void> wait_before_retry(std::chrono::milliseconds delay);
    // Registers with the socket_file_watcher while the link is down; false if the endpoint has
    // no socket file or the watch cannot be made (counted in link_stats).
    bool watch_socket_file();
    void stop_watching();
    // Reads until the connection ends: the handshake, then serving.
    boost::asio::awaitable<void> read_loop();
    // Writes what link_core has to send unless a write is already in flight: one writer.
    void start_write();
    // A request's write waits one turn of the executor (no system call), so requests that
    // clients send in the same turn leave in one write.
    void schedule_write();
    // Inside a read step, keeps a completed request to resume after it; false otherwise.
    bool collect_answer(link_detail::answered_request& request) {
        if (!collecting_answers_)
            return false;
        answered_.push_back(&request);
        return true;
    }
    // The requests the last read step answered, resumed in order.
    void resume_answered();
    // Carries out what the last core step decided (actions_): close or write, then the events,
    // with no core call on the stack.
    void carry_out();
    void close_socket();
    void emit(const link_event& event);

    boost::asio::any_io_executor executor_;
    transport::endpoint target_;
    event_handler on_event_;
    link_core core_;

    transport::stream_socket socket_;
    std::uint64_t connection_number_ = 0;  // tells a stale write completion from a live one
    bool write_in_flight_ = false;
    bool write_scheduled_ = false;  // a start_write() is posted: requests of this turn join it
    // Replies of the current read step: their callers resume after the step, in the read's
    // handler rather than a turn later, so answers leave in the same turn as the replies came.
    bool collecting_answers_ = false;
    std::vector<link_detail::answered_request*> answered_;  // reused
    std::vector<link_detail::answered_request*> resuming_;  // reused
    reconnect_policy policy_;
    link_actions actions_;                // what the last core step decided; reused
    std::vector<link_event> delivering_;  // the events being delivered; reused
    bool delivering_events_ = false;
    boost::asio::steady_timer deadline_timer_;   // at or before link_core's next deadline
    boost::asio::steady_timer finished_signal_;  // cancelled when run() has ended
    boost::asio::steady_timer retry_timer_;      // the wait before reconnecting
    socket_file_watcher* watcher_;               // the io_context's; the link's file while down
    boost::asio::steady_timer file_signal_;      // cancelled by the watcher when there is news
    socket_file_watcher::waiter file_waiter_{file_signal_};
    boost::asio::cancellation_signal stop_signal_;

    std::optional<handed_over_connection> adopted_;  // start(adopted) until the loop takes it
    bool started_ = false;
    bool handing_over_ = false;  // async_hand_over() refuses new requests
    bool stopping_ = false;
    bool finished_ = false;
};

namespace link_detail {

template <class Handler>
class request_op final : public link_core::waiter, public answered_request {
    using clock = guest_link::clock;
    using work_guard = boost::asio::executor_work_guard<
        boost::asio::associated_executor_t<Handler, boost::asio::any_io_executor>>;
    using allocator = typename std::allocator_traits<boost::asio::associated_allocator_t<
        Handler, boost::asio::recycling_allocator<void>>>::template rebind_alloc<request_op>;

  public:
    static void start(Handler handler, guest_link& link, const protocol::host_message& request,
                      clock::time_point deadline) {
        allocator alloc(boost::asio::get_associated_allocator(
            handler, boost::asio::recycling_allocator<void>()));
        auto* op = std::allocator_traits<allocator>::allocate(alloc, 1);
        op = new (op) request_op(std::move(handler), link);
        auto queued = link.submit(*op, request, deadline);
        if (!queued) {
            op->complete(queued.error(), {});
            return;
        }
        op->id_ = *queued;
        auto slot = boost::asio::get_associated_cancellation_slot(op->handler_);
        if (slot.is_connected()) {
            slot.template emplace<cancel_handler>(op);
            op->cancellable_ = true;
        }
    }

    void complete(boost::system::error_code error, protocol::guest_message reply) override {
        completed_ = true;
        error_ = error;
        reply_ = std::move(reply);
        if (link_->collect_answer(*this))
            return;
        boost::asio::post(work_.get_executor(), deliver{this});
    }
    // After the read step: inline when the caller's executor is this thread's.
    void resume_now() override { boost::asio::dispatch(work_.get_executor(), deliver{this}); }

  private:
    struct cancel_handler {
        // A constructor, not an aggregate: clang 14 lacks parenthesised aggregate init.
        explicit cancel_handler(request_op* target) : op(target) {}
        request_op* op;
        void operator()(boost::asio::cancellation_type_t type) const {
            if (type == boost::asio::cancellation_type::none || op->completed_)
                return;
            op->link_->withdraw(op->id_);
            op->complete(boost::asio::error::operation_aborted, {});
        }
    };
    // Runs from the executor's queue, never inside link_core or the cancellation slot.
    struct deliver {
        request_op* op;
        void operator()() const { op->finish(); }
    };

    request_op(Handler handler, guest_link& link)
        : handler_(std::move(handler)),
          work_(boost::asio::get_associated_executor(handler_, link.get_executor())),
          link_(&link) {}

    void finish() {
        if (cancellable_)
            boost::asio::get_associated_cancellation_slot(handler_).clear();
        auto handler = std::move(handler_);
        auto work = std::move(work_);
        const auto error = error_;
        auto reply = std::move(reply_);
        allocator alloc(boost::asio::get_associated_allocator(
            handler, boost::asio::recycling_allocator<void>()));
        this->~request_op();
        std::allocator_traits<allocator>::deallocate(alloc, this, 1);
        std::move(handler)(error, std::move(reply));
    }

    Handler handler_;
    work_guard work_;
    guest_link* link_;
    std::uint64_t id_ = 0;
    bool completed_ = false;
    bool cancellable_ = false;  // our handler is installed in the caller's cancellation slot
    boost::system::error_code error_;
    protocol::guest_message reply_;
};

}  // namespace link_detail

}  // namespace stereos::link

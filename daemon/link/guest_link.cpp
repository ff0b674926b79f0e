#include <stereos/link/guest_link.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <random>
#include <utility>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/execution/context.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/query.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <stereos/util/completion_tokens.hpp>

namespace stereos::link {

namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;
using boost::system::error_code;
using transport::use_tuple;

namespace {
// Read size per syscall: small, because thousands of mostly idle links keep their buffers.
constexpr std::size_t read_chunk = 4096;

std::uint32_t link_seed() {
    static std::random_device device;
    return device();
}

// Between a socket file appearing and its server listening.
constexpr std::chrono::milliseconds socket_settle_time{5};

}  // namespace

handed_over_connection& handed_over_connection::operator=(handed_over_connection&& other) noexcept {
    if (this != &other) {
        if (fd_ >= 0)
            ::close(fd_);
        fd_ = std::exchange(other.fd_, -1);
        unread_ = std::move(other.unread_);
    }
    return *this;
}

handed_over_connection::~handed_over_connection() {
    if (fd_ >= 0)
        ::close(fd_);
}

namespace {
// The socket of a handed-over connection, as the connect step would have made it.
boost::system::result<transport::stream_socket, transport::connect_error> adopt_socket(
    const asio::any_io_executor& executor, handed_over_connection& connection) {
    int family = 0;
    int protocol = 0;
    socklen_t size = sizeof family;
    if (::getsockopt(connection.fd(), SOL_SOCKET, SO_DOMAIN, &family, &size) != 0)
        return transport::connect_error{error_code(errno, boost::system::system_category()),
                                        "the handed-over connection is not a socket"};
    size = sizeof protocol;
    ::getsockopt(connection.fd(), SOL_SOCKET, SO_PROTOCOL, &protocol, &size);
    transport::stream_socket socket(executor);
    error_code ec;
    socket.assign(asio::generic::stream_protocol(family, protocol), connection.fd(), ec);
    if (ec)
        return transport::connect_error{ec, "cannot adopt the handed-over connection"};
    connection.release();
    return socket;
}
}  // namespace

std::shared_ptr<guest_link> guest_link::create(asio::any_io_executor executor,
                                               transport::endpoint target,
                                               guest_link_options options, event_handler on_event) {
    return std::make_shared<guest_link>(std::move(executor), std::move(target), options,
                                        std::move(on_event));
}

guest_link::guest_link(asio::any_io_executor executor, transport::endpoint target,
                       guest_link_options options, event_handler on_event)
    : executor_(std::move(executor)),
      target_(std::move(target)),
      on_event_(std::move(on_event)),
      core_(options),
      socket_(executor_),
      policy_(options, link_seed()),
      deadline_timer_(executor_),
      finished_signal_(executor_),
      retry_timer_(executor_),
      watcher_(&asio::use_service<socket_file_watcher>(
          asio::query(executor_, asio::execution::context))),
      file_signal_(executor_) {
    deadline_timer_.expires_at(clock::time_point::max());
}

guest_link::~guest_link() {
    stop_watching();
    // Nothing may be left waiting on a link that is gone.
    core_.fail_all(link_error::link_stopped, clock::now());
}

void guest_link::start() {
    if (started_)
        return;
    started_ = true;
    asio::co_spawn(
        executor_, run(),
        asio::bind_cancellation_slot(stop_signal_.slot(),
                                     [self = shared_from_this()](const std::exception_ptr& e) {
                                         self->finished_ = true;
                                         self->finished_signal_.cancel();
                                         // A throw out of the loop is a bug: fail loudly
                                         // rather than run on with a dead link.
                                         transport::rethrow_if_failed(e);
                                     }));
}

void guest_link::start(handed_over_connection adopted) {
    if (started_)
        return;
    adopted_.emplace(std::move(adopted));
    start();
}

asio::awaitable<std::optional<handed_over_connection>> guest_link::async_hand_over(
    clock::time_point until) {
    auto self = shared_from_this();
    std::optional<handed_over_connection> handed;
    if (!started_ || stopping_ || finished_) {
        co_await async_stop();
        co_return handed;
    }
    handing_over_ = true;
    // Replies owed are few and quick; a short poll keeps the serving path free of any check.
    asio::steady_timer poll(executor_);
    while (core_.is_up() && core_.queued_requests() > 0 && clock::now() < until && !stopping_) {
        poll.expires_after(std::chrono::milliseconds(5));
        co_await poll.async_wait(use_tuple);
    }
    const auto unread = core_.unread_bytes();
    if (!stopping_ && core_.is_up() && core_.queued_requests() == 0 && !write_in_flight_ &&
        unread && socket_.is_open()) {
        std::string bytes(*unread);
        error_code ec;
        // Cancels the pending read, whose completion then ends the loop (stopping_, no event).
        const int fd = socket_.release(ec);
        if (!ec)
            handed.emplace(fd, std::move(bytes));
    }
    co_await async_stop();
    co_return handed;
}

void guest_link::stop() {
    if (stopping_)
        return;
    stopping_ = true;
    stop_signal_.emit(asio::cancellation_type::terminal);
    if (!started_) {
        finished_ = true;
        core_.fail_all(link_error::link_stopped, clock::now());
    }
}

asio::awaitable<void> guest_link::async_stop() {
    auto self = shared_from_this();
    stop();
    while (!finished_) {
        finished_signal_.expires_at(clock::time_point::max());
        co_await finished_signal_.async_wait(use_tuple);
    }
}

void guest_link::emit(const link_event& event) {
    if (on_event_)
        on_event_(event);
}

void guest_link::carry_out() {
    if (actions_.close)
        close_socket();
    else if (actions_.write)
        start_write();
    actions_.close = false;
    actions_.write = false;
    // A handler that calls back in may make the core decide more: those events wait in
    // actions_ for the outermost call here, so every event is told once and in order.
    if (delivering_events_)
        return;
    delivering_events_ = true;
    while (!actions_.events.empty()) {
        delivering_.swap(actions_.events);
        for (const auto& event : delivering_)
            emit(event);
        delivering_.clear();
    }
    delivering_events_ = false;
}

asio::awaitable<request_result> guest_link::async_request(protocol::host_message request) {
    // A coroutine itself: g++ 12 destroys the by-value parameter of a coroutine twice when a
    // plain function returns that coroutine's awaitable directly.
    co_return co_await async_request(std::move(request), default_deadline());
}

asio::awaitable<request_result> guest_link::async_request(protocol::host_message request,
                                                          clock::time_point deadline) {
    auto self = shared_from_this();
    auto [error, reply] = co_await async_send(std::move(request), deadline, use_tuple);
    co_return to_request_result(error, std::move(reply));
}

boost::system::result<std::uint64_t> guest_link::submit(link_core::waiter& to_notify,
                                                        const protocol::host_message& request,
                                                        clock::time_point deadline) {
    if (stopping_ || finished_ || handing_over_) {
        core_.count_refused(request);
        return error_code(link_error::link_stopped);
    }
    auto id = core_.add(request, deadline, clock::now(), &to_notify);
    if (!id)
        return id;
    // The deadline loop only needs waking when this deadline is the new earliest one.
    deadline_at(deadline);
    schedule_write();
    return id;
}

// Moving the timer completes its pending wait with operation_aborted: a handler run on the
// link's thread, without a syscall, where a timer firing at a stale deadline costs the reactor
// a wakeup.
void guest_link::deadline_at(clock::time_point when) {
    if (when < deadline_timer_.expiry())
        deadline_timer_.expires_at(when);
}

void guest_link::deadline_at_next() {
    const auto next = core_.next_deadline();
    if (next != deadline_timer_.expiry())
        deadline_timer_.expires_at(next);
}

asio::awaitable<void> guest_link::run() {
    auto self = shared_from_this();
    // Stop requests are checked by hand after every wait, so cancellation must not throw.
    co_await asio::this_coro::throw_if_cancelled(false);
    co_await (connection_loop() || deadline_loop());

    close_socket();
    stop_watching();
    core_.fail_all(link_error::link_stopped, clock::now());
}

asio::awaitable<void> guest_link::deadline_loop() {
    co_await asio::this_coro::throw_if_cancelled(false);
    deadline_at_next();
    while (true) {
        auto [ec] = co_await deadline_timer_.async_wait(use_tuple);
        auto state = co_await asio::this_coro::cancellation_state;
        if (state.cancelled() != asio::cancellation_type::none)
            co_return;
        if (ec == asio::error::operation_aborted)
            continue;  // moved: its new expiry is set
        ++core_.stats().deadline_wakeups;
        core_.on_deadline(clock::now(), actions_);
        carry_out();
        deadline_timer_.expires_at(core_.next_deadline());
    }
}

void guest_link::set_options(guest_link_options options) {
    options.fast_retry_budget = core_.options().fast_retry_budget;
    core_.set_options(options);
    policy_.set_options(options);
    deadline_at(core_.next_deadline());
}

void guest_link::close_socket() {
    error_code ignored;
    socket_.close(ignored);
}

void guest_link::resume_answered() {
    // A resumed caller may send again (answered_ grows only inside a read step, not here).
    resuming_.swap(answered_);
    for (auto* request : resuming_)
        request->resume_now();
    resuming_.clear();
}

void guest_link::schedule_write() {
    if (write_scheduled_ || write_in_flight_)
        return;
    write_scheduled_ = true;
    asio::post(executor_, [self = shared_from_this()] {
        self->write_scheduled_ = false;
        self->start_write();
    });
}

void guest_link::start_write() {
    if (write_in_flight_ || !socket_.is_open() || !core_.has_bytes_to_write())
        return;
    const auto bytes = core_.prepare_write();
    if (bytes.empty())
        return;
    write_in_flight_ = true;
    ++core_.stats().writes;
    asio::async_write(
        socket_, asio::buffer(bytes.data(), bytes.size()),
        [self = shared_from_this(), connection = connection_number_](error_code ec, std::size_t n) {
            if (connection != self->connection_number_)
                return;  // that connection is gone, and its bytes with it
            self->write_in_flight_ = false;
            if (ec) {
                self->core_.on_lost(ec, "write");
                self->close_socket();
                return;
            }
            self->core_.commit_write(n);
            self->start_write();
        });
}

void guest_link::reconnect_now() {
    if (stopping_ || finished_)
        return;
    using verdict = reconnect_policy::reconnect_verdict;
    switch (policy_.on_reconnect_now(clock::now(), core_.is_up(), core_.last_received())) {
        case verdict::keep:
            return;
        case verdict::drop_connection:
            core_.drop(link_error::reconnect_requested, "reconnect requested");
            close_socket();
            return;
        case verdict::retry_at_once:
            retry_timer_.cancel();
            return;
    }
}

asio::awaitable<void> guest_link::wait_before_retry(std::chrono::milliseconds delay) {
    if (delay.count() <= 0)
        co_return;
    retry_timer_.expires_after(delay);
    if (!watch_socket_file()) {
        co_await retry_timer_.async_wait(use_tuple);  // reconnect_now() cancels it
        co_return;
    }
    using news = socket_file_watcher::news;
    // The file may have appeared while the last attempt was under way.
    if (file_waiter_.result != news::file_appeared) {
        file_signal_.expires_at(clock::time_point::max());
        auto woken =
            co_await (retry_timer_.async_wait(use_tuple) || file_signal_.async_wait(use_tuple));
        if (stopping_ || woken.index() == 0)
            co_return;
        if (file_waiter_.result != news::file_appeared) {
            // The directory went: the timer alone decides this wait; the next one watches anew.
            co_await retry_timer_.async_wait(use_tuple);
            co_return;
        }
    }
    file_waiter_.result = news::nothing;
    policy_.open_fast_retry_window(clock::now());  // the VM is starting: its guest will listen soon
    // A server binds (creating the file) before it listens: connecting in between is refused,
    // so give it a moment.
    retry_timer_.expires_after(socket_settle_time);
    co_await retry_timer_.async_wait(use_tuple);
}

bool guest_link::watch_socket_file() {
    if (file_waiter_.watch >= 0)
        return true;
    const std::string* path = nullptr;
    if (const auto* unix_target = std::get_if<transport::unix_endpoint>(&target_))
        path = &unix_target->path;
    else if (const auto* hybrid = std::get_if<transport::hybrid_vsock_endpoint>(&target_))
        path = &hybrid->path;
    if (!path || path->empty() || path->front() != '/')
        return false;
    if (!watcher_->watch(executor_, *path, file_waiter_)) {
        ++core_.stats().socket_watch_failures;
        return false;
    }
    return true;
}

void guest_link::stop_watching() {
    // Not registered after the io_context shut the watcher down: it is not touched then.
    if (file_waiter_.watch >= 0)
        watcher_->unwatch(file_waiter_);
    file_waiter_.result = socket_file_watcher::news::nothing;
}

asio::awaitable<void> guest_link::connection_loop() {
    co_await asio::this_coro::throw_if_cancelled(false);
    std::uint64_t attempt = 0;
    // A guest is usually added as its VM starts: look for it often while it boots.
    policy_.open_fast_retry_window(clock::now());
    const auto& options = core_.options();
    auto& stats = core_.stats();

    while (!stopping_) {
        emit(link_events::connecting{++attempt});
        policy_.on_attempt();
        const auto attempt_started = clock::now();
        std::string unread;
        boost::system::result<transport::stream_socket, transport::connect_error> connected =
            transport::connect_error{};
        if (adopted_) {
            unread = adopted_->unread();
            connected = adopt_socket(executor_, *adopted_);
            adopted_.reset();
        } else {
            connected = co_await transport::async_connect(target_, options.connect_timeout);
        }
        if (stopping_)
            break;

        std::chrono::milliseconds retry_in{0};
        if (!connected) {
            ++stats.connect_failures;
            stats.last_error = connected.error().describe(target_);
            retry_in = policy_.on_connect_failed(clock::now());
            emit(link_events::connect_failed{connected.error().code, stats.last_error});
        } else {
            socket_ = std::move(*connected);
            ++connection_number_;
            write_in_flight_ = false;
            const auto handshake_deadline = attempt_started + options.connect_timeout;
            core_.on_connected(clock::now(), handshake_deadline);
            if (!unread.empty()) {
                // The previous process's incomplete line: the stream goes on from there.
                core_.on_bytes(unread, clock::now(), actions_);
                carry_out();
            }
            deadline_at(handshake_deadline);
            start_write();
            co_await read_loop();
            close_socket();
            ++connection_number_;  // a write still in flight belongs to the old connection
            write_in_flight_ = false;
            if (stopping_) {
                core_.on_connection_ended(true, clock::now());
                break;
            }
            const auto ended = core_.on_connection_ended(false, clock::now());
            // Its written requests are gone: their deadlines must not wake the timer.
            deadline_at_next();
            if (!ended.was_up) {
                ++stats.connect_failures;
                stats.last_error = transport::to_string(target_) + ": " + ended.detail;
                retry_in = policy_.on_connect_failed(clock::now());
                emit(link_events::connect_failed{ended.reason, stats.last_error});
            } else {
                retry_in = policy_.on_down(clock::now());
                emit(
                    link_events::down{ended.reason, ended.detail, retry_in, core_.last_received()});
            }
        }
        co_await wait_before_retry(retry_in);
    }
}

asio::awaitable<void> guest_link::read_loop() {
    while (true) {
        auto space = core_.read_buffer(read_chunk);
        auto [ec, n] =
            co_await socket_.async_read_some(asio::buffer(space.data(), space.size()), use_tuple);
        if (ec) {
            core_.on_lost(ec, "read");
            co_return;
        }
        // A stop that came while this read's completion was queued cancelled nothing: with a
        // guest that never stops sending, only this check ends the loop.
        if (stopping_)
            co_return;
        const bool was_up = core_.is_up();
        collecting_answers_ = true;
        core_.on_read(n, clock::now(), actions_);
        collecting_answers_ = false;
        if (!was_up && core_.is_up()) {
            policy_.on_up(clock::now());
            stop_watching();  // only needed while the guest is away
        }
        if (core_.queued_requests() == 0)
            deadline_at_next();  // the answered requests' deadlines are stale
        else
            deadline_at(core_.keepalive_due());  // the link came up: the next ping is due
        carry_out();  // events last: their handlers may send requests, or stop the link
        resume_answered();
        if (core_.drop_requested() || stopping_)
            co_return;
    }
}

}  // namespace stereos::link

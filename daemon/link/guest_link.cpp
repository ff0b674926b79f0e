#include <stereos/link/guest_link.hpp>

#include <sys/inotify.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <random>
#include <utility>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
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

enum class watch_news { nothing, file_appeared, watch_gone };

// What a batch of inotify events read from its descriptor says about the file `name`.
watch_news read_watch_events(std::string_view events, std::string_view name) {
    auto news = watch_news::nothing;
    for (std::size_t at = 0; at + sizeof(inotify_event) <= events.size();) {
        inotify_event header{};
        std::memcpy(&header, events.data() + at, sizeof header);
        const auto name_at = at + sizeof header;
        if (header.len > 0 && name_at + header.len <= events.size()) {
            const std::string_view padded(events.data() + name_at, header.len);
            if (padded.substr(0, padded.find('\0')) == name)
                return watch_news::file_appeared;
        }
        // The directory itself went (e.g. a VMM's per-VM directory on exit): the watch is dead.
        if ((header.mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF)) != 0)
            news = watch_news::watch_gone;
        at = name_at + header.len;
    }
    return news;
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
      core_(options, on_event_),
      socket_(executor_),
      backoff_(options.reconnect_initial, options.reconnect_max, link_seed()),
      deadline_timer_(executor_),
      finished_signal_(executor_),
      retry_timer_(executor_) {
    deadline_timer_.expires_at(clock::time_point::max());
}

guest_link::~guest_link() {
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
    if (stopping_ || finished_) {
        core_.count_refused(request);
        return error_code(link_error::link_stopped);
    }
    auto id = core_.add(request, deadline, clock::now(), &to_notify);
    if (!id)
        return id;
    // The deadline loop only needs waking when this deadline is the new earliest one.
    deadline_at(deadline);
    start_write();
    return id;
}

void guest_link::deadline_at(clock::time_point when) {
    if (when < deadline_timer_.expiry())
        deadline_timer_.expires_at(when);
}

asio::awaitable<void> guest_link::run() {
    auto self = shared_from_this();
    // Stop requests are checked by hand after every wait, so cancellation must not throw.
    co_await asio::this_coro::throw_if_cancelled(false);
    co_await (connection_loop() || deadline_loop());

    close_socket();
    socket_watch_.reset();
    core_.fail_all(link_error::link_stopped, clock::now());
}

asio::awaitable<void> guest_link::deadline_loop() {
    co_await asio::this_coro::throw_if_cancelled(false);
    while (true) {
        deadline_timer_.expires_at(core_.next_deadline());
        co_await deadline_timer_.async_wait(use_tuple);
        auto state = co_await asio::this_coro::cancellation_state;
        if (state.cancelled() != asio::cancellation_type::none)
            co_return;
        core_.on_deadline(clock::now());
        after_core_call();
    }
}

void guest_link::set_options(guest_link_options options) {
    const auto& before = core_.options();
    options.fast_retry_budget = before.fast_retry_budget;
    // A new backoff starts over: only when its bounds change, so a reload that changes other
    // timings does not make every disconnected guest retry at once.
    const bool new_backoff = options.reconnect_initial != before.reconnect_initial ||
                             options.reconnect_max != before.reconnect_max;
    core_.set_options(options);
    if (new_backoff)
        backoff_ = reconnect_backoff(options.reconnect_initial, options.reconnect_max, link_seed());
    deadline_at(core_.next_deadline());
}

void guest_link::after_core_call() {
    if (core_.drop_requested())
        close_socket();
    else
        start_write();
}

void guest_link::close_socket() {
    error_code ignored;
    socket_.close(ignored);
}

void guest_link::start_write() {
    if (write_in_flight_ || !socket_.is_open() || !core_.has_bytes_to_write())
        return;
    const auto bytes = core_.prepare_write();
    if (bytes.empty())
        return;
    write_in_flight_ = true;
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
    open_fast_retry_window();
    if (core_.is_up()) {
        // A link that answered within the last second is not the stale one a VM reset leaves
        // behind: keep it, so repeated calls cannot make a healthy guest flap.
        if (clock::now() - core_.last_received() < std::chrono::seconds(1))
            return;
        retry_at_once_ = true;
        core_.drop(link_error::reconnect_requested, "reconnect requested");
        close_socket();
    } else {
        retry_at_once_ = true;
        retry_timer_.cancel();
    }
}

void guest_link::open_fast_retry_window() {
    fast_retry_until_ = clock::now() + core_.options().fast_retry_window;
    backoff_.reset();
}

std::chrono::milliseconds guest_link::next_retry_delay() {
    if (std::exchange(retry_at_once_, false))
        return std::chrono::milliseconds{0};
    const auto now = clock::now();
    if (now < fast_retry_until_ &&
        (!core_.options().fast_retry_budget || core_.options().fast_retry_budget->take(now))) {
        return backoff_.initial_delay();
    }
    // Outside the window, or the daemon-wide budget is spent: the exponential steps, which
    // opening the window reset.
    return backoff_.next();
}

asio::awaitable<void> guest_link::wait_before_retry(std::chrono::milliseconds delay) {
    if (delay.count() <= 0)
        co_return;
    retry_timer_.expires_after(delay);
    if (!watch_socket_file()) {
        co_await retry_timer_.async_wait(use_tuple);  // reconnect_now() cancels it
        co_return;
    }
    auto woken = co_await (retry_timer_.async_wait(use_tuple) || socket_file_created());
    if (woken.index() == 1) {
        open_fast_retry_window();  // the VM is starting: its guest will listen soon
        // A server binds (creating the file) before it listens: connecting in between is
        // refused, so give it a moment.
        retry_timer_.expires_after(socket_settle_time);
        co_await retry_timer_.async_wait(use_tuple);
    }
}

bool guest_link::watch_socket_file() {
    if (socket_watch_)
        return true;
    const std::string* path = nullptr;
    if (const auto* unix_target = std::get_if<transport::unix_endpoint>(&target_))
        path = &unix_target->path;
    else if (const auto* hybrid = std::get_if<transport::hybrid_vsock_endpoint>(&target_))
        path = &hybrid->path;
    if (!path || path->empty() || path->front() != '/')
        return false;
    const auto slash = path->rfind('/');
    const std::string directory = slash == 0 ? "/" : path->substr(0, slash);
    const int fd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0)
        return false;
    // IN_ATTRIB too: a VMM may bind the socket and only then chown or chmod it.
    if (::inotify_add_watch(fd, directory.c_str(),
                            IN_CREATE | IN_MOVED_TO | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF) <
        0) {
        ::close(fd);
        return false;  // e.g. the directory does not exist yet: the timer alone decides
    }
    socket_file_name_ = path->substr(slash + 1);
    socket_watch_.emplace(executor_, fd);
    return true;
}

asio::awaitable<void> guest_link::socket_file_created() {
    // Runs under operator||: cancellation must not throw here.
    co_await asio::this_coro::throw_if_cancelled(false);
    std::array<char, 4096> buffer{};
    while (socket_watch_) {
        auto [ec, n] = co_await socket_watch_->async_read_some(asio::buffer(buffer), use_tuple);
        if (ec == asio::error::operation_aborted)
            co_return;
        const auto news =
            ec ? watch_news::watch_gone
               : read_watch_events(std::string_view(buffer.data(), n), socket_file_name_);
        if (news == watch_news::file_appeared)
            co_return;
        if (news == watch_news::watch_gone) {
            // The timer alone decides this wait; the next wait makes a new watch.
            error_code ignored;
            socket_watch_->close(ignored);
            socket_watch_.reset();
            asio::steady_timer until_the_timer(executor_, clock::time_point::max());
            co_await until_the_timer.async_wait(use_tuple);
            co_return;
        }
    }
}

asio::awaitable<void> guest_link::connection_loop() {
    co_await asio::this_coro::throw_if_cancelled(false);
    std::uint64_t attempt = 0;
    // A guest is usually added as its VM starts: look for it often while it boots.
    open_fast_retry_window();
    const auto& options = core_.options();
    auto& stats = core_.stats();

    while (!stopping_) {
        emit(link_events::connecting{++attempt});
        retry_at_once_ = false;  // this attempt is the one asked for
        const auto attempt_started = clock::now();
        auto connected = co_await transport::async_connect(target_, options.connect_timeout);
        if (stopping_)
            break;

        std::chrono::milliseconds retry_in{0};
        if (!connected) {
            ++stats.connect_failures;
            stats.last_error = connected.error().describe(target_);
            retry_in = next_retry_delay();
            emit(link_events::connect_failed{connected.error().code, stats.last_error});
        } else {
            socket_ = std::move(*connected);
            ++connection_number_;
            write_in_flight_ = false;
            const auto handshake_deadline = attempt_started + options.connect_timeout;
            core_.on_connected(clock::now(), handshake_deadline);
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
            if (!ended.was_up) {
                ++stats.connect_failures;
                stats.last_error = transport::to_string(target_) + ": " + ended.detail;
                retry_in = next_retry_delay();
                emit(link_events::connect_failed{ended.reason, stats.last_error});
            } else {
                if (socket_watch_) {
                    // Only needed while the guest is away.
                    error_code ignored;
                    socket_watch_->close(ignored);
                    socket_watch_.reset();
                }
                // A guest that stayed up and then went away is likely rebooting: look for it
                // often. One that drops at once keeps backing off, so it is not hammered.
                if (clock::now() - up_since_ >= options.stable_after)
                    open_fast_retry_window();
                retry_in = next_retry_delay();
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
        core_.on_read(n, clock::now());
        if (core_.drop_requested())
            co_return;
        if (!was_up && core_.is_up())
            up_since_ = clock::now();
        // An answered keepalive, or the link coming up, schedules the next ping.
        deadline_at(core_.keepalive_due());
        start_write();
    }
}

}  // namespace stereos::link

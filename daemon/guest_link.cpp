#include "daemon/guest_link.hpp"

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

#include "protocol/codec.hpp"
#include "protocol/redact.hpp"
#include "transport/completion_tokens.hpp"

namespace stereos::daemon {

namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;
using boost::system::error_code;
using transport::use_tuple;

namespace {
// Read size per syscall: small, because thousands of mostly idle links keep their buffers.
constexpr std::size_t read_chunk = 4096;
// A writer buffer grown by a large request is given back rather than kept per guest.
constexpr std::size_t keep_write_capacity = 64 * 1024;

std::uint32_t link_seed() {
    static std::random_device device;
    return device();
}

std::string describe_ms(std::chrono::milliseconds d) {
    if (d.count() % 1000 == 0)
        return std::to_string(d.count() / 1000) + "s";
    return std::to_string(d.count()) + "ms";
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

// Removes a map entry when the scope ends.
template <class Map>
struct erase_on_exit {
    erase_on_exit(Map& map_, typename Map::iterator entry_) : map(map_), entry(entry_) {}
    erase_on_exit(const erase_on_exit&) = delete;
    erase_on_exit& operator=(const erase_on_exit&) = delete;
    ~erase_on_exit() { map.erase(entry); }
    Map& map;
    typename Map::iterator entry;
};
}  // namespace

// One caller's wait for its reply. The timer never expires by itself: it is only a wake-up
// signal, so the kernel's timer is not reprogrammed per request. The link's single
// deadline_timer_ marks it timed_out.
struct guest_link::request_waiter {
    explicit request_waiter(const asio::any_io_executor& executor) : timer(executor) {
        timer.expires_at(clock::time_point::max());
    }
    asio::steady_timer timer;
    bool done = false;
    bool timed_out = false;
    error_code error;
    protocol::guest_message reply;
};

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
      options_(options),
      on_event_(std::move(on_event)),
      socket_(executor_),
      backoff_(options.reconnect_initial, options.reconnect_max, link_seed()),
      write_signal_(executor_),
      deadline_timer_(executor_),
      finished_signal_(executor_),
      retry_timer_(executor_) {
    deadline_timer_.expires_at(clock::time_point::max());
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
                                         self->connected_ = false;
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
        pending_.fail_all(link_error::link_stopped);
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
    co_return co_await async_request(std::move(request), clock::now() + options_.request_timeout);
}

asio::awaitable<request_result> guest_link::async_request(protocol::host_message request,
                                                          clock::time_point deadline) {
    auto self = shared_from_this();
    if (stopping_ || finished_)
        co_return error_code(link_error::link_stopped);
    std::string line;
    if (protocol::encode_into(line, request))
        co_return error_code(link_error::request_too_large);
    if (pending_.size() >= options_.max_queued_requests ||
        pending_.queued_bytes() + line.size() > options_.max_queued_bytes) {
        co_return error_code(link_error::queue_full);
    }

    auto waiter = std::make_shared<request_waiter>(executor_);
    const auto deadline_entry = deadlines_.emplace(deadline, waiter.get());
    // Erased however this coroutine ends, even if its frame is destroyed while suspended.
    const erase_on_exit deadline_registration{deadlines_, deadline_entry};
    // The deadline loop only needs waking when this deadline is the new earliest one.
    if (deadline < deadline_timer_.expiry())
        deadline_timer_.expires_at(deadline);
    const auto id = pending_.add(request, std::move(line),
                                 [waiter](error_code ec, protocol::guest_message reply) {
                                     waiter->done = true;
                                     waiter->error = ec;
                                     waiter->reply = std::move(reply);
                                     waiter->timer.cancel();
                                 });
    ++stats_.requests;
    write_signal_.cancel();

    co_await waiter->timer.async_wait(use_tuple);
    if (waiter->done) {
        if (waiter->error)
            co_return waiter->error;
        co_return std::move(waiter->reply);
    }

    // The deadline passed, or our caller was cancelled: withdraw the request. A written one
    // stays queued as abandoned so its late reply is consumed, not given to the next request.
    const auto withdrawn = pending_.cancel(id);
    if (!waiter->timed_out) {
        co_return error_code(asio::error::operation_aborted);  // our caller was cancelled
    }
    if (withdrawn == pending_requests::cancel_outcome::removed_unwritten) {
        co_return error_code(link_error::guest_unavailable);
    }
    ++stats_.timeouts;
    if (connected_ && ++consecutive_timeouts_ >= options_.unresponsive_after_timeouts) {
        declare_unresponsive(link_error::guest_unresponsive, std::to_string(consecutive_timeouts_) +
                                                                 " consecutive requests timed out");
    }
    co_return error_code(link_error::request_timeout);
}

asio::awaitable<void> guest_link::run() {
    auto self = shared_from_this();
    // Stop requests are checked by hand after every wait, so cancellation must not throw.
    co_await asio::this_coro::throw_if_cancelled(false);
    co_await (connection_loop() || deadline_loop());

    error_code ignored;
    socket_.close(ignored);
    connected_ = false;
    socket_watch_.reset();
    pending_.fail_all(link_error::link_stopped);
}

asio::awaitable<void> guest_link::deadline_loop() {
    co_await asio::this_coro::throw_if_cancelled(false);
    while (true) {
        // The earliest deadline of a request still waiting; timed-out ones wake up soon.
        auto next = clock::time_point::max();
        for (const auto& [deadline, waiter] : deadlines_) {
            if (!waiter->timed_out) {
                next = deadline;
                break;
            }
        }
        deadline_timer_.expires_at(next);
        co_await deadline_timer_.async_wait(use_tuple);
        auto state = co_await asio::this_coro::cancellation_state;
        if (state.cancelled() != asio::cancellation_type::none)
            co_return;
        const auto now = clock::now();
        for (const auto& [deadline, waiter] : deadlines_) {
            if (deadline > now)
                break;
            if (!waiter->timed_out && !waiter->done) {
                waiter->timed_out = true;
                waiter->timer.cancel();
            }
        }
    }
}

void guest_link::reconnect_now() {
    if (stopping_ || finished_)
        return;
    open_fast_retry_window();
    if (connected_) {
        // A link that answered within the last second is not the stale one a VM reset leaves
        // behind: keep it, so repeated calls cannot make a healthy guest flap.
        if (clock::now() - last_received_ < std::chrono::seconds(1))
            return;
        retry_at_once_ = true;
        drop_connection(link_error::reconnect_requested, "reconnect requested");
    } else {
        retry_at_once_ = true;
        retry_timer_.cancel();
    }
}

void guest_link::open_fast_retry_window() {
    fast_retry_until_ = clock::now() + options_.fast_retry_window;
    backoff_.reset();
}

std::chrono::milliseconds guest_link::next_retry_delay() {
    if (std::exchange(retry_at_once_, false))
        return std::chrono::milliseconds{0};
    const auto now = clock::now();
    if (now < fast_retry_until_ &&
        (!options_.fast_retry_budget || options_.fast_retry_budget->take(now))) {
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

    while (!stopping_) {
        emit(link_events::connecting{++attempt});
        retry_at_once_ = false;  // this attempt is the one asked for
        const auto attempt_started = clock::now();
        auto connected = co_await transport::async_connect(target_, options_.connect_timeout);
        if (stopping_)
            break;

        std::chrono::milliseconds retry_in{0};
        if (!connected) {
            ++stats_.connect_failures;
            stats_.last_error = connected.error().describe(target_);
            retry_in = next_retry_delay();
            emit(link_events::connect_failed{connected.error().code, stats_.last_error});
        } else {
            socket_ = std::move(*connected);
            auto greeting = co_await handshake(attempt_started + options_.connect_timeout);
            if (stopping_)
                break;
            if (!greeting.health) {
                error_code ignored;
                socket_.close(ignored);
                ++stats_.connect_failures;
                stats_.last_error = transport::to_string(target_) + ": " + greeting.reason;
                retry_in = next_retry_delay();
                emit(link_events::connect_failed{greeting.error, stats_.last_error});
            } else {
                const auto up_since = clock::now();
                co_await serve_connection(*greeting.health);
                if (stopping_)
                    break;
                // A guest that stayed up and then went away is likely rebooting: look for it
                // often. One that drops at once keeps backing off, so it is not hammered.
                if (clock::now() - up_since >= options_.stable_after)
                    open_fast_retry_window();
                retry_in = next_retry_delay();
                emit(link_events::down{drop_reason_, drop_detail_, retry_in});
            }
        }
        co_await wait_before_retry(retry_in);
    }
}

asio::awaitable<guest_link::handshake_outcome> guest_link::handshake(clock::time_point deadline) {
    asio::steady_timer timer(executor_, deadline);
    auto outcome = co_await (exchange_handshake() || timer.async_wait(use_tuple));
    if (auto* finished = std::get_if<handshake_outcome>(&outcome))
        co_return std::move(*finished);
    co_return handshake_outcome{std::nullopt, link_error::handshake_timeout,
                                "connected, but no answer to get_health within " +
                                    describe_ms(options_.connect_timeout) + " of connecting"};
}

asio::awaitable<guest_link::handshake_outcome> guest_link::exchange_handshake() {
    // Runs as its own coroutine thread (under operator||): cancellation must not throw here.
    co_await asio::this_coro::throw_if_cancelled(false);
    auto failed = [](error_code code, std::string reason) {
        return handshake_outcome{std::nullopt, code, std::move(reason)};
    };
    framer_.reset();
    early_pushes_.clear();
    handshake_sent_at_ = clock::now();
    std::string request;
    const protocol::host_message poll = protocol::get_health_request{};
    protocol::encode_into(request, poll);
    auto [write_error, written] =
        co_await asio::async_write(socket_, asio::buffer(request), use_tuple);
    if (write_error)
        co_return failed(write_error, "connected, but the write failed: " + write_error.message());

    while (true) {
        auto space = framer_.prepare(read_chunk);
        auto [ec, n] =
            co_await socket_.async_read_some(asio::buffer(space.data(), space.size()), use_tuple);
        if (ec == asio::error::eof) {
            co_return failed(link_error::handshake_failed,
                             "connected, but the connection closed before the guest answered");
        }
        if (ec)
            co_return failed(ec, "connected, but the read failed: " + ec.message());
        framer_.commit(n);
        while (true) {
            auto line = framer_.next_line();
            if (!line) {
                co_return failed(link_error::protocol_error,
                                 "guest sent a line over the 1 MiB limit");
            }
            if (!*line)
                break;
            auto decoded = protocol::decode_guest_line(**line);
            if (!decoded) {
                co_return failed(link_error::protocol_error,
                                 "undecodable line from guest (" + decoded.error().detail +
                                     "): " + protocol::printable_excerpt(**line));
            }
            if (auto* health = std::get_if<protocol::health_payload>(&*decoded))
                co_return handshake_outcome{std::move(*health), {}, {}};
            if (auto* pushed = std::get_if<protocol::lifecycle_payload>(&*decoded)) {
                early_pushes_.push_back(std::move(*pushed));
                continue;
            }
            if (std::holds_alternative<protocol::unknown_message>(*decoded)) {
                ++stats_.unknown_messages;
                continue;
            }
            co_return failed(link_error::handshake_failed,
                             "guest answered get_health with " +
                                 protocol::printable_excerpt(protocol::redacted(*decoded)));
        }
    }
}

asio::awaitable<void> guest_link::serve_connection(const protocol::health_payload& greeting) {
    ++stats_.connects;
    connected_ = true;
    if (socket_watch_) {
        // Only needed while the guest is away.
        error_code ignored;
        socket_watch_->close(ignored);
        socket_watch_.reset();
    }
    consecutive_timeouts_ = 0;
    declared_unresponsive_ = false;
    drop_reason_ = {};
    drop_detail_.clear();
    last_received_ = clock::now();
    emit(link_events::up{greeting, last_received_, handshake_sent_at_});
    // Pushed before the handshake's answer: told after `up`, as they were received.
    auto early = std::move(early_pushes_);
    early_pushes_.clear();
    for (auto& pushed : early) {
        ++stats_.lifecycle_events;
        emit(link_events::lifecycle{std::move(pushed)});
    }

    co_await (read_loop() || write_loop() || keepalive_loop());

    error_code ignored;
    socket_.close(ignored);
    connected_ = false;
    ++stats_.disconnects;
    if (!drop_reason_) {
        drop_reason_ = stopping_ ? error_code(link_error::link_stopped)
                                 : error_code(link_error::connection_closed);
    }
    if (drop_detail_.empty())
        drop_detail_ = drop_reason_.message();
    stats_.last_error = drop_detail_;
    // Written requests cannot be retried safely: the guest may have acted on them.
    error_code written_error = link_error::connection_lost;
    if (stopping_)
        written_error = link_error::link_stopped;
    if (drop_reason_ == link_error::protocol_error)
        written_error = link_error::protocol_error;
    pending_.on_connection_lost(written_error);
    if (write_buffer_.capacity() > keep_write_capacity)
        std::string().swap(write_buffer_);
}

void guest_link::declare_unresponsive(error_code cause, std::string reason) {
    if (!connected_ || declared_unresponsive_)
        return;
    declared_unresponsive_ = true;
    emit(link_events::unresponsive{cause, reason});
    drop_connection(cause, std::move(reason));
}

void guest_link::drop_connection(error_code reason, std::string detail) {
    if (!drop_reason_) {
        drop_reason_ = reason;
        drop_detail_ = std::move(detail);
    }
    error_code ignored;
    socket_.close(ignored);
}

asio::awaitable<void> guest_link::read_loop() {
    // Lines that arrived with the handshake's answer are handled before the first read.
    bool drain_first = true;
    while (true) {
        if (!std::exchange(drain_first, false)) {
            auto space = framer_.prepare(read_chunk);
            auto [ec, n] = co_await socket_.async_read_some(
                asio::buffer(space.data(), space.size()), use_tuple);
            if (ec) {
                if (ec == asio::error::eof) {
                    drop_connection(link_error::connection_closed,
                                    "the guest closed the connection");
                } else {
                    drop_connection(ec, "read failed: " + ec.message());
                }
                co_return;
            }
            framer_.commit(n);
            last_received_ = clock::now();
        }
        while (true) {
            auto line = framer_.next_line();
            if (!line) {
                ++stats_.protocol_errors;
                const std::string detail = "guest sent a line over the 1 MiB limit";
                emit(link_events::protocol_violation{detail});
                drop_connection(link_error::protocol_error, detail);
                co_return;
            }
            if (!*line)
                break;
            if (!handle_line(**line))
                co_return;
        }
    }
}

bool guest_link::handle_line(std::string_view line) {
    auto decoded = protocol::decode_guest_line(line);
    auto violation = [&](std::string detail) {
        ++stats_.protocol_errors;
        emit(link_events::protocol_violation{detail});
        drop_connection(link_error::protocol_error, std::move(detail));
        return false;
    };
    if (!decoded) {
        return violation("undecodable line from guest (" + decoded.error().detail +
                         "): " + protocol::printable_excerpt(line));
    }
    if (auto* pushed = std::get_if<protocol::lifecycle_payload>(&*decoded)) {
        ++stats_.lifecycle_events;
        emit(link_events::lifecycle{std::move(*pushed)});
        return true;
    }
    if (auto* unknown = std::get_if<protocol::unknown_message>(&*decoded)) {
        ++stats_.unknown_messages;
        emit(link_events::unknown_message{protocol::printable_excerpt(unknown->type, 64)});
        return true;
    }

    // Described only when it is an error: the common path builds no strings.
    switch (pending_.match_reply(*decoded)) {
        case pending_requests::reply_outcome::completed:
            break;
        case pending_requests::reply_outcome::dropped_abandoned:
            ++stats_.late_replies_dropped;
            break;
        case pending_requests::reply_outcome::nothing_outstanding:
            return violation("guest sent a reply with no request outstanding: " +
                             protocol::printable_excerpt(protocol::redacted(*decoded)));
        case pending_requests::reply_outcome::unexpected_kind:
        case pending_requests::reply_outcome::mismatched_reply_to:
            return violation("guest reply out of step: expected " +
                             pending_.describe_oldest_written() + ", got " +
                             protocol::printable_excerpt(protocol::redacted(*decoded)));
    }
    // A slow guest is still a live guest: a late (abandoned) reply also counts.
    consecutive_timeouts_ = 0;
    pending_.on_reply(std::move(*decoded));
    return true;
}

asio::awaitable<void> guest_link::write_loop() {
    while (true) {
        write_buffer_.clear();
        if (pending_.take_unwritten(write_buffer_) == 0) {
            write_signal_.expires_at(clock::time_point::max());
            co_await write_signal_.async_wait(use_tuple);
            auto state = co_await asio::this_coro::cancellation_state;
            if (state.cancelled() != asio::cancellation_type::none)
                co_return;
            continue;
        }
        auto [ec, n] = co_await asio::async_write(socket_, asio::buffer(write_buffer_), use_tuple);
        if (ec) {
            drop_connection(ec, "write failed: " + ec.message());
            co_return;
        }
    }
}

asio::awaitable<void> guest_link::keepalive_loop() {
    asio::steady_timer timer(executor_);
    while (true) {
        timer.expires_at(last_received_ + options_.keepalive_interval);
        co_await timer.async_wait(use_tuple);
        auto state = co_await asio::this_coro::cancellation_state;
        if (state.cancelled() != asio::cancellation_type::none)
            co_return;
        if (clock::now() < last_received_ + options_.keepalive_interval)
            continue;

        const protocol::host_message ping = protocol::ping_request{};
        const auto deadline = clock::now() + options_.request_timeout;
        auto reply = co_await async_request(ping, deadline);
        state = co_await asio::this_coro::cancellation_state;
        if (state.cancelled() != asio::cancellation_type::none || !connected_)
            co_return;
        if (reply)
            continue;
        if (reply.error() == link_error::request_timeout) {
            // A no-op when this timeout was also the one that made the count.
            declare_unresponsive(
                link_error::keepalive_timeout,
                "keepalive ping unanswered within " + describe_ms(options_.request_timeout));
            co_return;
        }
    }
}

}  // namespace stereos::daemon

#include "daemon/api/session.hpp"

#include <sys/ioctl.h>

#include <algorithm>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>

#include <stereos/util/completion_tokens.hpp>
#include "daemon/logging.hpp"

namespace stereos::daemon {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using namespace std::chrono_literals;
using transport::use_tuple;

namespace {

constexpr auto over_limit_read_timeout = 2s;
constexpr auto linger_timeout = 2s;
constexpr std::size_t linger_max_bytes = 4 * 1024 * 1024;
constexpr std::size_t read_size = 4096;

// Errors meaning the client went away (or we closed the socket): nothing left to answer.
bool client_gone(boost::system::error_code ec) {
    return ec == http::error::end_of_stream || ec == http::error::partial_message ||
           ec == asio::error::eof || ec == asio::error::connection_reset ||
           ec == asio::error::broken_pipe || ec == asio::error::operation_aborted ||
           ec == asio::error::bad_descriptor || ec == asio::error::not_connected ||
           ec == beast::error::timeout;
}

}  // namespace

api_session::api_session(socket_type socket, std::optional<peer_facts> peer, bool over_limit,
                         api_session_environment& environment)
    : stream_(std::move(socket)),
      peer_(std::move(peer)),
      over_limit_(over_limit),
      env_(environment) {}

void api_session::close() {
    boost::system::error_code ignored;
    stream_.socket().close(ignored);
}

void api_session::stop() {
    if (event_wake_) {
        stream_.expires_after(std::chrono::milliseconds(1000));
        event_wake_->cancel();
    } else {
        close();
    }
}

void api_session::watch_for_hangup(bool any_input) {
    watching_ = true;
    stream_.socket().async_read_some(
        asio::buffer(watch_buffer_),
        [self = shared_from_this(), any_input](boost::system::error_code ec, std::size_t n) {
            if (ec == asio::error::operation_aborted)
                return;  // stop_watching()
            if (!ec) {
                self->watched_input_.append(self->watch_buffer_.data(), n);
                if (!any_input)
                    return;  // the next request, pipelined: answered in turn
            }
            if (!self->watching_)
                return;  // the session reads the end of the stream itself
            self->hung_up_ = true;
            self->hangup_.emit(asio::cancellation_type::terminal);
        });
}

asio::awaitable<void> api_session::stop_watching(beast::flat_buffer& buffer) {
    if (!std::exchange(watching_, false))
        co_return;
    boost::system::error_code ignored;
    stream_.socket().cancel(ignored);
    // The watch's completion is queued by now (cancelled or not): one turn of the executor
    // runs it before this coroutine goes on.
    co_await asio::post(stream_.get_executor(), asio::use_awaitable);
    if (!watched_input_.empty()) {
        const auto n =
            asio::buffer_copy(buffer.prepare(watched_input_.size()), asio::buffer(watched_input_));
        buffer.commit(n);
        watched_input_.clear();
    }
}

bool api_session::watched_for_hangups() {
    if (hangup_watch_id_ || hangup_watch_failed_)
        return hangup_watch_id_.has_value();
    hangup_watch_id_ =
        env_.hangups.watch(stream_.socket().native_handle(), [weak = weak_from_this()](bool gone) {
            if (auto self = weak.lock())
                self->on_peer_hangup(gone);
        });
    hangup_watch_failed_ = !hangup_watch_id_;
    return hangup_watch_id_.has_value();
}

void api_session::on_peer_hangup(bool gone) {
    if (hung_up_)
        return;
    if (!waiting_on_cancellable_) {
        // Between requests the session's own read meets the end of the stream, unless a
        // request came just before it: the next wait looks again.
        hangup_pending_ = true;
        hangup_gone_ = hangup_gone_ || gone;
        return;
    }
    cancel_if_hung_up(gone);
}

void api_session::cancel_if_hung_up(bool gone) {
    // A client that only shut its sending side after pipelining requests still reads answers.
    int unread = 0;
    if (!gone && ::ioctl(stream_.socket().native_handle(), FIONREAD, &unread) == 0 && unread > 0)
        return;
    hung_up_ = true;
    hangup_.emit(asio::cancellation_type::terminal);
}

void api_session::watch_for_hangup_while_waiting() {
    if (!watched_for_hangups()) {
        watch_for_hangup(false);
        return;
    }
    waiting_on_cancellable_ = true;
    if (!std::exchange(hangup_pending_, false))
        return;
    // Told one turn later, when the request's wait has begun and its cancellation slot holds it.
    asio::post(stream_.get_executor(), [weak = weak_from_this(), gone = hangup_gone_] {
        if (auto self = weak.lock(); self && self->waiting_on_cancellable_ && !self->hung_up_)
            self->cancel_if_hung_up(gone);
    });
}

asio::awaitable<bool> api_session::send(api::http_response& response) {
    env_.metrics.response_sent(response.result_int());
    stream_.expires_after(env_.write_timeout);
    auto [ec, n] = co_await http::async_write(stream_, response, use_tuple);
    if (ec && ec != beast::error::timeout && client_gone(ec))
        log::debug("API client hung up before its answer (" + ec.message() + ")");
    co_return !ec;
}

asio::awaitable<void> api_session::run() {
    // Cancellation (a hangup) is checked by hand where it matters, so it must not throw.
    co_await asio::this_coro::throw_if_cancelled(false);
    // However run() ends (an exception included), the hangup watch forgets this session.
    struct forget_hangup_watch {
        api_session& session;
        ~forget_hangup_watch() {
            if (session.hangup_watch_id_)
                session.env_.hangups.forget(*session.hangup_watch_id_);
        }
    } forget_on_exit{*this};
    // The user database may be slow: it answers off the daemon's thread, and the first request
    // waits for it here.
    access_ = co_await access_of(peer_, env_.users, env_.group, env_.read_group);
    beast::flat_buffer buffer;
    bool answered = false;
    while (!env_.context.stopping) {
        // Idle until the next request starts, then the read timeout covers the whole request,
        // so a client sending half a request cannot hold a connection slot.
        if (buffer.size() == 0) {
            // Asio tries a read at once: right after an answer the client has rarely sent its
            // next request yet (EAGAIN, a system call for nothing). One turn of the executor
            // first, after the other sessions' work, often finds it there under load.
            if (std::exchange(answered, false))
                co_await asio::post(stream_.get_executor(), asio::use_awaitable);
            stream_.expires_after(env_.idle_timeout);
            auto [ec, n] = co_await stream_.async_read_some(buffer.prepare(read_size), use_tuple);
            if (ec)
                break;
            buffer.commit(n);
        }
        stream_.expires_after(over_limit_ ? std::min<std::chrono::milliseconds>(
                                                env_.read_timeout, over_limit_read_timeout)
                                          : env_.read_timeout);
        http::request_parser<http::string_body> parser;
        parser.header_limit(api::max_header_bytes);
        parser.body_limit(api::max_body_bytes);
        auto [ec, n] = co_await http::async_read_header(stream_, buffer, parser, use_tuple);
        if (!ec && !parser.is_done()) {
            // curl sends large bodies only after "100 Continue" (or a 1 s pause).
            const auto& head = parser.get();
            if (beast::iequals(head[http::field::expect], "100-continue")) {
                static constexpr std::string_view go_on = "HTTP/1.1 100 Continue\r\n\r\n";
                auto [wec, wn] =
                    co_await asio::async_write(stream_, asio::buffer(go_on), use_tuple);
                ec = wec;
            }
            if (!ec) {
                auto [rec, rn] = co_await http::async_read(stream_, buffer, parser, use_tuple);
                ec = rec;
            }
        }
        if (ec) {
            if (client_gone(ec) || env_.context.stopping)
                break;
            // Malformed or over a limit: answer, then close without reading on.
            auto refusal = api::parse_error_response(ec);
            co_await send(refusal);
            co_await linger_close();
            break;
        }
        // A request may wait on a guest for long; its own deadline bounds it.
        stream_.expires_never();

        auto request = parser.release();
        if (log::enabled(log::severity::debug)) {
            const auto what = api::describe(request);
            log::debug("API request " + what, {.request = what});
        }
        api::api_outcome outcome;
        const api::route* matched_route = nullptr;
        if (over_limit_) {
            outcome = api::error_response(503, "server_busy",
                                          "too many API connections (limit " +
                                              std::to_string(env_.max_connections) + "); try again",
                                          request.version());
        } else {
            auto matched = api::match_route(request);
            if (auto* refusal = std::get_if<api::http_response>(&matched)) {
                outcome = std::move(*refusal);
            } else {
                auto& match = std::get<api::route_match>(matched);
                matched_route = match.chosen;
                const auto& entry = *match.chosen;
                if (auto refused = api::refusal_for(entry, access_, request.version())) {
                    outcome = std::move(*refused);
                } else {
                    // Bytes already read belong to a pipelined request: the client is still
                    // there.
                    if (entry.cancelled_by_hangup && buffer.size() == 0)
                        watch_for_hangup_while_waiting();
                    api::route_call call{request, match, access_, env_.context, request.version()};
                    if (entry.forward.prepare) {
                        // A request to the guest, awaited here: no coroutine of its own, as
                        // the health poll's (routes.hpp, guest_forward).
                        auto prepared = entry.forward.prepare(call);
                        if (auto* to_guest = std::get_if<api::guest_request>(&prepared)) {
                            auto [error, reply] = co_await to_guest->guest->async_request(
                                to_guest->message, use_tuple);
                            outcome = entry.forward.answer(call, *to_guest, error, reply);
                        } else {
                            outcome = std::get<api::http_response>(std::move(prepared));
                        }
                    } else {
                        outcome = co_await entry.handler(call);
                    }
                    waiting_on_cancellable_ = false;
                    if (watching_)
                        co_await stop_watching(buffer);
                    if (const auto* response = std::get_if<api::http_response>(&outcome))
                        api::flag_if_undeclared(entry, *response, env_.context);
                }
            }
        }
        // The body may be a secret or a jcard.toml: do not leave it in freed memory.
        std::fill(request.body().begin(), request.body().end(), '\0');
        if (auto* events = std::get_if<api::event_stream_request>(&outcome)) {
            co_await serve_events(events->guest_filter, request.version());
            break;
        }
        auto& response = std::get<api::http_response>(outcome);
        // Recorded even when the client is gone: a withdrawn request may have reached the guest.
        env_.audit.record(request, matched_route, access_, response);
        if (hung_up_) {
            log::debug("API client hung up while waiting; its request was withdrawn");
            break;
        }
        const bool keep_alive = request.keep_alive() && !over_limit_ && !env_.context.stopping;
        response.keep_alive(keep_alive);
        if (!co_await send(response) || !keep_alive)
            break;
        answered = true;
    }
    if (stream_.socket().is_open()) {
        boost::system::error_code ignored;
        stream_.socket().shutdown(socket_type::shutdown_send, ignored);
    }
}

// After an error response: stop sending, and read (and drop) what the client still sends until
// it closes, so closing does not reset the connection before it has read our answer.
asio::awaitable<void> api_session::linger_close() {
    boost::system::error_code ignored;
    stream_.socket().shutdown(socket_type::shutdown_send, ignored);
    stream_.expires_after(linger_timeout);
    std::vector<char> scratch(64 * 1024);
    std::size_t total = 0;
    while (total < linger_max_bytes) {
        auto [ec, n] = co_await stream_.async_read_some(asio::buffer(scratch), use_tuple);
        if (ec)
            break;
        total += n;
    }
}

}  // namespace stereos::daemon

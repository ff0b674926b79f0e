// GET /v1/events on an api_session: a snapshot line per guest, then every event as it is
// published, in HTTP/1.1 chunks (http::make_chunk) or, for HTTP/1.0, a body that ends when
// the connection does. The client sends nothing on a stream: input or a hangup ends it.
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/chunk_encode.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/write.hpp>

#include <stereos/util/completion_tokens.hpp>
#include "daemon/api/session.hpp"
#include "daemon/logging.hpp"

namespace stereos::daemon {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using transport::use_tuple;

namespace {
constexpr std::chrono::milliseconds stop_write_timeout{1000};
constexpr std::size_t batch_limit = 64 * 1024;
}  // namespace

asio::awaitable<void> api_session::serve_events(const std::string& guest_filter, unsigned version) {
    // Subscribe and take the snapshot with no suspension in between, so that no event falls
    // between the two.
    auto subscription = env_.bus.subscribe(guest_filter, env_.event_queue_capacity);
    std::string snapshot;
    for (const auto& guest : env_.registry.all()) {
        if (guest_filter.empty() || guest->name() == guest_filter) {
            snapshot +=
                *env_.bus.snapshot_line(guest->name(), "state", guest->snapshot_event_fields());
        }
    }
    env_.metrics.event_stream_opened();
    asio::steady_timer wake(stream_.get_executor());
    subscription->set_notify([&wake] { wake.cancel(); });
    event_wake_ = &wake;

    // HTTP/1.1: chunked; an HTTP/1.0 client gets a body that ends when the connection does.
    const bool chunked = version >= 11;
    http::response<http::empty_body> head{http::status::ok, version};
    head.set(http::field::server, "stereos-hostd/" STEREOS_VERSION);
    head.set(http::field::content_type, "application/x-ndjson");
    head.set(http::field::cache_control, "no-store");
    head.keep_alive(false);
    if (chunked)
        head.chunked(true);
    http::response_serializer<http::empty_body> serializer{head};
    env_.metrics.response_sent(200);
    stream_.expires_after(env_.write_timeout);
    auto [ec, n] = co_await http::async_write_header(stream_, serializer, use_tuple);
    if (!ec) {
        watch_for_hangup(true);
        co_await stream_events(*subscription, guest_filter, snapshot, chunked);
        beast::flat_buffer ignored;  // the client sends nothing more that is answered
        co_await stop_watching(ignored);
        if (hung_up_)
            log::debug("API client hung up on its event stream");
    }
    event_wake_ = nullptr;
    subscription->close();
    env_.metrics.event_stream_closed();
}

asio::awaitable<bool> api_session::write_events(const std::string& batch, bool last, bool chunked) {
    if (env_.context.stopping)
        stream_.expires_after(stop_write_timeout);
    else
        stream_.expires_after(env_.write_timeout);
    boost::system::error_code ec;
    if (!chunked) {
        if (!batch.empty())
            std::tie(ec, std::ignore) =
                co_await asio::async_write(stream_, asio::buffer(batch), use_tuple);
        co_return !ec;
    }
    if (!batch.empty()) {
        const auto chunk = http::make_chunk(asio::buffer(batch));
        std::tie(ec, std::ignore) = co_await asio::async_write(stream_, chunk, use_tuple);
    }
    if (!ec && last) {
        const auto end = http::make_chunk_last();
        std::tie(ec, std::ignore) = co_await asio::async_write(stream_, end, use_tuple);
    }
    co_return !ec;
}

asio::awaitable<void> api_session::stream_events(event_subscription& subscription,
                                                 const std::string& guest_filter,
                                                 std::string& pending, bool chunked) {
    std::string batch = std::move(pending);
    while (!env_.context.stopping && !hung_up_) {
        while (batch.size() < batch_limit) {
            auto line = subscription.next();
            if (!line)
                break;
            batch += **line;
        }
        if (subscription.overflowed()) {
            // Whatever was still queued is gone; say so and end the stream.
            batch +=
                *env_.bus.snapshot_line(guest_filter, "overflow",
                                        {{"reason", "subscriber fell behind: more than " +
                                                        std::to_string(env_.event_queue_capacity) +
                                                        " events queued; reconnect to resume"}});
            co_await write_events(batch, true, chunked);
            co_return;
        }
        if (batch.empty()) {
            auto* wake = event_wake_;
            wake->expires_at(asio::steady_timer::time_point::max());
            co_await wake->async_wait(use_tuple);
            continue;
        }
        if (!co_await write_events(batch, false, chunked))
            co_return;
        batch.clear();
    }
    if (hung_up_)
        co_return;
    const std::string nothing;
    co_await write_events(nothing, true, chunked);
}

}  // namespace stereos::daemon

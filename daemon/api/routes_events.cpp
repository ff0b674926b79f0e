// GET /v1/events (accepted here, streamed by the session: event_stream.cpp) and the long-poll
// GET /v1/guests/{name}/wait.
#include "daemon/api/routes_internal.hpp"

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>

#include <boost/asio/cancellation_state.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>

#include <stereos/util/completion_tokens.hpp>
#include "config/config.hpp"

namespace stereos::daemon::api {

namespace asio = boost::asio;
namespace http = boost::beast::http;
namespace json = boost::json;

using namespace std::chrono_literals;
using transport::use_tuple;

namespace {

// ---- wait -----------------------------------------------------------------------------------

// "That state or a better one": booting < ready < healthy along the way up. Degraded is not
// ready (an agent is failing); it and the other states only satisfy themselves.
bool state_satisfies(guest_state current, guest_state wanted) {
    auto rank = [](guest_state s) {
        switch (s) {
            case guest_state::booting:
                return 1;
            case guest_state::ready:
                return 2;
            case guest_state::healthy:
                return 3;
            default:
                return 0;
        }
    };
    if (current == wanted)
        return true;
    return rank(wanted) > 0 && rank(current) >= rank(wanted);
}

asio::awaitable<http_response> wait_for_state(api_context& context,
                                              const std::shared_ptr<managed_guest>& guest,
                                              const parsed_target& target, unsigned version) {
    auto state_it = target.query.find("state");
    if (state_it == target.query.end())
        co_return error_response(400, "bad_request", "missing query parameter \"state\"", version);
    std::optional<guest_state> wanted;
    std::string names;
    for (auto s : all_guest_states) {
        if (to_string(s) == state_it->second)
            wanted = s;
        names += (names.empty() ? "" : ", ") + std::string(to_string(s));
    }
    if (!wanted) {
        co_return error_response(400, "bad_request",
                                 "query parameter \"state\" must be one of: " + names, version);
    }
    std::chrono::milliseconds timeout = 30s;
    if (auto t = target.query.find("timeout"); t != target.query.end()) {
        auto parsed = config::parse_duration(t->second);
        if (!parsed) {
            co_return error_response(400, "bad_request",
                                     "query parameter \"timeout\": " + parsed.error().message,
                                     version);
        }
        if (*parsed > max_wait_timeout) {
            co_return error_response(400, "bad_request",
                                     "query parameter \"timeout\" must be at most 1h", version);
        }
        timeout = *parsed;
    }

    // Woken by every event of this guest, and once a second to notice a removal or a stop.
    asio::steady_timer wake(co_await asio::this_coro::executor);
    auto subscription = context.bus.subscribe(guest->name(), 64);
    subscription->set_notify([&wake] { wake.cancel(); });
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    http_response response;
    while (true) {
        if (context.registry.find(guest->name()) != guest) {
            response = error_response(404, "guest_not_found",
                                      "guest \"" + guest->name() + "\" was removed", version);
            break;
        }
        if (state_satisfies(guest->machine().state(), *wanted)) {
            response = ok(guest->status(), version);
            break;
        }
        if (context.stopping) {
            response = error_response(503, "server_busy", "the daemon is stopping", version);
            break;
        }
        const auto now = std::chrono::steady_clock::now();
        if (now >= deadline) {
            response = error_response(408, "wait_timeout",
                                      guest->name() + " is " +
                                          std::string(to_string(guest->machine().state())) +
                                          ", not " + std::string(to_string(*wanted)) +
                                          " (or better) after " + config::format_duration(timeout),
                                      version);
            break;
        }
        while (subscription->next()) {
        }
        if (subscription->overflowed()) {
            subscription->close();
            subscription = context.bus.subscribe(guest->name(), 64);
            subscription->set_notify([&wake] { wake.cancel(); });
        }
        wake.expires_at(std::min(deadline, now + std::chrono::seconds(1)));
        co_await wake.async_wait(use_tuple);
        const asio::cancellation_state state = co_await asio::this_coro::cancellation_state;
        if (state.cancelled() != asio::cancellation_type::none) {
            // The client hung up; this answer is never sent.
            response = error_response(408, "wait_timeout", "the client stopped waiting", version);
            break;
        }
    }
    subscription->close();
    co_return response;
}

}  // namespace

asio::awaitable<api_outcome> handle_events(route_call& call) {
    std::string filter;
    const auto& query = call.match.target.query;
    if (auto g = query.find("guest"); g != query.end()) {
        auto found = find_guest(call.context, g->second, call.version);
        if (found.error)
            co_return std::move(*found.error);
        filter = g->second;
    }
    co_return event_stream_request{std::move(filter)};
}

asio::awaitable<api_outcome> handle_guest_wait(route_call& call) {
    auto found = guest_of(call);
    if (found.error)
        co_return std::move(*found.error);
    co_return co_await wait_for_state(call.context, found.guest, call.match.target, call.version);
}

}  // namespace stereos::daemon::api

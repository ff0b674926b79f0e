// The local API's route table and matcher: one parsed HTTP request in, one response out, with
// no socket, so tests and the fuzz target can drive them directly. The handlers are by resource
// in routes_*.cpp (routes_internal.hpp), the shared responses in responses.hpp. The event
// stream needs the socket: run_route() only recognises and checks it, and api_session serves it.
// Single-threaded, on the daemon's executor.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>

#include <boost/asio/awaitable.hpp>
#include <boost/beast/http/verb.hpp>

#include "daemon/api/metrics.hpp"
#include "daemon/api/request.hpp"
#include "daemon/api/responses.hpp"
#include "daemon/event_bus.hpp"
#include "daemon/guest/guest_registry.hpp"

namespace stereos::daemon::api {

// Long-polls (`wait`) are bounded so an abandoned one cannot hold a connection for long.
inline constexpr std::chrono::seconds max_wait_timeout{3600};

// What SO_PEERCRED says about a connected peer.
struct peer_credentials {
    pid_t pid = 0;
    uid_t uid = 0;
    gid_t gid = 0;
};

// What the peer may do, decided once per connection from SO_PEERCRED (see api_server.hpp).
struct peer_access {
    peer_access() = default;
    peer_access(bool read, bool write, bool reference_host = false,
                std::optional<peer_credentials> credentials = std::nullopt)
        : may_read(read), may_write(write), may_reference_host(reference_host), peer(credentials) {}

    bool may_read = false;   // GET routes
    bool may_write = false;  // POST, PUT, DELETE routes
    // Root or the daemon's own user: may name host files and credentials for the daemon to
    // read and send. Anyone else may only send values.
    bool may_reference_host = false;
    // Who the peer is, for the audit trail; empty when SO_PEERCRED failed.
    std::optional<peer_credentials> peer{};
    // The peer's user name, looked up once per connection, off the daemon's thread and cached
    // (a user database lookup may be slow; user_lookup_cache.hpp); empty if it does not resolve.
    std::string peer_user{};
};

// What the handlers act on. Owned by api_server; the references outlive it.
struct api_context {
    guest_registry& registry;
    event_bus& bus;
    api_metrics& metrics;
    // Set when the daemon stops: long-polls end (503) instead of holding the stop up.
    bool stopping = false;
};

// GET /v1/events, accepted: the server streams from here on. Empty filter: every guest.
struct event_stream_request {
    std::string guest_filter;
};

using api_outcome = std::variant<http_response, event_stream_request>;

// An error a route may answer with: the status and the error body's code.
struct route_error {
    unsigned status;
    std::string_view code;
};

// Every matched route may be refused: the peer lacks the right (SO_PEERCRED).
inline constexpr route_error refusal{403, "forbidden"};

struct route_call;
using route_handler = boost::asio::awaitable<api_outcome> (*)(route_call&);

// One request a route forwards to its guest, between the route's prepare and answer.
struct guest_request {
    guest_request(std::shared_ptr<managed_guest> to, protocol::host_message sent);
    guest_request(guest_request&& other) noexcept;
    guest_request& operator=(guest_request&&) = delete;
    // Ends an API mount's mark, and wipes the message's secrets.
    ~guest_request();

    std::shared_ptr<managed_guest> guest;
    protocol::host_message message;
    boost::beast::http::status success = boost::beast::http::status::ok;
    std::string added_public_key;  // ssh-keys: recorded in the ledger once acked
    std::chrono::steady_clock::time_point started;
    bool marks_mount = false;  // begin_api_mount() was called for the message
};
using prepared_request = std::variant<guest_request, http_response>;

// A route that forwards a request to its guest: `prepare` checks the call and builds the
// request (or answers at once); the caller awaits the guest's async_request, in its own
// coroutine; `answer` makes the response from the reply or the link's error.
struct guest_forward {
    prepared_request (*prepare)(route_call&) = nullptr;
    http_response (*answer)(route_call&, guest_request&, boost::system::error_code,
                            const protocol::guest_message&) = nullptr;
};

// One row of the route table: {verb, pattern, handler}, the status of a success and the errors
// the handler may answer with (besides `refusal`). A response outside these is flagged: logged
// at error and counted in /metrics as stereos_api_undeclared_responses_total.
struct route {
    boost::beast::http::verb verb;
    std::string_view pattern;  // "{name}" matches one segment: the guest's name
    route_handler handler;
    unsigned success;
    std::span<const route_error> errors;
    // The audit trail records its requests (audit.hpp): every route that may change something.
    // Reads and pings, which only ask, are not.
    bool audited = false;
    // The handler waits on a guest or a state: a client that hangs up meanwhile cancels it.
    bool cancelled_by_hangup = false;
    // Set for a request forwarded to the guest (`handler` is then handle_forwarded).
    guest_forward forward{};

    bool declares(unsigned status, std::string_view code) const noexcept;
};

// The table, in matching order.
std::span<const route> routes() noexcept;

// A request matched to its route, with what the handler reads.
struct route_match {
    const route* chosen = nullptr;
    parsed_target target;
    std::string name;  // the {name} segment, if the pattern has one
};

// Finds the route for a request, or the response for one that has none (400 for a malformed
// target, 404 not_found, 405 method_not_allowed).
std::variant<route_match, http_response> match_route(const http_request& request);

// What a handler reads: the request, its route's match and who asked.
struct route_call {
    const http_request& request;
    const route_match& match;
    const peer_access& access;
    api_context& context;
    unsigned version;
};

// The 403 answer if the peer may not use the route.
std::optional<http_response> refusal_for(const route& entry, const peer_access& access,
                                         unsigned version);

// A response its route does not declare: a handler and the table (and daemon/openapi.json)
// disagree. Logged and counted; the client gets the response all the same.
void flag_if_undeclared(const route& entry, const http_response& response, api_context& context);

// Checks the peer's right and runs the matched route's handler. A response the route does not
// declare is flagged (see `route`). The session does the same itself, to spare this coroutine.
boost::asio::awaitable<api_outcome> run_route(const http_request& request, route_match& match,
                                              const peer_access& access, api_context& context);

}  // namespace stereos::daemon::api

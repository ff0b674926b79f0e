// What the route handlers share, private to daemon/api: the call a handler gets, the guest
// lookup, and the handlers by resource (routes_*.cpp), which routes.cpp puts in its table.
// Single-threaded, on the daemon's executor.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include <boost/asio/awaitable.hpp>

#include "daemon/api/responses.hpp"
#include "daemon/api/routes.hpp"
#include "daemon/guest/managed_guest.hpp"
#include "daemon/guest/provisioning.hpp"

namespace stereos::daemon::api {

// A guest by name, or the response for a name that is invalid or unknown.
struct guest_lookup {
    std::shared_ptr<managed_guest> guest;
    std::optional<http_response> error;
};
guest_lookup find_guest(api_context& context, const std::string& name, unsigned version);
// The guest a per-guest route names; the error response instead if it has none.
guest_lookup guest_of(route_call& call);

// Host files and credentials only on the word of root or the daemon's user.
provision_caller caller_of(const peer_access& access);

using handler_result = boost::asio::awaitable<api_outcome>;

// routes_daemon.cpp: GET /v1/ping, GET /metrics.
handler_result handle_ping(route_call& call);
handler_result handle_metrics(route_call& call);

// routes_guests.cpp: the guests themselves.
handler_result handle_list_guests(route_call& call);
handler_result handle_add_guest(route_call& call);
handler_result handle_show_guest(route_call& call);
handler_result handle_remove_guest(route_call& call);
handler_result handle_guest_reconnect(route_call& call);

// routes_guest_requests.cpp: requests forwarded to a guest (route::forward), and the handler
// that runs them for run_route().
handler_result handle_forwarded(route_call& call);
prepared_request prepare_guest_ping(route_call& call);
prepared_request prepare_guest_health(route_call& call);
prepared_request prepare_guest_config(route_call& call);
prepared_request prepare_guest_secret(route_call& call);
prepared_request prepare_guest_ssh_key(route_call& call);
prepared_request prepare_guest_mount(route_call& call);
prepared_request prepare_guest_shutdown(route_call& call);
using guest_answer = http_response (*)(route_call&, guest_request&, boost::system::error_code,
                                       const protocol::guest_message&);
http_response answer_guest_ping(route_call& call, guest_request& sent,
                                boost::system::error_code error,
                                const protocol::guest_message& reply);
http_response answer_guest_health(route_call& call, guest_request& sent,
                                  boost::system::error_code error,
                                  const protocol::guest_message& reply);
// {"ok":true} once acked (config, secrets, ssh-keys, mounts, shutdown).
http_response answer_acked(route_call& call, guest_request& sent, boost::system::error_code error,
                           const protocol::guest_message& reply);

// routes_provisioning.cpp: a guest's provisioning.
handler_result handle_guest_provision(route_call& call);
handler_result handle_guest_set_provision(route_call& call);
handler_result handle_guest_show_provision(route_call& call);
handler_result handle_guest_supply_values(route_call& call);

// routes_events.cpp: the event stream and the long-poll on a guest's state.
handler_result handle_events(route_call& call);
handler_result handle_guest_wait(route_call& call);

}  // namespace stereos::daemon::api

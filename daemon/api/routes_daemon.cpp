// The daemon's own routes: GET /v1/ping (the daemon's status) and GET /metrics.
#include "daemon/api/routes_internal.hpp"

#include <boost/json/object.hpp>

namespace stereos::daemon::api {

namespace asio = boost::asio;
namespace http = boost::beast::http;
namespace json = boost::json;

asio::awaitable<api_outcome> handle_ping(route_call& call) {
    co_return ok(json::object{{"status", "ok"},
                              {"version", STEREOS_VERSION},
                              {"values_at_rest", call.context.registry.values_at_rest_status()}},
                 call.version);
}

asio::awaitable<api_outcome> handle_metrics(route_call& call) {
    http_response response{http::status::ok, call.version};
    response.set(http::field::server, server_name);
    response.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
    response.body() = call.context.metrics.render(call.context.registry, call.context.bus);
    response.prepare_payload();
    co_return response;
}

}  // namespace stereos::daemon::api

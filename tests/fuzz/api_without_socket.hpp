// The local API driven without a socket, for the fuzz target and the in-process tests: raw
// bytes parsed as one request with the server's limits, routed (match_route, then run_route),
// and a response as bytes on the wire. The server itself parses incrementally from its socket.
#pragma once

#include <string>
#include <string_view>

#include <boost/asio/awaitable.hpp>
#include <boost/system/result.hpp>

#include "daemon/api/routes.hpp"

namespace stereos::daemon::api {

// Parses one complete request from raw bytes with the server's limits (headers 16 KiB, body
// 1 MiB).
boost::system::result<http_request> parse_request(std::string_view bytes);

// Routes one request: match_route, then run_route. Never throws for anything a client sends:
// every problem becomes an error response. `request.body()` may hold a secret: handlers never
// log or echo it.
boost::asio::awaitable<api_outcome> dispatch(const http_request& request, peer_access access,
                                             api_context& context);

// The response as bytes on the wire (Content-Length set).
std::string serialize(http_response response);

}  // namespace stereos::daemon::api

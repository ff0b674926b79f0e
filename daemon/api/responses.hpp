// The local API's HTTP types and the responses every route shares: JSON bodies, the error
// shape and its codes, and how link and registry failures look to a client. No I/O.
// Single-threaded, on the daemon's executor.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/json/value.hpp>
#include <boost/system/error_code.hpp>

#include "daemon/guest/guest_registry.hpp"

namespace stereos::daemon::api {

using http_request = boost::beast::http::request<boost::beast::http::string_body>;
using http_response = boost::beast::http::response<boost::beast::http::string_body>;

inline constexpr std::size_t max_header_bytes = 16 * 1024;
inline constexpr std::size_t max_body_bytes = 1024 * 1024;
// "stereos-hostd/VERSION": every response's Server header.
extern const std::string_view server_name;

// `body` serialized, with a trailing newline.
http_response json_response(boost::beast::http::status status, const boost::json::value& body,
                            unsigned version);
http_response ok(const boost::json::value& body, unsigned version);

// {"error":{"code":...,"message":...}} with that status. The codes and their statuses:
// bad_request 400, forbidden 403, guest_not_found 404, not_found 404, method_not_allowed 405,
// wait_timeout 408, guest_exists 409, guest_in_config 409, payload_too_large 413,
// internal_error 500, guest_error 502, connection_lost 502, guest_unavailable 503,
// server_busy 503, guest_timeout 504.
http_response error_response(unsigned status, std::string_view code, std::string_view message,
                             unsigned version = 11);

// The response a request that could not be parsed gets: 413 for an over-long body, else 400.
http_response parse_error_response(boost::system::error_code error);

// A guest link's failure as the API reports it: its status and error code.
struct link_error_mapping {
    unsigned status;
    std::string_view code;
};
link_error_mapping map_link_error(boost::system::error_code error);

// A registry refusal as the client sees it.
http_response registry_error_response(const registry_error& e, unsigned version);

// "GET /v1/guests/vm1" (no query string: it is never needed to tell requests apart).
std::string describe(const http_request& request);

}  // namespace stereos::daemon::api

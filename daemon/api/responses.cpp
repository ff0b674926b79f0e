#include "daemon/api/responses.hpp"

#include <algorithm>

#include <boost/beast/http/error.hpp>
#include <boost/json/serialize.hpp>

#include <stereos/link/link_error.hpp>
#include <stereos/protocol/redact.hpp>

namespace stereos::daemon::api {

namespace http = boost::beast::http;
namespace json = boost::json;

const std::string_view server_name = "stereos-hostd/" STEREOS_VERSION;

http_response json_response(http::status status, const json::value& body, unsigned version) {
    http_response response{status, version};
    response.set(http::field::server, server_name);
    response.set(http::field::content_type, "application/json");
    response.body() = json::serialize(body);
    response.body() += '\n';
    response.prepare_payload();
    return response;
}

http_response ok(const json::value& body, unsigned version) {
    return json_response(http::status::ok, body, version);
}

http_response error_response(unsigned status, std::string_view code, std::string_view message,
                             unsigned version) {
    // Messages quote what the client (or guest) sent, which may not be UTF-8: Boost.JSON would
    // copy such bytes into the body unchecked, and clients could not parse it.
    return json_response(
        static_cast<http::status>(status),
        json::object{{"error", json::object{{"code", code},
                                            {"message", protocol::printable_excerpt(
                                                            message, max_header_bytes)}}}},
        version);
}

http_response parse_error_response(boost::system::error_code error) {
    http_response response;
    if (error == http::error::body_limit) {
        response = error_response(413, "payload_too_large", "request body over 1 MiB");
    } else if (error == http::error::header_limit) {
        response = error_response(400, "bad_request", "request headers over 16 KiB");
    } else {
        response = error_response(400, "bad_request", "malformed HTTP request: " + error.message());
    }
    response.keep_alive(false);
    return response;
}

link_error_mapping map_link_error(boost::system::error_code error) {
    if (error == link::link_error::guest_unavailable || error == link::link_error::queue_full)
        return {503, "guest_unavailable"};
    if (error == link::link_error::request_timeout ||
        error == link::link_error::keepalive_timeout ||
        error == link::link_error::guest_unresponsive)
        return {504, "guest_timeout"};
    if (error == link::link_error::request_too_large)
        return {413, "payload_too_large"};
    // connection_lost, protocol_error, link_stopped, connection_closed, anything else.
    return {502, "connection_lost"};
}

// A registry refusal as the client sees it.
http_response registry_error_response(const registry_error& e, unsigned version) {
    switch (e.code) {
        case registry_error::kind::bad_request:
            return error_response(400, "bad_request", e.message, version);
        case registry_error::kind::forbidden:
            return error_response(403, "forbidden", e.message, version);
        case registry_error::kind::exists:
            return error_response(409, "guest_exists", e.message, version);
        case registry_error::kind::not_found:
            return error_response(404, "guest_not_found", e.message, version);
        case registry_error::kind::config_guest:
            return error_response(409, "guest_in_config", e.message, version);
        case registry_error::kind::persist_failed:
            break;
    }
    return error_response(500, "internal_error", e.message, version);
}

std::string describe(const http_request& request) {
    auto target = request.target();
    target = target.substr(0, std::min(target.find('?'), target.size()));
    target = target.substr(0, std::min<std::size_t>(target.size(), 200));
    return std::string(request.method_string()) + " " + std::string(target);
}

}  // namespace stereos::daemon::api

#include "tests/fuzz/api_without_socket.hpp"

#include <sstream>
#include <variant>

#include <boost/asio/buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/write.hpp>

namespace stereos::daemon::api {

namespace asio = boost::asio;
namespace http = boost::beast::http;

asio::awaitable<api_outcome> dispatch(const http_request& request, peer_access access,
                                      api_context& context) {
    auto matched = match_route(request);
    if (auto* refusal = std::get_if<http_response>(&matched))
        co_return std::move(*refusal);
    co_return co_await run_route(request, std::get<route_match>(matched), access, context);
}

boost::system::result<http_request> parse_request(std::string_view bytes) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(max_header_bytes);
    parser.body_limit(max_body_bytes);
    parser.eager(true);
    boost::system::error_code ec;
    while (!parser.is_done() && !bytes.empty()) {
        const auto used = parser.put(asio::buffer(bytes.data(), bytes.size()), ec);
        if (ec == http::error::need_more) {
            ec = {};
            break;
        }
        if (ec)
            return ec;
        if (used == 0)
            break;
        bytes.remove_prefix(used);
    }
    if (!parser.is_done()) {
        parser.put_eof(ec);
        if (ec)
            return ec;
        if (!parser.is_done())
            return make_error_code(http::error::partial_message);
    }
    return parser.release();
}

std::string serialize(http_response response) {
    response.prepare_payload();
    std::ostringstream out;
    out << response;
    return out.str();
}

}  // namespace stereos::daemon::api

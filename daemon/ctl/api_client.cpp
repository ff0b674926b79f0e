#include "daemon/ctl/api_client.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

namespace stereos::ctl {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using socket_type = asio::local::stream_protocol::socket;

namespace {

void connect(socket_type& socket, const std::string& path) {
    boost::system::error_code ec;
    socket.connect(asio::local::stream_protocol::endpoint(path), ec);
    if (ec) {
        throw unreachable_error("cannot reach stereos-hostd at " + path + ": " + ec.message() +
                                " (is the daemon running? choose the socket with --socket or "
                                "$STEREOS_HOSTD_SOCKET)");
    }
}

http::request<http::string_body> make_request(http::verb method, const std::string& target,
                                              const std::string& body,
                                              std::string_view content_type) {
    http::request<http::string_body> request{method, target, 11};
    request.set(http::field::host, "localhost");
    request.set(http::field::user_agent, "stereosctl/" STEREOS_VERSION);
    request.keep_alive(false);
    if (!body.empty() || method == http::verb::post || method == http::verb::put) {
        request.set(http::field::content_type, content_type);
        request.body() = body;
    }
    request.prepare_payload();
    return request;
}

[[noreturn]] void broken(const std::string& path, const boost::system::error_code& ec) {
    throw std::runtime_error("connection to stereos-hostd at " + path + " broke: " + ec.message());
}

}  // namespace

api_response api_client::request(http::verb method, const std::string& target,
                                 const std::string& body, std::string_view content_type) {
    asio::io_context io;
    socket_type socket(io);
    connect(socket, socket_path_);
    auto request = make_request(method, target, body, content_type);
    boost::system::error_code ec;
    http::write(socket, request, ec);
    std::fill(request.body().begin(), request.body().end(), '\0');
    if (ec)
        broken(socket_path_, ec);
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 * 1024 * 1024);
    http::read(socket, buffer, parser, ec);
    if (ec)
        broken(socket_path_, ec);
    return {parser.get().result_int(), std::move(parser.get().body())};
}

api_response api_client::stream_lines(const std::string& target,
                                      const std::function<void(std::string_view)>& on_line) {
    asio::io_context io;
    socket_type socket(io);
    connect(socket, socket_path_);
    auto request = make_request(http::verb::get, target, {}, {});
    boost::system::error_code ec;
    http::write(socket, request, ec);
    if (ec)
        broken(socket_path_, ec);
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(boost::none);
    http::read_header(socket, buffer, parser, ec);
    if (ec)
        broken(socket_path_, ec);
    if (parser.get().result_int() != 200) {
        http::read(socket, buffer, parser, ec);
        if (ec)
            broken(socket_path_, ec);
        return {parser.get().result_int(), std::move(parser.get().body())};
    }
    std::string pending;
    while (!parser.is_done()) {
        http::read_some(socket, buffer, parser, ec);
        auto& body = parser.get().body();
        pending += body;
        body.clear();
        std::size_t start = 0;
        for (auto nl = pending.find('\n'); nl != std::string::npos;
             nl = pending.find('\n', start)) {
            on_line(std::string_view(pending).substr(start, nl - start));
            start = nl + 1;
        }
        pending.erase(0, start);
        if (ec == http::error::end_of_stream || ec == asio::error::eof)
            break;
        if (ec)
            broken(socket_path_, ec);
    }
    if (!pending.empty())
        on_line(pending);
    return {200, {}};
}

}  // namespace stereos::ctl

// stereosctl's client for the daemon's API socket: synchronous HTTP/1.1 with Boost.Beast, one
// connection per call (a short-lived CLI has no use for anything more).
#pragma once

#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>

#include <boost/beast/http/verb.hpp>

namespace stereos::ctl {

inline constexpr std::string_view default_socket_path = "/run/stereos-hostd/api.sock";

// The daemon could not be reached; the message names the socket tried.
class unreachable_error : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

struct api_response {
    unsigned status = 0;
    std::string body;
};

class api_client {
  public:
    explicit api_client(std::string socket_path) : socket_path_(std::move(socket_path)) {}

    // Throws unreachable_error when it cannot connect, std::runtime_error when the connection
    // breaks before the whole response arrived.
    api_response request(boost::beast::http::verb method, const std::string& target,
                         const std::string& body = {},
                         std::string_view content_type = "application/json");

    // GET `target` and hand each line of the body to `on_line` as it arrives, until the server
    // ends the stream. A non-200 answer is returned whole instead (status and body).
    api_response stream_lines(const std::string& target,
                              const std::function<void(std::string_view)>& on_line);

    const std::string& socket_path() const noexcept { return socket_path_; }

  private:
    std::string socket_path_;
};

}  // namespace stereos::ctl

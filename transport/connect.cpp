#include <stereos/transport/connect.hpp>

#include <linux/vm_sockets.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstddef>
#include <cstring>
#include <memory>
#include <optional>
#include <string_view>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/write.hpp>
#include <boost/system/system_error.hpp>
#include <boost/throw_exception.hpp>

#include <stereos/protocol/redact.hpp>
#include <stereos/util/completion_tokens.hpp>

namespace stereos::transport {

namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;
using generic_endpoint = asio::generic::stream_protocol::endpoint;
using connect_result = boost::system::result<stream_socket, connect_error>;

namespace {

class category final : public boost::system::error_category {
  public:
    const char* name() const noexcept override { return "stereos.transport"; }
    std::string message(int value) const override {
        switch (static_cast<error>(value)) {
            case error::connect_timeout:
                return "connect attempt timed out";
            case error::hybrid_handshake_failed:
                return "hybrid vsock handshake failed";
            case error::resolve_failed:
                return "host name did not resolve";
        }
        return "unknown transport error";
    }
};

// Firecracker answers "OK <host port>\n"; a longer line is not that answer.
constexpr std::size_t max_handshake_reply_bytes = 64;

// What one attempt produced. Default-constructible, as co_spawn's result type must be.
struct attempt_outcome {
    std::optional<stream_socket> socket;
    connect_error failure;
};

attempt_outcome failed(error_code code, std::string detail = {}) {
    return {std::nullopt, connect_error{code, std::move(detail)}};
}

bool was_cancelled(const error_code& ec) {
    return ec == asio::error::operation_aborted;
}

// Opens a fresh socket for `address` and connects it.
asio::awaitable<std::pair<error_code, std::optional<stream_socket>>> connect_socket(
    const generic_endpoint& address) {
    stream_socket socket(co_await asio::this_coro::executor);
    error_code ec;
    socket.open(address.protocol(), ec);
    if (ec) {
        co_return std::pair{ec, std::nullopt};
    }
    std::tie(ec) = co_await socket.async_connect(address, use_tuple);
    if (ec) {
        co_return std::pair{ec, std::nullopt};
    }
    co_return std::pair{error_code{}, std::optional<stream_socket>(std::move(socket))};
}

// getaddrinfo cannot be interrupted: Asio runs it on a helper thread and offers no
// per-operation cancellation. So the lookup runs on its own and we wait on a timer that its
// handler wakes; a timeout or cancellation abandons the lookup instead of waiting for it.
struct pending_lookup {
    explicit pending_lookup(const asio::any_io_executor& executor)
        : resolver(executor), wake(executor, asio::steady_timer::time_point::max()) {}
    tcp::resolver resolver;
    asio::steady_timer wake;
    bool done = false;
    error_code ec;
    tcp::resolver::results_type results;
};

asio::awaitable<std::pair<error_code, tcp::resolver::results_type>> resolve_abandonably(
    std::string host, std::uint16_t port) {
    auto lookup = std::make_shared<pending_lookup>(co_await asio::this_coro::executor);
    lookup->resolver.async_resolve(host, std::to_string(port), tcp::resolver::numeric_service,
                                   [lookup](error_code ec, tcp::resolver::results_type results) {
                                       lookup->done = true;
                                       lookup->ec = ec;
                                       lookup->results = std::move(results);
                                       lookup->wake.cancel();
                                   });
    if (!lookup->done) {
        co_await lookup->wake.async_wait(use_tuple);
    }
    if (!lookup->done) {
        lookup->resolver.cancel();  // the result, when it comes, is of no use
        co_return std::pair{error_code(asio::error::operation_aborted),
                            tcp::resolver::results_type{}};
    }
    co_return std::pair{lookup->ec, std::move(lookup->results)};
}

asio::awaitable<attempt_outcome> connect_tcp(const tcp_endpoint& target, std::string_view& stage) {
    // The string form keeps an IPv6 address in brackets; the resolver wants it bare.
    std::string host = target.host;
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
    }
    stage = "resolving";
    auto [resolve_ec, results] = co_await resolve_abandonably(host, target.port);
    if (was_cancelled(resolve_ec)) {
        co_return failed(resolve_ec);
    }
    if (resolve_ec || results.empty()) {
        co_return failed(error::resolve_failed,
                         "\"" + host + "\": " +
                             (resolve_ec ? resolve_ec.message() : std::string("no addresses")));
    }
    stage = "connecting";
    error_code last_ec;
    std::string tried;  // each address and why it failed, for the operator
    for (const auto& entry : results) {
        const generic_endpoint address(entry.endpoint());
        auto [ec, socket] = co_await connect_socket(address);
        if (!ec) {
            socket->set_option(tcp::no_delay(true), ec);
            if (!ec) {
                co_return attempt_outcome{std::move(socket), {}};
            }
        }
        if (was_cancelled(ec)) {
            co_return failed(ec);
        }
        last_ec = ec;
        if (!tried.empty()) {
            tried += "; ";
        }
        const auto ip = entry.endpoint().address();
        tried += (ip.is_v6() ? "[" + ip.to_string() + "]" : ip.to_string()) + ":" +
                 std::to_string(entry.endpoint().port()) + ": " + ec.message();
    }
    co_return failed(last_ec, results.size() > 1 ? tried : std::string{});
}

asio::awaitable<attempt_outcome> connect_vsock(const vsock_endpoint& target,
                                               std::string_view& stage) {
    sockaddr_vm address{};
    address.svm_family = AF_VSOCK;
    address.svm_cid = target.cid;
    address.svm_port = target.port;
    stage = "connecting";
    auto [ec, socket] = co_await connect_socket(generic_endpoint(&address, sizeof address));
    if (ec) {
        co_return failed(ec);
    }
    co_return attempt_outcome{std::move(socket), {}};
}

// Builds the address by hand: asio's local endpoint throws on an over-long path, and an
// endpoint built in code (not parsed) may have one.
std::optional<generic_endpoint> unix_address(const std::string& path) {
    sockaddr_un address{};
    if (path.empty() || path.size() >= sizeof address.sun_path) {
        return std::nullopt;
    }
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path, path.data(), path.size());
    return generic_endpoint(&address, offsetof(sockaddr_un, sun_path) + path.size() + 1);
}

asio::awaitable<attempt_outcome> connect_unix(const std::string& path, std::string_view& stage) {
    const auto address = unix_address(path);
    if (!address) {
        co_return failed(make_error_code(boost::system::errc::filename_too_long),
                         "a unix socket path must be 1-107 bytes");
    }
    stage = "connecting";
    auto [ec, socket] = co_await connect_socket(*address);
    if (ec) {
        co_return failed(ec);
    }
    co_return attempt_outcome{std::move(socket), {}};
}

// "OK " followed by a port number.
bool is_ok_reply(std::string_view line) {
    if (!line.starts_with("OK ") || line.size() == 3) {
        return false;
    }
    for (const char c : line.substr(3)) {
        if (c < '0' || c > '9') {
            return false;
        }
    }
    return true;
}

asio::awaitable<attempt_outcome> connect_hybrid(const hybrid_vsock_endpoint& target,
                                                std::string_view& stage) {
    auto connected = co_await connect_unix(target.path, stage);
    if (!connected.socket) {
        co_return std::move(connected);
    }
    auto& socket = *connected.socket;
    stage = "sending CONNECT to the hybrid vsock proxy";
    const auto request = "CONNECT " + std::to_string(target.port) + "\n";
    auto [write_ec, written] = co_await asio::async_write(socket, asio::buffer(request), use_tuple);
    if (write_ec) {
        co_return failed(write_ec, was_cancelled(write_ec) ? "" : "while sending CONNECT");
    }
    // One byte at a time: whatever follows the '\n' is the guest's stream and must stay in the
    // socket for the caller. The reply is a few bytes, once per connection.
    stage = "waiting for the hybrid vsock proxy's reply";
    std::string reply;
    while (reply.size() < max_handshake_reply_bytes) {
        char byte = 0;
        auto [ec, n] = co_await asio::async_read(socket, asio::buffer(&byte, 1), use_tuple);
        if (was_cancelled(ec)) {
            co_return failed(ec);
        }
        if (ec == asio::error::eof) {
            co_return failed(error::hybrid_handshake_failed,
                             reply.empty() ? "the proxy closed the connection without answering "
                                             "(is the guest listening on port " +
                                                 std::to_string(target.port) + "?)"
                                           : "the proxy closed the connection after \"" +
                                                 protocol::printable_excerpt(reply) + "\"");
        }
        if (ec) {
            co_return failed(ec, "while reading the proxy's reply");
        }
        if (byte == '\n') {
            if (!is_ok_reply(reply)) {
                co_return failed(error::hybrid_handshake_failed,
                                 R"(expected "OK <port>", the proxy answered ")" +
                                     protocol::printable_excerpt(reply + '\n') + "\"");
            }
            co_return std::move(connected);
        }
        reply += byte;
    }
    co_return failed(error::hybrid_handshake_failed, "no end of line in the proxy's first " +
                                                         std::to_string(max_handshake_reply_bytes) +
                                                         " bytes: \"" +
                                                         protocol::printable_excerpt(reply) + "\"");
}

// Runs as its own coroutine thread (spawned by operator||), so the setting below is its own.
asio::awaitable<attempt_outcome> attempt(const endpoint& target, std::string_view& stage) {
    // A cancelled attempt must report operation_aborted as a value, never throw at a co_await.
    co_await asio::this_coro::throw_if_cancelled(false);
    struct visitor {
        std::string_view& stage;
        asio::awaitable<attempt_outcome> operator()(const tcp_endpoint& e) const {
            return connect_tcp(e, stage);
        }
        asio::awaitable<attempt_outcome> operator()(const vsock_endpoint& e) const {
            return connect_vsock(e, stage);
        }
        asio::awaitable<attempt_outcome> operator()(const unix_endpoint& e) const {
            return connect_unix(e.path, stage);
        }
        asio::awaitable<attempt_outcome> operator()(const hybrid_vsock_endpoint& e) const {
            return connect_hybrid(e, stage);
        }
    };
    co_return co_await std::visit(visitor{stage}, target);
}

// True when the deadline passed, false when the wait was cancelled.
asio::awaitable<bool> deadline_passes(std::chrono::milliseconds timeout) {
    asio::steady_timer timer(co_await asio::this_coro::executor, timeout);
    auto [ec] = co_await timer.async_wait(use_tuple);
    co_return !ec;
}

bool awaiting_coroutine_cancelled(const asio::cancellation_state& state) {
    return state.cancelled() != asio::cancellation_type::none;
}

}  // namespace

const boost::system::error_category& transport_category() noexcept {
    static const category instance;
    return instance;
}

std::string connect_error::describe(const endpoint& target) const {
    std::string text = to_string(target) + ": " + code.message();
    if (!detail.empty()) {
        text += ": " + detail;
    }
    return text;
}

void throw_exception_from_error(const connect_error& e, const boost::source_location& location) {
    boost::throw_exception(boost::system::system_error(e.code, e.detail), location);
}

asio::awaitable<connect_result> async_connect(const endpoint& target,
                                              std::chrono::milliseconds timeout) {
    using namespace asio::experimental::awaitable_operators;
    const error_code aborted = asio::error::operation_aborted;
    if (awaiting_coroutine_cancelled(co_await asio::this_coro::cancellation_state)) {
        co_return connect_error{aborted, {}};
    }
    // Racing the attempt against the deadline cancels the loser and waits for it, so when we
    // return nothing of the attempt is left running (except an abandoned DNS lookup).
    std::string_view stage = "starting";
    auto outcome = co_await (attempt(target, stage) || deadline_passes(timeout));
    if (awaiting_coroutine_cancelled(co_await asio::this_coro::cancellation_state)) {
        co_return connect_error{aborted, {}};
    }
    if (auto* finished = std::get_if<attempt_outcome>(&outcome)) {
        if (finished->socket) {
            co_return std::move(*finished->socket);
        }
        co_return std::move(finished->failure);
    }
    if (!std::get<bool>(outcome)) {
        co_return connect_error{aborted, {}};
    }
    co_return connect_error{error::connect_timeout, "no connection within " +
                                                        std::to_string(timeout.count()) + " ms (" +
                                                        std::string(stage) + ")"};
}

}  // namespace stereos::transport

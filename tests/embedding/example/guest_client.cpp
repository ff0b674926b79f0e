// guest_client: a tool that embeds the installed client library instead of running the daemon.
// Connects to one guest, sends ping and get_health, prints the replies, then prints lifecycle
// pushes until it has seen PUSHES of them or SECONDS have passed.
//   guest_client ENDPOINT [PUSHES [SECONDS]]      e.g. guest_client tcp:127.0.0.1:1024 2 10
// Exit status: 0 when both replies and PUSHES pushes arrived, 1 otherwise.
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>
#include <variant>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include "protocol/codec.hpp"
#include "protocol/line_framer.hpp"
#include "transport/completion_tokens.hpp"
#include "transport/connect.hpp"
#include "transport/endpoint.hpp"

namespace asio = boost::asio;
namespace protocol = stereos::protocol;
namespace transport = stereos::transport;

namespace {

struct outcome {
    bool pong = false;
    bool health = false;
    unsigned pushes = 0;
};

// Prints one guest line; false on a line that is not a valid guest message.
bool print_message(std::string_view line, outcome& seen) {
    auto decoded = protocol::decode_guest_line(line);
    if (!decoded) {
        std::cerr << "guest_client: bad line: " << decoded.error().detail << "\n";
        return false;
    }
    const auto& message = *decoded;
    if (std::holds_alternative<protocol::pong_reply>(message)) {
        seen.pong = true;
        std::cout << "pong" << std::endl;
    } else if (const auto* health = std::get_if<protocol::health_payload>(&message)) {
        seen.health = true;
        std::cout << "health " << protocol::to_string(health->state)
                  << " agents=" << health->agents.size() << std::endl;
    } else if (const auto* push = std::get_if<protocol::lifecycle_payload>(&message)) {
        ++seen.pushes;
        std::cout << "lifecycle " << protocol::to_string(push->state) << std::endl;
    } else {
        std::cout << "other " << protocol::type_name(message) << std::endl;
    }
    return true;
}

asio::awaitable<void> run(transport::endpoint target, unsigned pushes_wanted,
                          std::chrono::seconds limit, outcome& seen) {
    auto connected = co_await transport::async_connect(target);
    if (!connected) {
        std::cerr << "guest_client: " << connected.error().describe(target) << "\n";
        co_return;
    }
    auto socket = std::move(*connected);
    std::cout << "connected " << transport::to_string(target) << std::endl;

    // The deadline closes the socket, which ends the read below.
    asio::steady_timer deadline(socket.get_executor(), limit);
    deadline.async_wait([&socket](boost::system::error_code ec) {
        if (!ec)
            socket.close();
    });

    // Both requests in one write; the guest answers in order.
    std::string requests;
    const protocol::host_message ping = protocol::ping_request{};
    const protocol::host_message get_health = protocol::get_health_request{};
    if (protocol::encode_into(requests, ping) || protocol::encode_into(requests, get_health))
        throw std::logic_error("encoding a request failed");
    const auto request_bytes = asio::buffer(requests);
    auto [write_error, written] =
        co_await asio::async_write(socket, request_bytes, transport::use_tuple);
    if (write_error) {
        std::cerr << "guest_client: write: " << write_error.message() << "\n";
        co_return;
    }

    protocol::line_framer framer;
    while (!(seen.pong && seen.health && seen.pushes >= pushes_wanted)) {
        const auto space = framer.prepare(4096);
        const auto read_into = asio::buffer(space.data(), space.size());
        auto [read_error, n] = co_await socket.async_read_some(read_into, transport::use_tuple);
        if (read_error) {
            std::cerr << "guest_client: read: " << read_error.message() << "\n";
            break;
        }
        framer.commit(n);
        for (;;) {
            auto line = framer.next_line();
            if (!line) {
                std::cerr << "guest_client: " << line.error().message() << "\n";
                co_return;
            }
            if (!*line)
                break;
            if (!print_message(**line, seen))
                co_return;
        }
    }
    deadline.cancel();
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2 || argc > 4) {
        std::cerr << "usage: guest_client ENDPOINT [PUSHES [SECONDS]]\n";
        return 2;
    }
    auto target = transport::parse_endpoint(argv[1]);
    if (!target) {
        std::cerr << "guest_client: " << target.error().message << "\n";
        return 2;
    }
    const unsigned pushes = argc > 2 ? static_cast<unsigned>(std::atoi(argv[2])) : 0;
    const std::chrono::seconds limit{argc > 3 ? std::atoi(argv[3]) : 10};

    asio::io_context io;
    outcome seen;
    asio::co_spawn(io, run(*target, pushes, limit, seen), transport::rethrow_if_failed);
    io.run();
    return seen.pong && seen.health && seen.pushes >= pushes ? 0 : 1;
}

// guest_client: a tool that embeds the installed client library instead of running the daemon.
// Keeps a guest_link (stereos::link) to one guest, sends ping and get_health once the link is
// up, prints the replies, then prints lifecycle pushes until it has seen PUSHES of them or
// SECONDS have passed.
//   guest_client ENDPOINT [PUSHES [SECONDS]]      e.g. guest_client tcp:127.0.0.1:1024 2 10
// Exit status: 0 when both replies and PUSHES pushes arrived, 1 otherwise.
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <variant>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <stereos/link/guest_link.hpp>
#include <stereos/protocol/codec.hpp>
#include <stereos/transport/endpoint.hpp>
#include <stereos/util/completion_tokens.hpp>

namespace asio = boost::asio;
namespace protocol = stereos::protocol;
namespace transport = stereos::transport;

namespace {

struct outcome {
    bool pong = false;
    bool health = false;
    unsigned pushes = 0;
};

void print_reply(const stereos::link::request_result& reply, outcome& seen) {
    if (!reply) {
        std::cerr << "guest_client: request failed: " << reply.error().message() << "\n";
        return;
    }
    if (std::holds_alternative<protocol::pong_reply>(*reply)) {
        seen.pong = true;
        std::cout << "pong" << std::endl;
    } else if (const auto* health = std::get_if<protocol::health_payload>(&*reply)) {
        seen.health = true;
        std::cout << "health " << protocol::to_string(health->state)
                  << " agents=" << health->agents.size() << std::endl;
    } else {
        std::cout << "other " << protocol::type_name(*reply) << std::endl;
    }
}

// Runs once the link is up: the two requests, then waits for the pushes or the deadline.
asio::awaitable<void> converse(std::shared_ptr<stereos::link::guest_link> guest,
                               unsigned pushes_wanted, asio::steady_timer& deadline,
                               outcome& seen) {
    const protocol::host_message ping = protocol::ping_request{};
    const protocol::host_message get_health = protocol::get_health_request{};
    auto pong = co_await guest->async_request(ping);
    print_reply(pong, seen);
    auto health = co_await guest->async_request(get_health);
    print_reply(health, seen);
    // The event handler cancels the deadline once enough pushes have arrived.
    if (seen.pushes < pushes_wanted) {
        auto [ended_early] = co_await deadline.async_wait(transport::use_tuple);
        (void)ended_early;
    }
    co_await guest->async_stop();
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
    asio::steady_timer deadline(io, limit);
    bool conversing = false;
    std::shared_ptr<stereos::link::guest_link> guest;
    // Events arrive on io's thread, like everything else here.
    auto on_event = [&](const stereos::link::link_event& event) {
        if (std::holds_alternative<stereos::link::link_events::up>(event)) {
            std::cout << "connected " << transport::to_string(*target) << std::endl;
            if (!conversing) {
                conversing = true;
                asio::co_spawn(io, converse(guest, pushes, deadline, seen),
                               transport::rethrow_if_failed);
            }
        } else if (const auto* push = std::get_if<stereos::link::link_events::lifecycle>(&event)) {
            ++seen.pushes;
            std::cout << "lifecycle " << protocol::to_string(push->payload.state) << std::endl;
            if (seen.pong && seen.health && seen.pushes >= pushes)
                deadline.cancel();
        } else if (const auto* failed =
                       std::get_if<stereos::link::link_events::connect_failed>(&event)) {
            std::cerr << "guest_client: connect failed: " << failed->reason << "\n";
        }
    };
    guest = stereos::link::guest_link::create(io.get_executor(), *target,
                                              stereos::link::guest_link_options{}, on_event);
    guest->start();
    // Without a link the conversation never starts: stop at the deadline all the same.
    deadline.async_wait([&](boost::system::error_code) {
        if (!conversing)
            guest->stop();
    });
    io.run();
    return seen.pong && seen.health && seen.pushes >= pushes ? 0 : 1;
}

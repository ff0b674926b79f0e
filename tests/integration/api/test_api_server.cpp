// The API server in-process, on one single-threaded io_context as in the daemon, with short
// limits: idle and read timeouts, the connection limit, EMFILE in the accept loop, the socket
// file's life, and the routes driven without a socket (the fuzz target's entry point).
#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <future>

#include <boost/asio.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include <stereos/util/completion_tokens.hpp>
#include "daemon/api/routes.hpp"
#include "daemon/api/routes_internal.hpp"
#include "daemon/api/server.hpp"
#include "daemon/guest/state_store.hpp"
#include "tests/fuzz/api_without_socket.hpp"
#include "tests/integration/api/api_test_support.hpp"

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
namespace json = boost::json;
using namespace stereos;
using namespace stereos::daemon;
using stereos::api_test::temp_dir;
using stereos::transport::use_tuple;
using socket_type = asio::local::stream_protocol::socket;
using steady = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

// Root's rights: every route, host references included.
api::peer_access full_access() {
    return {true, true, true, api::peer_credentials{}};
}

asio::awaitable<void> sleep_for(std::chrono::milliseconds d) {
    asio::steady_timer t(co_await asio::this_coro::executor, d);
    co_await t.async_wait(use_tuple);
}

// A daemon's worth of state (no guests) and an API server on a temp socket.
struct server_fixture {
    explicit server_fixture(api_server_options options = {}) {
        registry.start(config::config{});
        options.socket_path = dir.file("api.sock");
        server = std::make_unique<api_server>(io.get_executor(), options, registry, bus);
        server->listen();
        server->start();
    }

    // Runs `test` on the io_context; then stops the server and lets everything finish, which
    // also proves no session is left hanging.
    void run(const std::function<asio::awaitable<void>()>& test) {
        bool finished = false;
        asio::co_spawn(io, test(), [&](const std::exception_ptr& e) {
            finished = true;
            server->stop();
            if (e)
                std::rethrow_exception(e);
        });
        io.run_for(60s);
        BOOST_TEST(finished);
        BOOST_TEST(io.stopped(), "work was left pending after stop()");
    }

    std::string socket() const { return dir.file("api.sock"); }

    temp_dir dir;
    asio::io_context io;
    event_bus bus;
    state_store store{dir.path / "state"};
    guest_registry registry{io.get_executor(), bus, store};
    std::unique_ptr<api_server> server;
};

asio::awaitable<socket_type> connect_to(const std::string& path) {
    socket_type s(co_await asio::this_coro::executor);
    const asio::local::stream_protocol::endpoint endpoint(path);
    co_await s.async_connect(endpoint, asio::use_awaitable);
    co_return s;
}

// Plain or reference parameters only: GCC 12 destroys class-type temporaries created in a
// co_await expression twice.
asio::awaitable<bhttp::response<bhttp::string_body>> get_on(socket_type& s,
                                                            beast::flat_buffer& buffer,
                                                            std::string_view target) {
    bhttp::request<bhttp::empty_body> request{bhttp::verb::get, target, 11};
    request.set(bhttp::field::host, "localhost");
    co_await bhttp::async_write(s, request, asio::use_awaitable);
    bhttp::response<bhttp::string_body> response;
    co_await bhttp::async_read(s, buffer, response, asio::use_awaitable);
    co_return response;
}

// Waits until the server closes `s`; returns how long that took, or nullopt after `limit`.
asio::awaitable<std::optional<steady::duration>> time_until_closed(
    socket_type& s, std::chrono::milliseconds limit = 10s) {
    const auto start = steady::now();
    std::array<char, 1024> scratch{};
    while (steady::now() - start < limit) {
        auto [ec, n] = co_await s.async_read_some(asio::buffer(scratch), use_tuple);
        if (ec)
            co_return steady::now() - start;
    }
    co_return std::nullopt;
}

template <class Condition>
asio::awaitable<bool> eventually(Condition condition, std::chrono::milliseconds limit = 10s) {
    const auto end = steady::now() + limit;
    while (!condition()) {
        if (steady::now() > end)
            co_return false;
        co_await sleep_for(5ms);
    }
    co_return true;
}

std::size_t open_fd_count() {
    std::size_t n = 0;
    for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
        (void)entry;
        ++n;
    }
    return n;
}

std::string error_code_of(const std::string& body) {
    return std::string(json::parse(body).at("error").at("code").as_string());
}

}  // namespace

BOOST_AUTO_TEST_SUITE(api_server_in_process)

BOOST_AUTO_TEST_CASE(routes_answer_without_a_socket) {
    temp_dir dir;
    asio::io_context io;
    event_bus bus;
    state_store store(dir.path / "state");
    guest_registry registry(io.get_executor(), bus, store);
    registry.start(config::config{});
    api_metrics metrics(bus);
    api::api_context context{registry, bus, metrics};

    auto run = [&](std::string_view raw, api::peer_access access) {
        auto request = api::parse_request(raw);
        BOOST_TEST_REQUIRE(request.has_value(), raw);
        std::optional<api::api_outcome> outcome;
        asio::co_spawn(io, api::dispatch(*request, access, context),
                       [&](const std::exception_ptr& e, api::api_outcome o) {
                           if (e)
                               std::rethrow_exception(e);
                           outcome = std::move(o);
                       });
        io.restart();
        io.run();
        BOOST_TEST_REQUIRE(outcome.has_value());
        return std::move(*outcome);
    };
    auto response = [&](std::string_view raw, api::peer_access access = full_access()) {
        auto outcome = run(raw, access);
        BOOST_TEST_REQUIRE(std::holds_alternative<api::http_response>(outcome));
        return std::get<api::http_response>(std::move(outcome));
    };

    auto ping = response("GET /v1/ping HTTP/1.1\r\nHost: x\r\n\r\n");
    BOOST_TEST(ping.result_int() == 200u);
    BOOST_TEST(api::serialize(ping).starts_with("HTTP/1.1 200 OK\r\n"));
    BOOST_TEST(response("GET /v1/guests HTTP/1.1\r\n\r\n").body() == "{\"guests\":[]}\n");

    // Reading needs read access, changing anything write access.
    const api::peer_access reader{true, false, false, std::nullopt},
        stranger{false, false, false, std::nullopt};
    auto refused = response("POST /v1/guests HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", reader);
    BOOST_TEST(refused.result_int() == 403u);
    BOOST_TEST(error_code_of(refused.body()) == "forbidden");
    BOOST_TEST(response("GET /v1/guests HTTP/1.1\r\n\r\n", reader).result_int() == 200u);
    BOOST_TEST(response("GET /v1/guests HTTP/1.1\r\n\r\n", stranger).result_int() == 403u);
    // 404 and 405 come before the permission check: they reveal nothing.
    BOOST_TEST(response("GET /nope HTTP/1.1\r\n\r\n", stranger).result_int() == 404u);

    auto events = run("GET /v1/events HTTP/1.1\r\n\r\n", full_access());
    BOOST_TEST(std::holds_alternative<api::event_stream_request>(events));
    BOOST_TEST(response("GET /v1/events?guest=vm1 HTTP/1.1\r\n\r\n").result_int() == 404u);
    BOOST_TEST(response("GET /v1/guests/a%zz HTTP/1.1\r\n\r\n").result_int() == 400u);

    // The parser's limits and errors.
    auto garbage = api::parse_request("NOT HTTP\r\n\r\n");
    BOOST_TEST_REQUIRE(garbage.has_error());
    BOOST_TEST(api::parse_error_response(garbage.error()).result_int() == 400u);
    auto too_big = api::parse_request("PUT /v1/guests/vm1/config HTTP/1.1\r\nContent-Length: " +
                                      std::to_string(api::max_body_bytes + 1) + "\r\n\r\n");
    BOOST_TEST_REQUIRE(too_big.has_error());
    BOOST_TEST(api::parse_error_response(too_big.error()).result_int() == 413u);
    BOOST_TEST(api::parse_request("GET /v1/ping HTTP/1.1\r\nHost:").has_error());
    BOOST_TEST(metrics.undeclared_responses() == 0u);
}

BOOST_AUTO_TEST_CASE(every_route_has_a_handler_and_a_forwarded_one_both_halves) {
    for (const auto& route : api::routes()) {
        BOOST_TEST_CONTEXT(route.pattern) {
            BOOST_TEST((route.handler != nullptr));
            const bool forwarded = route.forward.prepare != nullptr;
            BOOST_TEST(forwarded == (route.forward.answer != nullptr));
            BOOST_TEST(forwarded == (route.handler == &api::handle_forwarded));
        }
    }
}

BOOST_AUTO_TEST_CASE(each_route_declares_its_errors_and_the_table_finds_it) {
    const auto routes = api::routes();
    const auto ping = std::find_if(routes.begin(), routes.end(), [](const api::route& r) {
        return r.pattern == "/v1/guests/{name}/ping";
    });
    BOOST_TEST_REQUIRE((ping != routes.end()));
    BOOST_TEST(ping->declares(200, ""));
    BOOST_TEST(ping->declares(403, "forbidden"));
    BOOST_TEST(ping->declares(504, "guest_timeout"));
    BOOST_TEST(!ping->declares(409, "guest_exists"));
    BOOST_TEST(!ping->declares(504, "wait_timeout"));

    auto request = api::parse_request("DELETE /v1/guests/vm%31?x=1 HTTP/1.1\r\n\r\n");
    BOOST_TEST_REQUIRE(request.has_value());
    auto matched = api::match_route(*request);
    BOOST_TEST_REQUIRE(std::holds_alternative<api::route_match>(matched));
    const auto& match = std::get<api::route_match>(matched);
    BOOST_TEST(match.chosen->pattern == "/v1/guests/{name}");
    BOOST_TEST(match.name == "vm1");
    BOOST_TEST(match.target.query.at("x") == "1");
}

BOOST_AUTO_TEST_CASE(an_idle_keep_alive_connection_is_closed_after_the_idle_timeout) {
    api_server_options options;
    options.idle_timeout = 300ms;
    server_fixture f(options);
    f.run([&]() -> asio::awaitable<void> {
        auto s = co_await connect_to(f.socket());
        beast::flat_buffer buffer;
        auto response = co_await get_on(s, buffer, "/v1/ping");
        BOOST_TEST(response.result_int() == 200u);
        BOOST_TEST(response.keep_alive());
        auto closed_after = co_await time_until_closed(s);
        BOOST_TEST_REQUIRE(closed_after.has_value());
        BOOST_TEST((*closed_after >= 250ms));
        BOOST_TEST(co_await eventually([&] { return f.server->open_connections() == 0; }));
    });
}

BOOST_AUTO_TEST_CASE(half_a_request_is_cut_off_after_the_read_timeout) {
    api_server_options options;
    options.read_timeout = 300ms;
    server_fixture f(options);
    f.run([&]() -> asio::awaitable<void> {
        auto s = co_await connect_to(f.socket());
        const std::string half = "GET /v1/ping HTTP/1.1\r\nHo";
        co_await asio::async_write(s, asio::buffer(half), asio::use_awaitable);
        auto closed_after = co_await time_until_closed(s);
        BOOST_TEST_REQUIRE(closed_after.has_value());
        BOOST_TEST((*closed_after >= 250ms));
        BOOST_TEST(co_await eventually([&] { return f.server->open_connections() == 0; }));
    });
}

BOOST_AUTO_TEST_CASE(connections_over_the_limit_get_503_and_the_others_are_served) {
    api_server_options options;
    options.max_connections = 2;
    server_fixture f(options);
    f.run([&]() -> asio::awaitable<void> {
        auto first = co_await connect_to(f.socket());
        auto second = co_await connect_to(f.socket());
        BOOST_TEST_REQUIRE(co_await eventually([&] { return f.server->open_connections() == 2; }));

        auto third = co_await connect_to(f.socket());
        beast::flat_buffer buffer;
        auto busy = co_await get_on(third, buffer, "/v1/ping");
        BOOST_TEST(busy.result_int() == 503u);
        BOOST_TEST(error_code_of(busy.body()) == "server_busy");
        BOOST_TEST(!busy.keep_alive());
        BOOST_TEST((co_await time_until_closed(third)).has_value());

        beast::flat_buffer first_buffer;
        BOOST_TEST((co_await get_on(first, first_buffer, "/v1/ping")).result_int() == 200u);
        second.close();
        BOOST_TEST_REQUIRE(co_await eventually([&] { return f.server->open_connections() == 1; }));
        auto fourth = co_await connect_to(f.socket());
        beast::flat_buffer fourth_buffer;
        BOOST_TEST((co_await get_on(fourth, fourth_buffer, "/v1/ping")).result_int() == 200u);
        BOOST_TEST(f.server->metrics()
                       .render(f.registry, f.bus)
                       .find("stereos_api_connections_rejected_total 1\n") != std::string::npos);
    });
}

BOOST_AUTO_TEST_CASE(the_accept_loop_survives_emfile_and_then_serves_the_waiting_client) {
    server_fixture f;
    rlimit original{};
    BOOST_TEST_REQUIRE(::getrlimit(RLIMIT_NOFILE, &original) == 0);
    f.run([&]() -> asio::awaitable<void> {
        socket_type client(co_await asio::this_coro::executor);
        client.open();
        // Use up every descriptor, so the server's accept fails with EMFILE.
        rlimit low = original;
        low.rlim_cur = open_fd_count() + 8;
        BOOST_TEST_REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
        std::vector<int> fillers;
        for (int fd; (fd = ::open("/dev/null", O_RDONLY)) >= 0;)
            fillers.push_back(fd);
        const int open_errno = errno;

        co_await client.async_connect(asio::local::stream_protocol::endpoint(f.socket()),
                                      asio::use_awaitable);
        const bool failed =
            co_await eventually([&] { return f.server->metrics().accept_errors() >= 1; }, 10s);
        for (int fd : fillers)
            ::close(fd);
        ::setrlimit(RLIMIT_NOFILE, &original);
        BOOST_TEST(open_errno == EMFILE);
        BOOST_TEST_REQUIRE(failed);

        beast::flat_buffer buffer;
        auto response = co_await get_on(client, buffer, "/v1/ping");
        BOOST_TEST(response.result_int() == 200u);
    });
    ::setrlimit(RLIMIT_NOFILE, &original);
}

BOOST_AUTO_TEST_CASE(stopping_ends_idle_connections_and_event_streams) {
    server_fixture f;
    f.run([&]() -> asio::awaitable<void> {
        auto idle = co_await connect_to(f.socket());
        auto stream = co_await connect_to(f.socket());
        bhttp::request<bhttp::empty_body> request{bhttp::verb::get, "/v1/events", 11};
        co_await bhttp::async_write(stream, request, asio::use_awaitable);
        beast::flat_buffer buffer;
        bhttp::response_parser<bhttp::string_body> parser;
        co_await bhttp::async_read_header(stream, buffer, parser, asio::use_awaitable);
        BOOST_TEST(parser.get().result_int() == 200u);
        BOOST_TEST(parser.get().chunked());
        BOOST_TEST(f.server->metrics().event_streams() == 1u);

        f.server->stop();
        BOOST_TEST((co_await time_until_closed(idle)).has_value());
        BOOST_TEST((co_await time_until_closed(stream)).has_value());
        BOOST_TEST(!std::filesystem::exists(f.socket()));
        BOOST_TEST(co_await eventually([&] { return f.server->open_connections() == 0; }));
        BOOST_TEST(f.server->metrics().event_streams() == 0u);
    });
}

BOOST_AUTO_TEST_CASE(a_stale_socket_file_is_replaced_but_not_a_live_socket_or_another_file) {
    temp_dir dir;
    asio::io_context io;
    event_bus bus;
    state_store store(dir.path / "state");
    guest_registry registry(io.get_executor(), bus, store);
    api_server_options options;
    options.socket_path = dir.file("api.sock");
    {
        // A socket file nobody listens on any more.
        asio::local::stream_protocol::acceptor old(io, {options.socket_path.string()});
    }
    BOOST_TEST_REQUIRE(std::filesystem::exists(options.socket_path));
    api_server first(io.get_executor(), options, registry, bus);
    BOOST_CHECK_NO_THROW(first.listen());

    api_server second(io.get_executor(), options, registry, bus);
    try {
        second.listen();
        BOOST_ERROR("a live socket was taken over");
    } catch (const std::runtime_error& e) {
        BOOST_TEST(std::string(e.what()).find("another process") != std::string::npos, e.what());
    }
    first.stop();
    BOOST_TEST(!std::filesystem::exists(options.socket_path));

    api_test::write_text(options.socket_path, "precious");
    api_server third(io.get_executor(), options, registry, bus);
    BOOST_CHECK_THROW(third.listen(), std::runtime_error);
    BOOST_TEST(api_test::read_text(options.socket_path) == "precious");
}

BOOST_AUTO_TEST_CASE(an_adopted_listening_socket_is_served_and_its_file_left_alone) {
    temp_dir dir;
    asio::io_context io;
    event_bus bus;
    state_store store(dir.path / "state");
    guest_registry registry(io.get_executor(), bus, store);
    registry.start(config::config{});
    const auto path = dir.file("activated.sock");
    asio::local::stream_protocol::acceptor activated(io, {path});
    api_server server(io.get_executor(), {}, registry, bus);
    server.adopt(activated.release());
    server.start();
    std::optional<unsigned> status;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            auto s = co_await connect_to(path);
            beast::flat_buffer buffer;
            status = (co_await get_on(s, buffer, "/v1/ping")).result_int();
            server.stop();
        },
        transport::rethrow_if_failed);
    io.run_for(30s);
    BOOST_TEST(status.value_or(0) == 200u);
    BOOST_TEST(std::filesystem::exists(path));
}

BOOST_AUTO_TEST_CASE(a_lookup_hung_in_the_user_database_does_not_hold_up_the_servers_end) {
    // An LDAP server gone: the lookup returns only when the test lets it.
    std::promise<void> let_go;
    auto released = let_go.get_future().share();
    auto entered = std::make_shared<std::atomic<bool>>(false);
    api_server_options options;
    options.user_lookup = [released, entered](uid_t) {
        entered->store(true);
        released.wait();
        return user_record{};
    };
    steady::duration destroyed_in{};
    {
        server_fixture f(options);
        f.run([&]() -> asio::awaitable<void> {
            auto client = co_await connect_to(f.socket());
            bhttp::request<bhttp::empty_body> request{bhttp::verb::get, "/v1/ping", 11};
            co_await bhttp::async_write(client, request, asio::use_awaitable);
            BOOST_TEST(co_await eventually([&] { return entered->load(); }));
            f.server->stop();
            // The session waiting for the lookup is let go at once, refused (fail closed).
            BOOST_TEST((co_await time_until_closed(client, 5s)).has_value());
        });
        const auto start = steady::now();
        f.server.reset();
        destroyed_in = steady::now() - start;
    }
    BOOST_TEST(destroyed_in < 2s,
               "the server's end waited "
                   << std::chrono::duration_cast<std::chrono::milliseconds>(destroyed_in).count()
                   << " ms for the hung lookup");
    // The thread left behind finishes now, and posts nothing to the loop that is gone.
    let_go.set_value();
    BOOST_TEST(join_lookup_pools_left_behind() == 1u);
}

BOOST_AUTO_TEST_SUITE_END()

// Endpoint strings, and connecting over real TCP, unix, vsock and hybrid vsock sockets.
#include <linux/vm_sockets.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/test/unit_test.hpp>

#include <stereos/transport/connect.hpp>
#include <stereos/transport/endpoint.hpp>
#include <stereos/util/completion_tokens.hpp>
#include "tests/support/child_process.hpp"

namespace asio = boost::asio;
using namespace std::chrono_literals;
using namespace stereos::transport;
using boost::system::error_code;
using clock_type = std::chrono::steady_clock;
using connect_result = boost::system::result<stream_socket, connect_error>;
using unix_protocol = asio::local::stream_protocol;

namespace {

// ---- parsing helpers -----------------------------------------------------------------------

endpoint parse_ok(std::string_view text) {
    auto parsed = parse_endpoint(text);
    BOOST_TEST_REQUIRE(parsed.has_value(),
                       text << " should parse, got: " << (parsed ? "" : parsed.error().message));
    return *parsed;
}

std::string parse_error(std::string_view text) {
    auto parsed = parse_endpoint(text);
    BOOST_TEST_REQUIRE(parsed.has_error(),
                       text << " should not parse, got " << (parsed ? to_string(*parsed) : ""));
    return parsed.error().message;
}

// ---- socket test helpers -------------------------------------------------------------------

// Runs a test body on its own io_context. Helpers (test servers) spawned with spawn() may still
// be waiting when the body ends (a proxy that never answers): the loop stops then, and their
// frames go with the io_context. Any exception, in the body or a helper, fails the test.
struct test_loop {
    asio::io_context context;
    std::exception_ptr failure;

    void spawn(asio::awaitable<void> task) {
        asio::co_spawn(context, std::move(task), [this](const std::exception_ptr& e) {
            if (e && !failure) {
                failure = e;
            }
        });
    }

    void run(asio::awaitable<void> body) {
        asio::co_spawn(context, std::move(body), [this](const std::exception_ptr& e) {
            if (e && !failure) {
                failure = e;
            }
            context.stop();
        });
        context.run();
        if (failure) {
            std::rethrow_exception(failure);
        }
    }
};

// A private directory for unix sockets, removed with everything in it.
struct temp_dir : stereos::testing::temp_directory {
    temp_dir() : temp_directory("stereos-tr", 0700) {}
};

std::chrono::milliseconds elapsed_since(clock_type::time_point start) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - start);
}

// Reads up to and including the first '\n' (the test servers are never sent more).
template <class Socket>
asio::awaitable<std::string> read_line(Socket& socket) {
    std::string line;
    auto [ec, n] =
        co_await asio::async_read_until(socket, asio::dynamic_buffer(line), '\n', use_tuple);
    BOOST_TEST_REQUIRE(!ec, "reading a line: " << ec.message());
    line.resize(n);
    co_return line;
}

// A hybrid vsock proxy as Firecracker's: accepts one connection, reads the CONNECT line into
// `received`, then writes `answer` (all in one write) and keeps the connection open until the
// peer closes it, or closes at once when `close_after_answer`.
asio::awaitable<void> fake_hybrid_proxy(unix_protocol::acceptor acceptor, std::string& received,
                                        std::string answer, bool close_after_answer) {
    auto socket = co_await acceptor.async_accept(asio::use_awaitable);
    received = co_await read_line(socket);
    if (!answer.empty()) {
        co_await asio::async_write(socket, asio::buffer(answer), asio::use_awaitable);
    }
    if (close_after_answer) {
        co_return;
    }
    std::array<char, 64> sink{};
    for (;;) {
        auto [ec, n] = co_await socket.async_read_some(asio::buffer(sink), use_tuple);
        if (ec) {
            co_return;
        }
    }
}

// A unix listener that accepts and then never says anything.
asio::awaitable<void> silent_listener(unix_protocol::acceptor acceptor) {
    auto socket = co_await acceptor.async_accept(asio::use_awaitable);
    std::array<char, 64> sink{};
    for (;;) {
        auto [ec, n] = co_await socket.async_read_some(asio::buffer(sink), use_tuple);
        if (ec) {
            co_return;
        }
    }
}

unix_protocol::acceptor listen_unix(asio::io_context& context, const std::string& path) {
    return unix_protocol::acceptor(context, unix_protocol::endpoint(path));
}

connect_error expect_failure(const connect_result& result, const endpoint& target) {
    BOOST_TEST_REQUIRE(result.has_error(), to_string(target) << " should have failed");
    BOOST_TEST_MESSAGE(result.error().describe(target));
    return result.error();
}

// Whether this kernel (or sandbox) offers AF_VSOCK at all; some containers refuse it.
std::optional<std::string> vsock_unavailable_reason() {
    const int fd = ::socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return std::string("AF_VSOCK socket cannot be created here: ") + std::strerror(errno);
    }
    ::close(fd);
    return std::nullopt;
}

void skip_because(const std::string& reason) {
    std::cout << "SKIPPED " << boost::unit_test::framework::current_test_case().p_name.get() << ": "
              << reason << std::endl;
    BOOST_TEST_MESSAGE("skipped: " << reason);
}

}  // namespace

// =============================================================================================

BOOST_AUTO_TEST_SUITE(endpoint_strings)

BOOST_AUTO_TEST_CASE(tcp_forms_give_host_and_port) {
    BOOST_TEST((parse_ok("tcp:localhost:1024") == endpoint{tcp_endpoint{"localhost", 1024}}));
    BOOST_TEST(
        (parse_ok("tcp:192.168.1.10:65535") == endpoint{tcp_endpoint{"192.168.1.10", 65535}}));
    BOOST_TEST((parse_ok("tcp:vm1.example.org:1") == endpoint{tcp_endpoint{"vm1.example.org", 1}}));
    // The brackets stay: the host reads as it was written, and to_string needs no guessing.
    BOOST_TEST((parse_ok("tcp:[::1]:1024") == endpoint{tcp_endpoint{"[::1]", 1024}}));
    BOOST_TEST((parse_ok("tcp:[fd00::2:1]:80") == endpoint{tcp_endpoint{"[fd00::2:1]", 80}}));
}

BOOST_AUTO_TEST_CASE(vsock_port_defaults_to_1024) {
    BOOST_TEST((parse_ok("vsock:3") == endpoint{vsock_endpoint{3, 1024}}));
    BOOST_TEST((parse_ok("vsock:3:5000") == endpoint{vsock_endpoint{3, 5000}}));
    BOOST_TEST((parse_ok("vsock:4294967295:4294967295") ==
                endpoint{vsock_endpoint{4294967295u, 4294967295u}}));
}

BOOST_AUTO_TEST_CASE(unix_paths_may_be_absolute_or_relative_up_to_107_bytes) {
    BOOST_TEST(
        (parse_ok("unix:/run/stereosd.sock") == endpoint{unix_endpoint{"/run/stereosd.sock"}}));
    BOOST_TEST((parse_ok("unix:run/api.sock") == endpoint{unix_endpoint{"run/api.sock"}}));
    const std::string longest = "/" + std::string(106, 'p');
    BOOST_TEST((parse_ok("unix:" + longest) == endpoint{unix_endpoint{longest}}));
}

BOOST_AUTO_TEST_CASE(hybrid_takes_the_port_after_the_last_colon) {
    BOOST_TEST((parse_ok("hybrid:/var/lib/fc/v.sock:1024") ==
                endpoint{hybrid_vsock_endpoint{"/var/lib/fc/v.sock", 1024}}));
    BOOST_TEST((parse_ok("hybrid:/tmp/a:b/v.sock:52") ==
                endpoint{hybrid_vsock_endpoint{"/tmp/a:b/v.sock", 52}}));
    BOOST_TEST((parse_ok("hybrid:v.sock:7") == endpoint{hybrid_vsock_endpoint{"v.sock", 7}}));
}

BOOST_AUTO_TEST_CASE(to_string_round_trips_every_form) {
    for (const std::string text :
         {"tcp:localhost:1024", "tcp:10.0.0.7:22", "tcp:[::1]:1024", "vsock:3:1024",
          "vsock:0:4294967295", "unix:/run/x.sock", "unix:x.sock", "hybrid:/run/fc/v.sock:1024",
          "hybrid:/tmp/a:b:9"}) {
        const auto parsed = parse_ok(text);
        BOOST_TEST(to_string(parsed) == text);
        BOOST_TEST((parse_ok(to_string(parsed)) == parsed));
    }
    // Forms with defaults come back in full.
    BOOST_TEST(to_string(parse_ok("vsock:3")) == "vsock:3:1024");
    // An IPv6 host built in code without brackets gets them.
    BOOST_TEST(to_string(tcp_endpoint{"::1", 80}) == "tcp:[::1]:80");
}

BOOST_AUTO_TEST_CASE(some_errors_read_exactly_so) {
    BOOST_TEST(parse_error("vsock:abc:1024") == "vsock:abc:1024: CID must be a number");
    BOOST_TEST(parse_error("ftp:host:21") ==
               "ftp:host:21: unknown scheme \"ftp\" (known: tcp, vsock, unix, hybrid)");
    BOOST_TEST(parse_error("tcp:localhost:70000") ==
               "tcp:localhost:70000: port 70000 is out of range 1-65535");
    BOOST_TEST(parse_error("tcp:localhost") ==
               "tcp:localhost: missing port (expected tcp:HOST:PORT)");
    BOOST_TEST(parse_error("unix:") == "unix:: empty socket path");
}

BOOST_AUTO_TEST_CASE(every_bad_string_names_its_problem_and_quotes_the_input) {
    struct bad {
        std::string text;
        std::string problem;
    };
    const std::string too_long = "/" + std::string(107, 'p');
    const std::vector<bad> cases = {
        {"localhost", "expected SCHEME:ADDRESS, one of tcp:HOST:PORT, vsock:CID[:PORT]"},
        {"localhost:1024", "unknown scheme \"localhost\""},
        {"TCP:localhost:1024", "unknown scheme \"TCP\""},
        {":1024", "unknown scheme \"\""},
        {"tcp:", "missing port"},
        {"tcp::1024", "empty host"},
        {"tcp:host:", "missing port"},
        {"tcp:host:0", "port 0 is out of range 1-65535"},
        {"tcp:host:65536", "out of range 1-65535"},
        {"tcp:host:99999999999999999999999", "out of range"},
        {"tcp:host:http", "port \"http\" is not a number"},
        {"tcp:host:-1", "port \"-1\" is not a number"},
        {"tcp:host:+80", "not a number"},
        {"tcp:host: 80", "not a number"},
        {"tcp:::1:1024", "IPv6 address must be in brackets"},
        {"tcp:[::1:1024", "missing ']'"},
        {"tcp:[::1]", "missing port"},
        {"tcp:[::1]1024", "expected ':' and a port after ']'"},
        {"tcp:[]:1024", "empty host"},
        {"tcp:[not-v6]:1024", "\"not-v6\" is not an IPv6 address"},
        {"vsock:", "missing CID"},
        {"vsock::1024", "missing CID"},
        {"vsock:-3", "CID must be a number"},
        {"vsock:4294967296", "CID is out of range 0-4294967295"},
        {"vsock:3:", "missing port"},
        {"vsock:3:x", "port \"x\" is not a number"},
        {"vsock:3:4294967296", "port 4294967296 is out of range 0-4294967295"},
        {"vsock:3:1024:5", "not a number"},
        {"unix:" + too_long, "socket path is 108 bytes, longer than the 107 a unix socket allows"},
        {std::string("unix:/a\0b", 9), "socket path contains a NUL byte"},
        {"hybrid:/run/v.sock", "missing port (expected hybrid:/PATH:PORT)"},
        {"hybrid::1024", "empty socket path"},
        {"hybrid:/run/v.sock:", "missing port"},
        {"hybrid:/run/v.sock:port", "port \"port\" is not a number"},
        {"hybrid:" + too_long + ":1024", "longer than the 107 a unix socket allows"},
    };
    for (const auto& c : cases) {
        const auto message = parse_error(c.text);
        BOOST_TEST(
            message.find(c.problem) != std::string::npos,
            "\"" << c.text << "\" gave \"" << message << "\", expected \"" << c.problem << "\"");
        // The input leads the message (made printable, so the NUL shows as \x00).
        const auto shown = c.text.find('\0') == std::string::npos ? c.text : "unix:/a\\x00b";
        BOOST_TEST(message.starts_with(shown + ": "), message);
    }
    BOOST_TEST(parse_error("").find("empty endpoint") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(value_of_a_bad_string_throws_invalid_argument_with_the_message) {
    BOOST_CHECK_EXCEPTION(parse_endpoint("vsock:x").value(), std::invalid_argument,
                          [](const std::invalid_argument& e) {
                              return std::string(e.what()) == "vsock:x: CID must be a number";
                          });
}

BOOST_AUTO_TEST_SUITE_END()

// =============================================================================================

BOOST_AUTO_TEST_SUITE(tcp_connect)

BOOST_AUTO_TEST_CASE(connects_to_a_real_listener_with_nodelay_set) {
    test_loop loop;
    asio::ip::tcp::acceptor acceptor(loop.context, {asio::ip::make_address("127.0.0.1"), 0});
    const auto port = acceptor.local_endpoint().port();
    std::string received;
    loop.run([&]() -> asio::awaitable<void> {
        // "localhost" goes through the resolver; the numeric form skips name lookup. A bare
        // root (no /etc/hosts) cannot resolve it: that part is skipped there, with a note.
        std::vector<std::string> hosts{"127.0.0.1"};
        boost::system::error_code resolve_error;
        asio::ip::tcp::resolver resolver(loop.context);
        resolver.resolve("localhost", "1", resolve_error);
        if (resolve_error) {
            BOOST_TEST_MESSAGE("skipping the \"localhost\" connect: it does not resolve here ("
                               << resolve_error.message() << ")");
        } else {
            hosts.emplace_back("localhost");
        }
        for (const std::string& host : hosts) {
            const auto target = parse_ok("tcp:" + host + ":" + std::to_string(port));
            auto result = co_await async_connect(target, 5s);
            BOOST_TEST_REQUIRE(result.has_value(), (result ? "" : result.error().describe(target)));
            asio::ip::tcp::no_delay no_delay;
            result->get_option(no_delay);
            BOOST_TEST(no_delay.value());

            auto server_side = co_await acceptor.async_accept(asio::use_awaitable);
            co_await asio::async_write(*result, asio::buffer("hello " + host + "\n"),
                                       asio::use_awaitable);
            received = co_await read_line(server_side);
            BOOST_TEST(received == "hello " + host + "\n");
        }
    }());
}

BOOST_AUTO_TEST_CASE(a_refused_connect_fails_promptly) {
    test_loop loop;
    std::uint16_t port = 0;
    {
        // A port that was just free: nobody listens on it once the acceptor closes.
        asio::ip::tcp::acceptor closed(loop.context, {asio::ip::make_address("127.0.0.1"), 0});
        port = closed.local_endpoint().port();
    }
    loop.run([&]() -> asio::awaitable<void> {
        const auto target = parse_ok("tcp:127.0.0.1:" + std::to_string(port));
        const auto start = clock_type::now();
        auto result = co_await async_connect(target, 10s);
        const auto took = elapsed_since(start);
        const auto failure = expect_failure(result, target);
        BOOST_TEST(failure.code == asio::error::connection_refused, failure.code.message());
        BOOST_TEST(took < 5s);
        BOOST_TEST(failure.describe(target).starts_with(to_string(target) + ": "));
    }());
}

BOOST_AUTO_TEST_CASE(an_unresolvable_host_fails_with_resolve_failed_and_the_host) {
    test_loop loop;
    loop.run([&]() -> asio::awaitable<void> {
        // .invalid never resolves (RFC 6761). Where DNS is unreachable the lookup may instead
        // hang: then the timeout must still end the attempt.
        const auto target = parse_ok("tcp:no-such-host.invalid:1024");
        const auto start = clock_type::now();
        auto result = co_await async_connect(target, 3s);
        const auto took = elapsed_since(start);
        const auto failure = expect_failure(result, target);
        BOOST_TEST(took < 5s);
        if (failure.code == make_error_code(error::connect_timeout)) {
            std::cout << "note: DNS did not answer for .invalid within 3 s" << std::endl;
            BOOST_TEST(failure.detail.find("resolving") != std::string::npos, failure.detail);
        } else {
            BOOST_TEST(failure.code == make_error_code(error::resolve_failed),
                       failure.code.message());
            BOOST_TEST(failure.detail.find("no-such-host.invalid") != std::string::npos,
                       failure.detail);
        }
    }());
}

BOOST_AUTO_TEST_CASE(a_connect_to_a_full_backlog_times_out) {
    test_loop loop;
    // A listener that never accepts, with the smallest backlog: once its queue is full the
    // kernel drops further SYNs and a connect hangs, which only the timeout ends.
    asio::ip::tcp::acceptor acceptor(loop.context);
    acceptor.open(asio::ip::tcp::v4());
    acceptor.bind({asio::ip::make_address("127.0.0.1"), 0});
    acceptor.listen(0);
    const auto target =
        parse_ok("tcp:127.0.0.1:" + std::to_string(acceptor.local_endpoint().port()));
    loop.run([&]() -> asio::awaitable<void> {
        std::vector<stream_socket> fillers;
        for (int attempt = 0; attempt < 16; ++attempt) {
            const auto start = clock_type::now();
            auto result = co_await async_connect(target, 300ms);
            const auto took = elapsed_since(start);
            if (result) {
                fillers.push_back(std::move(*result));  // queued: keep it there
                continue;
            }
            BOOST_TEST(result.error().code == make_error_code(error::connect_timeout),
                       result.error().describe(target));
            BOOST_TEST(result.error().detail.find("300 ms") != std::string::npos);
            BOOST_TEST(took >= 250ms);
            BOOST_TEST(took < 5s);
            co_return;
        }
        skip_because("16 connects to a listener that never accepts all succeeded");
    }());
}

BOOST_AUTO_TEST_SUITE_END()

// =============================================================================================

BOOST_AUTO_TEST_SUITE(unix_connect)

BOOST_AUTO_TEST_CASE(connects_to_a_listening_socket) {
    temp_dir dir;
    test_loop loop;
    const auto path = dir.file("guest.sock");
    auto acceptor = listen_unix(loop.context, path);
    loop.spawn([](unix_protocol::acceptor acceptor) -> asio::awaitable<void> {
        auto socket = co_await acceptor.async_accept(asio::use_awaitable);
        co_await asio::async_write(socket, asio::buffer(std::string("{\"type\":\"pong\"}\n")),
                                   asio::use_awaitable);
    }(std::move(acceptor)));
    loop.run([&]() -> asio::awaitable<void> {
        const auto target = parse_ok("unix:" + path);
        auto result = co_await async_connect(target, 5s);
        BOOST_TEST_REQUIRE(result.has_value(), (result ? "" : result.error().describe(target)));
        const auto line = co_await read_line(*result);
        BOOST_TEST(line == "{\"type\":\"pong\"}\n");
    }());
}

BOOST_AUTO_TEST_CASE(a_missing_socket_file_gives_enoent) {
    temp_dir dir;
    test_loop loop;
    loop.run([&]() -> asio::awaitable<void> {
        const auto target = parse_ok("unix:" + dir.file("nobody-here.sock"));
        auto result = co_await async_connect(target, 5s);
        const auto failure = expect_failure(result, target);
        BOOST_TEST(failure.code == boost::system::errc::no_such_file_or_directory,
                   failure.code.message());
    }());
}

BOOST_AUTO_TEST_CASE(an_over_long_path_built_in_code_is_an_error_not_a_throw) {
    test_loop loop;
    loop.run([&]() -> asio::awaitable<void> {
        const endpoint target = unix_endpoint{"/" + std::string(200, 'p')};
        auto result = co_await async_connect(target, 5s);
        const auto failure = expect_failure(result, target);
        BOOST_TEST(failure.code == boost::system::errc::filename_too_long);
    }());
}

BOOST_AUTO_TEST_SUITE_END()

// =============================================================================================

BOOST_AUTO_TEST_SUITE(vsock_connect)

BOOST_AUTO_TEST_CASE(vsock_sockets_can_be_created_bound_and_listened) {
    if (auto reason = vsock_unavailable_reason()) {
        skip_because(*reason);
        return;
    }
    asio::io_context context;
    sockaddr_vm any{};
    any.svm_family = AF_VSOCK;
    any.svm_cid = VMADDR_CID_ANY;
    any.svm_port = VMADDR_PORT_ANY;
    const asio::generic::stream_protocol::endpoint address(&any, sizeof any);
    asio::basic_socket_acceptor<asio::generic::stream_protocol> acceptor(context);
    error_code ec;
    acceptor.open(address.protocol(), ec);
    BOOST_TEST_REQUIRE(!ec, "open: " << ec.message());
    acceptor.bind(address, ec);
    BOOST_TEST_REQUIRE(!ec, "bind: " << ec.message());
    acceptor.listen(asio::socket_base::max_listen_connections, ec);
    BOOST_TEST(!ec, "listen: " << ec.message());
}

BOOST_AUTO_TEST_CASE(connecting_to_the_host_cid_fails_at_once) {
    if (auto reason = vsock_unavailable_reason()) {
        skip_because(*reason);
        return;
    }
    test_loop loop;
    loop.run([&]() -> asio::awaitable<void> {
        // CID 2 is the host itself: with no loopback transport the kernel refuses right away
        // (ECONNRESET here), rather than leaving the attempt to the timeout.
        const auto target = parse_ok("vsock:2:1024");
        const auto start = clock_type::now();
        auto result = co_await async_connect(target, 10s);
        const auto took = elapsed_since(start);
        const auto failure = expect_failure(result, target);
        std::cout << "vsock:2:1024 failed after " << took.count()
                  << " ms with: " << failure.describe(target) << std::endl;
        BOOST_TEST(failure.code != make_error_code(error::connect_timeout));
        BOOST_TEST(took < 5s);
    }());
}

BOOST_AUTO_TEST_SUITE_END()

// =============================================================================================

BOOST_AUTO_TEST_SUITE(hybrid_vsock_connect)

BOOST_AUTO_TEST_CASE(guest_bytes_sent_with_the_ok_stay_readable) {
    temp_dir dir;
    test_loop loop;
    const auto path = dir.file("v.sock");
    std::string received;
    // The proxy answers and the guest's first line arrive in one segment.
    loop.spawn(fake_hybrid_proxy(listen_unix(loop.context, path), received,
                                 "OK 123\n{\"type\":\"lifecycle\"}\n", false));
    loop.run([&]() -> asio::awaitable<void> {
        const auto target = parse_ok("hybrid:" + path + ":1024");
        auto result = co_await async_connect(target, 5s);
        BOOST_TEST_REQUIRE(result.has_value(), (result ? "" : result.error().describe(target)));
        BOOST_TEST(received == "CONNECT 1024\n");
        const auto first_guest_line = co_await read_line(*result);
        BOOST_TEST(first_guest_line == "{\"type\":\"lifecycle\"}\n");
    }());
}

BOOST_AUTO_TEST_CASE(the_connect_line_names_the_endpoint_port) {
    temp_dir dir;
    test_loop loop;
    const auto path = dir.file("v.sock");
    std::string received;
    loop.spawn(
        fake_hybrid_proxy(listen_unix(loop.context, path), received, "OK 1073741824\n", false));
    loop.run([&]() -> asio::awaitable<void> {
        const auto target = parse_ok("hybrid:" + path + ":52");
        auto result = co_await async_connect(target, 5s);
        BOOST_TEST(result.has_value());
        BOOST_TEST(received == "CONNECT 52\n");
    }());
}

BOOST_AUTO_TEST_CASE(a_proxy_answering_something_else_fails_with_what_it_said) {
    temp_dir dir;
    test_loop loop;
    const auto path = dir.file("v.sock");
    for (const std::string answer : {"NOPE\n", "OK\n", "OK 12x\n", "ok 12\n"}) {
        std::string received;
        loop.context.restart();
        loop.spawn(fake_hybrid_proxy(listen_unix(loop.context, path), received, answer, false));
        loop.run([&]() -> asio::awaitable<void> {
            const auto target = parse_ok("hybrid:" + path + ":1024");
            auto result = co_await async_connect(target, 5s);
            const auto failure = expect_failure(result, target);
            BOOST_TEST(failure.code == make_error_code(error::hybrid_handshake_failed));
            const auto shown = answer.substr(0, answer.size() - 1) + "\\x0a";
            BOOST_TEST(failure.describe(target).find("\"" + shown + "\"") != std::string::npos,
                       failure.describe(target));
        }());
        std::filesystem::remove(path);
    }
}

BOOST_AUTO_TEST_CASE(a_proxy_closing_without_an_answer_fails_the_handshake) {
    temp_dir dir;
    test_loop loop;
    const auto path = dir.file("v.sock");
    std::string received;
    loop.spawn(fake_hybrid_proxy(listen_unix(loop.context, path), received, "", true));
    loop.run([&]() -> asio::awaitable<void> {
        const auto target = parse_ok("hybrid:" + path + ":1024");
        auto result = co_await async_connect(target, 5s);
        const auto failure = expect_failure(result, target);
        BOOST_TEST(failure.code == make_error_code(error::hybrid_handshake_failed));
        BOOST_TEST(
            failure.detail.find("closed the connection without answering") != std::string::npos,
            failure.detail);
    }());
}

BOOST_AUTO_TEST_CASE(an_endless_reply_line_is_cut_off_and_shown_bounded) {
    temp_dir dir;
    test_loop loop;
    const auto path = dir.file("v.sock");
    std::string received;
    loop.spawn(fake_hybrid_proxy(listen_unix(loop.context, path), received, std::string(4096, 'A'),
                                 false));
    loop.run([&]() -> asio::awaitable<void> {
        const auto target = parse_ok("hybrid:" + path + ":1024");
        auto result = co_await async_connect(target, 5s);
        const auto failure = expect_failure(result, target);
        BOOST_TEST(failure.code == make_error_code(error::hybrid_handshake_failed));
        BOOST_TEST(failure.detail.find("AAAAAAAA") != std::string::npos, failure.detail);
        BOOST_TEST(failure.detail.size() < 256u, failure.detail);
    }());
}

BOOST_AUTO_TEST_CASE(a_proxy_that_never_answers_times_out) {
    temp_dir dir;
    test_loop loop;
    const auto path = dir.file("v.sock");
    loop.spawn(silent_listener(listen_unix(loop.context, path)));
    loop.run([&]() -> asio::awaitable<void> {
        const auto target = parse_ok("hybrid:" + path + ":1024");
        const auto start = clock_type::now();
        auto result = co_await async_connect(target, 200ms);
        const auto took = elapsed_since(start);
        const auto failure = expect_failure(result, target);
        BOOST_TEST(failure.code == make_error_code(error::connect_timeout), failure.code.message());
        BOOST_TEST(failure.detail.find("reply") != std::string::npos, failure.detail);
        BOOST_TEST(took >= 150ms);
        BOOST_TEST(took < 5s);
    }());
}

BOOST_AUTO_TEST_SUITE_END()

// =============================================================================================

BOOST_AUTO_TEST_SUITE(cancellation)

// One connect, run as its own coroutine so that the test can cancel it.
asio::awaitable<void> connect_into(const endpoint& target, std::optional<connect_result>& result) {
    result = co_await async_connect(target, 30s);
}

BOOST_AUTO_TEST_CASE(cancelling_the_awaiting_coroutine_stops_an_attempt_promptly) {
    temp_dir dir;
    test_loop loop;
    const auto path = dir.file("v.sock");
    loop.spawn(silent_listener(listen_unix(loop.context, path)));
    loop.run([&]() -> asio::awaitable<void> {
        const auto target = parse_ok("hybrid:" + path + ":1024");
        const auto executor = co_await asio::this_coro::executor;
        std::optional<connect_result> result;
        asio::cancellation_signal cancel;
        asio::steady_timer finished(executor, asio::steady_timer::time_point::max());
        asio::co_spawn(
            executor, connect_into(target, result),
            asio::bind_cancellation_slot(cancel.slot(), [&](const std::exception_ptr& e) {
                if (e && !loop.failure) {
                    loop.failure = e;
                }
                finished.cancel();
            }));

        asio::steady_timer pause(executor, 100ms);
        co_await pause.async_wait(asio::use_awaitable);
        BOOST_TEST_REQUIRE(!result.has_value(), "the attempt should still be waiting");
        const auto start = clock_type::now();
        cancel.emit(asio::cancellation_type::terminal);
        co_await finished.async_wait(use_tuple);
        const auto took = elapsed_since(start);

        BOOST_TEST_REQUIRE(result.has_value());
        const auto failure = expect_failure(*result, target);
        BOOST_TEST(failure.code == asio::error::operation_aborted, failure.code.message());
        BOOST_TEST(took < 5s);
    }());
}

BOOST_AUTO_TEST_SUITE_END()

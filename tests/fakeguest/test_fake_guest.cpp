// The scripted fake guest over real sockets: its default answers against the real guest's
// captures, the 1 MiB limit, what it keeps (authorized_keys rewritten, mounts stacked, scripted
// uptimes, deliveries), shutdown, the hybrid handshake, every fault switch, scripts, and the
// stereos-fakeguest program as a real process.
#define BOOST_TEST_MODULE stereos_fakeguest_tests
#include <linux/vm_sockets.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include <stereos/protocol/codec.hpp>
#include <stereos/util/completion_tokens.hpp>
#include "tests/fakeguest/command_line.hpp"
#include "tests/fakeguest/fake_guest.hpp"
#include "tests/support/child_process.hpp"

// Printers for Boost.Test messages.
namespace stereos::protocol {
std::ostream& operator<<(std::ostream& out, lifecycle_state state) {
    return out << to_string(state);
}
}  // namespace stereos::protocol
namespace stereos::testing {
std::ostream& operator<<(std::ostream& out, const received_line& line) {
    return out << "#" << line.connection << " " << line.text;
}
}  // namespace stereos::testing

namespace asio = boost::asio;
namespace json = boost::json;
using namespace std::chrono_literals;
using namespace asio::experimental::awaitable_operators;
using boost::system::error_code;
using stereos::protocol::lifecycle_state;
using namespace stereos::testing;
namespace protocol = stereos::protocol;

namespace {

using stereos::transport::use_tuple;
using generic_stream = asio::generic::stream_protocol;
using clock_type = std::chrono::steady_clock;

// Runs a test body (a coroutine) on `io` together with whatever else was started there, e.g. a
// fake guest. Fails when the body does not finish within `limit`.
template <class Body>
void run_io(asio::io_context& io, Body body, std::chrono::seconds limit = 60s) {
    bool done = false;
    std::exception_ptr failure;
    asio::co_spawn(io, body(), [&](const std::exception_ptr& e) {
        failure = e;
        done = true;
        io.stop();
    });
    io.run_for(limit);
    if (failure)
        std::rethrow_exception(failure);
    BOOST_TEST_REQUIRE(done, "the test did not finish within " << limit.count() << " s");
}

asio::awaitable<void> sleep_for(clock_type::duration duration) {
    asio::steady_timer timer(co_await asio::this_coro::executor, duration);
    co_await timer.async_wait(use_tuple);
}

// The socket address behind an endpoint string; for hybrid the proxy's unix socket.
generic_stream::endpoint socket_address(std::string_view endpoint) {
    if (endpoint.starts_with("tcp:")) {
        auto rest = endpoint.substr(4);
        const auto colon = rest.rfind(':');
        auto host = std::string(rest.substr(0, colon));
        if (host.starts_with('['))
            host = host.substr(1, host.size() - 2);
        const auto port =
            static_cast<std::uint16_t>(std::stoi(std::string(rest.substr(colon + 1))));
        return asio::ip::tcp::endpoint(asio::ip::make_address(host), port);
    }
    if (endpoint.starts_with("unix:"))
        return asio::local::stream_protocol::endpoint(std::string(endpoint.substr(5)));
    if (endpoint.starts_with("hybrid:")) {
        auto rest = endpoint.substr(7);
        return asio::local::stream_protocol::endpoint(std::string(rest.substr(0, rest.rfind(':'))));
    }
    throw std::invalid_argument("not an endpoint: " + std::string(endpoint));
}

// Reads newline-terminated lines from any stream, every wait bounded.
template <class Stream>
class line_reader {
  public:
    explicit line_reader(Stream stream) : stream_(std::move(stream)) {}

    struct outcome {
        std::optional<std::string> line;  // without "\n"
        error_code end;                   // why there is no line: eof, reset, timed_out...
    };

    asio::awaitable<outcome> read_line(clock_type::duration timeout = 10s) {
        asio::steady_timer timer(stream_.get_executor(), timeout);
        for (;;) {
            if (const auto nl = buffer_.find('\n'); nl != std::string::npos) {
                std::string line = buffer_.substr(0, nl);
                buffer_.erase(0, nl + 1);
                co_return outcome{std::move(line), {}};
            }
            if (end_)
                co_return outcome{std::nullopt, end_};
            if (!co_await read_some(timer))
                co_return outcome{std::nullopt, asio::error::timed_out};
        }
    }

    // A line that must come; fails the test otherwise.
    asio::awaitable<std::string> expect_line(clock_type::duration timeout = 10s) {
        auto got = co_await read_line(timeout);
        BOOST_TEST_REQUIRE(got.line.has_value(), "no line: " << got.end.message());
        co_return *got.line;
    }

    // Reads until the peer closes; returns how it ended (eof, connection_reset or timed_out).
    // What arrived meanwhile stays in buffered().
    asio::awaitable<error_code> read_until_closed(clock_type::duration timeout = 10s) {
        asio::steady_timer timer(stream_.get_executor(), timeout);
        while (!end_) {
            if (!co_await read_some(timer))
                co_return asio::error::timed_out;
        }
        co_return end_;
    }

    // True when nothing arrives and the stream stays open for `duration`.
    asio::awaitable<bool> quiet_for(clock_type::duration duration) {
        if (!buffer_.empty() || end_)
            co_return false;
        asio::steady_timer timer(stream_.get_executor(), duration);
        co_return !co_await read_some(timer);
    }

    asio::awaitable<error_code> send(std::string_view bytes) {
        auto [ec, n] = co_await asio::async_write(stream_, asio::buffer(bytes), use_tuple);
        co_return ec;
    }

    const std::string& buffered() const noexcept { return buffer_; }
    Stream& stream() noexcept { return stream_; }

  private:
    // False when the timer fired first.
    asio::awaitable<bool> read_some(asio::steady_timer& timer) {
        auto result = co_await (stream_.async_read_some(asio::buffer(chunk_), use_tuple) ||
                                timer.async_wait(use_tuple));
        if (result.index() == 1)
            co_return false;
        auto [ec, n] = std::get<0>(result);
        buffer_.append(chunk_.data(), n);
        if (ec)
            end_ = ec;
        co_return true;
    }

    Stream stream_;
    std::string buffer_;
    error_code end_;
    std::vector<char> chunk_ = std::vector<char>(64 * 1024);
};

using test_client = line_reader<generic_stream::socket>;

asio::awaitable<boost::system::result<test_client>> try_connect(std::string_view endpoint) {
    const auto address = socket_address(endpoint);
    generic_stream::socket socket(co_await asio::this_coro::executor);
    auto [ec] = co_await socket.async_connect(address, use_tuple);
    if (ec)
        co_return ec;
    co_return test_client(std::move(socket));
}

asio::awaitable<test_client> connect(std::string_view endpoint) {
    auto client = co_await try_connect(endpoint);
    BOOST_TEST_REQUIRE(client.has_value(),
                       "connect to " << endpoint << ": " << client.error().message());
    co_return std::move(*client);
}

// Connects through a hybrid listener: the CONNECT handshake, then the guest protocol.
asio::awaitable<test_client> connect_hybrid(std::string_view endpoint) {
    auto client = co_await connect(endpoint);
    const auto port = endpoint.substr(endpoint.rfind(':') + 1);
    const std::string handshake = "CONNECT " + std::string(port) + "\n";
    BOOST_TEST_REQUIRE(!co_await client.send(handshake));
    const auto answer = co_await client.expect_line();
    BOOST_TEST_REQUIRE(answer.starts_with("OK "), "handshake answer: " << answer);
    co_return client;
}

protocol::guest_message decode_reply(std::string_view line) {
    auto decoded = protocol::decode_guest_line(line);
    BOOST_TEST_REQUIRE(decoded.has_value(), "reply does not decode: " << line.substr(0, 200) << ": "
                                                                      << decoded.error().detail);
    return *decoded;
}

template <class T>
T expect_reply(std::string_view line) {
    auto message = decode_reply(line);
    BOOST_TEST_REQUIRE(std::holds_alternative<T>(message),
                       "got " << protocol::type_name(message) << ": " << line.substr(0, 200));
    return std::get<T>(message);
}

std::string encoded(const protocol::host_message& message) {
    return protocol::encode(message).value();
}

const std::string ping_line = R"({"type":"ping"})"
                              "\n";
const std::string get_health_line = R"({"type":"get_health"})"
                                    "\n";

// A ping whose line is `total` bytes including "\n" (the guest ignores ping payloads).
std::string padded_ping(std::size_t total) {
    std::string line = R"({"type":"ping","payload":")";
    line.append(total - line.size() - 3, 'a');
    line += "\"}\n";
    return line;
}

// A fresh directory for unix socket files, removed afterwards.
struct temp_dir : stereos::testing::temp_directory {
    temp_dir() : temp_directory("fakeguest", 0700) {}
};

json::value load_json(const std::string& name) {
    std::ifstream in(std::string(STEREOS_TEST_DATA_DIR) + "/" + name);
    BOOST_TEST_REQUIRE(in.good(), "cannot open test data " << name);
    std::stringstream text;
    text << in.rdbuf();
    return json::parse(text.str());
}

// The capture stores raw bytes as JSON strings of code points 0-255 (Latin-1).
std::optional<std::string> latin1_bytes(std::string_view utf8) {
    std::string out;
    for (std::size_t i = 0; i < utf8.size(); ++i) {
        const auto c = static_cast<unsigned char>(utf8[i]);
        if (c < 0x80) {
            out += static_cast<char>(c);
        } else if ((c & 0xE0) == 0xC0 && i + 1 < utf8.size()) {
            const unsigned value = ((c & 0x1F) << 6) | (utf8[++i] & 0x3F);
            if (value > 0xFF)
                return std::nullopt;
            out += static_cast<char>(value);
        } else {
            return std::nullopt;
        }
    }
    return out;
}

// Writes from a separate coroutine: a guest that stops reading makes a big write block or fail.
// The outcome lands in the returned slot.
std::shared_ptr<std::optional<error_code>> send_on_the_side(test_client& client,
                                                            std::string bytes) {
    auto outcome = std::make_shared<std::optional<error_code>>();
    asio::co_spawn(
        client.stream().get_executor(),
        [&client, outcome, bytes = std::move(bytes)]() -> asio::awaitable<void> {
            *outcome = co_await client.send(bytes);
        },
        stereos::transport::rethrow_if_failed);
    return outcome;
}

// A reset reaches whichever call comes first: the pending write, or else the read. (Closing a
// socket with unread input resets it; a plain FIN would let the write finish and read EOF.)
asio::awaitable<void> expect_a_reset(error_code read_end,
                                     const std::optional<error_code>& write_outcome) {
    for (int i = 0; i < 500 && !write_outcome; ++i)
        co_await sleep_for(10ms);
    BOOST_TEST_REQUIRE(write_outcome.has_value(), "the write neither finished nor failed");
    const auto write_end = *write_outcome;
    BOOST_TEST(
        (read_end == asio::error::connection_reset || write_end == asio::error::connection_reset ||
         write_end == asio::error::broken_pipe),
        "read ended with " << read_end.message() << ", write with " << write_end.message());
}

std::vector<std::string> split_lines(std::string_view text) {
    std::vector<std::string> lines;
    while (!text.empty()) {
        const auto nl = text.find('\n');
        lines.emplace_back(text.substr(0, nl));
        text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    }
    return lines;
}

std::string reply_to_of(const protocol::guest_message& m) {
    if (const auto* a = std::get_if<protocol::ack_payload>(&m))
        return a->reply_to;
    return "";
}
bool ok_of(const protocol::guest_message& m) {
    if (const auto* a = std::get_if<protocol::ack_payload>(&m))
        return a->ok;
    return true;
}

}  // namespace

// ---- default behaviour ------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(default_behaviour)

BOOST_AUTO_TEST_CASE(replies_match_the_real_guest_for_every_captured_single_request) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    guest.behaviour.mount_exit_status = 32;  // the captured guest had no device to mount
    const auto endpoint = guest.listen_tcp();
    std::size_t compared = 0;
    run_io(io, [&]() -> asio::awaitable<void> {
        const auto captures = load_json("stereosd-exchanges.json");
        for (const auto& item : captures.as_array()) {
            const auto& c = item.as_object();
            const std::string name(c.at("case").as_string());
            const auto* sent_text = c.if_contains("sent");
            const auto* received_text = c.if_contains("received");
            if (!sent_text || !received_text || !sent_text->is_string() ||
                !received_text->is_string() || !c.if_contains("status") || c.at("status") != "ok")
                continue;
            // Summaries ("x100", "...") are not the literal bytes. Shutdown and half-close are
            // not single requests; each has its own test below.
            auto sent = latin1_bytes(sent_text->as_string());
            auto expected = latin1_bytes(received_text->as_string());
            const auto* sent_len = c.if_contains("sent_len");
            const auto* received_len = c.if_contains("received_len");
            if (!sent || !expected || expected->empty() || !sent_len || !received_len ||
                json::value_to<std::size_t>(*sent_len) != sent->size() ||
                json::value_to<std::size_t>(*received_len) != expected->size() ||
                name.find("shutdown") != std::string::npos ||
                name.find("half-close") != std::string::npos)
                continue;
            auto client = co_await connect(endpoint);
            BOOST_TEST_REQUIRE(!co_await client.send(*sent));
            BOOST_TEST_MESSAGE("capture " << name);
            for (const auto& expected_line : split_lines(*expected)) {
                const auto want = decode_reply(expected_line);
                const auto line = co_await client.expect_line();
                const auto got = decode_reply(line);
                BOOST_TEST(protocol::type_name(got) == protocol::type_name(want), name);
                BOOST_TEST(reply_to_of(got) == reply_to_of(want), name);
                BOOST_TEST(ok_of(got) == ok_of(want), name << ": " << line);
                ++compared;
            }
        }
    });
    BOOST_TEST(compared >= 45u, "only " << compared << " captured replies were compared");
}

BOOST_AUTO_TEST_CASE(health_reports_the_configured_state_agents_and_whole_seconds_of_uptime) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    guest.behaviour.health_state = lifecycle_state::degraded;
    guest.behaviour.agents = {{"claude-code", true, "s1", 2, ""}, {"cron", false, "", 0, "gone"}};
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        co_await client.send(get_health_line);
        auto health = expect_reply<protocol::health_payload>(co_await client.expect_line());
        BOOST_TEST(health.state == lifecycle_state::degraded);
        BOOST_TEST(health.agents == guest.behaviour.agents);
        BOOST_TEST(health.uptime_seconds == 0);
        co_await sleep_for(1100ms);
        co_await client.send(get_health_line);
        health = expect_reply<protocol::health_payload>(co_await client.expect_line());
        BOOST_TEST(health.uptime_seconds >= 1);
    });
}

BOOST_AUTO_TEST_CASE(pipelined_requests_are_answered_in_request_order) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        std::string batch;
        for (int i = 0; i < 100; ++i)
            batch += i % 2 == 0 ? ping_line : R"({"type":"x)" + std::to_string(i) + "\"}\n";
        co_await client.send(batch);
        for (int i = 0; i < 100; ++i) {
            const auto reply = decode_reply(co_await client.expect_line());
            if (i % 2 == 0) {
                BOOST_TEST(std::holds_alternative<protocol::pong_reply>(reply), "reply " << i);
            } else {
                BOOST_TEST(reply_to_of(reply) == "x" + std::to_string(i));
            }
        }
        BOOST_TEST(guest.received().size() == 100u);
    });
}

BOOST_AUTO_TEST_CASE(a_line_of_exactly_1_mib_with_its_newline_is_answered) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        const std::string max_line = padded_ping(protocol::max_line_bytes);
        co_await client.send(max_line);
        expect_reply<protocol::pong_reply>(co_await client.expect_line());
    });
}

BOOST_AUTO_TEST_CASE(a_line_one_byte_over_1_mib_resets_the_connection) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        auto written = send_on_the_side(client, padded_ping(protocol::max_line_bytes + 1));
        const auto end = co_await client.read_until_closed();
        co_await expect_a_reset(end, *written);
        BOOST_TEST(client.buffered().empty());
        // Other connections are not affected.
        auto other = co_await connect(endpoint);
        co_await other.send(ping_line);
        expect_reply<protocol::pong_reply>(co_await other.expect_line());
    });
}

BOOST_AUTO_TEST_CASE(requests_before_an_overlong_line_are_answered_before_the_reset) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        auto written = send_on_the_side(client, ping_line + padded_ping(2 * 1024 * 1024));
        expect_reply<protocol::pong_reply>(co_await client.expect_line());
        const auto end = co_await client.read_until_closed();
        co_await expect_a_reset(end, *written);
    });
}

BOOST_AUTO_TEST_CASE(a_last_line_without_newline_is_answered_at_half_close_then_the_guest_closes) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        const std::string unterminated = R"({"type":"ping"})";
        co_await client.send(unterminated);
        BOOST_TEST(co_await client.quiet_for(300ms));
        client.stream().shutdown(asio::socket_base::shutdown_send);
        expect_reply<protocol::pong_reply>(co_await client.expect_line());
        BOOST_TEST(co_await client.read_until_closed() == asio::error::eof);
    });
}

BOOST_AUTO_TEST_CASE(every_received_line_is_recorded_with_its_connection) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    std::vector<received_line> observed;
    guest.set_line_observer([&](const received_line& line) { observed.push_back(line); });
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto first = co_await connect(endpoint);
        auto second = co_await connect(endpoint);
        co_await first.send(ping_line);
        co_await first.expect_line();
        const std::string junk_then_health = "not json\r\n" + get_health_line;
        co_await second.send(junk_then_health);
        co_await second.expect_line();
        co_await second.expect_line();
        const std::string secret = encoded(protocol::secret_payload{"K", "v", 0});
        co_await first.send(secret);
        co_await first.expect_line();
    });
    const std::vector<received_line> expected = {
        {1, R"({"type":"ping"})"},
        {2, "not json"},
        {2, R"({"type":"get_health"})"},
        {1, R"({"type":"inject_secret","payload":{"name":"K","value":"v"}})"}};
    BOOST_TEST(guest.received() == expected, boost::test_tools::per_element());
    BOOST_TEST(observed == expected, boost::test_tools::per_element());
    BOOST_TEST(guest.connections_accepted() == 2u);
}

BOOST_AUTO_TEST_SUITE_END()

// ---- what the guest keeps: keys, mounts, uptimes, deliveries --------------------------------

namespace {

// Sends one request line and returns the guest's ack. Pass a named string: g++ 12 mishandles
// temporaries built in the argument list of an awaited coroutine.
asio::awaitable<protocol::ack_payload> send_for_ack(test_client& client, std::string_view line) {
    BOOST_TEST_REQUIRE(!co_await client.send(line));
    co_return expect_reply<protocol::ack_payload>(co_await client.expect_line());
}

// Read from the raw line: the host's codec refuses uptimes over 100 years, which is the point
// of scripting them.
asio::awaitable<std::int64_t> health_uptime(test_client& client) {
    co_await client.send(get_health_line);
    const auto line = co_await client.expect_line();
    const auto reply = boost::json::parse(line);
    BOOST_TEST_REQUIRE(reply.at("type").as_string() == "health", line);
    co_return reply.at("payload").at("uptime_seconds").to_number<std::int64_t>();
}

// Permission bits of a file, as ls shows them (0700...).
unsigned mode_of(const std::filesystem::path& path) {
    struct stat info {};
    BOOST_TEST_REQUIRE(::stat(path.c_str(), &info) == 0, path << ": " << std::strerror(errno));
    return info.st_mode & 07777;
}

std::string key_line(const std::string& user, const std::string& keys) {
    return encoded(protocol::ssh_key_payload{user, keys});
}

const std::string first_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFirst first@host";
const std::string second_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAISecond second@host";
const std::string never_written = "(never written)";

}  // namespace

BOOST_AUTO_TEST_SUITE(guest_state)

BOOST_AUTO_TEST_CASE(two_separate_key_requests_for_one_user_leave_only_the_second) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    const auto endpoint = guest.listen_tcp();
    const auto first = key_line("admin", first_key);
    const auto second = key_line("admin", second_key);
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        BOOST_TEST((co_await send_for_ack(client, first)).ok);
        BOOST_TEST((co_await send_for_ack(client, second)).ok);
    });
    BOOST_TEST(guest.authorized_keys("admin").value_or(never_written) == second_key);
    BOOST_TEST(!guest.authorized_keys("root").has_value());
    // Without a root directory the keys were only in memory: a reboot forgets them.
    guest.reboot();
    BOOST_TEST(!guest.authorized_keys("admin").has_value());
}

BOOST_AUTO_TEST_CASE(a_payload_of_several_keys_installs_them_all_since_only_its_start_is_checked) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    std::vector<std::string> delivered;
    guest.set_delivery_observer([&](const std::string& summary) { delivered.push_back(summary); });
    const auto endpoint = guest.listen_tcp();
    const std::string two_keys = first_key + "\n" + second_key + "\n";
    const std::string good_then_junk = second_key + "\nnot a key\n";
    const auto both = key_line("admin", two_keys);
    const auto bad_first_line = key_line("admin", "not a key\n" + first_key);
    const auto bad_second_line = key_line("root", good_then_junk);
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        BOOST_TEST((co_await send_for_ack(client, both)).ok);
        // A bad first line is refused and changes nothing; a bad later line is not even seen.
        BOOST_TEST(!(co_await send_for_ack(client, bad_first_line)).ok);
        BOOST_TEST(guest.authorized_keys("admin").value_or(never_written) == two_keys);
        BOOST_TEST((co_await send_for_ack(client, bad_second_line)).ok);
    });
    BOOST_TEST(guest.authorized_keys("root").value_or(never_written) == good_then_junk);
    const std::vector<std::string> expected = {"inject_ssh_key user=admin keys=2",
                                               "inject_ssh_key user=root keys=2"};
    BOOST_TEST(delivered == expected, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(with_a_root_directory_keys_replace_the_file_through_a_rename_owner_only) {
    asio::io_context io;
    temp_dir root;
    fake_guest guest(io.get_executor());
    guest.behaviour.root_directory = root.path();
    const auto endpoint = guest.listen_tcp();
    const auto ssh_dir = root.path() / "home" / "admin" / ".ssh";
    const auto file = ssh_dir / "authorized_keys";
    const auto earlier = root.path() / "earlier-authorized_keys";
    const auto admin_first = key_line("admin", first_key);
    const auto admin_second = key_line("admin", second_key);
    const auto root_first = key_line("root", first_key);
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        BOOST_TEST((co_await send_for_ack(client, admin_first)).ok);
        BOOST_TEST_REQUIRE(std::filesystem::exists(file));
        BOOST_TEST(read_text_file(file) == first_key);
        // A second name for the first file: a rewrite in place would change it too, a rename
        // leaves it alone.
        std::filesystem::create_hard_link(file, earlier);
        BOOST_TEST((co_await send_for_ack(client, admin_second)).ok);
        BOOST_TEST((co_await send_for_ack(client, root_first)).ok);
    });
    BOOST_TEST(read_text_file(file) == second_key);
    BOOST_TEST(read_text_file(earlier) == first_key);
    BOOST_TEST(!std::filesystem::exists(ssh_dir / "authorized_keys.tmp"));
    BOOST_TEST(mode_of(ssh_dir) == 0700u);
    BOOST_TEST(mode_of(file) == 0600u);
    const auto root_file = root.path() / "root" / ".ssh" / "authorized_keys";
    BOOST_TEST_REQUIRE(std::filesystem::exists(root_file));
    BOOST_TEST(read_text_file(root_file) == first_key);
    BOOST_TEST(mode_of(root_file) == 0600u);
    // The files outlive a reboot, and so does what the guest says it wrote.
    guest.reboot();
    BOOST_TEST(guest.authorized_keys("admin").value_or(never_written) == second_key);
    BOOST_TEST(read_text_file(file) == second_key);
}

BOOST_AUTO_TEST_CASE(a_failed_write_of_authorized_keys_is_the_acks_error) {
    asio::io_context io;
    temp_dir dir;
    // A plain file where the root directory should be: nothing can be created under it, even
    // by root.
    const auto not_a_directory = dir.write("not-a-directory", "x");
    fake_guest guest(io.get_executor());
    guest.behaviour.root_directory = not_a_directory;
    std::vector<std::string> delivered;
    guest.set_delivery_observer([&](const std::string& summary) { delivered.push_back(summary); });
    const auto endpoint = guest.listen_tcp();
    const auto request = key_line("admin", first_key);
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        const auto ack = co_await send_for_ack(client, request);
        BOOST_TEST(ack.reply_to == "inject_ssh_key");
        BOOST_TEST(!ack.ok);
        BOOST_TEST(ack.error == "write authorized_keys: " + std::string(std::strerror(ENOTDIR)));
    });
    BOOST_TEST(!guest.authorized_keys("admin").has_value());
    BOOST_TEST(delivered.empty());
}

BOOST_AUTO_TEST_CASE(an_identical_mount_twice_stacks_two_and_a_reboot_clears_them) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    std::vector<std::string> delivered;
    guest.set_delivery_observer([&](const std::string& summary) { delivered.push_back(summary); });
    const auto endpoint = guest.listen_tcp();
    const protocol::mount_payload work{"share0", "/work", "virtiofs", false};
    const protocol::mount_payload data{"share1", "/data", "9p", true};
    const auto mount_work = encoded(work);
    const auto mount_data = encoded(data);
    const auto mount_etc = encoded(protocol::mount_payload{"x", "/etc", "virtiofs"});
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        BOOST_TEST((co_await send_for_ack(client, mount_work)).ok);
        BOOST_TEST((co_await send_for_ack(client, mount_data)).ok);
        BOOST_TEST((co_await send_for_ack(client, mount_work)).ok);
        // Refused mounts are not mounted.
        BOOST_TEST(!(co_await send_for_ack(client, mount_etc)).ok);
        guest.behaviour.mount_exit_status = 32;
        BOOST_TEST(!(co_await send_for_ack(client, mount_work)).ok);
    });
    const std::vector<protocol::mount_payload> expected_mounts = {work, data, work};
    BOOST_TEST((guest.mounts() == expected_mounts));
    const std::vector<std::string> expected = {"mount tag=share0 path=/work stacked=1",
                                               "mount tag=share1 path=/data stacked=1",
                                               "mount tag=share0 path=/work stacked=2"};
    BOOST_TEST(delivered == expected, boost::test_tools::per_element());
    guest.reboot();
    BOOST_TEST(guest.mounts().empty());
}

BOOST_AUTO_TEST_CASE(an_uptime_sequence_cycles_through_health_replies_across_connections) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    constexpr auto huge = std::numeric_limits<std::int64_t>::max();
    guest.behaviour.uptime_sequence = {5, huge};
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto first = co_await connect(endpoint);
        BOOST_TEST(co_await health_uptime(first) == 5);  // a client's handshake sees it too
        BOOST_TEST(co_await health_uptime(first) == huge);
        BOOST_TEST(co_await health_uptime(first) == 5);
        // The turn is the guest's: a new connection carries on where the last reply left off.
        auto second = co_await connect(endpoint);
        BOOST_TEST(co_await health_uptime(second) == huge);
        // Other requests take no turn.
        co_await second.send(ping_line);
        expect_reply<protocol::pong_reply>(co_await second.expect_line());
        BOOST_TEST(co_await health_uptime(second) == 5);
        // A reboot starts the sequence again; an empty one reports the real uptime.
        BOOST_TEST(co_await health_uptime(second) == huge);
        guest.reboot();
        auto third = co_await connect(endpoint);
        BOOST_TEST(co_await health_uptime(third) == 5);
        guest.behaviour.uptime_sequence.clear();
        BOOST_TEST(co_await health_uptime(third) == 0);
    });
    // default_reply has no memory: it reports the uptime it is given.
    const auto reply = default_reply(R"({"type":"get_health"})", guest.behaviour, 42);
    BOOST_TEST(std::get<protocol::health_payload>(reply).uptime_seconds == 42);
}

BOOST_AUTO_TEST_CASE(the_delivery_observer_names_accepted_deliveries_and_never_a_value) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    std::vector<std::string> delivered;
    guest.set_delivery_observer([&](const std::string& summary) { delivered.push_back(summary); });
    const auto endpoint = guest.listen_tcp();
    const std::string secret_value = "s3cr3t-value-never-observed";
    const auto secret = encoded(protocol::secret_payload{"API_KEY", secret_value});
    const auto config = encoded(protocol::config_payload{"token = \"" + secret_value + "\""});
    const auto bad_secret = encoded(protocol::secret_payload{"a/b", secret_value});
    const auto unknown_user = key_line("nobody", first_key);
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        BOOST_TEST((co_await send_for_ack(client, secret)).ok);
        BOOST_TEST((co_await send_for_ack(client, config)).ok);
        // Refused: no delivery.
        BOOST_TEST(!(co_await send_for_ack(client, bad_secret)).ok);
        BOOST_TEST(!(co_await send_for_ack(client, unknown_user)).ok);
        // Answered, but not deliveries.
        co_await client.send(ping_line);
        co_await client.expect_line();
        co_await health_uptime(client);
    });
    const std::vector<std::string> expected = {"inject_secret name=API_KEY", "set_config"};
    BOOST_TEST(delivered == expected, boost::test_tools::per_element());
    for (const auto& summary : delivered)
        BOOST_TEST(summary.find(secret_value) == std::string::npos, summary);
}

BOOST_AUTO_TEST_CASE(a_lost_reply_still_takes_effect_and_a_scripted_reply_takes_none) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    guest.faults.never_reply = true;
    const auto endpoint = guest.listen_tcp();
    const auto mount = encoded(protocol::mount_payload{"share0", "/work", "virtiofs", false});
    const auto key = key_line("admin", first_key);
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        co_await client.send(mount);
        BOOST_TEST(co_await client.quiet_for(300ms));
        BOOST_TEST(guest.mounts().size() == 1u);  // done, though the host never heard so

        guest.faults.never_reply = false;
        guest.expect("mount").reply(protocol::ack_payload{"mount", true, {}});
        guest.expect("inject_ssh_key").no_reply();
        guest.expect("mount").reply_after(10ms);  // the guest's own answer, just later
        BOOST_TEST((co_await send_for_ack(client, mount)).ok);
        co_await client.send(key);
        BOOST_TEST((co_await send_for_ack(client, mount)).ok);
        BOOST_TEST(guest.script_finished());
    });
    BOOST_TEST(guest.mounts().size() == 2u);
    BOOST_TEST(!guest.authorized_keys("admin").has_value());
}

BOOST_AUTO_TEST_SUITE_END()

// ---- shutdown, reboot and the actions ---------------------------------------------------------

BOOST_AUTO_TEST_SUITE(lifecycle_of_the_guest)

BOOST_AUTO_TEST_CASE(shutdown_is_acked_then_every_connection_closes_and_new_ones_are_refused) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    guest.behaviour.shutdown_linger = 500ms;  // room to ask get_health in between, even on ASan
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto a = co_await connect(endpoint);
        auto b = co_await connect(endpoint);
        auto idle = co_await connect(endpoint);
        const std::string shutdown = encoded(protocol::shutdown_payload{"test"});
        co_await b.send(shutdown);
        const auto ack = expect_reply<protocol::ack_payload>(co_await b.expect_line());
        BOOST_TEST(ack.reply_to == "shutdown");
        BOOST_TEST(ack.ok);
        BOOST_TEST(guest.is_shut_down());
        co_await a.send(get_health_line);
        const auto health = expect_reply<protocol::health_payload>(co_await a.expect_line());
        BOOST_TEST(health.state == lifecycle_state::shutdown);
        for (auto* client : {&a, &b, &idle}) {
            const auto end = co_await client->read_until_closed(5s);
            BOOST_TEST((end == asio::error::eof || end == asio::error::connection_reset),
                       end.message());
        }
        auto refused = co_await try_connect(endpoint);
        BOOST_TEST_REQUIRE(refused.has_error());
        BOOST_TEST(refused.error() == asio::error::connection_refused);
        BOOST_TEST(guest.open_connections() == 0u);

        guest.reboot();
        BOOST_TEST(!guest.is_shut_down());
        auto again = co_await connect(endpoint);
        co_await again.send(get_health_line);
        const auto after = expect_reply<protocol::health_payload>(co_await again.expect_line());
        BOOST_TEST(after.state == lifecycle_state::ready);
        BOOST_TEST(after.uptime_seconds == 0);
    });
}

BOOST_AUTO_TEST_CASE(reboot_resets_uptime_and_closes_connections) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        co_await sleep_for(1100ms);
        auto client = co_await connect(endpoint);
        co_await client.send(get_health_line);
        BOOST_TEST(
            expect_reply<protocol::health_payload>(co_await client.expect_line()).uptime_seconds >=
            1);
        guest.reboot(lifecycle_state::booting);
        BOOST_TEST(co_await client.read_until_closed(5s) == asio::error::eof);
        auto fresh = co_await connect(endpoint);
        co_await fresh.send(get_health_line);
        const auto health = expect_reply<protocol::health_payload>(co_await fresh.expect_line());
        BOOST_TEST(health.uptime_seconds == 0);
        BOOST_TEST(health.state == lifecycle_state::booting);
    });
}

BOOST_AUTO_TEST_CASE(close_connections_keeps_listening_and_keeps_uptime) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        co_await sleep_for(1100ms);
        auto client = co_await connect(endpoint);
        co_await client.send(ping_line);
        co_await client.expect_line();
        guest.close_connections();
        BOOST_TEST(co_await client.read_until_closed(5s) == asio::error::eof);
        auto fresh = co_await connect(endpoint);
        co_await fresh.send(get_health_line);
        BOOST_TEST(
            expect_reply<protocol::health_payload>(co_await fresh.expect_line()).uptime_seconds >=
            1);
        BOOST_TEST(guest.connections_accepted() == 2u);
    });
}

BOOST_AUTO_TEST_CASE(push_lifecycle_reaches_every_connection_and_sets_the_health_state) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    const auto tcp = guest.listen_tcp();
    temp_dir dir;
    const auto unix_endpoint = guest.listen_unix(dir.file("guest.sock"));
    run_io(io, [&]() -> asio::awaitable<void> {
        auto a = co_await connect(tcp);
        auto b = co_await connect(unix_endpoint);
        co_await a.send(ping_line);  // both connections are being served once these answer
        co_await b.send(ping_line);
        co_await a.expect_line();
        co_await b.expect_line();
        guest.push_lifecycle(lifecycle_state::healthy, "all agents up");
        for (auto* client : {&a, &b}) {
            const auto event =
                expect_reply<protocol::lifecycle_payload>(co_await client->expect_line());
            BOOST_TEST(event.state == lifecycle_state::healthy);
            BOOST_TEST(event.message == "all agents up");
        }
        guest.push_raw("raw bytes\n");
        BOOST_TEST(co_await a.expect_line() == "raw bytes");
        BOOST_TEST(co_await b.expect_line() == "raw bytes");
        co_await a.send(get_health_line);
        BOOST_TEST(expect_reply<protocol::health_payload>(co_await a.expect_line()).state ==
                   lifecycle_state::healthy);
    });
}

BOOST_AUTO_TEST_CASE(stop_lets_the_io_context_run_out_of_work_and_removes_socket_files) {
    asio::io_context io;
    temp_dir dir;
    const auto path = dir.file("guest.sock");
    fake_guest guest(io.get_executor());
    const auto endpoint = guest.listen_unix(path);
    const auto hybrid = guest.listen_hybrid(dir.file("hybrid.sock"));
    guest.faults.lifecycle_flood_per_second = 5;
    std::optional<test_client> kept;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            kept.emplace(co_await connect(endpoint));
            co_await kept->send(ping_line);
            co_await kept->expect_line();
            guest.stop();
            BOOST_TEST(co_await kept->read_until_closed(5s) == asio::error::eof);
            kept.reset();
        },
        stereos::transport::rethrow_if_failed);
    const auto ran = io.run_for(30s);
    BOOST_TEST(io.stopped(), "the io_context still had work after stop() (" << ran << " handlers)");
    BOOST_TEST(!std::filesystem::exists(path));
    BOOST_TEST(!std::filesystem::exists(dir.file("hybrid.sock")));
}

BOOST_AUTO_TEST_CASE(destroying_a_guest_with_open_connections_is_safe) {
    asio::io_context io;
    auto guest = std::make_unique<fake_guest>(io.get_executor());
    guest->faults.reply_delay = 10s;
    const auto endpoint = guest->listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        co_await client.send(ping_line);
        co_await sleep_for(100ms);
        guest.reset();
        BOOST_TEST(co_await client.read_until_closed(5s) == asio::error::eof);
    });
}

BOOST_AUTO_TEST_CASE(many_guests_in_one_process_keep_their_own_state) {
    asio::io_context io;
    std::vector<std::unique_ptr<fake_guest>> guests;
    std::vector<std::string> endpoints;
    for (int i = 0; i < 50; ++i) {
        guests.push_back(std::make_unique<fake_guest>(io.get_executor()));
        endpoints.push_back(guests.back()->listen_tcp());
    }
    guests[7]->behaviour.health_state = lifecycle_state::degraded;
    run_io(io, [&]() -> asio::awaitable<void> {
        for (std::size_t i = 0; i < guests.size(); ++i) {
            auto client = co_await connect(endpoints[i]);
            co_await client.send(get_health_line);
            const auto health =
                expect_reply<protocol::health_payload>(co_await client.expect_line());
            BOOST_TEST(
                (health.state == (i == 7 ? lifecycle_state::degraded : lifecycle_state::ready)),
                "guest " << i);
        }
        for (const auto& guest : guests) {
            BOOST_TEST(guest->received().size() == 1u);
            BOOST_TEST(guest->connections_accepted() == 1u);
        }
    });
}

BOOST_AUTO_TEST_SUITE_END()

// ---- hybrid vsock ---------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(vm_guest_daemon)

BOOST_AUTO_TEST_CASE(the_shutdown_observer_runs_once_every_connection_is_closed) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    guest.behaviour.shutdown_linger = 200ms;
    int calls = 0;
    std::size_t open_at_call = 99;
    guest.set_shutdown_observer([&] {
        ++calls;
        open_at_call = guest.open_connections();
    });
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        const std::string shutdown = encoded(protocol::shutdown_payload{"test"});
        co_await client.send(shutdown);
        BOOST_TEST(expect_reply<protocol::ack_payload>(co_await client.expect_line()).ok);
        BOOST_TEST(calls == 0);  // acked first; the machine goes down after the linger
        BOOST_TEST(co_await client.read_until_closed(5s) == asio::error::eof);
        co_await sleep_for(100ms);
    });
    BOOST_TEST(calls == 1);
    BOOST_TEST(open_at_call == 0u);
}

BOOST_AUTO_TEST_CASE(request_summaries_name_things_and_never_carry_values) {
    const std::string secret_value = "s3cr3t-value-never-logged";
    BOOST_TEST(request_summary(encoded(protocol::secret_payload{"API_KEY", secret_value, 0})) ==
               "inject_secret name=API_KEY");
    BOOST_TEST(request_summary(encoded(
                   protocol::config_payload{"token = \"" + secret_value + "\""})) == "set_config");
    BOOST_TEST(request_summary(encoded(protocol::ssh_key_payload{"admin", "ssh-ed25519 AAAA"})) ==
               "inject_ssh_key user=admin");
    BOOST_TEST(request_summary(encoded(protocol::mount_payload{"share0", "/w", "virtiofs"})) ==
               "mount tag=share0");
    BOOST_TEST(request_summary(R"({"type":"ping"})") == "ping");
    BOOST_TEST(request_summary(R"({"type":"inject_secret","payload":{"value":"x"}})") ==
               "inject_secret");
    BOOST_TEST(request_summary("not json") == "unparsable");
    BOOST_TEST(request_summary(R"(["type"])") == "unparsable");
}

// A real AF_VSOCK listener binds and listens here too; only connecting needs a VM (the
// tests/vm cases connect to it through the guest kernel's loopback).
BOOST_AUTO_TEST_CASE(a_vsock_listener_holds_its_port_until_stopped) {
    const int probe = ::socket(AF_VSOCK, SOCK_STREAM, 0);
    if (probe < 0) {
        BOOST_TEST_MESSAGE("no AF_VSOCK sockets on this machine: " << std::strerror(errno));
        return;
    }
    auto bind_probe = [probe](std::uint32_t port) {
        sockaddr_vm address{};
        address.svm_family = AF_VSOCK;
        address.svm_cid = VMADDR_CID_ANY;
        address.svm_port = port;
        return ::bind(probe, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0
                   ? 0
                   : errno;
    };
    asio::io_context io;
    fake_guest guest(io.get_executor());
    // A port from the dynamic range that nothing else on this machine is likely to hold.
    const std::uint32_t port = 40000 + static_cast<std::uint32_t>(::getpid() % 20000);
    BOOST_TEST(guest.listen_vsock(VMADDR_CID_ANY, port) == "vsock:ANY:" + std::to_string(port));
    BOOST_TEST(bind_probe(port) == EADDRINUSE);
    guest.stop();
    io.run_for(1s);
    BOOST_TEST(bind_probe(port) == 0);
    ::close(probe);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(hybrid_vsock)

BOOST_AUTO_TEST_CASE(connect_to_the_right_port_gets_ok_and_then_the_guest_protocol) {
    asio::io_context io;
    temp_dir dir;
    fake_guest guest(io.get_executor());
    const auto endpoint = guest.listen_hybrid(dir.file("v.sock"), 1024);
    BOOST_TEST(endpoint == "hybrid:" + dir.file("v.sock") + ":1024");
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect_hybrid(endpoint);
        co_await client.send(ping_line);
        expect_reply<protocol::pong_reply>(co_await client.expect_line());

        // A request pipelined right behind the handshake line is not lost.
        auto eager = co_await connect(endpoint);
        const std::string handshake_and_request = "CONNECT 1024\n" + get_health_line;
        co_await eager.send(handshake_and_request);
        BOOST_TEST((co_await eager.expect_line()).starts_with("OK "));
        expect_reply<protocol::health_payload>(co_await eager.expect_line());
        BOOST_TEST(guest.received().size() == 2u);  // handshakes are not guest lines
    });
}

BOOST_AUTO_TEST_CASE(connect_to_another_port_is_closed_without_an_answer) {
    asio::io_context io;
    temp_dir dir;
    fake_guest guest(io.get_executor());
    const auto endpoint = guest.listen_hybrid(dir.file("v.sock"), 1024);
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        const std::string wrong_port = "CONNECT 52\n";
        co_await client.send(wrong_port);
        BOOST_TEST(co_await client.read_until_closed(5s) == asio::error::eof);
        BOOST_TEST(client.buffered().empty());
        BOOST_TEST(guest.received().empty());
    });
}

BOOST_AUTO_TEST_SUITE_END()

// ---- fault switches -------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(faults)

BOOST_AUTO_TEST_CASE(reply_delay_delays_each_reply_one_request_at_a_time) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    guest.faults.reply_delay = 300ms;
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        const auto start = clock_type::now();
        const std::string two_pings = ping_line + ping_line;
        co_await client.send(two_pings);
        co_await client.expect_line();
        BOOST_TEST((clock_type::now() - start >= 300ms));
        co_await client.expect_line();
        BOOST_TEST((clock_type::now() - start >= 600ms));
    });
}

BOOST_AUTO_TEST_CASE(never_reply_records_requests_and_answers_nothing) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    guest.faults.never_reply = true;
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        const std::string two_requests = ping_line + get_health_line;
        co_await client.send(two_requests);
        BOOST_TEST(co_await client.quiet_for(500ms));
        BOOST_TEST(guest.received().size() == 2u);
        guest.faults.never_reply = false;  // switches apply from the next request on
        co_await client.send(ping_line);
        expect_reply<protocol::pong_reply>(co_await client.expect_line());
    });
}

BOOST_AUTO_TEST_CASE(accept_and_hang_never_reads_so_the_peers_writes_back_up) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    guest.faults.accept_and_hang = true;
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        const std::string lots(64 * 1024 * 1024, '\n');
        asio::steady_timer timer(co_await asio::this_coro::executor, 2s);
        auto result = co_await (asio::async_write(client.stream(), asio::buffer(lots), use_tuple) ||
                                timer.async_wait(use_tuple));
        BOOST_TEST(result.index() == 1u, "64 MiB were written to a guest that never reads");
        BOOST_TEST(guest.connections_accepted() == 1u);
        BOOST_TEST(guest.open_connections() == 1u);
        BOOST_TEST(guest.received().empty());
        BOOST_TEST(client.buffered().empty());
    });
}

BOOST_AUTO_TEST_CASE(refusing_connections_for_a_while_then_listening_again_on_the_same_address) {
    asio::io_context io;
    temp_dir dir;
    fake_guest guest(io.get_executor());
    const auto tcp = guest.listen_tcp();
    const auto unix_endpoint = guest.listen_unix(dir.file("g.sock"));
    run_io(io, [&]() -> asio::awaitable<void> {
        auto open_before = co_await connect(tcp);
        co_await open_before.send(ping_line);  // accepted, not just in the backlog
        co_await open_before.expect_line();
        guest.refuse_connections_for(1500ms);
        for (const auto& endpoint : {tcp, unix_endpoint}) {
            auto refused = co_await try_connect(endpoint);
            BOOST_TEST_REQUIRE(refused.has_error(), endpoint);
            BOOST_TEST(refused.error() == asio::error::connection_refused, endpoint);
        }
        // Connections already open are untouched.
        co_await open_before.send(ping_line);
        expect_reply<protocol::pong_reply>(co_await open_before.expect_line());
        for (const auto& endpoint : {tcp, unix_endpoint}) {
            const auto deadline = clock_type::now() + 10s;
            std::optional<test_client> client;
            while (!client && clock_type::now() < deadline) {
                auto attempt = co_await try_connect(endpoint);
                if (attempt)
                    client.emplace(std::move(*attempt));
                else
                    co_await sleep_for(50ms);
            }
            BOOST_TEST_REQUIRE(client.has_value(), endpoint << " never listened again");
            co_await client->send(ping_line);
            expect_reply<protocol::pong_reply>(co_await client->expect_line());
        }
    });
}

BOOST_AUTO_TEST_CASE(close_after_n_lines_closes_on_the_nth_line_without_answering_it) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    guest.faults.close_after_lines = 2;
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        co_await client.send(ping_line);
        expect_reply<protocol::pong_reply>(co_await client.expect_line());
        co_await client.send(get_health_line);
        BOOST_TEST(co_await client.read_until_closed(5s) == asio::error::eof);
        BOOST_TEST(client.buffered().empty());
        BOOST_TEST(guest.received().size() == 2u);
    });
}

BOOST_AUTO_TEST_CASE(drop_mid_reply_writes_half_a_line_then_closes) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    guest.faults.drop_mid_reply = true;
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        co_await client.send(ping_line);
        BOOST_TEST(co_await client.read_until_closed(5s) == asio::error::eof);
        const auto full = protocol::encode(protocol::guest_message{protocol::pong_reply{}}).value();
        BOOST_TEST(!client.buffered().empty());
        BOOST_TEST(client.buffered().size() < full.size());
        BOOST_TEST(full.starts_with(client.buffered()));
    });
}

BOOST_AUTO_TEST_CASE(stall_mid_reply_writes_half_a_line_then_stays_open_and_silent) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    guest.faults.stall_mid_reply = true;
    guest.faults.lifecycle_flood_per_second = 50;  // pushes must not reach a stalled connection
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        co_await client.send(ping_line);
        // Lifecycle pushes may come before the reply; the half line is what follows the last
        // full line, and nothing comes after it.
        BOOST_TEST(co_await client.read_until_closed(1500ms) == asio::error::timed_out);
        const std::string first = client.buffered();
        const auto half = first.substr(first.rfind('\n') + 1);
        const auto full = protocol::encode(protocol::guest_message{protocol::pong_reply{}}).value();
        BOOST_TEST_REQUIRE(!half.empty());
        BOOST_TEST(half.size() < full.size());
        BOOST_TEST(full.starts_with(half));
        // Still open, still reading and recording, never answering.
        co_await client.send(get_health_line);
        BOOST_TEST(co_await client.read_until_closed(1500ms) == asio::error::timed_out);
        BOOST_TEST(client.buffered() == first);
        BOOST_TEST(guest.received().size() == 2u);
        BOOST_TEST(guest.open_connections() == 1u);
        // When the peer closes, so does the guest.
        client.stream().shutdown(generic_stream::socket::shutdown_send);
        BOOST_TEST(co_await client.read_until_closed(5s) == asio::error::eof);
        for (int i = 0; i < 100 && guest.open_connections() != 0; ++i)
            co_await sleep_for(10ms);
        BOOST_TEST(guest.open_connections() == 0u);
    });
}

BOOST_AUTO_TEST_CASE(connection_lifetime_closes_every_connection_that_long_after_accepting_it) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    guest.faults.connection_lifetime = 300ms;
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        for (int round = 1; round <= 2; ++round) {
            const auto start = clock_type::now();
            auto client = co_await connect(endpoint);
            co_await client.send(ping_line);
            expect_reply<protocol::pong_reply>(co_await client.expect_line());
            BOOST_TEST(co_await client.read_until_closed(10s) == asio::error::eof);
            BOOST_TEST((clock_type::now() - start >= 300ms));
            BOOST_TEST(guest.connections_accepted() == static_cast<std::size_t>(round));
        }
        // The switch is read on accept: off again, connections stay.
        guest.faults.connection_lifetime = 0ms;
        auto client = co_await connect(endpoint);
        BOOST_TEST(co_await client.quiet_for(800ms));
        co_await client.send(ping_line);
        expect_reply<protocol::pong_reply>(co_await client.expect_line());
    });
}

BOOST_AUTO_TEST_CASE(garbage_replies_are_not_json) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    guest.faults.garbage_replies = true;
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        co_await client.send(ping_line);
        const auto line = co_await client.expect_line();
        const auto decoded = protocol::decode_guest_line(line);
        BOOST_TEST_REQUIRE(decoded.has_error());
        BOOST_TEST((decoded.error().code == protocol::error::invalid_json));
    });
}

BOOST_AUTO_TEST_CASE(overlong_replies_are_lines_over_1_mib) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    guest.faults.overlong_replies = true;
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        co_await client.send(ping_line);
        const auto line = co_await client.expect_line();
        BOOST_TEST(line.size() + 1 > protocol::max_line_bytes);
        BOOST_TEST(line.size() + 1 == 2u * 1024 * 1024);
    });
}

BOOST_AUTO_TEST_CASE(wrong_reply_kind_answers_ack_to_ping_and_pong_to_the_rest) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    guest.faults.wrong_reply_kind = true;
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        const std::string requests =
            ping_line + get_health_line + encoded(protocol::config_payload{"x = 1"});
        co_await client.send(requests);
        expect_reply<protocol::ack_payload>(co_await client.expect_line());
        expect_reply<protocol::pong_reply>(co_await client.expect_line());
        expect_reply<protocol::pong_reply>(co_await client.expect_line());
    });
}

BOOST_AUTO_TEST_CASE(out_of_order_swaps_each_pair_of_replies) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    guest.faults.out_of_order_replies = true;
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        const std::string requests =
            ping_line + get_health_line + "{\"type\":\"a\"}\n{\"type\":\"b\"}\n";
        co_await client.send(requests);
        expect_reply<protocol::health_payload>(co_await client.expect_line());
        expect_reply<protocol::pong_reply>(co_await client.expect_line());
        BOOST_TEST(expect_reply<protocol::ack_payload>(co_await client.expect_line()).reply_to ==
                   "b");
        BOOST_TEST(expect_reply<protocol::ack_payload>(co_await client.expect_line()).reply_to ==
                   "a");
    });
}

BOOST_AUTO_TEST_CASE(lifecycle_flood_pushes_events_to_idle_connections_until_switched_off) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    guest.behaviour.health_state = lifecycle_state::healthy;
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        co_await client.send(ping_line);
        co_await client.expect_line();
        guest.faults.lifecycle_flood_per_second = 20;  // switched on while connected
        for (int i = 0; i < 10; ++i) {
            const auto event =
                expect_reply<protocol::lifecycle_payload>(co_await client.expect_line(5s));
            BOOST_TEST(event.state == lifecycle_state::healthy);
        }
        guest.faults.lifecycle_flood_per_second = 0;
        // Drain what was already on the way, then it stays quiet.
        while (!co_await client.quiet_for(1s))
            co_await client.expect_line();
        co_await client.send(ping_line);
        expect_reply<protocol::pong_reply>(co_await client.expect_line());
    });
}

BOOST_AUTO_TEST_SUITE_END()

// ---- scripts --------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(scripts)

BOOST_AUTO_TEST_CASE(a_script_is_played_in_order_and_reports_completion) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    guest.expect("ping").reply_after(300ms).then_push_lifecycle(lifecycle_state::healthy, "up");
    guest.expect("set_config").reply(protocol::ack_payload{"set_config", false, "bad toml"});
    guest.expect("get_health").no_reply();
    guest.expect("inject_secret").reply_raw("{\"type\":\"pong\"}\n").then_close();
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        const auto start = clock_type::now();
        co_await client.send(ping_line);
        expect_reply<protocol::pong_reply>(co_await client.expect_line());
        BOOST_TEST((clock_type::now() - start >= 300ms));
        const auto event = expect_reply<protocol::lifecycle_payload>(co_await client.expect_line());
        BOOST_TEST(event.state == lifecycle_state::healthy);
        BOOST_TEST(guest.behaviour.health_state == lifecycle_state::healthy);

        const std::string config = encoded(protocol::config_payload{"x = 1"});
        co_await client.send(config);
        const auto ack = expect_reply<protocol::ack_payload>(co_await client.expect_line());
        BOOST_TEST(!ack.ok);
        BOOST_TEST(ack.error == "bad toml");

        co_await client.send(get_health_line);
        BOOST_TEST(co_await client.quiet_for(300ms));
        BOOST_TEST(!guest.script_finished());
        BOOST_TEST(guest.script_steps_left() == 1u);

        const std::string secret = encoded(protocol::secret_payload{"K", "v", 0});
        co_await client.send(secret);
        expect_reply<protocol::pong_reply>(co_await client.expect_line());
        BOOST_TEST(co_await client.read_until_closed(5s) == asio::error::eof);

        BOOST_TEST(guest.script_finished());
        BOOST_TEST(guest.script_violations().empty());

        // Past the script, default behaviour.
        auto next = co_await connect(endpoint);
        co_await next.send(get_health_line);
        expect_reply<protocol::health_payload>(co_await next.expect_line());
    });
}

BOOST_AUTO_TEST_CASE(an_unexpected_request_is_a_violation_and_the_step_keeps_waiting) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    guest.expect("set_config").reply(protocol::ack_payload{"set_config", false, "scripted"});
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        co_await client.send(ping_line);
        expect_reply<protocol::pong_reply>(co_await client.expect_line());  // default answer
        BOOST_TEST_REQUIRE(guest.script_violations().size() == 1u);
        BOOST_TEST(guest.script_violations()[0].find("expected \"set_config\", got \"ping\"") !=
                   std::string::npos);
        BOOST_TEST(!guest.script_finished());
        const std::string config = encoded(protocol::config_payload{"x"});
        co_await client.send(config);
        BOOST_TEST(expect_reply<protocol::ack_payload>(co_await client.expect_line()).error ==
                   "scripted");
        BOOST_TEST(guest.script_finished());
    });
}

BOOST_AUTO_TEST_CASE(a_scripted_shutdown_ack_does_not_shut_the_guest_down) {
    asio::io_context io;
    fake_guest guest(io.get_executor());
    guest.expect("shutdown").reply(protocol::ack_payload{"shutdown", false, "busy"});
    const auto endpoint = guest.listen_tcp();
    run_io(io, [&]() -> asio::awaitable<void> {
        auto client = co_await connect(endpoint);
        const std::string shutdown = encoded(protocol::shutdown_payload{});
        co_await client.send(shutdown);
        BOOST_TEST(!expect_reply<protocol::ack_payload>(co_await client.expect_line()).ok);
        BOOST_TEST(!guest.is_shut_down());
        co_await client.send(ping_line);
        expect_reply<protocol::pong_reply>(co_await client.expect_line());
    });
}

BOOST_AUTO_TEST_SUITE_END()

// ---- the command line -----------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(command_line)

BOOST_AUTO_TEST_CASE(durations_need_a_unit) {
    BOOST_TEST(parse_duration("250ms").count() == 250);
    BOOST_TEST(parse_duration("2s").count() == 2000);
    BOOST_TEST(parse_duration("1.5s").count() == 1500);
    BOOST_TEST(parse_duration("1m").count() == 60'000);
    BOOST_TEST(parse_duration("0ms").count() == 0);
    BOOST_CHECK_THROW(parse_duration("250"), std::invalid_argument);
    BOOST_CHECK_THROW(parse_duration("ms"), std::invalid_argument);
    BOOST_CHECK_THROW(parse_duration("5 h"), std::invalid_argument);
}

BOOST_AUTO_TEST_CASE(vsock_listen_specs_take_any_or_a_cid_and_expand_by_port) {
    const auto any = parse_listen_spec("vsock:ANY:1024");
    BOOST_TEST((any.what == listen_spec::kind::vsock && any.vsock_cid == any_vsock_cid &&
                any.vsock_port == 1024));
    const auto cid = parse_listen_spec("vsock:3:5000");
    BOOST_TEST((cid.vsock_cid == 3u && cid.vsock_port == 5000u));
    const auto ports = expand_listen_spec(any, 2);
    BOOST_TEST((ports[0].vsock_port == 1024u && ports[1].vsock_port == 1025u));
    BOOST_CHECK_THROW(parse_listen_spec("vsock::1024"), std::invalid_argument);
    BOOST_CHECK_THROW(parse_listen_spec("vsock:ANY:99999999999"), std::invalid_argument);
}

BOOST_AUTO_TEST_CASE(listen_specs_parse_and_expand_by_count) {
    const auto tcp = parse_listen_spec("tcp:127.0.0.1:7000");
    BOOST_TEST((tcp.what == listen_spec::kind::tcp && tcp.host == "127.0.0.1" && tcp.port == 7000));
    const auto v6 = parse_listen_spec("tcp:[::1]:0");
    BOOST_TEST((v6.host == "::1" && v6.port == 0));
    const auto hybrid = parse_listen_spec("hybrid:/run/a:b/v.sock:1024");
    BOOST_TEST((hybrid.what == listen_spec::kind::hybrid && hybrid.path == "/run/a:b/v.sock" &&
                hybrid.vsock_port == 1024));
    BOOST_CHECK_THROW(parse_listen_spec("vsock:3"), std::invalid_argument);
    BOOST_CHECK_THROW(parse_listen_spec("vsock:host:1024"), std::invalid_argument);
    BOOST_CHECK_THROW(parse_listen_spec("ftp:127.0.0.1:21"), std::invalid_argument);
    BOOST_CHECK_THROW(parse_listen_spec("tcp:127.0.0.1:99999"), std::invalid_argument);

    const auto ports = expand_listen_spec(tcp, 3);
    BOOST_TEST_REQUIRE(ports.size() == 3u);
    BOOST_TEST((ports[0].port == 7000 && ports[2].port == 7002));
    const auto paths = expand_listen_spec(parse_listen_spec("unix:/tmp/g%d.sock"), 2);
    BOOST_TEST((paths[0].path == "/tmp/g0.sock" && paths[1].path == "/tmp/g1.sock"));
    BOOST_CHECK_THROW(expand_listen_spec(parse_listen_spec("unix:/tmp/g.sock"), 2),
                      std::invalid_argument);
    BOOST_CHECK_THROW(expand_listen_spec(parse_listen_spec("tcp:127.0.0.1:65535"), 2),
                      std::invalid_argument);
}

BOOST_AUTO_TEST_CASE(lifecycle_scripts_parse_into_sorted_events) {
    const auto events = parse_lifecycle_script("2s:ready,1s:booting,2500ms:healthy");
    const std::vector<scheduled_lifecycle> expected = {{1000ms, lifecycle_state::booting},
                                                       {2000ms, lifecycle_state::ready},
                                                       {2500ms, lifecycle_state::healthy}};
    BOOST_TEST((events == expected));
    BOOST_CHECK_THROW(parse_lifecycle_script("1s:zombie"), std::invalid_argument);
    BOOST_CHECK_THROW(parse_lifecycle_script("1s"), std::invalid_argument);
    BOOST_TEST(parse_lifecycle_script("").empty());
}

BOOST_AUTO_TEST_CASE(uptime_sequences_are_comma_separated_64_bit_integers) {
    const std::vector<std::int64_t> expected = {5, 9223372036854775807, -1};
    BOOST_TEST(parse_uptime_sequence("5,9223372036854775807,-1") == expected,
               boost::test_tools::per_element());
    BOOST_TEST(parse_uptime_sequence("7") == std::vector<std::int64_t>{7},
               boost::test_tools::per_element());
    BOOST_CHECK_THROW(parse_uptime_sequence("9223372036854775808"), std::invalid_argument);
    BOOST_CHECK_THROW(parse_uptime_sequence("5,,9"), std::invalid_argument);
    BOOST_CHECK_THROW(parse_uptime_sequence("5,"), std::invalid_argument);
    BOOST_CHECK_THROW(parse_uptime_sequence("5s"), std::invalid_argument);
    BOOST_CHECK_THROW(parse_uptime_sequence(""), std::invalid_argument);
}

BOOST_AUTO_TEST_SUITE_END()

// ---- the program ----------------------------------------------------------------------------

namespace {

// stereos-fakeguest as a child process, its output in `dir`; killed if still running at the
// end of the test.
stereos::testing::child_process start_fakeguest(const temp_dir& dir, const std::string& label,
                                                std::vector<std::string> args) {
    args.insert(args.begin(), STEREOS_FAKEGUEST_PROGRAM);
    return stereos::testing::child_process(std::move(args), dir.path(), label);
}

// The next line the program prints; fails the test if none comes.
std::string expect_stdout_line(stereos::testing::child_process& process) {
    auto line = process.next_stdout_line(20s);
    BOOST_TEST_REQUIRE(line.has_value(), "no line on stdout; stderr: " << process.stderr_text());
    return std::move(*line);
}

// The endpoints of the next `count` lines, each "listening <endpoint>".
std::vector<std::string> read_listening_lines(stereos::testing::child_process& process,
                                              std::size_t count) {
    std::vector<std::string> endpoints;
    while (endpoints.size() < count) {
        const auto line = expect_stdout_line(process);
        BOOST_TEST_REQUIRE(line.starts_with("listening "), line);
        endpoints.push_back(line.substr(10));
    }
    return endpoints;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(program)

BOOST_AUTO_TEST_CASE(prints_listening_lines_serves_each_guest_records_and_exits_0_on_sigterm) {
    asio::io_context io;
    temp_dir dir;
    const auto record = dir.file("received.ndjson");
    auto process =
        start_fakeguest(dir, "fakeguest",
                        {"--listen", "tcp:127.0.0.1:0", "--listen", "unix:" + dir.file("g%d.sock"),
                         "--listen", "hybrid:" + dir.file("h.sock") + ":1024", "--count", "1",
                         "--health-state", "healthy", "--record", record});
    run_io(io, [&]() -> asio::awaitable<void> {
        const auto endpoints = read_listening_lines(process, 3);
        BOOST_TEST(endpoints[0].starts_with("tcp:127.0.0.1:"));
        BOOST_TEST(endpoints[0] != "tcp:127.0.0.1:0");
        BOOST_TEST(endpoints[1] == "unix:" + dir.file("g%d.sock"));
        BOOST_TEST(endpoints[2] == "hybrid:" + dir.file("h.sock") + ":1024");
        auto tcp = co_await connect(endpoints[0]);
        co_await tcp.send(get_health_line);
        BOOST_TEST(expect_reply<protocol::health_payload>(co_await tcp.expect_line()).state ==
                   lifecycle_state::healthy);
        auto unix_client = co_await connect(endpoints[1]);
        const std::string secret = encoded(protocol::secret_payload{"API_KEY", "s3cret", 0});
        co_await unix_client.send(secret);
        BOOST_TEST(expect_reply<protocol::ack_payload>(co_await unix_client.expect_line()).ok);
        auto hybrid = co_await connect_hybrid(endpoints[2]);
        co_await hybrid.send(ping_line);
        expect_reply<protocol::pong_reply>(co_await hybrid.expect_line());
    });
    BOOST_TEST(process.stop(20s) == 0);
    std::ifstream in(record);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);)
        lines.push_back(line);
    const std::vector<std::string> expected = {
        R"({"type":"get_health"})",
        R"({"type":"inject_secret","payload":{"name":"API_KEY","value":"s3cret"}})",
        R"({"type":"ping"})"};
    BOOST_TEST(lines == expected, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(count_starts_one_guest_per_index_and_faults_apply_to_all) {
    asio::io_context io;
    temp_dir dir;
    auto process = start_fakeguest(
        dir, "fakeguest",
        {"--listen", "unix:" + dir.file("g%d.sock"), "--count", "3", "--wrong-reply-kind"});
    run_io(io, [&]() -> asio::awaitable<void> {
        const auto endpoints = read_listening_lines(process, 3);
        for (int i = 0; i < 3; ++i) {
            BOOST_TEST(endpoints[i] == "unix:" + dir.file("g" + std::to_string(i) + ".sock"));
            auto client = co_await connect(endpoints[i]);
            co_await client.send(ping_line);
            expect_reply<protocol::ack_payload>(co_await client.expect_line());
        }
    });
    BOOST_TEST(process.stop(20s) == 0);
}

BOOST_AUTO_TEST_CASE(a_lifecycle_script_pushes_events_and_get_health_agrees) {
    asio::io_context io;
    temp_dir dir;
    auto process = start_fakeguest(dir, "fakeguest",
                                   {"--listen", "tcp:127.0.0.1:0", "--lifecycle-script",
                                    "1s:booting,1500ms:healthy", "--health-state", "booting"});
    run_io(io, [&]() -> asio::awaitable<void> {
        const auto endpoints = read_listening_lines(process, 1);
        auto client = co_await connect(endpoints[0]);
        co_await client.send(ping_line);
        expect_reply<protocol::pong_reply>(co_await client.expect_line());
        // Connected well before the 1 s mark on any machine that is not badly overloaded; the
        // last event must come either way.
        lifecycle_state last = lifecycle_state::booting;
        while (last != lifecycle_state::healthy)
            last =
                expect_reply<protocol::lifecycle_payload>(co_await client.expect_line(20s)).state;
        co_await client.send(get_health_line);
        BOOST_TEST(expect_reply<protocol::health_payload>(co_await client.expect_line()).state ==
                   lifecycle_state::healthy);
    });
    BOOST_TEST(process.stop(20s) == 0);
}

BOOST_AUTO_TEST_CASE(stall_and_lifetime_flags_reach_every_guest) {
    asio::io_context io;
    temp_dir dir;
    auto stalling =
        start_fakeguest(dir, "stalling", {"--listen", "tcp:127.0.0.1:0", "--stall-mid-reply"});
    auto flapping = start_fakeguest(
        dir, "flapping",
        {"--listen", "tcp:127.0.0.1:0", "--count", "2", "--connection-lifetime", "200ms"});
    run_io(io, [&]() -> asio::awaitable<void> {
        const auto stall_endpoint = read_listening_lines(stalling, 1).at(0);
        auto stalled = co_await connect(stall_endpoint);
        co_await stalled.send(ping_line);
        BOOST_TEST(co_await stalled.read_until_closed(1s) == asio::error::timed_out);
        BOOST_TEST(!stalled.buffered().empty());
        BOOST_TEST(stalled.buffered().find('\n') == std::string::npos);

        for (const auto& endpoint : read_listening_lines(flapping, 2)) {
            auto client = co_await connect(endpoint);
            co_await client.send(ping_line);
            expect_reply<protocol::pong_reply>(co_await client.expect_line());
            BOOST_TEST(co_await client.read_until_closed(10s) == asio::error::eof);
        }
    });
    BOOST_TEST(stalling.stop(20s) == 0);
    BOOST_TEST(flapping.stop(20s) == 0);
}

BOOST_AUTO_TEST_CASE(a_bad_argument_exits_non_zero) {
    temp_dir dir;
    auto process = start_fakeguest(dir, "fakeguest", {"--listen", "vsock:ANY:port"});
    // No listening line: stdout just ends when the program exits.
    BOOST_TEST(!process.next_stdout_line(20s).has_value());
    BOOST_TEST(!process.running());
    BOOST_TEST(process.stop(20s) == 1);
}

BOOST_AUTO_TEST_CASE(log_requests_prints_names_not_values_and_sigusr1_closes_connections) {
    asio::io_context io;
    temp_dir dir;
    const std::string secret_value = "s3cr3t-on-the-console";
    auto process =
        start_fakeguest(dir, "fakeguest", {"--listen", "tcp:127.0.0.1:0", "--log-requests"});
    run_io(io, [&]() -> asio::awaitable<void> {
        const auto endpoint = read_listening_lines(process, 1).at(0);
        auto client = co_await connect(endpoint);
        const std::string secret = encoded(protocol::secret_payload{"API_KEY", secret_value, 0});
        co_await client.send(secret);
        BOOST_TEST(expect_reply<protocol::ack_payload>(co_await client.expect_line()).ok);
        const auto logged = expect_stdout_line(process);
        BOOST_TEST(logged == "request inject_secret name=API_KEY");
        const auto delivered = expect_stdout_line(process);
        BOOST_TEST(delivered == "delivered inject_secret name=API_KEY");

        process.send_signal(SIGUSR1);
        BOOST_TEST(expect_stdout_line(process) == "closing every connection (SIGUSR1)");
        BOOST_TEST(co_await client.read_until_closed(10s) == asio::error::eof);
        // Still serving after the blip.
        auto again = co_await connect(endpoint);
        co_await again.send(ping_line);
        expect_reply<protocol::pong_reply>(co_await again.expect_line());
        BOOST_TEST(expect_stdout_line(process) == "request ping");
        BOOST_TEST(logged.find(secret_value) == std::string::npos);
        BOOST_TEST(delivered.find(secret_value) == std::string::npos);
    });
    BOOST_TEST(process.stop(20s) == 0);
}

BOOST_AUTO_TEST_CASE(log_requests_prints_delivered_lines_and_root_and_uptime_sequence_apply) {
    asio::io_context io;
    temp_dir dir;
    const auto root = dir.path() / "root";
    const std::string secret_value = "s3cr3t-never-delivered-to-the-console";
    auto process = start_fakeguest(dir, "fakeguest",
                                   {"--listen", "tcp:127.0.0.1:0", "--log-requests", "--root",
                                    root.string(), "--uptime-sequence", "5,9223372036854775807"});
    const std::string two_keys = first_key + "\n" + second_key + "\n";
    const auto keys = key_line("admin", two_keys);
    const auto mount_work = encoded(protocol::mount_payload{"share0", "/work", "virtiofs", false});
    const auto mount_etc = encoded(protocol::mount_payload{"x", "/etc", "virtiofs"});
    const auto secret = encoded(protocol::secret_payload{"API_KEY", secret_value});
    std::vector<std::string> printed;
    run_io(io, [&]() -> asio::awaitable<void> {
        const auto endpoint = read_listening_lines(process, 1).at(0);
        auto client = co_await connect(endpoint);
        BOOST_TEST(co_await health_uptime(client) == 5);
        BOOST_TEST(co_await health_uptime(client) == 9223372036854775807);
        BOOST_TEST((co_await send_for_ack(client, keys)).ok);
        BOOST_TEST((co_await send_for_ack(client, mount_work)).ok);
        BOOST_TEST((co_await send_for_ack(client, mount_work)).ok);
        BOOST_TEST(!(co_await send_for_ack(client, mount_etc)).ok);
        BOOST_TEST((co_await send_for_ack(client, secret)).ok);
        // Every reply is in, so every line is printed; the last one marks the end.
        co_await client.send(ping_line);
        expect_reply<protocol::pong_reply>(co_await client.expect_line());
        for (std::string line; line != "request ping";) {
            line = expect_stdout_line(process);
            printed.push_back(line);
        }
    });
    BOOST_TEST(process.stop(20s) == 0);
    const std::vector<std::string> expected = {"request get_health",
                                               "request get_health",
                                               "request inject_ssh_key user=admin",
                                               "delivered inject_ssh_key user=admin keys=2",
                                               "request mount tag=share0",
                                               "delivered mount tag=share0 path=/work stacked=1",
                                               "request mount tag=share0",
                                               "delivered mount tag=share0 path=/work stacked=2",
                                               "request mount tag=x",
                                               "request inject_secret name=API_KEY",
                                               "delivered inject_secret name=API_KEY",
                                               "request ping"};
    BOOST_TEST(printed == expected, boost::test_tools::per_element());
    BOOST_TEST(process.stdout_text().find(secret_value) == std::string::npos);
    const auto file = root / "home" / "admin" / ".ssh" / "authorized_keys";
    BOOST_TEST_REQUIRE(std::filesystem::exists(file));
    BOOST_TEST(read_text_file(file) == two_keys);
}

BOOST_AUTO_TEST_CASE(power_off_on_shutdown_is_refused_outside_a_test_vm) {
    BOOST_TEST_REQUIRE(!std::filesystem::exists("/run/stereos-vm"),
                       "this machine is marked as a test VM");
    temp_dir dir;
    auto process = start_fakeguest(dir, "fakeguest",
                                   {"--listen", "tcp:127.0.0.1:0", "--power-off-on-shutdown"});
    // It exits before listening: no line, just the end of its output.
    BOOST_TEST(!process.next_stdout_line(20s).has_value());
    BOOST_TEST(!process.running());
    BOOST_TEST(process.stop(20s) == 1);
}

BOOST_AUTO_TEST_SUITE_END()

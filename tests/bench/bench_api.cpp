// API throughput: requests per second and p50/p99 latency of POST /v1/guests/{name}/ping through
// a real stereos-hostd process to a stereos-fakeguest process, with 1, 16 and 64 concurrent
// keep-alive clients on the unix socket, next to the raw baseline measured in the same run (the
// same ping straight to the fake guest's socket, lock-step, no daemon in between).
// Usage: bench_api [seconds per figure]
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include "tests/bench/bench_support.hpp"
#include "transport/completion_tokens.hpp"

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using namespace stereos;
using namespace stereos::bench;

namespace {

using stereos::transport::use_tuple;

struct load_figures {
    double per_second = 0;
    distribution latency_us;
    std::uint64_t failures = 0;
};

// One keep-alive client: sends the request, waits for the answer, repeats until `end`. Only
// exchanges that start after `measure_from` are counted, so connecting and warm-up are not.
asio::awaitable<void> run_client(const std::string& api_socket, http::verb method,
                                 const std::string& target, bench_clock::time_point measure_from,
                                 bench_clock::time_point end, std::vector<double>& latencies_us,
                                 std::uint64_t& failures) {
    auto executor = co_await asio::this_coro::executor;
    asio::local::stream_protocol::socket socket(executor);
    const asio::local::stream_protocol::endpoint endpoint(api_socket);
    auto [connect_error] = co_await socket.async_connect(endpoint, use_tuple);
    if (connect_error) {
        ++failures;
        co_return;
    }
    http::request<http::string_body> request{method, target, 11};
    request.set(http::field::host, "localhost");
    request.keep_alive(true);
    request.prepare_payload();
    beast::flat_buffer buffer;
    while (bench_clock::now() < end) {
        const auto started = bench_clock::now();
        auto [write_error, written] = co_await http::async_write(socket, request, use_tuple);
        if (write_error) {
            ++failures;
            co_return;
        }
        http::response<http::string_body> response;
        auto [read_error, read] = co_await http::async_read(socket, buffer, response, use_tuple);
        if (read_error) {
            ++failures;
            co_return;
        }
        const auto done = bench_clock::now();
        if (started < measure_from || done > end)
            continue;
        if (response.result_int() != 200) {
            ++failures;
            continue;
        }
        latencies_us.push_back(milliseconds_between(started, done) * 1000.0);
    }
}

load_figures api_load(const std::string& api_socket, int clients, http::verb method,
                      const std::string& target, std::chrono::milliseconds budget) {
    asio::io_context io(1);
    std::vector<double> latencies_us;
    std::uint64_t failures = 0;
    // A short warm-up lets every client connect and the daemon's buffers grow first.
    const auto measure_from = bench_clock::now() + std::chrono::milliseconds(300);
    const auto end = measure_from + budget;
    for (int i = 0; i < clients; ++i) {
        asio::co_spawn(
            io, run_client(api_socket, method, target, measure_from, end, latencies_us, failures),
            stereos::transport::rethrow_if_failed);
    }
    io.run();
    load_figures figures;
    figures.failures = failures;
    figures.per_second =
        static_cast<double>(latencies_us.size()) / std::chrono::duration<double>(budget).count();
    figures.latency_us = summarize(std::move(latencies_us));
    return figures;
}

// The raw baseline: ping lines over a plain blocking unix socket, one at a time.
load_figures raw_guest_load(const std::string& guest_socket, std::chrono::milliseconds budget) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, guest_socket.c_str(), sizeof address.sun_path - 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
        std::perror("connect to the fake guest");
        std::exit(1);
    }
    constexpr std::string_view ping_line = "{\"type\":\"ping\"}\n";
    std::vector<double> latencies_us;
    std::array<char, 4096> buffer{};
    const auto end = bench_clock::now() + budget;
    while (bench_clock::now() < end) {
        const auto started = bench_clock::now();
        if (::write(fd, ping_line.data(), ping_line.size()) !=
            static_cast<ssize_t>(ping_line.size()))
            break;
        bool line_complete = false;
        while (!line_complete) {
            const auto n = ::read(fd, buffer.data(), buffer.size());
            if (n <= 0) {
                std::fprintf(stderr, "the fake guest closed the connection\n");
                std::exit(1);
            }
            line_complete =
                std::memchr(buffer.data(), '\n', static_cast<std::size_t>(n)) != nullptr;
        }
        latencies_us.push_back(milliseconds_between(started, bench_clock::now()) * 1000.0);
    }
    ::close(fd);
    load_figures figures;
    figures.per_second =
        static_cast<double>(latencies_us.size()) / std::chrono::duration<double>(budget).count();
    figures.latency_us = summarize(std::move(latencies_us));
    return figures;
}

void print_row(const std::string& label, const load_figures& f, double baseline) {
    std::printf("  %-44s %10.0f %9.0f %9.0f %9.2fx", label.c_str(), f.per_second, f.latency_us.p50,
                f.latency_us.p99, baseline > 0 ? f.per_second / baseline : 0.0);
    if (f.failures)
        std::printf("   (%llu failed)", static_cast<unsigned long long>(f.failures));
    std::printf("\n");
    std::fflush(stdout);
}

int run_bench(int argc, char** argv) {
    const double seconds = argc > 1 ? std::atof(argv[1]) : 3.0;
    const auto budget = std::chrono::milliseconds(static_cast<long>(seconds * 1000));
    print_header(
        "bench_api: POST /v1/guests/vm1/ping through stereos-hostd (unix socket, "
        "keep-alive), " +
        std::to_string(seconds).substr(0, 4) + " s per figure");

    testing::temp_directory dir("stereos-bench-api");
    fakeguest_process guest(dir, "fakeguest", "unix:" + (dir / "vm1.sock").string(), 1);
    // Logs at warning, as the figures are about the request path, not about log volume (the
    // daemon logs nothing per API request at info either).
    hostd daemon(dir, {{"vm1", guest.endpoints().at(0)}}, "warning");
    if (!daemon.wait_for_api()) {
        std::fprintf(stderr, "stereos-hostd did not start:\n%s\n", daemon.log().c_str());
        return 1;
    }
    // Wait for the link: the first pings would otherwise wait for the connect.
    const auto link_deadline = bench_clock::now() + 30s;
    while (http_exchange(daemon.socket(), "POST", "/v1/guests/vm1/ping").first != 200) {
        if (bench_clock::now() > link_deadline) {
            std::fprintf(stderr, "the guest link did not come up:\n%s\n", daemon.log().c_str());
            return 1;
        }
        std::this_thread::sleep_for(20ms);
    }

    std::printf("  %-44s %10s %9s %9s %10s\n", "", "req/s", "p50 us", "p99 us", "vs raw");
    const auto raw = raw_guest_load((dir / "vm1.sock").string(), budget);
    print_row("raw: ping to the fake guest socket, lock-step", raw, raw.per_second);
    for (int clients : {1, 16, 64}) {
        const auto figures =
            api_load(daemon.socket(), clients, http::verb::post, "/v1/guests/vm1/ping", budget);
        print_row("API ping, " + std::to_string(clients) + " client" + (clients > 1 ? "s" : ""),
                  figures, raw.per_second);
    }
    // The HTTP layer alone (no guest round trip), to show what dominates the cost.
    const auto http_only = api_load(daemon.socket(), 1, http::verb::get, "/v1/ping", budget);
    print_row("GET /v1/ping (no guest), 1 client", http_only, raw.per_second);

    if (!daemon.stop()) {
        std::fprintf(stderr, "stereos-hostd did not stop within 60 s\n");
        return 1;
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    // A failure to set up or to measure ends the run with its message, not with terminate().
    try {
        return run_bench(argc, argv);
    } catch (const std::exception& failure) {
        std::fprintf(stderr, "bench_api: %s\n", failure.what());
        return 1;
    }
}

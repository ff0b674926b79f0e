// Guest link round trips per second on loopback TCP against the fake guest (running on its own
// thread and io_context, like a separate guest), next to a raw baseline: the same bytes over a
// plain blocking socket with no daemon code, measured in the same run. Next to each rate, the
// client thread's CPU time per round trip: unlike the rate, it barely moves on a busy machine.
// Usage: bench_link [seconds per figure]
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <string>
#include <thread>

#include <boost/asio.hpp>

#include <stereos/link/guest_link.hpp>
#include <stereos/util/completion_tokens.hpp>
#include "tests/fakeguest/fake_guest.hpp"

namespace asio = boost::asio;
using namespace stereos;
using bench_clock = std::chrono::steady_clock;

namespace {

constexpr std::string_view ping_line = "{\"type\":\"ping\"}\n";

double thread_cpu_seconds() {
    timespec now{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
    return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) / 1e9;
}

// Round trips per second, and the client thread's CPU microseconds per round trip.
struct figure {
    double rate = 0;
    double cpu_us = 0;
};

// Connects a blocking TCP socket with TCP_NODELAY, as the link's sockets are.
int connect_raw(std::uint16_t port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        std::perror("connect");
        std::exit(1);
    }
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

// Round trips per second with `in_flight` pings outstanding, over a plain socket: write that
// many pings, read that many pong lines, repeat.
figure raw_rate(std::uint16_t port, int in_flight, std::chrono::milliseconds budget) {
    const int fd = connect_raw(port);
    std::string batch;
    for (int i = 0; i < in_flight; ++i)
        batch += ping_line;
    std::string buffer(64 * 1024, '\0');
    std::uint64_t round_trips = 0;
    const auto start = bench_clock::now();
    const double cpu_start = thread_cpu_seconds();
    while (bench_clock::now() - start < budget) {
        if (::write(fd, batch.data(), batch.size()) != static_cast<ssize_t>(batch.size()))
            break;
        int pongs = 0;
        while (pongs < in_flight) {
            const auto n = ::read(fd, buffer.data(), buffer.size());
            if (n <= 0)
                std::exit(1);
            for (ssize_t i = 0; i < n; ++i)
                pongs += buffer[static_cast<std::size_t>(i)] == '\n';
        }
        round_trips += static_cast<std::uint64_t>(in_flight);
    }
    const double seconds = std::chrono::duration<double>(bench_clock::now() - start).count();
    const double cpu = thread_cpu_seconds() - cpu_start;
    ::close(fd);
    const auto n = static_cast<double>(round_trips);
    return {n / seconds, cpu * 1e6 / n};
}

// Round trips per second through guest_link with `in_flight` coroutines each sending pings.
figure link_rate(const std::string& endpoint, int in_flight, std::chrono::milliseconds budget) {
    asio::io_context io(1);
    auto link = link::guest_link::create(io.get_executor(), *transport::parse_endpoint(endpoint),
                                         {}, nullptr);
    link->start();
    std::uint64_t round_trips = 0, failures = 0;
    bench_clock::time_point start;
    double cpu_start = 0;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            while (!link->is_up()) {
                asio::steady_timer t(io, std::chrono::milliseconds(1));
                co_await t.async_wait(transport::use_tuple);
            }
            start = bench_clock::now();
            cpu_start = thread_cpu_seconds();
            int running = in_flight;
            asio::steady_timer all_done(io, asio::steady_timer::time_point::max());
            for (int i = 0; i < in_flight; ++i) {
                asio::co_spawn(
                    io,
                    [&]() -> asio::awaitable<void> {
                        while (bench_clock::now() - start < budget) {
                            auto r = co_await link->async_request(protocol::ping_request{});
                            (r ? round_trips : failures)++;
                        }
                        if (--running == 0)
                            all_done.cancel();
                    },
                    transport::rethrow_if_failed);
            }
            co_await all_done.async_wait(transport::use_tuple);
            co_await link->async_stop();
        },
        transport::rethrow_if_failed);
    io.run();
    const double seconds = std::chrono::duration<double>(bench_clock::now() - start).count();
    const double cpu = thread_cpu_seconds() - cpu_start;
    if (failures)
        std::printf("  (%llu failed requests)\n", static_cast<unsigned long long>(failures));
    const auto n = static_cast<double>(round_trips);
    return {n / seconds, cpu * 1e6 / n};
}

int run_bench(int argc, char** argv) {
    const double seconds = argc > 1 ? std::atof(argv[1]) : 2.0;
    const auto budget = std::chrono::milliseconds(static_cast<long>(seconds * 1000));

    // The fake guest serves on its own thread, as a separate guest process would.
    asio::io_context guest_io(1);
    testing::fake_guest guest(guest_io.get_executor());
    guest.behaviour.keep_received_lines = false;
    const auto endpoint = guest.listen_tcp();
    const auto port =
        static_cast<std::uint16_t>(std::stoi(endpoint.substr(endpoint.rfind(':') + 1)));
    auto guard = asio::make_work_guard(guest_io);
    std::thread guest_thread([&] { guest_io.run(); });

    std::array<double, 3> load{};
    ::getloadavg(load.data(), static_cast<int>(load.size()));
    std::printf(
        "guest link round trips on loopback TCP (%u hardware threads, load average %.2f %.2f %.2f, "
        "%.1f s per figure)\n",
        std::thread::hardware_concurrency(), load[0], load[1], load[2], seconds);
    std::printf("%-26s %10s %10s %9s %12s %12s\n", "", "link rt/s", "raw rt/s", "link/raw",
                "link CPU/rt", "raw CPU/rt");
    auto print = [](const char* label, figure link, figure raw) {
        std::printf("%-26s %10.0f %10.0f %8.2fx %10.2fus %10.2fus", label, link.rate, raw.rate,
                    link.rate / raw.rate, link.cpu_us, raw.cpu_us);
    };
    const auto lockstep_raw = raw_rate(port, 1, budget);
    const auto lockstep_link = link_rate(endpoint, 1, budget);
    print("lock-step (1 in flight)", lockstep_link, lockstep_raw);
    std::printf("   [target >= 0.85x raw]\n");
    for (int in_flight : {16, 256}) {
        const auto raw = raw_rate(port, in_flight, budget);
        const auto link = link_rate(endpoint, in_flight, budget);
        std::array<char, 64> label{};
        std::snprintf(label.data(), label.size(), "pipelined (%d in flight)", in_flight);
        print(label.data(), link, raw);
        std::printf("   %.1fx lock-step\n", link.rate / lockstep_link.rate);
    }

    asio::post(guest_io, [&] { guest.stop(); });
    guard.reset();
    guest_thread.join();
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    // A failure to set up or to measure ends the run with its message, not with terminate().
    try {
        return run_bench(argc, argv);
    } catch (const std::exception& failure) {
        std::fprintf(stderr, "bench_link: %s\n", failure.what());
        return 1;
    }
}

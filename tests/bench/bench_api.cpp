// API throughput: requests per second, p50/p99 latency and the daemon's CPU per request of
// POST /v1/guests/{name}/ping through a real stereos-hostd process, with 1, 16 and 64 concurrent
// keep-alive clients on the unix socket, to two guests: a stereos-fakeguest process (one write
// per reply, as the real guest) and a raw guest on a thread of this program that answers
// everything it has read with one write (so the daemon, not the guest, is the limit). Next to
// them, limits measured in the same run: the fake guest's socket lock-step with no daemon, and a
// raw HTTP round trip (a canned answer) on a unix socket with the same client. The targets are
// printed as ratios: 64 clients >= 100k/s (<= 8 us of daemon CPU a request), 1 client p50 <= 40 us.
// Usage: bench_api [seconds per figure]
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include <stereos/protocol/codec.hpp>
#include <stereos/util/completion_tokens.hpp>
#include "tests/bench/bench_support.hpp"
#include "tests/fakeguest/fake_guest.hpp"

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

int listen_unix(const std::string& path) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof address.sun_path - 1);
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
        ::listen(fd, 256) != 0) {
        std::perror(("listen on " + path).c_str());
        std::exit(1);
    }
    return fd;
}

bool write_all(int fd, const std::string& data) {
    std::size_t done = 0;
    while (done < data.size()) {
        const auto n = ::write(fd, data.data() + done, data.size() - done);
        if (n <= 0)
            return false;
        done += static_cast<std::size_t>(n);
    }
    return true;
}

// A poll() loop on its own thread serving unix-socket connections until stop(): each time a
// connection is readable, everything read is handed to `answer`, and what it returns goes back
// in one write.
class raw_server {
  public:
    using answer_fn = std::function<std::string(std::string& input)>;
    raw_server(const std::string& path, answer_fn answer)
        : listener_(listen_unix(path)), answer_(std::move(answer)) {
        thread_ = std::thread([this] { serve(); });
    }
    ~raw_server() {
        stop_ = true;
        thread_.join();
        ::close(listener_);
    }
    raw_server(const raw_server&) = delete;

  private:
    void serve() {
        std::vector<pollfd> fds{{listener_, POLLIN, 0}};
        std::vector<std::string> inputs{{}};
        std::array<char, 65536> buffer{};
        while (!stop_) {
            if (::poll(fds.data(), fds.size(), 50) <= 0)
                continue;
            if (fds[0].revents & POLLIN) {
                const int client = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
                if (client >= 0) {
                    fds.push_back({client, POLLIN, 0});
                    inputs.emplace_back();
                }
            }
            for (std::size_t i = 1; i < fds.size(); ++i) {
                if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                    continue;
                const auto n = ::read(fds[i].fd, buffer.data(), buffer.size());
                std::string reply;
                if (n > 0) {
                    inputs[i].append(buffer.data(), static_cast<std::size_t>(n));
                    reply = answer_(inputs[i]);
                }
                if (n <= 0 || (!reply.empty() && !write_all(fds[i].fd, reply))) {
                    ::close(fds[i].fd);
                    fds.erase(fds.begin() + static_cast<std::ptrdiff_t>(i));
                    inputs.erase(inputs.begin() + static_cast<std::ptrdiff_t>(i));
                    --i;
                }
            }
        }
        for (std::size_t i = 1; i < fds.size(); ++i)
            ::close(fds[i].fd);
    }

    int listener_;
    answer_fn answer_;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

// The batching guest: answers every complete line read so far, as the real guest would
// (stereos-fakeguest's default replies), all in one write.
std::string answer_guest_lines(std::string& input) {
    static const testing::guest_behaviour behaviour;
    std::string out;
    std::size_t start = 0;
    for (auto end = input.find('\n'); end != std::string::npos; end = input.find('\n', start)) {
        const auto line = std::string_view(input).substr(start, end - start);
        if (auto encoded = protocol::encode(testing::default_reply(line, behaviour, 1)))
            out += *encoded;
        start = end + 1;
    }
    input.erase(0, start);
    return out;
}

// The raw HTTP limit: every complete request head read so far (bodies are empty) gets a canned
// 200 with a small JSON body, like the daemon's answer to a ping.
std::string answer_http_requests(std::string& input) {
    static const std::string body = "{\"guest\":\"vm1\",\"rtt_us\":22}\n";
    static const std::string canned =
        "HTTP/1.1 200 OK\r\nServer: bench\r\nContent-Type: application/json\r\n"
        "Content-Length: " +
        std::to_string(body.size()) + "\r\n\r\n" + body;
    std::string out;
    std::size_t start = 0;
    for (auto end = input.find("\r\n\r\n"); end != std::string::npos;
         end = input.find("\r\n\r\n", start)) {
        out += canned;
        start = end + 4;
    }
    input.erase(0, start);
    return out;
}

// The daemon's CPU time (user + system) in seconds.
double cpu_seconds(pid_t pid) {
    return static_cast<double>(cpu_ticks(pid)) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

void print_row(const std::string& label, const load_figures& f, double baseline,
               double cpu_us_per_request = -1) {
    std::printf("  %-44s %10.0f %9.0f %9.0f %9.2fx", label.c_str(), f.per_second, f.latency_us.p50,
                f.latency_us.p99, baseline > 0 ? f.per_second / baseline : 0.0);
    if (cpu_us_per_request >= 0)
        std::printf(" %9.1f", cpu_us_per_request);
    if (f.failures)
        std::printf("   (%llu failed)", static_cast<unsigned long long>(f.failures));
    std::printf("\n");
    std::fflush(stdout);
}

// api_load() with the daemon's CPU per counted request; the warm-up's requests are in the CPU
// figure but not in the count, so it errs high.
std::pair<load_figures, double> api_load_with_cpu(pid_t daemon, const std::string& api_socket,
                                                  int clients, http::verb method,
                                                  const std::string& target,
                                                  std::chrono::milliseconds budget) {
    const double cpu_before = cpu_seconds(daemon);
    auto figures = api_load(api_socket, clients, method, target, budget);
    const double cpu = cpu_seconds(daemon) - cpu_before;
    const double requests = figures.per_second * std::chrono::duration<double>(budget).count();
    return {figures, requests > 0 ? cpu / requests * 1e6 : -1};
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
    const auto batching_socket = (dir / "batching.sock").string();
    raw_server batching_guest(batching_socket, answer_guest_lines);
    const auto raw_http_socket = (dir / "raw-http.sock").string();
    raw_server raw_http(raw_http_socket, answer_http_requests);
    // Logs at warning, as the figures are about the request path, not about log volume (the
    // daemon logs nothing per API request at info either).
    hostd daemon(dir, {{"vm1", guest.endpoints().at(0)}, {"batching", "unix:" + batching_socket}},
                 "warning");
    if (!daemon.wait_for_api()) {
        std::fprintf(stderr, "stereos-hostd did not start:\n%s\n", daemon.log().c_str());
        return 1;
    }
    // Wait for the links: the first pings would otherwise wait for the connect.
    const auto link_deadline = bench_clock::now() + 30s;
    for (const std::string name : {"vm1", "batching"}) {
        while (http_exchange(daemon.socket(), "POST", "/v1/guests/" + name + "/ping").first !=
               200) {
            if (bench_clock::now() > link_deadline) {
                std::fprintf(stderr, "the guest link did not come up:\n%s\n", daemon.log().c_str());
                return 1;
            }
            std::this_thread::sleep_for(20ms);
        }
    }

    std::printf("  %-44s %10s %9s %9s %10s %9s\n", "", "req/s", "p50 us", "p99 us", "vs raw",
                "CPU us/r");
    const auto raw = raw_guest_load((dir / "vm1.sock").string(), budget);
    print_row("limit: ping to the fake guest, lock-step", raw, raw.per_second);
    const auto raw_http_figures =
        api_load(raw_http_socket, 1, http::verb::post, "/v1/guests/vm1/ping", budget);
    print_row("limit: raw HTTP round trip, 1 client", raw_http_figures, raw.per_second);
    const auto raw_http_64 =
        api_load(raw_http_socket, 64, http::verb::post, "/v1/guests/vm1/ping", budget);
    print_row("limit: raw HTTP round trip, 64 clients", raw_http_64, raw.per_second);
    load_figures fake_1;
    for (int clients : {1, 16, 64}) {
        const auto [figures, cpu] =
            api_load_with_cpu(daemon.pid(), daemon.socket(), clients, http::verb::post,
                              "/v1/guests/vm1/ping", budget);
        if (clients == 1)
            fake_1 = figures;
        print_row("API ping, fake guest, " + std::to_string(clients) + " client" +
                      (clients > 1 ? "s" : ""),
                  figures, raw.per_second, cpu);
    }
    load_figures batching_1, batching_64;
    double cpu_64 = -1;
    for (int clients : {1, 16, 64}) {
        const auto [figures, cpu] =
            api_load_with_cpu(daemon.pid(), daemon.socket(), clients, http::verb::post,
                              "/v1/guests/batching/ping", budget);
        print_row("API ping, batching guest, " + std::to_string(clients) + " client" +
                      (clients > 1 ? "s" : ""),
                  figures, raw.per_second, cpu);
        if (clients == 1)
            batching_1 = figures;
        if (clients == 64) {
            batching_64 = figures;
            cpu_64 = cpu;
        }
    }
    // The HTTP layer alone (no guest round trip), to show what dominates the cost.
    const auto [http_only, http_cpu] =
        api_load_with_cpu(daemon.pid(), daemon.socket(), 1, http::verb::get, "/v1/ping", budget);
    print_row("GET /v1/ping (no guest), 1 client", http_only, raw.per_second, http_cpu);
    const auto [http_only_64, http_cpu_64] =
        api_load_with_cpu(daemon.pid(), daemon.socket(), 64, http::verb::get, "/v1/ping", budget);
    print_row("GET /v1/ping (no guest), 64 clients", http_only_64, raw.per_second, http_cpu_64);

    std::printf("\n  targets (ratio >= 1.00 meets it):\n");
    std::printf("  %-60s %8.2f  (%.0f/s vs 100k/s)\n", "64 clients, batching guest, throughput",
                batching_64.per_second / 100000.0, batching_64.per_second);
    std::printf("  %-60s %8.2f  (%.1f us vs 8 us)\n", "64 clients, batching guest, daemon CPU",
                cpu_64 > 0 ? 8.0 / cpu_64 : 0.0, cpu_64);
    std::printf("  %-60s %8.2f  (p50 %.0f us vs 40 us)\n", "1 client, batching guest, latency",
                batching_1.latency_us.p50 > 0 ? 40.0 / batching_1.latency_us.p50 : 0.0,
                batching_1.latency_us.p50);
    const double limit_sum = raw.latency_us.p50 + raw_http_figures.latency_us.p50;
    std::printf("  %-60s %8.2f  (p50 %.0f us vs raw guest %.0f + raw HTTP %.0f us)\n",
                "1 client, fake guest, vs the sum of its limits",
                fake_1.latency_us.p50 > 0 ? limit_sum / fake_1.latency_us.p50 : 0.0,
                fake_1.latency_us.p50, raw.latency_us.p50, raw_http_figures.latency_us.p50);

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

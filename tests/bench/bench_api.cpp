// API throughput: requests per second, p50/p99 latency and the daemon's CPU per request of
// POST /v1/guests/{name}/ping through a real stereos-hostd process, with 1, 16 and 64 concurrent
// keep-alive clients on the unix socket, to two guests: a stereos-fakeguest process (one write
// per reply, as the real guest) and a raw guest on a thread of this program that answers
// everything it has read with one write (so the daemon, not the guest, is the limit). Next to
// them, limits measured in the same run: the fake guest's socket lock-step with no daemon, and a
// raw HTTP round trip (a canned answer) on a unix socket with the same client. The targets are
// printed as ratios: 64 clients >= 100k/s (<= 8 us of daemon CPU a request), 1 client p50 <= 40 us.
// Each API figure also has the system calls a request: a second, shorter run of the same load
// with strace -c attached to the daemon (strace slows it down, so CPU and latency come from the
// first run). The request path's own targets, at 16 clients: <= 2.6 system calls and <= 24 us of
// daemon CPU a request (0.75 x the 32 us before the lean request path), each printed beside the
// raw HTTP responder's figures from the same run, with the load average.
// Usage: bench_api [seconds per figure]
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <string_view>
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
    // Every exchange completed, the warm-up's included: what the daemon served while its CPU
    // time or system calls were counted.
    std::uint64_t exchanges = 0;
};

// One keep-alive client: sends the request, waits for the answer, repeats until `end`. Only
// exchanges that start after `measure_from` are counted, so connecting and warm-up are not.
asio::awaitable<void> run_client(const std::string& api_socket, http::verb method,
                                 const std::string& target, bench_clock::time_point measure_from,
                                 bench_clock::time_point end, std::vector<double>& latencies_us,
                                 std::uint64_t& failures, std::uint64_t& exchanges) {
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
        ++exchanges;
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
    std::uint64_t failures = 0, exchanges = 0;
    // A short warm-up lets every client connect and the daemon's buffers grow first.
    const auto measure_from = bench_clock::now() + std::chrono::milliseconds(300);
    const auto end = measure_from + budget;
    for (int i = 0; i < clients; ++i) {
        asio::co_spawn(io,
                       run_client(api_socket, method, target, measure_from, end, latencies_us,
                                  failures, exchanges),
                       stereos::transport::rethrow_if_failed);
    }
    io.run();
    load_figures figures;
    figures.failures = failures;
    figures.exchanges = exchanges;
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
        thread_ = std::thread([this] {
            thread_id_ = ::gettid();
            serve();
        });
        while (thread_id_ == 0)
            std::this_thread::yield();
    }
    ~raw_server() {
        stop_ = true;
        thread_.join();
        ::close(listener_);
    }
    raw_server(const raw_server&) = delete;

    // The serving thread, for its CPU time and system calls.
    pid_t thread_id() const { return thread_id_; }

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
    std::atomic<pid_t> thread_id_{0};
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

// A process's CPU time (user + system) in seconds.
double cpu_seconds(pid_t pid) {
    return static_cast<double>(cpu_ticks(pid)) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// One thread of this program's CPU time in seconds (/proc/PID/stat would sum every thread).
double thread_cpu_seconds(pid_t thread) {
    const auto text =
        testing::read_text_file("/proc/self/task/" + std::to_string(thread) + "/stat");
    std::istringstream fields(text.substr(text.rfind(')') + 2));
    std::string field;
    double ticks = 0;
    // After ')': state is field 3; utime and stime are fields 14 and 15.
    for (int number = 3; number <= 15 && fields >> field; ++number) {
        if (number >= 14)
            ticks += std::stod(field);
    }
    return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// System calls counted by strace -c over some work, by name: {calls, failed calls}.
struct syscall_count {
    std::uint64_t total = 0;
    std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> by_name;
    std::string skipped;  // why nothing was counted
};

std::string find_in_path(const std::string& name) {
    const char* path = std::getenv("PATH");
    std::istringstream directories(path ? path : "/usr/bin:/bin");
    for (std::string directory; std::getline(directories, directory, ':');) {
        const auto candidate = std::filesystem::path(directory) / name;
        if (::access(candidate.c_str(), X_OK) == 0)
            return candidate.string();
    }
    return {};
}

std::vector<pid_t> threads_of(pid_t pid) {
    std::vector<pid_t> threads;
    std::error_code ec;
    for (const auto& entry :
         std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec))
        threads.push_back(static_cast<pid_t>(std::stoi(entry.path().filename().string())));
    return threads;
}

// The summary strace -c writes: "% time seconds usecs/call calls [errors] syscall" rows, then a
// "total" row; or perf trace -s: "syscall calls errors total min avg max stddev" rows.
syscall_count parse_summary(const std::string& text, bool perf) {
    syscall_count count;
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);) {
        std::istringstream fields(line);
        std::vector<std::string> words;
        for (std::string word; fields >> word;)
            words.push_back(word);
        const auto digits = [&](std::size_t i) {
            return i < words.size() && std::isdigit(static_cast<unsigned char>(words[i][0]));
        };
        std::string name;
        std::uint64_t calls = 0, errors = 0;
        if (perf && words.size() == 8 && digits(1) && digits(2)) {
            name = words[0];
            calls = std::stoull(words[1]);
            errors = std::stoull(words[2]);
        } else if (!perf && (words.size() == 5 || words.size() == 6) && digits(3)) {
            name = words.back();
            calls = std::stoull(words[3]);
            errors = words.size() == 6 ? std::stoull(words[4]) : 0;
        } else {
            continue;
        }
        if (name == "total")
            continue;
        auto& [all, failed] = count.by_name[name];
        all += calls;  // perf lists each thread apart
        failed += errors;
        count.total += calls;
    }
    return count;
}

// Runs `work` while strace -c (or, with BENCH_API_SYSCALLS=perf, perf trace -s, which stops
// the traced threads far less) counts the system calls of `threads`. The count is empty, with
// the reason in `skipped`, where the tool is missing or cannot attach (work is not run then).
syscall_count count_syscalls(const testing::temp_directory& dir, const std::vector<pid_t>& threads,
                             const std::function<void()>& work) {
    syscall_count count;
    const char* choice = std::getenv("BENCH_API_SYSCALLS");
    const bool perf = choice && std::string_view(choice) == "perf";
    const auto tool = find_in_path(perf ? "perf" : "strace");
    if (tool.empty()) {
        count.skipped = perf ? "perf is not installed" : "strace is not installed";
        return count;
    }
    const auto summary = dir / "syscall-summary.txt";
    std::filesystem::remove(summary);
    std::vector<std::string> argv{tool};
    std::string thread_list;
    for (const auto thread : threads)
        thread_list += (thread_list.empty() ? "" : ",") + std::to_string(thread);
    if (perf) {
        argv.insert(argv.end(), {"trace", "-s", "-o", summary.string(), "-t", thread_list});
    } else {
        argv.insert(argv.end(), {"-c", "-o", summary.string()});
        for (const auto thread : threads)
            argv.insert(argv.end(), {"-p", std::to_string(thread)});
    }
    testing::child_process tracer(argv, dir.path(), "syscall-counter");
    if (perf) {
        // perf trace says nothing once attached: give it time to set its tracepoints up.
        std::this_thread::sleep_for(1500ms);
        if (!tracer.running()) {
            count.skipped = "perf trace did not start: " + tracer.stderr_text();
            return count;
        }
    } else {
        for (const auto thread : threads) {
            if (!tracer.wait_for_output("Process " + std::to_string(thread) + " attached", 10s)) {
                count.skipped = "strace did not attach: " + tracer.stderr_text();
                return count;
            }
        }
    }
    work();
    tracer.send_signal(SIGINT);
    if (!tracer.wait_exit(30s)) {
        count.skipped = tool + " did not finish";
        return count;
    }
    count = parse_summary(testing::read_text_file(summary), perf);
    if (count.total == 0)
        count.skipped = tool + " counted nothing: " + tracer.stderr_text();
    return count;
}

// One API scenario's figures: latency and throughput, with the daemon's CPU time a request from
// the same run; the system calls a request from a second run under strace.
struct scenario_figures {
    load_figures load;
    double cpu_us_per_request = -1;
    double syscalls_per_request = -1;
    syscall_count syscalls;
};

double per_request(double amount, std::uint64_t requests) {
    return requests > 0 ? amount / static_cast<double>(requests) : -1;
}

void print_row(const std::string& label, const scenario_figures& f, double baseline) {
    std::printf("  %-44s %10.0f %9.0f %9.0f %9.2fx", label.c_str(), f.load.per_second,
                f.load.latency_us.p50, f.load.latency_us.p99,
                baseline > 0 ? f.load.per_second / baseline : 0.0);
    if (f.cpu_us_per_request >= 0)
        std::printf(" %9.1f", f.cpu_us_per_request);
    if (f.syscalls_per_request >= 0)
        std::printf(" %8.2f", f.syscalls_per_request);
    if (f.load.failures)
        std::printf("   (%llu failed)", static_cast<unsigned long long>(f.load.failures));
    std::printf("\n");
    std::fflush(stdout);
}

void print_row(const std::string& label, const load_figures& f, double baseline) {
    scenario_figures figures;
    figures.load = f;
    print_row(label, figures, baseline);
}

// A server under load: its threads, and their CPU time in seconds.
struct measured_server {
    std::vector<pid_t> threads;
    std::function<double()> cpu_seconds;
};

measured_server daemon_process(pid_t pid) {
    return {threads_of(pid), [pid] { return cpu_seconds(pid); }};
}

measured_server thread_of_this_program(pid_t thread) {
    return {{thread}, [thread] { return thread_cpu_seconds(thread); }};
}

// The server's CPU a request over an api_load(), and the system calls a request of its threads
// in a second run of at most 2 s under strace. Every exchange counts, the warm-up's included, as
// the CPU time and the system calls of the whole run do.
scenario_figures measure(const testing::temp_directory& dir, const measured_server& server,
                         const std::string& socket, int clients, http::verb method,
                         const std::string& target, std::chrono::milliseconds budget) {
    scenario_figures f;
    const double cpu_before = server.cpu_seconds();
    f.load = api_load(socket, clients, method, target, budget);
    f.cpu_us_per_request = per_request((server.cpu_seconds() - cpu_before) * 1e6, f.load.exchanges);
    std::uint64_t traced_exchanges = 0;
    f.syscalls = count_syscalls(dir, server.threads, [&] {
        traced_exchanges =
            api_load(socket, clients, method, target, std::min(budget, 2000ms)).exchanges;
    });
    if (f.syscalls.skipped.empty()) {
        f.syscalls_per_request =
            per_request(static_cast<double>(f.syscalls.total), traced_exchanges);
    }
    return f;
}

// "recvfrom 1.00, sendmsg 1.00 (0.02 failed), ...": the calls a request, most frequent first.
std::string syscall_breakdown(const scenario_figures& f) {
    if (!f.syscalls.skipped.empty())
        return "not counted: " + f.syscalls.skipped;
    std::vector<std::pair<std::string, std::pair<std::uint64_t, std::uint64_t>>> rows(
        f.syscalls.by_name.begin(), f.syscalls.by_name.end());
    std::sort(rows.begin(), rows.end(),
              [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
    const auto requests = static_cast<double>(f.syscalls.total) / f.syscalls_per_request;
    std::string text;
    char item[128];
    for (const auto& [name, calls] : rows) {
        const double each = static_cast<double>(calls.first) / requests;
        if (each < 0.01)
            continue;
        std::snprintf(item, sizeof item, "%s%s %.2f", text.empty() ? "" : ", ", name.c_str(), each);
        text += item;
        if (calls.second > 0) {
            std::snprintf(item, sizeof item, " (%.2f failed)",
                          static_cast<double>(calls.second) / requests);
            text += item;
        }
    }
    return text;
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

    std::printf("  %-44s %10s %9s %9s %10s %9s %8s\n", "", "req/s", "p50 us", "p99 us", "vs raw",
                "CPU us/r", "sys/r");
    const auto raw = raw_guest_load((dir / "vm1.sock").string(), budget);
    print_row("limit: ping to the fake guest, lock-step", raw, raw.per_second);
    const auto responder = thread_of_this_program(raw_http.thread_id());
    const auto raw_http_figures = measure(dir, responder, raw_http_socket, 1, http::verb::post,
                                          "/v1/guests/vm1/ping", budget);
    print_row("limit: raw HTTP round trip, 1 client", raw_http_figures, raw.per_second);
    const auto raw_http_16 = measure(dir, responder, raw_http_socket, 16, http::verb::post,
                                     "/v1/guests/vm1/ping", budget);
    print_row("limit: raw HTTP round trip, 16 clients", raw_http_16, raw.per_second);
    const auto raw_http_64 =
        api_load(raw_http_socket, 64, http::verb::post, "/v1/guests/vm1/ping", budget);
    print_row("limit: raw HTTP round trip, 64 clients", raw_http_64, raw.per_second);

    const auto server = daemon_process(daemon.pid());
    std::map<std::pair<std::string, int>, scenario_figures> api;  // {guest, clients}
    for (const std::string guest : {"vm1", "batching"}) {
        for (int clients : {1, 16, 64}) {
            auto figures = measure(dir, server, daemon.socket(), clients, http::verb::post,
                                   "/v1/guests/" + guest + "/ping", budget);
            print_row("API ping, " + std::string(guest == "vm1" ? "fake" : "batching") +
                          " guest, " + std::to_string(clients) + " client" +
                          (clients > 1 ? "s" : ""),
                      figures, raw.per_second);
            api[{guest, clients}] = std::move(figures);
        }
    }
    // The HTTP layer alone (no guest round trip), to show what dominates the cost.
    const auto http_only =
        measure(dir, server, daemon.socket(), 1, http::verb::get, "/v1/ping", budget);
    print_row("GET /v1/ping (no guest), 1 client", http_only, raw.per_second);
    const auto http_only_64 =
        measure(dir, server, daemon.socket(), 64, http::verb::get, "/v1/ping", budget);
    print_row("GET /v1/ping (no guest), 64 clients", http_only_64, raw.per_second);

    const auto& fake_1 = api[{"vm1", 1}].load;
    const auto& batching_1 = api[{"batching", 1}].load;
    const auto& batching_64 = api[{"batching", 64}];
    std::printf("\n  targets (ratio >= 1.00 meets it):\n");
    std::printf("  %-60s %8.2f  (%.0f/s vs 100k/s)\n", "64 clients, batching guest, throughput",
                batching_64.load.per_second / 100000.0, batching_64.load.per_second);
    std::printf("  %-60s %8.2f  (%.1f us vs 8 us)\n", "64 clients, batching guest, daemon CPU",
                batching_64.cpu_us_per_request > 0 ? 8.0 / batching_64.cpu_us_per_request : 0.0,
                batching_64.cpu_us_per_request);
    std::printf("  %-60s %8.2f  (p50 %.0f us vs 40 us)\n", "1 client, batching guest, latency",
                batching_1.latency_us.p50 > 0 ? 40.0 / batching_1.latency_us.p50 : 0.0,
                batching_1.latency_us.p50);
    const double limit_sum = raw.latency_us.p50 + raw_http_figures.load.latency_us.p50;
    std::printf("  %-60s %8.2f  (p50 %.0f us vs raw guest %.0f + raw HTTP %.0f us)\n",
                "1 client, fake guest, vs the sum of its limits",
                fake_1.latency_us.p50 > 0 ? limit_sum / fake_1.latency_us.p50 : 0.0,
                fake_1.latency_us.p50, raw.latency_us.p50, raw_http_figures.load.latency_us.p50);

    // The request path at 16 clients, each figure beside its target and the raw responder's.
    std::array<double, 3> load{};
    ::getloadavg(load.data(), static_cast<int>(load.size()));
    std::printf(
        "\n  the request path, 16 clients (load average %.2f %.2f %.2f now; the raw "
        "responder is a poll() loop on one thread of this program):\n",
        load[0], load[1], load[2]);
    std::printf("  %-36s %10s %10s %13s %15s\n", "", "syscalls/r", "target", "CPU us/r", "target");
    auto target_row = [](const std::string& label, const scenario_figures& f, bool targeted) {
        std::printf("  %-36s %10.2f %10s %13.1f %15s\n", label.c_str(), f.syscalls_per_request,
                    targeted ? "<= 2.6" : "", f.cpu_us_per_request,
                    targeted ? "<= 24 (0.75x32)" : "");
    };
    target_row("API ping, fake guest", api[{"vm1", 16}], true);
    target_row("API ping, batching guest", api[{"batching", 16}], true);
    target_row("raw HTTP responder", raw_http_16, false);
    std::printf("  daemon syscalls a request, fake guest: %s\n",
                syscall_breakdown(api[{"vm1", 16}]).c_str());
    std::printf("  daemon syscalls a request, batching guest: %s\n",
                syscall_breakdown(api[{"batching", 16}]).c_str());
    std::printf("  raw responder syscalls a request: %s\n", syscall_breakdown(raw_http_16).c_str());

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

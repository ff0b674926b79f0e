// Process, /proc and event-stream helpers of the process-level benchmarks.
#include "tests/bench/bench_support.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <numeric>
#include <sstream>
#include <stdexcept>

#include <boost/json/parse.hpp>

namespace stereos::bench {

namespace json = boost::json;

std::string hostd_program() {
    return STEREOS_HOSTD_PROGRAM;
}
std::string fakeguest_program() {
    return STEREOS_FAKEGUEST_PROGRAM;
}

unsigned cpu_count() {
    const long n = ::sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? static_cast<unsigned>(n) : std::thread::hardware_concurrency();
}

void print_header(const std::string& title) {
    std::array<double, 3> load{};
    ::getloadavg(load.data(), static_cast<int>(load.size()));
    std::printf("%s\n  machine: nproc=%u, load average %.2f %.2f %.2f at start\n", title.c_str(),
                cpu_count(), load[0], load[1], load[2]);
    std::fflush(stdout);
}

distribution summarize(std::vector<double> samples) {
    distribution d;
    if (samples.empty())
        return d;
    std::sort(samples.begin(), samples.end());
    // Nearest-rank percentiles: an observed value, never an interpolation.
    auto rank = [&](double p) {
        const auto index = static_cast<std::size_t>(p * static_cast<double>(samples.size()));
        return samples[std::min(index, samples.size() - 1)];
    };
    d.count = samples.size();
    d.p50 = rank(0.50);
    d.p99 = rank(0.99);
    d.max = samples.back();
    d.mean =
        std::accumulate(samples.begin(), samples.end(), 0.0) / static_cast<double>(samples.size());
    return d;
}

double milliseconds_between(bench_clock::time_point from, bench_clock::time_point to) {
    return std::chrono::duration<double, std::milli>(to - from).count();
}

long long cpu_ticks(pid_t pid) {
    const auto text = testing::read_text_file("/proc/" + std::to_string(pid) + "/stat");
    // The command name may contain spaces: fields are counted after its closing ')'.
    const auto close = text.rfind(')');
    if (close == std::string::npos)
        return -1;
    std::istringstream fields(text.substr(close + 2));
    std::string field;
    long long utime = -1, stime = -1;
    // After ')': state is field 3; utime and stime are fields 14 and 15.
    for (int number = 3; number <= 15 && fields >> field; ++number) {
        if (number == 14)
            utime = std::stoll(field);
        if (number == 15)
            stime = std::stoll(field);
    }
    return utime < 0 || stime < 0 ? -1 : utime + stime;
}

double cpu_percent_over(pid_t pid, std::chrono::milliseconds window) {
    const auto start = bench_clock::now();
    const auto before = cpu_ticks(pid);
    std::this_thread::sleep_for(window);
    const auto after = cpu_ticks(pid);
    const double seconds = std::chrono::duration<double>(bench_clock::now() - start).count();
    if (before < 0 || after < 0)
        return -1;
    const auto ticks_per_second = static_cast<double>(::sysconf(_SC_CLK_TCK));
    return static_cast<double>(after - before) / ticks_per_second / seconds * 100.0;
}

namespace {

int connect_unix(const std::string& path) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (path.size() >= sizeof address.sun_path) {
        ::close(fd);
        return -1;
    }
    std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

bool write_all(int fd, const std::string& bytes) {
    std::size_t done = 0;
    while (done < bytes.size()) {
        const auto n = ::send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
        if (n <= 0)
            return false;
        done += static_cast<std::size_t>(n);
    }
    return true;
}

}  // namespace

hostd::hostd(const testing::temp_directory& dir, const std::vector<guest_line>& guests,
             const std::string& log_level, const std::string& daemon_extra)
    : socket_((dir / "api.sock").string()) {
    std::string config = testing::test_daemon_section(dir, daemon_extra) + "\n";
    config.reserve(config.size() + guests.size() * 96);
    for (const auto& g : guests)
        config += "[[guest]]\nname = \"" + g.name + "\"\nendpoint = \"" + g.endpoint + "\"\n";
    const auto config_file = dir / "hostd.toml";
    testing::write_text_file(config_file, config);
    started_ = bench_clock::now();
    process_ = std::make_unique<testing::child_process>(
        std::vector<std::string>{hostd_program(), "--config", config_file.string(), "--log",
                                 "stderr", "--log-level", log_level},
        dir.path(), "hostd");
}

hostd::~hostd() {
    if (!stopped_)
        stop(30s);
}

bool hostd::wait_for_api(std::chrono::milliseconds limit) {
    const auto end = bench_clock::now() + limit;
    while (bench_clock::now() < end) {
        if (!process_->running())
            return false;
        if (const int fd = connect_unix(socket_); fd >= 0) {
            ::close(fd);
            return true;
        }
        std::this_thread::sleep_for(5ms);
    }
    return false;
}

std::optional<std::chrono::milliseconds> hostd::stop(std::chrono::milliseconds limit) {
    stopped_ = true;
    const auto start = bench_clock::now();
    process_->send_signal(SIGTERM);
    if (!process_->wait_exit(limit)) {
        process_->send_signal(SIGKILL);
        process_->wait_exit(10s);
        return std::nullopt;
    }
    return std::chrono::duration_cast<std::chrono::milliseconds>(bench_clock::now() - start);
}

fakeguest_process::fakeguest_process(const testing::temp_directory& dir, const std::string& label,
                                     const std::string& listen, std::size_t count,
                                     const std::vector<std::string>& flags) {
    std::vector<std::string> argv{fakeguest_program(), "--listen", listen, "--count",
                                  std::to_string(count)};
    argv.insert(argv.end(), flags.begin(), flags.end());
    process_ = std::make_unique<testing::child_process>(argv, dir.path(), label);
    const auto end = bench_clock::now() + 120s;
    while (true) {
        auto found = process_->stdout_lines_with("listening ");
        if (found.size() >= count) {
            endpoints_ = std::move(found);
            return;
        }
        if (!process_->running() || bench_clock::now() > end) {
            throw std::runtime_error("stereos-fakeguest (" + label +
                                     ") did not start: " + process_->stderr_text());
        }
        std::this_thread::sleep_for(20ms);
    }
}

fakeguest_process::~fakeguest_process() {
    process_->send_signal(SIGTERM);
    if (!process_->wait_exit(20s))
        process_->send_signal(SIGKILL);
}

event_stream::event_stream(const std::string& api_socket) : capture_(api_socket) {
    if (capture_.status() != 200)
        throw std::runtime_error("GET /v1/events answered " + std::to_string(capture_.status()));
}

std::optional<daemon_event> event_stream::next(bench_clock::time_point deadline) {
    while (auto line = capture_.next(deadline)) {
        boost::system::error_code ec;
        auto value = json::parse(line->text, ec);
        if (ec || !value.is_object())
            continue;
        const auto& object = value.get_object();
        auto text = [&](const char* key) {
            const auto* field = object.if_contains(key);
            return field && field->is_string() ? std::string(field->get_string()) : std::string();
        };
        daemon_event event{line->received, text("guest"), text("kind"),
                           text("to"),     text("from"),  false};
        if (const auto* snapshot = object.if_contains("snapshot"))
            event.snapshot = snapshot->is_bool() && snapshot->get_bool();
        if (event.kind == "overflow")
            overflowed_ = true;
        return event;
    }
    return std::nullopt;
}

std::pair<unsigned, std::string> http_exchange(const std::string& api_socket,
                                               const std::string& method,
                                               const std::string& target) {
    const int fd = connect_unix(api_socket);
    if (fd < 0)
        return {0, "cannot connect"};
    write_all(fd, method + " " + target +
                      " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                      "Content-Length: 0\r\n\r\n");
    std::string answer;
    std::array<char, 64 * 1024> chunk;  // filled by recv before use
    while (true) {
        const auto n = ::recv(fd, chunk.data(), chunk.size(), 0);
        if (n <= 0)
            break;
        answer.append(chunk.data(), static_cast<std::size_t>(n));
    }
    ::close(fd);
    unsigned status = 0;
    if (answer.size() > 12)
        status = static_cast<unsigned>(std::atoi(answer.c_str() + 9));
    const auto body = answer.find("\r\n\r\n");
    return {status, body == std::string::npos ? std::string() : answer.substr(body + 4)};
}

}  // namespace stereos::bench

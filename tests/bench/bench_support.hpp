// Helpers shared by the process-level benchmarks (bench_api, bench_scale, bench_recovery): a
// stereos-hostd process on a generated config, stereos-fakeguest processes, an /v1/events
// subscriber on its own thread, percentiles, and /proc readings (RSS, CPU ticks).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/child_process.hpp"
#include "tests/support/unix_http.hpp"

namespace stereos::bench {

using bench_clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

std::string hostd_program();
std::string fakeguest_program();

// Online CPUs, printed next to every figure.
unsigned cpu_count();
// The first line of every bench's output: name, cores, load average.
void print_header(const std::string& title);

// Sorted-sample statistics; values in whatever unit they were added in.
struct distribution {
    std::size_t count = 0;
    double p50 = 0, p99 = 0, max = 0, mean = 0;
};
distribution summarize(std::vector<double> samples);

double milliseconds_between(bench_clock::time_point from, bench_clock::time_point to);

// utime + stime of a process in clock ticks (sysconf(_SC_CLK_TCK) per second); -1 if unknown.
long long cpu_ticks(pid_t pid);
// CPU used by `pid` over `window`, as a percentage of one core.
double cpu_percent_over(pid_t pid, std::chrono::milliseconds window);

// One [[guest]] of a generated config.
struct guest_line {
    std::string name;
    std::string endpoint;
};

// A stereos-hostd process on a config with `guests` (and `daemon_extra` lines in [daemon]),
// logging at `log_level` to <dir>/hostd.err. Stopped with SIGTERM on destruction.
class hostd {
  public:
    hostd(const testing::temp_directory& dir, const std::vector<guest_line>& guests,
          const std::string& log_level = "info", const std::string& daemon_extra = {});
    ~hostd();
    hostd(const hostd&) = delete;

    // Waits until the API socket accepts a connection; false if the daemon died or `limit`
    // passed.
    bool wait_for_api(std::chrono::milliseconds limit = 60s);
    // SIGTERM and wait; returns how long the daemon took to exit, or nullopt (then SIGKILL).
    std::optional<std::chrono::milliseconds> stop(std::chrono::milliseconds limit = 60s);

    pid_t pid() const { return process_->pid(); }
    const std::string& socket() const noexcept { return socket_; }
    bench_clock::time_point started_at() const noexcept { return started_; }
    std::string log() const { return process_->stderr_text(); }

  private:
    std::string socket_;
    bench_clock::time_point started_;
    std::unique_ptr<testing::child_process> process_;
    bool stopped_ = false;
};

// A stereos-fakeguest process serving `count` guests on `listen` (with %d for unix paths).
class fakeguest_process {
  public:
    fakeguest_process(const testing::temp_directory& dir, const std::string& label,
                      const std::string& listen, std::size_t count,
                      const std::vector<std::string>& flags = {});
    ~fakeguest_process();
    fakeguest_process(const fakeguest_process&) = delete;
    // The endpoints, in order, once every listener is up; throws if it does not start.
    const std::vector<std::string>& endpoints() const noexcept { return endpoints_; }
    pid_t pid() const { return process_->pid(); }

  private:
    std::unique_ptr<testing::child_process> process_;
    std::vector<std::string> endpoints_;
};

// One line of GET /v1/events, with the moment it was read.
struct daemon_event {
    bench_clock::time_point received;
    std::string guest;
    std::string kind;  // state, lifecycle, link, provision, overflow
    std::string to;    // state events: the new state
    std::string from;
    bool snapshot = false;
};

// A subscriber to GET /v1/events read on its own thread (testing::event_capture). Reading never
// waits for the consumer, so a slow consumer cannot make the daemon drop this subscriber; the
// daemon may still cut it off ("overflow") when it publishes faster than one socket write per
// 1024 events; closed() is true once the stream ended and every event before the end was taken.
class event_stream {
  public:
    explicit event_stream(const std::string& api_socket);

    // The next event, or nullopt if none arrived by `deadline` or the stream ended.
    std::optional<daemon_event> next(bench_clock::time_point deadline);
    bool closed() const { return capture_.ended(); }
    // Events dropped by the daemon (an overflow marker was among the events taken).
    bool overflowed() const noexcept { return overflowed_; }

  private:
    testing::event_capture capture_;
    bool overflowed_ = false;
};

// A blocking HTTP/1.1 exchange on the API socket (Connection: close); returns {status, body}.
std::pair<unsigned, std::string> http_exchange(const std::string& api_socket,
                                               const std::string& method,
                                               const std::string& target);

}  // namespace stereos::bench

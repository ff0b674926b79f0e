// Recovery: how long after a guest becomes reachable again the daemon has the link up and the
// guest `ready`, with the default reconnect backoff, once backoff has reset (the link had been
// up longer than stable_after before it was lost). A real stereos-hostd holds one guest; the
// guest is a fake guest in this process, so the bench knows the exact moment it listens again
// and the moment the daemon's first request arrives. Each sample: stop the guest, wait for the
// daemon's `disconnected` event, stay away for OFF ms, listen again on the same unix socket,
// and time until the subscriber reads `ready`; split into "waiting for the daemon's next
// connect attempt" (listen -> first request received) and "connect to ready" (first request ->
// ready event read).
// Usage: bench_recovery [--off 0,250,1000,3000] [--samples 5]
#include <array>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <future>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include "config/config.hpp"
#include "daemon/guest_link.hpp"
#include "tests/bench/bench_support.hpp"
#include "tests/fakeguest/fake_guest.hpp"

namespace asio = boost::asio;
using namespace stereos;
using namespace stereos::bench;

namespace {

// A fake guest on its own thread that can disappear and come back on the same socket path.
class restartable_guest {
  public:
    explicit restartable_guest(std::string path)
        : path_(std::move(path)), work_(asio::make_work_guard(io_)) {
        thread_ = std::thread([this] { io_.run(); });
    }
    ~restartable_guest() {
        // Nothing may escape a destructor: a failed stop is reported and the loop stopped outright.
        try {
            stop();
        } catch (const std::exception& failure) {
            std::fprintf(stderr, "bench_recovery: stopping the guest failed: %s\n", failure.what());
            io_.stop();
        }
        work_.reset();
        try {
            thread_.join();
        } catch (const std::exception& failure) {
            std::fprintf(stderr, "bench_recovery: joining the guest thread failed: %s\n",
                         failure.what());
        }
    }

    // Listens on the path with a fresh guest (uptime 0, as after a reboot); returns the moment
    // listen() had returned.
    bench_clock::time_point start() {
        {
            std::lock_guard lock(mutex_);
            first_request_.reset();
        }
        std::promise<bench_clock::time_point> listening;
        asio::post(io_, [&] {
            guest_ = std::make_unique<testing::fake_guest>(io_.get_executor());
            guest_->behaviour.keep_received_lines = false;
            guest_->set_line_observer([this](const testing::received_line&) {
                const auto now = bench_clock::now();
                std::lock_guard lock(mutex_);
                if (!first_request_)
                    first_request_ = now;
            });
            guest_->listen_unix(path_);
            listening.set_value(bench_clock::now());
        });
        return listening.get_future().get();
    }

    // Closes the listener and every connection; the socket file goes too, so connects fail.
    void stop() {
        std::promise<void> stopped;
        asio::post(io_, [&] {
            if (guest_) {
                guest_->stop();
                guest_.reset();
            }
            stopped.set_value();
        });
        stopped.get_future().get();
    }

    std::optional<bench_clock::time_point> first_request() const {
        std::lock_guard lock(mutex_);
        return first_request_;
    }

  private:
    std::string path_;
    asio::io_context io_{1};
    asio::executor_work_guard<asio::io_context::executor_type> work_;
    std::unique_ptr<testing::fake_guest> guest_;
    std::thread thread_;
    mutable std::mutex mutex_;
    std::optional<bench_clock::time_point> first_request_;
};

// Reads events until vm1's state becomes `state`; returns when the subscriber read it.
std::optional<bench_clock::time_point> wait_for_state(event_stream& events, std::string& current,
                                                      const std::string& state,
                                                      std::chrono::milliseconds limit) {
    if (current == state)
        return bench_clock::now();
    const auto deadline = bench_clock::now() + limit;
    while (auto event = events.next(deadline)) {
        if (event->kind == "state" && event->guest == "vm1") {
            current = event->to;
            if (current == state)
                return event->received;
        }
    }
    return std::nullopt;
}

std::vector<int> parse_list(const std::string& text) {
    std::vector<int> values;
    std::istringstream list(text);
    for (std::string item; std::getline(list, item, ',');)
        values.push_back(std::stoi(item));
    return values;
}

int run_bench(int argc, char** argv) {
    std::vector<int> off_times{0, 250, 1000, 3000};
    int samples = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string key = argv[i];
        if (key == "--off") {
            off_times = parse_list(argv[i + 1]);
        } else if (key == "--samples") {
            samples = std::atoi(argv[i + 1]);
        } else {
            std::fprintf(stderr, "bench_recovery: unknown option %s\n", key.c_str());
            return 2;
        }
    }

    const daemon::guest_link_options link_defaults;
    const config::link_timeouts config_defaults;
    print_header(
        "bench_recovery: guest back on the same unix socket -> state ready, default backoff");
    std::printf(
        "  backoff in force: first retry after %lld ms, doubling, each delay uniform in "
        "[d/2, d], capped at %lld ms (reconnect_max); reset after the link stayed up %lld "
        "ms; connect_timeout %lld ms\n",
        static_cast<long long>(link_defaults.reconnect_initial.count()),
        static_cast<long long>(config_defaults.reconnect_max.count()),
        static_cast<long long>(link_defaults.stable_after.count()),
        static_cast<long long>(config_defaults.connect_timeout.count()));

    testing::temp_directory dir("stereos-bench-recovery");
    const auto guest_path = (dir / "vm1.sock").string();
    restartable_guest guest(guest_path);
    guest.start();
    hostd daemon(dir, {{"vm1", "unix:" + guest_path}}, "info");
    if (!daemon.wait_for_api()) {
        std::fprintf(stderr, "stereos-hostd did not start:\n%s\n", daemon.log().c_str());
        return 1;
    }
    event_stream events(daemon.socket());
    std::string state;
    if (!wait_for_state(events, state, "ready", 30s)) {
        std::fprintf(stderr, "vm1 did not become ready:\n%s\n", daemon.log().c_str());
        return 1;
    }

    std::printf("  %-10s %-24s %-24s %-24s\n", "away", "listen -> ready (ms)",
                "waiting for retry (ms)", "connect -> ready (ms)");
    std::printf("  %-10s %-24s %-24s %-24s\n", "", "p50 / max", "p50 / max", "p50 / max");
    int status = 0;
    for (const int off : off_times) {
        std::vector<double> totals, waits, connects;
        for (int i = 0; i < samples; ++i) {
            // Up longer than stable_after, so the next loss starts backoff from the beginning.
            std::this_thread::sleep_for(link_defaults.stable_after + 500ms);
            const auto stopped = bench_clock::now();
            guest.stop();
            if (!wait_for_state(events, state, "disconnected", 30s)) {
                std::fprintf(stderr, "the daemon did not notice the guest leaving\n");
                return 1;
            }
            std::this_thread::sleep_until(stopped + std::chrono::milliseconds(off));
            const auto listening = guest.start();
            const auto ready = wait_for_state(events, state, "ready", 60s);
            const auto first = guest.first_request();
            if (!ready || !first) {
                std::fprintf(stderr, "vm1 did not become ready within 60 s of its return\n");
                status = 1;
                break;
            }
            totals.push_back(milliseconds_between(listening, *ready));
            waits.push_back(milliseconds_between(listening, *first));
            connects.push_back(milliseconds_between(*first, *ready));
        }
        const auto total = summarize(totals), wait = summarize(waits),
                   connect = summarize(connects);
        std::array<char, 32> label{};
        std::snprintf(label.data(), label.size(), "%d ms", off);
        std::printf("  %-10s %9.1f / %-12.1f %9.1f / %-12.1f %9.2f / %-12.2f (%zu samples)\n",
                    label.data(), total.p50, total.max, wait.p50, wait.max, connect.p50,
                    connect.max, total.count);
        std::fflush(stdout);
    }
    std::printf(
        "  (away = from stopping the guest to listening again; target: ready within "
        "150 ms of the guest's return once backoff has reset)\n");
    if (!daemon.stop()) {
        std::fprintf(stderr, "stereos-hostd did not stop within 60 s\n");
        return 1;
    }
    return status;
}

}  // namespace

int main(int argc, char** argv) {
    // A failure to set up or to measure ends the run with its message, not with terminate().
    try {
        return run_bench(argc, argv);
    } catch (const std::exception& failure) {
        std::fprintf(stderr, "bench_recovery: %s\n", failure.what());
        return 1;
    }
}

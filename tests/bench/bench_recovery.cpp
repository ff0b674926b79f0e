// Recovery: how long after a guest's stereosd listens again the daemon has it `ready` (link up
// and handshake answered), with the default reconnect policy, and how often the daemon tries a
// guest that stays away. A real stereos-hostd holds the guests; they are fake guests in this
// process, one thread each, so the bench knows the moment each listens again and the moment the
// daemon's first request arrives.
// Per absence: every guest has been up longer than stable_after; all go away together (as in a
// host-wide reboot), the bench waits for each `disconnected`, then each returns after the
// absence plus a random 0-100 ms (so returns do not line up with retry ticks), as a fresh run
// of stereosd (uptime 0). Samples: return -> `ready` read by an event subscriber, split into
// "waiting for the daemon's next attempt" and "connect to ready". Half the guests are on TCP
// (retried on a timer), half on unix sockets (also watched for the socket file to appear).
// Then one guest stays away: its failed attempts in the fast-retry window and the rate after it,
// read from /metrics, give the attempts in its first hour.
// Usage: bench_recovery [--away 1,10,30] [--guests 20] [--stay-away 90]
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <stereos/link/guest_link.hpp>
#include "config/config.hpp"
#include "tests/bench/bench_support.hpp"
#include "tests/fakeguest/fake_guest.hpp"

namespace asio = boost::asio;
using namespace stereos;
using namespace stereos::bench;

namespace {

// A fake guest on its own thread that can disappear and come back on the same socket path.
class restartable_guest {
  public:
    // `where` is a unix socket path, or "tcp" for a loopback port chosen at the first start and
    // kept.
    explicit restartable_guest(std::string where)
        : where_(std::move(where)), work_(asio::make_work_guard(io_)) {
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
            if (where_ == "tcp") {
                endpoint_ = guest_->listen_tcp("127.0.0.1", port_);
                port_ = static_cast<std::uint16_t>(
                    std::stoi(endpoint_.substr(endpoint_.rfind(':') + 1)));
            } else {
                endpoint_ = guest_->listen_unix(where_);
            }
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

    // The endpoint as the daemon's config names it (valid after the first start()).
    std::string endpoint() const { return endpoint_; }

  private:
    std::string where_;
    std::string endpoint_;
    std::uint16_t port_ = 0;
    asio::io_context io_{1};
    asio::executor_work_guard<asio::io_context::executor_type> work_;
    std::unique_ptr<testing::fake_guest> guest_;
    std::thread thread_;
    mutable std::mutex mutex_;
    std::optional<bench_clock::time_point> first_request_;
};

struct guest_states {
    std::map<std::string, std::string, std::less<>> current;
    std::map<std::string, bench_clock::time_point, std::less<>> reached_at;  // last change
};

// Reads events until every guest in `names` is in `state` (or `limit` passes); false on timeout.
bool wait_all(event_stream& events, guest_states& states, const std::vector<std::string>& names,
              const std::string& state, std::chrono::milliseconds limit) {
    const auto deadline = bench_clock::now() + limit;
    auto all_there = [&] {
        return std::all_of(names.begin(), names.end(),
                           [&](const std::string& n) { return states.current[n] == state; });
    };
    while (!all_there()) {
        auto event = events.next(deadline);
        if (!event)
            return false;
        if (event->kind == "state") {
            states.current[event->guest] = event->to;
            states.reached_at[event->guest] = event->received;
        }
    }
    return true;
}

std::vector<int> parse_list(const std::string& text) {
    std::vector<int> values;
    std::istringstream list(text);
    for (std::string item; std::getline(list, item, ',');)
        values.push_back(std::stoi(item));
    return values;
}

// The value of stereos_guest_link_connect_failures_total for `guest`, or -1.
long long connect_failures(const std::string& api_socket, const std::string& guest) {
    const auto [status, body] = http_exchange(api_socket, "GET", "/metrics");
    if (status != 200)
        return -1;
    const std::string key = "stereos_guest_link_connect_failures_total{guest=\"" + guest + "\"} ";
    const auto at = body.find(key);
    if (at == std::string::npos)
        return -1;
    return std::stoll(body.substr(at + key.size()));
}

int run_bench(int argc, char** argv) {
    std::vector<int> away_seconds{1, 10, 30};
    int guest_count = 20;
    int stay_away = 90;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string key = argv[i];
        if (key == "--away") {
            away_seconds = parse_list(argv[i + 1]);
        } else if (key == "--guests") {
            guest_count = std::max(2, std::atoi(argv[i + 1]));
        } else if (key == "--stay-away") {
            stay_away = std::atoi(argv[i + 1]);
        } else {
            std::fprintf(stderr, "bench_recovery: unknown option %s\n", key.c_str());
            return 2;
        }
    }

    const link::guest_link_options link_defaults;
    const config::link_timeouts config_defaults;
    print_header("bench_recovery: guests back after an absence -> state ready, default policy");
    std::printf(
        "  policy: after losing a link that was up %lld ms or more, retry every %lld ms (uniform "
        "in [d/2, d]) for %lld ms, then double to %lld ms (reconnect_max); connect + handshake "
        "bound %lld ms\n",
        static_cast<long long>(link_defaults.stable_after.count()),
        static_cast<long long>(link_defaults.reconnect_initial.count()),
        static_cast<long long>(link_defaults.fast_retry_window.count()),
        static_cast<long long>(config_defaults.reconnect_max.count()),
        static_cast<long long>(config_defaults.connect_timeout.count()));

    testing::temp_directory dir("stereos-bench-recovery");
    std::vector<std::unique_ptr<restartable_guest>> guests;
    std::vector<std::string> names;
    std::vector<guest_line> lines;
    for (int i = 0; i < guest_count; ++i) {
        const bool tcp = i % 2 == 0;
        guests.push_back(std::make_unique<restartable_guest>(
            tcp ? std::string("tcp") : (dir / ("vm" + std::to_string(i) + ".sock")).string()));
        guests.back()->start();
        names.push_back((tcp ? "tcp" : "unix") + std::to_string(i));
        lines.push_back({names.back(), guests.back()->endpoint()});
    }
    restartable_guest stays_away("tcp");
    stays_away.start();
    lines.push_back({"away", stays_away.endpoint()});

    hostd daemon(dir, lines, "info");
    if (!daemon.wait_for_api()) {
        std::fprintf(stderr, "stereos-hostd did not start:\n%s\n", daemon.log().c_str());
        return 1;
    }
    event_stream events(daemon.socket());
    guest_states states;
    auto everyone = names;
    everyone.push_back("away");
    if (!wait_all(events, states, everyone, "ready", 60s)) {
        std::fprintf(stderr, "the guests did not become ready:\n%s\n", daemon.log().c_str());
        return 1;
    }

    std::printf("  %-8s %-9s %-26s %-26s %-22s\n", "away", "transport", "return -> ready (ms)",
                "waiting for attempt (ms)", "connect -> ready (ms)");
    std::printf("  %-8s %-9s %-26s %-26s %-22s\n", "", "", "p50 / p99 / max", "p50 / p99 / max",
                "p50 / max");
    std::mt19937 random(std::random_device{}());
    int status = 0;
    for (const int away : away_seconds) {
        // Up longer than stable_after, so the loss opens the fast-retry window.
        std::this_thread::sleep_for(link_defaults.stable_after + 500ms);
        const auto left = bench_clock::now();
        for (auto& g : guests)
            g->stop();
        if (!wait_all(events, states, names, "disconnected", 30s)) {
            std::fprintf(stderr, "the daemon did not notice the guests leaving\n");
            return 1;
        }
        std::vector<bench_clock::time_point> returned(guests.size());
        std::vector<std::thread> returners;
        for (std::size_t i = 0; i < guests.size(); ++i) {
            const auto at =
                left + std::chrono::seconds(away) + std::chrono::milliseconds(random() % 100);
            returners.emplace_back([&, i, at] {
                std::this_thread::sleep_until(at);
                returned[i] = guests[i]->start();
            });
        }
        for (auto& t : returners)
            t.join();
        if (!wait_all(events, states, names, "ready", 60s)) {
            std::fprintf(stderr, "not every guest became ready within 60 s of its return\n");
            status = 1;
            break;
        }
        for (const char* transport : {"tcp", "unix"}) {
            std::vector<double> totals, waits, connects;
            for (std::size_t i = 0; i < guests.size(); ++i) {
                if (!names[i].starts_with(transport))
                    continue;
                const auto ready = states.reached_at[names[i]];
                const auto first = guests[i]->first_request();
                totals.push_back(milliseconds_between(returned[i], ready));
                if (first) {
                    waits.push_back(milliseconds_between(returned[i], *first));
                    connects.push_back(milliseconds_between(*first, ready));
                }
            }
            const auto total = summarize(totals), wait = summarize(waits),
                       connect = summarize(connects);
            std::array<char, 32> label{};
            std::snprintf(label.data(), label.size(), "%d s", away);
            std::printf(
                "  %-8s %-9s %7.1f / %7.1f / %-8.1f %7.1f / %7.1f / %-8.1f %7.2f / %-8.2f (%zu "
                "guests)%s\n",
                label.data(), transport, total.p50, total.p99, total.max, wait.p50, wait.p99,
                wait.max, connect.p50, connect.max, total.count,
                total.p99 <= 150.0 ? "" : "  [p99 over the 150 ms target]");
        }
        std::fflush(stdout);
    }

    if (stay_away > 0 && status == 0) {
        // One guest that does not come back: count the daemon's attempts.
        std::this_thread::sleep_for(link_defaults.stable_after + 500ms);
        stays_away.stop();
        const std::vector<std::string> away_name{"away"};
        if (!wait_all(events, states, away_name, "disconnected", 30s)) {
            std::fprintf(stderr, "the daemon did not notice the guest leaving\n");
            return 1;
        }
        const auto gone = bench_clock::now();
        const auto at_start = connect_failures(daemon.socket(), "away");
        const auto window = link_defaults.fast_retry_window;
        std::this_thread::sleep_until(gone + window);
        const auto after_window = connect_failures(daemon.socket(), "away");
        const auto steady_from = bench_clock::now();
        std::this_thread::sleep_for(std::chrono::seconds(stay_away) - window);
        const auto at_end = connect_failures(daemon.socket(), "away");
        const double steady_seconds = milliseconds_between(steady_from, bench_clock::now()) / 1000;
        const double steady_rate = static_cast<double>(at_end - after_window) / steady_seconds;
        const double window_seconds = std::chrono::duration<double>(window).count();
        const double per_hour =
            static_cast<double>(after_window - at_start) + steady_rate * (3600.0 - window_seconds);
        std::printf(
            "  a guest away for good: %lld attempts in the first %.0f s, then %.2f/s over %.0f s; "
            "first hour about %.0f attempts (%.2f/s on average; target at most 1/s)\n",
            after_window - at_start, window_seconds, steady_rate, steady_seconds, per_hour,
            per_hour / 3600.0);
    }
    std::printf("  (target: p99 return -> ready within 150 ms for absences up to 30 s)\n");
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

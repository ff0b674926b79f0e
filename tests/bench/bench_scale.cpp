// Scale: one stereos-hostd holding N guests (default 1,000 then 10,000), served by
// stereos-fakeguest processes that each multiplex many unix-socket listeners. Per N it reports
// the time until every guest is healthy (counted on GET /v1/events), the daemon's RSS per guest
// (against a daemon holding only the probe guest, measured in the same run), its CPU while idle
// with keepalive and health polling at their defaults, and how long a state change takes to
// reach an events subscriber (a probe guest in this process pushes lifecycle events).
// Usage: bench_scale [--guests 1000,10000] [--idle-seconds 20] [--samples 20]
//                    [--per-process 2000]
#include <sys/resource.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <future>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include "config/config.hpp"
#include "tests/bench/bench_support.hpp"
#include "tests/fakeguest/fake_guest.hpp"

namespace asio = boost::asio;
using namespace stereos;
using namespace stereos::bench;

namespace {

struct options {
    std::vector<std::size_t> guests{1000, 10000};
    int idle_seconds = 20;
    int samples = 20;
    std::size_t per_process = 2000;
};

options parse_options(int argc, char** argv) {
    options opt;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string key = argv[i], value = argv[i + 1];
        if (key == "--guests") {
            opt.guests.clear();
            std::istringstream list(value);
            for (std::string item; std::getline(list, item, ',');)
                opt.guests.push_back(std::stoul(item));
        } else if (key == "--idle-seconds") {
            opt.idle_seconds = std::stoi(value);
        } else if (key == "--samples") {
            opt.samples = std::stoi(value);
        } else if (key == "--per-process") {
            opt.per_process = std::stoul(value);
        } else {
            std::fprintf(stderr, "bench_scale: unknown option %s\n", key.c_str());
            std::exit(2);
        }
    }
    return opt;
}

// The probe: one fake guest served by this process on its own thread, so the bench knows the
// exact moment it pushes a lifecycle event.
class probe_guest {
  public:
    explicit probe_guest(const std::string& socket_path)
        : guest_(io_.get_executor()), work_(asio::make_work_guard(io_)) {
        guest_.behaviour.keep_received_lines = false;
        guest_.behaviour.health_state = protocol::lifecycle_state::healthy;
        endpoint_ = guest_.listen_unix(socket_path);
        thread_ = std::thread([this] { io_.run(); });
    }
    ~probe_guest() {
        // Nothing may escape a destructor: a failed stop is reported and the loop stopped outright.
        try {
            asio::post(io_, [this] { guest_.stop(); });
        } catch (const std::exception& failure) {
            std::fprintf(stderr, "bench_scale: stopping the probe failed: %s\n", failure.what());
            io_.stop();
        }
        work_.reset();
        try {
            thread_.join();
        } catch (const std::exception& failure) {
            std::fprintf(stderr, "bench_scale: joining the probe thread failed: %s\n",
                         failure.what());
        }
    }
    const std::string& endpoint() const noexcept { return endpoint_; }

    // Pushes `state` on the guest's thread; returns the moment just before the write.
    bench_clock::time_point push(protocol::lifecycle_state state) {
        std::promise<bench_clock::time_point> pushed;
        asio::post(io_, [&] {
            const auto now = bench_clock::now();
            guest_.push_lifecycle(state);
            pushed.set_value(now);
        });
        return pushed.get_future().get();
    }

  private:
    asio::io_context io_{1};
    testing::fake_guest guest_;
    asio::executor_work_guard<asio::io_context::executor_type> work_;
    std::string endpoint_;
    std::thread thread_;
};

// Guest name -> state, fed by an events stream; re-subscribes (getting a fresh snapshot) if
// the daemon cuts the subscriber off.
class state_tracker {
  public:
    explicit state_tracker(std::string api_socket) : socket_(std::move(api_socket)) {
        stream_ = std::make_unique<event_stream>(socket_);
    }

    // Processes events until `done()` holds or `deadline`; returns the receipt time of the
    // event that made it hold.
    template <class Condition>
    std::optional<bench_clock::time_point> until(
        Condition done, bench_clock::time_point deadline,
        const std::function<void(const daemon_event&)>& observe = {}) {
        while (bench_clock::now() < deadline) {
            if (stream_->closed()) {
                ++resubscribed;
                stream_ = std::make_unique<event_stream>(socket_);
            }
            auto event = stream_->next(std::min(deadline, bench_clock::now() + 200ms));
            if (!event)
                continue;
            if (observe)
                observe(*event);
            if (event->kind != "state")
                continue;
            auto& state = states[event->guest];
            if (state == "healthy")
                --healthy;
            state = event->to;
            if (state == "healthy")
                ++healthy;
            if (done())
                return event->received;
        }
        return std::nullopt;
    }

    std::string summary() const {
        std::map<std::string, std::size_t> counts;
        for (const auto& [name, state] : states)
            ++counts[state];
        std::string text;
        for (const auto& [state, n] : counts)
            text += (text.empty() ? "" : ", ") + std::to_string(n) + " " + state;
        return text;
    }

    std::map<std::string, std::string> states;
    std::size_t healthy = 0;
    unsigned resubscribed = 0;

  private:
    std::string socket_;
    std::unique_ptr<event_stream> stream_;
};

struct scenario_figures {
    bool complete = false;
    double to_api_ms = 0, all_healthy_ms = 0;
    double startup_cpu_s = 0, startup_fakeguests_cpu_s = 0;  // CPU used until all were healthy
    std::size_t rss_kib = 0, fds = 0;
    double idle_cpu_percent = 0, fakeguests_cpu_percent = 0;
    distribution event_ms;
    double stop_ms = -1;
    unsigned resubscribed = 0;
};

scenario_figures run_scenario(std::size_t guests, const options& opt, probe_guest& probe) {
    scenario_figures figures;
    testing::temp_directory dir("stereos-bench-scale");
    std::vector<std::unique_ptr<fakeguest_process>> fakes;
    std::vector<guest_line> lines{{"probe", probe.endpoint()}};
    for (std::size_t first = 0, k = 0; first < guests; first += opt.per_process, ++k) {
        const auto count = std::min(opt.per_process, guests - first);
        const auto pattern = "unix:" + (dir / ("p" + std::to_string(k) + "-%d.sock")).string();
        fakes.push_back(std::make_unique<fakeguest_process>(
            dir, "fakeguest" + std::to_string(k), pattern, count,
            std::vector<std::string>{"--health-state", "healthy"}));
        const auto& endpoints = fakes.back()->endpoints();
        for (std::size_t i = 0; i < endpoints.size(); ++i)
            lines.push_back({"g" + std::to_string(k) + "-" + std::to_string(i), endpoints[i]});
    }
    const std::size_t total = lines.size();

    hostd daemon(dir, lines, "info");
    if (!daemon.wait_for_api(300s)) {
        std::printf("  %zu guests: the daemon did not serve its API:\n%s\n", guests,
                    daemon.log().substr(0, 4000).c_str());
        return figures;
    }
    figures.to_api_ms = milliseconds_between(daemon.started_at(), bench_clock::now());

    state_tracker tracker(daemon.socket());
    const auto healthy_at =
        tracker.until([&] { return tracker.healthy == total; }, bench_clock::now() + 300s);
    figures.resubscribed = tracker.resubscribed;
    if (!healthy_at) {
        std::printf("  %zu guests: not all healthy within 300 s: %s\n", guests,
                    tracker.summary().c_str());
        return figures;
    }
    figures.all_healthy_ms = milliseconds_between(daemon.started_at(), *healthy_at);
    const auto ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
    figures.startup_cpu_s = static_cast<double>(cpu_ticks(daemon.pid())) / ticks;
    for (const auto& f : fakes)
        figures.startup_fakeguests_cpu_s += static_cast<double>(cpu_ticks(f->pid())) / ticks;

    // Let start-up work (allocations of the connect burst, the first health round) settle, then
    // read the steady state.
    std::this_thread::sleep_for(std::chrono::seconds(std::min(opt.idle_seconds, 3)));
    figures.rss_kib = testing::resident_kib(daemon.pid());
    figures.fds = testing::open_fds(daemon.pid());

    const auto window = std::chrono::seconds(opt.idle_seconds);
    const auto window_start = bench_clock::now();
    const auto daemon_before = cpu_ticks(daemon.pid());
    long long fakes_before = 0;
    for (const auto& f : fakes)
        fakes_before += cpu_ticks(f->pid());
    std::this_thread::sleep_for(window);
    const auto daemon_after = cpu_ticks(daemon.pid());
    long long fakes_after = 0;
    for (const auto& f : fakes)
        fakes_after += cpu_ticks(f->pid());
    const double elapsed = std::chrono::duration<double>(bench_clock::now() - window_start).count();
    figures.idle_cpu_percent =
        static_cast<double>(daemon_after - daemon_before) / ticks / elapsed * 100.0;
    figures.fakeguests_cpu_percent =
        static_cast<double>(fakes_after - fakes_before) / ticks / elapsed * 100.0;

    // State event latency: the probe pushes degraded, then healthy, and so on; each sample is
    // the time from the push to the subscriber reading the probe's state event.
    std::vector<double> latencies;
    for (int i = 0; i < opt.samples; ++i) {
        const bool degrade = i % 2 == 0;
        const auto state =
            degrade ? protocol::lifecycle_state::degraded : protocol::lifecycle_state::healthy;
        const std::string expected = degrade ? "degraded" : "healthy";
        const auto pushed = probe.push(state);
        const auto seen = tracker.until([&] { return tracker.states["probe"] == expected; },
                                        bench_clock::now() + 30s);
        if (!seen) {
            std::printf("  %zu guests: the probe's %s event did not arrive within 30 s\n", guests,
                        expected.c_str());
            break;
        }
        latencies.push_back(milliseconds_between(pushed, *seen));
        std::this_thread::sleep_for(100ms);
    }
    if (tracker.states["probe"] != "healthy")
        probe.push(protocol::lifecycle_state::healthy);
    figures.event_ms = summarize(latencies);

    if (const auto stopped = daemon.stop(120s))
        figures.stop_ms = static_cast<double>(stopped->count());
    figures.complete = true;
    return figures;
}

void print_scenario(std::size_t guests, const scenario_figures& f, const scenario_figures& base) {
    if (!f.complete)
        return;
    std::printf("  %6zu guests (+probe): API up %.0f ms, all healthy %.0f ms after start", guests,
                f.to_api_ms, f.all_healthy_ms);
    if (f.resubscribed)
        std::printf(" (events subscriber cut off %u times, re-subscribed)", f.resubscribed);
    std::printf("\n      CPU until all healthy: daemon %.2f s, fake guest processes %.2f s\n",
                f.startup_cpu_s, f.startup_fakeguests_cpu_s);
    std::printf("      RSS %.1f MiB", static_cast<double>(f.rss_kib) / 1024.0);
    if (guests > 0) {
        const double per_guest =
            (static_cast<double>(f.rss_kib) - static_cast<double>(base.rss_kib)) /
            static_cast<double>(guests);
        std::printf(" = %.1f KiB per guest over the 1-guest daemon (%.1f MiB)  [target < 32]",
                    per_guest, static_cast<double>(base.rss_kib) / 1024.0);
    }
    std::printf(", %zu fds\n", f.fds);
    std::printf("      idle CPU %.2f%% of one core [target < 3]  (fake guest processes: %.2f%%)\n",
                f.idle_cpu_percent, f.fakeguests_cpu_percent);
    // Idle work is the health polling (its traffic also keeps the keepalive from firing).
    const config::link_timeouts defaults;
    const double polls_per_second = static_cast<double>(guests + 1) /
                                    std::chrono::duration<double>(defaults.health_interval).count();
    std::printf(
        "      = %.1f us of daemon CPU per health poll [target <= 15] (%.0f get_health "
        "round trips/s)\n",
        f.idle_cpu_percent / 100.0 / polls_per_second * 1e6, polls_per_second);
    std::printf("      state event to subscriber: p50 %.2f ms, max %.2f ms (%zu samples)\n",
                f.event_ms.p50, f.event_ms.max, f.event_ms.count);
    std::printf("      SIGTERM to exit: %.0f ms\n", f.stop_ms);
    std::fflush(stdout);
}

int run_bench(int argc, char** argv) {
    const auto opt = parse_options(argc, argv);
    print_header("bench_scale: one stereos-hostd, N guests on unix sockets (" +
                 std::to_string(opt.per_process) +
                 " per stereos-fakeguest process), defaults: health_interval 5s, "
                 "keepalive_interval 15s; idle window " +
                 std::to_string(opt.idle_seconds) + " s");
    rlimit files{};
    ::getrlimit(RLIMIT_NOFILE, &files);

    testing::temp_directory probe_dir("stereos-bench-probe");
    probe_guest probe((probe_dir / "probe.sock").string());

    // The baseline: the same daemon holding only the probe guest.
    const auto base = run_scenario(0, opt, probe);
    if (!base.complete)
        return 1;
    std::printf(
        "  baseline, 1 guest (the probe): RSS %.1f MiB, %zu fds, idle CPU %.2f%%, state "
        "event p50 %.2f ms, max %.2f ms\n",
        static_cast<double>(base.rss_kib) / 1024.0, base.fds, base.idle_cpu_percent,
        base.event_ms.p50, base.event_ms.max);
    std::fflush(stdout);

    int status = 0;
    for (const auto guests : opt.guests) {
        // The daemon needs a descriptor per guest, plus the API and a few more.
        if (files.rlim_max != RLIM_INFINITY && guests + 128 > files.rlim_max) {
            std::printf("  %zu guests: skipped, the hard open-file limit is %llu (ulimit -Hn)\n",
                        guests, static_cast<unsigned long long>(files.rlim_max));
            continue;
        }
        const auto figures = run_scenario(guests, opt, probe);
        print_scenario(guests, figures, base);
        if (!figures.complete)
            status = 1;
    }
    return status;
}

}  // namespace

int main(int argc, char** argv) {
    // A failure to set up or to measure ends the run with its message, not with terminate().
    try {
        return run_bench(argc, argv);
    } catch (const std::exception& failure) {
        std::fprintf(stderr, "bench_scale: %s\n", failure.what());
        return 1;
    }
}

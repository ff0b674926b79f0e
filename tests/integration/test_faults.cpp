// Fault injection with real processes: a real stereos-hostd, stereos-fakeguest processes told to
// misbehave, and real API clients. One case per fault; after each, the daemon must still answer,
// a healthy guest beside the faulty one must be unaffected, memory and descriptors must be back
// within a stated bound of a warmed-up baseline, and the log must say what happened.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include "tests/integration/api/api_test_support.hpp"

namespace json = boost::json;
using namespace stereos::api_test;
using steady = std::chrono::steady_clock;

namespace {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool sanitized = true;
#else
constexpr bool sanitized = false;
#endif

// What the daemon may hold after a fault beyond its warmed-up baseline. glibc keeps some freed
// memory in its arenas, so a little growth is not a leak; a leak per reconnect, per request or
// per event (thousands of each in these cases) would go far past this. Sanitizer builds add
// shadow memory and a quarantine of freed memory (see measurable_allocator()), so their bound
// is wider.
constexpr long rss_allowance_kib = sanitized ? 48 * 1024 : 4 * 1024;
// The faulty guest's own socket, and a client or two closing late.
constexpr std::size_t fd_allowance = 4;

// glibc raises its mmap threshold after the first large free, and then keeps megabyte buffers
// (a 1 MiB line, a 1 MB request body) on its heap after they are freed, so RSS stays up without
// a leak. A fixed threshold gives them back: RSS then follows what the daemon really holds.
// ASan ignores that and instead keeps freed memory in a quarantine (256 MiB by default) before
// reusing it, which alone would fill any bound here: the daemon gets a 16 MiB one, and gives
// free memory back to the system soon. Use-after-free is still caught within that window.
std::map<std::string, std::string> measurable_allocator() {
    std::map<std::string, std::string> env{{"MALLOC_MMAP_THRESHOLD_", "131072"}};
#if defined(__SANITIZE_ADDRESS__)
    const char* given = std::getenv("ASAN_OPTIONS");
    env["ASAN_OPTIONS"] = std::string(given ? given : "") +
                          ":quarantine_size_mb=16:allocator_release_to_os_interval_ms=200";
#endif
    return env;
}

// Short timeouts so every fault shows within a few seconds: a request gives up after 2 s, a
// silent link is pinged after 1 s, lost links retry within 300 ms.
const std::string quick_timeouts =
    "request_timeout = \"2s\"\n"
    "keepalive_interval = \"1s\"\n"
    "health_interval = \"300ms\"\n"
    "connect_timeout = \"1s\"\n"
    // A guest that stops answering is dropped 1 s after the verdict, not the default 120 s.
    "unresponsive_grace = \"1s\"\n";
const std::string quick_reconnect = "reconnect_max = \"300ms\"\n";

std::string describe_kib(long kib) {
    std::ostringstream text;
    text << static_cast<double>(kib) / 1024.0 << " MiB";
    return text.str();
}

std::size_t count_of(const std::string& text, const std::string& needle) {
    std::size_t count = 0;
    for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1))
        ++count;
    return count;
}

// One API request's result, gathered on a worker thread and checked on the test thread
// (Boost.Test assertions are not thread-safe).
struct outcome {
    unsigned status = 0;  // 0: the request failed at the socket level
    std::string code;     // error.code, or the socket error's text
    std::chrono::milliseconds took{};
};

outcome timed_request(const std::string& socket, const std::string& method,
                      const std::string& target, const std::string& body = {}) {
    const auto start = steady::now();
    outcome result;
    try {
        const auto answer = http(socket, method, target, body);
        result.status = answer.status;
        result.code = answer.error_code();
    } catch (const std::exception& e) {
        result.code = e.what();
    }
    result.took = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - start);
    return result;
}

// Sends one request over and over from worker threads until stop().
class request_loop {
  public:
    request_loop(const std::string& socket, const std::string& method, const std::string& target,
                 int threads = 2, const std::string& body = {}) {
        for (int i = 0; i < threads; ++i) {
            workers_.emplace_back([this, socket, method, target, body] {
                while (!stop_) {
                    auto result = timed_request(socket, method, target, body);
                    std::lock_guard lock(mutex_);
                    outcomes_.push_back(std::move(result));
                }
            });
        }
    }
    ~request_loop() { stop(); }
    request_loop(const request_loop&) = delete;

    std::vector<outcome> stop() {
        stop_ = true;
        for (auto& worker : workers_) {
            if (worker.joinable())
                worker.join();
        }
        std::lock_guard lock(mutex_);
        return outcomes_;
    }

  private:
    std::atomic<bool> stop_{false};
    std::mutex mutex_;
    std::vector<outcome> outcomes_;
    std::vector<std::thread> workers_;
};

// Counts by status, e.g. "200 x41, 504 x3", for failure messages.
std::string summary(const std::vector<outcome>& outcomes) {
    std::map<std::string, int> counts;
    for (const auto& o : outcomes)
        ++counts[std::to_string(o.status) + (o.code.empty() ? "" : " " + o.code)];
    std::string text;
    for (const auto& [what, n] : counts)
        text += (text.empty() ? "" : ", ") + what + " x" + std::to_string(n);
    return text;
}

std::chrono::milliseconds slowest(const std::vector<outcome>& outcomes) {
    std::chrono::milliseconds worst{0};
    for (const auto& o : outcomes)
        worst = std::max(worst, o.took);
    return worst;
}

// A unix socket client that connects and then does whatever the case needs by hand.
class raw_client {
  public:
    explicit raw_client(const std::string& path) : fd_(::socket(AF_UNIX, SOCK_STREAM, 0)) {
        sockaddr_un address{};
        address.sun_family = AF_UNIX;
        path.copy(address.sun_path, sizeof address.sun_path - 1);
        connected_ =
            fd_ >= 0 && ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
    }
    ~raw_client() { close(); }
    raw_client(raw_client&& other) noexcept
        : fd_(std::exchange(other.fd_, -1)), connected_(other.connected_) {}
    raw_client& operator=(raw_client&& other) noexcept {
        close();
        fd_ = std::exchange(other.fd_, -1);
        connected_ = other.connected_;
        return *this;
    }
    raw_client(const raw_client&) = delete;

    bool connected() const noexcept { return connected_; }
    bool send(const std::string& bytes) {
        return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
               static_cast<ssize_t>(bytes.size());
    }
    // Whatever arrives within `limit` (stops early at `enough` bytes or at EOF).
    std::string receive(std::chrono::milliseconds limit, std::size_t enough = 1) {
        std::string got;
        const auto end = steady::now() + limit;
        while (got.size() < enough) {
            const auto left =
                std::chrono::duration_cast<std::chrono::milliseconds>(end - steady::now());
            pollfd p{fd_, POLLIN, 0};
            if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0)
                break;
            std::array<char, 4096> chunk{};
            const auto n = ::recv(fd_, chunk.data(), chunk.size(), 0);
            if (n <= 0)
                break;
            got.append(chunk.data(), static_cast<std::size_t>(n));
        }
        return got;
    }
    void close() {
        if (fd_ >= 0)
            ::close(fd_);
        fd_ = -1;
    }

  private:
    int fd_ = -1;
    bool connected_ = false;
};

std::string request_text(const std::string& method, const std::string& target,
                         const std::string& body = {}) {
    std::string text = method + " " + target + " HTTP/1.1\r\nHost: localhost\r\n";
    if (!body.empty() || method == "POST")
        text += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
                "\r\n";
    return text + "\r\n" + body;
}

// A daemon with one healthy guest, "calm", warmed up and measured; each case adds the faulty
// guest at run time, after the baseline.
struct fault_bench {
    explicit fault_bench(const std::string& daemon_extra = quick_reconnect,
                         const std::string& log_level = "info")
        : calm(dir, "calm", 1, {"--health-state", "healthy"}),
          hostd(dir, {{"calm", calm.endpoint()}}, log_level, quick_timeouts + daemon_extra, "",
                measurable_allocator()) {
        warm_up();
    }

    const std::string& socket() const { return hostd.socket(); }

    // Exercises every path a case uses (requests, listings, metrics, adding and removing a
    // guest), then lets things settle and takes the baseline.
    void warm_up() {
        const auto ready = get(socket(), "/v1/guests/calm/wait?state=ready&timeout=30s");
        BOOST_TEST_REQUIRE(ready.status == 200u, ready.body);
        add_guest("warmup", calm.endpoint());
        BOOST_TEST_REQUIRE(get(socket(), "/v1/guests/warmup/wait?state=ready&timeout=30s").status ==
                           200u);
        for (int i = 0; i < 30; ++i) {
            BOOST_TEST_REQUIRE(post(socket(), "/v1/guests/calm/ping").status == 200u);
            BOOST_TEST_REQUIRE(get(socket(), "/v1/guests/warmup/health").status == 200u);
            BOOST_TEST_REQUIRE(get(socket(), "/v1/guests").status == 200u);
            BOOST_TEST_REQUIRE(get(socket(), "/metrics").status == 200u);
        }
        remove_guest("warmup");
        std::this_thread::sleep_for(1s);
        base_rss_kib = hostd.rss_kib();
        base_fds = hostd.fd_count();
        BOOST_TEST_MESSAGE("baseline: RSS " << describe_kib(base_rss_kib) << ", " << base_fds
                                            << " fds");
    }

    void add_guest(const std::string& name, const std::string& endpoint) {
        const auto body = json::serialize(json::object{{"name", name}, {"endpoint", endpoint}});
        const auto answer = post(socket(), "/v1/guests", body);
        BOOST_TEST_REQUIRE(answer.status == 201u, answer.body);
    }

    void remove_guest(const std::string& name) {
        const auto answer = http(socket(), "DELETE", "/v1/guests/" + name);
        BOOST_TEST_REQUIRE(answer.status / 100 == 2u, answer.body);
    }

    double metric_now(const std::string& series) const {
        return metric(get(socket(), "/metrics").body, series);
    }

    // Waits for `needle` in the daemon's log.
    void expect_logged(const std::string& needle, std::chrono::milliseconds limit = 20s) const {
        const bool found =
            eventually([&] { return hostd.log().find(needle) != std::string::npos; }, limit);
        BOOST_TEST(found, "the log never said \"" << needle << "\"; it has:\n" << tail_of_log());
    }

    std::string tail_of_log() const {
        const auto text = hostd.log();
        return text.size() > 4000 ? "..." + text.substr(text.size() - 4000) : text;
    }

    // The checks every case ends with.
    void expect_daemon_well() {
        const auto ping = get(socket(), "/v1/ping");
        BOOST_TEST(ping.status == 200u, ping.body);
        for (int i = 0; i < 5; ++i) {
            const auto answer = post(socket(), "/v1/guests/calm/ping");
            BOOST_TEST(answer.status == 200u, "the healthy guest's ping: " << answer.body);
        }
        const auto calm_status = get(socket(), "/v1/guests/calm").json();
        BOOST_TEST(calm_status.at("state").as_string() == "healthy", calm_status);
        // Descriptors close as sessions and links wind down: give them a moment.
        const bool fds_back =
            eventually([&] { return hostd.fd_count() <= base_fds + fd_allowance; });
        BOOST_TEST(fds_back, "descriptors: " << hostd.fd_count() << ", baseline " << base_fds
                                             << " + " << fd_allowance);
        // Memory a stuck connection held is given back once it is dropped, which an
        // unresponsive guest's is only after the grace period: let RSS settle.
        long rss = hostd.rss_kib();
        eventually(
            [&] {
                rss = hostd.rss_kib();
                return rss <= base_rss_kib + rss_allowance_kib;
            },
            10s);
        BOOST_TEST_MESSAGE("after: RSS " << describe_kib(rss) << " (baseline "
                                         << describe_kib(base_rss_kib) << "), " << hostd.fd_count()
                                         << " fds (baseline " << base_fds << ")");
        BOOST_TEST(rss <= base_rss_kib + rss_allowance_kib,
                   "RSS " << describe_kib(rss) << ", baseline " << describe_kib(base_rss_kib)
                          << " + " << describe_kib(rss_allowance_kib));
    }

    temp_dir dir;
    fake_guests calm;
    hostd_process hostd;
    long base_rss_kib = 0;
    std::size_t base_fds = 0;
};

bool is_one_of(unsigned status, std::initializer_list<unsigned> allowed) {
    return std::find(allowed.begin(), allowed.end(), status) != allowed.end();
}

}  // namespace

BOOST_AUTO_TEST_SUITE(faults)

BOOST_AUTO_TEST_CASE(a_guest_dropping_the_connection_mid_reply_is_reconnected_and_contained) {
    fault_bench bench;
    fake_guests bad(bench.dir, "bad", 1, {"--drop-mid-reply", "--faults-after", "1"});
    bench.add_guest("bad", bad.endpoint());
    // Every request fails cleanly: the guest may have acted on it, so nothing is retried.
    for (int i = 0; i < 10; ++i) {
        const auto answer = post(bench.socket(), "/v1/guests/bad/ping");
        BOOST_TEST(is_one_of(answer.status, {502u, 503u}), answer.status << " " << answer.body);
    }
    const bool reconnecting = eventually(
        [&] { return bench.metric_now("stereos_guest_link_connects_total{guest=\"bad\"}") >= 5; });
    BOOST_TEST(reconnecting, "the link stopped reconnecting");
    bench.expect_logged("bad: link lost: the guest closed the connection");
    bench.expect_daemon_well();
}

BOOST_AUTO_TEST_CASE(a_guest_stalling_after_half_a_line_is_found_unresponsive_within_deadline) {
    fault_bench bench;
    fake_guests bad(bench.dir, "bad", 1, {"--stall-mid-reply", "--faults-after", "1"});
    bench.add_guest("bad", bad.endpoint());
    for (int i = 0; i < 4; ++i) {
        const auto result = timed_request(bench.socket(), "POST", "/v1/guests/bad/ping");
        BOOST_TEST(is_one_of(result.status, {502u, 503u, 504u}),
                   result.status << " " << result.code);
        // request_timeout is 2 s; the rest is a busy machine's slack.
        BOOST_TEST(result.took < 10s, "a request took " << result.took.count() << " ms");
    }
    bench.expect_logged("bad: guest unresponsive:");
    bench.expect_logged("bad: state ");
    BOOST_TEST(bench.hostd.log().find("-> unresponsive") != std::string::npos);
    bench.expect_daemon_well();
}

BOOST_AUTO_TEST_CASE(a_guest_that_never_answers_stays_connecting_and_is_retried_quietly) {
    // Like QEMU forwarding to a VM whose stereosd is not up: every connect succeeds, nothing
    // answers. That is no link at all, not an unresponsive or lost one.
    fault_bench bench;
    fake_guests silent(bench.dir, "silent", 1, {"--never-reply"});
    bench.add_guest("silent", silent.endpoint());
    const bool retried = eventually(
        [&] {
            return bench.metric_now(
                       "stereos_guest_link_connect_failures_total{guest=\"silent\"}") >= 3;
        },
        30s);
    BOOST_TEST(retried, "the link stopped retrying");
    const auto answer = timed_request(bench.socket(), "POST", "/v1/guests/silent/ping");
    BOOST_TEST(answer.status == 503u, answer.status << " " << answer.code);
    BOOST_TEST(answer.code == "guest_unavailable");
    const auto status = get(bench.socket(), "/v1/guests/silent").json();
    BOOST_TEST(status.at("state").as_string() == "connecting", status);
    BOOST_TEST(bench.metric_now("stereos_guest_link_connects_total{guest=\"silent\"}") == 0);
    bench.expect_logged("silent: cannot connect:");
    const auto log = bench.hostd.log();
    BOOST_TEST(log.find("silent: state connecting -> ") == std::string::npos, bench.tail_of_log());
    BOOST_TEST(log.find("silent: link up") == std::string::npos);
    bench.expect_daemon_well();
}

BOOST_AUTO_TEST_CASE(a_lifecycle_flood_during_requests_does_not_disturb_replies_or_others) {
    fault_bench bench;
    fake_guests bad(bench.dir, "bad", 1,
                    {"--lifecycle-flood", "100000", "--health-state", "healthy"});
    const double events_before = bench.metric_now("stereos_events_published_total");
    bench.add_guest("bad", bad.endpoint());
    request_loop flooded_pings(bench.socket(), "POST", "/v1/guests/bad/ping");
    request_loop calm_pings(bench.socket(), "POST", "/v1/guests/calm/ping");
    std::this_thread::sleep_for(4s);
    const auto flooded = flooded_pings.stop();
    const auto calm = calm_pings.stop();
    const double events = bench.metric_now("stereos_events_published_total") - events_before;
    BOOST_TEST_MESSAGE("flood: " << events << " events published in 4 s; flooded guest's pings: "
                                 << summary(flooded) << "; calm guest's pings: " << summary(calm)
                                 << ", slowest " << slowest(calm).count() << " ms");
    BOOST_TEST(events > 10000, "the flood did not reach the daemon: " << events << " events");
    // A lifecycle line never completes a request: each ping got its pong or failed cleanly.
    for (const auto& o : flooded)
        BOOST_TEST(is_one_of(o.status, {200u, 502u, 503u, 504u}), o.status << " " << o.code);
    BOOST_TEST(std::count_if(flooded.begin(), flooded.end(),
                             [](const outcome& o) { return o.status == 200; }) > 0,
               summary(flooded));
    BOOST_TEST(!calm.empty());
    for (const auto& o : calm)
        BOOST_TEST(o.status == 200u, o.status << " " << o.code);
    bench.expect_logged("bad: lifecycle: healthy (flood)");
    // Logged once, the repeats counted: a guest must not be able to flood the journal (journald
    // would then rate-limit the whole daemon, other guests' lines included).
    const auto lifecycle_lines = count_of(bench.hostd.log(), "bad: lifecycle:");
    BOOST_TEST(lifecycle_lines < 10u,
               lifecycle_lines << " lifecycle lines for " << events << " events");
    bad.process().stop();
    bench.expect_logged("bad: link lost");
    bench.expect_daemon_well();
}

BOOST_AUTO_TEST_CASE(a_guest_sending_a_2_mib_line_is_reset_as_a_protocol_error) {
    fault_bench bench;
    fake_guests bad(bench.dir, "bad", 1, {"--overlong-reply", "--faults-after", "1"});
    bench.add_guest("bad", bad.endpoint());
    for (int i = 0; i < 10; ++i) {
        const auto answer = post(bench.socket(), "/v1/guests/bad/ping");
        BOOST_TEST(is_one_of(answer.status, {502u, 503u}), answer.status << " " << answer.body);
    }
    const bool counted = eventually([&] {
        return bench.metric_now("stereos_guest_protocol_errors_total{guest=\"bad\"}") >= 5;
    });
    BOOST_TEST(counted);
    bench.expect_logged(
        "bad: protocol error, resetting the connection: guest sent a line over the 1 MiB limit");
    bench.expect_daemon_well();
}

BOOST_AUTO_TEST_CASE(a_guest_that_never_reads_is_noticed_within_deadline_and_memory_stays_bounded) {
    fault_bench bench;
    fake_guests bad(bench.dir, "bad", 1, {"--accept-and-hang", "--faults-after", "1"});
    bench.add_guest("bad", bad.endpoint());
    BOOST_TEST_REQUIRE(
        eventually([&] { return bench.metric_now("stereos_guest_link_up{guest=\"bad\"}") == 1; }));
    // 1 MB bodies from 6 clients at once, again and again: far more than the socket buffers
    // take, so the daemon's writes back up.
    const std::string body(1000 * 1000, 'x');
    long peak_kib = 0;
    std::vector<outcome> outcomes;
    {
        request_loop writers(bench.socket(), "PUT", "/v1/guests/bad/config", 6,
                             "big = \"" + body + "\"\n");
        const auto end = steady::now() + 8s;
        while (steady::now() < end) {
            peak_kib = std::max(peak_kib, bench.hostd.rss_kib());
            std::this_thread::sleep_for(50ms);
        }
        outcomes = writers.stop();
    }
    BOOST_TEST_MESSAGE("never-read guest: " << summary(outcomes) << ", slowest "
                                            << slowest(outcomes).count() << " ms; peak RSS "
                                            << describe_kib(peak_kib) << " (baseline "
                                            << describe_kib(bench.base_rss_kib) << ")");
    BOOST_TEST(!outcomes.empty());
    for (const auto& o : outcomes) {
        BOOST_TEST(is_one_of(o.status, {502u, 503u, 504u}), o.status << " " << o.code);
        // The 2 s request deadline holds even with the write stuck.
        BOOST_TEST(o.took < 10s, "a request took " << o.took.count() << " ms");
    }
    // Bounded by the link's queue (8 MiB of requests per guest, held in the queue and once more
    // in the write buffer) and by the requests in flight (each body in the HTTP buffer, the
    // body, the message and its encoded line: 4 x 1 MB per client). Without the queue's bound
    // every request would stay queued behind the stuck write.
    const long bound_kib = 2 * 8 * 1024 + 6 * 4 * 1024 + rss_allowance_kib;
    BOOST_TEST(peak_kib <= bench.base_rss_kib + bound_kib,
               "peak RSS " << describe_kib(peak_kib) << ", baseline "
                           << describe_kib(bench.base_rss_kib) << " + " << describe_kib(bound_kib));
    bench.expect_logged("bad: guest unresponsive:");
    // The backed-up queue is given back once the grace ends and the connection is dropped.
    bench.expect_logged("bad: link lost: no answer for 1s after the guest became unresponsive");
    bench.expect_daemon_well();
}

BOOST_AUTO_TEST_CASE(fifty_guests_flapping_every_50_ms_for_30_s_leak_nothing) {
    fault_bench bench("reconnect_max = \"100ms\"\n");
    constexpr int flappers = 50;
    fake_guests flapping(bench.dir, "flap", flappers, {"--connection-lifetime", "50ms"});
    for (int i = 0; i < flappers; ++i)
        bench.add_guest("flap" + std::to_string(i), flapping.endpoints().at(i));
    // The first seconds settle allocator pools for 50 more guests; from then on a flap must
    // cost nothing that stays.
    std::this_thread::sleep_for(4s);
    const long settled_kib = bench.hostd.rss_kib();
    request_loop calm_pings(bench.socket(), "POST", "/v1/guests/calm/ping", 1);
    std::this_thread::sleep_for(30s);
    const auto calm = calm_pings.stop();
    const long flapped_kib = bench.hostd.rss_kib();
    const auto metrics = get(bench.socket(), "/metrics").body;
    double fewest_connects = 1e9;
    for (int i = 0; i < flappers; ++i) {
        fewest_connects = std::min(
            fewest_connects, metric(metrics, "stereos_guest_link_connects_total{guest=\"flap" +
                                                 std::to_string(i) + "\"}"));
    }
    BOOST_TEST_MESSAGE("flapping: RSS " << describe_kib(settled_kib) << " after 4 s, "
                                        << describe_kib(flapped_kib) << " after 30 s more; "
                                        << "fewest connects of a guest " << fewest_connects
                                        << "; calm pings " << summary(calm));
    // Each guest hangs up 50 ms after every connect and the daemon retries within 100 ms.
    BOOST_TEST(fewest_connects >= 30, "a guest stopped flapping: " << fewest_connects);
    BOOST_TEST(flapped_kib <= settled_kib + rss_allowance_kib);
    for (const auto& o : calm)
        BOOST_TEST(o.status == 200u, o.status << " " << o.code);
    bench.expect_logged("flap7: link lost: the guest closed the connection");
    for (int i = 0; i < flappers; ++i)
        bench.remove_guest("flap" + std::to_string(i));
    bench.expect_logged("flap49: runtime guest removed");
    bench.expect_daemon_well();
}

BOOST_AUTO_TEST_CASE(api_clients_hanging_up_mid_request_and_mid_event_stream_leave_nothing) {
    fault_bench bench(quick_reconnect, "debug");
    // Slow replies keep requests in flight; a modest flood keeps the event streams busy.
    fake_guests slow(
        bench.dir, "slow", 1,
        {"--reply-delay", "1500ms", "--lifecycle-flood", "200", "--faults-after", "1"});
    bench.add_guest("slow", slow.endpoint());
    for (int round = 0; round < 5; ++round) {
        // Mid-request: the request is in the daemon, waiting for the guest, when we go.
        std::vector<raw_client> waiting;
        for (int i = 0; i < 5; ++i) {
            raw_client client(bench.socket());
            BOOST_TEST_REQUIRE(client.connected());
            BOOST_TEST_REQUIRE(client.send(request_text("POST", "/v1/guests/slow/ping", "{}")));
            waiting.push_back(std::move(client));
        }
        // Mid-request too: half a request line, then gone.
        for (int i = 0; i < 5; ++i) {
            raw_client client(bench.socket());
            BOOST_TEST_REQUIRE(client.send("PUT /v1/guests/slow/config HTTP/1.1\r\nHost: loc"));
        }
        // Mid-event-stream: read part of it, then gone.
        for (int i = 0; i < 5; ++i) {
            raw_client stream(bench.socket());
            BOOST_TEST_REQUIRE(stream.send(request_text("GET", "/v1/events")));
            const auto got = stream.receive(10s, 2048);
            BOOST_TEST_REQUIRE(got.starts_with("HTTP/1.1 200"), got);
            BOOST_TEST(got.find("\"kind\":\"lifecycle\"") != std::string::npos, got);
        }
        std::this_thread::sleep_for(200ms);
        waiting.clear();
    }
    // The guest's late replies land on closed connections; the sessions end.
    const bool all_closed = eventually([&] {
        const auto metrics = get(bench.socket(), "/metrics").body;
        return metric(metrics, "stereos_event_subscribers") == 0 &&
               metric(metrics, "stereos_api_connections") == 1;  // this request
    });
    BOOST_TEST(all_closed, get(bench.socket(), "/metrics").body);
    bench.expect_logged("API request POST /v1/guests/slow/ping");
    bench.expect_logged("API request GET /v1/events");
    bench.expect_logged("API client hung up");
    slow.process().stop();
    bench.expect_daemon_well();
}

BOOST_AUTO_TEST_CASE(five_hundred_idle_api_clients_and_the_connection_limit_is_enforced) {
    fault_bench bench(quick_reconnect + "api_max_connections = 450\n");
    std::vector<raw_client> idle;
    for (int i = 0; i < 500; ++i) {
        idle.emplace_back(bench.socket());
        BOOST_TEST_REQUIRE(idle.back().connected(), "client " << i);
    }
    // All accepted (the first 450 in the limit, the rest answered 503 when they ask).
    const bool accepted =
        eventually([&] { return bench.hostd.fd_count() >= bench.base_fds + 500; });
    BOOST_TEST_REQUIRE(accepted, bench.hostd.fd_count() << " fds");
    const auto refused = get(bench.socket(), "/v1/ping");
    BOOST_TEST(refused.status == 503u, refused.body);
    BOOST_TEST(refused.error_code() == "server_busy");
    // A client within the limit is still served on its open connection.
    BOOST_TEST_REQUIRE(idle.front().send(request_text("GET", "/v1/ping")));
    const auto answer = idle.front().receive(10s, 12);
    BOOST_TEST(answer.starts_with("HTTP/1.1 200"), answer);
    // One over the limit gets its 503 too.
    BOOST_TEST_REQUIRE(idle.back().send(request_text("GET", "/v1/ping")));
    const auto busy = idle.back().receive(10s, 12);
    BOOST_TEST(busy.starts_with("HTTP/1.1 503"), busy);
    bench.expect_logged("API connection limit reached");
    // Freeing slots lets new clients in again.
    idle.erase(idle.begin(), idle.begin() + 100);
    const bool served_again =
        eventually([&] { return get(bench.socket(), "/v1/ping").status == 200; });
    BOOST_TEST(served_again);
    idle.clear();
    BOOST_TEST(eventually([&] { return bench.metric_now("stereos_api_connections") == 1; }));
    BOOST_TEST(bench.metric_now("stereos_api_connections_rejected_total") >= 50);
    bench.expect_daemon_well();
}

BOOST_AUTO_TEST_CASE(sighup_every_100_ms_under_load_applies_each_config_and_disturbs_no_one) {
    fault_bench bench;
    fake_guests extra(bench.dir, "extra", 1);
    const std::vector<guest_entry> without_extra{{"calm", bench.calm.endpoint()}};
    const std::vector<guest_entry> with_extra{{"calm", bench.calm.endpoint()},
                                              {"extra", extra.endpoint()}};
    const double calm_connects =
        bench.metric_now("stereos_guest_link_connects_total{guest=\"calm\"}");
    std::vector<outcome> pings, listings;
    {
        request_loop calm_pings(bench.socket(), "POST", "/v1/guests/calm/ping");
        request_loop list(bench.socket(), "GET", "/v1/guests", 1);
        for (int i = 0; i < 40; ++i) {
            // Alternate configs: every reload adds or removes a guest; "calm" stays as it is.
            bench.hostd.rewrite_config(i % 2 == 0 ? with_extra : without_extra);
            ::kill(bench.hostd.pid(), SIGHUP);
            std::this_thread::sleep_for(100ms);
        }
        pings = calm_pings.stop();
        listings = list.stop();
    }
    BOOST_TEST_MESSAGE("SIGHUP storm: calm pings " << summary(pings) << ", listings "
                                                   << summary(listings));
    BOOST_TEST(!pings.empty());
    for (const auto& o : pings)
        BOOST_TEST(o.status == 200u, o.status << " " << o.code);
    for (const auto& o : listings)
        BOOST_TEST(o.status == 200u, o.status << " " << o.code);
    // The last config (without "extra") is the one in force.
    const bool settled = eventually([&] {
        return get(bench.socket(), "/v1/guests/extra").status == 404 &&
               get(bench.socket(), "/v1/guests").json().at("guests").as_array().size() == 1;
    });
    BOOST_TEST(settled);
    BOOST_TEST(bench.metric_now("stereos_guest_link_connects_total{guest=\"calm\"}") ==
               calm_connects);
    const auto log = bench.hostd.log();
    BOOST_TEST(count_of(log, "SIGHUP: reloading") >= 5u);
    BOOST_TEST(count_of(log, "reload applied:") >= 5u);
    BOOST_TEST(log.find("extra: reload: guest removed from the config") != std::string::npos);
    bench.expect_daemon_well();
}

BOOST_AUTO_TEST_CASE(sigkill_under_load_then_restart_brings_every_runtime_guest_back) {
    temp_dir dir;
    fake_guests calm(dir, "calm", 1, {"--health-state", "healthy"});
    fake_guests runtime(dir, "runtime", 20, {"--health-state", "healthy"});
    std::set<std::string> confirmed;  // added (201) and not removed
    std::set<std::string> unsure;     // in flight when the daemon died
    long base_rss_kib = 0;
    std::size_t base_fds = 0;
    std::string first_log;
    {
        hostd_process hostd(dir, {{"calm", calm.endpoint()}}, "info",
                            quick_timeouts + quick_reconnect, "", measurable_allocator());
        auto add = [&](const std::string& name, const std::string& endpoint) {
            const auto body = json::serialize(json::object{{"name", name}, {"endpoint", endpoint}});
            return timed_request(hostd.socket(), "POST", "/v1/guests", body);
        };
        for (int i = 0; i < 10; ++i) {
            const auto name = "kept" + std::to_string(i);
            BOOST_TEST_REQUIRE(add(name, runtime.endpoints().at(i)).status == 201u);
            confirmed.insert(name);
        }
        for (const auto& name : confirmed) {
            BOOST_TEST_REQUIRE(
                get(hostd.socket(), "/v1/guests/" + name + "/wait?state=ready&timeout=30s")
                    .status == 200u);
        }
        base_rss_kib = hostd.rss_kib();
        base_fds = hostd.fd_count();

        // Load: pings, and guests added and removed, so the state file is being rewritten when
        // the kill comes.
        request_loop pings(hostd.socket(), "POST", "/v1/guests/kept0/ping");
        std::atomic<bool> stop{false};
        // The sets are the churn thread's alone until it is joined.
        std::thread churn([&] {
            for (int n = 0; !stop; ++n) {
                const auto name = "churn" + std::to_string(n);
                unsure.insert(name);
                const auto added = add(name, runtime.endpoints().at(10 + n % 10));
                if (added.status == 0)
                    break;  // the daemon is gone: it may or may not have saved this one
                unsure.erase(name);
                if (added.status != 201)
                    continue;
                confirmed.insert(name);
                if (n % 2 == 0)
                    continue;
                // Every other one is removed again.
                confirmed.erase(name);
                unsure.insert(name);
                const auto removed = timed_request(hostd.socket(), "DELETE", "/v1/guests/" + name);
                if (removed.status == 0)
                    break;
                unsure.erase(name);
                if (removed.status / 100 != 2)
                    confirmed.insert(name);
            }
        });
        std::this_thread::sleep_for(2s);
        hostd.kill_now();
        stop = true;
        churn.join();
        pings.stop();
        first_log = hostd.log();
    }
    BOOST_TEST_MESSAGE("killed with " << confirmed.size() << " runtime guests confirmed, "
                                      << unsure.size() << " in flight");
    BOOST_TEST(confirmed.size() > 10u, "the churn never got going");
    // Whatever the kill interrupted, guests.json is whole: written aside, then renamed.
    const auto state_file = (dir.path / "state" / "guests.json").string();
    boost::system::error_code ec;
    json::parse(read_text(state_file), ec);
    BOOST_TEST(!ec, "guests.json after SIGKILL: " << ec.message());

    hostd_process restarted(dir, {{"calm", calm.endpoint()}}, "info",
                            quick_timeouts + quick_reconnect, "", measurable_allocator());
    const auto listing = get(restarted.socket(), "/v1/guests").json().at("guests").as_array();
    std::set<std::string> back;
    for (const auto& g : listing)
        back.insert(std::string(g.at("name").as_string()));
    for (const auto& name : confirmed)
        BOOST_TEST(back.contains(name), name << " was lost");
    for (const auto& name : back) {
        BOOST_TEST((name == "calm" || confirmed.contains(name) || unsure.contains(name)),
                   name << " came back but was removed");
    }
    // Nothing half-written is left: a temp file of the killed write is cleared at start.
    for (const auto& entry : std::filesystem::recursive_directory_iterator(dir.path / "state")) {
        const auto name = entry.path().filename().string();
        const bool ledger =
            entry.path().parent_path().filename() == "ledgers" && name.ends_with(".ledger.json");
        BOOST_TEST((name == "guests.json" || name == "ledger.key" || name == "ledgers" || ledger),
                   "left in the state dir: " << entry.path());
    }
    const auto stale = restarted.log();
    BOOST_TEST(stale.find("removed stale API socket") != std::string::npos, stale);
    BOOST_TEST(stale.find("kept9: guest added (runtime)") != std::string::npos, stale);
    BOOST_TEST(first_log.find("kept9: guest added (runtime)") != std::string::npos);
    for (const auto& name : confirmed) {
        const auto ready =
            get(restarted.socket(), "/v1/guests/" + name + "/wait?state=ready&timeout=30s");
        BOOST_TEST(ready.status == 200u, name << ": " << ready.body);
    }
    BOOST_TEST(post(restarted.socket(), "/v1/guests/calm/ping").status == 200u);
    BOOST_TEST(post(restarted.socket(), "/v1/guests/kept0/ping").status == 200u);
    // The restarted daemon, with the same guests plus the surviving churn, holds what the
    // first one held before the load.
    const std::size_t extra_guests = back.size() > 11 ? back.size() - 11 : 0;
    const bool fds_ok =
        eventually([&] { return restarted.fd_count() <= base_fds + extra_guests + fd_allowance; });
    BOOST_TEST(fds_ok, restarted.fd_count() << " fds, first daemon " << base_fds << " with "
                                            << extra_guests << " guests fewer");
    // A fresh process that restored its guests and answered a burst of waits: its heap is
    // laid out differently from the first daemon's, so this bound is looser (about twice the
    // first daemon's baseline was seen on a busy machine); the leak checks are the other rows'.
    BOOST_TEST(restarted.rss_kib() <= 2 * base_rss_kib + 4 * rss_allowance_kib,
               "RSS " << describe_kib(restarted.rss_kib()) << ", first daemon "
                      << describe_kib(base_rss_kib));
}

BOOST_AUTO_TEST_SUITE_END()

// stereos-fakeguest: fake stereosd guests as a real process, for integration tests, the demo,
// benchmarks and the real-VM tests. Prints "listening <endpoint>" per guest, runs until SIGINT or
// SIGTERM (exit 0). SIGUSR1 closes every connection, a link blip that keeps the uptime; SIGUSR2
// makes every guest push a lifecycle event. With
// --log-requests it prints "request <summary>" per received line and "delivered <summary>" per
// request a guest accepted, so a test can count deliveries; never a value. With --root DIR the
// guests write authorized_keys files under DIR as stereosd does ("--root /" inside a test VM).
#include <sys/reboot.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <stereos/util/completion_tokens.hpp>
#include "tests/fakeguest/command_line.hpp"
#include "tests/fakeguest/fake_guest.hpp"

namespace asio = boost::asio;
using namespace stereos::testing;
using stereos::transport::use_tuple;

namespace {

struct program_options {
    std::vector<std::string> listen;
    std::size_t count = 1;
    std::string health_state = "ready";
    bool log_connections = false;
    std::string reply_delay = "0ms";
    bool never_reply = false;
    bool accept_and_hang = false;
    bool garbage = false;
    bool wrong_reply_kind = false;
    std::size_t close_after = 0;
    std::size_t faults_after = 0;
    bool drop_mid_reply = false;
    bool stall_mid_reply = false;
    std::string connection_lifetime = "0ms";
    bool out_of_order = false;
    bool overlong_reply = false;
    unsigned lifecycle_flood = 0;
    std::string lifecycle_script;
    std::string record;
    bool log_requests = false;
    bool power_off_on_shutdown = false;
    int mount_exit_status = 0;
    std::string root_directory;
    std::string uptime_sequence;
};

std::string listen_on(fake_guest& guest, const listen_spec& spec) {
    switch (spec.what) {
        case listen_spec::kind::tcp:
            return guest.listen_tcp(spec.host, spec.port);
        case listen_spec::kind::unix_socket:
            return guest.listen_unix(spec.path);
        case listen_spec::kind::hybrid:
            return guest.listen_hybrid(spec.path, spec.vsock_port);
        case listen_spec::kind::vsock:
            return guest.listen_vsock(spec.vsock_cid, spec.vsock_port);
    }
    throw std::logic_error("unknown listen kind");
}

// Pushes each event to every guest at its offset from start; push_lifecycle also sets the
// health state, so get_health agrees with what was announced.
asio::awaitable<void> play_lifecycle_script(std::vector<scheduled_lifecycle> events,
                                            std::vector<std::unique_ptr<fake_guest>>& guests,
                                            asio::steady_timer& timer) {
    const auto start = std::chrono::steady_clock::now();
    for (const auto& event : events) {
        timer.expires_at(start + event.offset);
        auto [ec] = co_await timer.async_wait(use_tuple);
        if (ec)
            co_return;  // stopping
        for (auto& guest : guests)
            guest->push_lifecycle(event.state);
    }
}

// Written by tests/vm/init. Without it --power-off-on-shutdown is refused: run as root on a
// developer's machine, it would power that machine off.
constexpr const char* vm_marker = "/run/stereos-vm";

// As the real guest after acking shutdown. Only for a fake guest that runs as a VM's guest
// daemon: it needs CAP_SYS_BOOT, and ends the whole machine.
void power_off_machine() {
    std::cout << "powering off" << std::endl;
    ::sync();
    if (::reboot(RB_POWER_OFF) != 0)
        std::perror("stereos-fakeguest: reboot(RB_POWER_OFF)");
}

// Thousands of guests need two descriptors each and more: take the hard limit.
void raise_descriptor_limit() {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        ::setrlimit(RLIMIT_NOFILE, &limit);
    }
}

}  // namespace

int main(int argc, char** argv) {
    // Option setup can throw too; every failure is reported the same way.
    try {
        program_options opt;
        CLI::App app{
            "stereos-fakeguest: fake stereosd guests that answer like the real one, or misbehave "
            "on "
            "request. Each --listen (times --count) is a separate guest."};
        app.add_option("--listen", opt.listen,
                       "tcp:HOST:PORT (0 = free port), unix:PATH, hybrid:PATH:VSOCK_PORT or "
                       "vsock:CID|ANY:PORT")
            ->required();
        app.add_option("--count", opt.count,
                       "guests per --listen: consecutive TCP ports, or %d in the path = 0..N-1");
        app.add_option("--health-state", opt.health_state,
                       "state get_health reports: booting, ready, healthy, degraded, shutdown");
        app.add_option("--reply-delay", opt.reply_delay, "delay of every reply, e.g. 5ms");
        app.add_flag("--never-reply", opt.never_reply, "read and record requests, never answer");
        app.add_flag("--accept-and-hang", opt.accept_and_hang, "accept, then never read nor write");
        app.add_flag("--garbage", opt.garbage, "reply with a line that is not JSON");
        app.add_flag("--wrong-reply-kind", opt.wrong_reply_kind,
                     "reply pong to get_health and acked requests, ack to ping");
        app.add_option("--close-after", opt.close_after,
                       "close a connection when its Nth line arrives (unanswered)");
        app.add_option("--faults-after", opt.faults_after,
                       "answer the first N lines of each connection normally (a client's "
                       "handshake), then misbehave");
        app.add_flag("--drop-mid-reply", opt.drop_mid_reply,
                     "write half of each reply line, then close");
        app.add_flag(
            "--stall-mid-reply", opt.stall_mid_reply,
            "write half of a reply line, then nothing more on that connection (kept open)");
        app.add_option(
            "--connection-lifetime", opt.connection_lifetime,
            "close every connection this long after accepting it, e.g. 50ms (0ms: never)");
        app.add_flag("--out-of-order", opt.out_of_order, "swap each pair of replies");
        app.add_flag("--overlong-reply", opt.overlong_reply, "reply with a 2 MiB line");
        app.add_option("--lifecycle-flood", opt.lifecycle_flood,
                       "push N lifecycle events per second to every connection");
        app.add_option("--lifecycle-script", opt.lifecycle_script,
                       "push lifecycle events at offsets from start, e.g. 1s:booting,2s:ready");
        app.add_option("--record", opt.record, "append every received line to FILE");
        app.add_flag("--log-requests", opt.log_requests,
                     "print \"request TYPE [name=...]\" per received line and \"delivered TYPE "
                     "...\" per accepted request (keys=N, stacked=N for mounts), never a value");
        app.add_flag("--log-connections", opt.log_connections,
                     "print \"accepted ENDPOINT #N\" per accepted connection");
        app.add_flag("--power-off-on-shutdown", opt.power_off_on_shutdown,
                     "power the machine off after acking shutdown (as a VM's guest daemon; "
                     "only where /run/stereos-vm exists)");
        app.add_option("--mount-exit-status", opt.mount_exit_status,
                       "make valid mounts fail with this exit status (0: they succeed)");
        app.add_option("--root", opt.root_directory,
                       "write each accepted inject_ssh_key as DIR/home/USER/.ssh/authorized_keys "
                       "(DIR/root/... for root), replacing it through a temp file and rename as "
                       "stereosd; \"/\" inside a test VM. All guests share it")
            ->type_name("DIR");
        app.add_option("--uptime-sequence", opt.uptime_sequence,
                       "health replies report these uptimes in turn, cycling, instead of the real "
                       "one, e.g. 5,9223372036854775807 (a broken guest)")
            ->type_name("N,N...");
        CLI11_PARSE(app, argc, argv);

        if (opt.power_off_on_shutdown && ::access(vm_marker, F_OK) != 0) {
            throw std::invalid_argument(std::string("--power-off-on-shutdown: refused outside a "
                                                    "test VM (no ") +
                                        vm_marker + ")");
        }
        const auto state = stereos::protocol::parse_lifecycle_state(opt.health_state);
        if (!state)
            throw std::invalid_argument("--health-state: unknown state " + opt.health_state);
        const auto reply_delay = parse_duration(opt.reply_delay);
        const auto connection_lifetime = parse_duration(opt.connection_lifetime);
        const auto lifecycle_events = parse_lifecycle_script(opt.lifecycle_script);
        const auto uptime_sequence = opt.uptime_sequence.empty()
                                         ? std::vector<std::int64_t>{}
                                         : parse_uptime_sequence(opt.uptime_sequence);
        std::vector<listen_spec> specs;
        for (const auto& text : opt.listen) {
            for (auto& spec : expand_listen_spec(parse_listen_spec(text), opt.count))
                specs.push_back(std::move(spec));
        }

        std::ofstream record;
        if (!opt.record.empty()) {
            record.open(opt.record, std::ios::app | std::ios::binary);
            if (!record)
                throw std::runtime_error("--record: cannot open " + opt.record);
        }

        std::signal(SIGPIPE, SIG_IGN);
        raise_descriptor_limit();
        asio::io_context io;
        std::vector<std::unique_ptr<fake_guest>> guests;
        guests.reserve(specs.size());
        for (const auto& spec : specs) {
            auto guest = std::make_unique<fake_guest>(io.get_executor());
            guest->behaviour.health_state = *state;
            guest->behaviour.mount_exit_status = opt.mount_exit_status;
            guest->behaviour.keep_received_lines = false;  // thousands of guests, long runs
            guest->behaviour.uptime_sequence = uptime_sequence;
            if (!opt.root_directory.empty())
                guest->behaviour.root_directory = opt.root_directory;
            auto& faults = guest->faults;
            faults.reply_delay = reply_delay;
            faults.never_reply = opt.never_reply;
            faults.accept_and_hang = opt.accept_and_hang;
            faults.garbage_replies = opt.garbage;
            faults.wrong_reply_kind = opt.wrong_reply_kind;
            faults.close_after_lines = opt.close_after;
            faults.faults_after_lines = opt.faults_after;
            faults.drop_mid_reply = opt.drop_mid_reply;
            faults.stall_mid_reply = opt.stall_mid_reply;
            faults.connection_lifetime = connection_lifetime;
            faults.out_of_order_replies = opt.out_of_order;
            faults.overlong_replies = opt.overlong_reply;
            faults.lifecycle_flood_per_second = opt.lifecycle_flood;
            if (record.is_open() || opt.log_requests) {
                // Flushed per line: a test reads the file (or the console) while this runs.
                guest->set_line_observer([&record, &opt](const received_line& line) {
                    if (record.is_open()) {
                        record << line.text << '\n';
                        record.flush();
                    }
                    if (opt.log_requests)
                        std::cout << "request " << request_summary(line.text) << std::endl;
                });
            }
            if (opt.log_requests) {
                // After the request's own line: a test counts these to see what took effect.
                guest->set_delivery_observer([](const std::string& summary) {
                    std::cout << "delivered " << summary << std::endl;
                });
            }
            if (opt.power_off_on_shutdown)
                guest->set_shutdown_observer(power_off_machine);
            const auto where = listen_on(*guest, spec);
            if (opt.log_connections) {
                guest->set_accept_observer([where](std::size_t number) {
                    std::cout << "accepted " << where << " #" << number << std::endl;
                });
            }
            std::cout << "listening " << where << std::endl;
            guests.push_back(std::move(guest));
        }

        asio::steady_timer script_timer(io);
        if (!lifecycle_events.empty()) {
            asio::co_spawn(io, play_lifecycle_script(lifecycle_events, guests, script_timer),
                           stereos::transport::rethrow_if_failed);
        }

        asio::signal_set blips(io, SIGUSR1);
        std::function<void()> close_on_blip = [&] {
            blips.async_wait([&](boost::system::error_code ec, int) {
                if (ec)
                    return;
                std::cout << "closing every connection (SIGUSR1)" << std::endl;
                for (auto& guest : guests)
                    guest->close_connections();
                close_on_blip();
            });
        };
        close_on_blip();

        // SIGUSR2: every guest pushes a lifecycle event in its current state, e.g. while no
        // daemon reads its connection.
        asio::signal_set pushes(io, SIGUSR2);
        std::function<void()> push_on_signal = [&] {
            pushes.async_wait([&](boost::system::error_code ec, int) {
                if (ec)
                    return;
                std::cout << "pushing lifecycle (SIGUSR2)" << std::endl;
                for (auto& guest : guests)
                    guest->push_lifecycle(guest->behaviour.health_state, "pushed on SIGUSR2");
                push_on_signal();
            });
        };
        push_on_signal();

        asio::signal_set signals(io, SIGINT, SIGTERM);
        signals.async_wait([&](boost::system::error_code ec, int) {
            if (ec)
                return;
            script_timer.cancel();
            blips.cancel();
            pushes.cancel();
            for (auto& guest : guests)
                guest->stop();
        });
        io.run();
        return 0;
    } catch (const std::exception& e) {
        std::cerr << "stereos-fakeguest: " << e.what() << std::endl;
        return 1;
    }
}

// Codec throughput: encode and decode rates of the messages a link handles most (ping/pong,
// health with 8 agents, ack), single-threaded, about half a second per figure.
// Usage: bench_codec [milliseconds per figure]
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>
#include <thread>
#include <variant>

#include <stereos/protocol/codec.hpp>
#include <stereos/protocol/messages.hpp>

using namespace stereos::protocol;
using bench_clock = std::chrono::steady_clock;

namespace {

// Everything each operation produces is folded in here and printed, so the compiler cannot
// drop the work.
std::uint64_t checksum = 0;

struct figure {
    double ops_per_second;
    double ns_per_op;
    double megabytes_per_second;
};

// Runs `operation` in batches until `budget` has passed; `line_bytes` is the size of the line
// each operation encodes or decodes.
template <class Operation>
figure measure(std::chrono::milliseconds budget, std::size_t line_bytes, Operation operation) {
    constexpr int batch = 256;
    for (int i = 0; i < batch; ++i) {  // warm caches and the allocator
        checksum += operation();
    }
    std::uint64_t ops = 0;
    const auto start = bench_clock::now();
    const auto deadline = start + budget;
    auto now = start;
    do {
        for (int i = 0; i < batch; ++i) {
            checksum += operation();
        }
        ops += batch;
        now = bench_clock::now();
    } while (now < deadline);
    const double seconds = std::chrono::duration<double>(now - start).count();
    const double ops_per_second = static_cast<double>(ops) / seconds;
    return {ops_per_second, 1e9 / ops_per_second,
            ops_per_second * static_cast<double>(line_bytes) / 1e6};
}

void print_row(std::string_view name, std::size_t line_bytes, const figure& f) {
    std::printf("%-28.*s %8zu %14.0f %10.1f %10.1f\n", static_cast<int>(name.size()), name.data(),
                line_bytes, f.ops_per_second, f.ns_per_op, f.megabytes_per_second);
}

template <class Message>
std::string encode_or_die(const Message& message) {
    auto line = encode(message);
    if (!line) {
        std::fprintf(stderr, "cannot encode a benchmark message: %s\n",
                     line.error().message().c_str());
        std::exit(1);
    }
    return *line;
}

// The decoder sees lines without their '\n', as the framer hands them over.
std::string_view without_newline(const std::string& line) {
    return std::string_view(line).substr(0, line.size() - 1);
}

health_payload health_with_agents(int count) {
    health_payload health{lifecycle_state::healthy, {}, 86400};
    for (int i = 0; i < count; ++i) {
        agent_status agent{"agent-" + std::to_string(i), i % 4 != 3,
                           "session-" + std::to_string(1000 + i), i, ""};
        if (!agent.running) {
            agent.error = "exited with status 1 <see journal>";
        }
        health.agents.push_back(std::move(agent));
    }
    return health;
}

// Encodes a guest message through the host-side API and decodes it back, checking the result
// once so the figures are about correct work.
void bench_guest_message(std::string_view name, const guest_message& message,
                         std::chrono::milliseconds budget) {
    const auto line = encode_or_die(message);
    const auto decoded = decode_guest_line(without_newline(line));
    if (!decoded || *decoded != message) {
        std::fprintf(stderr, "%.*s does not decode back to itself\n", static_cast<int>(name.size()),
                     name.data());
        std::exit(1);
    }
    print_row(std::string("encode ") + std::string(name), line.size(),
              measure(budget, line.size(), [&] { return encode(message)->size(); }));
    print_row(std::string("decode ") + std::string(name), line.size(),
              measure(budget, line.size(),
                      [&] { return decode_guest_line(without_newline(line))->index() + 1; }));
}

int run_bench(int argc, char** argv) {
    std::chrono::milliseconds budget{500};
    if (argc > 1) {
        budget = std::chrono::milliseconds(std::strtol(argv[1], nullptr, 10));
        if (budget.count() <= 0) {
            std::fprintf(stderr, "usage: %s [milliseconds per figure, default 500]\n", argv[0]);
            return 2;
        }
    }
    std::printf(
        "bench_codec: protocol codec, one thread, %lld ms per figure, %u hardware threads\n",
        static_cast<long long>(budget.count()), std::thread::hardware_concurrency());
    std::printf("%-28s %8s %14s %10s %10s\n", "figure", "bytes", "ops/s", "ns/op", "MB/s");

    // ping: the host encodes it, the guest decodes it (decode_host_line, used by the fake guest).
    const host_message ping{ping_request{}};
    const auto ping_line = encode_or_die(ping);
    print_row("encode ping", ping_line.size(),
              measure(budget, ping_line.size(), [&] { return encode(ping)->size(); }));
    print_row("decode ping (guest side)", ping_line.size(), measure(budget, ping_line.size(), [&] {
                  return decode_host_line(without_newline(ping_line))->type.size();
              }));

    bench_guest_message("pong", guest_message{pong_reply{}}, budget);
    bench_guest_message("health, 8 agents", guest_message{health_with_agents(8)}, budget);
    bench_guest_message("ack", guest_message{ack_payload{"inject_secret", true, ""}}, budget);
    bench_guest_message("ack with error",
                        guest_message{ack_payload{"mount", false, "mount: no such tag \"share9\""}},
                        budget);

    std::printf("checksum %llu\n", static_cast<unsigned long long>(checksum));
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    // A failure to set up or to measure ends the run with its message, not with terminate().
    try {
        return run_bench(argc, argv);
    } catch (const std::exception& failure) {
        std::fprintf(stderr, "bench_codec: %s\n", failure.what());
        return 1;
    }
}

// Fuzz target: the guest state machine's run decisions fed with what guests and links can say.
// The input is a program of events: link up and health answers whose payload is either raw
// (any int64 uptime, any state) or a JSON line decoded by the codec as the link would (so
// out-of-range uptimes are refused there), link losses with a last-heard time, pauses of the
// clock, unresponsive verdicts, replies, provisioning steps and a remembered run.
// Invariants: no undefined behaviour (UBSan), the run count never decreases, answers on an up
// connection never start a new run, a new run comes only with a link up, and provisioning is
// due only when the machine says so.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include <stereos/protocol/codec.hpp>
#include "daemon/guest/guest_state_machine.hpp"

namespace {

namespace daemon = stereos::daemon;
namespace protocol = stereos::protocol;
namespace ev = daemon::guest_events;
using steady = std::chrono::steady_clock;
using namespace std::chrono_literals;

void check(bool condition, const char* what) {
    if (!condition) {
        std::fprintf(stderr, "fuzz_guest_runs: invariant broken: %s\n", what);
        std::abort();
    }
}

struct reader {
    const std::uint8_t* data;
    std::size_t size;
    std::uint8_t byte() {
        if (size == 0)
            return 0;
        --size;
        return *data++;
    }
    std::int64_t int64() {
        std::uint64_t v = 0;
        for (int i = 0; i < 8; ++i)
            v = (v << 8) | byte();
        std::int64_t out;
        std::memcpy(&out, &v, sizeof out);
        return out;
    }
    std::string_view text(std::size_t length) {
        length = std::min(length, size);
        std::string_view out(reinterpret_cast<const char*>(data), length);
        data += length;
        size -= length;
        return out;
    }
};

protocol::health_payload raw_health(reader& in) {
    protocol::health_payload h;
    h.state = static_cast<protocol::lifecycle_state>(in.byte() % 5);
    // Mostly plausible uptimes, sometimes anything at all.
    const auto kind = in.byte();
    h.uptime_seconds = kind < 200 ? static_cast<std::int64_t>(in.byte()) * 7 : in.int64();
    // The codec never lets these through; the machine must cope all the same.
    return h;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    reader in{data, size};
    daemon::guest_state_machine machine;
    auto now_wall = std::chrono::system_clock::time_point{} + 24h * 365 * 50;
    auto now = steady::time_point{} + 24h;
    bool link_up = false;
    std::optional<daemon::provisioning_ticket> ticket;

    if (in.byte() % 2 == 1) {
        const auto a = now - std::chrono::seconds(in.byte()) * 11;
        machine.remember_run({a - 1s, a}, now - std::chrono::seconds(in.byte()));
    }
    while (in.size > 0) {
        const auto before = machine.boot_count();
        daemon::event_result result;
        bool health_on_up_link = false;
        bool is_link_up = false;
        const auto op = in.byte() % 12;
        switch (op) {
            case 0:
                result = machine.handle(ev::link_connecting{}, now_wall);
                break;
            case 1:
            case 2: {
                auto h = raw_health(in);
                const auto asked = now - std::chrono::seconds(in.byte() % 8);
                if (op == 1 || !link_up) {
                    is_link_up = true;
                    result = machine.handle(ev::link_up{h, now, asked}, now_wall);
                    link_up = true;
                } else {
                    health_on_up_link = true;
                    result = machine.handle(ev::health_received{h, now, asked}, now_wall);
                }
                break;
            }
            case 3: {
                // A JSON line as the guest sends it, decoded as the link does.
                auto line = in.text(in.byte());
                auto decoded = protocol::decode_guest_line(line);
                if (!decoded)
                    break;
                if (auto* h = std::get_if<protocol::health_payload>(&*decoded)) {
                    check(
                        h->uptime_seconds >= 0 && h->uptime_seconds <= protocol::max_uptime_seconds,
                        "the codec let an uptime outside [0, 100 years] through");
                    if (link_up) {
                        health_on_up_link = true;
                        result = machine.handle(ev::health_received{*h, now, now}, now_wall);
                    } else {
                        is_link_up = true;
                        result = machine.handle(ev::link_up{*h, now, now}, now_wall);
                        link_up = true;
                    }
                }
                break;
            }
            case 4:
                result = machine.handle(
                    ev::link_lost{"lost", now - std::chrono::seconds(in.byte() % 16)}, now_wall);
                link_up = false;
                break;
            case 5: {
                // Time passes (a pause, a long outage): up to about 18 hours a step.
                const auto step = std::chrono::seconds((in.byte() << 8) | in.byte());
                now += step;
                now_wall += step;
                break;
            }
            case 6:
                result = machine.handle(ev::link_unresponsive{"timeouts"}, now_wall);
                break;
            case 7:
                result = machine.handle(ev::reply_received{}, now_wall);
                break;
            case 8:
                ticket = machine.begin_provisioning();
                break;
            case 9:
                if (ticket)
                    (in.byte() % 2 ? machine.mark_provisioned(*ticket)
                                   : machine.mark_provisioning_failed(*ticket));
                break;
            case 10:
                result = machine.request_provisioning();
                break;
            case 11:
                result = machine.handle(
                    ev::lifecycle_pushed{{protocol::lifecycle_state::ready, {}}}, now_wall);
                break;
        }
        now += 1s;
        now_wall += 1s;
        check(machine.boot_count() >= before, "the run count went down");
        if (health_on_up_link)
            check(!result.new_run && !result.rebooted,
                  "an answer on an up connection started a new run");
        if (result.new_run || result.resumed_run)
            check(is_link_up, "a new or resumed run without a link up");
        if (result.provisioning_due)
            check(machine.needs_provisioning(), "provisioning_due without needs_provisioning");
        check(static_cast<int>(machine.state()) <= static_cast<int>(daemon::guest_state::shutdown),
              "a state out of range");
    }
    return 0;
}

// The host's view of one guest's state: a pure state machine (no I/O, no clock of its own) fed
// with link and protocol events, each stamped with the time it happened. Single-threaded.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <stereos/protocol/messages.hpp>

namespace stereos::daemon {

// unknown -> connecting -> booting|ready|healthy|degraded (what the guest reports), and
//   * -> disconnected (a link that was up is lost; reconnecting)
//   * -> unresponsive (an up link stopped answering; dropped and reconnecting)
//   shutting_down (host sent shutdown) -> shutdown (guest said so, or link closed after the ack)
enum class guest_state {
    unknown,        // no event yet
    connecting,     // no link up yet since the daemon started (failed attempts stay here)
    booting,        // the guest says so
    ready,          // the guest says so
    healthy,        // the guest says so
    degraded,       // the guest says so (an agent is failing)
    unresponsive,   // the link stopped answering (consecutive timeouts or the keepalive)
    disconnected,   // a link that was up was lost; reconnecting
    shutting_down,  // host sent shutdown
    shutdown,       // guest powered off (said so, or closed the link after acking shutdown)
};
std::string_view to_string(guest_state state) noexcept;
// Every state, in declaration order (the API's `wait` names them; /metrics lists them all).
inline constexpr std::array all_guest_states{
    guest_state::unknown,      guest_state::connecting,   guest_state::booting,
    guest_state::ready,        guest_state::healthy,      guest_state::degraded,
    guest_state::unresponsive, guest_state::disconnected, guest_state::shutting_down,
    guest_state::shutdown,
};

// The events, one struct each. The link layer reports the link_* ones, the line sorter the guest's
// messages, the request machinery timeouts and replies.
// Health answers carry the monotonic times they were asked for and arrived: the guest daemon
// started within [asked - uptime_seconds - 1 s, answered - uptime_seconds] (whole-second uptime,
// counted somewhere between the two), reckoned without trusting the wall clock.
namespace guest_events {
using steady_time = std::chrono::steady_clock::time_point;
struct link_connecting {};
// A connect attempt, or its handshake, failed: no link was up.
struct connect_failed {
    std::string reason;
};
// The guest answered the connection's first get_health.
struct link_up {
    protocol::health_payload health;
    steady_time answered_at{};
    steady_time asked_at{};  // unset: the same as answered_at
};
struct link_lost {
    std::string reason;  // e.g. "connection reset by peer"
    // When the guest last sent anything on that connection (unset: unknown).
    steady_time last_heard{};
};
struct lifecycle_pushed {
    protocol::lifecycle_payload payload;
};
struct health_received {
    protocol::health_payload payload;
    steady_time answered_at{};
    steady_time asked_at{};  // unset: the same as answered_at
};
// The link's verdict that an up connection stopped answering. The connection stays open for a
// grace period (a paused VM), then is dropped (link_lost) unless the guest answers again.
struct link_unresponsive {
    std::string reason;  // e.g. "3 consecutive requests timed out"
};
// Any other successful reply (pong, ack): proof the guest is answering.
struct reply_received {};
struct shutdown_sent {
    std::string reason;
};
struct shutdown_acked {};
// The shutdown request was refused (ack ok:false) or timed out.
struct shutdown_failed {
    std::string reason;
};
}  // namespace guest_events

using guest_event =
    std::variant<guest_events::link_connecting, guest_events::connect_failed, guest_events::link_up,
                 guest_events::link_lost, guest_events::lifecycle_pushed,
                 guest_events::health_received, guest_events::link_unresponsive,
                 guest_events::reply_received, guest_events::shutdown_sent,
                 guest_events::shutdown_acked, guest_events::shutdown_failed>;

// How far apart two reckonings of the guest daemon's start time (each an interval, see above)
// may be for the same run of it: margin for scheduling and the two clocks' rates.
inline constexpr std::chrono::seconds restart_tolerance{2};

// When stereosd started, by one health answer: no earlier than `earliest`, no later than
// `latest` (host monotonic clock).
struct start_interval {
    guest_events::steady_time earliest{};
    guest_events::steady_time latest{};
    bool operator==(const start_interval&) const = default;
};
// [asked - uptime - 1 s, answered - uptime]: the guest counted its whole-second uptime at some
// moment between asking and answering. `asked_at` unset: the same as `answered_at`.
start_interval start_interval_of(std::int64_t uptime_seconds, guest_events::steady_time asked_at,
                                 guest_events::steady_time answered_at);

// Whether a new connection's first answer shows a new run of stereosd (a reboot or a restart),
// given the last run's start interval and uptime and when that run was last heard from.
// The start moved by more than restart_tolerance (or the uptime went down), and it moved to
// after the last sign of the old run: a new process starts after the old one last spoke. A start
// time that moved but stays before that is a pause (the guest's clocks stopped while ours ran)
// or a broken guest, never a restart.
bool shows_new_run(const start_interval& last, std::optional<std::int64_t> last_uptime,
                   guest_events::steady_time last_heard, const start_interval& now,
                   std::int64_t uptime_seconds);

// A short name of the event kind for logs and test messages, e.g. "link_lost".
std::string_view event_name(const guest_event& event);

struct guest_transition {
    guest_state from = guest_state::unknown;
    guest_state to = guest_state::unknown;
    std::string reason;  // e.g. "health: ready", "link lost: connection reset by peer"
    std::chrono::system_clock::time_point at;
    bool rebooted = false;  // the event that caused it revealed a new boot of the guest
};

// Where the current boot's provisioning stands.
enum class provisioning_status {
    not_due,      // the guest is not up yet in this boot (or we cannot tell which boot it is)
    due,          // up in a boot that has not been provisioned: start provisioning
    in_progress,  // begin_provisioning() was called
    done,         // provisioned for this boot
    failed,       // the attempt failed; due again after the next (re)connect
};
std::string_view to_string(provisioning_status status) noexcept;

// What one event did.
struct event_result {
    std::optional<guest_transition> transition;  // set only when the state changed
    bool rebooted = false;                       // the guest booted again since it was last seen
    bool provisioning_due = false;               // this event made needs_provisioning() true
    bool new_run = false;      // a run of stereosd began: nothing is delivered in it yet
    bool resumed_run = false;  // the first link is to the run remembered by remember_run()
};

// Names one provisioning attempt, so that a result that arrives after the guest rebooted or the
// link was re-established (the attempt is stale) is ignored.
struct provisioning_ticket {
    std::uint64_t boot = 0;
    std::uint64_t attempt = 0;
    bool operator==(const provisioning_ticket&) const = default;
};

// Rules:
// - link_connecting: unknown -> connecting. Later attempts change nothing, so retries do not
//   flood the history. connect_failed only records the error: a failed attempt (refused, silent,
//   closed before answering) never moves the state.
// - link_up (carries the guest's first health answer): -> the state it reports, at once.
// - link_lost: a live state -> disconnected; shutting_down after the ack -> shutdown. In
//   unresponsive, disconnected and shutdown it only records the error.
// - lifecycle/health: the guest's state maps to the same host state (shutdown -> shutdown).
//   Messages while no link is up, or after shutdown, are stale: ignored. In shutting_down only a
//   reported shutdown changes the state.
// - link_unresponsive (the link's single verdict: N consecutive timeouts or an unanswered
//   keepalive; it drops the connection next): a live state -> unresponsive. A single request
//   timeout changes nothing.
// - shutdown_sent: any state with a link up -> shutting_down; shutdown_acked is recorded;
//   shutdown_failed returns to the last reported state.
// Runs (boots): a link after shutdown starts a new run, and so does the first link, unless it
// reaches the run remember_run() names (the delivery ledger's, after a daemon restart). Every
// health answer bounds the guest daemon's start time to an interval. A new connection's first
// answer is a new run when shows_new_run() says so; answers on one connection never are, since a
// restarted stereosd cannot answer on its predecessor's connection: there they only re-anchor
// the interval (after a pause it moved by the pause's length). A slow answer only widens its
// interval. The same start time after a reconnect is the same run.
// Provisioning: due when the guest is up (ready, healthy or degraded) in a boot that is not
// provisioned. A failed or interrupted attempt is due again after the next link up, or when an
// unresponsive guest answers again.
class guest_state_machine {
  public:
    using clock = std::chrono::system_clock;
    static constexpr std::size_t history_limit = 64;

    event_result handle(const guest_event& event, clock::time_point now);
    // handle(health_received{health, answered_at, asked_at}) without building the event: the
    // health poll's path copies no payload, and an answer that changes nothing allocates nothing.
    event_result handle_health(const protocol::health_payload& health,
                               guest_events::steady_time answered_at,
                               guest_events::steady_time asked_at, clock::time_point now);

    guest_state state() const noexcept { return state_; }
    const std::string& reason() const noexcept { return reason_; }
    clock::time_point since() const noexcept { return since_; }
    // Oldest first, at most history_limit.
    const std::deque<guest_transition>& history() const noexcept { return history_; }

    bool link_is_up() const noexcept { return link_up_; }
    const std::string& last_link_error() const noexcept { return last_link_error_; }
    // From the last health reply (kept across links, for reboot detection).
    std::optional<std::int64_t> uptime_seconds() const noexcept { return uptime_seconds_; }
    // When the guest daemon started, reckoned from the last health reply.
    std::optional<start_interval> guest_started_within() const noexcept { return started_within_; }
    std::optional<clock::time_point> uptime_at() const noexcept { return uptime_at_; }
    const std::vector<protocol::agent_status>& agents() const noexcept { return agents_; }
    const std::optional<protocol::lifecycle_payload>& last_lifecycle() const noexcept {
        return last_lifecycle_;
    }
    std::optional<clock::time_point> last_lifecycle_at() const noexcept {
        return last_lifecycle_at_;
    }
    // What the guest last said about itself on this link.
    std::optional<protocol::lifecycle_state> reported_state() const noexcept { return reported_; }

    // Boots seen so far (1 after the first contact); 0 before.
    std::uint64_t boot_count() const noexcept { return boot_; }
    provisioning_status provisioning() const noexcept { return provisioning_; }
    bool needs_provisioning() const noexcept { return provisioning_ == provisioning_status::due; }

    // Starts an attempt if provisioning is due (-> in_progress).
    std::optional<provisioning_ticket> begin_provisioning();
    // Record the attempt's outcome; false (and nothing changes) if the ticket is stale.
    bool mark_provisioned(const provisioning_ticket& ticket);
    bool mark_provisioning_failed(const provisioning_ticket& ticket);
    // Provision again in this boot (config changed, or an operator asked); due once up.
    event_result request_provisioning();

    // Before the first event: the run the ledger last recorded for this guest in this host
    // boot. The first link reaches the same run if shows_new_run() says it is not a new one.
    void remember_run(start_interval started, guest_events::steady_time last_heard);
    // The last time the current (or last) run was heard from; unset before any answer.
    guest_events::steady_time last_heard() const noexcept { return last_heard_; }

  private:
    event_result on_link_connecting(clock::time_point now);
    event_result on_link_up(const guest_events::link_up& e, clock::time_point now);
    event_result on_connect_failed(const guest_events::connect_failed& e);
    event_result on_link_lost(const guest_events::link_lost& e, clock::time_point now);
    // `source` and `detail` make the transition's reason ("health: " "ready"), built only if
    // the state changes.
    void on_guest_report(event_result& result, protocol::lifecycle_state reported,
                         std::string_view source, std::string_view detail, clock::time_point now);
    event_result on_lifecycle(const guest_events::lifecycle_pushed& e, clock::time_point now);
    event_result on_health(const guest_events::health_received& e, clock::time_point now);
    event_result on_unresponsive(const guest_events::link_unresponsive& e, clock::time_point now);
    void record_health(const protocol::health_payload& health, guest_events::steady_time asked_at,
                       guest_events::steady_time answered_at, clock::time_point now);
    event_result on_reply(clock::time_point now);
    event_result on_shutdown_sent(const guest_events::shutdown_sent& e, clock::time_point now);
    event_result on_shutdown_acked();
    event_result on_shutdown_failed(const guest_events::shutdown_failed& e, clock::time_point now);

    // Moves to `to` (no-op if already there) and records the transition.
    void move_to(event_result& result, guest_state to, std::string reason, clock::time_point now);
    // A new boot of the guest; `seen_before` flags it as a reboot.
    void start_new_boot(event_result& result, bool seen_before);
    // Makes provisioning due if the guest is up in a known, unprovisioned boot.
    void update_provisioning(event_result& result);
    guest_state state_after_recovery() const noexcept;
    bool accepts_guest_messages() const noexcept;

    guest_state state_ = guest_state::unknown;
    std::string reason_;
    clock::time_point since_{};
    std::deque<guest_transition> history_;

    bool link_up_ = false;
    bool shutdown_acked_ = false;
    std::string last_link_error_;
    std::optional<protocol::lifecycle_state> reported_;  // on the current link

    std::optional<std::int64_t> uptime_seconds_;
    std::optional<clock::time_point> uptime_at_;
    std::optional<start_interval> started_within_;
    guest_events::steady_time last_heard_{};
    std::vector<protocol::agent_status> agents_;
    std::optional<protocol::lifecycle_payload> last_lifecycle_;
    std::optional<clock::time_point> last_lifecycle_at_;

    std::uint64_t boot_ = 0;
    provisioning_status provisioning_ = provisioning_status::not_due;
    std::uint64_t provisioning_attempt_ = 0;
};

}  // namespace stereos::daemon

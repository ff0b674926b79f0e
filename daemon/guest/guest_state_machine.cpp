// The per-guest state machine: the rules are listed in guest_state_machine.hpp.
#include "daemon/guest/guest_state_machine.hpp"

#include <algorithm>
#include <type_traits>
#include <utility>

#include <stereos/util/overloaded.hpp>

namespace stereos::daemon {

namespace {

using protocol::overloaded;

guest_state host_state_for(protocol::lifecycle_state reported) noexcept {
    switch (reported) {
        case protocol::lifecycle_state::booting:
            return guest_state::booting;
        case protocol::lifecycle_state::ready:
            return guest_state::ready;
        case protocol::lifecycle_state::healthy:
            return guest_state::healthy;
        case protocol::lifecycle_state::degraded:
            return guest_state::degraded;
        case protocol::lifecycle_state::shutdown:
            return guest_state::shutdown;
    }
    return guest_state::booting;
}

// States in which the guest is answering over a live link.
bool is_live(guest_state state) noexcept {
    return state == guest_state::booting || state == guest_state::ready ||
           state == guest_state::healthy || state == guest_state::degraded;
}

// Up enough to be provisioned: stereosd has finished booting. Degraded counts, since a missing
// secret is a likely reason for an agent to fail.
bool is_up(guest_state state) noexcept {
    return state == guest_state::ready || state == guest_state::healthy ||
           state == guest_state::degraded;
}

}  // namespace

std::string_view to_string(guest_state state) noexcept {
    switch (state) {
        case guest_state::unknown:
            return "unknown";
        case guest_state::connecting:
            return "connecting";
        case guest_state::booting:
            return "booting";
        case guest_state::ready:
            return "ready";
        case guest_state::healthy:
            return "healthy";
        case guest_state::degraded:
            return "degraded";
        case guest_state::unresponsive:
            return "unresponsive";
        case guest_state::disconnected:
            return "disconnected";
        case guest_state::shutting_down:
            return "shutting_down";
        case guest_state::shutdown:
            return "shutdown";
    }
    return "invalid";
}

std::string_view to_string(provisioning_status status) noexcept {
    switch (status) {
        case provisioning_status::not_due:
            return "not_due";
        case provisioning_status::due:
            return "due";
        case provisioning_status::in_progress:
            return "in_progress";
        case provisioning_status::done:
            return "done";
        case provisioning_status::failed:
            return "failed";
    }
    return "invalid";
}

std::string_view event_name(const guest_event& event) {
    return std::visit(
        overloaded{
            [](const guest_events::link_connecting&) {
                return std::string_view("link_connecting");
            },
            [](const guest_events::connect_failed&) { return std::string_view("connect_failed"); },
            [](const guest_events::link_up&) { return std::string_view("link_up"); },
            [](const guest_events::link_lost&) { return std::string_view("link_lost"); },
            [](const guest_events::lifecycle_pushed&) {
                return std::string_view("lifecycle_pushed");
            },
            [](const guest_events::health_received&) {
                return std::string_view("health_received");
            },
            [](const guest_events::link_unresponsive&) {
                return std::string_view("link_unresponsive");
            },
            [](const guest_events::reply_received&) { return std::string_view("reply_received"); },
            [](const guest_events::shutdown_sent&) { return std::string_view("shutdown_sent"); },
            [](const guest_events::shutdown_acked&) { return std::string_view("shutdown_acked"); },
            [](const guest_events::shutdown_failed&) {
                return std::string_view("shutdown_failed");
            },
        },
        event);
}

event_result guest_state_machine::handle(const guest_event& event, clock::time_point now) {
    return std::visit(
        overloaded{
            [&](const guest_events::link_connecting&) { return on_link_connecting(now); },
            [&](const guest_events::connect_failed& e) { return on_connect_failed(e); },
            [&](const guest_events::link_up& e) { return on_link_up(e, now); },
            [&](const guest_events::link_lost& e) { return on_link_lost(e, now); },
            [&](const guest_events::lifecycle_pushed& e) { return on_lifecycle(e, now); },
            [&](const guest_events::health_received& e) { return on_health(e, now); },
            [&](const guest_events::link_unresponsive& e) { return on_unresponsive(e, now); },
            [&](const guest_events::reply_received&) { return on_reply(now); },
            [&](const guest_events::shutdown_sent& e) { return on_shutdown_sent(e, now); },
            [&](const guest_events::shutdown_acked&) { return on_shutdown_acked(); },
            [&](const guest_events::shutdown_failed& e) { return on_shutdown_failed(e, now); },
        },
        event);
}

event_result guest_state_machine::on_link_connecting(clock::time_point now) {
    event_result result;
    // Only the first attempt is news: retries from disconnected or shutdown would only flap.
    if (state_ == guest_state::unknown) {
        move_to(result, guest_state::connecting, "connecting", now);
    }
    return result;
}

event_result guest_state_machine::on_connect_failed(const guest_events::connect_failed& e) {
    last_link_error_ = e.reason;
    return {};
}

event_result guest_state_machine::on_link_up(const guest_events::link_up& e,
                                             clock::time_point now) {
    event_result result;
    const bool after_shutdown = state_ == guest_state::shutdown;
    link_up_ = true;
    shutdown_acked_ = false;
    const bool moved =
        !started_within_ ||
        shows_new_run(*started_within_, uptime_seconds_, last_heard_,
                      start_interval_of(e.health.uptime_seconds, e.asked_at, e.answered_at),
                      e.health.uptime_seconds);
    if (boot_ == 0) {
        if (moved) {
            start_new_boot(result, false);
        } else {
            boot_ = 1;  // the remembered run: its deliveries stand
            result.resumed_run = true;
        }
    } else if (after_shutdown || moved) {
        // Powered off before, or stereosd started again: what was provisioned is gone.
        start_new_boot(result, true);
    } else if (provisioning_ == provisioning_status::in_progress ||
               provisioning_ == provisioning_status::failed) {
        // The same run of the guest: the attempt died with the old link (or failed): again.
        provisioning_ = provisioning_status::not_due;
        ++provisioning_attempt_;
    }
    record_health(e.health, e.asked_at, e.answered_at, now);
    reported_ = e.health.state;
    move_to(result, host_state_for(e.health.state),
            std::string(result.rebooted ? "link up, guest restarted: " : "link up: ") +
                std::string(protocol::to_string(e.health.state)),
            now);
    update_provisioning(result);
    return result;
}

start_interval start_interval_of(std::int64_t uptime_seconds, guest_events::steady_time asked_at,
                                 guest_events::steady_time answered_at) {
    if (asked_at == guest_events::steady_time{} || asked_at > answered_at)
        asked_at = answered_at;
    // The codec refuses uptimes over 100 years; the clamp keeps the arithmetic defined anyway.
    const auto uptime = std::chrono::seconds(
        std::clamp<std::int64_t>(uptime_seconds, 0, protocol::max_uptime_seconds));
    return {asked_at - uptime - std::chrono::seconds(1), answered_at - uptime};
}

bool shows_new_run(const start_interval& last, std::optional<std::int64_t> last_uptime,
                   guest_events::steady_time last_heard, const start_interval& now,
                   std::int64_t uptime_seconds) {
    // The gap between the two intervals (zero when they overlap).
    const auto gap = std::max({now.earliest - last.latest, last.earliest - now.latest,
                               guest_events::steady_time::duration::zero()});
    // One run's uptime never decreases, however close together the answers are.
    const bool moved = gap > restart_tolerance || (last_uptime && uptime_seconds < *last_uptime);
    return moved && now.latest >= last_heard;
}

void guest_state_machine::remember_run(start_interval started,
                                       guest_events::steady_time last_heard) {
    started_within_ = started;
    last_heard_ = last_heard;
}

void guest_state_machine::record_health(const protocol::health_payload& health,
                                        guest_events::steady_time asked_at,
                                        guest_events::steady_time answered_at,
                                        clock::time_point now) {
    uptime_seconds_ = health.uptime_seconds;
    uptime_at_ = now;
    // The latest reckoning, so slow drift between the clocks never adds up to a false restart.
    started_within_ = start_interval_of(health.uptime_seconds, asked_at, answered_at);
    last_heard_ = std::max(last_heard_, answered_at);
    if (agents_ != health.agents)  // usually the same list: no copy then
        agents_ = health.agents;
}

event_result guest_state_machine::on_link_lost(const guest_events::link_lost& e,
                                               clock::time_point now) {
    event_result result;
    last_link_error_ = e.reason;
    link_up_ = false;
    reported_.reset();
    last_heard_ = std::max(last_heard_, e.last_heard);
    // Unresponsive already says why the link went: the drop that follows is its consequence.
    if (state_ == guest_state::shutdown || state_ == guest_state::disconnected ||
        state_ == guest_state::unresponsive) {
        return result;
    }
    if (state_ == guest_state::shutting_down && shutdown_acked_) {
        move_to(result, guest_state::shutdown, "link closed after shutdown: " + e.reason, now);
    } else if (state_ != guest_state::unknown && state_ != guest_state::connecting) {
        move_to(result, guest_state::disconnected, "link lost: " + e.reason, now);
    }
    return result;
}

bool guest_state_machine::accepts_guest_messages() const noexcept {
    // Anything arriving without a link, or after the guest said it is off, is from a link that is
    // already gone.
    return link_up_ && state_ != guest_state::shutdown;
}

event_result guest_state_machine::on_lifecycle(const guest_events::lifecycle_pushed& e,
                                               clock::time_point now) {
    event_result result;
    if (!accepts_guest_messages()) {
        return result;
    }
    last_lifecycle_ = e.payload;
    last_lifecycle_at_ = now;
    on_guest_report(result, e.payload.state, "lifecycle: ",
                    e.payload.message.empty() ? protocol::to_string(e.payload.state)
                                              : std::string_view(e.payload.message),
                    now);
    return result;
}

event_result guest_state_machine::on_health(const guest_events::health_received& e,
                                            clock::time_point now) {
    return handle_health(e.payload, e.answered_at, e.asked_at, now);
}

event_result guest_state_machine::handle_health(const protocol::health_payload& health,
                                                guest_events::steady_time answered_at,
                                                guest_events::steady_time asked_at,
                                                clock::time_point now) {
    event_result result;
    if (!accepts_guest_messages()) {
        return result;
    }
    // On the connection that is up: the same run whatever the uptime says (see the rules).
    record_health(health, asked_at, answered_at, now);
    on_guest_report(result, health.state, "health: ", protocol::to_string(health.state), now);
    return result;
}

void guest_state_machine::on_guest_report(event_result& result, protocol::lifecycle_state reported,
                                          std::string_view source, std::string_view detail,
                                          clock::time_point now) {
    reported_ = reported;
    const bool shutting_down = state_ == guest_state::shutting_down;
    // Shutting down, it keeps answering until it powers off; only "I am shutting down" is news.
    const auto to = !shutting_down                                    ? host_state_for(reported)
                    : reported == protocol::lifecycle_state::shutdown ? guest_state::shutdown
                                                                      : state_;
    if (to != state_) {
        std::string reason;
        reason.reserve(source.size() + detail.size());
        reason.append(source).append(detail);
        move_to(result, to, std::move(reason), now);
    }
    if (!shutting_down)
        update_provisioning(result);
}

event_result guest_state_machine::on_unresponsive(const guest_events::link_unresponsive& e,
                                                  clock::time_point now) {
    event_result result;
    if (link_up_ && is_live(state_)) {
        move_to(result, guest_state::unresponsive, "unresponsive: " + e.reason, now);
    }
    return result;
}

event_result guest_state_machine::on_reply(clock::time_point now) {
    event_result result;
    if (state_ == guest_state::unresponsive && link_up_) {
        move_to(result, state_after_recovery(), "reply received: recovered", now);
        // An attempt that failed while the guest was silent (a pause) is due again now, on the
        // same connection: the run goes on.
        if (provisioning_ == provisioning_status::failed) {
            provisioning_ = provisioning_status::not_due;
            ++provisioning_attempt_;
        }
        update_provisioning(result);
    }
    return result;
}

event_result guest_state_machine::on_shutdown_sent(const guest_events::shutdown_sent& e,
                                                   clock::time_point now) {
    event_result result;
    if (link_up_ && (is_live(state_) || state_ == guest_state::unresponsive)) {
        shutdown_acked_ = false;
        move_to(result, guest_state::shutting_down,
                e.reason.empty() ? "shutdown sent" : "shutdown sent: " + e.reason, now);
    }
    return result;
}

event_result guest_state_machine::on_shutdown_acked() {
    if (state_ == guest_state::shutting_down) {
        shutdown_acked_ = true;
    }
    return {};
}

event_result guest_state_machine::on_shutdown_failed(const guest_events::shutdown_failed& e,
                                                     clock::time_point now) {
    event_result result;
    if (state_ == guest_state::shutting_down) {
        shutdown_acked_ = false;
        move_to(result, state_after_recovery(), "shutdown failed: " + e.reason, now);
        update_provisioning(result);
    }
    return result;
}

guest_state guest_state_machine::state_after_recovery() const noexcept {
    return reported_ ? host_state_for(*reported_) : guest_state::booting;
}

void guest_state_machine::move_to(event_result& result, guest_state to, std::string reason,
                                  clock::time_point now) {
    if (to == state_) {
        return;
    }
    guest_transition transition{state_, to, std::move(reason), now, result.rebooted};
    state_ = to;
    reason_ = transition.reason;
    since_ = now;
    history_.push_back(transition);
    while (history_.size() > history_limit) {
        history_.pop_front();
    }
    result.transition = std::move(transition);
}

void guest_state_machine::start_new_boot(event_result& result, bool seen_before) {
    ++boot_;
    // The old run's figures must not make the new one's first health look like another restart.
    uptime_seconds_.reset();
    uptime_at_.reset();
    started_within_.reset();
    provisioning_ = provisioning_status::not_due;
    ++provisioning_attempt_;
    result.rebooted = result.rebooted || seen_before;
    result.new_run = true;
}

void guest_state_machine::update_provisioning(event_result& result) {
    if (provisioning_ == provisioning_status::not_due && link_up_ && is_up(state_)) {
        provisioning_ = provisioning_status::due;
        result.provisioning_due = true;
    }
}

std::optional<provisioning_ticket> guest_state_machine::begin_provisioning() {
    if (provisioning_ != provisioning_status::due) {
        return std::nullopt;
    }
    provisioning_ = provisioning_status::in_progress;
    ++provisioning_attempt_;
    return provisioning_ticket{boot_, provisioning_attempt_};
}

bool guest_state_machine::mark_provisioned(const provisioning_ticket& ticket) {
    if (provisioning_ != provisioning_status::in_progress ||
        ticket != provisioning_ticket{boot_, provisioning_attempt_}) {
        return false;
    }
    provisioning_ = provisioning_status::done;
    return true;
}

bool guest_state_machine::mark_provisioning_failed(const provisioning_ticket& ticket) {
    if (provisioning_ != provisioning_status::in_progress ||
        ticket != provisioning_ticket{boot_, provisioning_attempt_}) {
        return false;
    }
    provisioning_ = provisioning_status::failed;
    return true;
}

event_result guest_state_machine::request_provisioning() {
    event_result result;
    if (boot_ == 0) {
        return result;
    }
    // A running attempt is made stale: it provisions what was asked before.
    ++provisioning_attempt_;
    provisioning_ = provisioning_status::not_due;
    update_provisioning(result);
    return result;
}

}  // namespace stereos::daemon

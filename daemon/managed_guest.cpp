#include "daemon/managed_guest.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/json/value_from.hpp>

#include "daemon/logging.hpp"
#include "daemon/provisioning.hpp"
#include "protocol/codec.hpp"
#include "protocol/overloaded.hpp"
#include "transport/completion_tokens.hpp"

namespace stereos::daemon {

namespace asio = boost::asio;
namespace json = boost::json;

namespace {
using protocol::overloaded;
using transport::rethrow_if_failed;
using transport::use_tuple;

guest_link_options link_options_for(const config::link_timeouts& t,
                                    std::shared_ptr<retry_budget> budget) {
    guest_link_options o;
    o.fast_retry_budget = std::move(budget);
    o.connect_timeout = t.connect_timeout;
    o.request_timeout = t.request_timeout;
    o.keepalive_interval = t.keepalive_interval;
    o.reconnect_max = t.reconnect_max;
    return o;
}

}  // namespace

std::string_view to_string(guest_source source) noexcept {
    return source == guest_source::config ? "config" : "runtime";
}

std::shared_ptr<managed_guest> managed_guest::create(
    const asio::any_io_executor& executor, config::guest_config definition, guest_source source,
    event_bus& bus, std::shared_ptr<retry_budget> fast_retry_budget) {
    auto guest = std::make_shared<managed_guest>(executor, std::move(definition), source, bus);
    std::weak_ptr<managed_guest> weak = guest;
    guest->link_ = guest_link::create(
        executor, guest->definition_.endpoint,
        link_options_for(guest->definition_.timeouts, std::move(fast_retry_budget)),
        [weak](const link_event& event) {
            if (auto self = weak.lock())
                self->on_link_event(event);
        });
    if (!guest->definition_.provision.empty())
        guest->report_.state = "pending";
    return guest;
}

managed_guest::managed_guest(asio::any_io_executor executor, config::guest_config definition,
                             guest_source source, event_bus& bus)
    : executor_(std::move(executor)),
      definition_(std::move(definition)),
      source_(source),
      bus_(bus),
      health_timer_(executor_),
      tasks_done_(executor_) {}

void managed_guest::start() {
    log::info("guest added (" + std::string(to_string(source_)) + "), endpoint " +
                  definition_.endpoint_text,
              {.guest = name(), .endpoint = definition_.endpoint_text});
    link_->start();
    ++background_tasks_;
    asio::co_spawn(executor_, health_loop(),
                   [self = shared_from_this()](const std::exception_ptr& e) {
                       --self->background_tasks_;
                       self->tasks_done_.cancel();
                       rethrow_if_failed(e);
                   });
}

void managed_guest::begin_stop() {
    stopping_ = true;
    health_timer_.cancel();
    link_->stop();
}

asio::awaitable<void> managed_guest::async_stop() {
    auto self = shared_from_this();
    begin_stop();
    co_await link_->async_stop();
    while (background_tasks_ > 0) {
        tasks_done_.expires_at(asio::steady_timer::clock_type::time_point::max());
        co_await tasks_done_.async_wait(use_tuple);
    }
    log::info("guest link stopped", {.guest = name()});
}

void managed_guest::feed(const guest_event& event) {
    const auto result = machine_.handle(event, std::chrono::system_clock::now());
    if (result.rebooted) {
        log::notice("guest restarted (stereosd has a new start time): provisioning will run again",
                    {.guest = name()});
    }
    if (const auto& t = result.transition) {
        const auto to = std::string(to_string(t->to));
        const bool bad = t->to == guest_state::unresponsive || t->to == guest_state::disconnected;
        log::write(
            bad ? log::severity::warning : log::severity::info,
            "state " + std::string(to_string(t->from)) + " -> " + to + " (" + t->reason + ")",
            {.guest = name(), .guest_state = to, .message_id = log::state_transition_message_id});
        json::object fields{{"from", to_string(t->from)}, {"to", to}, {"reason", t->reason}};
        if (t->rebooted)
            fields["rebooted"] = true;
        bus_.publish(name(), "state", std::move(fields), t->at);
    }
    maybe_start_provisioning();
}

void managed_guest::on_link_event(const link_event& event) {
    const auto now = log_throttle::clock::now();
    std::visit(
        overloaded{
            [&](const link_events::connecting&) { feed(guest_events::link_connecting{}); },
            [&](const link_events::connect_failed& e) {
                if (auto text = connect_errors_.admit("cannot connect: " + e.reason, now)) {
                    log::warning(*text, {.guest = name(), .endpoint = definition_.endpoint_text});
                    bus_.publish(name(), "link",
                                 {{"event", "connect_failed"}, {"reason", e.reason}});
                }
                feed(guest_events::connect_failed{e.reason});
            },
            [&](const link_events::up& e) {
                connect_errors_.reset();
                log::info("link up: guest reports " +
                              std::string(protocol::to_string(e.health.state)) + ", stereosd up " +
                              std::to_string(e.health.uptime_seconds) + " s",
                          {.guest = name(), .endpoint = definition_.endpoint_text});
                bus_.publish(name(), "link", {{"event", "up"}});
                feed(guest_events::link_up{e.health, e.answered_at, e.asked_at});
                // The handshake was a health poll: the next one is due a full interval later.
                handshake_polled_ = true;
                health_timer_.cancel();
            },
            [&](const link_events::down& e) {
                log::warning("link lost: " + e.reason + "; reconnecting in " +
                                 std::to_string(e.retry_in.count()) + " ms",
                             {.guest = name()});
                bus_.publish(name(), "link", {{"event", "down"}, {"reason", e.reason}});
                feed(guest_events::link_lost{e.reason});
            },
            [&](const link_events::unresponsive& e) {
                log::warning("guest unresponsive: " + e.reason, {.guest = name()});
                bus_.publish(name(), "link", {{"event", "unresponsive"}, {"reason", e.reason}});
                feed(guest_events::link_unresponsive{e.reason});
            },
            [&](const link_events::protocol_violation& e) {
                log::error("protocol error, resetting the connection: " + e.detail,
                           {.guest = name()});
                bus_.publish(name(), "link", {{"event", "protocol_error"}, {"reason", e.detail}});
            },
            [&](const link_events::lifecycle& e) {
                const auto state = std::string(protocol::to_string(e.payload.state));
                if (auto text = lifecycle_lines_.admit(
                        "lifecycle: " + state +
                            (e.payload.message.empty() ? "" : " (" + e.payload.message + ")"),
                        now)) {
                    log::info(*text, {.guest = name(), .message_type = "lifecycle"});
                }
                json::object fields{{"state", state}};
                if (!e.payload.message.empty())
                    fields["message"] = e.payload.message;
                bus_.publish(name(), "lifecycle", std::move(fields));
                feed(guest_events::lifecycle_pushed{e.payload});
            },
            [&](const link_events::unknown_message& e) {
                if (auto text = unknown_messages_.admit(
                        "ignoring unknown message type \"" + e.type + "\"", now)) {
                    log::notice(*text, {.guest = name(), .message_type = e.type});
                }
            },
        },
        event);
}

void managed_guest::note_reply(const protocol::host_message& sent, const request_result& result,
                               std::chrono::steady_clock::time_point asked_at) {
    const bool is_shutdown = std::holds_alternative<protocol::shutdown_payload>(sent);
    if (!result) {
        // A timeout alone changes no state: the link judges unresponsiveness (guest_link.hpp).
        if (is_shutdown)
            feed(guest_events::shutdown_failed{result.error().message()});
        return;
    }
    if (const auto* health = std::get_if<protocol::health_payload>(&*result)) {
        feed(guest_events::health_received{*health, std::chrono::steady_clock::now(), asked_at});
        return;
    }
    feed(guest_events::reply_received{});
    if (is_shutdown) {
        const auto* ack = std::get_if<protocol::ack_payload>(&*result);
        if (ack && ack->ok) {
            feed(guest_events::shutdown_acked{});
        } else {
            feed(guest_events::shutdown_failed{ack ? ack->error : "unexpected reply"});
        }
    }
}

asio::awaitable<request_result> managed_guest::request(protocol::host_message message) {
    auto self = shared_from_this();
    if (const auto* shutdown = std::get_if<protocol::shutdown_payload>(&message)) {
        log::notice("sending shutdown" + (shutdown->reason.empty() ? "" : ": " + shutdown->reason),
                    {.guest = name(), .message_type = "shutdown"});
        feed(guest_events::shutdown_sent{shutdown->reason});
    }
    const auto asked_at = std::chrono::steady_clock::now();
    auto [error, reply] = co_await link_->async_send(message, link_->default_deadline(), use_tuple);
    auto result = to_request_result(error, std::move(reply));
    note_reply(message, result, asked_at);
    co_return result;
}

asio::awaitable<void> managed_guest::health_loop() {
    auto self = shared_from_this();
    while (!stopping_) {
        if (link_->is_up() && !std::exchange(handshake_polled_, false)) {
            const protocol::host_message poll = protocol::get_health_request{};
            const auto asked_at = std::chrono::steady_clock::now();
            auto [error, reply] =
                co_await link_->async_send(poll, link_->default_deadline(), use_tuple);
            if (stopping_)
                break;
            const auto result = to_request_result(error, std::move(reply));
            note_reply(poll, result, asked_at);
            // A new link that came up meanwhile was polled by its handshake: either way the
            // next poll is a full interval from now.
            handshake_polled_ = false;
        }
        health_timer_.expires_after(definition_.timeouts.health_interval);
        co_await health_timer_.async_wait(use_tuple);
    }
}

void managed_guest::maybe_start_provisioning() {
    if (stopping_ || provisioning_running_ || !missing_values_.empty() ||
        !machine_.needs_provisioning())
        return;
    auto ticket = machine_.begin_provisioning();
    if (!ticket)
        return;
    if (definition_.provision.empty()) {
        machine_.mark_provisioned(*ticket);
        return;
    }
    provisioning_running_ = true;
    ++background_tasks_;
    asio::co_spawn(executor_, run_provisioning(ticket),
                   [self = shared_from_this()](const std::exception_ptr& e, bool) {
                       self->provisioning_running_ = false;
                       --self->background_tasks_;
                       self->tasks_done_.cancel();
                       rethrow_if_failed(e);
                       // It may have become due again meanwhile (a reboot during the run).
                       self->maybe_start_provisioning();
                   });
}

void managed_guest::publish_provisioning() {
    json::object fields{{"state", report_.state}};
    if (!report_.step.empty())
        fields["step"] = report_.step;
    if (!report_.error.empty())
        fields["error"] = report_.error;
    bus_.publish(name(), "provision", std::move(fields));
}

asio::awaitable<bool> managed_guest::run_provisioning(std::optional<provisioning_ticket> ticket) {
    auto self = shared_from_this();
    auto steps = provisioning_steps(definition_.provision);
    report_ = {"running", "", ""};
    publish_provisioning();
    log::info("provisioning: " + std::to_string(steps.size()) + " steps", {.guest = name()});

    std::string failed_step, failure;
    for (auto& step : steps) {
        report_.step = step.name;
        auto message = step.build();
        if (!message) {
            failed_step = step.name;
            failure = message.error();
            break;
        }
        const auto type = std::string(protocol::type_name(*message));
        const auto asked_at = std::chrono::steady_clock::now();
        auto result = co_await link_->async_request(*message);
        note_reply(*message, result, asked_at);
        if (!result) {
            failed_step = step.name;
            failure = result.error().message();
        } else if (const auto* ack = std::get_if<protocol::ack_payload>(&*result);
                   ack && !ack->ok) {
            failed_step = step.name;
            failure = "guest refused: " + scrub_guest_error(ack->error, *message);
        }
        wipe_secrets(*message);
        if (!failed_step.empty() || stopping_)
            break;
        log::debug("provisioning step done: " + step.name, {.guest = name(), .message_type = type});
    }

    if (failed_step.empty() && stopping_)
        failure = "stopped", failed_step = report_.step;
    if (failed_step.empty()) {
        report_ = {"done", "", ""};
        if (ticket)
            machine_.mark_provisioned(*ticket);
        log::info("provisioned", {.guest = name()});
    } else {
        report_ = {"failed", failed_step, failure};
        if (ticket)
            machine_.mark_provisioning_failed(*ticket);
        log::error("provisioning failed at " + failed_step + ": " + failure +
                       "; retried on the next boot or on demand",
                   {.guest = name()});
    }
    publish_provisioning();
    co_return failed_step.empty();
}

void managed_guest::reconnect() {
    log::notice("reconnecting now on request", {.guest = name()});
    bus_.publish(name(), "link", {{"event", "reconnect_requested"}});
    link_->reconnect_now();
}

asio::awaitable<provisioning_report> managed_guest::provision_now() {
    auto self = shared_from_this();
    while (provisioning_running_) {
        tasks_done_.expires_at(asio::steady_timer::clock_type::time_point::max());
        co_await tasks_done_.async_wait(use_tuple);
    }
    if (!missing_values_.empty())
        co_return report_;
    if (definition_.provision.empty())
        co_return provisioning_report{"none", "", ""};
    provisioning_running_ = true;
    const bool ok = co_await run_provisioning(std::nullopt);
    provisioning_running_ = false;
    tasks_done_.cancel();
    // Keep the automatic run from repeating what was just done for this boot.
    if (ok && machine_.needs_provisioning()) {
        if (auto ticket = machine_.begin_provisioning())
            machine_.mark_provisioned(*ticket);
    }
    maybe_start_provisioning();
    co_return report_;
}

void managed_guest::hold_provisioning_for_values(std::vector<std::string> missing) {
    missing_values_ = std::move(missing);
    report_ = {"needs_values", "", ""};
}

void managed_guest::replace_provision(config::provision_config provision) {
    definition_.provision = std::move(provision);
    missing_values_.clear();
    if (!provisioning_running_)
        report_ = {definition_.provision.empty() ? "none" : "pending", "", ""};
    publish_provisioning();
}

json::object managed_guest::status() const {
    const auto& stats = link_->stats();
    json::object link{
        {"up", link_->is_up()}, {"connects", stats.connects}, {"last_error", stats.last_error}};
    json::array agents;
    for (const auto& a : machine_.agents())
        agents.push_back(json::value_from(a));
    json::object provision{{"state", report_.state}};
    if (!report_.step.empty())
        provision["step"] = report_.step;
    if (!report_.error.empty())
        provision["error"] = report_.error;
    if (!missing_values_.empty()) {
        json::array missing;
        for (const auto& m : missing_values_)
            missing.emplace_back(m);
        provision["missing"] = std::move(missing);
        provision["message"] =
            "values given through the API are kept only in memory and were lost when the daemon "
            "restarted; supply them again with PUT /v1/guests/" +
            name() + "/provision (stereosctl provision " + name() + " --set FILE)";
    }
    json::array transitions;
    for (const auto& t : machine_.history()) {
        transitions.push_back(json::object{{"from", to_string(t.from)},
                                           {"to", to_string(t.to)},
                                           {"reason", t.reason},
                                           {"at", format_utc(t.at)}});
    }
    json::object status{{"name", name()},
                        {"endpoint", definition_.endpoint_text},
                        {"source", to_string(source_)},
                        {"state", to_string(machine_.state())},
                        {"reason", machine_.reason()},
                        {"since", format_utc(machine_.since())},
                        {"link", std::move(link)}};
    if (auto uptime = machine_.uptime_seconds()) {
        status["uptime_seconds"] = *uptime;
    } else {
        status["uptime_seconds"] = nullptr;
    }
    status["agents"] = std::move(agents);
    status["provision"] = std::move(provision);
    status["transitions"] = std::move(transitions);
    return status;
}

json::object managed_guest::snapshot_event_fields() const {
    return {{"to", to_string(machine_.state())}, {"reason", machine_.reason()}, {"snapshot", true}};
}

}  // namespace stereos::daemon

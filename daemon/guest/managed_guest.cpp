#include "daemon/guest/managed_guest.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/json/value_from.hpp>

#include <stereos/protocol/codec.hpp>
#include <stereos/protocol/redact.hpp>
#include <stereos/util/completion_tokens.hpp>
#include <stereos/util/overloaded.hpp>
#include "daemon/guest/provisioning.hpp"
#include "daemon/guest/state_store.hpp"
#include "daemon/logging.hpp"

namespace stereos::daemon {

namespace asio = boost::asio;
namespace json = boost::json;
using namespace std::chrono_literals;

namespace {
using protocol::overloaded;
using transport::rethrow_if_failed;
using transport::use_tuple;

link::guest_link_options link_options_for(const config::link_timeouts& t,
                                          std::shared_ptr<link::retry_budget> budget) {
    link::guest_link_options o;
    o.fast_retry_budget = std::move(budget);
    o.connect_timeout = t.connect_timeout;
    o.request_timeout = t.request_timeout;
    o.keepalive_interval = t.keepalive_interval;
    o.reconnect_max = t.reconnect_max;
    o.unresponsive_grace = t.unresponsive_grace;
    return o;
}

}  // namespace

std::string_view to_string(guest_source source) noexcept {
    return source == guest_source::config ? "config" : "runtime";
}

std::shared_ptr<managed_guest> managed_guest::create(
    const asio::any_io_executor& executor, config::guest_config definition, guest_source source,
    event_bus& bus, std::shared_ptr<link::retry_budget> fast_retry_budget, ledger_services ledger) {
    if (!ledger.digest)
        ledger.digest = std::make_shared<const item_digest>(item_digest::with_random_key());
    auto guest = std::make_shared<managed_guest>(executor, std::move(definition), source, bus,
                                                 std::move(ledger));
    std::weak_ptr<managed_guest> weak = guest;
    guest->link_ = link::guest_link::create(
        executor, guest->definition_.endpoint,
        link_options_for(guest->definition_.timeouts, std::move(fast_retry_budget)),
        [weak](const link::link_event& event) {
            if (auto self = weak.lock())
                self->on_link_event(event);
        });
    guest->provisioning_.load_ledger();
    return guest;
}

managed_guest::managed_guest(asio::any_io_executor executor, config::guest_config definition,
                             guest_source source, event_bus& bus, ledger_services ledger)
    : executor_(std::move(executor)),
      definition_(std::move(definition)),
      source_(source),
      bus_(bus),
      provisioning_(definition_, machine_, bus, std::move(ledger),
                    [this](const protocol::host_message& item,
                           std::chrono::steady_clock::time_point deadline) {
                        return send_item(item, deadline);
                    }),
      health_timer_(executor_),
      tasks_done_(executor_) {
    // Never re-armed: waiters are woken by cancel() alone, so two waiters cannot cancel each
    // other's wait by re-arming it (that spun a core).
    tasks_done_.expires_at(asio::steady_timer::clock_type::time_point::max());
}

void managed_guest::wake_waiters() {
    tasks_done_.cancel();
}

void managed_guest::start() {
    log::info("guest added (" + std::string(to_string(source_)) + "), endpoint " +
                  definition_.endpoint_text,
              {.guest = name(), .endpoint = definition_.endpoint_text});
    link_->start();
    start_health_loop();
}

void managed_guest::start(link::handed_over_connection adopted) {
    log::info("guest added (" + std::string(to_string(source_)) + "), endpoint " +
                  definition_.endpoint_text +
                  ", on the connection the previous daemon process handed over",
              {.guest = name(), .endpoint = definition_.endpoint_text});
    link_->start(std::move(adopted));
    start_health_loop();
}

void managed_guest::start_health_loop() {
    ++background_tasks_;
    asio::co_spawn(executor_, health_loop(),
                   [self = shared_from_this()](const std::exception_ptr& e) {
                       --self->background_tasks_;
                       self->wake_waiters();
                       rethrow_if_failed(e);
                   });
}

void managed_guest::begin_stop() {
    stopping_ = true;
    provisioning_.stop();
    health_timer_.cancel();
    link_->stop();
}

asio::awaitable<std::optional<link::handed_over_connection>> managed_guest::async_hand_over(
    std::chrono::steady_clock::time_point until) {
    auto self = shared_from_this();
    // The link first: the item provisioning is sending gets its reply and is recorded in the
    // ledger, and the next one is refused, so the next process sends only what is missing.
    auto handed = co_await link_->async_hand_over(until);
    begin_stop();
    while (background_tasks_ > 0)
        co_await tasks_done_.async_wait(use_tuple);
    provisioning_.on_stopped();
    log::info(handed ? "guest link handed over to the next daemon process"
                     : "guest link stopped (it could not be handed over: not up, or replies "
                       "still owed)",
              {.guest = name()});
    co_return handed;
}

asio::awaitable<void> managed_guest::async_stop() {
    auto self = shared_from_this();
    begin_stop();
    co_await link_->async_stop();
    while (background_tasks_ > 0)
        co_await tasks_done_.async_wait(use_tuple);
    provisioning_.on_stopped();
    log::info("guest link stopped", {.guest = name()});
}

void managed_guest::feed(const guest_event& event) {
    after_event(machine_.handle(event, std::chrono::system_clock::now()),
                std::holds_alternative<guest_events::link_up>(event) ||
                    std::holds_alternative<guest_events::health_received>(event));
}

void managed_guest::after_event(const event_result& result, bool heard_health) {
    if (result.rebooted) {
        log::notice("guest restarted (stereosd has a new start time): provisioning will run again",
                    {.guest = name()});
    }
    if (result.new_run)
        provisioning_.on_new_run();
    else if (result.resumed_run)
        provisioning_.on_resumed_run();
    if (heard_health)
        provisioning_.on_reckoning(result.new_run);
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

void managed_guest::on_link_event(const link::link_event& event) {
    const auto now = log_throttle::clock::now();
    std::visit(
        overloaded{
            [&](const link::link_events::connecting&) { feed(guest_events::link_connecting{}); },
            [&](const link::link_events::connect_failed& e) {
                if (auto text = connect_errors_.admit("cannot connect: " + e.reason, now)) {
                    log::warning(*text, {.guest = name(), .endpoint = definition_.endpoint_text});
                    bus_.publish(name(), "link",
                                 {{"event", "connect_failed"}, {"reason", e.reason}});
                }
                feed(guest_events::connect_failed{e.reason});
            },
            [&](const link::link_events::up& e) {
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
            [&](const link::link_events::down& e) {
                log::warning("link lost: " + e.reason + "; reconnecting in " +
                                 std::to_string(e.retry_in.count()) + " ms",
                             {.guest = name()});
                bus_.publish(name(), "link", {{"event", "down"}, {"reason", e.reason}});
                feed(guest_events::link_lost{e.reason, e.last_received});
            },
            [&](const link::link_events::unresponsive& e) {
                const auto grace = config::format_duration(definition_.timeouts.unresponsive_grace);
                log::warning("guest unresponsive: " + e.reason + "; keeping the connection " +
                                 grace + " for a late answer",
                             {.guest = name()});
                bus_.publish(name(), "link", {{"event", "unresponsive"}, {"reason", e.reason}});
                feed(guest_events::link_unresponsive{e.reason});
            },
            [&](const link::link_events::responsive&) {
                log::notice("guest answers again on the same connection (paused, or slow)",
                            {.guest = name()});
                bus_.publish(name(), "link", {{"event", "responsive"}});
                feed(guest_events::reply_received{});
            },
            [&](const link::link_events::protocol_violation& e) {
                log::error("protocol error, resetting the connection: " + e.detail,
                           {.guest = name()});
                bus_.publish(name(), "link", {{"event", "protocol_error"}, {"reason", e.detail}});
            },
            [&](const link::link_events::lifecycle& e) {
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
            [&](const link::link_events::unknown_message& e) {
                if (auto text = unknown_messages_.admit(
                        "ignoring unknown message type \"" + e.type + "\"", now)) {
                    log::notice(*text, {.guest = name(), .message_type = e.type});
                }
            },
        },
        event);
}

void managed_guest::note_outcome(bool sent_shutdown, const boost::system::error_code& error,
                                 const protocol::guest_message& reply,
                                 std::chrono::steady_clock::time_point asked_at) {
    if (error) {
        // A timeout alone changes no state: the link judges unresponsiveness (guest_link.hpp).
        if (sent_shutdown)
            feed(guest_events::shutdown_failed{error.message()});
        return;
    }
    if (const auto* health = std::get_if<protocol::health_payload>(&reply)) {
        // By reference: a poll that changes nothing copies nothing.
        after_event(machine_.handle_health(*health, std::chrono::steady_clock::now(), asked_at,
                                           std::chrono::system_clock::now()),
                    true);
        return;
    }
    feed(guest_events::reply_received{});
    if (sent_shutdown) {
        const auto* ack = std::get_if<protocol::ack_payload>(&reply);
        if (ack && ack->ok) {
            feed(guest_events::shutdown_acked{});
        } else {
            feed(guest_events::shutdown_failed{ack ? ack->error : "unexpected reply"});
        }
    }
}

bool managed_guest::note_request(const protocol::host_message& message) {
    const auto* shutdown = std::get_if<protocol::shutdown_payload>(&message);
    if (!shutdown)
        return false;
    log::notice("sending shutdown" + (shutdown->reason.empty() ? "" : ": " + shutdown->reason),
                {.guest = name(), .message_type = "shutdown"});
    feed(guest_events::shutdown_sent{shutdown->reason});
    return true;
}

asio::awaitable<link::request_result> managed_guest::send_item(
    const protocol::host_message& item, std::chrono::steady_clock::time_point deadline) {
    const auto asked_at = std::chrono::steady_clock::now();
    // By reference to the link: no copy of a secret is left unwiped in a coroutine frame.
    auto [error, reply] = co_await link_->async_send(item, deadline, use_tuple);
    note_outcome(std::holds_alternative<protocol::shutdown_payload>(item), error, reply, asked_at);
    co_return link::to_request_result(error, std::move(reply));
}

asio::awaitable<void> managed_guest::health_loop() {
    auto self = shared_from_this();
    // Sent by reference: built once, never copied.
    static const protocol::host_message poll = protocol::get_health_request{};
    while (!stopping_) {
        if (link_->is_up() && !std::exchange(handshake_polled_, false)) {
            const auto asked_at = std::chrono::steady_clock::now();
            auto [error, reply] =
                co_await link_->async_send(poll, link_->default_deadline(), use_tuple);
            if (stopping_)
                break;
            note_outcome(false, error, reply, asked_at);
            // A new link that came up meanwhile was polled by its handshake: either way the
            // next poll is a full interval from now.
            handshake_polled_ = false;
        }
        health_timer_.expires_after(definition_.timeouts.health_interval);
        co_await health_timer_.async_wait(use_tuple);
    }
}

void managed_guest::maybe_start_provisioning() {
    if (stopping_ || provisioning_running_ || !provisioning_.missing_values().empty() ||
        !machine_.needs_provisioning())
        return;
    auto ticket = machine_.begin_provisioning();
    if (!ticket)
        return;
    if (!provisioning_.has_anything_to_provision()) {
        machine_.mark_provisioned(*ticket);
        return;
    }
    provisioning_running_ = true;
    ++background_tasks_;
    asio::co_spawn(executor_, provisioning_.run(ticket),
                   [self = shared_from_this()](const std::exception_ptr& e, bool) {
                       self->provisioning_running_ = false;
                       --self->background_tasks_;
                       self->wake_waiters();
                       rethrow_if_failed(e);
                       // It may have become due again meanwhile (a reboot during the run).
                       self->maybe_start_provisioning();
                   });
}

void managed_guest::update_definition(config::guest_config definition) {
    const bool retimed = definition.timeouts != definition_.timeouts;
    const bool reprovisioned = definition.provision != definition_.provision;
    definition_ = std::move(definition);
    if (retimed) {
        auto options = link_->options();
        const auto& t = definition_.timeouts;
        options.connect_timeout = t.connect_timeout;
        options.request_timeout = t.request_timeout;
        options.keepalive_interval = t.keepalive_interval;
        options.reconnect_max = t.reconnect_max;
        options.unresponsive_grace = t.unresponsive_grace;
        link_->set_options(options);
        health_timer_.cancel();  // the next poll follows the new interval
        log::info("reload: new timings applied to the live link", {.guest = name()});
    }
    provisioning_.on_definition_changed(reprovisioned, provisioning_running_);
    // Referenced files are read again: a rotated secret is a changed item, sent alone.
    recheck_provisioning();
}

void managed_guest::recheck_provisioning() {
    if (!provisioning_.missing_values().empty())
        return;
    const auto result = machine_.request_provisioning();
    (void)result;
    maybe_start_provisioning();
}

void managed_guest::reconnect() {
    log::notice("reconnecting now on request", {.guest = name()});
    bus_.publish(name(), "link", {{"event", "reconnect_requested"}});
    link_->reconnect_now();
}

asio::awaitable<provisioning_report> managed_guest::provision_now() {
    auto self = shared_from_this();
    while (provisioning_running_ && !stopping_)
        co_await tasks_done_.async_wait(use_tuple);
    if (stopping_)
        co_return provisioning_report{"failed", "", "stopped", 0, 0};
    if (!provisioning_.missing_values().empty())
        co_return provisioning_.report();
    if (!provisioning_.has_anything_to_provision())
        co_return provisioning_report{"none", "", "", 0, 0};
    provisioning_running_ = true;
    ++background_tasks_;  // async_stop waits for it, as for the automatic runs
    co_await provisioning_.run(std::nullopt);
    provisioning_running_ = false;
    --background_tasks_;
    wake_waiters();
    // Due meanwhile (a reload, a new run)? The automatic run compares with the ledger again:
    // whatever this run already sent is not sent twice.
    maybe_start_provisioning();
    co_return provisioning_.report();
}

void managed_guest::replace_provision(config::provision_config provision) {
    definition_.provision = std::move(provision);
    provisioning_.values_supplied(provisioning_running_);
}

json::object managed_guest::status() const {
    const auto& stats = link_->stats();
    json::object link{
        {"up", link_->is_up()}, {"connects", stats.connects}, {"last_error", stats.last_error}};
    json::array agents;
    for (const auto& a : machine_.agents())
        agents.push_back(json::value_from(a));
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
    status["provision"] = provisioning_.report_status(name());
    status["ledger"] = provisioning_.ledger_status();
    status["transitions"] = std::move(transitions);
    return status;
}

json::object managed_guest::snapshot_event_fields() const {
    return {{"to", to_string(machine_.state())}, {"reason", machine_.reason()}, {"snapshot", true}};
}

}  // namespace stereos::daemon

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
    if (!guest->definition_.provision.empty())
        guest->report_.state = "pending";
    // What this guest's current run was given before the daemon (re)started.
    if (auto* store = guest->services_.store) {
        auto loaded = store->load_ledger(guest->name());
        if (!loaded) {
            // A file that is still there could not be read: keep it, and do not write over it.
            const bool kept = std::filesystem::exists(store->ledger_file(guest->name()));
            if (kept)
                guest->ledger_writable_ = false;
            log::error("delivery ledger: " + loaded.error() +
                           "; the guest is treated as never provisioned" +
                           (kept ? " and its ledger is not written until the daemon restarts" : ""),
                       {.guest = guest->name()});
        } else if (*loaded) {
            guest->ledger_ = std::move(**loaded);
            guest->ledger_on_disk_ = true;
            if (const auto& run = guest->ledger_.run())
                guest->saved_started_latest_ = run->started_latest;
            const auto& run = guest->ledger_.run();
            // Without a boot_id a run from an earlier host boot cannot be told apart.
            if (run && !guest->services_.boot_id.empty() &&
                run->boot_id == guest->services_.boot_id) {
                guest->machine_.remember_run({run->started_earliest, run->started_latest},
                                             run->last_heard);
            }
        }
    }
    return guest;
}

managed_guest::managed_guest(asio::any_io_executor executor, config::guest_config definition,
                             guest_source source, event_bus& bus, ledger_services ledger)
    : executor_(std::move(executor)),
      definition_(std::move(definition)),
      source_(source),
      bus_(bus),
      services_(std::move(ledger)),
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
    health_timer_.cancel();
    link_->stop();
}

asio::awaitable<void> managed_guest::async_stop() {
    auto self = shared_from_this();
    begin_stop();
    co_await link_->async_stop();
    while (background_tasks_ > 0)
        co_await tasks_done_.async_wait(use_tuple);
    // The latest sign of life, for telling the next daemon's first answer from a restart.
    if (auto run = current_run()) {
        ledger_.update_run(*run);
        save_ledger();
    }
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
    if (result.new_run) {
        ledger_.start_run(current_run().value_or(guest_run{services_.boot_id, {}, {}, {}}));
        undelivered_.clear();
        save_ledger();
    } else if (result.resumed_run) {
        log::info("the same run of the guest as before the daemon started: " +
                      std::to_string(ledger_.items().size()) + " items already delivered",
                  {.guest = name()});
    }
    if (heard_health) {
        if (const auto started = machine_.guest_started_within()) {
            // Every poll: no allocation here (the run's boot_id stays as it is).
            ledger_.update_reckoning(started->earliest, started->latest, machine_.last_heard());
            // The reckoned start drifts slowly (the two clocks' rates) and jumps after a pause:
            // a daemon that dies without a clean stop must find the run where it now is. 1.5 s
            // keeps the file within the 2 s tolerance and above the 1 s jitter of whole-second
            // uptimes, so polls do not write it.
            const auto drift = started->latest - saved_started_latest_;
            if (!result.new_run && (drift > 1500ms || drift < -1500ms))
                save_ledger();
        }
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

void managed_guest::note_reply(const protocol::host_message& sent,
                               const link::request_result& result,
                               std::chrono::steady_clock::time_point asked_at) {
    static const protocol::guest_message none;
    note_outcome(std::holds_alternative<protocol::shutdown_payload>(sent),
                 result ? boost::system::error_code() : result.error(), result ? *result : none,
                 asked_at);
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
    if (stopping_ || provisioning_running_ || !missing_values_.empty() ||
        !machine_.needs_provisioning())
        return;
    auto ticket = machine_.begin_provisioning();
    if (!ticket)
        return;
    if (!has_anything_to_provision()) {
        machine_.mark_provisioned(*ticket);
        return;
    }
    provisioning_running_ = true;
    ++background_tasks_;
    asio::co_spawn(executor_, run_provisioning(ticket),
                   [self = shared_from_this()](const std::exception_ptr& e, bool) {
                       self->provisioning_running_ = false;
                       --self->background_tasks_;
                       self->wake_waiters();
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
    if (report_.state == "done" || report_.state == "failed") {
        fields["sent"] = report_.sent;
        fields["already"] = report_.already;
    }
    bus_.publish(name(), "provision", std::move(fields));
}

std::string managed_guest::digest_of(const std::string& key, const protocol::host_message& message,
                                     delivery_origin origin) const {
    std::string line;
    if (const auto* mount = std::get_if<protocol::mount_payload>(&message)) {
        auto same_point = *mount;  // one mount however its path is spelled
        same_point.guest_path = mount_point(mount->guest_path);
        protocol::encode_into(line, protocol::host_message{std::move(same_point)});
    } else {
        protocol::encode_into(line, message);
    }
    // A value an API caller sent is digested apart from the provisioning's: comparing digests
    // must not let a caller test guesses of a secret it was never given.
    const bool secret = std::holds_alternative<protocol::secret_payload>(message) ||
                        std::holds_alternative<protocol::config_payload>(message);
    const std::string_view domain = secret && origin == delivery_origin::api ? "api" : "";
    std::string bytes;
    bytes.reserve(domain.size() + key.size() + 2 + line.size());
    bytes.append(domain).append(1, '\0').append(key).append(1, '\0').append(line);
    auto digest = services_.digest->of(bytes);
    explicit_bzero(bytes.data(), bytes.size());
    explicit_bzero(line.data(), line.size());
    return digest;
}

std::optional<guest_run> managed_guest::current_run() const {
    const auto started = machine_.guest_started_within();
    if (!started)
        return std::nullopt;
    return guest_run{services_.boot_id, started->earliest, started->latest, machine_.last_heard()};
}

void managed_guest::save_ledger() {
    if (services_.store == nullptr || !ledger_writable_)
        return;
    // A run given nothing has nothing to protect from being sent twice: no file (10,000 guests
    // without provisioning write nothing at start or stop).
    if (!ledger_on_disk_ && ledger_.items().empty() && ledger_.api_keys().empty())
        return;
    if (const auto& run = ledger_.run())
        saved_started_latest_ = run->started_latest;
    ledger_on_disk_ = true;  // even a failed write may have left a file to be replaced
    if (auto error = services_.store->save_ledger(name(), ledger_)) {
        log::error("cannot save the delivery ledger: " + *error +
                       "; a daemon restart would send this run's items again",
                   {.guest = name()});
    }
}

managed_guest::provisioning_plan managed_guest::plan_provisioning() {
    provisioning_plan plan;
    plan.items = provisioning_items(definition_.provision, ledger_.api_keys());
    undelivered_.clear();
    for (const auto& item : plan.items) {
        auto message = item.build();
        if (!message) {
            if (plan.failed_step.empty()) {
                plan.failed_step = item.name;
                plan.failure = message.error();
            }
            undelivered_[item.key] = "failed";
            continue;
        }
        const auto digest = digest_of(item.key, *message);
        wipe_secrets(*message);
        if (ledger_.delivered(item.key, digest)) {
            ++plan.already;
            continue;
        }
        undelivered_[item.key] = ledger_.find(item.key) ? "changed" : "pending";
        plan.to_send.push_back(&item - plan.items.data());
    }
    // Removed from the provisioning: the guest keeps it until it reboots (no removal message).
    for (const auto& entry : std::vector<ledger_item>(ledger_.items())) {
        const bool wanted =
            std::any_of(plan.items.begin(), plan.items.end(),
                        [&](const provisioning_item& i) { return i.key == entry.key; });
        if (entry.origin == delivery_origin::provisioning && !wanted) {
            ledger_.forget(entry.key);
            plan.forgot = true;
            log::notice("ledger: " + entry.key +
                            " is no longer provisioned; the guest keeps it until it reboots",
                        {.guest = name()});
        }
    }
    return plan;
}

asio::awaitable<bool> managed_guest::run_provisioning(std::optional<provisioning_ticket> ticket) {
    auto self = shared_from_this();
    const auto previous_state = report_.state;
    const auto run = machine_.boot_count();
    auto plan = plan_provisioning();
    auto failed_step = std::move(plan.failed_step);
    auto failure = std::move(plan.failure);
    const auto already = plan.already;
    if (failed_step.empty() && plan.to_send.empty()) {
        // Nothing is missing: no run to announce.
        log::debug("provisioning: nothing missing in this run (" + std::to_string(already) +
                       " items delivered)",
                   {.guest = name()});
        report_ = {"done", "", "", 0, already};
        if (previous_state != "done")
            publish_provisioning();
        if (plan.forgot)
            save_ledger();
        if (ticket)
            machine_.mark_provisioned(*ticket);
        co_return true;
    }

    std::size_t sent = 0;
    if (failed_step.empty()) {
        report_ = {"running", "", "", 0, already};
        publish_provisioning();
        log::info("provisioning: " + std::to_string(plan.to_send.size()) + " of " +
                      std::to_string(plan.items.size()) + " items to send (" +
                      std::to_string(already) + " already delivered in this run)",
                  {.guest = name()});
    }
    for (const auto index : plan.to_send) {
        if (!failed_step.empty() || stopping_)
            break;
        // Built again from what holds now: an API delivery meanwhile (a key added, the same
        // mount) is part of it, or has made it unneeded.
        const auto key = plan.items[index].key;
        auto current = find_item(key);
        if (!current)
            continue;  // gone from the provisioning (a reload meanwhile)
        const auto* item = &*current;
        report_.step = item->name;
        auto message = item->build();  // again: what is sent is what is recorded
        if (!message) {
            failed_step = item->name;
            failure = message.error();
            undelivered_[item->key] = "failed";
            break;
        }
        const auto digest = digest_of(item->key, *message);
        if (ledger_.delivered(item->key, digest)) {
            wipe_secrets(*message);
            undelivered_.erase(item->key);
            continue;
        }
        const auto type = std::string(protocol::type_name(*message));
        const auto asked_at = std::chrono::steady_clock::now();
        // No client waits on provisioning: an answer is awaited as long as the connection may
        // live (a paused guest answers after `cont`), so an item the guest applied is recorded.
        const auto deadline = asked_at + definition_.timeouts.request_timeout +
                              definition_.timeouts.unresponsive_grace;
        auto result = co_await link_->async_request(*message, deadline);
        note_reply(*message, result, asked_at);
        if (!result) {
            failed_step = item->name;
            failure = result.error().message();
        } else if (const auto* ack = std::get_if<protocol::ack_payload>(&*result);
                   ack && !ack->ok) {
            failed_step = item->name;
            failure = "guest refused: " + scrub_guest_error(ack->error, *message);
        }
        wipe_secrets(*message);
        if (!failed_step.empty()) {
            undelivered_[item->key] = "failed";
            break;
        }
        // Only an ack in the run the plan was for counts (a reboot meanwhile started a new one).
        if (machine_.boot_count() == run) {
            ledger_.record({item->key, digest, std::chrono::system_clock::now(),
                            delivery_origin::provisioning});
            undelivered_.erase(item->key);
            save_ledger();  // at once: a daemon killed now must not send it again
        }
        ++sent;
        log::debug("provisioning item delivered: " + item->name,
                   {.guest = name(), .message_type = type});
    }
    if (plan.forgot)
        save_ledger();

    if (failed_step.empty() && stopping_)
        failure = "stopped", failed_step = report_.step;
    if (failed_step.empty()) {
        report_ = {"done", "", "", sent, already};
        if (ticket)
            machine_.mark_provisioned(*ticket);
        log::info("provisioned: " + std::to_string(sent) + " items sent, " +
                      std::to_string(already) + " already delivered",
                  {.guest = name()});
    } else {
        report_ = {"failed", failed_step, failure, sent, already};
        if (ticket)
            machine_.mark_provisioning_failed(*ticket);
        log::error("provisioning failed at " + failed_step + ": " + failure +
                       "; retried on the next connection or on demand",
                   {.guest = name()});
    }
    publish_provisioning();
    co_return failed_step.empty();
}

std::optional<provisioning_item> managed_guest::find_item(std::string_view key) const {
    for (auto& item : provisioning_items(definition_.provision, ledger_.api_keys())) {
        if (item.key == key)
            return std::move(item);
    }
    return std::nullopt;
}

bool managed_guest::has_anything_to_provision() const {
    if (!definition_.provision.empty() || !ledger_.api_keys().empty())
        return true;
    // Items provisioned before a reload emptied the provisioning are still to be forgotten.
    return std::any_of(ledger_.items().begin(), ledger_.items().end(), [](const ledger_item& i) {
        return i.origin == delivery_origin::provisioning;
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
    if (reprovisioned && !provisioning_running_) {
        if (!has_anything_to_provision())
            report_ = {"none", "", "", 0, 0};
        else if (report_.state == "none")
            report_.state = "pending";
    }
    // Referenced files are read again: a rotated secret is a changed item, sent alone.
    recheck_provisioning();
}

void managed_guest::recheck_provisioning() {
    if (!missing_values_.empty())
        return;
    const auto result = machine_.request_provisioning();
    (void)result;
    maybe_start_provisioning();
}

mount_plan managed_guest::plan_mount(const protocol::mount_payload& mount) const {
    const auto key = mount_item_key(mount.guest_path);
    if (mounts_in_flight_.contains(key))
        return mount_plan::conflict;  // the same path is being mounted now
    // Before the first link of this daemon, the ledger may be an earlier run's.
    const auto* delivered = machine_.link_is_up() ? ledger_.find(key) : nullptr;
    if (delivered == nullptr)
        return mount_plan::send;
    const protocol::host_message message = mount;
    return delivered->digest == digest_of(key, message) ? mount_plan::already_mounted
                                                        : mount_plan::conflict;
}

boost::system::result<protocol::host_message, std::string> managed_guest::ssh_key_request(
    const std::string& user, const std::string& public_key) const {
    auto keys = ledger_.api_keys();
    auto& for_user = keys[user];
    if (std::find(for_user.begin(), for_user.end(), public_key) == for_user.end())
        for_user.push_back(public_key);
    for (const auto& item : provisioning_items(definition_.provision, keys)) {
        if (item.key == ssh_keys_item_key(user))
            return item.build();
    }
    return boost::system::result<protocol::host_message, std::string>(boost::system::in_place_error,
                                                                      "no keys for " + user);
}

void managed_guest::record_api_delivery(const protocol::host_message& sent,
                                        std::string_view added_public_key) {
    std::string key = std::visit(
        overloaded{
            [](const protocol::config_payload&) { return config_item_key(); },
            [](const protocol::secret_payload& p) { return secret_item_key(p.name); },
            [](const protocol::ssh_key_payload& p) { return ssh_keys_item_key(p.user); },
            [](const protocol::mount_payload& p) { return mount_item_key(p.guest_path); },
            [](const auto&) { return std::string(); },
        },
        sent);
    if (key.empty() || !current_run())
        return;
    if (const auto* ssh = std::get_if<protocol::ssh_key_payload>(&sent);
        ssh && !added_public_key.empty())
        ledger_.add_api_key(ssh->user, std::string(added_public_key));
    // A user's keys stay the provisioning's item: they still hold the configured keys.
    const auto* before = ledger_.find(key);
    const auto origin = before && before->origin == delivery_origin::provisioning &&
                                std::holds_alternative<protocol::ssh_key_payload>(sent)
                            ? delivery_origin::provisioning
                            : delivery_origin::api;
    ledger_.record({key, digest_of(key, sent, origin), std::chrono::system_clock::now(), origin});
    save_ledger();
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
    if (!missing_values_.empty())
        co_return report_;
    if (!has_anything_to_provision())
        co_return provisioning_report{"none", "", "", 0, 0};
    provisioning_running_ = true;
    ++background_tasks_;  // async_stop waits for it, as for the automatic runs
    co_await run_provisioning(std::nullopt);
    provisioning_running_ = false;
    --background_tasks_;
    wake_waiters();
    // Due meanwhile (a reload, a new run)? The automatic run compares with the ledger again:
    // whatever this run already sent is not sent twice.
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
            "restarted; supply them again with PATCH /v1/guests/" +
            name() + "/provision (stereosctl provision " + name() +
            " --values FILE), which keeps the rest of the provisioning";
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
    if (report_.state == "done" || report_.state == "failed") {
        provision["sent"] = report_.sent;
        provision["already"] = report_.already;
    }
    status["provision"] = std::move(provision);
    status["ledger"] = ledger_status();
    status["transitions"] = std::move(transitions);
    return status;
}

json::object managed_guest::redacted_provision() const {
    const auto& p = definition_.provision;
    json::object provision;
    if (p.config_file)
        provision["config_file"] = p.config_file->string();
    if (p.config_content)
        provision["config"] = protocol::redaction_marker(p.config_content->size());
    json::array keys;
    for (const auto& key : p.ssh_keys) {
        json::object k{{"user", key.user}};
        if (key.public_key_file.empty())
            k["public_key"] = key.public_key;  // public: not secret
        else
            k["public_key_file"] = key.public_key_file.string();
        keys.push_back(std::move(k));
    }
    if (!keys.empty())
        provision["ssh_keys"] = std::move(keys);
    json::array secrets;
    for (const auto& secret : p.secrets) {
        json::object o{{"name", secret.name}};
        if (secret.value)
            o["value"] = protocol::redaction_marker(secret.value->size());
        else if (!secret.credential.empty())
            o["credential"] = secret.credential;
        else
            o["file"] = secret.file.string();
        if (secret.mode != 0)
            o["mode"] = secret.mode;
        secrets.push_back(std::move(o));
    }
    if (!secrets.empty())
        provision["secrets"] = std::move(secrets);
    json::array mounts;
    for (const auto& mount : p.mounts)
        mounts.push_back(json::value_from(mount));
    if (!mounts.empty())
        provision["mounts"] = std::move(mounts);
    json::array missing;
    for (const auto& m : missing_values_)
        missing.emplace_back(m);
    return {{"provision", std::move(provision)}, {"missing", std::move(missing)}};
}

json::object managed_guest::ledger_status() const {
    json::object out;
    if (const auto& run = ledger_.run()) {
        // The start time on the wall clock, for people; the ledger keeps the monotonic one.
        const auto steady_now = std::chrono::steady_clock::now();
        const auto wall_now = std::chrono::system_clock::now();
        auto started = wall_now - std::chrono::duration_cast<std::chrono::system_clock::duration>(
                                      steady_now - run->started_latest);
        out["run"] =
            json::object{{"boot_id", run->boot_id},
                         {"started", run->boot_id != services_.boot_id ||
                                             run->started_latest == decltype(run->started_latest){}
                                         ? json::value(nullptr)
                                         : json::value(format_utc(started))},
                         {"this_host_boot", run->boot_id == services_.boot_id}};
    } else {
        out["run"] = nullptr;
    }
    json::array items;
    for (const auto& item : ledger_.items()) {
        json::object entry{{"item", item.key},
                           {"state", "delivered"},
                           {"digest", item.digest.substr(0, 12)},
                           {"at", format_utc(item.delivered_at)},
                           {"origin", to_string(item.origin)}};
        if (auto it = undelivered_.find(item.key); it != undelivered_.end())
            entry["state"] = it->second;  // changed since, or its new content failed
        items.push_back(std::move(entry));
    }
    for (const auto& [key, state] : undelivered_) {
        if (ledger_.find(key) == nullptr)
            items.push_back(json::object{{"item", key}, {"state", state}});
    }
    out["items"] = std::move(items);
    return out;
}

json::object managed_guest::snapshot_event_fields() const {
    return {{"to", to_string(machine_.state())}, {"reason", machine_.reason()}, {"snapshot", true}};
}

}  // namespace stereos::daemon

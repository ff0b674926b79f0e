#include "daemon/guest/provisioning_runner.hpp"

#include <algorithm>
#include <filesystem>

#include <boost/json/value_from.hpp>

#include <stereos/protocol/codec.hpp>
#include <stereos/protocol/redact.hpp>
#include <stereos/util/overloaded.hpp>
#include "daemon/guest/state_store.hpp"
#include "daemon/logging.hpp"

namespace stereos::daemon {

namespace asio = boost::asio;
namespace json = boost::json;
using namespace std::chrono_literals;
using protocol::overloaded;

provisioning_runner::provisioning_runner(const config::guest_config& definition,
                                         guest_state_machine& machine, event_bus& bus,
                                         ledger_services services, send_function send)
    : definition_(definition),
      machine_(machine),
      bus_(bus),
      services_(std::move(services)),
      send_(std::move(send)) {
    if (!definition_.provision.empty())
        report_.state = "pending";
}

void provisioning_runner::load_ledger() {
    auto* store = services_.store;
    if (store == nullptr)
        return;
    auto loaded = store->load_ledger(name());
    if (!loaded) {
        // A file that is still there could not be read: keep it, and do not write over it.
        const bool kept = std::filesystem::exists(store->ledger_file(name()));
        if (kept)
            ledger_writable_ = false;
        log::error("delivery ledger: " + loaded.error() +
                       "; the guest is treated as never provisioned" +
                       (kept ? " and its ledger is not written until the daemon restarts" : ""),
                   {.guest = name()});
        return;
    }
    if (!*loaded)
        return;
    ledger_ = std::move(**loaded);
    ledger_on_disk_ = true;
    const auto& run = ledger_.run();
    if (run)
        saved_started_latest_ = run->started_latest;
    // Without a boot_id a run from an earlier host boot cannot be told apart.
    if (run && !services_.boot_id.empty() && run->boot_id == services_.boot_id)
        machine_.remember_run({run->started_earliest, run->started_latest}, run->last_heard);
}

void provisioning_runner::on_new_run() {
    ledger_.start_run(current_run().value_or(guest_run{services_.boot_id, {}, {}, {}}));
    undelivered_.clear();
    save_ledger();
}

void provisioning_runner::on_resumed_run() {
    log::info("the same run of the guest as before the daemon started: " +
                  std::to_string(ledger_.items().size()) + " items already delivered",
              {.guest = name()});
}

void provisioning_runner::on_reckoning(bool new_run) {
    const auto started = machine_.guest_started_within();
    if (!started)
        return;
    // Every poll: no allocation here (the run's boot_id stays as it is).
    ledger_.update_reckoning(started->earliest, started->latest, machine_.last_heard());
    // The reckoned start drifts slowly (the two clocks' rates) and jumps after a pause: a
    // daemon that dies without a clean stop must find the run where it now is. 1.5 s keeps the
    // file within the 2 s tolerance and above the 1 s jitter of whole-second uptimes, so polls
    // do not write it.
    const auto drift = started->latest - saved_started_latest_;
    if (!new_run && (drift > 1500ms || drift < -1500ms))
        save_ledger();
}

void provisioning_runner::on_stopped() {
    if (auto run = current_run()) {
        ledger_.update_run(*run);
        save_ledger();
    }
}

void provisioning_runner::on_definition_changed(bool provisioning_changed, bool run_in_progress) {
    if (!provisioning_changed || run_in_progress)
        return;
    if (!has_anything_to_provision())
        report_ = {"none", "", "", 0, 0};
    else if (report_.state == "none")
        report_.state = "pending";
}

void provisioning_runner::values_supplied(bool run_in_progress) {
    missing_values_.clear();
    if (!run_in_progress)
        report_ = {definition_.provision.empty() ? "none" : "pending", "", ""};
    publish();
}

json::object provisioning_runner::report_status(const std::string& guest_name) const {
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
            guest_name + "/provision (stereosctl provision " + guest_name +
            " --values FILE), which keeps the rest of the provisioning";
    }
    if (report_.state == "done" || report_.state == "failed") {
        provision["sent"] = report_.sent;
        provision["already"] = report_.already;
    }
    return provision;
}

void provisioning_runner::publish() {
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

std::string provisioning_runner::digest_of(const std::string& key,
                                           const protocol::host_message& message,
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

std::optional<guest_run> provisioning_runner::current_run() const {
    const auto started = machine_.guest_started_within();
    if (!started)
        return std::nullopt;
    return guest_run{services_.boot_id, started->earliest, started->latest, machine_.last_heard()};
}

void provisioning_runner::save_ledger() {
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

provisioning_runner::send_plan provisioning_runner::make_plan() {
    send_plan plan;
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

asio::awaitable<bool> provisioning_runner::run(std::optional<provisioning_ticket> ticket) {
    const auto previous_state = report_.state;
    const auto run = machine_.boot_count();
    auto plan = make_plan();
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
            publish();
        if (plan.forgot)
            save_ledger();
        if (ticket)
            machine_.mark_provisioned(*ticket);
        co_return true;
    }

    std::size_t sent = 0;
    if (failed_step.empty()) {
        report_ = {"running", "", "", 0, already};
        publish();
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
        auto result = co_await send_(*message, deadline);
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
    publish();
    co_return failed_step.empty();
}

std::optional<provisioning_item> provisioning_runner::find_item(std::string_view key) const {
    for (auto& item : provisioning_items(definition_.provision, ledger_.api_keys())) {
        if (item.key == key)
            return std::move(item);
    }
    return std::nullopt;
}

bool provisioning_runner::has_anything_to_provision() const {
    if (!definition_.provision.empty() || !ledger_.api_keys().empty())
        return true;
    // Items provisioned before a reload emptied the provisioning are still to be forgotten.
    return std::any_of(ledger_.items().begin(), ledger_.items().end(), [](const ledger_item& i) {
        return i.origin == delivery_origin::provisioning;
    });
}

mount_plan provisioning_runner::plan_mount(const protocol::mount_payload& mount) const {
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

boost::system::result<protocol::host_message, std::string> provisioning_runner::ssh_key_request(
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

void provisioning_runner::record_api_delivery(const protocol::host_message& sent,
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

void provisioning_runner::hold_for_values(std::vector<std::string> missing) {
    missing_values_ = std::move(missing);
    report_ = {"needs_values", "", ""};
}

json::object provisioning_runner::redacted_provision() const {
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

json::object provisioning_runner::ledger_status() const {
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

}  // namespace stereos::daemon

// One guest's provisioning against its delivery ledger: what the guest's current run lacks (by
// the items' digests), sending it in order through the guest's link, recording each ack at once,
// and the report that status and events show. Also what the API's deliveries (keys, mounts,
// secrets) mean for the ledger. Owned by managed_guest, which decides when a run starts (the
// state machine's ticket) and counts it among its background tasks. Runs on the daemon's single
// executor.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/json/object.hpp>
#include <boost/system/result.hpp>

#include <stereos/link/guest_link.hpp>
#include "config/config.hpp"
#include "daemon/event_bus.hpp"
#include "daemon/guest/delivery_ledger.hpp"
#include "daemon/guest/guest_state_machine.hpp"
#include "daemon/guest/item_digest.hpp"
#include "daemon/guest/provisioning.hpp"

namespace stereos::daemon {

struct provisioning_report {
    std::string state = "none";  // none | pending | running | done | failed | needs_values
    std::string step;            // the failed (or running) step
    std::string error;           // why it failed; secrets scrubbed
    std::size_t sent = 0;        // items sent by the last run
    std::size_t already = 0;     // items the last run found delivered in this guest run
};

class state_store;

// Where a guest's delivery ledger lives and how its items are digested. Shared by the guests.
struct ledger_services {
    state_store* store = nullptr;  // null: the ledger is kept in memory only
    std::shared_ptr<const item_digest> digest;
    std::string boot_id;  // this host boot's
};

// What an API mount would do to the guest's current run.
enum class mount_plan { send, already_mounted, conflict };

class provisioning_runner {
  public:
    // Sends one item with its deadline and returns the guest's answer (the owner also feeds the
    // answer to its state machine).
    using send_function = std::function<boost::asio::awaitable<link::request_result>(
        const protocol::host_message&, std::chrono::steady_clock::time_point deadline)>;

    // `definition` and `machine` are the owner's and outlive this.
    provisioning_runner(const config::guest_config& definition, guest_state_machine& machine,
                        event_bus& bus, ledger_services services, send_function send);

    // What this guest's current run was given before the daemon (re)started: the ledger from
    // the store; a run of this host boot is remembered by the state machine.
    void load_ledger();

    // Sends whatever the current run lacks; marks the ticket (if any) provisioned or failed.
    // Returns false when an item failed.
    boost::asio::awaitable<bool> run(std::optional<provisioning_ticket> ticket);
    // Items to send or to forget (a runtime guest given nothing needs no run).
    bool has_anything_to_provision() const;
    // No item is sent after this; a run in progress ends as failed ("stopped").
    void stop() noexcept { stopping_ = true; }

    // The state machine's news about the run.
    void on_new_run();
    void on_resumed_run();
    // The run's reckoned start and last sign of life, at each answer (no allocation); written
    // when the start moved by more than 1.5 s.
    void on_reckoning(bool new_run);
    // At a clean stop: the latest sign of life, for telling the next daemon's first answer
    // from a restart.
    void on_stopped();
    // A reload changed the definition (the provisioning or not).
    void on_definition_changed(bool provisioning_changed, bool run_in_progress);

    // API deliveries outside the provisioning, so the ledger knows what the run has.
    mount_plan plan_mount(const protocol::mount_payload& mount) const;
    boost::system::result<protocol::host_message, std::string> ssh_key_request(
        const std::string& user, const std::string& public_key) const;
    void record_api_delivery(const protocol::host_message& sent, std::string_view added_public_key);
    void begin_api_mount(const protocol::mount_payload& mount) {
        mounts_in_flight_.insert(mount_item_key(mount.guest_path));
    }
    void end_api_mount(const protocol::mount_payload& mount) {
        mounts_in_flight_.erase(mount_item_key(mount.guest_path));
    }

    // Values a restored runtime guest lacks: nothing runs until values_supplied().
    void hold_for_values(std::vector<std::string> missing);
    // The owner's definition has new provisioning; releases a hold.
    void values_supplied(bool run_in_progress);
    const std::vector<std::string>& missing_values() const noexcept { return missing_values_; }

    const provisioning_report& report() const noexcept { return report_; }
    const delivery_ledger& ledger() const noexcept { return ledger_; }
    // {"state", "step", "error", "missing", "message", "sent", "already"} for status.
    boost::json::object report_status(const std::string& guest_name) const;
    // {"provision": {...values redacted}, "missing": [...]}
    boost::json::object redacted_provision() const;
    // {"run": {...} | null, "items": [...]}
    boost::json::object ledger_status() const;

  private:
    struct send_plan {
        std::vector<provisioning_item> items;
        std::vector<std::size_t> to_send;  // indices into items: missing or changed in the run
        std::size_t already = 0;           // delivered in this run with the same content
        std::string failed_step, failure;  // an item that cannot be built (a file unreadable)
        bool forgot = false;               // items no longer provisioned left the ledger
    };
    // What the run lacks, by the digests of what the items hold now.
    send_plan make_plan();
    // The provisioning's item of that ledger key as the definition and ledger say now.
    std::optional<provisioning_item> find_item(std::string_view key) const;
    std::string digest_of(const std::string& key, const protocol::host_message& message,
                          delivery_origin origin = delivery_origin::provisioning) const;
    std::optional<guest_run> current_run() const;
    void save_ledger();
    void publish();
    const std::string& name() const noexcept { return definition_.name; }

    const config::guest_config& definition_;
    guest_state_machine& machine_;
    event_bus& bus_;
    ledger_services services_;
    send_function send_;
    provisioning_report report_;
    delivery_ledger ledger_;
    bool ledger_writable_ = true;  // false: its file exists but could not be read
    bool ledger_on_disk_ = false;  // a file exists (loaded or written)
    // The run's reckoned start as last written: saved again once it has moved by 1.5 s.
    std::chrono::steady_clock::time_point saved_started_latest_{};
    std::set<std::string, std::less<>> mounts_in_flight_;  // ledger keys of API mounts in flight
    // The provisioning's items by the last plan: key -> "pending", "changed" or "failed".
    std::map<std::string, std::string, std::less<>> undelivered_;
    std::vector<std::string> missing_values_;  // while not empty, provisioning is held
    bool stopping_ = false;
};

}  // namespace stereos::daemon

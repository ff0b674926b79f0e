// Every guest the daemon manages: the config file's and those added at run time (persisted in
// the state directory). Applies config reloads as a difference, so untouched guests' links are
// never disturbed. Single-threaded, on the daemon's executor.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/json/object.hpp>
#include <boost/system/result.hpp>

#include <stereos/link/retry_budget.hpp>
#include "config/config.hpp"
#include "daemon/event_bus.hpp"
#include "daemon/guest/managed_guest.hpp"
#include "daemon/guest/state_store.hpp"

namespace stereos::daemon {

struct registry_error {
    enum class kind { bad_request, forbidden, exists, not_found, config_guest, persist_failed };
    kind code;
    std::string message;
};
[[noreturn]] void throw_exception_from_error(const registry_error& e,
                                             const boost::source_location& location);

// Why a runtime guest's definition was refused. `forbidden`: it names host files or credentials
// and the caller may not.
struct definition_error {
    std::string message;
    bool forbidden = false;
};

// Who is asking, which decides what a runtime guest's provisioning may name.
enum class provision_caller {
    host_trusted,  // root or the daemon's user (or the state directory they wrote)
    values_only,   // anyone else: values in the request, no host files or credentials
};

// Builds and validates a runtime guest's definition by the config file's rules
// (config::read_runtime_guest), using the daemon's timeouts as defaults. `provision` has the shape
// of a [guest.provision] table, where values (a secret's `value`, the jcard.toml as `config`) are
// allowed too.
boost::system::result<config::guest_config, definition_error> runtime_guest_definition(
    const std::string& name, const std::string& endpoint, const boost::json::object& provision,
    const config::daemon_settings& defaults, provision_caller caller);

// A validated provision object split into what may be persisted and the values that stay in
// memory (or are persisted sealed), named as in runtime_guest_record::withheld_values.
struct provision_split {
    boost::json::object persisted;
    std::vector<std::string> withheld_values;
    // Per withheld slot, what is sealed for it: the JSON text of the value as the provision
    // object holds it (the jcard.toml string, or the whole secret object). Wiped when destroyed.
    std::vector<std::pair<std::string, std::string>> values;

    provision_split() = default;
    provision_split(provision_split&&) = default;  // moves, so no unwiped copy is left behind
    provision_split& operator=(provision_split&&) = default;
    ~provision_split();
};
provision_split split_out_values(const boost::json::object& provision);

// A guest connection passed across a daemon restart, and the endpoint it was made to.
struct adoptable_connection {
    std::string endpoint;  // transport::to_string of the endpoint
    link::handed_over_connection connection;
};
using adoptable_connections = std::map<std::string, adoptable_connection, std::less<>>;

class guest_registry {
  public:
    // `at_rest`: the key that seals runtime guests' values in the state directory, or none
    // (values in memory only).
    guest_registry(boost::asio::any_io_executor executor, event_bus& bus, state_store& store,
                   values_at_rest at_rest = {});

    // Starts the config's guests and the persisted runtime guests. A runtime guest whose name
    // the config now uses is kept on disk but not started (reported in the returned messages).
    // Its sealed values that open are used as if given again; the others leave it needs_values.
    // Throws std::runtime_error when the state file exists but cannot be read: starting without
    // the guests it holds would lose them.
    std::vector<std::string> start(const config::config& initial);

    // Reload: starts added guests, stops removed ones, restarts changed ones. The caller has
    // validated `next`; a name clash with a runtime guest rejects the whole reload (returned).
    boost::asio::awaitable<std::optional<std::string>> async_apply(const config::config& next);

    boost::system::result<std::shared_ptr<managed_guest>, registry_error> add_runtime(
        const std::string& name, const std::string& endpoint, const boost::json::object& provision,
        provision_caller caller);
    // Replaces a runtime guest's provisioning (values again after a restart, or anything new),
    // persisted without its values. The caller decides when it runs.
    boost::system::result<std::shared_ptr<managed_guest>, registry_error> replace_provision(
        const std::string& name, const boost::json::object& provision, provision_caller caller);
    // Supplies values of a runtime guest's provisioning (the jcard.toml given as `config`, a
    // secret's `value`) without touching the rest: `values` is {"config"?: text, "secrets"?:
    // [{name, value, mode?}]}, each naming one of the values its record withholds. Values held in
    // memory and not given again are kept. The record holds no value; with a key, the values the
    // guest now holds are sealed again.
    boost::system::result<std::shared_ptr<managed_guest>, registry_error> supply_values(
        const std::string& name, const boost::json::object& values);
    boost::asio::awaitable<boost::system::result<void, registry_error>> async_remove_runtime(
        const std::string& name);

    std::shared_ptr<managed_guest> find(std::string_view name) const;
    // A persisted runtime guest whose record failed validation at start: not managed, shown in
    // state `invalid` with the reason; it can be removed, or its provisioning replaced.
    std::optional<boost::json::object> invalid_status(std::string_view name) const;
    std::vector<boost::json::object> invalid_statuses() const;
    // In name order.
    std::vector<std::shared_ptr<managed_guest>> all() const;
    // Visits every guest in name order without copying the list (cheap at 10k guests).
    template <class Visitor>
    void for_each(Visitor&& visit) const {
        for (const auto& [name, guest] : guests_)
            visit(*guest);
    }
    std::size_t size() const noexcept { return guests_.size(); }

    // {"mode": "sealed", "key_id"} or {"mode": "memory", "reason"}: how runtime guests' values
    // are kept across restarts.
    boost::json::object values_at_rest_status() const;

    boost::asio::awaitable<void> async_stop_all();

    // Before start(): connections the previous daemon process handed over, by guest name.
    // start() resumes each guest still defined with the same endpoint on its connection; the
    // others are closed, and said so in start()'s messages.
    void offer_connections(adoptable_connections connections) { offered_ = std::move(connections); }
    // Stops every guest as async_stop_all() does, but hands each live connection on (see
    // managed_guest::async_hand_over): returns those that could be.
    boost::asio::awaitable<adoptable_connections> async_hand_over_all(
        std::chrono::steady_clock::time_point until);

  private:
    std::shared_ptr<managed_guest> launch(config::guest_config definition, guest_source source,
                                          std::vector<std::string> missing_values = {});
    std::optional<std::string> persist();
    // What a record keeps of these values: sealed with the daemon's key for `record` as it is
    // now (its endpoint and trust bound in), or nothing without a key (older sealed values must
    // not outlive the values that replaced them).
    sealed_values seal_values(const runtime_guest_record& record,
                              const provision_split& split) const;
    // A persisted record's provision object with its sealed values that open; the slots that do
    // not open are added to `missing`, and one line per guest says why.
    boost::json::object restore_values(const runtime_guest_record& record,
                                       std::vector<std::string>& missing) const;
    // Validates `provision` for the record's guest, then stores it in the record without its
    // values and persists; on any failure the record is as it was.
    boost::system::result<config::guest_config, registry_error> rewrite_record(
        runtime_guest_record& record, const boost::json::object& provision,
        provision_caller caller);
    boost::system::result<std::shared_ptr<managed_guest>, registry_error> replace_invalid(
        const std::string& name, const boost::json::object& provision, provision_caller caller);

    boost::asio::any_io_executor executor_;
    event_bus& bus_;
    state_store& store_;
    values_at_rest at_rest_;
    config::config config_;
    std::map<std::string, std::shared_ptr<managed_guest>, std::less<>> guests_;
    std::vector<runtime_guest_record> runtime_records_;
    std::map<std::string, std::string, std::less<>> invalid_;  // name -> why it was refused
    adoptable_connections offered_;  // by offer_connections(), until start() takes them
    // Fast reconnect attempts per second across all guests: a host-wide outage of thousands of
    // guests retries at this rate in all, not 10/s each.
    std::shared_ptr<link::retry_budget> fast_retry_budget_ =
        std::make_shared<link::retry_budget>(1000.0);
    // Filled by start(): the guests' ledgers are kept by store_ (unless its key is unusable).
    ledger_services ledger_;
};

}  // namespace stereos::daemon

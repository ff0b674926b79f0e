// One guest as the daemon manages it: its link, its state machine, health polling and
// provisioning, with every change logged and published on the event bus. Runs on the daemon's
// single executor.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/json/object.hpp>

#include "config/config.hpp"
#include "daemon/event_bus.hpp"
#include "daemon/link/guest_link.hpp"
#include "daemon/guest_state_machine.hpp"
#include "daemon/log_throttle.hpp"

namespace stereos::daemon {

enum class guest_source { config, runtime };
std::string_view to_string(guest_source source) noexcept;

struct provisioning_report {
    std::string state = "none";  // none | pending | running | done | failed | needs_values
    std::string step;            // the failed (or running) step
    std::string error;           // why it failed; secrets scrubbed
};

class managed_guest : public std::enable_shared_from_this<managed_guest> {
  public:
    // `fast_retry_budget`: shared by the daemon's guests (see retry_budget.hpp); may be null.
    static std::shared_ptr<managed_guest> create(
        const boost::asio::any_io_executor& executor, config::guest_config definition,
        guest_source source, event_bus& bus,
        std::shared_ptr<retry_budget> fast_retry_budget = nullptr);

    void start();
    // Stops polling, provisioning and the link; never sends the guest anything. begin_stop()
    // only starts it, so many guests can stop at once.
    void begin_stop();
    boost::asio::awaitable<void> async_stop();

    // A request on behalf of a client; the outcome also feeds the state machine (timeouts,
    // health replies, shutdown).
    boost::asio::awaitable<request_result> request(protocol::host_message message);

    // "The VM just started": reconnect at once and retry fast (guest_link::reconnect_now).
    void reconnect();

    // Runs the provisioning sequence now, whatever the boot; returns the report at the end.
    // While values are missing it runs nothing and reports needs_values.
    boost::asio::awaitable<provisioning_report> provision_now();

    // A runtime guest restored without the values it was given (they are kept in memory only):
    // nothing is provisioned until replace_provision() supplies them. `missing` names them,
    // e.g. "secret API_KEY".
    void hold_provisioning_for_values(std::vector<std::string> missing);
    // New provisioning for later runs (a run in progress finishes with what it had); releases
    // a hold. Starts nothing itself: it runs at the next boot, or now through provision_now().
    void replace_provision(config::provision_config provision);

    // {name, endpoint, source, state, reason, since, link, uptime_seconds, agents, provision,
    // transitions}
    boost::json::object status() const;
    boost::json::object snapshot_event_fields() const;

    const std::string& name() const noexcept { return definition_.name; }
    const config::guest_config& definition() const noexcept { return definition_; }
    guest_source source() const noexcept { return source_; }
    const guest_state_machine& machine() const noexcept { return machine_; }
    const guest_link& link() const noexcept { return *link_; }
    const provisioning_report& provisioning() const noexcept { return report_; }

    managed_guest(boost::asio::any_io_executor executor, config::guest_config definition,
                  guest_source source, event_bus& bus);

  private:
    void on_link_event(const link_event& event);
    void feed(const guest_event& event);
    void maybe_start_provisioning();
    boost::asio::awaitable<void> health_loop();
    boost::asio::awaitable<bool> run_provisioning(std::optional<provisioning_ticket> ticket);
    void publish_provisioning();
    // `asked_at`: when the request was made, bounding when the guest answered (guest_events).
    void note_reply(const protocol::host_message& sent, const request_result& result,
                    std::chrono::steady_clock::time_point asked_at);

    boost::asio::any_io_executor executor_;
    config::guest_config definition_;
    guest_source source_;
    event_bus& bus_;
    std::shared_ptr<guest_link> link_;
    guest_state_machine machine_;
    provisioning_report report_;
    std::vector<std::string> missing_values_;  // while not empty, provisioning is held
    bool provisioning_running_ = false;
    bool stopping_ = false;
    bool handshake_polled_ = false;  // a new link's handshake stood in for a health poll
    unsigned background_tasks_ = 0;  // health loop and provisioning runs still alive
    boost::asio::steady_timer health_timer_;
    boost::asio::steady_timer tasks_done_;
    log_throttle connect_errors_;
    log_throttle unknown_messages_;
    log_throttle lifecycle_lines_;  // a guest repeating one event must not flood the journal
};

}  // namespace stereos::daemon

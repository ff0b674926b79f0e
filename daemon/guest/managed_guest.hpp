// One guest as the daemon manages it: its link, its state machine, health polling and
// provisioning, with every change logged and published on the event bus. Runs on the daemon's
// single executor.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associator.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/json/object.hpp>

#include <stereos/link/guest_link.hpp>
#include "config/config.hpp"
#include "daemon/event_bus.hpp"
#include "daemon/guest/guest_state_machine.hpp"
#include "daemon/guest/provisioning_runner.hpp"
#include "daemon/log_throttle.hpp"

namespace stereos::daemon {

enum class guest_source { config, runtime };
std::string_view to_string(guest_source source) noexcept;

class managed_guest;
namespace managed_guest_detail {
template <class Handler>
struct noted_reply;
}  // namespace managed_guest_detail

class managed_guest : public std::enable_shared_from_this<managed_guest> {
  public:
    // `fast_retry_budget`: shared by the daemon's guests (see retry_budget.hpp); may be null.
    // `ledger`: where the delivery ledger is kept; by default in memory only, with a random
    // digest key.
    static std::shared_ptr<managed_guest> create(
        const boost::asio::any_io_executor& executor, config::guest_config definition,
        guest_source source, event_bus& bus,
        std::shared_ptr<link::retry_budget> fast_retry_budget = nullptr,
        ledger_services ledger = {});

    void start();
    // Starts on the previous daemon process's connection to this guest (see
    // guest_link::start(handed_over_connection)): the same run of the guest goes on.
    void start(link::handed_over_connection adopted);
    // Stops like async_stop(), but hands the live connection on instead of closing it (a
    // restart through systemd's fd store): the link first refuses new requests, so polls and
    // provisioning start nothing more, and the replies owed get until `until`. nullopt: the
    // connection could not be handed over and was closed.
    boost::asio::awaitable<std::optional<link::handed_over_connection>> async_hand_over(
        std::chrono::steady_clock::time_point until);
    // Stops polling, provisioning and the link; never sends the guest anything. begin_stop()
    // only starts it, so many guests can stop at once.
    void begin_stop();
    boost::asio::awaitable<void> async_stop();

    // A request on behalf of a client; completes with (error, reply) as guest_link::async_send
    // does, by the link's request deadline: cancelling it through the token's cancellation slot
    // withdraws it (operation_aborted). The outcome also feeds the state machine (health
    // replies, shutdown). No coroutine of its own, and `message` is not copied: it is read only
    // while the operation starts.
    template <class CompletionToken>
    auto async_request(const protocol::host_message& message, CompletionToken&& token) {
        return boost::asio::async_initiate<CompletionToken, link::guest_link::reply_signature>(
            [this](auto handler, const protocol::host_message* sent) {
                using noted = managed_guest_detail::noted_reply<std::decay_t<decltype(handler)>>;
                const bool shutdown = note_request(*sent);
                link_->async_send(*sent, link_->default_deadline(),
                                  noted{shared_from_this(), shutdown,
                                        std::chrono::steady_clock::now(), std::move(handler)});
            },
            token, &message);
    }

    // "The VM just started": reconnect at once and retry fast (guest_link::reconnect_now).
    void reconnect();

    // Delivers now whatever of the provisioning the current run lacks (missing or changed items,
    // by the ledger), whatever the boot; returns the report at the end. While values are missing
    // it runs nothing and reports needs_values.
    boost::asio::awaitable<provisioning_report> provision_now();

    // A reload's new definition for the same endpoint: new timings apply to the live link (no
    // reconnect), and the provisioning is compared with the ledger, so that only changed or
    // added items are sent, and removed ones are forgotten.
    void update_definition(config::guest_config definition);

    // API deliveries outside the provisioning, so the ledger knows what the run has.
    mount_plan plan_mount(const protocol::mount_payload& mount) const {
        return provisioning_.plan_mount(mount);
    }
    // The inject_ssh_key that adds `public_key` for `user` without losing the user's other keys
    // (stereosd rewrites the whole file): the configured keys, the API's earlier ones and this.
    boost::system::result<protocol::host_message, std::string> ssh_key_request(
        const std::string& user, const std::string& public_key) const {
        return provisioning_.ssh_key_request(user, public_key);
    }
    // After the guest acked an API request: recorded in the ledger (an added key is kept).
    void record_api_delivery(const protocol::host_message& sent,
                             std::string_view added_public_key = {}) {
        provisioning_.record_api_delivery(sent, added_public_key);
    }
    // An API mount being sent: plan_mount() answers conflict for its path meanwhile, so two
    // concurrent identical requests cannot both reach the guest (stereosd would stack them).
    void begin_api_mount(const protocol::mount_payload& mount) {
        provisioning_.begin_api_mount(mount);
    }
    void end_api_mount(const protocol::mount_payload& mount) { provisioning_.end_api_mount(mount); }
    const delivery_ledger& ledger() const noexcept { return provisioning_.ledger(); }

    // A runtime guest restored without the values it was given (they are kept in memory only):
    // nothing is provisioned until replace_provision() supplies them. `missing` names them,
    // e.g. "secret API_KEY".
    void hold_provisioning_for_values(std::vector<std::string> missing) {
        provisioning_.hold_for_values(std::move(missing));
    }
    // New provisioning for later runs (a run in progress finishes with what it had); releases
    // a hold. Starts nothing itself: it runs at the next boot, or now through provision_now().
    void replace_provision(config::provision_config provision);
    // What hold_provisioning_for_values() still waits for (empty: every value is in memory).
    const std::vector<std::string>& missing_values() const noexcept {
        return provisioning_.missing_values();
    }
    // The provisioning as the daemon holds it, values replaced by a redaction marker, and the
    // values still missing: {"provision": {...}, "missing": [...]}.
    boost::json::object redacted_provision() const { return provisioning_.redacted_provision(); }

    // {name, endpoint, source, state, reason, since, link, uptime_seconds, agents, provision,
    // transitions}
    boost::json::object status() const;
    boost::json::object snapshot_event_fields() const;

    const std::string& name() const noexcept { return definition_.name; }
    const config::guest_config& definition() const noexcept { return definition_; }
    guest_source source() const noexcept { return source_; }
    const guest_state_machine& machine() const noexcept { return machine_; }
    const link::guest_link& link() const noexcept { return *link_; }
    const provisioning_report& provisioning() const noexcept { return provisioning_.report(); }

    managed_guest(boost::asio::any_io_executor executor, config::guest_config definition,
                  guest_source source, event_bus& bus, ledger_services ledger);

  private:
    template <class Handler>
    friend struct managed_guest_detail::noted_reply;

    void start_health_loop();
    void on_link_event(const link::link_event& event);
    void feed(const guest_event& event);
    // What an event did: the ledger's reckoning (`heard_health`: a health answer or a new link
    // brought the guest's uptime), the transition's log line and event, provisioning.
    void after_event(const event_result& result, bool heard_health);
    void maybe_start_provisioning();
    boost::asio::awaitable<void> health_loop();
    // Provisioning is compared with the ledger again (when the guest is up in a run).
    void recheck_provisioning();
    // Wakes every waiter of tasks_done_; they look again at what they wait for.
    void wake_waiters();
    // The provisioning runner's way to the guest: through the link, the answer noted.
    boost::asio::awaitable<link::request_result> send_item(
        const protocol::host_message& item, std::chrono::steady_clock::time_point deadline);
    // A request's outcome fed to the state machine (`reply` is empty on error); `asked_at`: when
    // the request was made, bounding when the guest answered (guest_events).
    void note_outcome(bool sent_shutdown, const boost::system::error_code& error,
                      const protocol::guest_message& reply,
                      std::chrono::steady_clock::time_point asked_at);
    // Before a client's request goes out: a shutdown is logged and fed; true for a shutdown.
    bool note_request(const protocol::host_message& message);

    boost::asio::any_io_executor executor_;
    config::guest_config definition_;
    guest_source source_;
    event_bus& bus_;
    std::shared_ptr<link::guest_link> link_;
    guest_state_machine machine_;
    provisioning_runner provisioning_;  // after definition_ and machine_, which it refers to
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

namespace managed_guest_detail {

// A client's request completed: the guest notes the outcome, then the client's handler runs.
// The handler's executor, allocator and cancellation slot are this one's (the associator
// below), so the client's cancellation reaches the link.
template <class Handler>
struct noted_reply {
    std::shared_ptr<managed_guest> guest;
    bool sent_shutdown;
    std::chrono::steady_clock::time_point asked_at;
    Handler handler;

    void operator()(boost::system::error_code error, protocol::guest_message reply) {
        guest->note_outcome(sent_shutdown, error, reply, asked_at);
        std::move(handler)(error, std::move(reply));
    }
};

}  // namespace managed_guest_detail

}  // namespace stereos::daemon

template <template <typename, typename> class Associator, typename Handler,
          typename DefaultCandidate>
struct boost::asio::associator<
    Associator, stereos::daemon::managed_guest_detail::noted_reply<Handler>, DefaultCandidate>
    : Associator<Handler, DefaultCandidate> {
    static typename Associator<Handler, DefaultCandidate>::type get(
        const stereos::daemon::managed_guest_detail::noted_reply<Handler>& h) noexcept {
        return Associator<Handler, DefaultCandidate>::get(h.handler);
    }
    static auto get(const stereos::daemon::managed_guest_detail::noted_reply<Handler>& h,
                    const DefaultCandidate& c) noexcept
        -> decltype(Associator<Handler, DefaultCandidate>::get(h.handler, c)) {
        return Associator<Handler, DefaultCandidate>::get(h.handler, c);
    }
};

// What one run of a guest's stereosd has been given: the run's identity and one entry per
// provisioning item (the config, each secret, each user's keys, each mount) with a keyed digest
// of what was sent, never the value. Persisted per guest in the state directory, so a daemon
// restart re-sends nothing to a run that already has it, and a reload sends only what changed.
// Plain data, no I/O: the state store reads and writes it as JSON.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/json/object.hpp>
#include <boost/system/result.hpp>

namespace stereos::daemon {

// One run of stereosd, as the host sees it: the host boot it was seen in (a host reboot
// restarts every guest) and when it started, on the host's monotonic clock (CLOCK_MONOTONIC is
// shared by every process of one host boot, so a restarted daemon can compare it).
struct guest_run {
    std::string boot_id;  // /proc/sys/kernel/random/boot_id
    std::chrono::steady_clock::time_point started_earliest{};
    std::chrono::steady_clock::time_point started_latest{};
    // The last time the run was heard from: a new stereosd can only start after it.
    std::chrono::steady_clock::time_point last_heard{};
    bool operator==(const guest_run&) const = default;
};

enum class delivery_origin { provisioning, api };
std::string_view to_string(delivery_origin origin) noexcept;

struct ledger_item {
    std::string key;     // "config", "ssh_keys admin", "secret API_KEY", "mount /work"
    std::string digest;  // hex, keyed (see item_digest): equal digests mean the same content
    std::chrono::system_clock::time_point delivered_at{};
    delivery_origin origin = delivery_origin::provisioning;
    bool operator==(const ledger_item&) const = default;
};

// The item keys, one per thing stereosd keeps separately (a user's keys are one file).
std::string config_item_key();
std::string secret_item_key(std::string_view name);
std::string ssh_keys_item_key(std::string_view user);
std::string mount_item_key(std::string_view guest_path);
// A mount's directory however it is spelled: "/work", "/work/" and "//work" are one mount point
// to mount(8). The input rules already refuse "." and ".." components.
std::string mount_point(std::string_view guest_path);

class delivery_ledger {
  public:
    const std::optional<guest_run>& run() const noexcept { return run_; }
    // A new run: nothing is delivered in it yet.
    void start_run(guest_run run);
    // The same run, better known (a newer start-time reckoning, a later sign of life).
    void update_run(const guest_run& run);
    // The same, for the run already recorded (no-op without one): allocates nothing.
    void update_reckoning(std::chrono::steady_clock::time_point started_earliest,
                          std::chrono::steady_clock::time_point started_latest,
                          std::chrono::steady_clock::time_point last_heard) noexcept;

    const std::vector<ledger_item>& items() const noexcept { return items_; }
    const ledger_item* find(std::string_view key) const noexcept;
    // Whether `key` was delivered in this run with exactly this content.
    bool delivered(std::string_view key, std::string_view digest) const noexcept;
    // Replaces the entry of the same key, if any.
    void record(ledger_item item);
    // Forgets an item the guest is no longer meant to have (stereosd keeps it until it reboots:
    // the protocol has no removal). True if it was there.
    bool forget(std::string_view key);

    // Public keys added through the API in this run, per user: every later key delivery for
    // that user includes them, since stereosd rewrites the whole file. Public keys are not
    // secret, so they are kept as they are.
    const std::map<std::string, std::vector<std::string>, std::less<>>& api_keys() const noexcept {
        return api_keys_;
    }
    void add_api_key(const std::string& user, const std::string& public_key);

    bool operator==(const delivery_ledger&) const = default;

    boost::json::object to_json() const;
    // The error names what is wrong with the document.
    static boost::system::result<delivery_ledger, std::string> from_json(
        const boost::json::value& document);

  private:
    std::optional<guest_run> run_;
    std::vector<ledger_item> items_;  // in delivery order
    std::map<std::string, std::vector<std::string>, std::less<>> api_keys_;
};

}  // namespace stereos::daemon

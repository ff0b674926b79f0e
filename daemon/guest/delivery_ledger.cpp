#include "daemon/guest/delivery_ledger.hpp"

#include <algorithm>

#include <boost/json/value.hpp>

namespace stereos::daemon {

namespace json = boost::json;

namespace {
constexpr int format_version = 1;

std::int64_t to_ns(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
std::int64_t to_ns(std::chrono::system_clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
template <class TimePoint>
TimePoint from_ns(std::int64_t ns) {
    return TimePoint(
        std::chrono::duration_cast<typename TimePoint::duration>(std::chrono::nanoseconds(ns)));
}

const json::string* string_at(const json::object& o, std::string_view key) {
    const auto* v = o.if_contains(key);
    return v && v->is_string() ? &v->get_string() : nullptr;
}
std::optional<std::int64_t> integer_at(const json::object& o, std::string_view key) {
    const auto* v = o.if_contains(key);
    if (v && v->is_int64())
        return v->get_int64();
    return std::nullopt;
}
}  // namespace

std::string_view to_string(delivery_origin origin) noexcept {
    return origin == delivery_origin::api ? "api" : "provisioning";
}

std::string config_item_key() {
    return "config";
}
std::string secret_item_key(std::string_view name) {
    return "secret " + std::string(name);
}
std::string ssh_keys_item_key(std::string_view user) {
    return "ssh_keys " + std::string(user);
}
std::string mount_point(std::string_view guest_path) {
    std::string path;
    for (const char c : guest_path) {
        if (c != '/' || path.empty() || path.back() != '/')
            path += c;
    }
    if (path.size() > 1 && path.back() == '/')
        path.pop_back();
    return path;
}
std::string mount_item_key(std::string_view guest_path) {
    return "mount " + mount_point(guest_path);
}

void delivery_ledger::start_run(guest_run run) {
    run_ = std::move(run);
    items_.clear();
    api_keys_.clear();
}

void delivery_ledger::update_run(const guest_run& run) {
    if (!run_) {
        run_ = run;
        return;
    }
    run_->boot_id = run.boot_id;
    run_->started_earliest = run.started_earliest;
    run_->started_latest = run.started_latest;
    run_->last_heard = std::max(run_->last_heard, run.last_heard);
}

void delivery_ledger::update_reckoning(std::chrono::steady_clock::time_point started_earliest,
                                       std::chrono::steady_clock::time_point started_latest,
                                       std::chrono::steady_clock::time_point last_heard) noexcept {
    if (!run_)
        return;
    run_->started_earliest = started_earliest;
    run_->started_latest = started_latest;
    run_->last_heard = std::max(run_->last_heard, last_heard);
}

const ledger_item* delivery_ledger::find(std::string_view key) const noexcept {
    auto it = std::find_if(items_.begin(), items_.end(),
                           [&](const ledger_item& item) { return item.key == key; });
    return it == items_.end() ? nullptr : &*it;
}

bool delivery_ledger::delivered(std::string_view key, std::string_view digest) const noexcept {
    const auto* item = find(key);
    return item && item->digest == digest;
}

void delivery_ledger::record(ledger_item item) {
    forget(item.key);
    items_.push_back(std::move(item));
}

bool delivery_ledger::forget(std::string_view key) {
    return std::erase_if(items_, [&](const ledger_item& item) { return item.key == key; }) > 0;
}

void delivery_ledger::add_api_key(const std::string& user, const std::string& public_key) {
    auto& keys = api_keys_[user];
    if (std::find(keys.begin(), keys.end(), public_key) == keys.end())
        keys.push_back(public_key);
}

json::object delivery_ledger::to_json() const {
    json::object out{{"version", format_version}};
    if (run_) {
        out["run"] = json::object{{"boot_id", run_->boot_id},
                                  {"started_earliest_ns", to_ns(run_->started_earliest)},
                                  {"started_latest_ns", to_ns(run_->started_latest)},
                                  {"last_heard_ns", to_ns(run_->last_heard)}};
    }
    json::array items;
    for (const auto& item : items_) {
        items.push_back(json::object{{"key", item.key},
                                     {"digest", item.digest},
                                     {"delivered_at_ns", to_ns(item.delivered_at)},
                                     {"origin", to_string(item.origin)}});
    }
    out["items"] = std::move(items);
    if (!api_keys_.empty()) {
        json::object keys;
        for (const auto& [user, list] : api_keys_) {
            json::array lines;
            for (const auto& key : list)
                lines.emplace_back(key);
            keys[user] = std::move(lines);
        }
        out["api_keys"] = std::move(keys);
    }
    return out;
}

boost::system::result<delivery_ledger, std::string> delivery_ledger::from_json(
    const json::value& document) {
    using result = boost::system::result<delivery_ledger, std::string>;
    auto fail = [](std::string why) { return result(boost::system::in_place_error, why); };
    if (!document.is_object())
        return fail("top level is not an object");
    const auto& top = document.get_object();
    const auto version = integer_at(top, "version");
    if (!version || *version != format_version)
        return fail("missing or unsupported \"version\" (expected 1)");
    delivery_ledger ledger;
    if (const auto* run = top.if_contains("run")) {
        const auto* o = run->if_object();
        if (!o)
            return fail("\"run\" is not an object");
        const auto* boot_id = string_at(*o, "boot_id");
        const auto earliest = integer_at(*o, "started_earliest_ns");
        const auto latest = integer_at(*o, "started_latest_ns");
        const auto heard = integer_at(*o, "last_heard_ns");
        if (!boot_id || !earliest || !latest || !heard)
            return fail(
                "\"run\" lacks boot_id, started_earliest_ns, started_latest_ns or "
                "last_heard_ns");
        using steady = std::chrono::steady_clock::time_point;
        ledger.run_ = guest_run{std::string(*boot_id), from_ns<steady>(*earliest),
                                from_ns<steady>(*latest), from_ns<steady>(*heard)};
    }
    const auto* items = top.if_contains("items");
    if (!items || !items->is_array())
        return fail("\"items\" is missing or not an array");
    for (std::size_t i = 0; i < items->get_array().size(); ++i) {
        const auto* o = items->get_array()[i].if_object();
        const auto where = "items[" + std::to_string(i) + "]";
        if (!o)
            return fail(where + " is not an object");
        const auto* key = string_at(*o, "key");
        const auto* digest = string_at(*o, "digest");
        const auto at = integer_at(*o, "delivered_at_ns");
        const auto* origin = string_at(*o, "origin");
        if (!key || !digest || !at || !origin)
            return fail(where + " lacks key, digest, delivered_at_ns or origin");
        ledger.items_.push_back(
            {std::string(*key), std::string(*digest),
             from_ns<std::chrono::system_clock::time_point>(*at),
             *origin == "api" ? delivery_origin::api : delivery_origin::provisioning});
    }
    if (const auto* keys = top.if_contains("api_keys")) {
        const auto* o = keys->if_object();
        if (!o)
            return fail("\"api_keys\" is not an object");
        for (const auto& [user, list] : *o) {
            if (!list.is_array())
                return fail("\"api_keys\"." + std::string(user) + " is not an array");
            for (const auto& key : list.get_array()) {
                if (!key.is_string())
                    return fail("\"api_keys\"." + std::string(user) + " holds a non-string");
                ledger.add_api_key(std::string(user), std::string(key.get_string()));
            }
        }
    }
    return ledger;
}

}  // namespace stereos::daemon

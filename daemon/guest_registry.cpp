#include "daemon/guest_registry.hpp"

#include <sstream>

#include <toml++/toml.h>
#include <boost/throw_exception.hpp>

#include "daemon/logging.hpp"

namespace stereos::daemon {

namespace asio = boost::asio;
namespace json = boost::json;

void throw_exception_from_error(const registry_error& e, const boost::source_location& location) {
    boost::throw_exception(std::runtime_error(e.message), location);
}

namespace {

// JSON -> TOML, so a runtime guest's provision object goes through the config validator.
std::optional<std::string> to_toml_value(const json::value& in, const std::string& path,
                                         toml::array& into) {
    switch (in.kind()) {
        case json::kind::string:
            into.push_back(std::string(in.get_string()));
            return std::nullopt;
        case json::kind::bool_:
            into.push_back(in.get_bool());
            return std::nullopt;
        case json::kind::int64:
            into.push_back(in.get_int64());
            return std::nullopt;
        case json::kind::uint64:
            into.push_back(static_cast<std::int64_t>(in.get_uint64()));
            return std::nullopt;
        case json::kind::object: {
            toml::table t;
            for (const auto& kv : in.get_object()) {
                toml::array one;
                if (auto e = to_toml_value(kv.value(), path + "." + std::string(kv.key()), one))
                    return e;
                if (!one.empty())
                    t.insert(std::string_view(kv.key()), std::move(*one.get(0)));
            }
            into.push_back(std::move(t));
            return std::nullopt;
        }
        case json::kind::array: {
            toml::array a;
            for (const auto& v : in.get_array()) {
                if (auto e = to_toml_value(v, path + "[]", a))
                    return e;
            }
            into.push_back(std::move(a));
            return std::nullopt;
        }
        case json::kind::null:
            return std::nullopt;
        case json::kind::double_:
            return path + ": numbers must be integers";
    }
    return std::nullopt;
}

std::string duration_text(std::chrono::milliseconds d) {
    return config::format_duration(d);
}

}  // namespace

boost::system::result<config::guest_config, std::string> runtime_guest_definition(
    const std::string& name, const std::string& endpoint, const json::object& provision,
    const config::daemon_settings& defaults) {
    using result = boost::system::result<config::guest_config, std::string>;
    toml::table root;
    const auto& t = defaults.timeouts;
    root.insert("daemon", toml::table{{"request_timeout", duration_text(t.request_timeout)},
                                      {"connect_timeout", duration_text(t.connect_timeout)},
                                      {"keepalive_interval", duration_text(t.keepalive_interval)},
                                      {"health_interval", duration_text(t.health_interval)},
                                      {"reconnect_max", duration_text(t.reconnect_max)}});
    toml::table guest{{"name", name}, {"endpoint", endpoint}};
    if (!provision.empty()) {
        toml::array holder;
        if (auto e = to_toml_value(json::value(provision), "provision", holder))
            return result(boost::system::in_place_error, *e);
        guest.insert("provision", std::move(*holder.get(0)));
    }
    root.insert("guest", toml::array{std::move(guest)});
    std::ostringstream text;
    text << root;

    auto loaded = config::load_config_text(text.str(), "request");
    if (!loaded) {
        // "request:7: guest[0].provision.mounts[0].fs_type: ..." -> "provision.mounts[0]...".
        std::string message;
        for (auto line : loaded.error().messages) {
            if (auto key = line.find("guest[0]."); key != std::string::npos) {
                line = line.substr(key + 9);
            } else if (auto colon = line.find(": ", 8);
                       line.starts_with("request:") && colon != std::string::npos) {
                line = line.substr(colon + 2);
            }
            if (!message.empty())
                message += "; ";
            message += line;
        }
        return result(boost::system::in_place_error, message);
    }
    return result(boost::system::in_place_value, std::move(loaded->guests.front()));
}

guest_registry::guest_registry(asio::any_io_executor executor, event_bus& bus, state_store& store)
    : executor_(std::move(executor)), bus_(bus), store_(store) {}

std::shared_ptr<managed_guest> guest_registry::launch(config::guest_config definition,
                                                      guest_source source) {
    auto name = definition.name;
    auto guest = managed_guest::create(executor_, std::move(definition), source, bus_);
    guests_[name] = guest;
    guest->start();
    return guest;
}

std::vector<std::string> guest_registry::start(const config::config& initial) {
    std::vector<std::string> problems;
    config_ = initial;
    for (const auto& g : config_.guests)
        launch(g, guest_source::config);

    auto loaded = store_.load();
    if (loaded.problem)
        problems.push_back(*loaded.problem);
    runtime_records_ = std::move(loaded.guests);
    for (const auto& record : runtime_records_) {
        if (guests_.contains(record.name)) {
            problems.push_back("runtime guest \"" + record.name +
                               "\" is not started: the config file defines a guest of that "
                               "name (it stays in " +
                               store_.file().string() + ")");
            continue;
        }
        auto definition = runtime_guest_definition(record.name, record.endpoint, record.provision,
                                                   config_.daemon);
        if (!definition) {
            problems.push_back("runtime guest \"" + record.name +
                               "\" is not started: " + definition.error());
            continue;
        }
        launch(std::move(*definition), guest_source::runtime);
    }
    return problems;
}

asio::awaitable<std::optional<std::string>> guest_registry::async_apply(
    const config::config& next) {
    for (const auto& g : next.guests) {
        auto it = guests_.find(g.name);
        if (it != guests_.end() && it->second->source() == guest_source::runtime) {
            co_return "guest \"" + g.name +
                "\" is defined in the config and was also added at run time; remove one first";
        }
    }
    const auto diff = config::diff_guests(config_, next);
    config_ = next;
    for (const auto& name : diff.removed) {
        if (auto it = guests_.find(name); it != guests_.end()) {
            auto guest = it->second;
            guests_.erase(it);
            log::info("reload: guest removed from the config", {.guest = name});
            co_await guest->async_stop();
        }
    }
    for (const auto& name : diff.changed) {
        if (auto it = guests_.find(name); it != guests_.end()) {
            auto guest = it->second;
            guests_.erase(it);
            log::info("reload: guest changed, restarting its link", {.guest = name});
            co_await guest->async_stop();
        }
        launch(*config_.find_guest(name), guest_source::config);
    }
    for (const auto& name : diff.added)
        launch(*config_.find_guest(name), guest_source::config);
    log::info("reload applied: " + std::to_string(diff.added.size()) + " added, " +
              std::to_string(diff.removed.size()) + " removed, " +
              std::to_string(diff.changed.size()) + " changed, " +
              std::to_string(diff.unchanged.size()) + " unchanged");
    co_return std::nullopt;
}

boost::system::result<std::shared_ptr<managed_guest>, registry_error> guest_registry::add_runtime(
    const std::string& name, const std::string& endpoint, const json::object& provision) {
    using result = boost::system::result<std::shared_ptr<managed_guest>, registry_error>;
    if (auto it = guests_.find(name); it != guests_.end()) {
        const bool from_config = it->second->source() == guest_source::config;
        return result(boost::system::in_place_error,
                      registry_error{registry_error::kind::exists,
                                     "guest \"" + name + "\" already exists" +
                                         (from_config ? " (defined in the config file)" : "")});
    }
    auto definition = runtime_guest_definition(name, endpoint, provision, config_.daemon);
    if (!definition) {
        return result(boost::system::in_place_error,
                      registry_error{registry_error::kind::bad_request, definition.error()});
    }
    runtime_records_.push_back({name, endpoint, provision});
    if (auto error = persist()) {
        runtime_records_.pop_back();
        return result(boost::system::in_place_error,
                      registry_error{registry_error::kind::persist_failed,
                                     "cannot persist the guest: " + *error});
    }
    return result(boost::system::in_place_value,
                  launch(std::move(*definition), guest_source::runtime));
}

asio::awaitable<boost::system::result<void, registry_error>> guest_registry::async_remove_runtime(
    const std::string& name) {
    using result = boost::system::result<void, registry_error>;
    auto it = guests_.find(name);
    if (it == guests_.end()) {
        co_return result(
            boost::system::in_place_error,
            registry_error{registry_error::kind::not_found, "no guest named \"" + name + "\""});
    }
    if (it->second->source() == guest_source::config) {
        co_return result(boost::system::in_place_error,
                         registry_error{registry_error::kind::config_guest,
                                        "guest \"" + name +
                                            "\" is defined in the config file; remove it there "
                                            "and reload"});
    }
    auto kept = runtime_records_;
    std::erase_if(runtime_records_, [&](const runtime_guest_record& r) { return r.name == name; });
    if (auto error = persist()) {
        runtime_records_ = std::move(kept);
        co_return result(boost::system::in_place_error,
                         registry_error{registry_error::kind::persist_failed,
                                        "cannot persist the removal: " + *error});
    }
    auto guest = it->second;
    guests_.erase(it);
    log::info("runtime guest removed", {.guest = name});
    co_await guest->async_stop();
    co_return result();
}

std::optional<std::string> guest_registry::persist() {
    return store_.save(runtime_records_);
}

std::shared_ptr<managed_guest> guest_registry::find(std::string_view name) const {
    auto it = guests_.find(name);
    return it == guests_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<managed_guest>> guest_registry::all() const {
    std::vector<std::shared_ptr<managed_guest>> list;
    list.reserve(guests_.size());
    for (const auto& [name, guest] : guests_)
        list.push_back(guest);
    return list;
}

asio::awaitable<void> guest_registry::async_stop_all() {
    auto guests = std::exchange(guests_, {});
    for (auto& [name, guest] : guests)
        guest->begin_stop();
    for (auto& [name, guest] : guests)
        co_await guest->async_stop();
}

}  // namespace stereos::daemon

#include "daemon/guest/guest_registry.hpp"

#include <algorithm>
#include <fstream>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/throw_exception.hpp>

#include <stereos/transport/endpoint.hpp>
#include <stereos/util/completion_tokens.hpp>

#include "daemon/guest/value_seal.hpp"
#include "daemon/logging.hpp"

namespace stereos::daemon {

namespace asio = boost::asio;
using transport::rethrow_if_failed;
using transport::use_tuple;
namespace json = boost::json;

void throw_exception_from_error(const registry_error& e, const boost::source_location& location) {
    boost::throw_exception(std::runtime_error(e.message), location);
}

namespace {

registry_error refusal(const definition_error& e) {
    return {e.forbidden ? registry_error::kind::forbidden : registry_error::kind::bad_request,
            e.message};
}

}  // namespace

boost::system::result<config::guest_config, definition_error> runtime_guest_definition(
    const std::string& name, const std::string& endpoint, const json::object& provision,
    const config::daemon_settings& defaults, provision_caller caller) {
    using result = boost::system::result<config::guest_config, definition_error>;
    auto read = config::read_runtime_guest(
        name, endpoint, provision, defaults.timeouts,
        {.allow_values = true, .allow_host_references = caller == provision_caller::host_trusted});
    if (!read) {
        std::string message;
        for (const auto& line : read.error().messages) {
            if (!message.empty())
                message += "; ";
            message += line;
        }
        return result(boost::system::in_place_error,
                      definition_error{message, read.error().refused_references});
    }
    return result(boost::system::in_place_value, std::move(*read));
}

provision_split::~provision_split() {
    for (auto& [slot, text] : values)
        wipe(text);
}

provision_split split_out_values(const json::object& provision) {
    provision_split split;
    split.persisted = provision;
    if (const auto* config = split.persisted.if_contains("config")) {
        split.values.emplace_back("config", json::serialize(*config));
        split.persisted.erase("config");
        split.withheld_values.emplace_back("config");
    }
    if (auto* secrets = split.persisted.if_contains("secrets"); secrets && secrets->is_array()) {
        auto& list = secrets->get_array();
        for (auto it = list.begin(); it != list.end();) {
            const auto* secret = it->if_object();
            if (secret && secret->contains("value")) {
                const auto* secret_name = secret->if_contains("name");
                auto slot =
                    "secret " + std::string(secret_name && secret_name->is_string()
                                                ? std::string_view(secret_name->get_string())
                                                : std::string_view("?"));
                split.values.emplace_back(slot, json::serialize(*secret));
                split.withheld_values.push_back(std::move(slot));
                it = list.erase(it);
            } else {
                ++it;
            }
        }
        if (list.empty())
            split.persisted.erase("secrets");
    }
    return split;
}

guest_registry::guest_registry(asio::any_io_executor executor, event_bus& bus, state_store& store,
                               values_at_rest at_rest)
    : executor_(std::move(executor)), bus_(bus), store_(store), at_rest_(std::move(at_rest)) {}

json::object guest_registry::values_at_rest_status() const {
    if (at_rest_.seal)
        return {{"mode", "sealed"}, {"key_id", at_rest_.seal->key_id()}};
    return {{"mode", "memory"}, {"reason", at_rest_.reason}};
}

namespace {
// What a sealed value is bound to besides its slot: the guest, where it is sent, and whether its
// host references are followed. An edit of guests.json that points the guest elsewhere (or
// raises its trust) leaves its values unopenable instead of sending them there.
std::string seal_binding(const runtime_guest_record& record) {
    return record.name + '\n' + record.endpoint + '\n' +
           (record.references_trusted ? "host_trusted" : "values_only");
}
}  // namespace

sealed_values guest_registry::seal_values(const runtime_guest_record& record,
                                          const provision_split& split) const {
    if (!at_rest_.seal || split.values.empty())
        return {};
    return seal_all(*at_rest_.seal, seal_binding(record), split.values);
}

namespace {
// Whether an opened value is one the slot can hold: the jcard.toml text, or the secret object of
// that name with its value.
bool fits_slot(std::string_view slot, const json::value& value) {
    if (slot == "config")
        return value.is_string();
    const auto* secret = value.if_object();
    if (!secret || !slot.starts_with("secret ") || !secret->contains("value"))
        return false;
    const auto* name = secret->if_contains("name");
    return name && name->is_string() && name->get_string() == slot.substr(7);
}
}  // namespace

json::object guest_registry::restore_values(const runtime_guest_record& record,
                                            std::vector<std::string>& missing) const {
    json::object provision = record.provision;
    if (record.withheld_values.empty())
        return provision;
    if (record.sealed.empty()) {
        // Added by a daemon without a key: the values were in its memory only.
        missing = record.withheld_values;
        return provision;
    }
    if (!at_rest_.seal) {
        missing = record.withheld_values;
        log::warning(
            "runtime guest's values are sealed in the state directory, but this daemon "
            "has no key (" +
                at_rest_.reason + "): it needs its values again (needs_values)",
            {.guest = record.name});
        return provision;
    }
    const auto opened = open_all(*at_rest_.seal, seal_binding(record), record.sealed);
    json::array secrets;
    if (const auto* kept = provision.if_contains("secrets"); kept && kept->is_array())
        secrets = kept->get_array();
    // Slots that do not open, by reason, so that another key is said once.
    std::vector<std::pair<std::string, std::string>> problems;
    std::size_t restored = 0;
    for (const auto& slot : record.withheld_values) {
        std::string why;
        if (auto failed = opened.failures.find(slot); failed != opened.failures.end()) {
            why = failed->second;
        } else if (auto found = opened.values.find(slot); found == opened.values.end()) {
            why = "not sealed";
        } else {
            boost::system::error_code ec;
            auto value = json::parse(found->second, ec);
            if (ec || !fits_slot(slot, value)) {
                why = "opens but holds no value of its slot";
            } else if (slot == "config") {
                provision["config"] = std::move(value);
                ++restored;
            } else {
                secrets.push_back(std::move(value));
                ++restored;
            }
        }
        if (why.empty())
            continue;
        missing.push_back(slot);
        auto same = std::find_if(problems.begin(), problems.end(),
                                 [&](const auto& p) { return p.second == why; });
        if (same == problems.end())
            problems.emplace_back(slot, why);
        else
            same->first += ", " + slot;
    }
    if (!secrets.empty())
        provision["secrets"] = std::move(secrets);
    if (!problems.empty()) {
        std::string text;
        for (const auto& [slots, why] : problems)
            text += (text.empty() ? "" : "; ") + slots + ": " + why;
        log::warning(
            "runtime guest's sealed values cannot all be used, it waits for them "
            "(needs_values): " +
                text,
            {.guest = record.name});
    } else {
        log::info("runtime guest's " + std::to_string(restored) + " sealed value" +
                      (restored == 1 ? "" : "s") + " opened",
                  {.guest = record.name});
    }
    return provision;
}

std::shared_ptr<managed_guest> guest_registry::launch(config::guest_config definition,
                                                      guest_source source,
                                                      std::vector<std::string> missing_values) {
    auto name = definition.name;
    auto guest = managed_guest::create(executor_, std::move(definition), source, bus_,
                                       fast_retry_budget_, ledger_);
    if (!missing_values.empty())
        guest->hold_provisioning_for_values(std::move(missing_values));
    guests_[name] = guest;
    if (auto offered = offered_.find(name); offered != offered_.end()) {
        auto handed = std::move(offered->second);
        offered_.erase(offered);
        if (handed.endpoint == transport::to_string(guest->definition().endpoint)) {
            guest->start(std::move(handed.connection));
            return guest;
        }
        log::notice(
            "the connection the previous daemon process handed over is closed: it "
            "was made to " +
                handed.endpoint + ", and the guest's endpoint is now " +
                guest->definition().endpoint_text,
            {.guest = name});
    }
    guest->start();
    return guest;
}

namespace {
std::string read_boot_id() {
    std::ifstream in("/proc/sys/kernel/random/boot_id");
    std::string id;
    std::getline(in, id);
    return id;
}
}  // namespace

std::vector<std::string> guest_registry::start(const config::config& initial) {
    std::vector<std::string> problems;
    config_ = initial;
    auto loaded = store_.load();
    if (loaded.unreadable)
        throw std::runtime_error(*loaded.unreadable);
    if (loaded.problem)
        problems.push_back(*loaded.problem);
    for (auto& warning : loaded.warnings)
        problems.push_back(std::move(warning));

    ledger_.store = &store_;
    ledger_.boot_id = read_boot_id();
    if (ledger_.boot_id.empty())
        problems.push_back(
            "cannot read the host's boot_id: a daemon restart cannot tell this "
            "host boot's guest runs from older ones, and provisions every guest");
    auto digest = item_digest::load_or_create(store_.digest_key_file());
    if (digest) {
        ledger_.digest = std::make_shared<const item_digest>(*digest);
    } else {
        problems.push_back("delivery ledger: " + digest.error() +
                           "; digests hold for this process only, so a restart provisions "
                           "every guest again");
        ledger_.digest = std::make_shared<const item_digest>(item_digest::with_random_key());
        ledger_.store = nullptr;
    }
    for (const auto& g : config_.guests)
        launch(g, guest_source::config);

    runtime_records_ = std::move(loaded.guests);
    for (const auto& record : runtime_records_) {
        if (guests_.contains(record.name)) {
            problems.push_back("runtime guest \"" + record.name +
                               "\" is not started: the config file defines a guest of that "
                               "name (it stays in " +
                               store_.file().string() + ")");
            continue;
        }
        // Host references are followed only if root or the daemon's user supplied them.
        const auto caller = record.references_trusted ? provision_caller::host_trusted
                                                      : provision_caller::values_only;
        std::vector<std::string> missing;
        const auto provision = restore_values(record, missing);
        auto definition = runtime_guest_definition(record.name, record.endpoint, provision,
                                                   config_.daemon, caller);
        if (!definition && missing.size() < record.withheld_values.size()) {
            // The opened values are refused by today's rules: the guest waits for new ones. The
            // refusal is not quoted, as it might quote a value.
            log::warning(
                "runtime guest's sealed values open but are refused by the provisioning "
                "rules: it needs its values again (needs_values)",
                {.guest = record.name});
            missing = record.withheld_values;
            definition = runtime_guest_definition(record.name, record.endpoint, record.provision,
                                                  config_.daemon, caller);
        }
        if (!definition) {
            problems.push_back("runtime guest \"" + record.name +
                               "\" is not started: " + definition.error().message +
                               " (shown in state invalid: replace its provisioning or remove it)");
            invalid_[record.name] = definition.error().message;
            continue;
        }
        launch(std::move(*definition), guest_source::runtime, std::move(missing));
    }
    // Closing them lets those guests see the end of the connection.
    for (const auto& [name, handed] : std::exchange(offered_, {})) {
        problems.push_back("the connection to guest \"" + name +
                           "\" that the previous daemon process handed over is closed: no such "
                           "guest any more");
    }
    return problems;
}

asio::awaitable<std::optional<std::string>> guest_registry::async_apply(
    const config::config& next) {
    for (const auto& g : next.guests) {
        auto it = guests_.find(g.name);
        if ((it != guests_.end() && it->second->source() == guest_source::runtime) ||
            invalid_.contains(g.name)) {
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
            if (!guests_.contains(name))
                store_.remove_ledger(name);
        }
    }
    // A new endpoint needs a new link; the ledger stays (the same VM behind a new address is
    // the same run, by its start time).
    for (const auto& name : diff.changed) {
        if (auto it = guests_.find(name); it != guests_.end()) {
            auto guest = it->second;
            guests_.erase(it);
            log::info("reload: guest endpoint changed, starting a new link", {.guest = name});
            co_await guest->async_stop();
        }
        launch(*config_.find_guest(name), guest_source::config);
    }
    // Every other guest keeps its link: new timings apply live, and its provisioning is compared
    // with what its run was given, reading referenced files again (a rotated secret).
    for (const auto* names : {&diff.updated, &diff.unchanged}) {
        for (const auto& name : *names) {
            if (auto it = guests_.find(name); it != guests_.end())
                it->second->update_definition(*config_.find_guest(name));
        }
    }
    for (const auto& name : diff.added)
        launch(*config_.find_guest(name), guest_source::config);
    log::info("reload applied: " + std::to_string(diff.added.size()) + " added, " +
              std::to_string(diff.removed.size()) + " removed, " +
              std::to_string(diff.changed.size()) + " with a new endpoint, " +
              std::to_string(diff.updated.size()) + " updated, " +
              std::to_string(diff.unchanged.size()) + " unchanged");
    co_return std::nullopt;
}

boost::system::result<std::shared_ptr<managed_guest>, registry_error> guest_registry::add_runtime(
    const std::string& name, const std::string& endpoint, const json::object& provision,
    provision_caller caller) {
    using result = boost::system::result<std::shared_ptr<managed_guest>, registry_error>;
    if (invalid_.contains(name)) {
        return result(boost::system::in_place_error,
                      registry_error{registry_error::kind::exists,
                                     "guest \"" + name +
                                         "\" already exists, in state invalid; remove it or "
                                         "replace its provisioning"});
    }
    if (auto it = guests_.find(name); it != guests_.end()) {
        const bool from_config = it->second->source() == guest_source::config;
        return result(boost::system::in_place_error,
                      registry_error{registry_error::kind::exists,
                                     "guest \"" + name + "\" already exists" +
                                         (from_config ? " (defined in the config file)" : "")});
    }
    auto definition = runtime_guest_definition(name, endpoint, provision, config_.daemon, caller);
    if (!definition)
        return result(boost::system::in_place_error, refusal(definition.error()));
    auto split = split_out_values(provision);
    runtime_records_.push_back({name,
                                endpoint,
                                std::move(split.persisted),
                                std::move(split.withheld_values),
                                caller == provision_caller::host_trusted,
                                {}});
    runtime_records_.back().sealed = seal_values(runtime_records_.back(), split);
    if (auto error = persist()) {
        runtime_records_.pop_back();
        return result(boost::system::in_place_error,
                      registry_error{registry_error::kind::persist_failed,
                                     "cannot persist the guest: " + *error});
    }
    return result(boost::system::in_place_value,
                  launch(std::move(*definition), guest_source::runtime));
}

boost::system::result<config::guest_config, registry_error> guest_registry::rewrite_record(
    runtime_guest_record& record, const json::object& provision, provision_caller caller) {
    using result = boost::system::result<config::guest_config, registry_error>;
    auto definition =
        runtime_guest_definition(record.name, record.endpoint, provision, config_.daemon, caller);
    if (!definition)
        return result(boost::system::in_place_error, refusal(definition.error()));
    auto split = split_out_values(provision);
    auto kept = record;
    record.provision = std::move(split.persisted);
    record.withheld_values = std::move(split.withheld_values);
    record.references_trusted = caller == provision_caller::host_trusted;
    record.sealed = seal_values(record, split);
    if (auto error = persist()) {
        record = std::move(kept);
        return result(boost::system::in_place_error,
                      registry_error{registry_error::kind::persist_failed,
                                     "cannot persist the provisioning: " + *error});
    }
    return result(boost::system::in_place_value, std::move(*definition));
}

boost::system::result<std::shared_ptr<managed_guest>, registry_error>
guest_registry::replace_provision(const std::string& name, const json::object& provision,
                                  provision_caller caller) {
    using result = boost::system::result<std::shared_ptr<managed_guest>, registry_error>;
    auto it = guests_.find(name);
    if (it == guests_.end() && invalid_.contains(name))
        return replace_invalid(name, provision, caller);
    if (it == guests_.end()) {
        return result(
            boost::system::in_place_error,
            registry_error{registry_error::kind::not_found, "no guest named \"" + name + "\""});
    }
    auto guest = it->second;
    if (guest->source() == guest_source::config) {
        return result(boost::system::in_place_error,
                      registry_error{registry_error::kind::config_guest,
                                     "guest \"" + name +
                                         "\" is defined in the config file; change its "
                                         "provisioning there and reload"});
    }
    auto record = std::find_if(runtime_records_.begin(), runtime_records_.end(),
                               [&](const runtime_guest_record& r) { return r.name == name; });
    if (record == runtime_records_.end()) {
        return result(
            boost::system::in_place_error,
            registry_error{registry_error::kind::persist_failed,
                           "guest \"" + name + "\" has no record in the state directory"});
    }
    auto definition = rewrite_record(*record, provision, caller);
    if (!definition)
        return result(boost::system::in_place_error, definition.error());
    guest->replace_provision(std::move(definition->provision));
    return result(boost::system::in_place_value, std::move(guest));
}

boost::system::result<std::shared_ptr<managed_guest>, registry_error> guest_registry::supply_values(
    const std::string& name, const json::object& values) {
    using result = boost::system::result<std::shared_ptr<managed_guest>, registry_error>;
    auto fail = [](registry_error::kind kind, std::string message) {
        return result(boost::system::in_place_error, registry_error{kind, std::move(message)});
    };
    using kind = registry_error::kind;
    auto guest = find(name);
    if (!guest)
        return fail(kind::not_found, "no guest named \"" + name + "\"");
    if (guest->source() == guest_source::config) {
        return fail(kind::config_guest, "guest \"" + name +
                                            "\" is defined in the config file, whose values are "
                                            "read from files; change them there and reload");
    }
    auto record = std::find_if(runtime_records_.begin(), runtime_records_.end(),
                               [&](const runtime_guest_record& r) { return r.name == name; });
    if (record == runtime_records_.end())
        return fail(kind::persist_failed,
                    "guest \"" + name + "\" has no record in the state directory");
    const auto withheld = [&](const std::string& slot) {
        return std::find(record->withheld_values.begin(), record->withheld_values.end(), slot) !=
               record->withheld_values.end();
    };
    const auto& missing = guest->missing_values();
    const auto in_memory = [&](const std::string& slot) {
        return std::find(missing.begin(), missing.end(), slot) == missing.end();
    };

    // What was given, checked against the slots the record withholds.
    std::optional<std::string> config_value;
    std::vector<json::object> secret_values;
    for (const auto& [key, value] : values) {
        if (key == "config") {
            if (!value.is_string())
                return fail(kind::bad_request, "values.config: must be a string");
            if (!withheld("config"))
                return fail(kind::bad_request,
                            "values.config: this guest's provisioning has no jcard.toml value "
                            "(it has a config_file, or none); change it with PUT");
            config_value = std::string(value.get_string());
        } else if (key == "secrets") {
            if (!value.is_array())
                return fail(kind::bad_request, "values.secrets: must be an array");
            for (std::size_t i = 0; i < value.get_array().size(); ++i) {
                const auto where = "values.secrets[" + std::to_string(i) + "]";
                const auto* secret = value.get_array()[i].if_object();
                const auto* secret_name = secret ? secret->if_contains("name") : nullptr;
                const auto* secret_value = secret ? secret->if_contains("value") : nullptr;
                if (!secret_name || !secret_name->is_string() || !secret_value)
                    return fail(kind::bad_request, where + ": needs a name and a value");
                for (const auto& [field, ignored] : *secret) {
                    if (field != "name" && field != "value" && field != "mode")
                        return fail(kind::bad_request,
                                    where + "." + std::string(field) +
                                        ": only values are supplied here; change the rest "
                                        "with PUT");
                }
                const auto slot = "secret " + std::string(secret_name->get_string());
                if (!withheld(slot))
                    return fail(kind::bad_request,
                                where + ": " + slot +
                                    " is not one of this guest's values; change the "
                                    "provisioning with PUT");
                secret_values.push_back(*secret);
            }
        } else {
            return fail(kind::bad_request, "values." + std::string(key) +
                                               ": only \"config\" and \"secrets\" hold values");
        }
    }

    // The whole provisioning: the record, the values given now, and those still in memory.
    json::object merged = record->provision;
    const auto& held = guest->definition().provision;
    if (config_value)
        merged["config"] = *config_value;
    else if (withheld("config") && in_memory("config") && held.config_content)
        merged["config"] = *held.config_content;
    json::array secrets;
    if (const auto* persisted = merged.if_contains("secrets"); persisted && persisted->is_array())
        secrets = persisted->get_array();
    std::vector<std::string> still_missing;
    for (const auto& slot : record->withheld_values) {
        if (slot == "config") {
            if (!merged.contains("config"))
                still_missing.push_back(slot);
            continue;
        }
        const auto secret_name = slot.substr(std::string_view("secret ").size());
        auto given = std::find_if(secret_values.begin(), secret_values.end(), [&](const auto& o) {
            return o.at("name").as_string() == secret_name;
        });
        if (given != secret_values.end()) {
            secrets.push_back(*given);
            continue;
        }
        auto kept = std::find_if(held.secrets.begin(), held.secrets.end(),
                                 [&](const auto& sc) { return sc.name == secret_name; });
        if (in_memory(slot) && kept != held.secrets.end() && kept->value) {
            json::object o{{"name", kept->name}, {"value", *kept->value}};
            if (kept->mode != 0)
                o["mode"] = kept->mode;
            secrets.push_back(std::move(o));
        } else {
            still_missing.push_back(slot);
        }
    }
    if (!secrets.empty())
        merged["secrets"] = std::move(secrets);
    auto definition =
        runtime_guest_definition(name, record->endpoint, merged, config_.daemon,
                                 record->references_trusted ? provision_caller::host_trusted
                                                            : provision_caller::values_only);
    if (!definition)
        return result(boost::system::in_place_error, refusal(definition.error()));
    // The values the guest now holds replace the sealed ones. With no key, only the slots given
    // now are dropped (an older sealed value must not come back after a restart); the others
    // stay, to open again once the key is back.
    auto sealed = record->sealed;
    if (at_rest_.seal) {
        sealed = seal_values(*record, split_out_values(merged));
    } else {
        if (config_value)
            sealed.slots.erase("config");
        for (const auto& secret : secret_values)
            sealed.slots.erase("secret " + std::string(secret.at("name").as_string()));
        if (sealed.slots.empty())
            sealed = {};
    }
    if (sealed != record->sealed) {
        auto kept = std::exchange(record->sealed, std::move(sealed));
        if (auto error = persist()) {
            record->sealed = std::move(kept);
            return fail(kind::persist_failed, "cannot persist the sealed values: " + *error);
        }
    }
    guest->replace_provision(std::move(definition->provision));
    if (!still_missing.empty())
        guest->hold_provisioning_for_values(std::move(still_missing));
    return result(boost::system::in_place_value, std::move(guest));
}

boost::system::result<std::shared_ptr<managed_guest>, registry_error>
guest_registry::replace_invalid(const std::string& name, const json::object& provision,
                                provision_caller caller) {
    using result = boost::system::result<std::shared_ptr<managed_guest>, registry_error>;
    auto record = std::find_if(runtime_records_.begin(), runtime_records_.end(),
                               [&](const runtime_guest_record& r) { return r.name == name; });
    if (record == runtime_records_.end()) {
        return result(
            boost::system::in_place_error,
            registry_error{registry_error::kind::not_found, "no guest named \"" + name + "\""});
    }
    auto definition = rewrite_record(*record, provision, caller);
    if (!definition)
        return result(boost::system::in_place_error, definition.error());
    invalid_.erase(name);
    log::notice("runtime guest was invalid; its new provisioning is valid: starting it",
                {.guest = name});
    return result(boost::system::in_place_value,
                  launch(std::move(*definition), guest_source::runtime));
}

std::optional<json::object> guest_registry::invalid_status(std::string_view name) const {
    auto it = invalid_.find(name);
    if (it == invalid_.end())
        return std::nullopt;
    std::string endpoint;
    for (const auto& r : runtime_records_) {
        if (r.name == name)
            endpoint = r.endpoint;
    }
    return json::object{{"name", it->first},
                        {"endpoint", endpoint},
                        {"source", "runtime"},
                        {"state", "invalid"},
                        {"reason", "its record in the state directory is refused: " + it->second},
                        {"link", json::object{{"up", false}}},
                        {"provision", json::object{{"state", "none"}}}};
}

std::vector<json::object> guest_registry::invalid_statuses() const {
    std::vector<json::object> out;
    for (const auto& [name, reason] : invalid_)
        out.push_back(*invalid_status(name));
    return out;
}

asio::awaitable<boost::system::result<void, registry_error>> guest_registry::async_remove_runtime(
    const std::string& name) {
    using result = boost::system::result<void, registry_error>;
    if (invalid_.contains(name)) {
        auto kept = runtime_records_;
        std::erase_if(runtime_records_,
                      [&](const runtime_guest_record& r) { return r.name == name; });
        if (auto error = persist()) {
            runtime_records_ = std::move(kept);
            co_return result(boost::system::in_place_error,
                             registry_error{registry_error::kind::persist_failed,
                                            "cannot persist the removal: " + *error});
        }
        invalid_.erase(name);
        store_.remove_ledger(name);
        log::info("invalid runtime guest removed", {.guest = name});
        co_return result();
    }
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
    if (!guests_.contains(name))
        store_.remove_ledger(name);
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

asio::awaitable<adoptable_connections> guest_registry::async_hand_over_all(
    std::chrono::steady_clock::time_point until) {
    auto guests = std::exchange(guests_, {});
    adoptable_connections handed;
    // Together: each guest waits only for its own replies, all within the one bound.
    std::size_t running = guests.size();
    asio::steady_timer all_done(executor_, asio::steady_timer::time_point::max());
    // Not a structured binding: clang 14 cannot capture one.
    for (const auto& entry : guests) {
        const auto& guest = entry.second;
        asio::co_spawn(
            executor_, guest->async_hand_over(until),
            [&, guest](std::exception_ptr error,
                       std::optional<link::handed_over_connection> connection) {
                if (connection) {
                    handed.emplace(
                        guest->name(),
                        adoptable_connection{transport::to_string(guest->definition().endpoint),
                                             std::move(*connection)});
                }
                if (--running == 0)
                    all_done.cancel();
                rethrow_if_failed(error);
            });
    }
    while (running > 0)
        co_await all_done.async_wait(use_tuple);
    co_return handed;
}

asio::awaitable<void> guest_registry::async_stop_all() {
    auto guests = std::exchange(guests_, {});
    for (auto& [name, guest] : guests)
        guest->begin_stop();
    for (auto& [name, guest] : guests)
        co_await guest->async_stop();
}

}  // namespace stereos::daemon

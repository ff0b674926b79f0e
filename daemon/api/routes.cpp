#include "daemon/api/routes.hpp"

#include <algorithm>
#include <array>
#include <map>
#include <optional>
#include <sstream>
#include <vector>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value_from.hpp>

#include <stereos/link/link_error.hpp>
#include <stereos/protocol/codec.hpp>
#include <stereos/protocol/redact.hpp>
#include <stereos/util/completion_tokens.hpp>
#include "config/config.hpp"
#include "daemon/guest/provisioning.hpp"
#include "daemon/logging.hpp"

namespace stereos::daemon::api {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using namespace std::chrono_literals;

namespace {

using transport::use_tuple;
constexpr std::string_view server_name = "stereos-hostd/" STEREOS_VERSION;

http_response json_response(http::status status, const json::value& body, unsigned version) {
    http_response response{status, version};
    response.set(http::field::server, server_name);
    response.set(http::field::content_type, "application/json");
    response.body() = json::serialize(body);
    response.body() += '\n';
    response.prepare_payload();
    return response;
}

http_response ok(const json::value& body, unsigned version) {
    return json_response(http::status::ok, body, version);
}

// ---- guests and their requests --------------------------------------------------------------

struct guest_lookup {
    std::shared_ptr<managed_guest> guest;
    std::optional<http_response> error;
};

guest_lookup find_guest(api_context& context, const std::string& name, unsigned version) {
    if (auto valid = config::check_guest_name(name); !valid)
        return {nullptr, error_response(400, "bad_request", valid.error().message, version)};
    auto guest = context.registry.find(name);
    if (!guest) {
        return {nullptr,
                error_response(404, "guest_not_found", "no guest named \"" + name + "\"", version)};
    }
    return {std::move(guest), std::nullopt};
}

struct link_error_mapping {
    unsigned status;
    std::string_view code;
};

link_error_mapping map_link_error(boost::system::error_code error) {
    if (error == link::link_error::guest_unavailable || error == link::link_error::queue_full)
        return {503, "guest_unavailable"};
    if (error == link::link_error::request_timeout ||
        error == link::link_error::keepalive_timeout ||
        error == link::link_error::guest_unresponsive)
        return {504, "guest_timeout"};
    if (error == link::link_error::request_too_large)
        return {413, "payload_too_large"};
    // connection_lost, protocol_error, link_stopped, connection_closed, anything else.
    return {502, "connection_lost"};
}

// The reply, or the error response a client gets.
struct guest_reply {
    std::optional<protocol::guest_message> reply;
    std::optional<http_response> error;
};

// Sends one request to the guest on behalf of a client and maps a failure to the API's error
// codes (see error_response). An ack with ok:false is the guest's answer: guest_error, with its
// text scrubbed of anything we sent that may be secret.
// Arguments are references to the caller's named objects: GCC 12 destroys a class-type
// temporary created inside a co_await expression twice.
asio::awaitable<guest_reply> call_guest(api_context& /*context*/,
                                        const std::shared_ptr<managed_guest>& guest,
                                        const protocol::host_message& message, unsigned version) {
    const auto type = std::string(protocol::type_name(message));
    auto result = co_await guest->request(message);
    guest_reply out;
    if (!result && result.error() == asio::error::operation_aborted) {
        // The client hung up and the request was withdrawn; this answer is never sent.
        out.error =
            error_response(502, "connection_lost", guest->name() + ": request withdrawn", version);
        co_return out;
    }
    if (!result) {
        const auto mapping = map_link_error(result.error());
        out.error = error_response(mapping.status, mapping.code,
                                   guest->name() + ": " + result.error().message(), version);
        co_return out;
    }
    if (const auto* ack = std::get_if<protocol::ack_payload>(&*result); ack && !ack->ok) {
        const auto text = scrub_guest_error(ack->error, message);
        out.error = error_response(502, "guest_error",
                                   guest->name() + " refused " + type + ": " + text, version);
        co_return out;
    }
    out.reply = std::move(*result);
    co_return out;
}

// Requests answered by an ack: {"ok":true} once acked. What the guest acked is recorded in its
// delivery ledger (`added_public_key`: the key an ssh-keys request added).
asio::awaitable<http_response> acked_request(api_context& context,
                                             const std::shared_ptr<managed_guest>& guest,
                                             protocol::host_message& message, unsigned version,
                                             http::status success = http::status::ok,
                                             std::string_view added_public_key = {}) {
    auto outcome = co_await call_guest(context, guest, message, version);
    if (!outcome.error)
        guest->record_api_delivery(message, added_public_key);
    wipe_secrets(message);
    if (outcome.error)
        co_return std::move(*outcome.error);
    co_return json_response(success, json::object{{"ok", true}, {"guest", guest->name()}}, version);
}

// ---- wait -----------------------------------------------------------------------------------

// "That state or a better one": booting < ready < healthy along the way up. Degraded is not
// ready (an agent is failing); it and the other states only satisfy themselves.
bool state_satisfies(guest_state current, guest_state wanted) {
    auto rank = [](guest_state s) {
        switch (s) {
            case guest_state::booting:
                return 1;
            case guest_state::ready:
                return 2;
            case guest_state::healthy:
                return 3;
            default:
                return 0;
        }
    };
    if (current == wanted)
        return true;
    return rank(wanted) > 0 && rank(current) >= rank(wanted);
}

asio::awaitable<http_response> wait_for_state(api_context& context,
                                              const std::shared_ptr<managed_guest>& guest,
                                              const parsed_target& target, unsigned version) {
    auto state_it = target.query.find("state");
    if (state_it == target.query.end())
        co_return error_response(400, "bad_request", "missing query parameter \"state\"", version);
    std::optional<guest_state> wanted;
    std::string names;
    for (auto s : all_guest_states) {
        if (to_string(s) == state_it->second)
            wanted = s;
        names += (names.empty() ? "" : ", ") + std::string(to_string(s));
    }
    if (!wanted) {
        co_return error_response(400, "bad_request",
                                 "query parameter \"state\" must be one of: " + names, version);
    }
    std::chrono::milliseconds timeout = 30s;
    if (auto t = target.query.find("timeout"); t != target.query.end()) {
        auto parsed = config::parse_duration(t->second);
        if (!parsed) {
            co_return error_response(400, "bad_request",
                                     "query parameter \"timeout\": " + parsed.error().message,
                                     version);
        }
        if (*parsed > max_wait_timeout) {
            co_return error_response(400, "bad_request",
                                     "query parameter \"timeout\" must be at most 1h", version);
        }
        timeout = *parsed;
    }

    // Woken by every event of this guest, and once a second to notice a removal or a stop.
    asio::steady_timer wake(co_await asio::this_coro::executor);
    auto subscription = context.bus.subscribe(guest->name(), 64);
    subscription->set_notify([&wake] { wake.cancel(); });
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    http_response response;
    while (true) {
        if (context.registry.find(guest->name()) != guest) {
            response = error_response(404, "guest_not_found",
                                      "guest \"" + guest->name() + "\" was removed", version);
            break;
        }
        if (state_satisfies(guest->machine().state(), *wanted)) {
            response = ok(guest->status(), version);
            break;
        }
        if (context.stopping) {
            response = error_response(503, "server_busy", "the daemon is stopping", version);
            break;
        }
        const auto now = std::chrono::steady_clock::now();
        if (now >= deadline) {
            response = error_response(408, "wait_timeout",
                                      guest->name() + " is " +
                                          std::string(to_string(guest->machine().state())) +
                                          ", not " + std::string(to_string(*wanted)) +
                                          " (or better) after " + config::format_duration(timeout),
                                      version);
            break;
        }
        while (subscription->next()) {
        }
        if (subscription->overflowed()) {
            subscription->close();
            subscription = context.bus.subscribe(guest->name(), 64);
            subscription->set_notify([&wake] { wake.cancel(); });
        }
        wake.expires_at(std::min(deadline, now + std::chrono::seconds(1)));
        co_await wake.async_wait(use_tuple);
        const asio::cancellation_state state = co_await asio::this_coro::cancellation_state;
        if (state.cancelled() != asio::cancellation_type::none) {
            // The client hung up; this answer is never sent.
            response = error_response(408, "wait_timeout", "the client stopped waiting", version);
            break;
        }
    }
    subscription->close();
    co_return response;
}

// ---- handlers -------------------------------------------------------------------------------

// A registry refusal as the client sees it.
http_response registry_error_response(const registry_error& e, unsigned version) {
    switch (e.code) {
        case registry_error::kind::bad_request:
            return error_response(400, "bad_request", e.message, version);
        case registry_error::kind::forbidden:
            return error_response(403, "forbidden", e.message, version);
        case registry_error::kind::exists:
            return error_response(409, "guest_exists", e.message, version);
        case registry_error::kind::not_found:
            return error_response(404, "guest_not_found", e.message, version);
        case registry_error::kind::config_guest:
            return error_response(409, "guest_in_config", e.message, version);
        case registry_error::kind::persist_failed:
            break;
    }
    return error_response(500, "internal_error", e.message, version);
}

// The outcome of a provisioning run as POST and PUT .../provision answer it.
asio::awaitable<http_response> provision_and_report(api_context& /*context*/,
                                                    const std::shared_ptr<managed_guest>& guest,
                                                    unsigned version) {
    const auto report = co_await guest->provision_now();
    const bool failed = report.state == "failed";
    if (failed) {
        co_return error_response(
            502, "guest_error",
            guest->name() + ": provisioning failed at " + report.step + ": " + report.error,
            version);
    }
    if (report.state == "needs_values") {
        co_return error_response(409, "needs_values",
                                 guest->name() +
                                     ": its provisioning values were lost in a daemon restart; "
                                     "supply them with PATCH /v1/guests/" +
                                     guest->name() + "/provision",
                                 version);
    }
    json::object provision{{"state", report.state}};
    if (!report.step.empty())
        provision["step"] = report.step;
    if (report.state == "done") {
        provision["sent"] = report.sent;  // missing or changed in this run of the guest
        provision["already"] = report.already;
    }
    co_return ok(json::object{{"guest", guest->name()}, {"provision", std::move(provision)}},
                 version);
}

// Host files and credentials only on the word of root or the daemon's user.
provision_caller caller_of(const peer_access& access) {
    return access.may_reference_host ? provision_caller::host_trusted
                                     : provision_caller::values_only;
}

// ---- the routes -----------------------------------------------------------------------------

}  // namespace

// What a handler reads: the request, its route's match and who asked.
struct route_call {
    const http_request& request;
    const route_match& match;
    const peer_access& access;
    api_context& context;
    unsigned version;
};

namespace {

// The guest a per-guest route names; the error response instead if it has none.
guest_lookup guest_of(route_call& call) {
    return find_guest(call.context, call.match.name, call.version);
}

asio::awaitable<api_outcome> handle_ping(route_call& call) {
    co_return ok(json::object{{"status", "ok"}, {"version", STEREOS_VERSION}}, call.version);
}

asio::awaitable<api_outcome> handle_list_guests(route_call& call) {
    std::vector<std::pair<std::string, json::object>> listed;
    for (const auto& g : call.context.registry.all())
        listed.emplace_back(g->name(), g->status());
    for (auto& invalid : call.context.registry.invalid_statuses())
        listed.emplace_back(std::string(invalid.at("name").as_string()), std::move(invalid));
    std::stable_sort(listed.begin(), listed.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    json::array guests;
    for (auto& [name, status] : listed)
        guests.push_back(std::move(status));
    co_return ok(json::object{{"guests", std::move(guests)}}, call.version);
}

asio::awaitable<api_outcome> handle_add_guest(route_call& call) {
    body_fields body(call.request.body(), false);
    auto guest_name = body.required_string("name");
    auto endpoint = body.required_string("endpoint");
    auto provision = body.optional_object("provision");
    body.check("name", config::check_guest_name(guest_name));
    if (!body.ok())
        co_return error_response(400, "bad_request", body.problem(), call.version);
    auto added =
        call.context.registry.add_runtime(guest_name, endpoint, provision, caller_of(call.access));
    if (!added)
        co_return registry_error_response(added.error(), call.version);
    auto response = json_response(http::status::created, (*added)->status(), call.version);
    response.set(http::field::location, "/v1/guests/" + guest_name);
    co_return response;
}

asio::awaitable<api_outcome> handle_events(route_call& call) {
    std::string filter;
    const auto& query = call.match.target.query;
    if (auto g = query.find("guest"); g != query.end()) {
        auto found = find_guest(call.context, g->second, call.version);
        if (found.error)
            co_return std::move(*found.error);
        filter = g->second;
    }
    co_return event_stream_request{std::move(filter)};
}

asio::awaitable<api_outcome> handle_metrics(route_call& call) {
    http_response response{http::status::ok, call.version};
    response.set(http::field::server, server_name);
    response.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
    response.body() = call.context.metrics.render(call.context.registry, call.context.bus);
    response.prepare_payload();
    co_return response;
}

asio::awaitable<api_outcome> handle_show_guest(route_call& call) {
    if (auto invalid = call.context.registry.invalid_status(call.match.name))
        co_return ok(*invalid, call.version);
    auto found = guest_of(call);
    if (found.error)
        co_return std::move(*found.error);
    co_return ok(found.guest->status(), call.version);
}

asio::awaitable<api_outcome> handle_remove_guest(route_call& call) {
    auto found = guest_of(call);
    if (found.error && !call.context.registry.invalid_status(call.match.name))
        co_return std::move(*found.error);
    const auto& name = call.match.name;
    auto removed = co_await call.context.registry.async_remove_runtime(name);
    if (!removed) {
        const auto& e = removed.error();
        switch (e.code) {
            case registry_error::kind::not_found:
                co_return error_response(404, "guest_not_found", e.message, call.version);
            case registry_error::kind::config_guest:
                co_return error_response(409, "guest_in_config", e.message, call.version);
            default:
                co_return error_response(500, "internal_error", e.message, call.version);
        }
    }
    co_return ok(json::object{{"removed", name}}, call.version);
}

asio::awaitable<api_outcome> handle_guest_ping(route_call& call) {
    auto found = guest_of(call);
    if (found.error)
        co_return std::move(*found.error);
    const auto started = std::chrono::steady_clock::now();
    const protocol::host_message ping = protocol::ping_request{};
    auto outcome = co_await call_guest(call.context, found.guest, ping, call.version);
    if (outcome.error)
        co_return std::move(*outcome.error);
    const auto rtt = std::chrono::duration_cast<std::chrono::microseconds>(
        std::chrono::steady_clock::now() - started);
    co_return ok(json::object{{"guest", call.match.name}, {"rtt_us", rtt.count()}}, call.version);
}

asio::awaitable<api_outcome> handle_guest_health(route_call& call) {
    auto found = guest_of(call);
    if (found.error)
        co_return std::move(*found.error);
    const protocol::host_message get_health = protocol::get_health_request{};
    auto outcome = co_await call_guest(call.context, found.guest, get_health, call.version);
    if (outcome.error)
        co_return std::move(*outcome.error);
    if (const auto* health = std::get_if<protocol::health_payload>(&*outcome.reply))
        co_return ok(json::value_from(*health), call.version);
    co_return error_response(502, "connection_lost", "unexpected reply to get_health",
                             call.version);
}

asio::awaitable<api_outcome> handle_guest_config(route_call& call) {
    auto found = guest_of(call);
    if (found.error)
        co_return std::move(*found.error);
    if (call.request.body().empty()) {
        co_return error_response(400, "bad_request",
                                 "body must be the guest's jcard.toml (text/plain or "
                                 "application/toml); it is empty",
                                 call.version);
    }
    protocol::host_message message = protocol::config_payload{call.request.body()};
    co_return co_await acked_request(call.context, found.guest, message, call.version);
}

asio::awaitable<api_outcome> handle_guest_secret(route_call& call) {
    auto found = guest_of(call);
    if (found.error)
        co_return std::move(*found.error);
    body_fields body(call.request.body(), false);
    protocol::secret_payload secret;
    secret.name = body.required_string("name");
    secret.value = body.required_string("value");
    secret.mode = body.optional_mode("mode");
    body.check("name", config::check_secret_name(secret.name));
    if (!body.ok())
        co_return error_response(400, "bad_request", body.problem(), call.version);
    protocol::host_message message = std::move(secret);
    co_return co_await acked_request(call.context, found.guest, message, call.version);
}

asio::awaitable<api_outcome> handle_guest_ssh_key(route_call& call) {
    auto found = guest_of(call);
    if (found.error)
        co_return std::move(*found.error);
    body_fields body(call.request.body(), false);
    const auto user = body.required_string("user");
    const auto public_key = body.required_string("public_key");
    body.check("public_key", config::check_ssh_public_key(public_key));
    if (!body.ok())
        co_return error_response(400, "bad_request", body.problem(), call.version);
    // stereosd rewrites the user's whole authorized_keys: send this key with the user's others.
    auto request = found.guest->ssh_key_request(user, public_key);
    if (!request) {
        co_return error_response(
            500, "internal_error",
            call.match.name + ": cannot gather the keys of " + user + ": " + request.error(),
            call.version);
    }
    protocol::host_message message = std::move(*request);
    co_return co_await acked_request(call.context, found.guest, message, call.version,
                                     http::status::ok, public_key);
}

asio::awaitable<api_outcome> handle_guest_mount(route_call& call) {
    auto found = guest_of(call);
    if (found.error)
        co_return std::move(*found.error);
    body_fields body(call.request.body(), false);
    protocol::mount_payload mount;
    mount.tag = body.required_string("tag");
    mount.guest_path = body.required_string("guest_path");
    mount.fs_type = body.required_string("fs_type");
    mount.read_only = body.optional_bool("read_only");
    body.check("guest_path", config::check_mount_guest_path(mount.guest_path));
    body.check("fs_type", config::check_fs_type(mount.fs_type));
    if (!body.ok())
        co_return error_response(400, "bad_request", body.problem(), call.version);
    // stereosd mounts again on every request, stacking mounts: never repeat one in a run.
    switch (found.guest->plan_mount(mount)) {
        case mount_plan::already_mounted:
            co_return ok(json::object{{"ok", true},
                                      {"guest", call.match.name},
                                      {"sent", false},
                                      {"message", "already mounted at " + mount.guest_path +
                                                      " in this run of the guest; not sent again"}},
                         call.version);
        case mount_plan::conflict:
            co_return error_response(409, "mount_conflict",
                                     call.match.name + ": another mount is at " + mount.guest_path +
                                         " in this run of the guest; it stays until the guest "
                                         "reboots",
                                     call.version);
        case mount_plan::send:
            break;
    }
    struct in_flight {
        managed_guest& guest;
        const protocol::mount_payload& mount;
        ~in_flight() { guest.end_api_mount(mount); }
    };
    found.guest->begin_api_mount(mount);
    const in_flight marked{*found.guest, mount};
    protocol::host_message message = mount;
    co_return co_await acked_request(call.context, found.guest, message, call.version);
}

asio::awaitable<api_outcome> handle_guest_shutdown(route_call& call) {
    auto found = guest_of(call);
    if (found.error)
        co_return std::move(*found.error);
    body_fields body(call.request.body(), true);
    protocol::shutdown_payload shutdown{body.optional_string("reason")};
    if (!body.ok())
        co_return error_response(400, "bad_request", body.problem(), call.version);
    protocol::host_message message = std::move(shutdown);
    co_return co_await acked_request(call.context, found.guest, message, call.version,
                                     http::status::accepted);
}

asio::awaitable<api_outcome> handle_guest_provision(route_call& call) {
    auto found = guest_of(call);
    if (found.error)
        co_return std::move(*found.error);
    co_return co_await provision_and_report(call.context, found.guest, call.version);
}

asio::awaitable<api_outcome> handle_guest_set_provision(route_call& call) {
    auto found = guest_of(call);
    const bool invalid = call.context.registry.invalid_status(call.match.name).has_value();
    if (found.error && !invalid)
        co_return std::move(*found.error);
    // The body has POST /v1/guests's shape for its provision and the same rules; it may carry
    // secret values, so nothing of it is logged or echoed.
    body_fields body(call.request.body(), false);
    auto provision = body.required_object("provision");
    if (!body.ok())
        co_return error_response(400, "bad_request", body.problem(), call.version);
    const auto& name = call.match.name;
    auto replaced =
        call.context.registry.replace_provision(name, provision, caller_of(call.access));
    if (!replaced)
        co_return registry_error_response(replaced.error(), call.version);
    // Sent now if the guest is there; otherwise at its next boot (an invalid guest starts now).
    if (!invalid && (*replaced)->link().is_up())
        co_return co_await provision_and_report(call.context, *replaced, call.version);
    co_return ok(json::object{{"guest", name}, {"provision", json::object{{"state", "pending"}}}},
                 call.version);
}

// The provisioning as the daemon holds it, values redacted.
asio::awaitable<api_outcome> handle_guest_show_provision(route_call& call) {
    auto found = guest_of(call);
    if (found.error)
        co_return std::move(*found.error);
    auto shown = found.guest->redacted_provision();
    shown["guest"] = found.guest->name();
    shown["source"] = to_string(found.guest->source());
    co_return ok(shown, call.version);
}

// Values only ({"values": {"config"?, "secrets"?: [{name, value, mode?}]}}): the rest stays.
asio::awaitable<api_outcome> handle_guest_supply_values(route_call& call) {
    auto found = guest_of(call);
    if (found.error)
        co_return std::move(*found.error);
    body_fields body(call.request.body(), false);
    auto values = body.required_object("values");
    if (!body.ok())
        co_return error_response(400, "bad_request", body.problem(), call.version);
    auto supplied = call.context.registry.supply_values(call.match.name, values);
    if (!supplied)
        co_return registry_error_response(supplied.error(), call.version);
    const auto& guest = *supplied;
    if (guest->missing_values().empty() && guest->link().is_up())
        co_return co_await provision_and_report(call.context, guest, call.version);
    auto shown = guest->redacted_provision();
    co_return ok(json::object{{"guest", guest->name()},
                              {"provision", json::object{{"state", guest->provisioning().state}}},
                              {"missing", shown.at("missing")}},
                 call.version);
}

asio::awaitable<api_outcome> handle_guest_reconnect(route_call& call) {
    auto found = guest_of(call);
    if (found.error)
        co_return std::move(*found.error);
    // Answered at once: the caller (a VM start hook) must not wait for the guest.
    found.guest->reconnect();
    co_return json_response(http::status::accepted,
                            json::object{{"guest", call.match.name}, {"reconnecting", true}},
                            call.version);
}

asio::awaitable<api_outcome> handle_guest_wait(route_call& call) {
    auto found = guest_of(call);
    if (found.error)
        co_return std::move(*found.error);
    co_return co_await wait_for_state(call.context, found.guest, call.match.target, call.version);
}

// The errors each route may answer with, besides `refusal`.
constexpr route_error add_guest_errors[] = {
    {400, "bad_request"}, {409, "guest_exists"}, {500, "internal_error"}};
constexpr route_error guest_errors[] = {{400, "bad_request"}, {404, "guest_not_found"}};
constexpr route_error remove_errors[] = {{400, "bad_request"},
                                         {404, "guest_not_found"},
                                         {409, "guest_in_config"},
                                         {500, "internal_error"}};
// call_guest's mapping of link errors, and the guest's own refusal.
constexpr route_error guest_request_errors[] = {
    {400, "bad_request"},     {404, "guest_not_found"}, {413, "payload_too_large"},
    {502, "connection_lost"}, {502, "guest_error"},     {503, "guest_unavailable"},
    {504, "guest_timeout"}};
constexpr route_error ssh_key_errors[] = {{400, "bad_request"},       {404, "guest_not_found"},
                                          {413, "payload_too_large"}, {500, "internal_error"},
                                          {502, "connection_lost"},   {502, "guest_error"},
                                          {503, "guest_unavailable"}, {504, "guest_timeout"}};
constexpr route_error mount_errors[] = {{400, "bad_request"},       {404, "guest_not_found"},
                                        {409, "mount_conflict"},    {413, "payload_too_large"},
                                        {502, "connection_lost"},   {502, "guest_error"},
                                        {503, "guest_unavailable"}, {504, "guest_timeout"}};
constexpr route_error provision_errors[] = {
    {400, "bad_request"}, {404, "guest_not_found"}, {409, "needs_values"}, {502, "guest_error"}};
constexpr route_error set_provision_errors[] = {{400, "bad_request"},     {404, "guest_not_found"},
                                                {409, "guest_in_config"}, {409, "needs_values"},
                                                {500, "internal_error"},  {502, "guest_error"}};
constexpr route_error wait_errors[] = {
    {400, "bad_request"}, {404, "guest_not_found"}, {408, "wait_timeout"}, {503, "server_busy"}};

using enum http::verb;
constexpr route route_table[] = {
    {get, "/v1/ping", handle_ping, 200, {}},
    {get, "/v1/guests", handle_list_guests, 200, {}},
    {post, "/v1/guests", handle_add_guest, 201, add_guest_errors},
    {get, "/v1/guests/{name}", handle_show_guest, 200, guest_errors},
    {delete_, "/v1/guests/{name}", handle_remove_guest, 200, remove_errors},
    {post, "/v1/guests/{name}/ping", handle_guest_ping, 200, guest_request_errors, true},
    {get, "/v1/guests/{name}/health", handle_guest_health, 200, guest_request_errors, true},
    {put, "/v1/guests/{name}/config", handle_guest_config, 200, guest_request_errors, true},
    {post, "/v1/guests/{name}/secrets", handle_guest_secret, 200, guest_request_errors, true},
    {post, "/v1/guests/{name}/ssh-keys", handle_guest_ssh_key, 200, ssh_key_errors, true},
    {post, "/v1/guests/{name}/mounts", handle_guest_mount, 200, mount_errors, true},
    // Not cancelled by a hangup: the guest may act on a written shutdown, and the state machine
    // is to hear its answer.
    {post, "/v1/guests/{name}/shutdown", handle_guest_shutdown, 202, guest_request_errors},
    {post, "/v1/guests/{name}/provision", handle_guest_provision, 200, provision_errors},
    {put, "/v1/guests/{name}/provision", handle_guest_set_provision, 200, set_provision_errors},
    {patch, "/v1/guests/{name}/provision", handle_guest_supply_values, 200, set_provision_errors},
    {get, "/v1/guests/{name}/provision", handle_guest_show_provision, 200, guest_errors},
    {post, "/v1/guests/{name}/reconnect", handle_guest_reconnect, 202, guest_errors},
    {get, "/v1/guests/{name}/wait", handle_guest_wait, 200, wait_errors, true},
    {get, "/v1/events", handle_events, 200, guest_errors},
    {get, "/metrics", handle_metrics, 200, {}},
};

// A row without a handler, a success status or a pattern does not compile.
constexpr bool table_complete() {
    for (const auto& entry : route_table) {
        if (entry.handler == nullptr || entry.success < 200 || entry.success > 299 ||
            !entry.pattern.starts_with('/'))
            return false;
    }
    return true;
}
static_assert(table_complete(), "every route needs a handler, a 2xx status and a pattern");

}  // namespace

bool route::declares(unsigned status, std::string_view code) const noexcept {
    if (status == success)
        return true;
    if (status == refusal.status && code == refusal.code)
        return true;
    return std::any_of(errors.begin(), errors.end(),
                       [&](const route_error& e) { return e.status == status && e.code == code; });
}

std::span<const route> routes() noexcept {
    return route_table;
}

http_response error_response(unsigned status, std::string_view code, std::string_view message,
                             unsigned version) {
    // Messages quote what the client (or guest) sent, which may not be UTF-8: Boost.JSON would
    // copy such bytes into the body unchecked, and clients could not parse it.
    return json_response(
        static_cast<http::status>(status),
        json::object{{"error", json::object{{"code", code},
                                            {"message", protocol::printable_excerpt(
                                                            message, max_header_bytes)}}}},
        version);
}

std::variant<route_match, http_response> match_route(const http_request& request) {
    const unsigned version = request.version();
    auto target = parse_target(request.target());
    if (!target)
        return error_response(400, "bad_request", "malformed request target", version);

    route_match match;
    std::string allowed;
    for (const auto& entry : route_table) {
        if (!matches(entry.pattern, target->segments, match.name))
            continue;
        if (entry.verb == request.method()) {
            match.chosen = &entry;
            break;
        }
        if (!allowed.empty())
            allowed += ", ";
        allowed += http::to_string(entry.verb);
    }
    if (!match.chosen && allowed.empty()) {
        return error_response(404, "not_found",
                              "no such route: " + std::string(request.method_string()) + " " +
                                  std::string(request.target().substr(
                                      0, std::min<std::size_t>(request.target().size(), 200))),
                              version);
    }
    if (!match.chosen) {
        auto response = error_response(
            405, "method_not_allowed",
            std::string(request.method_string()) + " is not allowed here; allowed: " + allowed,
            version);
        response.set(http::field::allow, allowed);
        return response;
    }
    match.target = std::move(*target);
    return match;
}

namespace {

// A response its route does not declare: a handler and the table (and daemon/openapi.json)
// disagree. Logged and counted; the client gets the response all the same.
void flag_if_undeclared(const route& entry, const http_response& response, api_context& context) {
    const unsigned status = response.result_int();
    std::string code;
    if (status >= 400) {
        boost::system::error_code ec;
        const auto body = json::parse(response.body(), ec);
        const auto* error =
            !ec && body.is_object() ? body.get_object().if_contains("error") : nullptr;
        const auto* text =
            error && error->is_object() ? error->get_object().if_contains("code") : nullptr;
        if (text && text->is_string())
            code = text->get_string();
    }
    if (entry.declares(status, code))
        return;
    context.metrics.undeclared_response();
    log::error("API route " + std::string(http::to_string(entry.verb)) + " " +
               std::string(entry.pattern) + " answered " + std::to_string(status) +
               (code.empty() ? "" : " " + code) + ", which its route table entry does not declare");
}

}  // namespace

asio::awaitable<api_outcome> run_route(const http_request& request, route_match& match,
                                       const peer_access& access, api_context& context) {
    const route& entry = *match.chosen;
    const bool writes = entry.verb != http::verb::get;
    if (writes ? !access.may_write : !access.may_read) {
        co_return error_response(403, "forbidden",
                                 writes ? "changing anything needs root, the daemon's user or "
                                          "membership of the API group"
                                        : "reading needs root, the daemon's user or membership "
                                          "of the API group (or the read group)",
                                 request.version());
    }
    route_call call{request, match, access, context, request.version()};
    auto outcome = co_await entry.handler(call);
    if (const auto* response = std::get_if<http_response>(&outcome))
        flag_if_undeclared(entry, *response, context);
    co_return outcome;
}

asio::awaitable<api_outcome> dispatch(const http_request& request, peer_access access,
                                      api_context& context) {
    auto matched = match_route(request);
    if (auto* refusal = std::get_if<http_response>(&matched))
        co_return std::move(*refusal);
    co_return co_await run_route(request, std::get<route_match>(matched), access, context);
}

boost::system::result<http_request> parse_request(std::string_view bytes) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(max_header_bytes);
    parser.body_limit(max_body_bytes);
    parser.eager(true);
    boost::system::error_code ec;
    while (!parser.is_done() && !bytes.empty()) {
        const auto used = parser.put(asio::buffer(bytes.data(), bytes.size()), ec);
        if (ec == http::error::need_more) {
            ec = {};
            break;
        }
        if (ec)
            return ec;
        if (used == 0)
            break;
        bytes.remove_prefix(used);
    }
    if (!parser.is_done()) {
        parser.put_eof(ec);
        if (ec)
            return ec;
        if (!parser.is_done())
            return make_error_code(http::error::partial_message);
    }
    return parser.release();
}

http_response parse_error_response(boost::system::error_code error) {
    http_response response;
    if (error == http::error::body_limit) {
        response = error_response(413, "payload_too_large", "request body over 1 MiB");
    } else if (error == http::error::header_limit) {
        response = error_response(400, "bad_request", "request headers over 16 KiB");
    } else {
        response = error_response(400, "bad_request", "malformed HTTP request: " + error.message());
    }
    response.keep_alive(false);
    return response;
}

std::string serialize(http_response response) {
    response.prepare_payload();
    std::ostringstream out;
    out << response;
    return out.str();
}

std::string describe(const http_request& request) {
    auto target = request.target();
    target = target.substr(0, std::min(target.find('?'), target.size()));
    target = target.substr(0, std::min<std::size_t>(target.size(), 200));
    return std::string(request.method_string()) + " " + std::string(target);
}

}  // namespace stereos::daemon::api

// The guests themselves: list, add, show, remove, reconnect.
#include "daemon/api/routes_internal.hpp"

#include <algorithm>
#include <utility>
#include <vector>

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>

#include "config/config.hpp"
#include "daemon/api/request.hpp"

namespace stereos::daemon::api {

namespace asio = boost::asio;
namespace http = boost::beast::http;
namespace json = boost::json;

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

// The guest a per-guest route names; the error response instead if it has none.
guest_lookup guest_of(route_call& call) {
    return find_guest(call.context, call.match.name, call.version);
}

// Host files and credentials only on the word of root or the daemon's user.
provision_caller caller_of(const peer_access& access) {
    return access.may_reference_host ? provision_caller::host_trusted
                                     : provision_caller::values_only;
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

}  // namespace stereos::daemon::api

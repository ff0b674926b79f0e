// A guest's provisioning: run it now (POST), replace it (PUT), supply its values (PATCH), show it
// (GET), and the report a run answers with.
#include "daemon/api/routes_internal.hpp"

#include <utility>

#include <boost/json/object.hpp>

#include "daemon/api/request.hpp"

namespace stereos::daemon::api {

namespace asio = boost::asio;
namespace http = boost::beast::http;
namespace json = boost::json;

namespace {

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

}  // namespace

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

}  // namespace stereos::daemon::api

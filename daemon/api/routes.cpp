#include "daemon/api/routes.hpp"

#include <algorithm>
#include <string>

#include <boost/beast/http/verb.hpp>
#include <boost/json/parse.hpp>

#include "daemon/api/routes_internal.hpp"
#include "daemon/logging.hpp"

namespace stereos::daemon::api {

namespace asio = boost::asio;
namespace http = boost::beast::http;
namespace json = boost::json;

namespace {

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
// The row's flags, by name.
constexpr bool audited = true;         // the audit trail records it (audit.hpp)
constexpr bool hangup_cancels = true;  // cancelled_by_hangup
constexpr route route_table[] = {
    {get, "/v1/ping", handle_ping, 200, {}},
    {get, "/v1/guests", handle_list_guests, 200, {}},
    {post, "/v1/guests", handle_add_guest, 201, add_guest_errors, audited},
    {get, "/v1/guests/{name}", handle_show_guest, 200, guest_errors},
    {delete_, "/v1/guests/{name}", handle_remove_guest, 200, remove_errors, audited},
    // A ping only asks: not audited.
    {post,
     "/v1/guests/{name}/ping",
     handle_forwarded,
     200,
     guest_request_errors,
     !audited,
     hangup_cancels,
     {prepare_guest_ping, answer_guest_ping}},
    {get,
     "/v1/guests/{name}/health",
     handle_forwarded,
     200,
     guest_request_errors,
     !audited,
     hangup_cancels,
     {prepare_guest_health, answer_guest_health}},
    {put,
     "/v1/guests/{name}/config",
     handle_forwarded,
     200,
     guest_request_errors,
     audited,
     hangup_cancels,
     {prepare_guest_config, answer_acked}},
    {post,
     "/v1/guests/{name}/secrets",
     handle_forwarded,
     200,
     guest_request_errors,
     audited,
     hangup_cancels,
     {prepare_guest_secret, answer_acked}},
    {post,
     "/v1/guests/{name}/ssh-keys",
     handle_forwarded,
     200,
     ssh_key_errors,
     audited,
     hangup_cancels,
     {prepare_guest_ssh_key, answer_acked}},
    {post,
     "/v1/guests/{name}/mounts",
     handle_forwarded,
     200,
     mount_errors,
     audited,
     hangup_cancels,
     {prepare_guest_mount, answer_acked}},
    // Not cancelled by a hangup: the guest may act on a written shutdown, and the state machine
    // is to hear its answer.
    {post,
     "/v1/guests/{name}/shutdown",
     handle_forwarded,
     202,
     guest_request_errors,
     audited,
     !hangup_cancels,
     {prepare_guest_shutdown, answer_acked}},
    {post, "/v1/guests/{name}/provision", handle_guest_provision, 200, provision_errors, audited},
    {put, "/v1/guests/{name}/provision", handle_guest_set_provision, 200, set_provision_errors,
     audited},
    {patch, "/v1/guests/{name}/provision", handle_guest_supply_values, 200, set_provision_errors,
     audited},
    {get, "/v1/guests/{name}/provision", handle_guest_show_provision, 200, guest_errors},
    {post, "/v1/guests/{name}/reconnect", handle_guest_reconnect, 202, guest_errors, audited},
    {get, "/v1/guests/{name}/wait", handle_guest_wait, 200, wait_errors, !audited, hangup_cancels},
    {get, "/v1/events", handle_events, 200, guest_errors},
    {get, "/metrics", handle_metrics, 200, {}},
};

// A row without a success status or a pattern does not compile, nor an audited read. (Its
// function pointers are checked by api_tests: under the sanitizers, g++ cannot compare a
// function's address in a constant expression.)
constexpr bool table_complete() {
    for (const auto& entry : route_table) {
        if (entry.success < 200 || entry.success > 299 || !entry.pattern.starts_with('/') ||
            (entry.verb == get && entry.audited))
            return false;
    }
    return true;
}
static_assert(table_complete(), "every route needs a 2xx status and a pattern; no read is audited");

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

std::optional<http_response> refusal_for(const route& entry, const peer_access& access,
                                         unsigned version) {
    const bool writes = entry.verb != http::verb::get;
    if (writes ? access.may_write : access.may_read)
        return std::nullopt;
    return error_response(403, "forbidden",
                          writes ? "changing anything needs root, the daemon's user or "
                                   "membership of the API group"
                                 : "reading needs root, the daemon's user or membership "
                                   "of the API group (or the read group)",
                          version);
}

asio::awaitable<api_outcome> run_route(const http_request& request, route_match& match,
                                       const peer_access& access, api_context& context) {
    const route& entry = *match.chosen;
    if (auto refused = refusal_for(entry, access, request.version()))
        co_return std::move(*refused);
    route_call call{request, match, access, context, request.version()};
    auto outcome = co_await entry.handler(call);
    if (const auto* response = std::get_if<http_response>(&outcome))
        flag_if_undeclared(entry, *response, context);
    co_return outcome;
}

}  // namespace stereos::daemon::api

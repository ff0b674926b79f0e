// Requests forwarded to a guest: ping, health, config, secrets, SSH keys, mounts, shutdown.
#include "daemon/api/routes_internal.hpp"

#include <chrono>
#include <string_view>
#include <utility>

#include <boost/json/object.hpp>
#include <boost/json/value_from.hpp>

#include <stereos/protocol/codec.hpp>
#include <stereos/protocol/redact.hpp>
#include "config/config.hpp"
#include "daemon/api/request.hpp"

namespace stereos::daemon::api {

namespace asio = boost::asio;
namespace http = boost::beast::http;
namespace json = boost::json;

namespace {

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

}  // namespace

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

}  // namespace stereos::daemon::api

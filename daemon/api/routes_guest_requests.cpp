// Requests forwarded to a guest: ping, health, config, secrets, SSH keys, mounts, shutdown.
#include "daemon/api/routes_internal.hpp"

#include <chrono>
#include <string_view>
#include <utility>

#include <boost/json/object.hpp>
#include <boost/json/value_from.hpp>

#include <stereos/protocol/codec.hpp>
#include <stereos/protocol/redact.hpp>
#include <stereos/util/completion_tokens.hpp>
#include "config/config.hpp"
#include "daemon/api/request.hpp"

namespace stereos::daemon::api {

namespace asio = boost::asio;
namespace http = boost::beast::http;
namespace json = boost::json;

using transport::use_tuple;

namespace {

// The error response for a guest request that failed, mapped to the API's error codes (see
// error_response); nullopt if the guest answered. An ack with ok:false is the guest's answer:
// guest_error, with its text scrubbed of anything we sent that may be secret.
std::optional<http_response> failure_of(const managed_guest& guest,
                                        const protocol::host_message& message,
                                        boost::system::error_code error,
                                        const protocol::guest_message& reply, unsigned version) {
    if (error == asio::error::operation_aborted) {
        // The client hung up and the request was withdrawn; this answer is never sent.
        return error_response(502, "connection_lost", guest.name() + ": request withdrawn",
                              version);
    }
    if (error) {
        const auto mapping = map_link_error(error);
        return error_response(mapping.status, mapping.code, guest.name() + ": " + error.message(),
                              version);
    }
    if (const auto* ack = std::get_if<protocol::ack_payload>(&reply); ack && !ack->ok) {
        return error_response(502, "guest_error",
                              guest.name() + " refused " +
                                  std::string(protocol::type_name(message)) + ": " +
                                  scrub_guest_error(ack->error, message),
                              version);
    }
    return std::nullopt;
}

// The answer to a request answered by an ack: {"ok":true} once acked. What the guest acked is
// recorded in its delivery ledger (`added_public_key`: the key an ssh-keys request added); the
// message's secrets are wiped either way.
http_response acked_answer(managed_guest& guest, protocol::host_message& message,
                           boost::system::error_code error, const protocol::guest_message& reply,
                           unsigned version, http::status success = http::status::ok,
                           std::string_view added_public_key = {}) {
    auto failure = failure_of(guest, message, error, reply, version);
    if (!failure)
        guest.record_api_delivery(message, added_public_key);
    wipe_secrets(message);
    if (failure)
        return std::move(*failure);
    return json_response(success, json::object{{"ok", true}, {"guest", guest.name()}}, version);
}

// Sent by reference, never copied: built once.
const protocol::host_message& ping_message() {
    static const protocol::host_message ping = protocol::ping_request{};
    return ping;
}
const protocol::host_message& get_health_message() {
    static const protocol::host_message get_health = protocol::get_health_request{};
    return get_health;
}

}  // namespace

asio::awaitable<api_outcome> handle_guest_ping(route_call& call) {
    auto found = guest_of(call);
    if (found.error)
        co_return std::move(*found.error);
    const auto started = std::chrono::steady_clock::now();
    const auto& ping = ping_message();
    auto [error, reply] = co_await found.guest->async_request(ping, use_tuple);
    if (auto failure = failure_of(*found.guest, ping, error, reply, call.version))
        co_return std::move(*failure);
    const auto rtt = std::chrono::duration_cast<std::chrono::microseconds>(
        std::chrono::steady_clock::now() - started);
    co_return ok(json::object{{"guest", call.match.name}, {"rtt_us", rtt.count()}}, call.version);
}

asio::awaitable<api_outcome> handle_guest_health(route_call& call) {
    auto found = guest_of(call);
    if (found.error)
        co_return std::move(*found.error);
    const auto& get_health = get_health_message();
    auto [error, reply] = co_await found.guest->async_request(get_health, use_tuple);
    if (auto failure = failure_of(*found.guest, get_health, error, reply, call.version))
        co_return std::move(*failure);
    if (const auto* health = std::get_if<protocol::health_payload>(&reply))
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
    auto [error, reply] = co_await found.guest->async_request(message, use_tuple);
    co_return acked_answer(*found.guest, message, error, reply, call.version);
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
    auto [error, reply] = co_await found.guest->async_request(message, use_tuple);
    co_return acked_answer(*found.guest, message, error, reply, call.version);
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
    auto [error, reply] = co_await found.guest->async_request(message, use_tuple);
    co_return acked_answer(*found.guest, message, error, reply, call.version, http::status::ok,
                           public_key);
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
    protocol::host_message message = std::move(mount);
    const auto& sending = std::get<protocol::mount_payload>(message);
    found.guest->begin_api_mount(sending);
    const in_flight marked{*found.guest, sending};
    auto [error, reply] = co_await found.guest->async_request(message, use_tuple);
    co_return acked_answer(*found.guest, message, error, reply, call.version);
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
    auto [error, reply] = co_await found.guest->async_request(message, use_tuple);
    co_return acked_answer(*found.guest, message, error, reply, call.version,
                           http::status::accepted);
}

}  // namespace stereos::daemon::api

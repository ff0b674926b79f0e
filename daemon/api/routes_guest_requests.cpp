// Requests forwarded to a guest: ping, health, config, secrets, SSH keys, mounts, shutdown. Each
// route prepares its guest_request and answers from the reply; the session awaits the guest in
// between (handle_forwarded does the same for run_route).
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
// recorded in its delivery ledger (with the key an ssh-keys request added).
http_response acked_answer(route_call& call, guest_request& sent, boost::system::error_code error,
                           const protocol::guest_message& reply) {
    auto failure = failure_of(*sent.guest, sent.message, error, reply, call.version);
    if (!failure)
        sent.guest->record_api_delivery(sent.message, sent.added_public_key);
    wipe_secrets(sent.message);
    if (failure)
        return std::move(*failure);
    return json_response(sent.success, json::object{{"ok", true}, {"guest", sent.guest->name()}},
                         call.version);
}

// The guest of the call's route, for a request of `message`; or the error response.
prepared_request to_guest(route_call& call, protocol::host_message message) {
    auto found = guest_of(call);
    if (found.error)
        return std::move(*found.error);
    return guest_request(std::move(found.guest), std::move(message));
}

}  // namespace

guest_request::guest_request(std::shared_ptr<managed_guest> to, protocol::host_message sent)
    : guest(std::move(to)), message(std::move(sent)), started(std::chrono::steady_clock::now()) {}

guest_request::guest_request(guest_request&& other) noexcept
    : guest(std::move(other.guest)),
      message(std::move(other.message)),
      success(other.success),
      added_public_key(std::move(other.added_public_key)),
      started(other.started),
      marks_mount(std::exchange(other.marks_mount, false)) {}

guest_request::~guest_request() {
    if (marks_mount)
        guest->end_api_mount(std::get<protocol::mount_payload>(message));
    wipe_secrets(message);
}

handler_result handle_forwarded(route_call& call) {
    const auto& forward = call.match.chosen->forward;
    auto prepared = forward.prepare(call);
    if (auto* response = std::get_if<http_response>(&prepared))
        co_return std::move(*response);
    auto& sent = std::get<guest_request>(prepared);
    auto [error, reply] = co_await sent.guest->async_request(sent.message, use_tuple);
    co_return forward.answer(call, sent, error, reply);
}

prepared_request prepare_guest_ping(route_call& call) {
    return to_guest(call, protocol::ping_request{});
}

http_response answer_guest_ping(route_call& call, guest_request& sent,
                                boost::system::error_code error,
                                const protocol::guest_message& reply) {
    if (auto failure = failure_of(*sent.guest, sent.message, error, reply, call.version))
        return std::move(*failure);
    const auto rtt = std::chrono::duration_cast<std::chrono::microseconds>(
        std::chrono::steady_clock::now() - sent.started);
    return ok(json::object{{"guest", call.match.name}, {"rtt_us", rtt.count()}}, call.version);
}

prepared_request prepare_guest_health(route_call& call) {
    return to_guest(call, protocol::get_health_request{});
}

http_response answer_guest_health(route_call& call, guest_request& sent,
                                  boost::system::error_code error,
                                  const protocol::guest_message& reply) {
    if (auto failure = failure_of(*sent.guest, sent.message, error, reply, call.version))
        return std::move(*failure);
    if (const auto* health = std::get_if<protocol::health_payload>(&reply))
        return ok(json::value_from(*health), call.version);
    return error_response(502, "connection_lost", "unexpected reply to get_health", call.version);
}

prepared_request prepare_guest_config(route_call& call) {
    auto found = guest_of(call);
    if (found.error)
        return std::move(*found.error);
    if (call.request.body().empty()) {
        return error_response(400, "bad_request",
                              "body must be the guest's jcard.toml (text/plain or "
                              "application/toml); it is empty",
                              call.version);
    }
    return guest_request(std::move(found.guest), protocol::config_payload{call.request.body()});
}

prepared_request prepare_guest_secret(route_call& call) {
    auto found = guest_of(call);
    if (found.error)
        return std::move(*found.error);
    body_fields body(call.request.body(), false);
    protocol::secret_payload secret;
    secret.name = body.required_string("name");
    secret.value = body.required_string("value");
    secret.mode = body.optional_mode("mode");
    body.check("name", config::check_secret_name(secret.name));
    if (!body.ok())
        return error_response(400, "bad_request", body.problem(), call.version);
    return guest_request(std::move(found.guest), std::move(secret));
}

prepared_request prepare_guest_ssh_key(route_call& call) {
    auto found = guest_of(call);
    if (found.error)
        return std::move(*found.error);
    body_fields body(call.request.body(), false);
    const auto user = body.required_string("user");
    auto public_key = body.required_string("public_key");
    body.check("public_key", config::check_ssh_public_key(public_key));
    if (!body.ok())
        return error_response(400, "bad_request", body.problem(), call.version);
    // stereosd rewrites the user's whole authorized_keys: send this key with the user's others.
    auto request = found.guest->ssh_key_request(user, public_key);
    if (!request) {
        return error_response(
            500, "internal_error",
            call.match.name + ": cannot gather the keys of " + user + ": " + request.error(),
            call.version);
    }
    guest_request sent(std::move(found.guest), std::move(*request));
    sent.added_public_key = std::move(public_key);
    return sent;
}

prepared_request prepare_guest_mount(route_call& call) {
    auto found = guest_of(call);
    if (found.error)
        return std::move(*found.error);
    body_fields body(call.request.body(), false);
    protocol::mount_payload mount;
    mount.tag = body.required_string("tag");
    mount.guest_path = body.required_string("guest_path");
    mount.fs_type = body.required_string("fs_type");
    mount.read_only = body.optional_bool("read_only");
    body.check("guest_path", config::check_mount_guest_path(mount.guest_path));
    body.check("fs_type", config::check_fs_type(mount.fs_type));
    if (!body.ok())
        return error_response(400, "bad_request", body.problem(), call.version);
    // stereosd mounts again on every request, stacking mounts: never repeat one in a run.
    switch (found.guest->plan_mount(mount)) {
        case mount_plan::already_mounted:
            return ok(json::object{{"ok", true},
                                   {"guest", call.match.name},
                                   {"sent", false},
                                   {"message", "already mounted at " + mount.guest_path +
                                                   " in this run of the guest; not sent again"}},
                      call.version);
        case mount_plan::conflict:
            return error_response(409, "mount_conflict",
                                  call.match.name + ": another mount is at " + mount.guest_path +
                                      " in this run of the guest; it stays until the guest "
                                      "reboots",
                                  call.version);
        case mount_plan::send:
            break;
    }
    guest_request sent(std::move(found.guest), std::move(mount));
    // Until the answer (~guest_request): plan_mount() answers conflict for its path meanwhile.
    sent.guest->begin_api_mount(std::get<protocol::mount_payload>(sent.message));
    sent.marks_mount = true;
    return sent;
}

prepared_request prepare_guest_shutdown(route_call& call) {
    auto found = guest_of(call);
    if (found.error)
        return std::move(*found.error);
    body_fields body(call.request.body(), true);
    protocol::shutdown_payload shutdown{body.optional_string("reason")};
    if (!body.ok())
        return error_response(400, "bad_request", body.problem(), call.version);
    guest_request sent(std::move(found.guest), std::move(shutdown));
    sent.success = http::status::accepted;
    return sent;
}

http_response answer_acked(route_call& call, guest_request& sent, boost::system::error_code error,
                           const protocol::guest_message& reply) {
    return acked_answer(call, sent, error, reply);
}

}  // namespace stereos::daemon::api

#include "daemon/api_routes.hpp"

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

#include "config/config.hpp"
#include "daemon/link_error.hpp"
#include "daemon/provisioning.hpp"
#include "protocol/codec.hpp"
#include "protocol/redact.hpp"
#include "transport/completion_tokens.hpp"

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

// ---- targets --------------------------------------------------------------------------------

int hex_value(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

// %XX decoding; '+' means a space in query strings only.
std::optional<std::string> percent_decode(std::string_view text, bool plus_is_space) {
    std::string out;
    out.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '%') {
            if (i + 2 >= text.size())
                return std::nullopt;
            const int high = hex_value(text[i + 1]), low = hex_value(text[i + 2]);
            if (high < 0 || low < 0)
                return std::nullopt;
            out += static_cast<char>(high * 16 + low);
            i += 2;
        } else if (plus_is_space && text[i] == '+') {
            out += ' ';
        } else {
            out += text[i];
        }
    }
    return out;
}

struct parsed_target {
    std::vector<std::string> segments;  // "/v1/guests/vm1" -> v1, guests, vm1
    std::map<std::string, std::string, std::less<>> query;
};

std::optional<parsed_target> parse_target(std::string_view target) {
    if (target.empty() || target.front() != '/')
        return std::nullopt;
    parsed_target out;
    std::string_view path = target, query;
    if (auto q = target.find('?'); q != std::string_view::npos) {
        path = target.substr(0, q);
        query = target.substr(q + 1);
    }
    path.remove_prefix(1);
    while (true) {
        const auto slash = path.find('/');
        auto segment = percent_decode(path.substr(0, slash), false);
        if (!segment)
            return std::nullopt;
        out.segments.push_back(std::move(*segment));
        if (slash == std::string_view::npos)
            break;
        path.remove_prefix(slash + 1);
    }
    while (!query.empty()) {
        const auto amp = query.find('&');
        const auto pair = query.substr(0, amp);
        const auto eq = pair.find('=');
        auto key = percent_decode(pair.substr(0, eq), true);
        auto value = percent_decode(eq == std::string_view::npos ? "" : pair.substr(eq + 1), true);
        if (!key || !value)
            return std::nullopt;
        if (!key->empty())
            out.query.emplace(std::move(*key), std::move(*value));
        if (amp == std::string_view::npos)
            break;
        query.remove_prefix(amp + 1);
    }
    return out;
}

// ---- routes ---------------------------------------------------------------------------------

enum class route {
    ping,
    list_guests,
    add_guest,
    show_guest,
    remove_guest,
    guest_ping,
    guest_health,
    guest_config,
    guest_secret,
    guest_ssh_key,
    guest_mount,
    guest_shutdown,
    guest_provision,
    guest_set_provision,
    guest_reconnect,
    guest_wait,
    events,
    metrics,
};

struct route_entry {
    std::string_view pattern;  // "{name}" matches one segment: the guest's name
    http::verb method;
    route id;
};

constexpr std::array<route_entry, 18> route_table{{
    {"/v1/ping", http::verb::get, route::ping},
    {"/v1/guests", http::verb::get, route::list_guests},
    {"/v1/guests", http::verb::post, route::add_guest},
    {"/v1/guests/{name}", http::verb::get, route::show_guest},
    {"/v1/guests/{name}", http::verb::delete_, route::remove_guest},
    {"/v1/guests/{name}/ping", http::verb::post, route::guest_ping},
    {"/v1/guests/{name}/health", http::verb::get, route::guest_health},
    {"/v1/guests/{name}/config", http::verb::put, route::guest_config},
    {"/v1/guests/{name}/secrets", http::verb::post, route::guest_secret},
    {"/v1/guests/{name}/ssh-keys", http::verb::post, route::guest_ssh_key},
    {"/v1/guests/{name}/mounts", http::verb::post, route::guest_mount},
    {"/v1/guests/{name}/shutdown", http::verb::post, route::guest_shutdown},
    {"/v1/guests/{name}/provision", http::verb::post, route::guest_provision},
    {"/v1/guests/{name}/provision", http::verb::put, route::guest_set_provision},
    {"/v1/guests/{name}/reconnect", http::verb::post, route::guest_reconnect},
    {"/v1/guests/{name}/wait", http::verb::get, route::guest_wait},
    {"/v1/events", http::verb::get, route::events},
    {"/metrics", http::verb::get, route::metrics},
}};

// Whether `segments` match `pattern`; the {name} segment goes to `name`.
bool matches(std::string_view pattern, const std::vector<std::string>& segments,
             std::string& name) {
    pattern.remove_prefix(1);
    std::size_t i = 0;
    while (true) {
        const auto slash = pattern.find('/');
        const auto part = pattern.substr(0, slash);
        if (i >= segments.size())
            return false;
        if (part == "{name}") {
            name = segments[i];
        } else if (part != segments[i]) {
            return false;
        }
        ++i;
        if (slash == std::string_view::npos)
            break;
        pattern.remove_prefix(slash + 1);
    }
    return i == segments.size();
}

// ---- request bodies -------------------------------------------------------------------------

// Reads fields of a JSON object body, keeping the first problem. Messages name fields, never
// values: the body may carry a secret.
class body_fields {
  public:
    body_fields(const http_request& request, bool empty_ok) {
        if (request.body().empty() && empty_ok)
            return;
        boost::system::error_code ec;
        auto value = json::parse(request.body(), ec);
        if (ec) {
            problem_ = "body is not valid JSON: " + ec.message();
        } else if (!value.is_object()) {
            problem_ = "body must be a JSON object";
        } else {
            object_ = std::move(value.get_object());
        }
    }

    std::string required_string(std::string_view key) {
        const auto* v = object_.if_contains(key);
        if (!v) {
            fail("missing field \"" + std::string(key) + "\"");
            return {};
        }
        if (!v->is_string()) {
            fail("field \"" + std::string(key) + "\" must be a string");
            return {};
        }
        if (v->get_string().empty()) {
            fail("field \"" + std::string(key) + "\" must not be empty");
            return {};
        }
        return std::string(v->get_string());
    }

    std::string optional_string(std::string_view key) {
        const auto* v = object_.if_contains(key);
        if (!v || v->is_null())
            return {};
        if (!v->is_string()) {
            fail("field \"" + std::string(key) + "\" must be a string");
            return {};
        }
        return std::string(v->get_string());
    }

    bool optional_bool(std::string_view key) {
        const auto* v = object_.if_contains(key);
        if (!v || v->is_null())
            return false;
        if (!v->is_bool()) {
            fail("field \"" + std::string(key) + "\" must be true or false");
            return false;
        }
        return v->get_bool();
    }

    json::object required_object(std::string_view key) {
        if (!object_.contains(key)) {
            fail("missing field \"" + std::string(key) + "\"");
            return {};
        }
        return optional_object(key);
    }

    json::object optional_object(std::string_view key) {
        const auto* v = object_.if_contains(key);
        if (!v || v->is_null())
            return {};
        if (!v->is_object()) {
            fail("field \"" + std::string(key) + "\" must be an object");
            return {};
        }
        return v->get_object();
    }

    // A file mode: a number (e.g. 384) or an octal string ("0600", "0o600", "600").
    std::uint32_t optional_mode(std::string_view key) {
        const auto* v = object_.if_contains(key);
        if (!v || v->is_null())
            return 0;
        std::int64_t mode = -1;
        if (v->is_int64()) {
            mode = v->get_int64();
        } else if (v->is_uint64()) {
            mode = v->get_uint64() > 07777 ? -1 : static_cast<std::int64_t>(v->get_uint64());
        } else if (v->is_string()) {
            std::string_view text = v->get_string();
            if (text.starts_with("0o"))
                text.remove_prefix(2);
            if (!text.empty() && text.size() <= 5 &&
                std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '7'; }))
                mode = std::stol(std::string(text), nullptr, 8);
        }
        if (mode < 0 || mode > 07777) {
            fail("field \"" + std::string(key) +
                 R"(" must be a file mode: a number up to 4095 or an octal string such as "0600")");
            return 0;
        }
        return static_cast<std::uint32_t>(mode);
    }

    void fail(std::string problem) {
        if (problem_.empty())
            problem_ = std::move(problem);
    }
    bool ok() const noexcept { return problem_.empty(); }
    const std::string& problem() const noexcept { return problem_; }

  private:
    json::object object_;
    std::string problem_;
};

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
    if (error == link_error::guest_unavailable || error == link_error::queue_full)
        return {503, "guest_unavailable"};
    if (error == link_error::request_timeout || error == link_error::keepalive_timeout ||
        error == link_error::guest_unresponsive)
        return {504, "guest_timeout"};
    if (error == link_error::request_too_large)
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
asio::awaitable<guest_reply> call_guest(api_context& context,
                                        const std::shared_ptr<managed_guest>& guest,
                                        const protocol::host_message& message, unsigned version) {
    const auto type = std::string(protocol::type_name(message));
    const auto started = std::chrono::steady_clock::now();
    auto result = co_await guest->request(message);
    const auto latency = std::chrono::steady_clock::now() - started;
    guest_reply out;
    if (!result) {
        const auto mapping = map_link_error(result.error());
        context.metrics.record_request(guest->name(), type, mapping.code, latency);
        out.error = error_response(mapping.status, mapping.code,
                                   guest->name() + ": " + result.error().message(), version);
        co_return out;
    }
    if (const auto* ack = std::get_if<protocol::ack_payload>(&*result); ack && !ack->ok) {
        context.metrics.record_request(guest->name(), type, "guest_error", latency);
        const auto text = scrub_guest_error(ack->error, message);
        out.error = error_response(502, "guest_error",
                                   guest->name() + " refused " + type + ": " + text, version);
        co_return out;
    }
    context.metrics.record_request(guest->name(), type, "ok", latency);
    out.reply = std::move(*result);
    co_return out;
}

// Requests answered by an ack: {"ok":true} once acked.
asio::awaitable<http_response> acked_request(api_context& context,
                                             const std::shared_ptr<managed_guest>& guest,
                                             protocol::host_message& message, unsigned version,
                                             http::status success = http::status::ok) {
    auto outcome = co_await call_guest(context, guest, message, version);
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
asio::awaitable<http_response> provision_and_report(api_context& context,
                                                    const std::shared_ptr<managed_guest>& guest,
                                                    unsigned version) {
    const auto started = std::chrono::steady_clock::now();
    const auto report = co_await guest->provision_now();
    const bool failed = report.state == "failed";
    if (report.state != "needs_values") {
        context.metrics.record_request(guest->name(), "provision", failed ? "guest_error" : "ok",
                                       std::chrono::steady_clock::now() - started);
    }
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
                                     "supply them with PUT /v1/guests/" +
                                     guest->name() + "/provision",
                                 version);
    }
    json::object provision{{"state", report.state}};
    if (!report.step.empty())
        provision["step"] = report.step;
    co_return ok(json::object{{"guest", guest->name()}, {"provision", std::move(provision)}},
                 version);
}

// Host files and credentials only on the word of root or the daemon's user.
provision_caller caller_of(const peer_access& access) {
    return access.may_reference_host ? provision_caller::host_trusted
                                     : provision_caller::values_only;
}

asio::awaitable<api_outcome> handle(route id, const http_request& request,
                                    const parsed_target& target, const std::string& name,
                                    const peer_access& access, api_context& context) {
    const unsigned version = request.version();

    switch (id) {
        case route::ping:
            co_return ok(json::object{{"status", "ok"}, {"version", STEREOS_VERSION}}, version);

        case route::list_guests: {
            json::array guests;
            for (const auto& g : context.registry.all())
                guests.push_back(g->status());
            co_return ok(json::object{{"guests", std::move(guests)}}, version);
        }

        case route::add_guest: {
            body_fields body(request, false);
            auto guest_name = body.required_string("name");
            auto endpoint = body.required_string("endpoint");
            auto provision = body.optional_object("provision");
            if (body.ok()) {
                if (auto valid = config::check_guest_name(guest_name); !valid)
                    body.fail("field \"name\": " + valid.error().message);
            }
            if (!body.ok())
                co_return error_response(400, "bad_request", body.problem(), version);
            auto added =
                context.registry.add_runtime(guest_name, endpoint, provision, caller_of(access));
            if (!added)
                co_return registry_error_response(added.error(), version);
            auto response = json_response(http::status::created, (*added)->status(), version);
            response.set(http::field::location, "/v1/guests/" + guest_name);
            co_return response;
        }

        case route::events: {
            std::string filter;
            if (auto g = target.query.find("guest"); g != target.query.end()) {
                auto found = find_guest(context, g->second, version);
                if (found.error)
                    co_return std::move(*found.error);
                filter = g->second;
            }
            co_return event_stream_request{std::move(filter)};
        }

        case route::metrics: {
            http_response response{http::status::ok, version};
            response.set(http::field::server, server_name);
            response.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
            response.body() = context.metrics.render(context.registry, context.bus);
            response.prepare_payload();
            co_return response;
        }

        default:
            break;
    }

    // Every other route is about one guest.
    auto found = find_guest(context, name, version);
    if (found.error)
        co_return std::move(*found.error);
    auto guest = std::move(found.guest);

    switch (id) {
        case route::show_guest:
            co_return ok(guest->status(), version);

        case route::remove_guest: {
            auto removed = co_await context.registry.async_remove_runtime(name);
            if (!removed) {
                const auto& e = removed.error();
                switch (e.code) {
                    case registry_error::kind::not_found:
                        co_return error_response(404, "guest_not_found", e.message, version);
                    case registry_error::kind::config_guest:
                        co_return error_response(409, "guest_in_config", e.message, version);
                    default:
                        co_return error_response(500, "internal_error", e.message, version);
                }
            }
            co_return ok(json::object{{"removed", name}}, version);
        }

        case route::guest_ping: {
            const auto started = std::chrono::steady_clock::now();
            const protocol::host_message ping = protocol::ping_request{};
            auto outcome = co_await call_guest(context, guest, ping, version);
            if (outcome.error)
                co_return std::move(*outcome.error);
            const auto rtt = std::chrono::duration_cast<std::chrono::microseconds>(
                std::chrono::steady_clock::now() - started);
            co_return ok(json::object{{"guest", name}, {"rtt_us", rtt.count()}}, version);
        }

        case route::guest_health: {
            const protocol::host_message get_health = protocol::get_health_request{};
            auto outcome = co_await call_guest(context, guest, get_health, version);
            if (outcome.error)
                co_return std::move(*outcome.error);
            if (const auto* health = std::get_if<protocol::health_payload>(&*outcome.reply))
                co_return ok(json::value_from(*health), version);
            co_return error_response(502, "connection_lost", "unexpected reply to get_health",
                                     version);
        }

        case route::guest_config: {
            if (request.body().empty()) {
                co_return error_response(400, "bad_request",
                                         "body must be the guest's jcard.toml (text/plain or "
                                         "application/toml); it is empty",
                                         version);
            }
            protocol::host_message message = protocol::config_payload{request.body()};
            co_return co_await acked_request(context, guest, message, version);
        }

        case route::guest_secret: {
            body_fields body(request, false);
            protocol::secret_payload secret;
            secret.name = body.required_string("name");
            secret.value = body.required_string("value");
            secret.mode = body.optional_mode("mode");
            if (auto valid = config::check_secret_name(secret.name); body.ok() && !valid)
                body.fail("field \"name\": " + valid.error().message);
            if (!body.ok())
                co_return error_response(400, "bad_request", body.problem(), version);
            protocol::host_message message = std::move(secret);
            co_return co_await acked_request(context, guest, message, version);
        }

        case route::guest_ssh_key: {
            body_fields body(request, false);
            protocol::ssh_key_payload key;
            key.user = body.required_string("user");
            key.public_key = body.required_string("public_key");
            if (auto valid = config::check_ssh_public_key(key.public_key); body.ok() && !valid)
                body.fail("field \"public_key\": " + valid.error().message);
            if (!body.ok())
                co_return error_response(400, "bad_request", body.problem(), version);
            protocol::host_message message = std::move(key);
            co_return co_await acked_request(context, guest, message, version);
        }

        case route::guest_mount: {
            body_fields body(request, false);
            protocol::mount_payload mount;
            mount.tag = body.required_string("tag");
            mount.guest_path = body.required_string("guest_path");
            mount.fs_type = body.required_string("fs_type");
            mount.read_only = body.optional_bool("read_only");
            if (auto valid = config::check_mount_guest_path(mount.guest_path); body.ok() && !valid)
                body.fail("field \"guest_path\": " + valid.error().message);
            if (auto valid = config::check_fs_type(mount.fs_type); body.ok() && !valid)
                body.fail("field \"fs_type\": " + valid.error().message);
            if (!body.ok())
                co_return error_response(400, "bad_request", body.problem(), version);
            protocol::host_message message = std::move(mount);
            co_return co_await acked_request(context, guest, message, version);
        }

        case route::guest_shutdown: {
            body_fields body(request, true);
            protocol::shutdown_payload shutdown{body.optional_string("reason")};
            if (!body.ok())
                co_return error_response(400, "bad_request", body.problem(), version);
            protocol::host_message message = std::move(shutdown);
            co_return co_await acked_request(context, guest, message, version,
                                             http::status::accepted);
        }

        case route::guest_provision:
            co_return co_await provision_and_report(context, guest, version);

        case route::guest_set_provision: {
            // The body has POST /v1/guests's shape for its provision and the same rules; it may
            // carry secret values, so nothing of it is logged or echoed.
            body_fields body(request, false);
            auto provision = body.required_object("provision");
            if (!body.ok())
                co_return error_response(400, "bad_request", body.problem(), version);
            auto replaced = context.registry.replace_provision(name, provision, caller_of(access));
            if (!replaced)
                co_return registry_error_response(replaced.error(), version);
            // Sent now if the guest is there; otherwise at its next boot.
            if (guest->link().is_up())
                co_return co_await provision_and_report(context, guest, version);
            co_return ok(
                json::object{{"guest", name}, {"provision", json::object{{"state", "pending"}}}},
                version);
        }

        case route::guest_reconnect: {
            // Answered at once: the caller (a VM start hook) must not wait for the guest.
            guest->reconnect();
            co_return json_response(http::status::accepted,
                                    json::object{{"guest", name}, {"reconnecting", true}}, version);
        }

        case route::guest_wait:
            co_return co_await wait_for_state(context, guest, target, version);

        default:
            break;
    }
    co_return error_response(500, "internal_error", "unrouted request", version);
}

}  // namespace

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

asio::awaitable<api_outcome> dispatch(const http_request& request, peer_access access,
                                      api_context& context) {
    const unsigned version = request.version();
    auto target = parse_target(request.target());
    if (!target)
        co_return error_response(400, "bad_request", "malformed request target", version);

    std::string name;
    std::string allowed;
    const route_entry* chosen = nullptr;
    for (const auto& entry : route_table) {
        if (!matches(entry.pattern, target->segments, name))
            continue;
        if (entry.method == request.method()) {
            chosen = &entry;
            break;
        }
        if (!allowed.empty())
            allowed += ", ";
        allowed += http::to_string(entry.method);
    }
    if (!chosen && allowed.empty()) {
        co_return error_response(404, "not_found",
                                 "no such route: " + std::string(request.method_string()) + " " +
                                     std::string(request.target().substr(
                                         0, std::min<std::size_t>(request.target().size(), 200))),
                                 version);
    }
    if (!chosen) {
        auto response = error_response(
            405, "method_not_allowed",
            std::string(request.method_string()) + " is not allowed here; allowed: " + allowed,
            version);
        response.set(http::field::allow, allowed);
        co_return response;
    }
    const bool writes = chosen->method != http::verb::get;
    if (writes ? !access.may_write : !access.may_read) {
        co_return error_response(403, "forbidden",
                                 writes ? "changing anything needs root, the daemon's user or "
                                          "membership of the API group"
                                        : "reading needs root, the daemon's user or membership "
                                          "of the API group (or the read group)",
                                 version);
    }
    co_return co_await handle(chosen->id, request, *target, name, access, context);
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

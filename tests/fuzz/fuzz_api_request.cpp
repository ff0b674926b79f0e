// Fuzz target: the local API's request path without a socket. The raw bytes first go to the pure
// parsers of api_request.hpp on their own (as a request target, as a JSON body), then are parsed
// as one HTTP request with the server's limits, routed by api::dispatch() (JSON bodies decoded
// there) on a daemon core with two configured guests whose endpoints point nowhere.
// Every input runs on its own io_context and registry: the handler gets ~20 ms (guest requests
// have a 10 ms deadline), then the daemon stops, which must end every request and leave no work
// behind within 5 s. A header "x-fuzz-peer: group" (may write, values only), "read" or "none"
// lowers the client's rights.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/beast/http/field.hpp>
#include <boost/json/parse.hpp>
#include <boost/log/core/core.hpp>

#include "config/config.hpp"
#include "daemon/api/metrics.hpp"
#include "daemon/api/request.hpp"
#include "daemon/api/routes.hpp"
#include "daemon/event_bus.hpp"
#include "daemon/guest/guest_registry.hpp"
#include "daemon/guest/state_store.hpp"
#include "tests/fuzz/api_without_socket.hpp"

namespace {

namespace asio = boost::asio;
namespace api = stereos::daemon::api;
namespace hostd = stereos::daemon;
namespace json = boost::json;
using namespace std::chrono_literals;

void check(bool condition, const char* what) {
    if (!condition) {
        std::fprintf(stderr, "fuzz_api_request: invariant broken: %s\n", what);
        std::abort();
    }
}

struct fixture {
    std::filesystem::path state_dir;
    stereos::config::config config;
};

// Built once: a state directory of our own (tmpfs when there is one, since runtime guests are
// persisted with fsync) and a config whose guests can never connect: port 1 on loopback
// refuses at once, the unix socket's directory does not exist.
const fixture& the_fixture() {
    static const fixture f = [] {
        std::filesystem::path base = "/dev/shm";
        if (!std::filesystem::is_directory(base))
            base = std::filesystem::temp_directory_path();
        std::string pattern = (base / "stereos-fuzz-api-XXXXXX").string();
        check(::mkdtemp(pattern.data()) != nullptr, "cannot create a state directory");
        fixture out;
        out.state_dir = pattern;
        std::filesystem::remove(out.state_dir);  // a unique name; each input creates it
        std::string text = R"([daemon]
api_socket = "/nonexistent/stereos-fuzz/api.sock"
state_dir = "@STATE_DIR@"
request_timeout = "10ms"
connect_timeout = "10ms"

[[guest]]
name = "vm1"
endpoint = "tcp:127.0.0.1:1"

[[guest]]
name = "vm2"
endpoint = "unix:/nonexistent/stereos-fuzz/vm2.sock"

[guest.provision]
mounts = [ { tag = "share0", guest_path = "/home/admin/w", fs_type = "virtiofs" } ]
)";
        text.replace(text.find("@STATE_DIR@"), 11, out.state_dir.string());
        auto loaded = stereos::config::load_config_text(text, "fuzz-fixture.toml");
        if (!loaded) {
            std::fprintf(stderr, "%s\n", stereos::config::to_string(loaded.error()).c_str());
            std::abort();
        }
        out.config = std::move(*loaded);
        return out;
    }();
    return f;
}

api::peer_access access_for(const api::http_request& request) {
    const auto peer = request["x-fuzz-peer"];
    if (peer == "none")
        return {false, false, false, std::nullopt};
    if (peer == "read")
        return {true, false, false, std::nullopt};
    if (peer == "group")
        return {true, true, false, std::nullopt};
    return {true, true, true, std::nullopt};
}

// Whether a provision object names a host file or credential for the daemon to read.
bool names_host_reference(const json::value& provision) {
    const auto* object = provision.if_object();
    if (!object)
        return false;
    if (object->contains("config_file"))
        return true;
    for (const auto* list : {"secrets", "ssh_keys"}) {
        const auto* items = object->if_contains(list);
        if (!items || !items->is_array())
            continue;
        for (const auto& item : items->get_array()) {
            const auto* o = item.if_object();
            if (o && (o->contains("file") || o->contains("credential") ||
                      o->contains("public_key_file")))
                return true;
        }
    }
    return false;
}

// A peer that may only send values never gets a guest whose provisioning names host files.
void check_reference_refused(const api::http_request& request, api::peer_access access,
                             const api::http_response& response) {
    if (access.may_reference_host || request.method() == boost::beast::http::verb::get)
        return;
    boost::system::error_code ec;
    const auto body = json::parse(request.body(), ec);
    if (ec || !body.is_object())
        return;
    const auto* provision = body.get_object().if_contains("provision");
    if (!provision || !names_host_reference(*provision))
        return;
    const unsigned status = response.result_int();
    check(status != 200 && status != 201, "a values-only peer named a host file and succeeded");
}

// A response must be well-formed: a known status, JSON bodies that parse, errors in the
// {"error":{"code","message"}} shape.
void check_response(const api::http_response& response) {
    const unsigned status = response.result_int();
    check(status >= 200 && status < 600, "a status outside 200-599");
    const auto type = response[boost::beast::http::field::content_type];
    if (type == "application/json") {
        boost::system::error_code ec;
        const auto body = json::parse(response.body(), ec);
        check(!ec, "a JSON response body does not parse");
        if (status >= 400) {
            const auto* error = body.is_object() ? body.get_object().if_contains("error") : nullptr;
            check(error && error->is_object(), "an error response without an error object");
            const auto* code = error->get_object().if_contains("code");
            const auto* message = error->get_object().if_contains("message");
            check(code && code->is_string() && message && message->is_string(),
                  "an error object without a code and a message");
        }
    }
    check(!api::serialize(response).empty(), "a response serializes to nothing");
}

// The secret values a request body carries (a secret's value, a provision's secrets and
// jcard.toml), those long enough not to occur by chance.
std::vector<std::string> secret_values(const api::http_request& request) {
    std::vector<std::string> values;
    boost::system::error_code ec;
    const auto body = json::parse(request.body(), ec);
    if (ec || !body.is_object())
        return values;
    auto keep = [&](const json::value* value) {
        if (value && value->is_string() && value->get_string().size() >= 16 &&
            request.target().find(value->get_string()) == std::string_view::npos)
            values.emplace_back(value->get_string());  // one in the URL too may well be echoed
    };
    keep(body.get_object().if_contains("value"));
    const auto* provision = body.get_object().if_contains("provision");
    if (!provision || !provision->is_object())
        return values;
    keep(provision->get_object().if_contains("config"));
    if (const auto* secrets = provision->get_object().if_contains("secrets");
        secrets && secrets->is_array()) {
        for (const auto& secret : secrets->get_array()) {
            if (secret.is_object())
                keep(secret.get_object().if_contains("value"));
        }
    }
    return values;
}

// A secret sent in a body never comes back in a response (error texts included), nor rests in
// the state directory.
void check_secrets_kept(const api::http_request& request, const api::http_response& response,
                        const std::filesystem::path& state_dir) {
    const auto values = secret_values(request);
    if (values.empty())
        return;
    std::string at_rest;
    if (std::ifstream in(state_dir / "guests.json", std::ios::binary); in) {
        std::ostringstream text;
        text << in.rdbuf();
        at_rest = text.str();
    }
    for (const auto& secret : values) {
        check(response.body().find(secret) == std::string::npos, "a response echoes a secret");
        check(at_rest.find(secret) == std::string::npos, "a secret value is in the state dir");
    }
}

// The pure parsers on raw bytes: whatever they accept is consistent, and nothing throws.
void check_request_parsers(std::string_view bytes) {
    if (auto decoded = api::percent_decode(bytes, true))
        check(decoded->size() <= bytes.size(), "percent-decoding made text longer");
    if (auto target = api::parse_target(bytes)) {
        check(!bytes.empty() && bytes.front() == '/', "a target not starting with '/' parsed");
        check(!target->segments.empty(), "a parsed target without a segment");
        std::size_t decoded = 0;
        for (const auto& segment : target->segments)
            decoded += segment.size();
        check(decoded <= bytes.size(), "segments longer than the target");
        for (const auto& [key, value] : target->query)
            check(!key.empty(), "an empty query key kept");
        for (const auto& route : api::routes()) {
            std::string name;
            if (api::matches(route.pattern, target->segments, name) &&
                route.pattern.find("{name}") == std::string_view::npos)
                check(name.empty(), "a pattern without {name} set a name");
        }
    }
    api::body_fields body(bytes, true);
    const auto name = body.required_string("name");
    (void)body.optional_string("reason");
    (void)body.optional_bool("read_only");
    (void)body.optional_mode("mode");
    (void)body.optional_object("provision");
    check(!body.ok() || !name.empty(), "a required string accepted while empty");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    // The daemon logs every link failure; the fuzzer's output should stay readable.
    boost::log::core::get()->set_logging_enabled(false);
    (void)the_fixture();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view bytes(reinterpret_cast<const char*>(data), size);
    check_request_parsers(bytes);
    auto parsed = api::parse_request(bytes);
    if (!parsed) {
        check_response(api::parse_error_response(parsed.error()));
        return 0;
    }
    const api::http_request& request = *parsed;
    (void)api::describe(request);

    const auto& f = the_fixture();
    // Each input starts with an empty state directory and removes it when done (libFuzzer
    // exits without running atexit handlers): no runtime guest outlives its input.
    std::error_code ignored;
    std::filesystem::create_directory(f.state_dir, ignored);

    asio::io_context io;
    {
        hostd::event_bus bus;
        hostd::state_store store(f.state_dir);
        hostd::guest_registry registry(io.get_executor(), bus, store);
        hostd::api_metrics metrics(bus);
        api::api_context context{registry, bus, metrics};
        check(registry.start(f.config).empty(), "the fixture's guests do not start");
        const auto subscribers_before = bus.subscribers();

        std::optional<api::api_outcome> outcome;
        std::exception_ptr failure;
        bool handled = false;
        asio::co_spawn(io, api::dispatch(request, access_for(request), context),
                       [&](std::exception_ptr e, api::api_outcome o) {
                           handled = true;
                           failure = e;
                           if (!e)
                               outcome = std::move(o);
                       });
        const auto run_until = [&io](const bool& flag, std::chrono::steady_clock::duration limit) {
            const auto deadline = std::chrono::steady_clock::now() + limit;
            while (!flag && !io.stopped() && std::chrono::steady_clock::now() < deadline)
                io.run_one_until(deadline);
        };
        run_until(handled, 20ms);

        // Cut off: stop the daemon as it would on SIGTERM. Long-polls must end, guest requests
        // fail, every link and timer finish.
        context.stopping = true;
        // The server's long-polls notice a stop at their 1 s tick; an event per guest wakes them
        // now, so each input stays fast.
        for (const auto& guest : registry.all())
            bus.publish(guest->name(), "fuzz", json::object{{"stopping", true}});
        bool stopped = false;
        std::exception_ptr stop_failure;
        asio::co_spawn(io, registry.async_stop_all(), [&](std::exception_ptr e) {
            stopped = true;
            stop_failure = e;
        });
        const auto all_done = [&] { return handled && stopped; };
        const auto deadline = std::chrono::steady_clock::now() + 5s;
        while (!all_done() && !io.stopped() && std::chrono::steady_clock::now() < deadline)
            io.run_one_until(deadline);
        check(handled, "a request did not finish within 5 s of the daemon stopping");
        check(stopped, "the registry did not stop within 5 s");
        if (failure)
            std::rethrow_exception(failure);  // dispatch() must never throw
        if (stop_failure)
            std::rethrow_exception(stop_failure);
        // Nothing may be left running on the executor once everything stopped.
        io.run_for(5s);
        check(io.stopped(), "work is left on the io_context after the daemon stopped");
        check(bus.subscribers() == subscribers_before,
              "an event subscription outlived its request");

        if (auto* response = std::get_if<api::http_response>(&*outcome)) {
            check_response(*response);
            check_secrets_kept(request, *response, f.state_dir);
            check_reference_refused(request, access_for(request), *response);
        } else {
            const auto& stream = std::get<api::event_stream_request>(*outcome);
            check(request.method() == boost::beast::http::verb::get, "an event stream not by GET");
            check(stream.guest_filter.empty() ||
                      stereos::config::check_guest_name(stream.guest_filter).has_value(),
                  "an event stream for an invalid guest name");
        }
    }
    std::filesystem::remove_all(f.state_dir, ignored);
    return 0;
}

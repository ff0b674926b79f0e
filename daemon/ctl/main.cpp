// stereosctl: the command-line client of stereos-hostd's local API.
// Exit codes: 0 ok, 1 request failed, 2 usage, 3 daemon unreachable, 4 timeout.
#include <unistd.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <sstream>

#include <CLI/CLI.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include "config/input_rules.hpp"
#include "daemon/ctl/api_client.hpp"
#include "daemon/ctl/event_format.hpp"

namespace json = boost::json;
namespace http = boost::beast::http;
using namespace stereos::ctl;

namespace {

enum exit_code : int {
    exit_ok = 0,
    exit_failed = 1,
    exit_usage = 2,
    exit_unreachable = 3,
    exit_timeout = 4
};

struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct global_options {
    std::string socket;
    bool json_output = false;
};

std::string percent_encode(std::string_view text) {
    static constexpr std::string_view digits = "0123456789ABCDEF";
    std::string out;
    for (unsigned char c : text) {
        if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
            out += static_cast<char>(c);
        } else {
            out += '%';
            out += digits[c >> 4];
            out += digits[c & 15];
        }
    }
    return out;
}

std::string read_all(std::istream& in) {
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A file's content, or stdin's for "-".
std::string read_source(const std::string& path) {
    if (path == "-")
        return read_all(std::cin);
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw usage_error("cannot read " + path);
    return read_all(in);
}

// A provision object from a file, checked against the guest's input rules before it is sent.
// Messages name fields, never values: the file may hold secrets.
json::object read_provision_file(const std::string& path) {
    boost::system::error_code ec;
    auto text = read_source(path);
    auto value = json::parse(text, ec);
    std::fill(text.begin(), text.end(), '\0');
    if (ec || !value.is_object())
        throw usage_error(path + " is not a JSON object");
    auto problems = stereos::config::provision_rule_violations(value.get_object());
    if (!problems.empty()) {
        std::string message = path + ":";
        for (const auto& p : problems)
            message += "\n  " + p;
        throw usage_error(message);
    }
    return std::move(value.get_object());
}

std::string trim(std::string text) {
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back())))
        text.pop_back();
    auto start = text.find_first_not_of(" \t\r\n");
    return start == std::string::npos ? std::string() : text.substr(start);
}

std::string text_of(const json::value& v) {
    if (v.is_string())
        return std::string(v.get_string());
    if (v.is_null())
        return "-";
    return json::serialize(v);
}

std::string field(const json::object& o, std::string_view key) {
    const auto* v = o.if_contains(key);
    return v ? text_of(*v) : "-";
}

class command_runner {
  public:
    explicit command_runner(global_options options)
        : options_(std::move(options)), client_(options_.socket) {}

    // Sends a request; on success returns the JSON body, else reports the error and sets the
    // exit code to use.
    std::optional<json::value> call(http::verb method, const std::string& target,
                                    const std::string& body = {},
                                    std::string_view content_type = "application/json") {
        auto response = client_.request(method, target, body, content_type);
        return handle(response);
    }

    std::optional<json::value> handle(const api_response& response) {
        boost::system::error_code ec;
        auto parsed = json::parse(response.body, ec);
        if (response.status >= 200 && response.status < 300) {
            if (ec)
                parsed = json::value(response.body);
            return parsed;
        }
        std::string code = "http_" + std::to_string(response.status);
        std::string message = trim(response.body);
        if (!ec && parsed.is_object()) {
            if (const auto* error = parsed.get_object().if_contains("error");
                error && error->is_object()) {
                code = field(error->get_object(), "code");
                message = field(error->get_object(), "message");
            }
        }
        if (options_.json_output)
            std::cout << trim(response.body) << "\n";
        std::cerr << "stereosctl: " << message << " (" << code << ")\n";
        exit_ = (code == "guest_timeout" || code == "wait_timeout") ? exit_timeout : exit_failed;
        return std::nullopt;
    }

    // --json prints the daemon's answer as is; humans get `render`.
    template <class Render>
    int print(const std::optional<json::value>& value, Render render) {
        if (!value)
            return exit_;
        if (options_.json_output) {
            std::cout << json::serialize(*value) << "\n";
        } else {
            render(*value);
        }
        return exit_ok;
    }

    api_client& client() noexcept { return client_; }
    bool json_output() const noexcept { return options_.json_output; }

  private:
    global_options options_;
    api_client client_;
    int exit_ = exit_failed;
};

void print_status(const json::object& s) {
    std::cout << "name:        " << field(s, "name") << "\n"
              << "endpoint:    " << field(s, "endpoint") << " (" << field(s, "source") << ")\n"
              << "state:       " << field(s, "state");
    if (auto reason = field(s, "reason"); reason != "-" && !reason.empty())
        std::cout << " (" << reason << ")";
    std::cout << " since " << field(s, "since") << "\n";
    if (const auto* link = s.if_contains("link"); link && link->is_object()) {
        const auto& l = link->get_object();
        std::cout << "link:        " << (field(l, "up") == "true" ? "up" : "down") << ", "
                  << field(l, "connects") << " connects";
        if (auto e = field(l, "last_error"); e != "-" && !e.empty())
            std::cout << ", last error: " << e;
        std::cout << "\n";
    }
    if (const auto* up = s.if_contains("uptime_seconds"); up && up->is_int64())
        std::cout << "uptime:      " << format_seconds(up->get_int64()) << "\n";
    if (const auto* p = s.if_contains("provision"); p && p->is_object()) {
        const auto& prov = p->get_object();
        std::cout << "provision:   " << field(prov, "state");
        if (prov.contains("step"))
            std::cout << " at " << field(prov, "step");
        if (prov.contains("error"))
            std::cout << ": " << field(prov, "error");
        if (prov.contains("sent"))
            std::cout << " (last run: " << field(prov, "sent") << " sent, "
                      << field(prov, "already") << " already delivered)";
        if (const auto* missing = prov.if_contains("missing"); missing && missing->is_array()) {
            std::cout << " (missing:";
            for (const auto& m : missing->get_array())
                std::cout << " " << text_of(m);
            std::cout << ")";
        }
        std::cout << "\n";
        if (prov.contains("message"))
            std::cout << "             " << field(prov, "message") << "\n";
    }
    // What this run of the guest has been given: digests only, never values.
    if (const auto* l = s.if_contains("ledger"); l && l->is_object()) {
        const auto& ledger = l->get_object();
        std::cout << "run:         ";
        if (const auto* run = ledger.if_contains("run"); run && run->is_object()) {
            const auto& r = run->get_object();
            std::cout << "started " << field(r, "started") << ", host boot "
                      << field(r, "boot_id").substr(0, 8)
                      << (field(r, "this_host_boot") == "true" ? "" : " (an earlier host boot)");
        } else {
            std::cout << "not seen yet";
        }
        std::cout << "\n";
        if (const auto* items = ledger.if_contains("items");
            items && items->is_array() && !items->get_array().empty()) {
            std::vector<std::vector<std::string>> rows{
                {"  ITEM", "STATE", "DIGEST", "DELIVERED", "ORIGIN"}};
            for (const auto& item : items->get_array()) {
                const auto& o = item.get_object();
                rows.push_back({"  " + field(o, "item"), field(o, "state"), field(o, "digest"),
                                field(o, "at"), field(o, "origin")});
            }
            std::cout << "delivered in this run:\n" << format_table(rows);
        }
    }
    if (const auto* a = s.if_contains("agents"); a && a->is_array() && !a->get_array().empty()) {
        std::vector<std::vector<std::string>> rows{{"  AGENT", "RUNNING", "RESTARTS", "ERROR"}};
        for (const auto& agent : a->get_array()) {
            const auto& o = agent.get_object();
            rows.push_back({"  " + field(o, "name"), field(o, "running"), field(o, "restarts"),
                            o.contains("error") ? field(o, "error") : ""});
        }
        std::cout << "agents:\n" << format_table(rows);
    }
    if (const auto* t = s.if_contains("transitions"); t && t->is_array()) {
        const auto& list = t->get_array();
        std::cout << "recent transitions:\n";
        const std::size_t first = list.size() > 5 ? list.size() - 5 : 0;
        for (std::size_t i = first; i < list.size(); ++i) {
            const auto& o = list[i].get_object();
            std::cout << "  " << field(o, "at") << "  " << field(o, "from") << " -> "
                      << field(o, "to") << " (" << field(o, "reason") << ")\n";
        }
    }
}

// The daemon's own status (GET /v1/ping).
void print_daemon_status(const json::value& value) {
    const auto& s = value.as_object();
    std::cout << "daemon:          " << field(s, "status") << ", stereos-hostd "
              << field(s, "version") << "\n";
    const auto* at_rest = s.if_contains("values_at_rest");
    if (!at_rest || !at_rest->is_object())
        return;
    const auto& a = at_rest->get_object();
    std::cout << "values at rest:  " << field(a, "mode");
    if (field(a, "mode") == "sealed")
        std::cout << " in the state directory (key id " << field(a, "key_id") << ")";
    else
        std::cout << " only, lost at a daemon restart: " << field(a, "reason");
    std::cout << "\n";
}

void print_guest_table(const json::value& value) {
    std::vector<std::vector<std::string>> rows{
        {"NAME", "STATE", "LINK", "UPTIME", "PROVISION", "SOURCE", "ENDPOINT"}};
    for (const auto& g : value.at("guests").as_array()) {
        const auto& s = g.as_object();
        std::string link = "-";
        if (const auto* l = s.if_contains("link"); l && l->is_object())
            link = field(l->get_object(), "up") == "true" ? "up" : "down";
        std::string uptime = "-";
        if (const auto* up = s.if_contains("uptime_seconds"); up && up->is_int64())
            uptime = format_seconds(up->get_int64());
        std::string provision = "-";
        if (const auto* p = s.if_contains("provision"); p && p->is_object())
            provision = field(p->get_object(), "state");
        rows.push_back({field(s, "name"), field(s, "state"), link, uptime, provision,
                        field(s, "source"), field(s, "endpoint")});
    }
    std::cout << format_table(rows);
}

int run_stereosctl(int argc, char** argv) {
    CLI::App app{"stereosctl: talk to stereos-hostd, the StereOS host daemon"};
    app.require_subcommand(1);
    global_options options;
    const char* env_socket = std::getenv("STEREOS_HOSTD_SOCKET");
    options.socket = env_socket && *env_socket ? env_socket : std::string(default_socket_path);
    app.add_option("--socket", options.socket,
                   "API socket (default: $STEREOS_HOSTD_SOCKET, else " +
                       std::string(default_socket_path) + ")");
    app.add_flag("--json", options.json_output, "print the daemon's JSON answers as they are");
    app.set_version_flag("--version", "stereosctl " STEREOS_VERSION);

    std::string name, arg1, arg2, arg3, from_file, mode, fs_type = "9p", reason, timeout = "30s";
    bool read_only = false;
    auto* ls = app.add_subcommand("ls", "list guests");
    auto* status = app.add_subcommand(
        "status", "show a guest's status, or without NAME the daemon's (version, values at rest)");
    auto* health = app.add_subcommand("health", "ask a guest for its health now");
    auto* ping = app.add_subcommand("ping", "ping a guest");
    status->add_option("NAME", name, "guest name");
    for (auto* sub : {health, ping})
        sub->add_option("NAME", name, "guest name")->required();
    auto* add = app.add_subcommand("add", "add a guest at run time (kept across restarts)");
    add->add_option("NAME", name)->required();
    add->add_option("ENDPOINT", arg1,
                    "vsock:CID[:PORT], tcp:HOST:PORT, unix:PATH, hybrid:PATH:PORT")
        ->required();
    add->add_option("--provision", from_file, "JSON file with the guest's provision object");
    auto* rm = app.add_subcommand("rm", "remove a guest added at run time");
    rm->add_option("NAME", name)->required();
    auto* config = app.add_subcommand("config", "send a jcard.toml to a guest (set_config)");
    config->add_option("NAME", name)->required();
    config->add_option("FILE", arg1, "the jcard.toml, or - for stdin")->required();
    auto* secret = app.add_subcommand(
        "secret", "inject a secret; the value is read from stdin (as is) or --from-file");
    secret->add_option("NAME", name)->required();
    secret->add_option("SECRET_NAME", arg1, "file name of the secret in the guest")->required();
    secret->add_option("--from-file", from_file, "read the value from this file");
    secret->add_option("--mode", mode, "file mode in the guest, e.g. 0600");
    auto* ssh_key = app.add_subcommand("ssh-key", "install an SSH public key for a user");
    ssh_key->add_option("NAME", name)->required();
    ssh_key->add_option("USER", arg1)->required();
    ssh_key->add_option("KEYFILE", arg2, "public key file, or - for stdin")->required();
    auto* mount = app.add_subcommand("mount", "mount a host share in a guest");
    mount->add_option("NAME", name)->required();
    mount->add_option("TAG", arg1)->required();
    mount->add_option("PATH", arg2, "absolute path in the guest")->required();
    mount->add_option("--fs", fs_type, "9p or virtiofs (default 9p)")
        ->check(CLI::IsMember({"9p", "virtiofs"}));
    mount->add_flag("--ro", read_only, "read-only");
    auto* shutdown = app.add_subcommand("shutdown", "power a guest off");
    shutdown->add_option("NAME", name)->required();
    shutdown->add_option("--reason", reason);
    auto* provision =
        app.add_subcommand("provision",
                           "run a guest's provisioning again now, or with --set replace a runtime "
                           "guest's provisioning "
                           "(e.g. its values again after a daemon restart) and run it");
    provision->add_option("NAME", name)->required();
    auto* set_option = provision->add_option(
        "--set", from_file,
        "JSON file (or - for stdin) with the provision object; its values are kept in the "
        "daemon's memory, and on disk only sealed (see status)");
    std::string values_file;
    provision
        ->add_option("--values", values_file,
                     "JSON file (or - for stdin) with only the values: {\"config\": ..., "
                     "\"secrets\": [{\"name\": ..., \"value\": ...}]}; the rest of the "
                     "provisioning stays")
        ->excludes(set_option);
    bool show_provision = false;
    provision
        ->add_flag("--show", show_provision,
                   "print the provisioning as the daemon holds it, values redacted")
        ->excludes(set_option);
    auto* reconnect = app.add_subcommand(
        "reconnect", "reconnect to a guest now and retry fast (for a hook when its VM starts)");
    reconnect->add_option("NAME", name)->required();
    auto* wait = app.add_subcommand("wait", "wait until a guest is in a state (or a better one)");
    wait->add_option("NAME", name)->required();
    wait->add_option("STATE", arg1, "e.g. ready (healthy counts as ready)")->required();
    wait->add_option("--timeout", timeout, "give up after this long, e.g. 30s, 5m (default 30s)");
    auto* events = app.add_subcommand("events", "follow events, one line each");
    events->add_option("NAME", name, "only this guest's events");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        const int code = app.exit(e);
        return code == 0 ? exit_ok : exit_usage;
    }

    const std::string guest_path = "/v1/guests/" + percent_encode(name);
    try {
        command_runner run(options);
        auto acked = [&](const std::optional<json::value>& v, const std::string& what) {
            return run.print(v, [&](const json::value&) { std::cout << what << "\n"; });
        };

        if (ls->parsed())
            return run.print(run.call(http::verb::get, "/v1/guests"), print_guest_table);
        if (status->parsed() && name.empty())
            return run.print(run.call(http::verb::get, "/v1/ping"), print_daemon_status);
        if (status->parsed()) {
            return run.print(run.call(http::verb::get, guest_path),
                             [](const json::value& v) { print_status(v.as_object()); });
        }
        if (health->parsed()) {
            return run.print(
                run.call(http::verb::get, guest_path + "/health"), [&](const json::value& v) {
                    const auto& h = v.as_object();
                    std::cout << name << ": " << field(h, "state") << ", up ";
                    const auto* up = h.if_contains("uptime_seconds");
                    std::cout << (up && up->is_int64() ? format_seconds(up->get_int64()) : "-")
                              << "\n";
                    const auto* a = h.if_contains("agents");
                    if (a && a->is_array() && !a->get_array().empty()) {
                        std::vector<std::vector<std::string>> rows{
                            {"AGENT", "RUNNING", "RESTARTS", "SESSION", "ERROR"}};
                        for (const auto& agent : a->get_array()) {
                            const auto& o = agent.as_object();
                            rows.push_back({field(o, "name"), field(o, "running"),
                                            field(o, "restarts"),
                                            o.contains("session") ? field(o, "session") : "",
                                            o.contains("error") ? field(o, "error") : ""});
                        }
                        std::cout << format_table(rows);
                    }
                });
        }
        if (ping->parsed()) {
            return run.print(run.call(http::verb::post, guest_path + "/ping"),
                             [&](const json::value& v) {
                                 const auto us = v.at("rtt_us").to_number<double>();
                                 std::array<char, 64> text{};
                                 std::snprintf(text.data(), text.size(), "%.3f ms", us / 1000.0);
                                 std::cout << "pong from " << name << " in " << text.data() << "\n";
                             });
        }
        if (add->parsed()) {
            if (auto valid = stereos::config::check_endpoint(arg1); !valid)
                throw usage_error("ENDPOINT: " + valid.error().message);
            json::object body{{"name", name}, {"endpoint", arg1}};
            if (!from_file.empty())
                body["provision"] = read_provision_file(from_file);
            return run.print(run.call(http::verb::post, "/v1/guests", json::serialize(body)),
                             [&](const json::value& v) {
                                 std::cout << "added " << name << " ("
                                           << field(v.as_object(), "state") << ")\n";
                             });
        }
        if (rm->parsed())
            return acked(run.call(http::verb::delete_, guest_path), "removed " + name);
        if (config->parsed()) {
            auto text = read_source(arg1);
            return acked(
                run.call(http::verb::put, guest_path + "/config", text, "application/toml"),
                "config sent to " + name);
        }
        if (secret->parsed()) {
            if (auto valid = stereos::config::check_secret_name(arg1); !valid)
                throw usage_error("SECRET_NAME: " + valid.error().message);
            // Never from argv, where ps would show it.
            std::string value;
            if (!from_file.empty()) {
                value = read_source(from_file);
            } else {
                if (::isatty(STDIN_FILENO))
                    std::cerr << "value of " << arg1 << " (end with Ctrl-D): " << std::flush;
                value = read_all(std::cin);
            }
            if (value.empty())
                throw usage_error("the secret's value is empty (give it on stdin or --from-file)");
            json::object body{{"name", arg1}, {"value", value}};
            if (!mode.empty())
                body["mode"] = mode;
            auto text = json::serialize(body);
            std::fill(value.begin(), value.end(), '\0');
            body = {};
            auto result = run.call(http::verb::post, guest_path + "/secrets", text);
            std::fill(text.begin(), text.end(), '\0');
            return acked(result, "secret " + arg1 + " sent to " + name);
        }
        if (ssh_key->parsed()) {
            auto public_key = trim(read_source(arg2));
            if (auto valid = stereos::config::check_ssh_public_key(public_key); !valid)
                throw usage_error(arg2 + ": the public key " + valid.error().message);
            json::object body{{"user", arg1}, {"public_key", public_key}};
            return acked(
                run.call(http::verb::post, guest_path + "/ssh-keys", json::serialize(body)),
                "key installed for " + arg1 + " on " + name);
        }
        if (mount->parsed()) {
            if (auto valid = stereos::config::check_mount_guest_path(arg2); !valid)
                throw usage_error("PATH: " + valid.error().message);
            json::object body{{"tag", arg1},
                              {"guest_path", arg2},
                              {"fs_type", fs_type},
                              {"read_only", read_only}};
            return acked(run.call(http::verb::post, guest_path + "/mounts", json::serialize(body)),
                         arg1 + " mounted at " + arg2 + " on " + name);
        }
        if (shutdown->parsed()) {
            json::object body;
            if (!reason.empty())
                body["reason"] = reason;
            return acked(
                run.call(http::verb::post, guest_path + "/shutdown", json::serialize(body)),
                name + " is shutting down");
        }
        if (provision->parsed() && show_provision) {
            return run.print(run.call(http::verb::get, guest_path + "/provision"),
                             [&](const json::value& v) {
                                 std::cout << json::serialize(v.at("provision")) << "\n";
                                 const auto& missing = v.at("missing").as_array();
                                 if (!missing.empty())
                                     std::cout << "missing: " << json::serialize(missing) << "\n";
                             });
        }
        if (provision->parsed() && !values_file.empty()) {
            auto text = read_source(values_file);
            boost::system::error_code ec;
            auto values = json::parse(text, ec);
            std::fill(text.begin(), text.end(), '\0');
            if (ec || !values.is_object())
                throw usage_error(values_file + " is not a JSON object");
            auto body = json::serialize(json::object{{"values", std::move(values)}});
            auto result = run.call(http::verb::patch, guest_path + "/provision", body);
            std::fill(body.begin(), body.end(), '\0');
            return run.print(result, [&](const json::value& v) {
                std::cout << name << ": values supplied, provisioning "
                          << field(v.at("provision").as_object(), "state") << "\n";
            });
        }
        if (provision->parsed() && !from_file.empty()) {
            json::object body{{"provision", read_provision_file(from_file)}};
            auto text = json::serialize(body);
            body = {};
            auto result = run.call(http::verb::put, guest_path + "/provision", text);
            std::fill(text.begin(), text.end(), '\0');
            return run.print(result, [&](const json::value& v) {
                std::cout << name << ": provisioning set, "
                          << field(v.at("provision").as_object(), "state") << "\n";
            });
        }
        if (provision->parsed()) {
            return run.print(run.call(http::verb::post, guest_path + "/provision"),
                             [&](const json::value& v) {
                                 std::cout << name << ": provisioning "
                                           << field(v.at("provision").as_object(), "state") << "\n";
                             });
        }
        if (reconnect->parsed()) {
            return run.print(run.call(http::verb::post, guest_path + "/reconnect"),
                             [&](const json::value&) { std::cout << name << ": reconnecting\n"; });
        }
        if (wait->parsed()) {
            const auto target = guest_path + "/wait?state=" + percent_encode(arg1) +
                                "&timeout=" + percent_encode(timeout);
            return run.print(run.call(http::verb::get, target), [&](const json::value& v) {
                std::cout << name << " is " << field(v.as_object(), "state") << "\n";
            });
        }
        if (events->parsed()) {
            std::string target = "/v1/events";
            if (!name.empty())
                target += "?guest=" + percent_encode(name);
            bool overflowed = false;
            auto response = run.client().stream_lines(target, [&](std::string_view line) {
                if (line.empty())
                    return;
                boost::system::error_code ec;
                auto event = json::parse(line, ec);
                if (!ec && event.is_object() && field(event.as_object(), "kind") == "overflow")
                    overflowed = true;
                if (run.json_output() || ec || !event.is_object()) {
                    std::cout << line << "\n";
                } else {
                    std::cout << format_event(event.as_object()) << "\n";
                }
                std::cout.flush();
            });
            if (response.status != 200) {
                run.handle(response);
                return exit_failed;
            }
            if (overflowed) {
                std::cerr << "stereosctl: the daemon cut this stream off because it fell behind; "
                             "events were lost\n";
                return exit_failed;
            }
            return exit_ok;
        }
    } catch (const unreachable_error& e) {
        std::cerr << "stereosctl: " << e.what() << "\n";
        return exit_unreachable;
    } catch (const usage_error& e) {
        std::cerr << "stereosctl: " << e.what() << "\n";
        return exit_usage;
    } catch (const std::exception& e) {
        std::cerr << "stereosctl: " << e.what() << "\n";
        return exit_failed;
    }
    return exit_usage;
}

}  // namespace

int main(int argc, char** argv) {
    // Building the command line can throw too (allocation, CLI11 construction errors).
    try {
        return run_stereosctl(argc, argv);
    } catch (const std::exception& e) {
        std::cerr << "stereosctl: " << e.what() << "\n";
    } catch (...) {
        std::cerr << "stereosctl: unexpected failure\n";
    }
    return exit_failed;
}

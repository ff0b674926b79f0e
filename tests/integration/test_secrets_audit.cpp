// Secrets audit: distinctive secret values go in through every path (the API secret route, PUT
// config with a [secrets] section, provisioning from a credential and a file, stereosctl), also
// down the failure paths (a refusing guest, a guest echoing them back, a silent or unreachable
// guest, malformed requests, a bad config); then everything the daemon wrote is searched for them.
// The daemon has a seal key, so runtime guests' values are also sealed into the state directory
// and opened by a second daemon on it: neither leaves a value in a log or a state file.

#include <array>
#include <csignal>
#include <filesystem>
#include <future>
#include <random>
#include <set>
#include <string_view>
#include <thread>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include "tests/fakeguest/fake_guest.hpp"
#include "tests/integration/api/api_test_support.hpp"
#include "tests/support/fake_fd_store.hpp"

namespace asio = boost::asio;
namespace json = boost::json;
using namespace stereos::api_test;
using stereos::testing::event_capture;

namespace {

// A value no output could contain by chance. The random core is what the search looks for, so
// a value cut short or escaped (JSON, Go's \u003c) is caught too. The tail has the characters
// JSON and Go escape; none needs escaping in a TOML literal string.
struct secret_value {
    std::string label;
    std::string core;
    std::string value;
};

secret_value make_secret(const std::string& label) {
    static std::mt19937_64 random{std::random_device{}()};
    constexpr std::string_view hex = "0123456789abcdef";
    std::string core;
    for (int i = 0; i < 24; ++i)
        core += hex[random() % 16];
    return {label, core, "sk-" + label + "-" + core + "-\"<&>\\ end"};
}

std::string json_string(const std::string& text) {
    return json::serialize(json::value(text));
}

std::string base64(const std::string& bytes) {
    constexpr std::string_view alphabet =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    std::size_t i = 0;
    for (; i + 2 < bytes.size(); i += 3) {
        const unsigned n = static_cast<unsigned char>(bytes[i]) << 16 |
                           static_cast<unsigned char>(bytes[i + 1]) << 8 |
                           static_cast<unsigned char>(bytes[i + 2]);
        for (int shift : {18, 12, 6, 0})
            out += alphabet[(n >> shift) & 63];
    }
    if (i < bytes.size()) {
        unsigned n = static_cast<unsigned char>(bytes[i]) << 16;
        if (i + 1 < bytes.size())
            n |= static_cast<unsigned char>(bytes[i + 1]) << 8;
        out += alphabet[(n >> 18) & 63];
        out += alphabet[(n >> 12) & 63];
        out += i + 1 < bytes.size() ? alphabet[(n >> 6) & 63] : '=';
        out += '=';
    }
    return out;
}

// The forms a value could take in an output: its random core (inside the raw, JSON- or
// Go-escaped and truncated forms), and base64 at each of the three byte alignments, without
// the edge characters that depend on the neighbouring bytes.
std::vector<std::string> forms_of(const secret_value& secret) {
    std::vector<std::string> forms{secret.core};
    for (std::size_t shift = 0; shift < 3; ++shift) {
        const auto encoded = base64(std::string(shift, 'x') + secret.value + "y");
        forms.push_back(encoded.substr(4, encoded.size() - 8));
    }
    return forms;
}

// Every output gathered under a name, so a failure says where the value was found.
struct outputs {
    std::vector<std::pair<std::string, std::string>> items;
    void add(std::string where, std::string text) {
        items.emplace_back(std::move(where), std::move(text));
    }
    void add(const std::string& where, const http_answer& answer) {
        std::string text = std::to_string(answer.status) + "\n";
        for (const auto& [name, value] : answer.headers)
            text.append(name).append(": ").append(value).append("\n");
        text += answer.body;
        add(where, std::move(text));
    }
    void add(const std::string& where, const command_result& result) {
        add(where + " (stdout)", result.out);
        add(where + " (stderr)", result.err);
    }
};

// A guest that refuses what it is sent and quotes it back in its error text, as a compromised
// guest might. It runs in this process on its own io_context thread.
class echoing_guest {
  public:
    echoing_guest() : guest_(io_.get_executor()) { endpoint_ = guest_.listen_tcp(); }
    ~echoing_guest() {
        try {
            finish();
        } catch (...) {
            // A destructor must not throw; the test that used the guest has already failed or
            // collected what it needed.
        }
    }

    stereos::testing::fake_guest& guest() { return guest_; }  // before start() only
    const std::string& endpoint() const { return endpoint_; }
    void start() {
        thread_ = std::thread([this] { io_.run(); });
    }
    // Stops the guest and its thread; returns every line it received.
    std::vector<std::string> finish() {
        if (thread_.joinable()) {
            asio::post(io_, [this] { guest_.stop(); });
            thread_.join();
            received_ = guest_.received_texts();
        }
        return received_;
    }

  private:
    asio::io_context io_;
    stereos::testing::fake_guest guest_;
    std::string endpoint_;
    std::thread thread_;
    std::vector<std::string> received_;
};

stereos::protocol::ack_payload refusal(std::string reply_to, std::string text) {
    return {std::move(reply_to), false, std::move(text)};
}

json::object status_of(const std::string& socket, const std::string& guest) {
    auto answer = get(socket, "/v1/guests/" + guest);
    BOOST_TEST_REQUIRE(answer.status == 200u, answer.body);
    return answer.json().as_object();
}

std::string provision_state(const std::string& socket, const std::string& guest) {
    const auto status = status_of(socket, guest);
    return std::string(status.at("provision").as_object().at("state").as_string());
}

std::string read_tree(const std::filesystem::path& root, std::vector<std::string>& names) {
    std::string all;
    std::error_code ec;
    for (const auto& entry : std::filesystem::recursive_directory_iterator(root, ec)) {
        names.push_back(entry.path().string());
        all += entry.path().string() + "\n";
        if (entry.is_regular_file())
            all += read_text(entry.path().string()) + "\n";
    }
    return all;
}

bool contains(const std::string& text, const std::string& needle) {
    return text.find(needle) != std::string::npos;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(secrets_audit)

BOOST_AUTO_TEST_CASE(no_secret_value_reaches_any_output_through_any_path) {
    temp_dir dir;
    const auto route = make_secret("route");                 // POST .../secrets
    const auto ctl_stdin = make_secret("ctlstdin");          // stereosctl secret, stdin
    const auto ctl_file = make_secret("ctlfile");            // stereosctl secret --from-file
    const auto jcard = make_secret("jcard");                 // PUT config [secrets]
    const auto ctl_jcard = make_secret("ctljcard");          // stereosctl config FILE
    const auto credential = make_secret("credential");       // provisioning, LoadCredential
    const auto plain_file = make_secret("plainfile");        // provisioning, file =
    const auto provision_jcard = make_secret("provjcard");   // provisioning, config_file
    const auto refused = make_secret("refused");             // the guest's rules refuse the name
    const auto echoed = make_secret("echoed");               // the guest quotes it back
    const auto echoed_jcard = make_secret("echojcard");      // the guest quotes the config
    const auto silent = make_secret("silent");               // the guest never answers
    const auto unreachable = make_secret("unreachable");     // nothing listens
    const auto malformed = make_secret("malformed");         // bad requests carrying it
    const auto inline_config = make_secret("inlineconfig");  // written inline, refused
    const auto runtime_value = make_secret("runtimevalue");  // POST /v1/guests, a value
    const auto runtime_jcard = make_secret("runtimejcard");  // POST /v1/guests, config
    const auto resupplied = make_secret("resupplied");       // PUT .../provision
    auto seal_key = make_secret("seal");                     // the key sealing runtime values
    seal_key.value = seal_key.value.substr(0, 32);           // "sk-seal-" and the 24-digit core
    const std::vector<const secret_value*> all{
        &route,         &ctl_stdin,     &ctl_file,        &jcard,     &ctl_jcard,
        &credential,    &plain_file,    &provision_jcard, &refused,   &echoed,
        &echoed_jcard,  &silent,        &unreachable,     &malformed, &inline_config,
        &runtime_value, &runtime_jcard, &resupplied,      &seal_key};

    // Provisioning inputs: a systemd credential, a plain file and a jcard.toml with [secrets].
    const auto credentials = dir.path / "credentials";
    std::filesystem::create_directory(credentials);
    write_text((credentials / "audit-cred").string(), credential.value);
    // The key that seals runtime guests' values (LoadCredentialEncrypted=stereos-hostd.seal-key).
    write_text((credentials / "stereos-hostd.seal-key").string(), seal_key.value);
    write_text(dir.file("plain-secret"), plain_file.value);
    write_text(dir.file("provision-jcard.toml"),
               "mixtape = \"base\"\n[secrets]\nPROVISIONED = '" + provision_jcard.value + "'\n");
    const std::string provision =
        "[guest.provision]\nconfig_file = \"" + dir.file("provision-jcard.toml") +
        "\"\nsecrets = [ { name = \"CRED_KEY\", credential = \"audit-cred\" }, "
        "{ name = \"FILE_KEY\", file = \"" +
        dir.file("plain-secret") + "\", mode = 0o600 } ]\n";

    fake_guests good(dir, "good", 1);
    fake_guests silent_guest(dir, "silent", 1, {"--never-reply", "--faults-after", "1"});
    echoing_guest hostile;
    {
        using stereos::protocol::ack_payload;
        auto& g = hostile.guest();
        g.expect("set_config");  // provisioning's, accepted
        g.expect("inject_secret")
            .reply(refusal("inject_secret",
                           "cannot store CRED_KEY: value " + credential.value + " is not allowed"));
        g.expect("set_config")
            .reply(refusal("set_config", "toml: line 2: TOKEN = '" + echoed_jcard.value +
                                             "': key is not allowed"));
        g.expect("inject_secret")
            .reply(
                refusal("inject_secret", "refusing " + echoed.value + " (" + echoed.value + ")"));
    }
    hostile.start();

    const std::string short_timeout = "request_timeout = \"2s\"\n";
    // systemd's side of the stop: the daemon hands its guest connections to this fd store.
    stereos::testing::fake_fd_store fd_store(dir.file("notify.sock"));
    hostd_process hostd(dir,
                        {{"vm1", good.endpoint(), provision},
                         {"vm-hostile", hostile.endpoint(), provision},
                         {"vm-silent", silent_guest.endpoint(), short_timeout},
                         {"vm-down", "tcp:127.0.0.1:" + std::to_string(closed_tcp_port()),
                          short_timeout + provision}},
                        "trace", quick_daemon, "",
                        {{"CREDENTIALS_DIRECTORY", credentials.string()},
                         {"NOTIFY_SOCKET", dir.file("notify.sock")}});
    const auto& sock = hostd.socket();
    event_capture events(sock);
    outputs seen;

    // Provisioning: done on vm1, refused (with the value quoted back) on vm-hostile.
    BOOST_TEST_REQUIRE(eventually([&] { return provision_state(sock, "vm1") == "done"; }, 30s));
    BOOST_TEST_REQUIRE(
        eventually([&] { return provision_state(sock, "vm-hostile") == "failed"; }, 30s));
    const auto hostile_status = get(sock, "/v1/guests/vm-hostile");
    BOOST_TEST(contains(hostile_status.body, "redacted"), hostile_status.body);
    seen.add("GET /v1/guests/vm-hostile after provisioning", hostile_status);

    // The secret route, the config route and stereosctl, all accepted.
    auto answer = post(sock, "/v1/guests/vm1/secrets",
                       R"({"name":"ROUTE_KEY","value":)" + json_string(route.value) + "}");
    BOOST_TEST(answer.status == 200u, answer.body);
    seen.add("POST secrets vm1", answer);
    answer =
        http(sock, "PUT", "/v1/guests/vm1/config",
             "mixtape = \"base\"\n[secrets]\nTOKEN = '" + jcard.value + "'\n", "application/toml");
    BOOST_TEST(answer.status == 200u, answer.body);
    seen.add("PUT config vm1", answer);

    const auto ctl = [&](std::vector<std::string> args, const std::string& input = {}) {
        args.insert(args.begin(), {program_ctl(), "--socket", sock});
        return run_command(args, input);
    };
    auto result = ctl({"secret", "vm1", "CTL_KEY"}, ctl_stdin.value);
    BOOST_TEST(result.exit_code == 0, result.err);
    seen.add("stereosctl secret (stdin)", result);
    write_text(dir.file("ctl-secret"), ctl_file.value);
    result = ctl({"secret", "vm1", "CTL_FILE_KEY", "--from-file", dir.file("ctl-secret")});
    BOOST_TEST(result.exit_code == 0, result.err);
    seen.add("stereosctl secret --from-file", result);
    write_text(dir.file("ctl-jcard.toml"), "[secrets]\nCTL_TOKEN = '" + ctl_jcard.value + "'\n");
    result = ctl({"config", "vm1", dir.file("ctl-jcard.toml")});
    BOOST_TEST(result.exit_code == 0, result.err);
    seen.add("stereosctl config", result);

    // A name the guest would refuse is refused before sending, by the route and by stereosctl.
    answer = post(sock, "/v1/guests/vm1/secrets",
                  R"({"name":"bad/name","value":)" + json_string(refused.value) + "}");
    BOOST_TEST(answer.status == 400u, answer.body);
    BOOST_TEST(answer.error_code() == "bad_request", answer.body);
    seen.add("POST secrets vm1 (refused)", answer);
    result = ctl({"secret", "vm1", "bad/name"}, refused.value);
    BOOST_TEST(result.exit_code == 2, result.err);
    seen.add("stereosctl secret (refused)", result);

    // A guest quoting the value back in its refusal: the text reaches the client scrubbed.
    answer = http(sock, "PUT", "/v1/guests/vm-hostile/config",
                  "[secrets]\nTOKEN = '" + echoed_jcard.value + "'\n", "application/toml");
    BOOST_TEST(answer.status == 502u, answer.body);
    BOOST_TEST(contains(answer.error_message(), "key is not allowed"), answer.body);
    seen.add("PUT config vm-hostile (echoed)", answer);
    answer = post(sock, "/v1/guests/vm-hostile/secrets",
                  R"({"name":"ECHO_KEY","value":)" + json_string(echoed.value) + "}");
    BOOST_TEST(answer.status == 502u, answer.body);
    BOOST_TEST(contains(answer.error_message(), "refusing <redacted"), answer.body);
    seen.add("POST secrets vm-hostile (echoed)", answer);

    // A guest that never answers, and one nobody listens for.
    const std::set<std::string> link_failures{"guest_timeout", "connection_lost",
                                              "guest_unavailable"};
    answer = post(sock, "/v1/guests/vm-silent/secrets",
                  R"({"name":"SILENT_KEY","value":)" + json_string(silent.value) + "}");
    BOOST_TEST(link_failures.contains(answer.error_code()), answer.body);
    seen.add("POST secrets vm-silent", answer);
    answer = post(sock, "/v1/guests/vm-down/secrets",
                  R"({"name":"DOWN_KEY","value":)" + json_string(unreachable.value) + "}");
    BOOST_TEST(link_failures.contains(answer.error_code()), answer.body);
    seen.add("POST secrets vm-down", answer);
    answer = http(sock, "PUT", "/v1/guests/vm-down/config",
                  "[secrets]\nTOKEN = '" + unreachable.value + "'\n", "application/toml");
    BOOST_TEST(link_failures.contains(answer.error_code()), answer.body);
    seen.add("PUT config vm-down", answer);
    result = ctl({"secret", "vm-down", "DOWN_KEY"}, unreachable.value);
    BOOST_TEST((result.exit_code == 1 || result.exit_code == 4), result.err);
    seen.add("stereosctl secret vm-down", result);

    // Malformed requests carrying a value: none may echo it.
    const auto value = json_string(malformed.value);
    const std::vector<std::pair<std::string, std::string>> bad_bodies{
        {"/v1/guests/vm1/secrets", R"({"name":"K","value":)" + value + R"(,"mode":"rwx"})"},
        {"/v1/guests/vm1/secrets", R"({"name":7,"value":)" + value + "}"},
        {"/v1/guests/vm1/secrets", R"({"value":)" + value + "}"},
        {"/v1/guests/vm1/secrets", R"({"name":"","value":)" + value + "}"},
        {"/v1/guests/vm1/secrets", R"({"name":"K","value":)" + value},
        {"/v1/guests/vm1/secrets", R"({"name":"K","value":)" + value + R"(,"value":7})"},
        {"/v1/guests/vm1/secrets", R"({"name":"K","value":)" + malformed.value + "}"},
        {"/v1/guests/vm1/secrets", "[" + value + "]"},
        {"/v1/guests/nope/secrets", R"({"name":"K","value":)" + value + "}"},
        {"/v1/guests", R"({"name":"vm9","endpoint":"tcp:127.0.0.1:1",)"
                       R"("provision":{"secrets":[{"name":"../K","value":)" +
                           value + "}]}}"},
        {"/v1/guests",
         R"({"name":"vm9","endpoint":"unix:rel.sock","provision":{"config":)" + value + "}}"},
    };
    for (const auto& [target, body] : bad_bodies) {
        answer = post(sock, target, body);
        BOOST_TEST((answer.status == 400u || answer.status == 404u), target << " " << body);
        seen.add("POST " + target + " " + body.substr(0, 30), answer);
    }
    answer = http(sock, "PUT", "/v1/guests/vm1/secrets", R"({"value":)" + value + "}");
    BOOST_TEST(answer.status == 405u, answer.body);
    seen.add("PUT secrets (wrong method)", answer);
    answer =
        post(sock, "/v1/guests/vm1/secrets",
             R"({"name":"K","value":")" + std::string(1100 * 1024, 'a') + malformed.core + R"("})");
    BOOST_TEST(answer.status == 413u, answer.status);
    seen.add("POST secrets (too large)", answer);
    for (const std::string& raw : {
             "POST /v1/guests/vm1/secrets HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                 malformed.value + "\r\n\r\n",
             "POST /v1/guests/vm1/secrets HTTP/1.1\r\nHost: x\r\nX-" + malformed.core +
                 " bad header\r\n\r\n",
             "POST /v1/guests/vm1/secrets HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
             "zz\r\n" +
                 value + "\r\n0\r\n\r\n",
         }) {
        const auto reply = raw_exchange(sock, raw);
        BOOST_TEST(reply.starts_with("HTTP/1.1 400"), reply);
        seen.add("raw malformed request", reply);
    }

    // A config with a value written inline (refused at load and at reload), and a TOML syntax
    // error on the line holding it.
    const auto config_text = read_text(dir.file("config.toml"));
    const std::string inline_guest =
        "[[guest]]\nname = \"vm-inline\"\nendpoint = \"tcp:127.0.0.1:1\"\n"
        "[guest.provision]\nsecrets = [ { name = \"K\", value = '" +
        inline_config.value + "' } ]\n";
    write_text(dir.file("inline.toml"), config_text + inline_guest);
    write_text(dir.file("broken.toml"),
               config_text +
                   "[[guest]]\nname = \"vm-broken\"\nendpoint = \"tcp:127.0.0.1:1\"\n"
                   "token = \"" +
                   inline_config.value + "\n");
    for (const auto& file : {"inline.toml", "broken.toml"}) {
        result = run_command({program_hostd(), "--check-config", "--config", dir.file(file)});
        BOOST_TEST(result.exit_code == 1, file << ": " << result.out << result.err);
        seen.add(std::string("stereos-hostd --check-config ") + file, result);
    }
    write_text(dir.file("config.toml"), config_text + inline_guest);
    ::kill(hostd.pid(), SIGHUP);
    BOOST_TEST(eventually([&] { return contains(hostd.log(), "reload rejected"); }, 30s));
    write_text(dir.file("config.toml"), config_text);

    // Everything readable: statuses, the list, metrics, stereosctl's views.
    for (const auto& target : {"/v1/guests", "/v1/guests/vm1", "/v1/guests/vm-hostile",
                               "/v1/guests/vm-silent", "/v1/guests/vm-down", "/metrics"}) {
        seen.add(std::string("GET ") + target, get(sock, target));
    }
    for (const auto& args :
         std::vector<std::vector<std::string>>{{"ls"},
                                               {"--json", "ls"},
                                               {"status", "vm-hostile"},
                                               {"--json", "status", "vm-hostile"},
                                               {"status", "vm1"}}) {
        seen.add("stereosctl " + args.back(), ctl(args));
    }

    // A runtime guest with provisioning persists to the state dir.
    answer = post(sock, "/v1/guests",
                  R"({"name":"vm-runtime","endpoint":")" + good.endpoint() +
                      R"(","provision":{"secrets":[{"name":"RT_KEY","file":")" +
                      dir.file("plain-secret") + R"("}]}})");
    BOOST_TEST(answer.status == 201u, answer.body);
    seen.add("POST /v1/guests vm-runtime", answer);
    BOOST_TEST(eventually([&] { return provision_state(sock, "vm-runtime") == "done"; }, 30s));

    // Runtime guests' values: given when added and again through PUT .../provision. They reach
    // the guest and stay in memory, out of the state dir.
    answer = post(sock, "/v1/guests",
                  R"({"name":"vm-values","endpoint":")" + good.endpoint() +
                      R"(","provision":{"config":)" +
                      json_string("[secrets]\nT = '" + runtime_jcard.value + "'\n") +
                      R"(,"secrets":[{"name":"RT_VALUE","value":)" +
                      json_string(runtime_value.value) + "}]}}");
    BOOST_TEST(answer.status == 201u, answer.body);
    seen.add("POST /v1/guests vm-values", answer);
    BOOST_TEST(eventually([&] { return provision_state(sock, "vm-values") == "done"; }, 30s));
    answer = http(sock, "PUT", "/v1/guests/vm-values/provision",
                  R"({"provision":{"secrets":[{"name":"RT_VALUE","value":)" +
                      json_string(resupplied.value) + "}]}}");
    BOOST_TEST(answer.status == 200u, answer.body);
    seen.add("PUT provision vm-values", answer);
    answer = http(sock, "PUT", "/v1/guests/vm-values/provision",
                  R"({"provision":{"secrets":[{"name":"a/b","value":)" + value + "}]}}");
    BOOST_TEST(answer.status == 400u, answer.body);
    seen.add("PUT provision vm-values (bad name)", answer);
    seen.add("GET /v1/guests/vm-values", get(sock, "/v1/guests/vm-values"));

    // Stop everything, then gather what was written.
    BOOST_TEST(hostd.process().stop() == 0);
    fd_store.wait_quiet(500ms);
    std::string event_text;
    for (const auto& line : events.read_to_end())
        event_text += line + "\n";
    BOOST_TEST(events.ended(), "the daemon did not end the event stream as it stopped");
    seen.add("events stream", std::move(event_text));
    seen.add("daemon log (trace)", hostd.log());
    // What went to the fd store: the sockets, and the memfd describing them with unread bytes.
    const auto stored = fd_store.stored();
    const auto links = stored.find("guest-links");
    BOOST_TEST_REQUIRE((links != stored.end()),
                       "the daemon handed no guest connection to the fd store");
    BOOST_TEST(stored.count("guest-sockets") == 1u);
    seen.add("fd store: guest-links memfd", stereos::testing::memfd_text(links->second));
    std::string store_messages;
    for (const auto& message : fd_store.messages())
        store_messages += message + "\n";
    seen.add("fd store: notifications", std::move(store_messages));
    fd_store.flush();
    std::vector<std::string> state_files;
    seen.add("state dir", read_tree(hostd.state_dir(), state_files));
    BOOST_TEST(!state_files.empty());
    BOOST_TEST(contains(hostd.log(), "POST /v1/guests/vm1/secrets"), "requests logged at debug");
    // The runtime guests' values were sealed, not left out: the sealed store is what was searched.
    const auto state_file = read_text(hostd.state_dir() + "/guests.json");
    BOOST_TEST(contains(state_file, "\"sealed_values\""), state_file);
    BOOST_TEST(contains(hostd.log(), "values are sealed in the state directory"));

    // A second daemon on the same state directory opens them (and logs it), again at trace.
    {
        hostd_process reopened(dir, {}, "trace", quick_daemon, "",
                               {{"CREDENTIALS_DIRECTORY", credentials.string()}});
        BOOST_TEST(eventually(
                       [&] {
                           return contains(reopened.log(),
                                           "vm-values: runtime guest's 1 sealed value opened");
                       },
                       30s),
                   reopened.log());
        seen.add("GET /v1/guests/vm-values (reopened)",
                 get(reopened.socket(), "/v1/guests/vm-values"));
        seen.add("GET /v1/ping (reopened)", get(reopened.socket(), "/v1/ping"));
        seen.add("stereosctl status (reopened)",
                 run_command({program_ctl(), "--socket", reopened.socket(), "status"}));
        BOOST_TEST(reopened.process().stop() == 0);
        seen.add("daemon log (reopened, trace)", reopened.log());
    }
    std::vector<std::string> reopened_files;
    seen.add("state dir (reopened)", read_tree(hostd.state_dir(), reopened_files));

    // Nothing holds any form of any value.
    for (const auto* secret : all) {
        for (const auto& form : forms_of(*secret)) {
            for (const auto& [where, text] : seen.items) {
                BOOST_TEST(!contains(text, form), "the " << secret->label << " secret (as " << form
                                                         << ") is in " << where << ":\n"
                                                         << text.substr(0, 4000));
            }
        }
    }

    // They were really sent: the guests got every value that was not refused before sending.
    const auto good_record = read_text(good.record_file());
    for (const auto* secret :
         {&route, &ctl_stdin, &ctl_file, &jcard, &ctl_jcard, &credential, &plain_file,
          &provision_jcard, &runtime_value, &runtime_jcard, &resupplied}) {
        BOOST_TEST(contains(good_record, secret->core),
                   secret->label << " did not reach the guest");
    }
    for (const auto* secret : {&refused, &malformed})
        BOOST_TEST(!contains(good_record, secret->core), secret->label << " was sent");
    BOOST_TEST(contains(read_text(silent_guest.record_file()), silent.core));
    std::string hostile_received;
    for (const auto& line : hostile.finish())
        hostile_received += line + "\n";
    for (const auto* secret : {&credential, &provision_jcard, &echoed, &echoed_jcard})
        BOOST_TEST(contains(hostile_received, secret->core), secret->label << " not received");
    BOOST_TEST(!contains(hostile_received, unreachable.core));
}

BOOST_AUTO_TEST_SUITE_END()

// The local API end to end: a real stereos-hostd process with real stereos-fakeguest processes,
// driven over the unix socket by a Beast client, by curl and by stereosctl. Every case starts its
// own daemon in its own temp directory. Bounds are generous: ASan, a busy 2-core machine.
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <grp.h>
#include <pwd.h>
#include <atomic>
#include <deque>
#include <random>
#include <set>
#include <thread>

#include <boost/asio.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include <stereos/util/completion_tokens.hpp>
#include "tests/integration/api/api_test_support.hpp"

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
namespace json = boost::json;
using namespace stereos::api_test;
using socket_type = asio::local::stream_protocol::socket;
using stereos::transport::use_tuple;

namespace {

std::string state_of(const std::string& socket, const std::string& guest) {
    return std::string(status_of(socket, guest).at("state").as_string());
}

bool reaches_state(const std::string& socket, const std::string& guest, const std::string& state) {
    return eventually([&] { return state_of(socket, guest) == state; }, 30s);
}

json::object parse_event(const std::string& line) {
    return json::parse(line).as_object();
}

}  // namespace

BOOST_AUTO_TEST_SUITE(api)

BOOST_AUTO_TEST_CASE(ping_answers_and_the_socket_is_owner_only_without_a_group) {
    temp_dir dir;
    fake_guests guests(dir, "fg", 1);
    hostd_process hostd(dir, {{"vm1", guests.endpoint()}});
    auto answer = get(hostd.socket(), "/v1/ping");
    BOOST_TEST(answer.status == 200u);
    BOOST_TEST(answer.json().at("status").as_string() == "ok");
    BOOST_TEST(answer.json().at("version").as_string() == STEREOS_VERSION);

    struct stat st {};
    BOOST_TEST_REQUIRE(::stat(hostd.socket().c_str(), &st) == 0);
    BOOST_TEST(S_ISSOCK(st.st_mode));
    BOOST_TEST((st.st_mode & 0777) == 0600u);

    // A clean stop removes the socket file and exits 0.
    BOOST_TEST(hostd.process().stop() == 0);
    BOOST_TEST(!std::filesystem::exists(hostd.socket()));
}

BOOST_AUTO_TEST_CASE(guests_are_listed_and_shown_in_the_status_shape) {
    temp_dir dir;
    fake_guests guests(dir, "fg", 2);
    hostd_process hostd(dir, {{"vm1", guests.endpoints()[0]}, {"vm2", guests.endpoints()[1]}},
                        "info", quick_daemon);
    BOOST_TEST_REQUIRE(reaches_state(hostd.socket(), "vm1", "ready"));

    auto list = get(hostd.socket(), "/v1/guests");
    BOOST_TEST_REQUIRE(list.status == 200u);
    const auto list_json = list.json();
    const auto& guests_array = list_json.at("guests").as_array();
    BOOST_TEST_REQUIRE(guests_array.size() == 2u);
    BOOST_TEST(guests_array[0].at("name").as_string() == "vm1");
    BOOST_TEST(guests_array[1].at("name").as_string() == "vm2");

    const auto status = status_of(hostd.socket(), "vm1");
    for (auto key : {"name", "endpoint", "source", "state", "reason", "since", "link",
                     "uptime_seconds", "agents", "provision", "transitions"}) {
        BOOST_TEST(status.contains(key), "status lacks " << key);
    }
    BOOST_TEST(status.at("source").as_string() == "config");
    BOOST_TEST(status.at("endpoint").as_string() == guests.endpoints()[0]);
    const auto& link = status.at("link").as_object();
    BOOST_TEST(link.at("up").as_bool());
    BOOST_TEST(link.at("connects").to_number<int>() >= 1);
    BOOST_TEST(link.contains("last_error"));
    BOOST_TEST(status.at("provision").as_object().contains("state"));
    BOOST_TEST(!status.at("transitions").as_array().empty());

    check_error(get(hostd.socket(), "/v1/guests/nope"), 404, "guest_not_found");
    check_error(get(hostd.socket(), "/v1/guests/bad%20name"), 400, "bad_request");
}

BOOST_AUTO_TEST_CASE(every_guest_request_route_reaches_the_guest) {
    temp_dir dir;
    fake_guests guests(dir, "fg", 1);
    hostd_process hostd(dir, {{"vm1", guests.endpoint()}}, "info", quick_daemon);
    const auto& sock = hostd.socket();
    BOOST_TEST_REQUIRE(reaches_state(sock, "vm1", "ready"));

    auto ping = post(sock, "/v1/guests/vm1/ping");
    BOOST_TEST_REQUIRE(ping.status == 200u, ping.body);
    BOOST_TEST(ping.json().at("rtt_us").to_number<std::int64_t>() >= 0);

    auto health = get(sock, "/v1/guests/vm1/health");
    BOOST_TEST_REQUIRE(health.status == 200u, health.body);
    BOOST_TEST(health.json().at("state").as_string() == "ready");
    BOOST_TEST(health.json().as_object().contains("uptime_seconds"));

    auto config =
        http(sock, "PUT", "/v1/guests/vm1/config", "mixtape = \"base\"\n", "application/toml");
    BOOST_TEST(config.status == 200u, config.body);
    check_error(http(sock, "PUT", "/v1/guests/vm1/config", "", "text/plain"), 400, "bad_request");

    auto secret = post(sock, "/v1/guests/vm1/secrets",
                       R"({"name":"GH_TOKEN","value":"tok-123","mode":"0600"})");
    BOOST_TEST(secret.status == 200u, secret.body);
    auto missing = post(sock, "/v1/guests/vm1/secrets", R"({"name":"GH_TOKEN"})");
    check_error(missing, 400, "bad_request");
    BOOST_TEST(missing.error_message().find("\"value\"") != std::string::npos);

    auto key = post(sock, "/v1/guests/vm1/ssh-keys",
                    R"({"user":"admin","public_key":"ssh-ed25519 AAAAC3 a@b"})");
    BOOST_TEST(key.status == 200u, key.body);

    auto mount =
        post(sock, "/v1/guests/vm1/mounts",
             R"({"tag":"share0","guest_path":"/work","fs_type":"virtiofs","read_only":true})");
    BOOST_TEST(mount.status == 200u, mount.body);
    auto bad_fs = post(sock, "/v1/guests/vm1/mounts",
                       R"({"tag":"share0","guest_path":"/work","fs_type":"nfs"})");
    check_error(bad_fs, 400, "bad_request");
    BOOST_TEST(bad_fs.error_message().find("fs_type") != std::string::npos);

    // The same mount again in this run: not sent (stereosd would stack it); another at the
    // same path: refused.
    auto again =
        post(sock, "/v1/guests/vm1/mounts",
             R"({"tag":"share0","guest_path":"/work","fs_type":"virtiofs","read_only":true})");
    BOOST_TEST(again.status == 200u, again.body);
    BOOST_TEST(again.json().at("sent").as_bool() == false, again.body);
    auto respelled =
        post(sock, "/v1/guests/vm1/mounts",
             R"({"tag":"share0","guest_path":"/work/","fs_type":"virtiofs","read_only":true})");
    BOOST_TEST(respelled.status == 200u, respelled.body);
    BOOST_TEST(respelled.json().at("sent").as_bool() == false, respelled.body);
    check_error(post(sock, "/v1/guests/vm1/mounts",
                     R"({"tag":"other","guest_path":"/work","fs_type":"9p"})"),
                409, "mount_conflict");

    // No provisioning configured: the key added above is all this run has, and it is not sent
    // again.
    auto provision = post(sock, "/v1/guests/vm1/provision");
    BOOST_TEST(provision.status == 200u, provision.body);
    BOOST_TEST(provision.json().at("provision").at("state").as_string() == "done");
    BOOST_TEST(provision.json().at("provision").at("sent").as_int64() == 0, provision.body);

    auto shutdown = post(sock, "/v1/guests/vm1/shutdown", R"({"reason":"test over"})");
    BOOST_TEST(shutdown.status == 202u, shutdown.body);
    BOOST_TEST(eventually([&] {
        const auto s = state_of(sock, "vm1");
        return s == "shutting_down" || s == "shutdown";
    }));

    // What the guest received, in order (health polls and keepalives aside).
    std::vector<std::string> types;
    std::string received = read_text(guests.record_file());
    std::istringstream lines(received);
    for (std::string line; std::getline(lines, line);) {
        auto type = std::string(json::parse(line).at("type").as_string());
        if (type != "get_health")
            types.push_back(type);
    }
    const std::vector<std::string> expected{"ping",           "set_config", "inject_secret",
                                            "inject_ssh_key", "mount",      "shutdown"};
    BOOST_TEST(types == expected, boost::test_tools::per_element());
    BOOST_TEST(received.find(R"("content":"mixtape = \"base\"\n")") != std::string::npos);
    BOOST_TEST(received.find(R"("mode":384)") != std::string::npos);
    BOOST_TEST(received.find(R"("read_only":true)") != std::string::npos);
    BOOST_TEST(undeclared_responses(sock) == 0.0);
}

BOOST_AUTO_TEST_CASE(a_runtime_guest_is_added_persisted_provisioned_and_removed) {
    temp_dir dir;
    fake_guests guests(dir, "fg", 2);
    hostd_process hostd(dir, {{"vm1", guests.endpoints()[0]}}, "info", quick_daemon);
    const auto& sock = hostd.socket();

    const std::string body =
        R"({"name":"rt1","endpoint":")" + guests.endpoints()[1] +
        R"(","provision":{"mounts":[{"tag":"s0","guest_path":"/data","fs_type":"9p"}]}})";
    auto added = post(sock, "/v1/guests", body);
    BOOST_TEST_REQUIRE(added.status == 201u, added.body);
    BOOST_TEST(added.json().at("name").as_string() == "rt1");
    BOOST_TEST(added.json().at("source").as_string() == "runtime");
    BOOST_TEST(added.headers["location"] == "/v1/guests/rt1");
    BOOST_TEST(read_text(hostd.state_dir() + "/guests.json").find("rt1") != std::string::npos);

    check_error(post(sock, "/v1/guests", body), 409, "guest_exists");
    check_error(post(sock, "/v1/guests", "{"), 400, "bad_request");
    auto no_endpoint = post(sock, "/v1/guests", R"({"name":"rt2"})");
    check_error(no_endpoint, 400, "bad_request");
    BOOST_TEST(no_endpoint.error_message().find("endpoint") != std::string::npos);
    check_error(post(sock, "/v1/guests", R"({"name":"rt2","endpoint":"carrier-pigeon:1"})"), 400,
                "bad_request");
    check_error(post(sock, "/v1/guests", R"({"name":"bad name","endpoint":"tcp:127.0.0.1:1"})"),
                400, "bad_request");

    // Provisioning on demand: runs the guest's sequence and reports it.
    BOOST_TEST_REQUIRE(reaches_state(sock, "rt1", "ready"));
    auto provision = post(sock, "/v1/guests/rt1/provision");
    BOOST_TEST(provision.status == 200u, provision.body);
    BOOST_TEST(provision.json().at("provision").at("state").as_string() == "done");

    check_error(http(sock, "DELETE", "/v1/guests/vm1"), 409, "guest_in_config");
    auto removed = http(sock, "DELETE", "/v1/guests/rt1");
    BOOST_TEST(removed.status == 200u, removed.body);
    check_error(get(sock, "/v1/guests/rt1"), 404, "guest_not_found");
    check_error(http(sock, "DELETE", "/v1/guests/rt1"), 404, "guest_not_found");
    BOOST_TEST(read_text(hostd.state_dir() + "/guests.json").find("rt1") == std::string::npos);
    BOOST_TEST(undeclared_responses(sock) == 0.0);
}

BOOST_AUTO_TEST_CASE(each_failed_guest_request_gets_its_status_error_code_and_metric) {
    temp_dir dir;
    fake_guests good(dir, "good", 1);
    // Each answers the connection's handshake, then misbehaves.
    fake_guests silent(dir, "silent", 1, {"--never-reply", "--faults-after", "1"});
    fake_guests dropping(dir, "dropping", 1, {"--drop-mid-reply", "--faults-after", "1"});
    const std::string closed = "tcp:127.0.0.1:" + std::to_string(closed_tcp_port());
    const std::string one_second = "request_timeout = \"1s\"\n";
    hostd_process hostd(dir,
                        {{"good", good.endpoint()},
                         {"silent", silent.endpoint(), one_second + "health_interval = \"30s\"\n"},
                         {"dropping", dropping.endpoint(), one_second},
                         {"down", closed, one_second}},
                        "info", "reconnect_max = \"200ms\"\n");
    const auto& sock = hostd.socket();
    BOOST_TEST_REQUIRE(reaches_state(sock, "good", "ready"));
    BOOST_TEST_REQUIRE(reaches_state(sock, "silent", "ready"));

    // The guest refused: 502 guest_error with the guest's own words.
    auto refused = post(sock, "/v1/guests/good/ssh-keys",
                        R"({"user":"no-such-user","public_key":"ssh-ed25519 AAAA x"})");
    check_error(refused, 502, "guest_error");
    BOOST_TEST(refused.error_message().find("no-such-user") != std::string::npos, refused.body);

    // Written, never answered: 504.
    check_error(post(sock, "/v1/guests/silent/ping"), 504, "guest_timeout");
    // Never connected, so never sent within the deadline: 503.
    check_error(post(sock, "/v1/guests/down/ping"), 503, "guest_unavailable");

    // The connection drops mid-reply: 502 connection_lost (or, if the request found the link
    // down for its whole deadline, 503).
    bool saw_connection_lost = false;
    for (int attempt = 0; attempt < 10 && !saw_connection_lost; ++attempt) {
        auto answer = post(sock, "/v1/guests/dropping/ping");
        BOOST_TEST((answer.error_code() == "connection_lost" ||
                    answer.error_code() == "guest_unavailable"),
                   answer.body);
        if (answer.error_code() == "connection_lost") {
            BOOST_TEST(answer.status == 502u);
            saw_connection_lost = true;
        }
    }
    BOOST_TEST(saw_connection_lost);

    // Every outcome is counted per guest, type and outcome.
    const auto metrics = get(sock, "/metrics").body;
    BOOST_TEST(
        metric(
            metrics,
            R"(stereos_guest_requests_total{guest="silent",type="ping",outcome="guest_timeout"})") >=
        1);
    BOOST_TEST(
        metric(
            metrics,
            R"(stereos_guest_requests_total{guest="good",type="inject_ssh_key",outcome="guest_error"})") ==
        1);
    BOOST_TEST(
        metric(
            metrics,
            R"(stereos_guest_requests_total{guest="down",type="ping",outcome="guest_unavailable"})") ==
        1);
    BOOST_TEST(undeclared_responses(sock) == 0.0);
}

BOOST_AUTO_TEST_CASE(unknown_routes_are_404_and_wrong_methods_405_with_allow) {
    temp_dir dir;
    fake_guests guests(dir, "fg", 1);
    hostd_process hostd(dir, {{"vm1", guests.endpoint()}});
    const auto& sock = hostd.socket();
    check_error(get(sock, "/v2/guests"), 404, "not_found");
    check_error(get(sock, "/v1/guests/vm1/bogus"), 404, "not_found");
    check_error(get(sock, "/"), 404, "not_found");

    auto on_ping = http(sock, "DELETE", "/v1/ping");
    check_error(on_ping, 405, "method_not_allowed");
    BOOST_TEST(on_ping.headers["allow"] == "GET");
    auto on_guest = post(sock, "/v1/guests/vm1", "{}");
    check_error(on_guest, 405, "method_not_allowed");
    BOOST_TEST(on_guest.headers["allow"] == "GET, DELETE");
    auto on_guest_ping = get(sock, "/v1/guests/vm1/ping");
    check_error(on_guest_ping, 405, "method_not_allowed");
    BOOST_TEST(on_guest_ping.headers["allow"] == "POST");
    BOOST_TEST(http(sock, "PATCH", "/v1/guests/vm1/config").headers["allow"] == "PUT");
    BOOST_TEST(undeclared_responses(sock) == 0.0);
}

BOOST_AUTO_TEST_CASE(oversized_and_malformed_requests_are_refused_and_the_daemon_carries_on) {
    temp_dir dir;
    fake_guests guests(dir, "fg", 1);
    hostd_process hostd(dir, {{"vm1", guests.endpoint()}});
    const auto& sock = hostd.socket();

    const std::string big(1024 * 1024 + 1, 'a');
    auto too_large = http(sock, "PUT", "/v1/guests/vm1/config", big, "text/plain");
    check_error(too_large, 413, "payload_too_large");
    // Exactly 1 MiB is accepted (and then refused by the link: an encoded line is larger).
    auto at_limit =
        http(sock, "PUT", "/v1/guests/vm1/config", std::string(1024 * 1024, 'a'), "text/plain");
    BOOST_TEST(at_limit.status != 400u);

    // curl announces a large body with "Expect: 100-continue".
    write_text(dir.file("big"), big);
    auto curl = run_command({"curl", "-s", "-o", dir.file("curl-body"), "-w", "%{http_code}",
                             "--unix-socket", sock, "-X", "PUT", "-H", "Expect: 100-continue",
                             "--data-binary", "@" + dir.file("big"),
                             "http://localhost/v1/guests/vm1/config"});
    BOOST_TEST(curl.out == "413", curl.out << curl.err);

    auto garbage = raw_exchange(sock, "THIS IS NOT HTTP\r\n\r\n");
    BOOST_TEST(garbage.starts_with("HTTP/1.1 400"), garbage);
    BOOST_TEST(garbage.find("bad_request") != std::string::npos);
    BOOST_TEST(garbage.find("Connection: close") != std::string::npos);

    std::string huge_header =
        "GET /v1/ping HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(17 * 1024, 'h') + "\r\n\r\n";
    auto header_answer = raw_exchange(sock, huge_header);
    BOOST_TEST(header_answer.starts_with("HTTP/1.1 400"), header_answer.substr(0, 200));

    auto bad_length = raw_exchange(sock, "POST /v1/guests HTTP/1.1\r\nContent-Length: zz\r\n\r\n");
    BOOST_TEST(bad_length.starts_with("HTTP/1.1 400"), bad_length);

    // Pipelined requests on one connection are answered in order.
    auto pipelined =
        raw_exchange(sock,
                     "GET /v1/ping HTTP/1.1\r\nHost: x\r\n\r\n"
                     "GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    const auto first = pipelined.find("HTTP/1.1 200");
    const auto second = pipelined.find("HTTP/1.1 404");
    BOOST_TEST((first != std::string::npos && second != std::string::npos && first < second),
               pipelined);

    BOOST_TEST(get(sock, "/v1/ping").status == 200u);
    BOOST_TEST(hostd.process().running());
}

BOOST_AUTO_TEST_CASE(wait_returns_once_the_guest_is_in_the_state_or_better_else_408) {
    temp_dir dir;
    fake_guests ready(dir, "ready", 1);
    // Boots, then reports healthy 2 s after the fake guest started.
    fake_guests late(dir, "late", 1,
                     {"--health-state", "booting", "--lifecycle-script", "2s:healthy"});
    hostd_process hostd(dir, {{"ready", ready.endpoint()}, {"late", late.endpoint()}}, "info",
                        quick_daemon);
    const auto& sock = hostd.socket();
    BOOST_TEST_REQUIRE(reaches_state(sock, "ready", "ready"));

    auto now_ready = get(sock, "/v1/guests/ready/wait?state=ready&timeout=5s");
    BOOST_TEST(now_ready.status == 200u, now_ready.body);
    BOOST_TEST(now_ready.json().at("state").as_string() == "ready");
    // Ready is better than booting.
    BOOST_TEST(get(sock, "/v1/guests/ready/wait?state=booting&timeout=5s").status == 200u);

    const auto started = std::chrono::steady_clock::now();
    auto not_healthy = get(sock, "/v1/guests/ready/wait?state=healthy&timeout=1s");
    check_error(not_healthy, 408, "wait_timeout");
    BOOST_TEST((std::chrono::steady_clock::now() - started >= 900ms));

    // Healthy counts as ready: this returns when the guest reports healthy.
    auto became = get(sock, "/v1/guests/late/wait?state=ready&timeout=30s");
    BOOST_TEST(became.status == 200u, became.body);
    BOOST_TEST(became.json().at("state").as_string() == "healthy");

    check_error(get(sock, "/v1/guests/ready/wait?state=sleepy"), 400, "bad_request");
    check_error(get(sock, "/v1/guests/ready/wait"), 400, "bad_request");
    check_error(get(sock, "/v1/guests/ready/wait?state=ready&timeout=forever"), 400, "bad_request");
    check_error(get(sock, "/v1/guests/nope/wait?state=ready"), 404, "guest_not_found");
    BOOST_TEST(undeclared_responses(sock) == 0.0);
}

BOOST_AUTO_TEST_CASE(the_event_stream_starts_with_a_snapshot_then_live_events) {
    temp_dir dir;
    fake_guests guests(dir, "fg", 3);
    hostd_process hostd(dir, {{"vm1", guests.endpoints()[0]}, {"vm2", guests.endpoints()[1]}},
                        "info", quick_daemon);
    const auto& sock = hostd.socket();
    BOOST_TEST_REQUIRE(reaches_state(sock, "vm1", "ready"));
    BOOST_TEST_REQUIRE(reaches_state(sock, "vm2", "ready"));

    event_reader all(sock);
    BOOST_TEST_REQUIRE(all.status() == 200u);
    BOOST_TEST(all.header(bhttp::field::content_type) == "application/x-ndjson");
    event_reader only_vm2(sock, "/v1/events?guest=vm2");

    std::set<std::string> snapshot_guests;
    for (int i = 0; i < 2; ++i) {
        auto line = all.next_line();
        BOOST_TEST_REQUIRE(line.has_value());
        auto event = parse_event(*line);
        BOOST_TEST(event.at("kind").as_string() == "state");
        BOOST_TEST(event.at("snapshot").as_bool());
        BOOST_TEST(event.at("to").as_string() == "ready");
        snapshot_guests.insert(std::string(event.at("guest").as_string()));
    }
    BOOST_TEST(snapshot_guests == (std::set<std::string>{"vm1", "vm2"}));
    auto vm2_snapshot = only_vm2.next_line();
    BOOST_TEST_REQUIRE(vm2_snapshot.has_value());
    BOOST_TEST(parse_event(*vm2_snapshot).at("guest").as_string() == "vm2");

    // Live: a guest added at run time connects and becomes ready.
    auto added =
        post(sock, "/v1/guests", R"({"name":"vm3","endpoint":")" + guests.endpoints()[2] + R"("})");
    BOOST_TEST_REQUIRE(added.status == 201u);
    std::vector<json::object> live;
    std::uint64_t last_seq = 0;
    bool saw_ready = false;
    while (!saw_ready) {
        auto line = all.next_line();
        BOOST_TEST_REQUIRE(line.has_value(), "no live event for vm3");
        auto event = parse_event(*line);
        const auto seq = event.at("seq").to_number<std::uint64_t>();
        if (last_seq != 0)
            BOOST_TEST(seq == last_seq + 1, "seq must rise by one: " << *line);
        last_seq = seq;
        for (auto key : {"seq", "time", "guest", "kind"})
            BOOST_TEST(event.contains(key));
        if (event.at("guest").as_string() == "vm3" && event.at("kind").as_string() == "state" &&
            event.at("to").as_string() == "ready") {
            BOOST_TEST(event.at("from").as_string() == "connecting");
            saw_ready = true;
        }
    }
    BOOST_TEST(get(sock, "/v1/events?guest=nope").status == 404u);

    // The filtered stream saw nothing of vm3.
    BOOST_TEST(!only_vm2.next_line(500ms).has_value());

    // A stopping daemon ends the streams cleanly: the chunked body is terminated.
    BOOST_TEST(hostd.process().stop() == 0);
    all.read_to_end(10s);
    BOOST_TEST(all.ended());
    BOOST_TEST(all.ended_cleanly());
}

BOOST_AUTO_TEST_CASE(a_subscriber_that_stops_reading_is_cut_off_with_an_overflow_line) {
    temp_dir dir;
    fake_guests guests(dir, "fg", 1);
    fake_guests flood(dir, "flood", 1, {"--lifecycle-flood", "3000"});
    // Lifecycle events are logged at info: keep the flood out of the log.
    hostd_process hostd(dir, {{"vm1", guests.endpoint()}}, "warning", quick_daemon);
    const auto& sock = hostd.socket();

    // `slow` sends its request and reads nothing; `fast` keeps reading.
    event_reader slow(sock, "/v1/events", false);
    std::atomic<bool> stop_fast{false};
    std::atomic<std::size_t> fast_lines{0};
    std::atomic<bool> fast_overflowed{false};
    event_reader fast(sock);
    std::thread fast_thread([&] {
        while (!stop_fast) {
            auto line = fast.next_line(200ms);
            if (!line)
                continue;
            ++fast_lines;
            if (line->find(R"("kind":"overflow")") != std::string::npos)
                fast_overflowed = true;
        }
    });
    BOOST_TEST_REQUIRE(eventually(
        [&] { return metric(get(sock, "/metrics").body, "stereos_event_subscribers") == 2.0; }));

    auto added =
        post(sock, "/v1/guests", R"({"name":"flood","endpoint":")" + flood.endpoint() + R"("})");
    BOOST_TEST_REQUIRE(added.status == 201u);
    BOOST_TEST(eventually(
        [&] { return metric(get(sock, "/metrics").body, "stereos_events_dropped_total") >= 1.0; },
        60s));
    // The daemon kept answering meanwhile.
    const auto before_ping = std::chrono::steady_clock::now();
    BOOST_TEST(get(sock, "/v1/ping").status == 200u);
    BOOST_TEST((std::chrono::steady_clock::now() - before_ping < 5s));

    // The slow one now reads: what was written, then the overflow line, then the end.
    slow.read_head();
    auto lines = slow.read_to_end(30s);
    BOOST_TEST_REQUIRE(lines.size() >= 2u);
    BOOST_TEST(parse_event(lines.front()).at("snapshot").as_bool());
    auto last = parse_event(lines.back());
    BOOST_TEST(last.at("kind").as_string() == "overflow", lines.back());
    BOOST_TEST(last.contains("reason"));
    BOOST_TEST(slow.ended());
    BOOST_TEST(slow.ended_cleanly());
    for (std::size_t i = 1; i + 1 < lines.size(); ++i)
        BOOST_TEST(parse_event(lines[i]).at("kind").as_string() != "overflow");

    BOOST_TEST(http(sock, "DELETE", "/v1/guests/flood").status == 200u);
    stop_fast = true;
    fast_thread.join();
    // The reader that kept up was not cut off.
    BOOST_TEST(!fast_overflowed);
    BOOST_TEST(fast_lines > 100u);
    BOOST_TEST(eventually(
        [&] { return metric(get(sock, "/metrics").body, "stereos_event_subscribers") == 1.0; }));
}

BOOST_AUTO_TEST_CASE(a_client_that_disconnects_drops_its_subscription) {
    temp_dir dir;
    fake_guests guests(dir, "fg", 1);
    hostd_process hostd(dir, {{"vm1", guests.endpoint()}});
    const auto& sock = hostd.socket();
    {
        event_reader reader(sock);
        BOOST_TEST_REQUIRE(reader.next_line().has_value());
        BOOST_TEST(eventually([&] {
            return metric(get(sock, "/metrics").body, "stereos_event_subscribers") == 1.0;
        }));
        reader.close();
    }
    // No event needs to happen for the daemon to notice.
    BOOST_TEST(eventually([&] {
        const auto m = get(sock, "/metrics").body;
        return metric(m, "stereos_event_subscribers") == 0.0 &&
               metric(m, "stereos_api_connections") == 1.0;  // this /metrics request
    }));
}

BOOST_AUTO_TEST_CASE(metrics_cover_guest_states_links_requests_and_the_daemon) {
    temp_dir dir;
    fake_guests guests(dir, "fg", 1);
    hostd_process hostd(dir, {{"vm1", guests.endpoint()}}, "info", quick_daemon);
    const auto& sock = hostd.socket();
    BOOST_TEST_REQUIRE(reaches_state(sock, "vm1", "ready"));
    for (int i = 0; i < 3; ++i)
        BOOST_TEST(get(sock, "/v1/guests/vm1/health").status == 200u);

    auto answer = get(sock, "/metrics");
    BOOST_TEST_REQUIRE(answer.status == 200u);
    BOOST_TEST(answer.headers["content-type"].starts_with("text/plain; version=0.0.4"));
    const auto& m = answer.body;
    BOOST_TEST(metric(m, R"(stereos_guest_state{guest="vm1",state="ready"})") == 1.0);
    BOOST_TEST(metric(m, R"(stereos_guest_state{guest="vm1",state="healthy"})") == 0.0);
    BOOST_TEST(metric(m, R"(stereos_guest_link_up{guest="vm1"})") == 1.0);
    BOOST_TEST(metric(m, R"(stereos_guest_link_connects_total{guest="vm1"})") >= 1.0);
    BOOST_TEST(metric(m, R"(stereos_guest_link_reconnects_total{guest="vm1"})") >= 0);
    BOOST_TEST(metric(m, R"(stereos_guest_protocol_errors_total{guest="vm1"})") == 0.0);
    BOOST_TEST(metric(m, R"(stereos_guest_provisioning_failures_total{guest="vm1"})") == 0.0);
    BOOST_TEST(
        metric(m, R"(stereos_guest_requests_total{guest="vm1",type="get_health",outcome="ok"})") >=
        3.0);  // and the link's own handshake and health polls
    BOOST_TEST(metric(m, R"(stereos_guest_request_duration_seconds_count{guest="vm1"})") >= 3.0);
    BOOST_TEST(
        metric(m, R"(stereos_guest_request_duration_seconds_bucket{guest="vm1",le="+Inf"})") ==
        metric(m, R"(stereos_guest_request_duration_seconds_count{guest="vm1"})"));
    BOOST_TEST(metric(m, "stereos_event_subscribers") == 0.0);
    BOOST_TEST(metric(m, "stereos_events_dropped_total") == 0.0);
    BOOST_TEST(m.find("# TYPE stereos_guest_request_duration_seconds histogram") !=
               std::string::npos);

    // The guest goes away: the link gauge follows.
    guests.process().stop();
    BOOST_TEST(eventually([&] {
        return metric(get(sock, "/metrics").body, R"(stereos_guest_link_up{guest="vm1"})") == 0.0;
    }));
    BOOST_TEST(undeclared_responses(sock) == 0.0);
}

BOOST_AUTO_TEST_CASE(a_provisioning_failure_is_counted) {
    temp_dir dir;
    fake_guests guests(dir, "fg", 1, {"--mount-exit-status", "32"});
    hostd_process hostd(dir, {{"vm1", guests.endpoint()}}, "info", quick_daemon);
    const auto& sock = hostd.socket();
    auto added =
        post(sock, "/v1/guests",
             R"({"name":"rt","endpoint":")" + guests.endpoint() +
                 R"(","provision":{"mounts":[{"tag":"s0","guest_path":"/data","fs_type":"9p"}]}})");
    BOOST_TEST_REQUIRE(added.status == 201u, added.body);
    BOOST_TEST_REQUIRE(reaches_state(sock, "rt", "ready"));
    auto provision = post(sock, "/v1/guests/rt/provision");
    check_error(provision, 502, "guest_error");
    BOOST_TEST(provision.error_message().find("exit status 32") != std::string::npos,
               provision.body);
    BOOST_TEST(metric(get(sock, "/metrics").body,
                      R"(stereos_guest_provisioning_failures_total{guest="rt"})") >= 1.0);
    BOOST_TEST(undeclared_responses(sock) == 0.0);
}

BOOST_AUTO_TEST_CASE(a_uid_outside_the_api_group_is_refused_with_403) {
    if (!can_switch_users()) {
        BOOST_TEST_MESSAGE("skipped: needs root, setpriv and curl to act as uid 65534");
        return;
    }
    temp_dir dir;
    fake_guests guests(dir, "fg", 1);
    hostd_process hostd(dir, {{"vm1", guests.endpoint()}});
    const auto& sock = hostd.socket();
    // The socket is owner-only, so uid 65534 could not even connect; loosen the file mode so
    // the daemon's own SO_PEERCRED check is what refuses it.
    BOOST_TEST_REQUIRE(::chmod(sock.c_str(), 0666) == 0);
    auto as_nobody = [&](const std::string& method, const std::string& target) {
        return run_command({"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "curl",
                            "-s", "-w", "\n%{http_code}", "--unix-socket", sock, "-X", method,
                            "http://localhost" + target});
    };
    auto post_answer = as_nobody("POST", "/v1/guests/vm1/ping");
    BOOST_TEST(post_answer.out.ends_with("\n403"), post_answer.out << post_answer.err);
    BOOST_TEST(post_answer.out.find("\"forbidden\"") != std::string::npos);
    auto get_answer = as_nobody("GET", "/v1/guests");
    BOOST_TEST(get_answer.out.ends_with("\n403"), get_answer.out);
    // Root still may.
    BOOST_TEST(post(sock, "/v1/guests/vm1/ping").status == 200u);

    // Each refusal is logged as a warning naming the caller, and a caller retrying is logged
    // once, not once per attempt.
    for (int i = 0; i < 3; ++i)
        BOOST_TEST(as_nobody("DELETE", "/v1/guests/vm1").out.ends_with("\n403"));
    const auto log = hostd.log();
    const std::string refused_delete = "vm1: refused DELETE /v1/guests/vm1 by uid 65534";
    BOOST_TEST(log.find("refused POST /v1/guests/vm1/ping by uid 65534") != std::string::npos, log);
    BOOST_TEST(log.find("refused GET /v1/guests by uid 65534") != std::string::npos, log);
    std::size_t deletes = 0;
    for (auto at = log.find(refused_delete); at != std::string::npos;
         at = log.find(refused_delete, at + 1))
        ++deletes;
    BOOST_TEST(deletes == 1u, log);
    BOOST_TEST(log.find(": 403 Forbidden") != std::string::npos, log);
    BOOST_TEST(undeclared_responses(sock) == 0.0);
}

BOOST_AUTO_TEST_CASE(members_of_the_api_group_are_allowed_by_primary_or_supplementary_group) {
    if (!can_switch_users() || ::getgrnam("nogroup") == nullptr) {
        BOOST_TEST_MESSAGE("skipped: needs root, setpriv, curl and the group nogroup");
        return;
    }
    temp_dir dir;
    fake_guests guests(dir, "fg", 1);
    hostd_process hostd(dir, {{"vm1", guests.endpoint()}}, "info", "", "nogroup");
    const auto& sock = hostd.socket();
    struct stat st {};
    BOOST_TEST_REQUIRE(::stat(sock.c_str(), &st) == 0);
    BOOST_TEST((st.st_mode & 0777) == 0660u);
    BOOST_TEST(st.st_gid == ::getgrnam("nogroup")->gr_gid);

    const auto gid = std::to_string(::getgrnam("nogroup")->gr_gid);
    auto primary =
        run_command({"setpriv", "--reuid=65534", "--regid=" + gid, "--clear-groups", "curl", "-s",
                     "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", sock, "-X", "POST",
                     "http://localhost/v1/guests/vm1/ping"});
    BOOST_TEST(primary.out == "200", primary.out << primary.err);
    auto supplementary = run_command(
        {"setpriv", "--reuid=65534", "--regid=54321", "--groups=" + gid, "curl", "-s", "-o",
         "/dev/null", "-w", "%{http_code}", "--unix-socket", sock, "http://localhost/v1/guests"});
    BOOST_TEST(supplementary.out == "200", supplementary.out << supplementary.err);

    // A member's change is audited with who asked and what they got; its ping is not.
    auto removal =
        run_command({"setpriv", "--reuid=65534", "--regid=" + gid, "--clear-groups", "curl", "-s",
                     "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", sock, "-X", "DELETE",
                     "http://localhost/v1/guests/ghost"});
    BOOST_TEST(removal.out == "404", removal.out << removal.err);
    const auto log = hostd.log();
    const auto* nobody = ::getpwuid(65534);
    const std::string who = "by uid 65534" +
                            (nobody ? " (" + std::string(nobody->pw_name) + ")" : std::string()) +
                            ", gid " + gid + ", pid ";
    BOOST_TEST(log.find("ghost: DELETE /v1/guests/ghost " + who) != std::string::npos, log);
    BOOST_TEST(log.find(": 404 Not Found") != std::string::npos, log);
    BOOST_TEST(log.find("POST /v1/guests/vm1/ping by") == std::string::npos, log);
}

// The audit trail goes by the route a request matched, not by how its path ends: a guest may
// be named "ping".
BOOST_AUTO_TEST_CASE(a_guest_named_ping_is_audited_like_any_other_and_its_pings_are_not) {
    temp_dir dir;
    fake_guests guests(dir, "fg", 1);
    hostd_process hostd(dir, {}, "info", quick_daemon);
    const auto& sock = hostd.socket();
    auto added =
        post(sock, "/v1/guests", R"({"name":"ping","endpoint":")" + guests.endpoint() + R"("})");
    BOOST_TEST_REQUIRE(added.status == 201u, added.body);
    BOOST_TEST_REQUIRE(reaches_state(sock, "ping", "ready"));
    BOOST_TEST(post(sock, "/v1/guests/ping/ping").status == 200u);
    auto removed = http(sock, "DELETE", "/v1/guests/ping");
    BOOST_TEST(removed.status == 200u, removed.body);

    const auto log = hostd.log();
    BOOST_TEST(log.find("ping: POST /v1/guests by uid ") != std::string::npos, log);
    BOOST_TEST(log.find("ping: DELETE /v1/guests/ping by uid ") != std::string::npos, log);
    BOOST_TEST(log.find(": 200 OK") != std::string::npos, log);
    BOOST_TEST(log.find("POST /v1/guests/ping/ping by") == std::string::npos, log);
}

BOOST_AUTO_TEST_CASE(secrets_never_reach_the_log_events_metrics_or_error_bodies) {
    temp_dir dir;
    fake_guests guests(dir, "fg", 1);
    hostd_process hostd(dir, {{"vm1", guests.endpoint()}}, "trace", quick_daemon);
    const auto& sock = hostd.socket();
    BOOST_TEST_REQUIRE(reaches_state(sock, "vm1", "ready"));
    event_reader events(sock);

    const auto secret = random_token("s3cr3t-");
    const auto config_secret = random_token("cfg-secret-");
    std::vector<std::string> answers;
    auto keep = [&](const http_answer& a) {
        answers.push_back(a.body);
        return a;
    };
    BOOST_TEST(keep(post(sock, "/v1/guests/vm1/secrets",
                         R"({"name":"API_KEY","value":")" + secret + R"("})"))
                   .status == 200u);
    BOOST_TEST(keep(http(sock, "PUT", "/v1/guests/vm1/config",
                         "[secrets]\nTOKEN = \"" + config_secret + "\"\n", "application/toml"))
                   .status == 200u);
    // Bad requests carrying the value must not echo it either.
    BOOST_TEST(keep(post(sock, "/v1/guests/vm1/secrets",
                         R"({"name":"API_KEY","value":")" + secret + R"(","mode":"rwx"})"))
                   .status == 400u);
    BOOST_TEST(
        keep(post(sock, "/v1/guests/vm1/secrets", R"({"name":7,"value":")" + secret + R"("})"))
            .status == 400u);
    BOOST_TEST(
        keep(post(sock, "/v1/guests/vm1/secrets", R"({"name":"K","value":)" + secret)).status ==
        400u);
    // stereosctl reads it from stdin.
    const auto ctl_secret = random_token("ctl-secret-");
    auto ctl = run_command({program_ctl(), "--socket", sock, "secret", "vm1", "OTHER"}, ctl_secret);
    BOOST_TEST(ctl.exit_code == 0, ctl.err);
    keep(get(sock, "/metrics"));

    // The guest did get them: they were really sent.
    const auto received = read_text(guests.record_file());
    BOOST_TEST(received.find(secret) != std::string::npos);
    BOOST_TEST(received.find(config_secret) != std::string::npos);
    BOOST_TEST(received.find(ctl_secret) != std::string::npos);

    std::string streamed;
    while (auto line = events.next_line(300ms))
        streamed += *line + "\n";
    BOOST_TEST(undeclared_responses(sock) == 0.0);
    BOOST_TEST(hostd.process().stop() == 0);
    const auto log = hostd.log();
    BOOST_TEST(log.find("POST /v1/guests/vm1/secrets") != std::string::npos,
               "requests are logged at debug");
    for (const auto& value : {secret, config_secret, ctl_secret}) {
        BOOST_TEST(log.find(value) == std::string::npos, "secret in the daemon's log");
        BOOST_TEST(streamed.find(value) == std::string::npos, "secret in the event stream");
        BOOST_TEST(ctl.out.find(value) == std::string::npos);
        for (const auto& body : answers)
            BOOST_TEST(body.find(value) == std::string::npos, "secret in a response: " << body);
    }
}

BOOST_AUTO_TEST_CASE(curl_and_stereosctl_drive_the_api_with_the_documented_exit_codes) {
    temp_dir dir;
    fake_guests guests(dir, "fg", 2);
    hostd_process hostd(dir, {{"vm1", guests.endpoints()[0]}}, "info", quick_daemon);
    const auto& sock = hostd.socket();
    BOOST_TEST_REQUIRE(reaches_state(sock, "vm1", "ready"));
    auto ctl = [&](std::vector<std::string> args, const std::string& input = {}) {
        args.insert(args.begin(), {program_ctl(), "--socket", sock});
        return run_command(args, input);
    };

    auto curl = run_command({"curl", "-s", "--unix-socket", sock, "http://localhost/v1/guests"});
    BOOST_TEST(curl.exit_code == 0);
    BOOST_TEST(json::parse(curl.out).at("guests").as_array().size() == 1u);
    auto curl_ping = run_command(
        {"curl", "-s", "--unix-socket", sock, "-X", "POST", "http://localhost/v1/guests/vm1/ping"});
    BOOST_TEST(json::parse(curl_ping.out).as_object().contains("rtt_us"), curl_ping.out);

    auto ls = ctl({"ls"});
    BOOST_TEST(ls.exit_code == 0, ls.err);
    BOOST_TEST(ls.out.starts_with("NAME"), ls.out);
    BOOST_TEST(ls.out.find("vm1") != std::string::npos);
    BOOST_TEST(ls.out.find("ready") != std::string::npos);
    auto ls_json = ctl({"--json", "ls"});
    BOOST_TEST(json::parse(ls_json.out).at("guests").as_array().size() == 1u);

    auto status = ctl({"status", "vm1"});
    BOOST_TEST(status.exit_code == 0);
    BOOST_TEST(status.out.find("state:       ready") != std::string::npos, status.out);
    BOOST_TEST(ctl({"health", "vm1"}).out.starts_with("vm1: ready"));
    BOOST_TEST(ctl({"ping", "vm1"}).out.starts_with("pong from vm1 in "));

    auto add = ctl({"add", "vm2", guests.endpoints()[1]});
    BOOST_TEST(add.exit_code == 0, add.err);
    auto wait = ctl({"wait", "vm2", "ready", "--timeout", "30s"});
    BOOST_TEST(wait.exit_code == 0, wait.err);
    BOOST_TEST(wait.out == "vm2 is ready\n");

    write_text(dir.file("jcard.toml"), "mixtape = \"base\"\n");
    BOOST_TEST(ctl({"config", "vm2", dir.file("jcard.toml")}).exit_code == 0);
    BOOST_TEST(ctl({"config", "vm2", "-"}, "mixtape = \"x\"\n").exit_code == 0);
    write_text(dir.file("key.pub"), "ssh-ed25519 AAAAC3 me@host\n");
    BOOST_TEST(ctl({"ssh-key", "vm2", "admin", dir.file("key.pub")}).exit_code == 0);
    BOOST_TEST(ctl({"mount", "vm2", "s0", "/data", "--fs", "virtiofs", "--ro"}).exit_code == 0);
    write_text(dir.file("secret"), "from-a-file");
    BOOST_TEST(ctl({"secret", "vm2", "K", "--from-file", dir.file("secret")}).exit_code == 0);
    BOOST_TEST(ctl({"provision", "vm2"}).exit_code == 0);

    // 1: the request failed (the guest refused).
    auto refused = ctl({"ssh-key", "vm2", "nobody-here", dir.file("key.pub")});
    BOOST_TEST(refused.exit_code == 1);
    BOOST_TEST(refused.err.find("guest_error") != std::string::npos, refused.err);
    BOOST_TEST(ctl({"status", "nope"}).exit_code == 1);
    // 4: a timeout.
    auto timeout = ctl({"wait", "vm2", "healthy", "--timeout", "1s"});
    BOOST_TEST(timeout.exit_code == 4, timeout.err);
    // 2: usage.
    BOOST_TEST(ctl({"frobnicate"}).exit_code == 2);
    BOOST_TEST(ctl({"health"}).exit_code == 2);
    // Without a guest's name, status is the daemon's own (here without a seal key).
    auto daemon_status = ctl({"status"});
    BOOST_TEST(daemon_status.exit_code == 0, daemon_status.err);
    BOOST_TEST(daemon_status.out.find("values at rest:  memory only") != std::string::npos,
               daemon_status.out);
    BOOST_TEST(ctl({"secret", "vm2", "EMPTY"}, "").exit_code == 2);
    // 3: unreachable, naming the socket.
    const auto missing = dir.file("nothing-here.sock");
    auto unreachable = run_command({program_ctl(), "--socket", missing, "ls"});
    BOOST_TEST(unreachable.exit_code == 3);
    BOOST_TEST(unreachable.err.find(missing) != std::string::npos, unreachable.err);
    auto from_env =
        run_command({program_ctl(), "ls"}, {}, 20s, {{"STEREOS_HOSTD_SOCKET", missing}});
    BOOST_TEST(from_env.exit_code == 3);
    BOOST_TEST(from_env.err.find(missing) != std::string::npos, from_env.err);
    auto env_ok = run_command({program_ctl(), "ls"}, {}, 20s, {{"STEREOS_HOSTD_SOCKET", sock}});
    BOOST_TEST(env_ok.exit_code == 0, env_ok.err);

    // events: human lines until the daemon goes away.
    auto shutdown = ctl({"shutdown", "vm2", "--reason", "done"});
    BOOST_TEST(shutdown.exit_code == 0, shutdown.err);
    child_process events({program_ctl(), "--socket", sock, "events", "vm1"}, dir.file("events.out"),
                         dir.file("events.err"));
    BOOST_TEST(eventually([&] { return !read_text(dir.file("events.out")).empty(); }));
    BOOST_TEST(
        read_text(dir.file("events.out")).find(" vm1 state ready (link up: ready) [current]") !=
            std::string::npos,
        read_text(dir.file("events.out")));
    BOOST_TEST(ctl({"rm", "vm2"}).exit_code == 0);
    BOOST_TEST(undeclared_responses(sock) == 0.0);
    BOOST_TEST(hostd.process().stop() == 0);
    // The stream ends when the daemon goes: the CLI exits by itself, without a signal.
    BOOST_TEST(events.wait_exit(std::chrono::seconds(20)).value_or(-1) == 0);
}

BOOST_AUTO_TEST_CASE(two_hundred_clients_hammering_health_all_get_answers_and_memory_stays_flat) {
    temp_dir dir;
    fake_guests guests(dir, "fg", 10);
    std::vector<guest_entry> entries;
    for (std::size_t i = 0; i < 10; ++i)
        entries.emplace_back("vm" + std::to_string(i), guests.endpoints()[i]);
    std::map<std::string, std::string> env;
#ifdef __SANITIZE_ADDRESS__
    // ASan keeps freed memory in a 256 MiB quarantine by default, which alone would look like
    // growth; a small one keeps RSS a measure of what the daemon holds.
    const char* asan = std::getenv("ASAN_OPTIONS");
    env["ASAN_OPTIONS"] = std::string(asan ? asan : "") + ":quarantine_size_mb=16";
#endif
    hostd_process hostd(dir, entries, "warning", quick_daemon, "", env);
    const auto& sock = hostd.socket();
    for (const auto& e : entries)
        BOOST_TEST_REQUIRE(reaches_state(sock, e.name, "ready"));

    struct totals {
        std::size_t sent = 0, ok = 0, failed = 0, broken = 0;
    };
    auto hammer = [&](std::chrono::milliseconds duration, totals& t) {
        asio::io_context io;
        const auto end = std::chrono::steady_clock::now() + duration;
        for (int client = 0; client < 200; ++client) {
            asio::co_spawn(
                io,
                [&, client]() -> asio::awaitable<void> {
                    socket_type s(io);
                    const asio::local::stream_protocol::endpoint endpoint(sock);
                    auto [cec] = co_await s.async_connect(endpoint, use_tuple);
                    if (cec) {
                        ++t.broken;
                        co_return;
                    }
                    beast::flat_buffer buffer;
                    const auto target = "/v1/guests/vm" + std::to_string(client % 10) + "/health";
                    while (std::chrono::steady_clock::now() < end) {
                        bhttp::request<bhttp::empty_body> request{bhttp::verb::get, target, 11};
                        request.set(bhttp::field::host, "localhost");
                        ++t.sent;
                        auto [wec, wn] = co_await bhttp::async_write(s, request, use_tuple);
                        bhttp::response<bhttp::string_body> response;
                        auto [rec, rn] = co_await bhttp::async_read(s, buffer, response, use_tuple);
                        if (wec || rec) {
                            ++t.broken;
                            co_return;
                        }
                        if (response.result_int() == 200 &&
                            response.body().find(R"("state":"ready")") != std::string::npos) {
                            ++t.ok;
                        } else {
                            ++t.failed;
                        }
                    }
                },
                stereos::transport::rethrow_if_failed);
        }
        io.run();
    };

    totals warmup;
    hammer(1500ms, warmup);
    const long rss_before = hostd.rss_kib();
    totals run;
    hammer(4s, run);
    const long rss_after = hostd.rss_kib();
    BOOST_TEST_MESSAGE("load: " << run.ok << " answers in 4 s; RSS " << rss_before << " -> "
                                << rss_after << " KiB");
    BOOST_TEST(run.broken == 0u);
    BOOST_TEST(run.failed == 0u);
    BOOST_TEST(run.ok == run.sent);
    BOOST_TEST(run.ok > 200u);
    BOOST_TEST(warmup.broken == 0u);
    // Flat: a second, longer run at full load does not grow memory beyond noise.
    BOOST_TEST(rss_after - rss_before < 32 * 1024, rss_before << " -> " << rss_after << " KiB");
    BOOST_TEST(metric(get(sock, "/metrics").body, "stereos_api_connections") == 1.0);
    BOOST_TEST(hostd.process().stop() == 0);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(hangup)

// A guest that reads requests and never answers: a request to it waits for its whole deadline,
// unless its client hangs up first, which withdraws it (a written request is then abandoned:
// its late reply, if any, is dropped, and no timeout is counted).
BOOST_AUTO_TEST_CASE(a_client_that_hangs_up_withdraws_its_guest_request_and_its_wait) {
    temp_dir dir;
    fake_guests silent(dir, "silent", 1, {"--never-reply", "--faults-after", "1"});
    hostd_process hostd(dir,
                        {{"silent", silent.endpoint(),
                          "request_timeout = \"1500ms\"\nhealth_interval = \"60s\"\n"}},
                        "debug");
    const auto& sock = hostd.socket();
    BOOST_TEST_REQUIRE(reaches_state(sock, "silent", "ready"));
    const std::string timeouts = R"(stereos_guest_link_timeouts_total{guest="silent"})";
    const std::string cancelled =
        R"(stereos_guest_requests_total{guest="silent",type="ping",outcome="cancelled"})";

    {
        open_request ping(sock,
                          "POST /v1/guests/silent/ping HTTP/1.1\r\nHost: localhost\r\n"
                          "Content-Length: 0\r\n\r\n");
        // Written to the guest before the client goes.
        BOOST_TEST_REQUIRE(eventually(
            [&] {
                return read_text(silent.record_file()).find(R"("type":"ping")") !=
                       std::string::npos;
            },
            10s));
        ping.close();
    }
    BOOST_TEST(
        eventually([&] { return metric(get(sock, "/metrics").body, cancelled) == 1.0; }, 5s));
    // Past the request's deadline: it was withdrawn, so it never timed out.
    std::this_thread::sleep_for(2500ms);
    const auto after_hangup = get(sock, "/metrics").body;
    BOOST_TEST(metric(after_hangup, timeouts) == 0.0, after_hangup);
    BOOST_TEST(metric(after_hangup, "stereos_api_connections") == 1.0);  // this request

    // The control: a client that stays gets its 504 and the timeout is counted.
    auto waited = post(sock, "/v1/guests/silent/ping");
    BOOST_TEST(waited.status == 504u, waited.body);
    BOOST_TEST(metric(get(sock, "/metrics").body, timeouts) == 1.0);

    // A long-poll ends with its client, not an hour later.
    {
        open_request wait(sock,
                          "GET /v1/guests/silent/wait?state=shutdown&timeout=1h HTTP/1.1\r\n"
                          "Host: localhost\r\n\r\n");
        BOOST_TEST_REQUIRE(eventually(
            [&] { return metric(get(sock, "/metrics").body, "stereos_api_connections") == 2.0; },
            5s));
        wait.close();
    }
    BOOST_TEST(eventually(
        [&] { return metric(get(sock, "/metrics").body, "stereos_api_connections") == 1.0; }, 5s));
    BOOST_TEST(hostd.log().find("API client hung up while waiting") != std::string::npos);
    BOOST_TEST(undeclared_responses(sock) == 0.0);
}

// The hangup watch reports a hangup once: a client that asks again on the same connection and
// goes at once (the report may come before its request waits) still withdraws that request.
BOOST_AUTO_TEST_CASE(a_client_that_asks_again_and_hangs_up_at_once_withdraws_that_request) {
    temp_dir dir;
    fake_guests guest(dir, "vm", 1);
    hostd_process hostd(dir, {{"vm", guest.endpoint()}}, "debug");
    const auto& sock = hostd.socket();
    BOOST_TEST_REQUIRE(reaches_state(sock, "vm", "ready"));
    for (int round = 0; round < 5; ++round) {
        boost::asio::io_context io;
        boost::asio::local::stream_protocol::socket client(io);
        client.connect(boost::asio::local::stream_protocol::endpoint(sock));
        // A first wait that ends at once makes the session watch this connection.
        const std::string first =
            "GET /v1/guests/vm/wait?state=booting&timeout=5s HTTP/1.1\r\nHost: x\r\n\r\n";
        boost::asio::write(client, boost::asio::buffer(first));
        std::string answer;
        boost::asio::read_until(client, boost::asio::dynamic_buffer(answer), "\r\n\r\n");
        BOOST_TEST(answer.starts_with("HTTP/1.1 200"), answer);
        const std::string second =
            "GET /v1/guests/vm/wait?state=shutdown&timeout=1h HTTP/1.1\r\nHost: x\r\n\r\n";
        boost::asio::write(client, boost::asio::buffer(second));
        client.close();
    }
    BOOST_TEST(eventually(
        [&] { return metric(get(sock, "/metrics").body, "stereos_api_connections") == 1.0; }, 5s));
}

// A request pipelined while the one before it waits on its guest is answered after it, in
// order; so it is when the client then shuts its sending side (that is no hangup: it still
// reads its answers).
BOOST_AUTO_TEST_CASE(a_request_pipelined_behind_a_waiting_one_is_answered_after_it) {
    temp_dir dir;
    fake_guests slow(dir, "slow", 1, {"--reply-delay", "500ms", "--faults-after", "1"});
    hostd_process hostd(dir, {{"slow", slow.endpoint(), "health_interval = \"60s\"\n"}}, "debug");
    const auto& sock = hostd.socket();
    BOOST_TEST_REQUIRE(reaches_state(sock, "slow", "ready"));
    for (const bool half_close : {false, true}) {
        boost::asio::io_context io;
        boost::asio::local::stream_protocol::socket client(io);
        client.connect(boost::asio::local::stream_protocol::endpoint(sock));
        const std::string ping =
            "POST /v1/guests/slow/ping HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
        const std::string then = "GET /v1/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        boost::asio::write(client, boost::asio::buffer(ping));
        std::this_thread::sleep_for(150ms);  // the ping waits on the guest by now
        boost::asio::write(client, boost::asio::buffer(then));
        if (half_close)
            client.shutdown(boost::asio::socket_base::shutdown_send);
        std::string answers;
        boost::system::error_code ec;
        boost::asio::read(client, boost::asio::dynamic_buffer(answers), ec);
        const auto pong = answers.find("\"rtt_us\"");
        const auto daemon_ping = answers.find("\"status\":\"ok\"");
        BOOST_TEST(
            (pong != std::string::npos && daemon_ping != std::string::npos && pong < daemon_ping),
            "half close " << half_close << ": " << answers);
    }
    BOOST_TEST(hostd.log().find("API client hung up") == std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()

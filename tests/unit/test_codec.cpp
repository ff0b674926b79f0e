// The JSON codec against the real guest's captured bytes and the reference client's lines.
#include <fstream>
#include <sstream>

#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include <stereos/protocol/codec.hpp>
#include <stereos/protocol/redact.hpp>

namespace json = boost::json;
using namespace stereos::protocol;

namespace {

json::value load_json(const std::string& name) {
    std::ifstream in(std::string(STEREOS_TEST_DATA_DIR) + "/" + name);
    BOOST_TEST_REQUIRE(in.good(), "cannot open test data " << name);
    std::stringstream text;
    text << in.rdbuf();
    return json::parse(text.str());
}

std::vector<std::string> split_lines(std::string_view text) {
    std::vector<std::string> lines;
    while (!text.empty()) {
        auto nl = text.find('\n');
        lines.emplace_back(text.substr(0, nl));
        text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    }
    return lines;
}

// The requests the reference Go client sent, in the order of reference-client-lines.json.
std::vector<host_message> reference_requests() {
    return {
        ping_request{},
        get_health_request{},
        config_payload{"mixtape = \"base\"\n[secrets]\nK = \"<v&>\"\n"},
        secret_payload{"ANTHROPIC_API_KEY", "sk-ant-xyz", 0600},
        ssh_key_payload{"admin",
                        "ssh-ed25519 "
                        "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl mb"},
        mount_payload{"share0", "/home/admin/workspace", "9p", false},
        mount_payload{"share1", "/data", "virtiofs", true},
        shutdown_payload{"mb down"},
        shutdown_payload{},
    };
}

template <class T>
const T& expect_alternative(const guest_message& m) {
    BOOST_TEST_REQUIRE(std::holds_alternative<T>(m), "decoded as " << type_name(m));
    return std::get<T>(m);
}

decode_error expect_error(std::string_view line) {
    auto r = decode_guest_line(line);
    BOOST_TEST_REQUIRE(r.has_error(), "expected an error for " << line);
    return r.error();
}

}  // namespace

BOOST_AUTO_TEST_SUITE(codec)

BOOST_AUTO_TEST_CASE(encoder_matches_the_reference_client_byte_for_byte) {
    const auto golden = load_json("reference-client-lines.json").as_array();
    const auto requests = reference_requests();
    BOOST_TEST_REQUIRE(golden.size() == requests.size());
    for (std::size_t i = 0; i < requests.size(); ++i) {
        const auto expected = json::value_to<std::string>(golden[i].at("sent_by_reference_client"));
        auto line = encode(requests[i]);
        BOOST_TEST_REQUIRE(line.has_value());
        BOOST_TEST(*line == expected, "request " << i);
    }
}

BOOST_AUTO_TEST_CASE(reference_client_lines_decode_back_to_the_same_requests) {
    const auto golden = load_json("reference-client-lines.json").as_array();
    const auto requests = reference_requests();
    for (std::size_t i = 0; i < requests.size(); ++i) {
        auto line = json::value_to<std::string>(golden[i].at("sent_by_reference_client"));
        auto decoded = decode_host_line(line);
        BOOST_TEST_REQUIRE(decoded.has_value(), decoded.error().detail);
        BOOST_TEST_REQUIRE(decoded->message.has_value());
        BOOST_TEST((*decoded->message == requests[i]), "request " << i);
    }
}

// Pinned choice: we escape <, > and & the way Go does, so every byte equals the reference.
BOOST_AUTO_TEST_CASE(html_characters_are_escaped_like_go) {
    auto line = encode(host_message{config_payload{"a<b>&c\xE2\x80\xA8"}});
    BOOST_TEST_REQUIRE(line.has_value());
    BOOST_TEST(*line ==
               "{\"type\":\"set_config\",\"payload\":{\"content\":"
               "\"a\\u003cb\\u003e\\u0026c\\u2028\"}}\n");
}

BOOST_AUTO_TEST_CASE(every_line_the_real_guest_sent_decodes) {
    const auto cases = load_json("stereosd-exchanges.json").as_array();
    std::size_t decoded_lines = 0;
    for (const auto& c : cases) {
        const auto name = json::value_to<std::string>(c.at("case"));
        const auto* received_value = c.as_object().if_contains("received");
        if (!received_value)
            continue;  // a case that only sent
        const auto received = json::value_to<std::string>(*received_value);
        if (received.find("...") != std::string::npos)
            continue;  // abbreviated in the capture
        for (const auto& line : split_lines(received)) {
            auto m = decode_guest_line(line);
            BOOST_TEST_REQUIRE(m.has_value(), name << ": " << m.error().detail);
            BOOST_TEST(!std::holds_alternative<unknown_message>(*m), name);
            ++decoded_lines;
        }
    }
    BOOST_TEST(decoded_lines > 60u);
}

BOOST_AUTO_TEST_CASE(real_guest_replies_decode_to_the_right_messages) {
    const auto cases = load_json("stereosd-exchanges.json").as_array();
    auto received_of = [&](std::string_view name) {
        for (const auto& c : cases) {
            if (c.at("case").as_string() == name)
                return json::value_to<std::string>(c.at("received"));
        }
        BOOST_FAIL("no capture named " << name);
        return std::string();
    };

    expect_alternative<pong_reply>(*decode_guest_line(received_of("ping")));

    auto health = expect_alternative<health_payload>(
        *decode_guest_line(received_of("get_health #2 (1 s later)")));
    BOOST_TEST((health.state == lifecycle_state::ready));
    BOOST_TEST(health.uptime_seconds == 1);
    BOOST_TEST(health.agents.empty());

    auto ok = expect_alternative<ack_payload>(*decode_guest_line(received_of("set_config (TOML)")));
    BOOST_TEST(ok.reply_to == "set_config");
    BOOST_TEST(ok.ok);
    BOOST_TEST(ok.error.empty());

    auto refused = expect_alternative<ack_payload>(
        *decode_guest_line(received_of("inject_secret path traversal")));
    BOOST_TEST(refused.reply_to == "inject_secret");
    BOOST_TEST(!refused.ok);
    BOOST_TEST(refused.error.find("invalid secret name") != std::string::npos);

    // Go wrote the reply_to as a\u003cb\u003e\u0026c.
    auto html = expect_alternative<ack_payload>(
        *decode_guest_line(received_of("unknown type with HTML chars")));
    BOOST_TEST(html.reply_to == "a<b>&c");

    auto unparsable = expect_alternative<ack_payload>(
        *decode_guest_line(received_of("malformed JSON (not json)")));
    BOOST_TEST(unparsable.reply_to == "");

    auto after_shutdown = expect_alternative<health_payload>(
        *decode_guest_line(received_of("get_health on conn A right after shutdown ack")));
    BOOST_TEST((after_shutdown.state == lifecycle_state::shutdown));
}

BOOST_AUTO_TEST_CASE(host_lines_sent_in_the_captures_round_trip) {
    const auto cases = load_json("stereosd-exchanges.json").as_array();
    std::size_t checked = 0;
    for (const auto& c : cases) {
        const auto* sent_value = c.as_object().if_contains("sent");
        if (!sent_value)
            continue;
        const auto sent = json::value_to<std::string>(*sent_value);
        const auto lines = split_lines(sent);
        if (lines.size() != 1)
            continue;
        auto decoded = decode_host_line(lines[0]);
        if (!decoded || !decoded->message)
            continue;  // malformed on purpose, or unknown type
        auto again = decode_host_line(*encode(*decoded->message));
        BOOST_TEST_REQUIRE(again.has_value());
        BOOST_TEST((*again->message == *decoded->message), c.at("case").as_string());
        ++checked;
    }
    BOOST_TEST(checked > 20u);
}

BOOST_AUTO_TEST_CASE(ping_and_get_health_have_no_payload) {
    BOOST_TEST(*encode(host_message{ping_request{}}) == "{\"type\":\"ping\"}\n");
    BOOST_TEST(*encode(host_message{get_health_request{}}) == "{\"type\":\"get_health\"}\n");
}

BOOST_AUTO_TEST_CASE(guest_messages_encode_with_omitempty_rules) {
    health_payload h{
        lifecycle_state::healthy,
        {agent_status{"claude", true, "s1", 2, ""}, agent_status{"x", false, "", 0, "boom"}},
        42};
    BOOST_TEST(*encode(guest_message{h}) ==
               "{\"type\":\"health\",\"payload\":{\"state\":\"healthy\",\"agents\":["
               "{\"name\":\"claude\",\"running\":true,\"session\":\"s1\",\"restarts\":2},"
               "{\"name\":\"x\",\"running\":false,\"restarts\":0,\"error\":\"boom\"}],"
               "\"uptime_seconds\":42}}\n");
    BOOST_TEST(*encode(guest_message{ack_payload{"mount", true, ""}}) ==
               "{\"type\":\"ack\",\"payload\":{\"reply_to\":\"mount\",\"ok\":true}}\n");
    BOOST_TEST(*encode(guest_message{lifecycle_payload{lifecycle_state::degraded, ""}}) ==
               "{\"type\":\"lifecycle\",\"payload\":{\"state\":\"degraded\"}}\n");
    BOOST_TEST(*encode(guest_message{pong_reply{}}) == "{\"type\":\"pong\"}\n");
}

BOOST_AUTO_TEST_CASE(decoded_health_round_trips_through_encode) {
    health_payload h{lifecycle_state::degraded, {agent_status{"a<b", true, "", 7, "e&"}}, 9};
    auto line = encode(guest_message{h});
    auto back = decode_guest_line(*line);
    BOOST_TEST_REQUIRE(back.has_value());
    BOOST_TEST((std::get<health_payload>(*back) == h));
}

BOOST_AUTO_TEST_CASE(unknown_fields_are_ignored) {
    auto m = decode_guest_line(
        R"({"type":"ack","id":7,"payload":{"reply_to":"mount","ok":true,"new_field":[1,2]}})");
    BOOST_TEST_REQUIRE(m.has_value());
    BOOST_TEST(expect_alternative<ack_payload>(*m).reply_to == "mount");
}

BOOST_AUTO_TEST_CASE(keys_match_case_insensitively_like_go) {
    auto m = decode_guest_line(R"({"TYPE":"lifecycle","Payload":{"State":"healthy"}})");
    BOOST_TEST_REQUIRE(m.has_value());
    BOOST_TEST((expect_alternative<lifecycle_payload>(*m).state == lifecycle_state::healthy));
}

BOOST_AUTO_TEST_CASE(trailing_carriage_return_and_blanks_are_tolerated) {
    BOOST_TEST(decode_guest_line("  {\"type\":\"pong\"}  \r").has_value());
}

BOOST_AUTO_TEST_CASE(unknown_type_is_a_distinguishable_result) {
    auto m = decode_guest_line(R"({"type":"telemetry","payload":{"cpu":3}})");
    BOOST_TEST_REQUIRE(m.has_value());
    BOOST_TEST(expect_alternative<unknown_message>(*m).type == "telemetry");
}

BOOST_AUTO_TEST_CASE(unknown_host_type_keeps_its_name) {
    auto r = decode_host_line(R"({"type":"frobnicate"})");
    BOOST_TEST_REQUIRE(r.has_value());
    BOOST_TEST(r->type == "frobnicate");
    BOOST_TEST(!r->message.has_value());
}

BOOST_AUTO_TEST_CASE(invalid_json_is_an_error) {
    auto e = expect_error(R"({"type":"pong")");
    BOOST_TEST((e.code == error::invalid_json));
    BOOST_TEST(e.detail.find("invalid JSON") == 0u);
    BOOST_TEST((expect_error("hello world").code == error::invalid_json));
    BOOST_TEST((expect_error("{\"type\":\"pong\"} x").code == error::invalid_json));
}

BOOST_AUTO_TEST_CASE(a_line_that_is_not_an_object_is_an_error) {
    auto e = expect_error("[1,2,3]");
    BOOST_TEST((e.code == error::wrong_type));
    BOOST_TEST(e.detail == "line: expected an object, got an array");
}

BOOST_AUTO_TEST_CASE(missing_type_names_the_field) {
    auto e = expect_error("{}");
    BOOST_TEST((e.code == error::missing_field));
    BOOST_TEST(e.detail == "type: required field is missing");
}

BOOST_AUTO_TEST_CASE(type_of_wrong_json_type_names_the_field) {
    auto e = expect_error(R"({"type":5})");
    BOOST_TEST((e.code == error::wrong_type));
    BOOST_TEST(e.detail == "type: expected a string, got a number");
}

BOOST_AUTO_TEST_CASE(health_without_payload_is_an_error) {
    auto e = expect_error(R"({"type":"health"})");
    BOOST_TEST((e.code == error::missing_field));
    BOOST_TEST(e.detail == "payload: required field is missing");
}

BOOST_AUTO_TEST_CASE(payload_of_wrong_type_names_the_field) {
    auto e = expect_error(R"({"type":"ack","payload":"yes"})");
    BOOST_TEST((e.code == error::wrong_type));
    BOOST_TEST(e.detail == "payload: expected an object, got a string");
}

BOOST_AUTO_TEST_CASE(unknown_state_names_the_field_and_value) {
    auto e = expect_error(R"({"type":"lifecycle","payload":{"state":"zombie"}})");
    BOOST_TEST((e.code == error::unknown_state));
    BOOST_TEST(e.detail == "payload.state: unknown state \"zombie\"");
}

BOOST_AUTO_TEST_CASE(wrong_field_type_names_the_field) {
    auto e = expect_error(R"({"type":"health","payload":{"state":"ready","uptime_seconds":"1"}})");
    BOOST_TEST((e.code == error::wrong_type));
    BOOST_TEST(e.detail == "payload.uptime_seconds: expected an integer, got a string");
}

BOOST_AUTO_TEST_CASE(nested_agent_errors_name_the_index) {
    auto e = expect_error(
        R"({"type":"health","payload":{"state":"ready","uptime_seconds":1,)"
        R"("agents":[{"name":"a","running":true,"restarts":0},{"name":"b","running":"no","restarts":0}]}})");
    BOOST_TEST((e.code == error::wrong_type));
    BOOST_TEST(e.detail == "payload.agents[1].running: expected a boolean, got a string");
}

BOOST_AUTO_TEST_CASE(missing_required_payload_field_is_named) {
    auto e = expect_error(R"({"type":"ack","payload":{"reply_to":"mount"}})");
    BOOST_TEST((e.code == error::missing_field));
    BOOST_TEST(e.detail == "payload.ok: required field is missing");
}

BOOST_AUTO_TEST_CASE(out_of_range_numbers_are_errors) {
    auto r = decode_host_line(
        R"({"type":"inject_secret","payload":{"name":"a","value":"b","mode":4294967296}})");
    BOOST_TEST_REQUIRE(r.has_error());
    BOOST_TEST((r.error().code == error::value_out_of_range));
    BOOST_TEST(r.error().detail.find("payload.mode") == 0u);
}

BOOST_AUTO_TEST_CASE(encoder_refuses_a_line_over_the_limit) {
    // The content plus the envelope is one byte over: 1 MiB including '\n'.
    const std::string envelope = "{\"type\":\"set_config\",\"payload\":{\"content\":\"\"}}\n";
    std::string content(max_line_bytes - envelope.size(), 'x');
    auto at_limit = encode(host_message{config_payload{content}});
    BOOST_TEST_REQUIRE(at_limit.has_value());
    BOOST_TEST(at_limit->size() == max_line_bytes);
    content += 'x';
    auto over = encode(host_message{config_payload{content}});
    BOOST_TEST_REQUIRE(over.has_error());
    BOOST_TEST((over.error() == error::line_too_long));
    std::string out = "kept";
    BOOST_TEST((encode_into(out, host_message{config_payload{content}}) == error::line_too_long));
    BOOST_TEST(out == "kept");
}

BOOST_AUTO_TEST_CASE(boost_json_conversions_work_both_ways) {
    const secret_payload secret{"K", "v", 0600};
    auto v = json::value_from(secret);
    BOOST_TEST(json::serialize(v) == R"({"name":"K","value":"v","mode":384})");
    BOOST_TEST((json::value_to<secret_payload>(v) == secret));

    const health_payload health{lifecycle_state::healthy, {agent_status{"a", true, "", 1, ""}}, 5};
    BOOST_TEST((json::value_to<health_payload>(json::value_from(health)) == health));
    BOOST_TEST((json::value_to<lifecycle_state>(json::value_from(lifecycle_state::degraded)) ==
                lifecycle_state::degraded));
    BOOST_CHECK_THROW(json::value_to<mount_payload>(json::parse(R"({"tag":1})")),
                      boost::system::system_error);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(redaction)

BOOST_AUTO_TEST_CASE(secret_values_are_redacted) {
    auto text = redacted(host_message{secret_payload{"API_KEY", "sk-very-secret", 0600}});
    BOOST_TEST(text.find("sk-very-secret") == std::string::npos);
    BOOST_TEST(
        text ==
        R"({"type":"inject_secret","payload":{"name":"API_KEY","value":"<redacted 14 bytes>","mode":384}})");
}

BOOST_AUTO_TEST_CASE(config_content_is_redacted) {
    auto text = redacted(host_message{config_payload{"[secrets]\nK = \"hunter2\"\n"}});
    BOOST_TEST(text.find("hunter2") == std::string::npos);
    BOOST_TEST(text == R"({"type":"set_config","payload":{"content":"<redacted 24 bytes>"}})");
}

BOOST_AUTO_TEST_CASE(other_messages_are_shown_whole) {
    BOOST_TEST(
        redacted(host_message{mount_payload{"t", "/p", "9p", true}}) ==
        R"({"type":"mount","payload":{"tag":"t","guest_path":"/p","fs_type":"9p","read_only":true}})");
    BOOST_TEST(redacted(guest_message{ack_payload{"mount", false, "no"}}) ==
               R"({"type":"ack","payload":{"reply_to":"mount","ok":false,"error":"no"}})");
}

BOOST_AUTO_TEST_CASE(printable_excerpt_escapes_and_bounds_raw_bytes) {
    BOOST_TEST(printable_excerpt("a\x01\xff\\b") == "a\\x01\\xff\\x5cb");
    auto cut = printable_excerpt(std::string(1000, 'x'), 10);
    BOOST_TEST(cut == "xxxxxxxxxx... (1000 bytes)");
}

BOOST_AUTO_TEST_SUITE_END()

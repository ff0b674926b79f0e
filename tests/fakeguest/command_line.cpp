#include "tests/fakeguest/command_line.hpp"

#include <algorithm>
#include <charconv>
#include <stdexcept>

namespace stereos::testing {

namespace {

[[noreturn]] void fail(std::string_view text, std::string_view problem) {
    throw std::invalid_argument("\"" + std::string(text) + "\": " + std::string(problem));
}

template <class T>
T parse_number(std::string_view whole, std::string_view digits, std::string_view what) {
    T value{};
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (digits.empty() || ec != std::errc{} || end != digits.data() + digits.size())
        fail(whole, std::string(what) + " must be a number in range");
    return value;
}

}  // namespace

listen_spec parse_listen_spec(std::string_view text) {
    listen_spec spec;
    if (text.starts_with("tcp:")) {
        auto rest = text.substr(4);
        const auto colon = rest.rfind(':');
        if (colon == std::string_view::npos)
            fail(text, "expected tcp:HOST:PORT");
        auto host = rest.substr(0, colon);
        if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
            host = host.substr(1, host.size() - 2);
        if (host.empty())
            fail(text, "empty host");
        spec.host = std::string(host);
        spec.port = parse_number<std::uint16_t>(text, rest.substr(colon + 1), "port");
        return spec;
    }
    if (text.starts_with("unix:")) {
        spec.what = listen_spec::kind::unix_socket;
        spec.path = std::string(text.substr(5));
        if (spec.path.empty())
            fail(text, "empty path");
        return spec;
    }
    if (text.starts_with("hybrid:")) {
        auto rest = text.substr(7);
        const auto colon = rest.rfind(':');
        if (colon == std::string_view::npos || colon == 0)
            fail(text, "expected hybrid:PATH:PORT");
        spec.what = listen_spec::kind::hybrid;
        spec.path = std::string(rest.substr(0, colon));
        spec.vsock_port = parse_number<std::uint32_t>(text, rest.substr(colon + 1), "port");
        return spec;
    }
    if (text.starts_with("vsock:")) {
        auto rest = text.substr(6);
        const auto colon = rest.find(':');
        if (colon == std::string_view::npos)
            fail(text, "expected vsock:CID:PORT (CID a number or ANY)");
        spec.what = listen_spec::kind::vsock;
        const auto cid = rest.substr(0, colon);
        spec.vsock_cid =
            cid == "ANY" ? any_vsock_cid : parse_number<std::uint32_t>(text, cid, "CID");
        spec.vsock_port = parse_number<std::uint32_t>(text, rest.substr(colon + 1), "port");
        return spec;
    }
    fail(text, "expected tcp:HOST:PORT, unix:PATH, hybrid:PATH:PORT or vsock:CID:PORT");
}

std::vector<listen_spec> expand_listen_spec(const listen_spec& spec, std::size_t count) {
    if (count == 0)
        throw std::invalid_argument("--count must be at least 1");
    std::vector<listen_spec> all(count, spec);
    if (count == 1)
        return all;
    if (spec.what == listen_spec::kind::tcp) {
        if (spec.port != 0 && spec.port + count - 1 > 65535)
            throw std::invalid_argument("--count " + std::to_string(count) + " from port " +
                                        std::to_string(spec.port) + " goes past port 65535");
        for (std::size_t i = 0; i < count; ++i)
            all[i].port = spec.port == 0 ? 0 : static_cast<std::uint16_t>(spec.port + i);
        return all;
    }
    if (spec.what == listen_spec::kind::vsock) {
        if (spec.vsock_port + std::uint64_t{count} - 1 >= any_vsock_cid)
            throw std::invalid_argument("--count " + std::to_string(count) + " from vsock port " +
                                        std::to_string(spec.vsock_port) + " runs out of ports");
        for (std::size_t i = 0; i < count; ++i)
            all[i].vsock_port = static_cast<std::uint32_t>(spec.vsock_port + i);
        return all;
    }
    const auto marker = spec.path.find("%d");
    if (marker == std::string::npos)
        throw std::invalid_argument("--count " + std::to_string(count) +
                                    " needs \"%d\" in the path " + spec.path);
    for (std::size_t i = 0; i < count; ++i)
        all[i].path.replace(marker, 2, std::to_string(i));
    return all;
}

std::chrono::milliseconds parse_duration(std::string_view text) {
    const auto unit_at = text.find_first_not_of("0123456789.");
    if (unit_at == 0 || unit_at == std::string_view::npos)
        fail(text, "expected a number and a unit (us, ms, s, m), e.g. 250ms");
    double value = 0;
    const auto number = text.substr(0, unit_at);
    const auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), value);
    if (ec != std::errc{} || end != number.data() + number.size())
        fail(text, "bad number");
    const auto unit = text.substr(unit_at);
    double millis = 0;
    if (unit == "us")
        millis = value / 1000;
    else if (unit == "ms")
        millis = value;
    else if (unit == "s")
        millis = value * 1000;
    else if (unit == "m")
        millis = value * 60'000;
    else
        fail(text, "unknown unit (use us, ms, s or m)");
    return std::chrono::milliseconds(static_cast<std::int64_t>(millis));
}

std::vector<scheduled_lifecycle> parse_lifecycle_script(std::string_view text) {
    std::vector<scheduled_lifecycle> events;
    while (!text.empty()) {
        const auto comma = text.find(',');
        const auto item = text.substr(0, comma);
        text.remove_prefix(comma == std::string_view::npos ? text.size() : comma + 1);
        const auto colon = item.find(':');
        if (colon == std::string_view::npos)
            fail(item, "expected OFFSET:STATE, e.g. 2s:ready");
        const auto state = protocol::parse_lifecycle_state(item.substr(colon + 1));
        if (!state)
            fail(item, "unknown state (booting, ready, healthy, degraded, shutdown)");
        events.push_back({parse_duration(item.substr(0, colon)), *state});
    }
    std::stable_sort(events.begin(), events.end(),
                     [](const auto& a, const auto& b) { return a.offset < b.offset; });
    return events;
}

std::vector<std::int64_t> parse_uptime_sequence(std::string_view text) {
    std::vector<std::int64_t> uptimes;
    const std::string_view whole = text;
    for (;;) {
        const auto comma = text.find(',');
        uptimes.push_back(parse_number<std::int64_t>(whole, text.substr(0, comma), "each uptime"));
        if (comma == std::string_view::npos)
            return uptimes;
        text.remove_prefix(comma + 1);
    }
}

}  // namespace stereos::testing

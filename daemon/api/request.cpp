#include "daemon/api/request.hpp"

#include <algorithm>

#include <boost/json/parse.hpp>

namespace stereos::daemon::api {

namespace json = boost::json;

namespace {

int hex_value(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

}  // namespace

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

body_fields::body_fields(std::string_view body, bool empty_ok) {
    if (body.empty() && empty_ok)
        return;
    boost::system::error_code ec;
    auto value = json::parse(body, ec);
    if (ec) {
        problem_ = "body is not valid JSON: " + ec.message();
    } else if (!value.is_object()) {
        problem_ = "body must be a JSON object";
    } else {
        object_ = std::move(value.get_object());
    }
}

std::string body_fields::required_string(std::string_view key) {
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

std::string body_fields::optional_string(std::string_view key) {
    const auto* v = object_.if_contains(key);
    if (!v || v->is_null())
        return {};
    if (!v->is_string()) {
        fail("field \"" + std::string(key) + "\" must be a string");
        return {};
    }
    return std::string(v->get_string());
}

bool body_fields::optional_bool(std::string_view key) {
    const auto* v = object_.if_contains(key);
    if (!v || v->is_null())
        return false;
    if (!v->is_bool()) {
        fail("field \"" + std::string(key) + "\" must be true or false");
        return false;
    }
    return v->get_bool();
}

json::object body_fields::required_object(std::string_view key) {
    if (!object_.contains(key)) {
        fail("missing field \"" + std::string(key) + "\"");
        return {};
    }
    return optional_object(key);
}

json::object body_fields::optional_object(std::string_view key) {
    const auto* v = object_.if_contains(key);
    if (!v || v->is_null())
        return {};
    if (!v->is_object()) {
        fail("field \"" + std::string(key) + "\" must be an object");
        return {};
    }
    return v->get_object();
}

std::uint32_t body_fields::optional_mode(std::string_view key) {
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

void body_fields::fail(std::string problem) {
    if (problem_.empty())
        problem_ = std::move(problem);
}

void body_fields::check(std::string_view key, const config::rule_result& rule) {
    if (!rule)
        fail("field \"" + std::string(key) + "\": " + rule.error().message);
}

}  // namespace stereos::daemon::api

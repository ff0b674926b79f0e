// The local API's request parsing, with no socket and no daemon state: the request target
// (path segments, percent-decoding, the query string) and the fields of a JSON object body.
// Pure functions, so the fuzz target drives them directly.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/json/object.hpp>

#include "config/input_rules.hpp"

namespace stereos::daemon::api {

// %XX decoding; '+' means a space in query strings only. Nothing on a malformed escape.
std::optional<std::string> percent_decode(std::string_view text, bool plus_is_space);

struct parsed_target {
    std::vector<std::string> segments;  // "/v1/guests/vm1" -> v1, guests, vm1
    std::map<std::string, std::string, std::less<>> query;
};

// Splits an origin-form target ("/path?query"); nothing if it does not start with '/' or has a
// malformed escape. An empty query key is dropped; a repeated one keeps its first value.
std::optional<parsed_target> parse_target(std::string_view target);

// Whether `segments` match `pattern` ("/v1/guests/{name}/ping"); the {name} segment goes to
// `name`.
bool matches(std::string_view pattern, const std::vector<std::string>& segments, std::string& name);

// Reads fields of a JSON object body, keeping the first problem. Messages name fields, never
// values: the body may carry a secret.
class body_fields {
  public:
    // `empty_ok`: an empty body reads as an object with no fields.
    body_fields(std::string_view body, bool empty_ok);

    std::string required_string(std::string_view key);
    std::string optional_string(std::string_view key);
    bool optional_bool(std::string_view key);
    boost::json::object required_object(std::string_view key);
    boost::json::object optional_object(std::string_view key);
    // A file mode: a number (e.g. 384) or an octal string ("0600", "0o600", "600").
    std::uint32_t optional_mode(std::string_view key);

    void fail(std::string problem);
    // Keeps a refusal by one of the input rules as `field "<key>": <why>`. The rules quote what
    // they refuse, so no rule is ever applied to a secret's value (only to names, paths, file
    // system types and public keys).
    void check(std::string_view key, const config::rule_result& rule);
    bool ok() const noexcept { return problem_.empty(); }
    const std::string& problem() const noexcept { return problem_; }

  private:
    boost::json::object object_;
    std::string problem_;
};

}  // namespace stereos::daemon::api

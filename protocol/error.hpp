// Errors of the protocol library: a boost::system category, plus a decode error that also
// carries a human-readable detail naming the offending field.
// Threads: the category is an immutable singleton, safe to use from any thread.
#pragma once

#include <string>
#include <system_error>

#include <boost/assert/source_location.hpp>
#include <boost/system/error_code.hpp>
#include <boost/system/result.hpp>

namespace stereos::protocol {

enum class error {
    invalid_json = 1,    // the line is not a JSON object
    missing_field,       // a required field is absent
    wrong_type,          // a field has the wrong JSON type
    unknown_state,       // a lifecycle state string we do not know
    line_too_long,       // over the 1 MiB line limit
    value_out_of_range,  // a number does not fit its field
};

const boost::system::error_category& protocol_category() noexcept;

inline boost::system::error_code make_error_code(error e) noexcept {
    return {static_cast<int>(e), protocol_category()};
}

// What went wrong, in words that name the field, e.g. "payload.state: unknown state \"zombie\"".
struct decode_error {
    boost::system::error_code code;
    std::string detail;
};

[[noreturn]] void throw_exception_from_error(const decode_error& e,
                                             const boost::source_location& location);

template <class T>
using decode_result = boost::system::result<T, decode_error>;

}  // namespace stereos::protocol

template <>
struct boost::system::is_error_code_enum<stereos::protocol::error> : std::true_type {};

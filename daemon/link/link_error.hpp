// Errors a guest link reports to callers of async_request. Results the guest itself reports
// (an ack with ok:false) are data, not errors: see guest_link.hpp.
#pragma once

#include <boost/system/error_code.hpp>

namespace stereos::link {

enum class link_error {
    request_timeout = 1,  // written, but no reply within the deadline
    guest_unavailable,    // not written within the deadline: the link was down
    connection_lost,      // written, then the connection dropped: the guest may have acted on it
    protocol_error,       // the guest sent something that desynchronised the link
    keepalive_timeout,    // the link's own ping went unanswered
    guest_unresponsive,   // several requests in a row timed out
    link_stopped,         // the link was stopped (guest removed or daemon stopping)
    queue_full,           // too many requests or bytes waiting for this guest
    request_too_large,    // the encoded request is over the guest's 1 MiB line limit
    connection_closed,    // the guest closed the connection (EOF)
    handshake_failed,     // connected, but the guest did not answer the first get_health
    handshake_timeout,    // connected, but no answer to the first get_health in time
    reconnect_requested,  // an operator asked for a fresh connection
};

const boost::system::error_category& link_category() noexcept;

inline boost::system::error_code make_error_code(link_error e) noexcept {
    return {static_cast<int>(e), link_category()};
}

}  // namespace stereos::link

template <>
struct boost::system::is_error_code_enum<stereos::link::link_error> : std::true_type {};

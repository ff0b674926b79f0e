#include <stereos/link/link_error.hpp>

#include <string>

namespace stereos::link {

namespace {
class category final : public boost::system::error_category {
  public:
    const char* name() const noexcept override { return "stereos.link"; }
    std::string message(int value) const override {
        switch (static_cast<link_error>(value)) {
            case link_error::request_timeout:
                return "the guest did not reply within the deadline";
            case link_error::guest_unavailable:
                return "the guest is not connected and the request could not be sent in time";
            case link_error::connection_lost:
                return "connection lost after the request was sent; the guest may have acted on it";
            case link_error::protocol_error:
                return "protocol error on the guest connection";
            case link_error::keepalive_timeout:
                return "keepalive ping unanswered";
            case link_error::guest_unresponsive:
                return "the guest stopped answering requests";
            case link_error::link_stopped:
                return "the guest link was stopped";
            case link_error::queue_full:
                return "too many requests queued for this guest";
            case link_error::request_too_large:
                return "request exceeds the guest's 1 MiB line limit";
            case link_error::connection_closed:
                return "the guest closed the connection";
            case link_error::handshake_failed:
                return "the guest did not answer the connection's first request";
            case link_error::handshake_timeout:
                return "no answer to the connection's first request in time";
            case link_error::reconnect_requested:
                return "a fresh connection was requested";
        }
        return "unknown link error";
    }
};
}  // namespace

const boost::system::error_category& link_category() noexcept {
    static const category instance;
    return instance;
}

}  // namespace stereos::link

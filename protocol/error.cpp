#include <stereos/protocol/error.hpp>

#include <boost/system/system_error.hpp>
#include <boost/throw_exception.hpp>

namespace stereos::protocol {

namespace {
class category final : public boost::system::error_category {
  public:
    const char* name() const noexcept override { return "stereos.protocol"; }
    std::string message(int value) const override {
        switch (static_cast<error>(value)) {
            case error::invalid_json:
                return "invalid JSON";
            case error::missing_field:
                return "required field is missing";
            case error::wrong_type:
                return "field has the wrong JSON type";
            case error::unknown_state:
                return "unknown lifecycle state";
            case error::line_too_long:
                return "line exceeds the 1 MiB limit";
            case error::value_out_of_range:
                return "number out of range";
        }
        return "unknown protocol error";
    }
};
}  // namespace

const boost::system::error_category& protocol_category() noexcept {
    static const category instance;
    return instance;
}

void throw_exception_from_error(const decode_error& e, const boost::source_location& location) {
    boost::throw_exception(boost::system::system_error(e.code, e.detail), location);
}

}  // namespace stereos::protocol

// A runtime guest from the API's JSON: read by model_reader like the file's TOML, then checked by
// check_guest, so an API guest obeys exactly the file's rules and wording.
#include <cstring>  // explicit_bzero (glibc)
#include <limits>

#include <boost/json/value.hpp>

#include "config/config.hpp"
#include "config/model_reader.hpp"

namespace stereos::config {

namespace {

namespace json = boost::json;

// The JSON side of model_reader. A null is taken as absent, as if the key were not there.
class json_document {
  public:
    using node = json::value;
    using table = json::object;

    static detail::shape shape_of(const node& n) {
        switch (n.kind()) {
            case json::kind::object:
                return detail::shape::table;
            case json::kind::array:
                return detail::shape::array;
            case json::kind::string:
                return detail::shape::string;
            case json::kind::int64:
            case json::kind::uint64:
                return detail::shape::integer;
            case json::kind::double_:
                return detail::shape::floating_point;
            case json::kind::bool_:
                return detail::shape::boolean;
            case json::kind::null:
                break;
        }
        return detail::shape::nothing;
    }
    static const node* find(const table& t, std::string_view key) {
        const node* n = t.if_contains(key);
        return n != nullptr && !n->is_null() ? n : nullptr;
    }
    static const table& table_of(const node& n) { return n.get_object(); }
    static std::size_t size_of(const node& array) { return array.get_array().size(); }
    static const node& element(const node& array, std::size_t i) { return array.get_array()[i]; }
    static std::string_view string_of(const node& n) { return n.get_string(); }
    static std::int64_t integer_of(const node& n) {
        if (n.is_uint64()) {
            // Out of every range anyway; the bound only keeps the conversion defined.
            return static_cast<std::int64_t>(
                std::min<std::uint64_t>(n.get_uint64(), std::numeric_limits<std::int64_t>::max()));
        }
        return n.get_int64();
    }
    static bool boolean_of(const node& n) { return n.get_bool(); }

    // A request has no lines: its messages name keys only.
    static void note(const std::string&, const node&) {}
    template <class Visit>
    static void for_each_key(const table& t, const std::string&, Visit visit) {
        for (const auto& entry : t) {
            if (!entry.value().is_null()) {
                visit(entry.key());
            }
        }
    }
};

void wipe(std::string& value) {
    explicit_bzero(value.data(), value.size());
}

// The values a rejected definition carries are gone with it.
void wipe_values(provision_config& provision) {
    if (provision.config_content) {
        wipe(*provision.config_content);
    }
    for (auto& secret : provision.secrets) {
        if (secret.value) {
            wipe(*secret.value);
        }
    }
}

}  // namespace

boost::system::result<guest_config, config_errors> read_runtime_guest(
    std::string_view name, std::string_view endpoint, const boost::json::object& provision,
    const link_timeouts& defaults, load_options options) {
    guest_config guest;
    guest.name = name;
    guest.endpoint_text = endpoint;
    json_document document;
    detail::model_reader<json_document> reader(document);
    if (!provision.empty()) {
        reader.read_provision(provision, "provision.", guest.provision);
    }
    config_errors errors;
    for (auto& e : reader.errors()) {
        errors.messages.push_back(e.key + ": " + e.message);
    }
    for (auto& e : check_guest(guest, "", defaults, options)) {
        if (reader.unread().hide(e.key)) {
            continue;
        }
        if (!e.first_key.empty()) {
            e.message += " (also at " + e.first_key + ")";
        }
        errors.refused_references = errors.refused_references || e.refused_reference;
        errors.messages.push_back(e.key + ": " + e.message);
    }
    if (!errors.messages.empty()) {
        wipe_values(guest.provision);
        return errors;
    }
    return guest;
}

}  // namespace stereos::config

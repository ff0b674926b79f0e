// daemon/openapi.json against the route table: every route documented, every documented
// operation routed, the same success status and the same error statuses and codes.
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <tuple>

#include <boost/beast/http/verb.hpp>
#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include "daemon/api/routes.hpp"
#include "daemon/guest/guest_state_machine.hpp"

namespace json = boost::json;
namespace api = stereos::daemon::api;

namespace {

json::object load_document() {
    std::ifstream in(STEREOS_OPENAPI_FILE);
    std::ostringstream text;
    text << in.rdbuf();
    return json::parse(text.str()).as_object();
}

std::string lower(std::string_view verb) {
    std::string out(verb);
    for (auto& c : out)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

using operation = std::pair<std::string, std::string>;  // {verb, path}
using declared_error = std::pair<unsigned, std::string>;

}  // namespace

BOOST_AUTO_TEST_SUITE(openapi)

BOOST_AUTO_TEST_CASE(the_document_and_the_route_table_agree) {
    const auto document = load_document();
    BOOST_TEST(document.at("openapi").as_string().starts_with("3."));
    const auto& paths = document.at("paths").as_object();

    std::set<operation> documented;
    for (const auto& [path, item] : paths) {
        for (const auto& [verb, op] : item.as_object())
            documented.emplace(verb, path);
    }
    std::set<operation> routed;
    for (const auto& route : api::routes()) {
        const operation op{lower(boost::beast::http::to_string(route.verb)),
                           std::string(route.pattern)};
        routed.insert(op);
        BOOST_TEST_CONTEXT(op.first << " " << op.second) {
            BOOST_TEST_REQUIRE(documented.contains(op), "the route is not documented");
            const auto& responses =
                paths.at(op.second).at(op.first).as_object().at("responses").as_object();
            std::set<declared_error> in_document;
            std::set<unsigned> successes;
            for (const auto& [status_text, response] : responses) {
                const auto status = static_cast<unsigned>(std::stoul(std::string(status_text)));
                if (status < 400) {
                    successes.insert(status);
                    continue;
                }
                const auto* codes = response.as_object().if_contains("x-error-codes");
                BOOST_TEST_REQUIRE(codes, status << " lists no x-error-codes");
                for (const auto& code : codes->as_array())
                    in_document.emplace(status, std::string(code.as_string()));
            }
            std::set<declared_error> in_table{
                {api::refusal.status, std::string(api::refusal.code)}};
            for (const auto& error : route.errors)
                in_table.emplace(error.status, std::string(error.code));
            BOOST_TEST(successes == std::set<unsigned>{route.success});
            BOOST_TEST((in_document == in_table));
            for (const auto& [status, code] : in_table) {
                BOOST_TEST_CONTEXT(status << " " << code) {
                    BOOST_TEST(in_document.contains({status, code}), "declared, not documented");
                }
            }
            for (const auto& [status, code] : in_document) {
                BOOST_TEST_CONTEXT(status << " " << code) {
                    BOOST_TEST(in_table.contains({status, code}), "documented, not declared");
                }
            }
        }
    }
    for (const auto& op : documented) {
        BOOST_TEST_CONTEXT(op.first << " " << op.second) {
            BOOST_TEST(routed.contains(op), "documented but not routed");
        }
    }
}

BOOST_AUTO_TEST_CASE(the_wait_states_are_the_daemons) {
    const auto document = load_document();
    const auto& parameters =
        document.at("paths").at("/v1/guests/{name}/wait").at("get").at("parameters").as_array();
    std::set<std::string> documented;
    for (const auto& parameter : parameters) {
        if (parameter.at("name") == "state") {
            for (const auto& state : parameter.at("schema").at("enum").as_array())
                documented.emplace(state.as_string());
        }
    }
    std::set<std::string> states;
    for (auto state : stereos::daemon::all_guest_states)
        states.emplace(stereos::daemon::to_string(state));
    BOOST_TEST((documented == states));
}

BOOST_AUTO_TEST_SUITE_END()

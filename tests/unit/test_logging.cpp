// What the journal's CODE_FILE= and CODE_FUNC= carry, and what the audit trail takes from a
// request: relative paths, readable names for functions and coroutines, the guest of a route.
#include <source_location>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/test/unit_test.hpp>

#include "daemon/api/audit.hpp"
#include "daemon/logging.hpp"

namespace asio = boost::asio;
namespace http = boost::beast::http;
using stereos::log::readable_function_name;
using stereos::log::source_relative_path;

namespace {

std::string name_seen_by_default_argument(
    std::source_location where = std::source_location::current()) {
    return where.function_name();
}

asio::awaitable<std::string> a_coroutine_logging() {
    co_return name_seen_by_default_argument();
}

stereos::daemon::api::http_request request_of(http::verb method, std::string_view target) {
    return {method, target, 11};
}

}  // namespace

BOOST_AUTO_TEST_SUITE(log_code_fields)

BOOST_AUTO_TEST_CASE(code_file_is_relative_to_the_source_tree) {
    const auto here = std::source_location::current();
    BOOST_TEST(source_relative_path(here.file_name()) == "tests/unit/test_logging.cpp",
               here.file_name());
    BOOST_TEST(source_relative_path("../../daemon/guest_link.cpp") == "daemon/guest_link.cpp");
    BOOST_TEST(source_relative_path("/usr/include/c++/12/bits/x.h") ==
               "/usr/include/c++/12/bits/x.h");
}

BOOST_AUTO_TEST_CASE(a_coroutine_gets_its_own_name_not_its_frame) {
    asio::io_context io;
    std::string raw;
    asio::co_spawn(io, a_coroutine_logging(), [&](const std::exception_ptr& e, std::string name) {
        BOOST_TEST(!e);
        raw = std::move(name);
    });
    io.run();
    BOOST_TEST(raw.find("Frame") != std::string::npos, raw);  // what std::source_location gives
    BOOST_TEST(readable_function_name(raw) == "{anonymous}::a_coroutine_logging");
}

BOOST_AUTO_TEST_CASE(return_types_parameters_and_template_arguments_go) {
    BOOST_TEST(readable_function_name("int main()") == "main");
    BOOST_TEST(readable_function_name("boost::asio::awaitable<void> ns::K::run(int)") ==
               "ns::K::run");
    BOOST_TEST(
        readable_function_name("std::vector<int> ns::K::f(T) [with T = std::basic_string<char>]") ==
        "ns::K::f");
    BOOST_TEST(readable_function_name("void ns::g(ns::g()::_ZN2ns1gEv.Frame*)") == "ns::g");
    BOOST_TEST(readable_function_name("ns::K::run(int)::<lambda(const ns::up&)>") ==
               "ns::K::run::<lambda>");
    BOOST_TEST(readable_function_name("std::size_t ns::K::size() const") == "ns::K::size");
    BOOST_TEST(readable_function_name("void ns::K::operator()(int)") == "ns::K::operator()");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(api_audit_trail)

BOOST_AUTO_TEST_CASE(routes_that_change_something_are_audited_pings_and_reads_are_not) {
    // By the route a request matches, not by its path: a guest may be named "ping".
    const auto audited = [](http::verb method, std::string_view target) {
        const auto matched = stereos::daemon::api::match_route(request_of(method, target));
        const auto* match = std::get_if<stereos::daemon::api::route_match>(&matched);
        BOOST_TEST_REQUIRE(match, target);
        return match->chosen->audited;
    };
    BOOST_TEST(audited(http::verb::post, "/v1/guests/vm1/shutdown"));
    BOOST_TEST(audited(http::verb::delete_, "/v1/guests/vm1"));
    BOOST_TEST(audited(http::verb::put, "/v1/guests/vm1/config"));
    BOOST_TEST(audited(http::verb::post, "/v1/guests"));
    BOOST_TEST(audited(http::verb::patch, "/v1/guests/vm1/provision"));
    BOOST_TEST(audited(http::verb::delete_, "/v1/guests/ping"));
    BOOST_TEST(audited(http::verb::put, "/v1/guests/ping/config"));
    BOOST_TEST(!audited(http::verb::post, "/v1/guests/vm1/ping"));
    BOOST_TEST(!audited(http::verb::post, "/v1/guests/ping/ping"));
    BOOST_TEST(!audited(http::verb::get, "/v1/guests/vm1"));
    BOOST_TEST(!audited(http::verb::get, "/v1/guests/vm1/wait"));
    for (const auto& route : stereos::daemon::api::routes())
        BOOST_TEST((route.verb != http::verb::get || !route.audited), route.pattern);
}

BOOST_AUTO_TEST_CASE(the_guest_comes_from_the_path_or_the_location_of_an_added_guest) {
    using stereos::daemon::api::audited_guest;
    stereos::daemon::api::http_response plain{http::status::ok, 11};
    BOOST_TEST(audited_guest(request_of(http::verb::post, "/v1/guests/vm1/shutdown?x=1"), plain) ==
               "vm1");
    BOOST_TEST(audited_guest(request_of(http::verb::delete_, "/v1/guests/vm2"), plain) == "vm2");
    BOOST_TEST(audited_guest(request_of(http::verb::post, "/v1/guests"), plain) == "");
    stereos::daemon::api::http_response created{http::status::created, 11};
    created.set(http::field::location, "/v1/guests/rt1");
    BOOST_TEST(audited_guest(request_of(http::verb::post, "/v1/guests"), created) == "rt1");
    // Whatever a client puts in the path reaches the log only printable.
    const auto odd = audited_guest(request_of(http::verb::post,
                                              "/v1/guests/a\x01"
                                              "b/shutdown"),
                                   plain);
    BOOST_TEST(odd.find('\x01') == std::string::npos, odd);
}

BOOST_AUTO_TEST_SUITE_END()

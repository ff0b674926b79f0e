// The memfd that describes guest connections in systemd's fd store: what one daemon process
// writes, the next reads back exactly (the unread bytes may be any bytes), and anything else is
// refused as a whole, so no connection is resumed on a wrong description.
#include <boost/test/unit_test.hpp>

#include "daemon/fd_store.hpp"

using namespace stereos::daemon;

BOOST_AUTO_TEST_SUITE(fd_store_description)

BOOST_AUTO_TEST_CASE(what_one_process_writes_the_next_reads_back_byte_for_byte) {
    adoptable_connections connections;
    const std::string binary("{\"type\":\"lifec\0\xff\x80\n", 19);
    connections.emplace("vm1",
                        adoptable_connection{"unix:/run/vm1.sock",
                                             stereos::link::handed_over_connection(-1, binary)});
    connections.emplace("vm2", adoptable_connection{"tcp:127.0.0.1:2222",
                                                    stereos::link::handed_over_connection(-1, "")});
    std::string problem;
    const auto read = fd_store::parse_description(fd_store::describe(connections), problem);
    BOOST_TEST_REQUIRE(read.has_value(), problem);
    // In the order the sockets are sent: the connections' own (by name).
    BOOST_TEST_REQUIRE(read->size() == 2u);
    BOOST_TEST((*read)[0].guest == "vm1");
    BOOST_TEST((*read)[0].endpoint == "unix:/run/vm1.sock");
    BOOST_TEST((*read)[0].unread == binary);
    BOOST_TEST((*read)[1].guest == "vm2");
    BOOST_TEST((*read)[1].endpoint == "tcp:127.0.0.1:2222");
    BOOST_TEST((*read)[1].unread.empty());
}

BOOST_AUTO_TEST_CASE(another_format_or_a_damaged_description_is_refused_with_a_reason) {
    const std::pair<std::string, std::string> cases[] = {
        {"not json", "unreadable"},
        {R"({"version":1,"links":{}})", "format 1"},
        {R"({"version":2})", "unreadable"},
        {R"({"version":2,"links":[{"guest":"vm1","endpoint":"unix:/x"}]})", "incomplete"},
        {R"({"version":2,"links":[{"guest":"vm1","endpoint":"unix:/x","unread_hex":"zz"}]})",
         "not hex"},
    };
    for (const auto& [text, reason] : cases) {
        std::string problem;
        BOOST_TEST(!fd_store::parse_description(text, problem).has_value(), text);
        BOOST_TEST(problem.find(reason) != std::string::npos, text << ": " << problem);
    }
}

BOOST_AUTO_TEST_SUITE_END()

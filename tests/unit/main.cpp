// The unit-test runner: pure-core tests that need no sockets.
#define BOOST_TEST_MODULE stereos_unit_tests
#include <boost/test/unit_test.hpp>

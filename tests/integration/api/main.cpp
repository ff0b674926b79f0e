// The runner of the local API tests (a real daemon, fake guests, curl and stereosctl).
#define BOOST_TEST_MODULE stereos_api_tests
#include <boost/test/unit_test.hpp>

// The runner for tests over real sockets (TCP, unix, vsock) and real processes.
#define BOOST_TEST_MODULE stereos_integration_tests
#include <boost/test/unit_test.hpp>

// Fuzz target: the endpoint-string parser (config files and API clients supply these strings).
// A parsed endpoint must print back to a string that parses to the same endpoint; an error must
// be a bounded, printable message that starts with (an excerpt of) the input.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include <stereos/transport/endpoint.hpp>

namespace {

void check(bool condition, const char* what) {
    if (!condition) {
        std::fprintf(stderr, "fuzz_endpoint: invariant broken: %s\n", what);
        std::abort();
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    namespace transport = stereos::transport;
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    auto parsed = transport::parse_endpoint(text);
    if (!parsed) {
        const auto& message = parsed.error().message;
        check(!message.empty(), "an error without a message");
        // The input may come from an API client and the message goes to logs.
        check(message.size() <= 2048, "an error message is not bounded");
        for (const unsigned char c : message)
            check(c >= 0x20 && c < 0x7f, "an error message holds an unprintable byte");
        return 0;
    }
    const auto printed = transport::to_string(*parsed);
    auto again = transport::parse_endpoint(printed);
    check(again.has_value(), "to_string() of an endpoint does not parse");
    check(*again == *parsed, "to_string() of an endpoint parses to another endpoint");
    check(transport::to_string(*again) == printed, "to_string() is not stable");
    return 0;
}

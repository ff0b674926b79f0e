// line_framer: chunking, limits and recovery, with no I/O.
#include <string>
#include <vector>

#include <boost/test/unit_test.hpp>

#include <stereos/protocol/line_framer.hpp>

using stereos::protocol::error;
using stereos::protocol::line_framer;

namespace {

// Pulls every complete line; stops at the first error, which it appends as "<error>".
std::vector<std::string> drain(line_framer& framer) {
    std::vector<std::string> lines;
    while (true) {
        auto next = framer.next_line();
        if (next.has_error()) {
            lines.emplace_back("<error>");
            return lines;
        }
        if (!*next)
            return lines;
        lines.emplace_back(**next);
    }
}

std::vector<std::string> frame_in_chunks(std::string_view input,
                                         const std::vector<std::size_t>& sizes,
                                         std::size_t max_line = 1024) {
    line_framer framer(max_line);
    std::vector<std::string> lines;
    std::size_t offset = 0;
    for (auto size : sizes) {
        // Half the chunks go through prepare/commit as a socket read would.
        if (offset % 2 == 0) {
            auto space = framer.prepare(size);
            std::copy_n(input.data() + offset, size, space.data());
            framer.commit(size);
        } else {
            framer.feed(input.substr(offset, size));
        }
        offset += size;
        for (auto& l : drain(framer))
            lines.push_back(std::move(l));
        if (!lines.empty() && lines.back() == "<error>")
            break;
    }
    return lines;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(line_framing)

BOOST_AUTO_TEST_CASE(many_lines_in_one_chunk) {
    line_framer framer;
    framer.feed("{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n");
    BOOST_TEST(drain(framer) == (std::vector<std::string>{"{\"a\":1}", "{\"b\":2}", "{\"c\":3}"}),
               boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(a_line_split_across_reads) {
    line_framer framer;
    framer.feed("{\"type\":");
    BOOST_TEST(drain(framer).empty());
    framer.feed("\"ping\"}");
    BOOST_TEST(drain(framer).empty());
    framer.feed("\n");
    BOOST_TEST(drain(framer) == std::vector<std::string>{"{\"type\":\"ping\"}"},
               boost::test_tools::per_element());
    BOOST_TEST(framer.buffered() == 0u);
}

BOOST_AUTO_TEST_CASE(crlf_is_stripped_and_empty_lines_are_skipped) {
    line_framer framer;
    framer.feed("\n\r\na\r\n\n\nb\n\r\n");
    BOOST_TEST(drain(framer) == (std::vector<std::string>{"a", "b"}),
               boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(every_split_of_the_input_yields_the_same_lines) {
    const std::string input = "ab\r\n\ncd\n{}\r\n\r\nx\ny";  // 19 bytes: 2^18 splits
    const std::vector<std::string> expected{"ab", "cd", "{}", "x"};
    const std::size_t n = input.size();
    std::size_t splits = 0;
    for (std::uint32_t cuts = 0; cuts < (1u << (n - 1)); ++cuts) {
        std::vector<std::size_t> sizes;
        std::size_t start = 0;
        for (std::size_t i = 1; i < n; ++i) {
            if (cuts & (1u << (i - 1))) {
                sizes.push_back(i - start);
                start = i;
            }
        }
        sizes.push_back(n - start);
        const auto lines = frame_in_chunks(input, sizes);
        if (lines != expected) {
            BOOST_FAIL("split mask " << cuts << " gave " << lines.size() << " lines");
        }
        ++splits;
    }
    BOOST_TEST(splits == (1u << (n - 1)));
}

BOOST_AUTO_TEST_CASE(the_limit_counts_the_newline_like_the_guest) {
    // The guest answers 1,048,575 bytes + LF and drops the connection at one byte more.
    line_framer framer;
    std::string line(1024 * 1024 - 1, 'a');
    framer.feed(line + "\n");
    auto ok = framer.next_line();
    BOOST_TEST_REQUIRE(ok.has_value());
    BOOST_TEST_REQUIRE(ok->has_value());
    BOOST_TEST((*ok)->size() == line.size());

    line_framer strict;
    strict.feed(line + "a\n");
    auto over = strict.next_line();
    BOOST_TEST_REQUIRE(over.has_error());
    BOOST_TEST((over.error() == error::line_too_long));
}

BOOST_AUTO_TEST_CASE(an_overlong_line_without_newline_is_refused_and_not_buffered) {
    line_framer framer(64);
    for (int i = 0; i < 1000; ++i)
        framer.feed(std::string(100, 'z'));
    BOOST_TEST(framer.buffered() < 64u);
    auto r = framer.next_line();
    BOOST_TEST_REQUIRE(r.has_error());
    BOOST_TEST((r.error() == error::line_too_long));
    // Sticky until reset.
    framer.feed("ok\n");
    BOOST_TEST(framer.next_line().has_error());
    BOOST_TEST(framer.failed());
}

BOOST_AUTO_TEST_CASE(a_2_mib_read_in_small_chunks_stays_bounded) {
    line_framer framer;
    std::size_t peak = 0;
    for (int i = 0; i < 512; ++i) {
        auto space = framer.prepare(4096);
        std::fill(space.begin(), space.end(), 'q');
        framer.commit(space.size());
        peak = std::max(peak, framer.buffered());
    }
    BOOST_TEST(peak < 1024u * 1024u);
    BOOST_TEST(framer.next_line().has_error());
}

BOOST_AUTO_TEST_CASE(lines_before_an_overlong_one_are_delivered_first) {
    line_framer framer(16);
    framer.feed("one\ntwo\n" + std::string(40, 'x'));
    BOOST_TEST(drain(framer) == (std::vector<std::string>{"one", "two", "<error>"}),
               boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(an_overlong_complete_line_is_an_error) {
    line_framer framer(16);
    framer.feed(std::string(20, 'x') + "\nafter\n");
    BOOST_TEST(drain(framer) == std::vector<std::string>{"<error>"},
               boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(reset_recovers_after_an_overlong_line) {
    line_framer framer(16);
    framer.feed(std::string(40, 'x'));
    BOOST_TEST(framer.next_line().has_error());
    framer.reset();
    BOOST_TEST(!framer.failed());
    framer.feed("fine\n");
    BOOST_TEST(drain(framer) == std::vector<std::string>{"fine"}, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(a_line_of_exactly_max_minus_one_bytes_passes_in_any_chunking) {
    const std::string line(15, 'm');
    BOOST_TEST(frame_in_chunks(line + "\n", {7, 8, 1}, 16) == std::vector<std::string>{line},
               boost::test_tools::per_element());
    BOOST_TEST(frame_in_chunks(line + "m\n", {8, 8, 1}, 16) == std::vector<std::string>{"<error>"},
               boost::test_tools::per_element());
}

BOOST_AUTO_TEST_SUITE_END()

// Incremental newline-delimited JSON splitter over arbitrary byte chunks. No I/O: the caller
// reads into prepare()/commit() (or feed()s bytes) and pulls complete lines with next_line().
// Threads: a framer is not synchronised. One connection's reader owns it and calls it from one
// executor (or strand) only; separate framers on separate threads are independent.
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include <boost/system/result.hpp>

#include <stereos/protocol/codec.hpp>

namespace stereos::protocol {

class line_framer {
  public:
    // `max_line` counts the terminating '\n', as the guest's scanner does: a line of
    // max_line - 1 bytes plus '\n' is accepted, one byte more is an error.
    explicit line_framer(std::size_t max_line = max_line_bytes);

    // Writable space for `size` more bytes; valid until the next call on the framer.
    std::span<char> prepare(std::size_t size);
    void commit(std::size_t size);
    void feed(std::string_view bytes);

    // The next complete line without "\n" or "\r\n"; empty lines are skipped. nullopt means
    // more bytes are needed. error::line_too_long is sticky until reset(), and the framer
    // never holds more than max_line plus one prepared chunk. A returned view stays valid
    // until the next prepare(), feed() or reset().
    boost::system::result<std::optional<std::string_view>> next_line();

    // Drops everything buffered and clears a line_too_long failure.
    void reset() noexcept;

    std::size_t buffered() const noexcept { return end_ - begin_; }
    // The committed bytes not yet returned as a line (an incomplete line), e.g. to hand the
    // stream to another reader. Valid until the next call that changes the framer.
    std::string_view unconsumed() const noexcept {
        return {buffer_.data() + begin_, end_ - begin_};
    }
    // An overlong line is being skipped: its dropped start makes the buffer no longer the
    // stream's exact remainder.
    bool skipping_overlong_line() const noexcept { return overflowed_; }
    std::size_t max_line() const noexcept { return max_line_; }
    bool failed() const noexcept { return failed_; }

  private:
    void compact();

    std::size_t max_line_;
    std::vector<char> buffer_;
    std::size_t begin_ = 0;       // first unconsumed byte
    std::size_t scanned_ = 0;     // [begin_, scanned_) holds no '\n'
    std::size_t line_start_ = 0;  // start of the last, still incomplete line
    std::size_t end_ = 0;         // one past the last committed byte
    bool overflowed_ = false;     // an incomplete line went over the limit and was dropped
    bool failed_ = false;
};

}  // namespace stereos::protocol

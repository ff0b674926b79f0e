#include <stereos/protocol/line_framer.hpp>

#include <algorithm>
#include <cstring>

namespace stereos::protocol {

namespace {
// Above this, an empty buffer is given back: thousands of idle links must stay small.
constexpr std::size_t keep_capacity = 16 * 1024;
}  // namespace

line_framer::line_framer(std::size_t max_line) : max_line_(std::max<std::size_t>(max_line, 2)) {}

void line_framer::compact() {
    if (begin_ == 0)
        return;
    if (begin_ == end_ && buffer_.capacity() > keep_capacity) {
        std::vector<char>().swap(buffer_);
    } else {
        std::memmove(buffer_.data(), buffer_.data() + begin_, end_ - begin_);
    }
    scanned_ -= begin_;
    line_start_ -= begin_;
    end_ -= begin_;
    begin_ = 0;
}

std::span<char> line_framer::prepare(std::size_t size) {
    compact();
    if (buffer_.size() < end_ + size)
        buffer_.resize(end_ + size);
    return {buffer_.data() + end_, size};
}

void line_framer::commit(std::size_t size) {
    if (failed_ || overflowed_)
        return;  // everything after an over-long line is discarded
    const std::size_t old_end = end_;
    end_ = std::min(end_ + size, buffer_.size());
    const char* base = buffer_.data();
    for (std::size_t i = end_; i > old_end; --i) {
        if (base[i - 1] == '\n') {
            line_start_ = i;
            break;
        }
    }
    if (end_ - line_start_ >= max_line_) {
        // Even a '\n' next could not make this line legal: drop its bytes now, so the
        // buffer stays bounded, and report it once the complete lines before it are taken.
        overflowed_ = true;
        end_ = line_start_;
        scanned_ = std::min(scanned_, end_);
    }
}

void line_framer::feed(std::string_view bytes) {
    // In slices, so a huge chunk never grows the buffer past one line plus one slice.
    while (!bytes.empty() && !failed_ && !overflowed_) {
        const std::size_t slice = std::min(bytes.size(), max_line_);
        auto space = prepare(slice);
        std::memcpy(space.data(), bytes.data(), slice);
        commit(slice);
        bytes.remove_prefix(slice);
    }
}

boost::system::result<std::optional<std::string_view>> line_framer::next_line() {
    while (!failed_) {
        const char* base = buffer_.data();
        const void* newline_ptr =
            end_ > scanned_ ? std::memchr(base + scanned_, '\n', end_ - scanned_) : nullptr;
        if (!newline_ptr) {
            scanned_ = end_;
            if (!overflowed_)
                return std::optional<std::string_view>{};
            break;
        }
        const auto newline = static_cast<std::size_t>(static_cast<const char*>(newline_ptr) - base);
        const std::size_t start = begin_;
        std::size_t length = newline - start;
        begin_ = scanned_ = newline + 1;
        if (length + 1 > max_line_)
            break;
        if (length > 0 && base[start + length - 1] == '\r')
            --length;
        if (length == 0)
            continue;
        return std::optional<std::string_view>{std::string_view(base + start, length)};
    }
    failed_ = true;
    begin_ = scanned_ = line_start_ = end_ = 0;
    return make_error_code(error::line_too_long);
}

void line_framer::reset() noexcept {
    begin_ = scanned_ = line_start_ = end_ = 0;
    failed_ = overflowed_ = false;
    std::vector<char>().swap(buffer_);
}

}  // namespace stereos::protocol

// Keeps one guest's repeated errors from drowning the log: the first occurrence of a message is
// logged, repeats within the window are only counted, and the next one after the window is
// logged with the count ("... (repeated 49 times in 30s)"). Pure; time is passed in.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace stereos::daemon {

class log_throttle {
  public:
    using clock = std::chrono::steady_clock;

    explicit log_throttle(std::chrono::seconds window = std::chrono::seconds{30})
        : window_(window) {}

    // The text to log now, or nullopt to stay quiet.
    std::optional<std::string> admit(std::string_view message, clock::time_point now) {
        if (message != last_ || now - window_start_ >= window_) {
            std::string text(message);
            if (message == last_ && suppressed_ > 0) {
                text += " (repeated " + std::to_string(suppressed_) + " times in the last " +
                        std::to_string(window_.count()) + "s)";
            }
            last_.assign(message);
            window_start_ = now;
            suppressed_ = 0;
            return text;
        }
        ++suppressed_;
        return std::nullopt;
    }

    // Forget the last message, e.g. once the condition cleared (link up again).
    void reset() {
        last_.clear();
        suppressed_ = 0;
    }

    std::uint64_t suppressed() const noexcept { return suppressed_; }

  private:
    std::chrono::seconds window_;
    std::string last_;
    clock::time_point window_start_{};
    std::uint64_t suppressed_ = 0;
};

}  // namespace stereos::daemon

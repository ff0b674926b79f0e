// A budget of fast reconnect attempts shared by every link of one daemon: a token bucket
// refilled at `per_second`, holding at most one second's worth. When many guests are lost at
// once (a host network outage), the links that find it empty back off exponentially instead of
// retrying every 100 ms, so the outage does not become a connect storm on the daemon's one
// thread. Pure and single-threaded: time is passed in.
#pragma once

#include <algorithm>
#include <chrono>

namespace stereos::link {

class retry_budget {
  public:
    using clock = std::chrono::steady_clock;

    explicit retry_budget(double per_second)
        : per_second_(std::max(per_second, 1.0)), tokens_(per_second_) {}

    // Takes one attempt's worth; false if the budget is spent for now.
    bool take(clock::time_point now) {
        if (last_ != clock::time_point{}) {
            const std::chrono::duration<double> elapsed = now - last_;
            tokens_ = std::min(per_second_, tokens_ + elapsed.count() * per_second_);
        }
        last_ = now;
        if (tokens_ < 1.0)
            return false;
        tokens_ -= 1.0;
        return true;
    }

    double per_second() const noexcept { return per_second_; }

  private:
    double per_second_;
    double tokens_;
    clock::time_point last_{};
};

}  // namespace stereos::link

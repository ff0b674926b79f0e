// Reconnect delays: exponential from `initial`, doubling to `cap`, with jitter so that many
// links that dropped together (a host-wide hiccup) do not reconnect in lockstep.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>

namespace stereos::link {

class reconnect_backoff {
  public:
    using duration = std::chrono::milliseconds;

    reconnect_backoff(duration initial, duration cap, std::uint32_t seed)
        : initial_(std::max(initial, duration{1})),
          cap_(std::max(cap, initial_)),
          next_(initial_),
          random_(scramble(seed)) {}

    // The next delay, uniformly in [d/2, d] for the current step d; then the step doubles.
    duration next() {
        const auto step = next_;
        next_ = std::min(next_ * 2, cap_);
        std::uniform_int_distribution<std::int64_t> jitter(step.count() / 2, step.count());
        return duration{jitter(random_)};
    }

    // A delay drawn as the first step's is, leaving the steps where they are (fast retries).
    duration initial_delay() {
        std::uniform_int_distribution<std::int64_t> jitter(initial_.count() / 2, initial_.count());
        return duration{jitter(random_)};
    }

    // After a connection that stayed up: start again from `initial`.
    void reset() noexcept { next_ = initial_; }

    duration current_step() const noexcept { return next_; }

  private:
    // minstd_rand's first outputs track its seed closely; mix the seed so nearby seeds
    // (e.g. links created together) still get unrelated delays.
    static std::uint32_t scramble(std::uint32_t seed) noexcept {
        std::uint64_t z = seed + 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return static_cast<std::uint32_t>((z ^ (z >> 31)) % 0x7FFFFFFEu) + 1u;
    }

    duration initial_;
    duration cap_;
    duration next_;
    std::minstd_rand random_;
};

}  // namespace stereos::link

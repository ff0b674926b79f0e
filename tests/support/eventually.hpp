// Polling for a condition in tests, with a deadline generous enough for a busy machine.
#pragma once

#include <chrono>
#include <thread>

namespace stereos::testing {

// Polls `condition` every 20 ms until it holds (true) or `limit` passes (false).
template <class Condition>
bool eventually(Condition&& condition, std::chrono::milliseconds limit = std::chrono::seconds(20)) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!condition()) {
        if (std::chrono::steady_clock::now() > end)
            return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return true;
}

}  // namespace stereos::testing

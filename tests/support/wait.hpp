#pragma once

// Waiting in tests for something another process does: poll with a deadline, never a fixed sleep.

#include <chrono>
#include <functional>
#include <thread>

namespace paybridge::test {

/// Polls `pred` every `step` until it holds (true) or `limit` passes (false).
inline bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds limit,
                       std::chrono::milliseconds step = std::chrono::milliseconds(25))
{
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
        if (std::chrono::steady_clock::now() >= deadline) {
            return false;
        }
        std::this_thread::sleep_for(step);
    }
    return true;
}

}  // namespace paybridge::test

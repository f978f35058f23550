#pragma once

// Collects the log lines written while it lives (not thread-safe: for code run on the test's own
// thread); afterwards lines go to stderr again.

#include "core/log.hpp"

#include <unistd.h>

#include <string>
#include <string_view>
#include <vector>

namespace paybridge::test {

struct LogCapture {
    std::vector<std::string> lines;

    LogCapture()
    {
        log::set_sink([this](log::Level, std::string_view line) { lines.emplace_back(line); });
    }
    ~LogCapture()
    {
        log::set_sink([](log::Level, std::string_view line) { (void)!::write(2, line.data(), line.size()); });
    }
    LogCapture(const LogCapture&) = delete;
    LogCapture& operator=(const LogCapture&) = delete;

    /// The lines that contain `text`.
    std::vector<std::string> with(std::string_view text) const
    {
        std::vector<std::string> out;
        for (const std::string& l : lines) {
            if (l.find(text) != std::string::npos) {
                out.push_back(l);
            }
        }
        return out;
    }
    int count(std::string_view text) const { return static_cast<int>(with(text).size()); }
    bool has(std::string_view text) const { return count(text) > 0; }
};

}  // namespace paybridge::test

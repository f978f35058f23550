#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace paybridge {

/// Milliseconds since the Unix epoch.
std::int64_t unix_ms(std::chrono::system_clock::time_point tp) noexcept;

/// RFC 3339 UTC with milliseconds: "2026-11-27T22:55:13.123Z".
std::string format_rfc3339(std::int64_t unix_ms);

/// Parses RFC 3339 ("2018-06-08T10:34:56+08:00", "...Z", optional fraction) to Unix ms.
std::optional<std::int64_t> parse_rfc3339(std::string_view text);

/// Parses a zone-less Beijing time ("yyyy-MM-dd HH:mm:ss[.S+]", Alipay, WeChat v2 refunds) or
/// "yyyyMMddHHmmss" (WeChat v2 payments) as UTC+8, to Unix ms.
std::optional<std::int64_t> parse_beijing_time(std::string_view text);

}  // namespace paybridge

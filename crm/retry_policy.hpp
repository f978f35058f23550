#pragma once

// When to try a CRM delivery again. Pure: no clock, no randomness of its own (the caller passes both),
// so every decision is reproducible in tests.
//
// Attempt n (1-based) that fails is followed by schedule[n-1] ± jitter; when the schedule is exhausted
// the event is dead-lettered. With the default schedule (5s, 5m, 30m, 2h, 5h, 10h, 10h) an event gets
// 8 attempts over about 28 hours. A 429 or 503 with Retry-After waits at least that long.

#include "config/config.hpp"

#include <boost/system/error_code.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace paybridge::crm {

using Millis = std::chrono::milliseconds;

/// What one attempt's result means for the event.
enum class Verdict {
    delivered,  ///< any 2xx: the CRM acknowledged
    retry,      ///< anything else (connection error, timeout, 3xx/4xx/5xx): try again later
    dead,       ///< a failure after the last scheduled retry
};

std::string_view to_string(Verdict v) noexcept;

/// The result of one attempt as the dispatcher saw it.
struct AttemptResult {
    unsigned status{0};                    ///< HTTP status; 0 when no response was received
    boost::system::error_code error;       ///< transport failure (set iff status == 0)
    std::optional<Millis> retry_after;     ///< parsed Retry-After of the response, if any
};

/// Any 2xx acknowledges (API.md). Every other outcome is retried: a 4xx usually means a CRM bug or
/// misconfiguration that gets fixed, and the schedule bounds the cost. Redirects are not followed.
Verdict classify(const AttemptResult& result) noexcept;

/// Parses a Retry-After value: delay-seconds ("120") or an HTTP-date (IMF-fixdate
/// "Sun, 06 Nov 1994 08:49:37 GMT", and the obsolete RFC 850 and asctime forms), relative to `now_unix_ms`.
/// A date in the past gives 0. Anything else gives nullopt (the header is then ignored).
std::optional<Millis> parse_retry_after(std::string_view value, std::int64_t now_unix_ms);

/// The decision after a failed attempt.
struct RetryDecision {
    Verdict verdict{Verdict::retry};  ///< retry or dead
    Millis delay{0};                  ///< wait before the next attempt (retry only)
};

class RetryPolicy final {
public:
    static constexpr double kDefaultJitter = 0.2;

    /// The default schedule (config::CrmConfig's).
    RetryPolicy();
    /// `schedule` may be empty (one attempt, then dead). `jitter` in [0, 1): each delay is scaled by a
    /// uniform factor in [1 - jitter, 1 + jitter].
    explicit RetryPolicy(std::vector<Millis> schedule, double jitter = kDefaultJitter);
    static RetryPolicy from_config(const config::CrmConfig& crm);

    /// Decision after attempt number `attempts_done` (1 for the first attempt) failed.
    /// `unit_random` is uniform in [0, 1). A Retry-After (honoured on 429 and 503 only) raises the
    /// delay to at least its value, capped at the longest step of the schedule so a hostile or buggy
    /// header cannot park an event for a month.
    RetryDecision after_failure(int attempts_done, const AttemptResult& result, double unit_random) const;

    /// Total attempts an event gets before it is dead-lettered.
    int max_attempts() const noexcept { return static_cast<int>(schedule_.size()) + 1; }
    const std::vector<Millis>& schedule() const noexcept { return schedule_; }
    double jitter() const noexcept { return jitter_; }

private:
    std::vector<Millis> schedule_;
    double jitter_;
};

}  // namespace paybridge::crm

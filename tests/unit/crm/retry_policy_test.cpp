#include "crm/retry_policy.hpp"

#include "core/error.hpp"

#include <doctest/doctest.h>

using namespace paybridge;
using namespace paybridge::crm;
using namespace std::chrono_literals;

namespace {

AttemptResult status(unsigned code, std::optional<Millis> retry_after = std::nullopt)
{
    AttemptResult r;
    r.status = code;
    r.retry_after = retry_after;
    return r;
}

AttemptResult transport_error(errc e)
{
    AttemptResult r;
    r.error = make_error_code(e);
    return r;
}

}  // namespace

TEST_CASE("classify: any 2xx delivers, everything else retries")
{
    CHECK(classify(status(200)) == Verdict::delivered);
    CHECK(classify(status(202)) == Verdict::delivered);
    CHECK(classify(status(204)) == Verdict::delivered);
    CHECK(classify(status(299)) == Verdict::delivered);
    for (unsigned code : {100u, 199u, 301u, 302u, 400u, 401u, 404u, 409u, 410u, 429u, 500u, 502u, 503u}) {
        CAPTURE(code);
        CHECK(classify(status(code)) == Verdict::retry);
    }
    CHECK(classify(transport_error(errc::timeout)) == Verdict::retry);
    CHECK(classify(transport_error(errc::crm_unavailable)) == Verdict::retry);
    CHECK(classify(status(0)) == Verdict::retry);
}

TEST_CASE("default schedule: 5s 5m 30m 2h 5h 10h 10h then dead")
{
    const RetryPolicy policy;
    const std::vector<Millis> expected{5s, 5min, 30min, 2h, 5h, 10h, 10h};
    REQUIRE(policy.schedule() == expected);
    CHECK(policy.max_attempts() == 8);
    for (std::size_t i = 0; i < expected.size(); ++i) {
        const RetryDecision d = policy.after_failure(static_cast<int>(i) + 1, status(500), 0.5);
        CHECK(d.verdict == Verdict::retry);
        CHECK(d.delay == expected[i]);  // u = 0.5 is the unjittered midpoint
    }
    CHECK(policy.after_failure(8, status(500), 0.5).verdict == Verdict::dead);
    CHECK(policy.after_failure(0, status(500), 0.5).verdict == Verdict::dead);
}

TEST_CASE("jitter stays within +-20 % and spans the range")
{
    const RetryPolicy policy({Millis{10'000}});
    CHECK(policy.after_failure(1, status(500), 0.0).delay == 8'000ms);
    CHECK(policy.after_failure(1, status(500), 0.999999).delay == 12'000ms);
    Millis lo{1'000'000};
    Millis hi{0};
    for (int i = 0; i < 1000; ++i) {
        const Millis d = policy.after_failure(1, status(500), i / 1000.0).delay;
        CHECK(d >= 8'000ms);
        CHECK(d <= 12'000ms);
        lo = std::min(lo, d);
        hi = std::max(hi, d);
    }
    CHECK(lo < 8'100ms);
    CHECK(hi > 11'900ms);
    const RetryPolicy no_jitter({Millis{10'000}}, 0.0);
    CHECK(no_jitter.after_failure(1, status(500), 0.0).delay == 10'000ms);
}

TEST_CASE("Retry-After is honoured on 429 and 503 only, capped at the longest step")
{
    const RetryPolicy policy({Millis{1'000}, Millis{60'000}}, 0.0);
    CHECK(policy.after_failure(1, status(429, 30s), 0.5).delay == 30s);
    CHECK(policy.after_failure(1, status(503, 30s), 0.5).delay == 30s);
    CHECK(policy.after_failure(1, status(500, 30s), 0.5).delay == 1s);
    CHECK(policy.after_failure(1, status(429, 10ms), 0.5).delay == 1s);  // never shorter than the schedule
    CHECK(policy.after_failure(1, status(429, 24h), 0.5).delay == 60s);  // capped
    CHECK(policy.after_failure(3, status(429, 30s), 0.5).verdict == Verdict::dead);
}

TEST_CASE("configurable schedule from CrmConfig — an empty one dead-letters after one attempt")
{
    config::CrmConfig crm;
    crm.retry_schedule = {1s, 2s};
    const RetryPolicy policy = RetryPolicy::from_config(crm);
    CHECK(policy.max_attempts() == 3);
    CHECK(policy.after_failure(2, status(500), 0.5).delay == 2s);
    CHECK(policy.after_failure(3, status(500), 0.5).verdict == Verdict::dead);
    const RetryPolicy none(std::vector<Millis>{});
    CHECK(none.after_failure(1, status(500), 0.5).verdict == Verdict::dead);
}

TEST_CASE("parse_retry_after: seconds and the three HTTP-date forms")
{
    // 1994-11-06T08:49:37Z = 784111777
    const std::int64_t now_ms = 784'111'777'000 - 90'000;
    CHECK(parse_retry_after("120", now_ms) == 120s);
    CHECK(parse_retry_after(" 0 ", now_ms) == 0s);
    CHECK(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now_ms) == 90s);
    CHECK(parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now_ms) == 90s);
    CHECK(parse_retry_after("Sun Nov  6 08:49:37 1994", now_ms) == 90s);
    CHECK(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now_ms + 200'000) == 0s);  // past
    CHECK_FALSE(parse_retry_after("", now_ms));
    CHECK_FALSE(parse_retry_after("-5", now_ms));
    CHECK_FALSE(parse_retry_after("1.5", now_ms));
    CHECK_FALSE(parse_retry_after("soon", now_ms));
    CHECK_FALSE(parse_retry_after("Sun, 06 Foo 1994 08:49:37 GMT", now_ms));
    CHECK_FALSE(parse_retry_after("Sun, 31 Feb 1994 08:49:37 GMT", now_ms));
    CHECK_FALSE(parse_retry_after("Sun, 06 Nov 1994 25:49:37 GMT", now_ms));
    CHECK_FALSE(parse_retry_after("Sun, 06 Nov 1994 08:49:37 PST", now_ms));
    CHECK(parse_retry_after("99999999999999999999999", now_ms).has_value());
}

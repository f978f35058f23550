#include "core/time.hpp"

#include <doctest/doctest.h>

using namespace paybridge;

TEST_CASE("RFC 3339 round trip and offsets")
{
    CHECK(format_rfc3339(0) == "1970-01-01T00:00:00.000Z");
    CHECK(format_rfc3339(1'468'908'649'123) == "2016-07-19T06:10:49.123Z");
    CHECK(format_rfc3339(951'868'799'007) == "2000-02-29T23:59:59.007Z");  // leap day, leading zeros
    CHECK(format_rfc3339(-1) == "1969-12-31T23:59:59.999Z");
    CHECK(format_rfc3339(253'402'300'799'999) == "9999-12-31T23:59:59.999Z");
    CHECK(format_rfc3339(253'402'300'800'000) == "10000-01-01T00:00:00.000Z");
    for (std::int64_t ms : {0LL, 1'468'908'649'123LL, 951'868'799'007LL, 4'102'444'800'000LL}) {
        CHECK(*parse_rfc3339(format_rfc3339(ms)) == ms);
    }
    CHECK(*parse_rfc3339("2018-06-08T10:34:56+08:00") == 1'528'425'296'000);
    CHECK(*parse_rfc3339("2018-06-08T02:34:56Z") == 1'528'425'296'000);
    CHECK(*parse_rfc3339("2018-06-08T02:34:56.5Z") == 1'528'425'296'500);
    CHECK_FALSE(parse_rfc3339("2018-06-08 02:34:56"));
    CHECK_FALSE(parse_rfc3339("2018-13-08T02:34:56Z"));
    // Dates that do not exist, offsets that cannot be, a '.' without digits: refused, not wrapped.
    CHECK_FALSE(parse_rfc3339("2026-02-31T00:00:00Z"));
    CHECK_FALSE(parse_rfc3339("2026-04-31T00:00:00Z"));
    CHECK_FALSE(parse_rfc3339("2026-02-29T00:00:00Z"));
    CHECK(*parse_rfc3339("2024-02-29T00:00:00Z") == 1'709'164'800'000);  // a leap year
    CHECK(*parse_rfc3339("2000-02-29T00:00:00Z") == 951'782'400'000);    // divisible by 400
    CHECK_FALSE(parse_rfc3339("2100-02-29T00:00:00Z"));                 // by 100, not 400
    CHECK_FALSE(parse_rfc3339("2018-06-08T02:34:56+99:99"));
    CHECK_FALSE(parse_rfc3339("2018-06-08T02:34:56+24:00"));
    CHECK(*parse_rfc3339("2018-06-08T02:34:56-23:59") == 1'528'425'296'000 + (23 * 60 + 59) * 60'000);
    CHECK_FALSE(parse_rfc3339("2018-06-08T02:34:56.Z"));
}

TEST_CASE("Beijing times are UTC+8")
{
    CHECK(*parse_beijing_time("2016-07-19 14:10:49") == 1'468'908'649'000);
    CHECK(*parse_beijing_time("2015-04-28 15:45:57.320") == *parse_beijing_time("2015-04-28 15:45:57") + 320);
    CHECK(*parse_beijing_time("20160719141049") == 1'468'908'649'000);
    CHECK_FALSE(parse_beijing_time("2016-07-19T14:10:49"));
    CHECK_FALSE(parse_beijing_time("2016-06-31 14:10:49"));
    CHECK_FALSE(parse_beijing_time("2016-07-19 14:10:49."));
}

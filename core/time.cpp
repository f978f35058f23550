#include "core/time.hpp"

#include <cstdio>

namespace paybridge {
namespace {

// Days since 1970-01-01 for a proleptic Gregorian date (H. Hinnant's days_from_civil).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) noexcept
{
    y -= m <= 2;
    const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
    const auto yoe = static_cast<unsigned>(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

bool digits(std::string_view s, std::size_t pos, std::size_t n, int& out) noexcept
{
    if (pos + n > s.size()) {
        return false;
    }
    int v = 0;
    for (std::size_t i = pos; i < pos + n; ++i) {
        if (s[i] < '0' || s[i] > '9') {
            return false;
        }
        v = v * 10 + (s[i] - '0');
    }
    out = v;
    return true;
}

int days_in_month(int Y, int M) noexcept
{
    static constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    const bool leap = (Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0;
    return M == 2 && leap ? 29 : kDays[M - 1];
}

// A calendar date that exists (2026-02-31 does not: it would silently become 03-03), a time of
// day (second 60: a leap second), and the UTC offset in minutes.
std::optional<std::int64_t> compose(int Y, int M, int D, int h, int mi, int s, int ms, int offset_min)
{
    if (M < 1 || M > 12 || D < 1 || D > days_in_month(Y, M) || h > 23 || mi > 59 || s > 60) {
        return std::nullopt;
    }
    const std::int64_t days = days_from_civil(Y, static_cast<unsigned>(M), static_cast<unsigned>(D));
    const std::int64_t secs = days * 86400 + h * 3600 + mi * 60 + s - offset_min * 60;
    return secs * 1000 + ms;
}

// Reads ".123456" at pos (one digit or more, milliseconds kept); advances pos. -1 for a '.' without
// digits.
int fraction_ms(std::string_view t, std::size_t& pos) noexcept
{
    int ms = 0;
    if (pos < t.size() && t[pos] == '.') {
        ++pos;
        if (pos == t.size() || t[pos] < '0' || t[pos] > '9') {
            return -1;
        }
        int n = 0;
        while (pos < t.size() && t[pos] >= '0' && t[pos] <= '9') {
            if (n < 3) {
                ms = ms * 10 + (t[pos] - '0');
            }
            ++n;
            ++pos;
        }
        for (; n < 3; ++n) {
            ms *= 10;
        }
    }
    return ms;
}

}  // namespace

std::int64_t unix_ms(std::chrono::system_clock::time_point tp) noexcept
{
    return std::chrono::duration_cast<std::chrono::milliseconds>(tp.time_since_epoch()).count();
}

std::string format_rfc3339(std::int64_t ms)
{
    std::int64_t secs = ms / 1000;
    int milli = static_cast<int>(ms % 1000);
    if (milli < 0) {
        milli += 1000;
        --secs;
    }
    std::int64_t days = secs / 86400;
    std::int64_t rem = secs % 86400;
    if (rem < 0) {
        rem += 86400;
        --days;
    }
    // civil_from_days
    const std::int64_t z = days + 719468;
    const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const auto doe = static_cast<unsigned>(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    const unsigned d = doy - (153 * mp + 2) / 5 + 1;
    const unsigned m = mp < 10 ? mp + 3 : mp - 9;
    const std::int64_t y = static_cast<std::int64_t>(yoe) + era * 400 + (m <= 2);
    const int hour = static_cast<int>(rem / 3600);
    const int minute = static_cast<int>(rem % 3600 / 60);
    const int second = static_cast<int>(rem % 60);
    if (y < 0 || y > 9999) {
        char buf[48];
        std::snprintf(buf, sizeof buf, "%04lld-%02u-%02uT%02d:%02d:%02d.%03dZ", static_cast<long long>(y), m, d, hour,
                      minute, second, milli);
        return buf;
    }
    // Every request formats "now" at least once: fixed-width digits, no printf.
    std::string out = "0000-00-00T00:00:00.000Z";
    auto put = [&out](std::size_t at, unsigned value, int width) {
        for (int i = width - 1; i >= 0; --i) {
            out[at + static_cast<std::size_t>(i)] = static_cast<char>('0' + value % 10);
            value /= 10;
        }
    };
    put(0, static_cast<unsigned>(y), 4);
    put(5, m, 2);
    put(8, d, 2);
    put(11, static_cast<unsigned>(hour), 2);
    put(14, static_cast<unsigned>(minute), 2);
    put(17, static_cast<unsigned>(second), 2);
    put(20, static_cast<unsigned>(milli), 3);
    return out;
}

std::optional<std::int64_t> parse_rfc3339(std::string_view t)
{
    int Y, M, D, h, mi, s;
    if (!digits(t, 0, 4, Y) || t.size() < 19 || t[4] != '-' || !digits(t, 5, 2, M) || t[7] != '-' ||
        !digits(t, 8, 2, D) || (t[10] != 'T' && t[10] != 't') || !digits(t, 11, 2, h) || t[13] != ':' ||
        !digits(t, 14, 2, mi) || t[16] != ':' || !digits(t, 17, 2, s)) {
        return std::nullopt;
    }
    std::size_t pos = 19;
    const int ms = fraction_ms(t, pos);
    if (ms < 0) {
        return std::nullopt;
    }
    int offset = 0;
    if (pos < t.size() && (t[pos] == 'Z' || t[pos] == 'z')) {
        ++pos;
    } else if (pos < t.size() && (t[pos] == '+' || t[pos] == '-')) {
        int oh, om;
        if (!digits(t, pos + 1, 2, oh) || pos + 3 >= t.size() || t[pos + 3] != ':' || !digits(t, pos + 4, 2, om) ||
            oh > 23 || om > 59) {
            return std::nullopt;
        }
        offset = (oh * 60 + om) * (t[pos] == '-' ? -1 : 1);
        pos += 6;
    } else {
        return std::nullopt;
    }
    if (pos != t.size()) {
        return std::nullopt;
    }
    return compose(Y, M, D, h, mi, s, ms, offset);
}

std::optional<std::int64_t> parse_beijing_time(std::string_view t)
{
    int Y, M, D, h, mi, s;
    if (t.size() == 14 && digits(t, 0, 4, Y) && digits(t, 4, 2, M) && digits(t, 6, 2, D) && digits(t, 8, 2, h) &&
        digits(t, 10, 2, mi) && digits(t, 12, 2, s)) {
        return compose(Y, M, D, h, mi, s, 0, 8 * 60);
    }
    if (!digits(t, 0, 4, Y) || t.size() < 19 || t[4] != '-' || !digits(t, 5, 2, M) || t[7] != '-' ||
        !digits(t, 8, 2, D) || t[10] != ' ' || !digits(t, 11, 2, h) || t[13] != ':' || !digits(t, 14, 2, mi) ||
        t[16] != ':' || !digits(t, 17, 2, s)) {
        return std::nullopt;
    }
    std::size_t pos = 19;
    const int ms = fraction_ms(t, pos);
    if (ms < 0 || pos != t.size()) {
        return std::nullopt;
    }
    return compose(Y, M, D, h, mi, s, ms, 8 * 60);
}

}  // namespace paybridge

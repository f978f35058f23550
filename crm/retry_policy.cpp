#include "crm/retry_policy.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>

namespace paybridge::crm {
namespace {

constexpr std::array<std::string_view, 12> kMonths{"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

bool parse_uint(std::string_view text, int& out)
{
    if (text.empty()) {
        return false;
    }
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
    return ec == std::errc{} && end == text.data() + text.size() && out >= 0;
}

int month_index(std::string_view name)
{
    for (std::size_t i = 0; i < kMonths.size(); ++i) {
        if (kMonths[i] == name) {
            return static_cast<int>(i) + 1;
        }
    }
    return 0;
}

// "08:49:37"
bool parse_clock(std::string_view text, int& h, int& m, int& s)
{
    return text.size() == 8 && text[2] == ':' && text[5] == ':' && parse_uint(text.substr(0, 2), h) &&
           parse_uint(text.substr(3, 2), m) && parse_uint(text.substr(6, 2), s) && h < 24 && m < 60 && s <= 60;
}

std::vector<std::string_view> split_spaces(std::string_view text)
{
    std::vector<std::string_view> parts;
    std::size_t i = 0;
    while (i < text.size()) {
        while (i < text.size() && text[i] == ' ') {
            ++i;
        }
        std::size_t j = i;
        while (j < text.size() && text[j] != ' ') {
            ++j;
        }
        if (j > i) {
            parts.push_back(text.substr(i, j - i));
        }
        i = j;
    }
    return parts;
}

std::optional<std::int64_t> to_unix_seconds(int year, int month, int day, int h, int m, int s)
{
    using namespace std::chrono;
    const year_month_day ymd{std::chrono::year{year}, std::chrono::month{static_cast<unsigned>(month)},
                             std::chrono::day{static_cast<unsigned>(day)}};
    if (!ymd.ok()) {
        return std::nullopt;
    }
    const auto days = sys_days{ymd}.time_since_epoch().count();
    return static_cast<std::int64_t>(days) * 86400 + h * 3600 + m * 60 + s;
}

// RFC 9110 §5.6.7: IMF-fixdate, or the obsolete RFC 850 and asctime forms, all in GMT.
std::optional<std::int64_t> parse_http_date(std::string_view text)
{
    const std::vector<std::string_view> p = split_spaces(text);
    int day = 0;
    int year = 0;
    int h = 0;
    int m = 0;
    int s = 0;
    int month = 0;
    if (p.size() == 6 && p[0].size() == 4 && p[0][3] == ',' && p[5] == "GMT") {
        // Sun, 06 Nov 1994 08:49:37 GMT
        month = month_index(p[2]);
        if (p[1].size() != 2 || p[3].size() != 4 || !parse_uint(p[1], day) || !parse_uint(p[3], year) ||
            !parse_clock(p[4], h, m, s)) {
            return std::nullopt;
        }
    } else if (p.size() == 4 && p[0].ends_with(',') && p[3] == "GMT") {
        // Sunday, 06-Nov-94 08:49:37 GMT (two-digit year: RFC 9110 says interpret as the most recent
        // year with those digits that is not more than 50 years in the future; 1970-2069 is close enough)
        const std::string_view date = p[1];
        if (date.size() != 9 || date[2] != '-' || date[6] != '-' || !parse_uint(date.substr(0, 2), day) ||
            !parse_uint(date.substr(7, 2), year) || !parse_clock(p[2], h, m, s)) {
            return std::nullopt;
        }
        month = month_index(date.substr(3, 3));
        year += year < 70 ? 2000 : 1900;
    } else if (p.size() == 5 && p[0].size() == 3) {
        // Sun Nov  6 08:49:37 1994
        month = month_index(p[1]);
        if (p[2].size() > 2 || p[4].size() != 4 || !parse_uint(p[2], day) || !parse_clock(p[3], h, m, s) ||
            !parse_uint(p[4], year)) {
            return std::nullopt;
        }
    } else {
        return std::nullopt;
    }
    if (month == 0) {
        return std::nullopt;
    }
    return to_unix_seconds(year, month, day, h, m, s);
}

std::string_view trim(std::string_view text)
{
    while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) {
        text.remove_prefix(1);
    }
    while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) {
        text.remove_suffix(1);
    }
    return text;
}

}  // namespace

std::string_view to_string(Verdict v) noexcept
{
    switch (v) {
        case Verdict::delivered: return "delivered";
        case Verdict::retry: return "retry";
        case Verdict::dead: return "dead";
    }
    return "retry";
}

Verdict classify(const AttemptResult& result) noexcept
{
    if (!result.error && result.status >= 200 && result.status < 300) {
        return Verdict::delivered;
    }
    return Verdict::retry;
}

std::optional<Millis> parse_retry_after(std::string_view value, std::int64_t now_unix_ms)
{
    value = trim(value);
    if (value.empty()) {
        return std::nullopt;
    }
    if (std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        std::int64_t seconds = 0;
        const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), seconds);
        if (ec == std::errc::result_out_of_range) {
            return Millis{std::chrono::hours{24 * 365}};  // absurd, but a number: capped by the policy
        }
        if (ec != std::errc{} || end != value.data() + value.size()) {
            return std::nullopt;
        }
        seconds = std::min<std::int64_t>(seconds, 365LL * 24 * 3600);
        return Millis{seconds * 1000};
    }
    const std::optional<std::int64_t> at = parse_http_date(value);
    if (!at) {
        return std::nullopt;
    }
    const std::int64_t delta = *at * 1000 - now_unix_ms;
    return Millis{std::max<std::int64_t>(delta, 0)};
}

RetryPolicy::RetryPolicy() : RetryPolicy(from_config(config::CrmConfig{})) {}

RetryPolicy::RetryPolicy(std::vector<Millis> schedule, double jitter)
    : schedule_(std::move(schedule)), jitter_(std::clamp(jitter, 0.0, 0.99))
{
}

RetryPolicy RetryPolicy::from_config(const config::CrmConfig& crm)
{
    std::vector<Millis> schedule;
    schedule.reserve(crm.retry_schedule.size());
    for (std::chrono::seconds step : crm.retry_schedule) {
        schedule.push_back(std::chrono::duration_cast<Millis>(step));
    }
    return RetryPolicy(std::move(schedule), kDefaultJitter);
}

RetryDecision RetryPolicy::after_failure(int attempts_done, const AttemptResult& result, double unit_random) const
{
    if (attempts_done < 1 || static_cast<std::size_t>(attempts_done) > schedule_.size()) {
        return RetryDecision{.verdict = Verdict::dead};
    }
    const Millis base = schedule_[static_cast<std::size_t>(attempts_done) - 1];
    const double u = std::clamp(unit_random, 0.0, 1.0);
    const double factor = 1.0 - jitter_ + 2.0 * jitter_ * u;
    Millis delay{static_cast<std::int64_t>(std::llround(static_cast<double>(base.count()) * factor))};

    const bool honours_retry_after = result.status == 429 || result.status == 503;
    if (honours_retry_after && result.retry_after) {
        const Millis longest = *std::max_element(schedule_.begin(), schedule_.end());
        delay = std::max(delay, std::min(*result.retry_after, longest));
    }
    return RetryDecision{.verdict = Verdict::retry, .delay = std::max(delay, Millis{0})};
}

}  // namespace paybridge::crm

#include "core/money.hpp"

#include "core/error.hpp"

namespace paybridge {
namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }

Result<std::int64_t> parse_digits(std::string_view digits, std::int64_t limit)
{
    if (digits.empty() || digits.size() > 15) {
        return make_error_code(errc::malformed_request);
    }
    if (digits.size() > 1 && digits[0] == '0') {
        return make_error_code(errc::malformed_request);
    }
    std::int64_t value = 0;
    for (char c : digits) {
        if (!is_digit(c)) {
            return make_error_code(errc::malformed_request);
        }
        value = value * 10 + (c - '0');
    }
    if (value > limit) {
        return make_error_code(errc::malformed_request);
    }
    return value;
}

}  // namespace

Result<std::int64_t> parse_yuan(std::string_view text)
{
    const auto dot = text.find('.');
    const std::string_view whole = text.substr(0, dot);
    std::string_view frac = dot == std::string_view::npos ? std::string_view{} : text.substr(dot + 1);
    if (dot != std::string_view::npos && (frac.empty() || frac.size() > 2)) {
        return make_error_code(errc::malformed_request);
    }
    auto yuan = parse_digits(whole, kMaxAmountFen / 100);
    if (!yuan) {
        return yuan.error();
    }
    std::int64_t cents = 0;
    for (std::size_t i = 0; i < 2; ++i) {
        cents *= 10;
        if (i < frac.size()) {
            if (!is_digit(frac[i])) {
                return make_error_code(errc::malformed_request);
            }
            cents += frac[i] - '0';
        }
    }
    const std::int64_t fen = *yuan * 100 + cents;
    if (fen > kMaxAmountFen) {
        return make_error_code(errc::malformed_request);
    }
    return fen;
}

Result<std::int64_t> parse_fen(std::string_view text)
{
    return parse_digits(text, kMaxAmountFen);
}

std::string format_yuan(std::int64_t fen)
{
    std::string out = std::to_string(fen / 100);
    const auto cents = fen % 100;
    out += '.';
    out += static_cast<char>('0' + cents / 10);
    out += static_cast<char>('0' + cents % 10);
    return out;
}

}  // namespace paybridge

// Fuzz target: the text decoders every provider notification goes through before and after its
// signature is checked — form decoding, charset conversion and UTF-8 validation, amounts, times,
// base64 — each held to a property, not just "does not crash":
// - parse_form: what it accepts re-encodes (form_encode) to a body it parses to the same fields;
// - to_utf8("utf-8"): accepts exactly the well-formed UTF-8 of a plain reference validator here,
//   and returns its input unchanged; the GBK family only ever yields well-formed UTF-8;
// - parse_yuan / parse_fen: accept exactly the grammar of core/money.hpp (reference below), and
//   format_yuan round-trips what they return;
// - parse_rfc3339: format_rfc3339 of what it returns parses back to the same instant;
// - base64: decode(encode(x)) == x, and a decoded text re-encodes to itself.

#include "core/money.hpp"
#include "core/time.hpp"
#include "gateways/charset.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/form.hpp"
#include "tests/fuzz/fuzz.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace {

using namespace paybridge;

/// Well-formed UTF-8 per Unicode 15 table 3-7: no overlongs, no surrogates, nothing above U+10FFFF.
bool reference_utf8(std::string_view s)
{
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const std::size_t n = s.size();
    std::size_t i = 0;
    auto in = [&](std::size_t k, unsigned lo, unsigned hi) { return k < n && p[k] >= lo && p[k] <= hi; };
    while (i < n) {
        const unsigned c = p[i];
        if (c <= 0x7F) {
            i += 1;
        } else if (c >= 0xC2 && c <= 0xDF) {
            if (!in(i + 1, 0x80, 0xBF)) return false;
            i += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            const unsigned lo = c == 0xE0 ? 0xA0 : 0x80;
            const unsigned hi = c == 0xED ? 0x9F : 0xBF;
            if (!in(i + 1, lo, hi) || !in(i + 2, 0x80, 0xBF)) return false;
            i += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            const unsigned lo = c == 0xF0 ? 0x90 : 0x80;
            const unsigned hi = c == 0xF4 ? 0x8F : 0xBF;
            if (!in(i + 1, lo, hi) || !in(i + 2, 0x80, 0xBF) || !in(i + 3, 0x80, 0xBF)) return false;
            i += 4;
        } else {
            return false;
        }
    }
    return true;
}

bool is_digits(std::string_view s)
{
    for (char c : s) {
        if (c < '0' || c > '9') return false;
    }
    return !s.empty();
}

/// core/money.hpp's grammar: 0 or a digit string without a leading zero, at most 15 digits.
bool reference_integer(std::string_view s)
{
    return is_digits(s) && s.size() <= 15 && (s.size() == 1 || s[0] != '0');
}

/// (0|[1-9][0-9]*)(\.[0-9]{1,2})? — the value range is checked by the caller.
bool reference_yuan_syntax(std::string_view s)
{
    const auto dot = s.find('.');
    if (dot == std::string_view::npos) {
        return reference_integer(s);
    }
    const std::string_view frac = s.substr(dot + 1);
    return reference_integer(s.substr(0, dot)) && is_digits(frac) && frac.size() <= 2;
}

void check_form(std::string_view text)
{
    auto fields = gateways::parse_form(text);
    if (!fields) {
        return;
    }
    std::string body;
    for (const auto& [key, value] : *fields) {
        FUZZ_CHECK(!key.empty());
        if (!body.empty()) body += '&';
        body += gateways::form_encode(key);
        body += '=';
        body += gateways::form_encode(value);
    }
    auto again = gateways::parse_form(body);
    FUZZ_CHECK(again.has_value());
    FUZZ_CHECK(*again == *fields);
}

void check_charsets(std::string_view text)
{
    auto utf8 = gateways::to_utf8(text, gateways::Charset::utf8);
    FUZZ_CHECK(utf8.has_value() == reference_utf8(text));
    if (utf8) {
        FUZZ_CHECK(*utf8 == text);
    }
    for (auto cs : {gateways::Charset::gbk, gateways::Charset::gb2312, gateways::Charset::gb18030}) {
        auto converted = gateways::to_utf8(text, cs);
        if (converted) {
            FUZZ_CHECK(reference_utf8(*converted));
        }
    }
    // The simulator's direction: whatever UTF-8 GBK can hold converts back to the same text.
    if (utf8) {
        auto gbk = gateways::from_utf8(text, gateways::Charset::gbk);
        if (gbk) {
            auto back = gateways::to_utf8(*gbk, gateways::Charset::gbk);
            FUZZ_CHECK(back.has_value());
            FUZZ_CHECK(*back == text);
        }
    }
}

void check_money(std::string_view text)
{
    auto yuan = parse_yuan(text);
    const bool syntax = reference_yuan_syntax(text);
    if (yuan) {
        FUZZ_CHECK(syntax);
        FUZZ_CHECK(*yuan >= 0 && *yuan <= kMaxAmountFen);
        auto again = parse_yuan(format_yuan(*yuan));
        FUZZ_CHECK(again.has_value() && *again == *yuan);
    } else if (syntax) {
        // Refused although well-formed: only for amounts above the limit.
        const auto dot = text.find('.');
        const std::string_view whole = text.substr(0, dot);
        FUZZ_CHECK(whole.size() >= 11);  // 10^10 yuan and more
    }
    auto fen = parse_fen(text);
    FUZZ_CHECK(!fen || reference_integer(text));
    if (fen) {
        FUZZ_CHECK(*fen >= 0 && *fen <= kMaxAmountFen);
        FUZZ_CHECK(std::to_string(*fen) == text);
    }
}

void check_times(std::string_view text)
{
    if (auto ms = parse_rfc3339(text)) {
        const auto back = parse_rfc3339(format_rfc3339(*ms));
        FUZZ_CHECK(back.has_value() && *back == *ms);
    }
    (void)parse_beijing_time(text);
}

void check_base64(std::string_view text)
{
    const std::string encoded = crypto::base64_encode(text);
    auto decoded = crypto::base64_decode(encoded);
    FUZZ_CHECK(decoded.has_value() && *decoded == text);
    if (auto raw = crypto::base64_decode(text)) {
        FUZZ_CHECK(raw->size() <= text.size());
        (void)crypto::base64_encode(*raw);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::string_view text = fuzz::as_text(data, size);
    check_form(text);
    check_charsets(text);
    check_money(text);
    check_times(text);
    check_base64(text);
    return 0;
}

#include "gateways/charset.hpp"

#include "core/error.hpp"
#include "gateways/gateway.hpp"

#include <doctest/doctest.h>

using namespace paybridge;
using namespace paybridge::gateways;

namespace {

// 大乐透 in UTF-8 and in GB2312/GBK (the same bytes in both).
constexpr std::string_view kUtf8 = "\xE5\xA4\xA7\xE4\xB9\x90\xE9\x80\x8F";
constexpr std::string_view kGbk = "\xB4\xF3\xC0\xD6\xCD\xB8";
// 镕 (U+9555) exists in GBK (E946) but not in GB2312.
constexpr std::string_view kRongUtf8 = "\xE9\x95\x95";
constexpr std::string_view kRongGbk = "\xE9\x46";

bool malformed(const Result<std::string>& r) { return !r && r.error() == make_error_code(errc::malformed_request); }

}  // namespace

TEST_CASE("charset labels are case-insensitive, unknown labels are rejected")
{
    CHECK(parse_charset("UTF-8") == Charset::utf8);
    CHECK(parse_charset("utf-8") == Charset::utf8);
    CHECK(parse_charset("GBK") == Charset::gbk);
    CHECK(parse_charset("Gb2312") == Charset::gb2312);
    CHECK(parse_charset("GB18030") == Charset::gb18030);
    CHECK_FALSE(parse_charset("latin1"));
    CHECK_FALSE(parse_charset("utf8 "));
    CHECK_FALSE(parse_charset(""));
    CHECK(malformed(to_utf8("abc", "iso-8859-1")));
    CHECK(malformed(from_utf8("abc", "big5")));
}

TEST_CASE("GBK and GB2312 decode to UTF-8, GB2312 is read as GBK")
{
    CHECK(to_utf8(kGbk, "gbk").value() == kUtf8);
    CHECK(to_utf8(kGbk, "GB2312").value() == kUtf8);
    CHECK(to_utf8(kGbk, "gb18030").value() == kUtf8);
    CHECK(to_utf8(std::string(kGbk) + " 2.1+", "gbk").value() == std::string(kUtf8) + " 2.1+");
    CHECK(to_utf8(kRongGbk, "gb2312").value() == kRongUtf8);  // GBK-only character under a gb2312 label
    CHECK(to_utf8("", "gbk").value().empty());
}

TEST_CASE("invalid or truncated GBK is rejected")
{
    CHECK(malformed(to_utf8("\xB4", "gbk")));          // lead byte without trail byte
    CHECK(malformed(to_utf8("ab\xB4\x20", "gbk")));   // 0x20 is no trail byte
    CHECK(malformed(to_utf8("\xFF\xFF", "gbk")));
}

TEST_CASE("UTF-8 input is validated and returned unchanged")
{
    CHECK(to_utf8(kUtf8, "utf-8").value() == kUtf8);
    CHECK(to_utf8("plain ascii", "UTF-8").value() == "plain ascii");
    CHECK(malformed(to_utf8(kGbk, "utf-8")));            // GBK bytes are not UTF-8
    CHECK(malformed(to_utf8("\xC0\xAF", "utf-8")));      // overlong '/'
    CHECK(malformed(to_utf8("\xED\xA0\x80", "utf-8")));  // surrogate U+D800
    CHECK(malformed(to_utf8("\xF4\x90\x80\x80", "utf-8")));  // above U+10FFFF
    CHECK(malformed(to_utf8("\xE5\xA4", "utf-8")));      // truncated
    CHECK(malformed(to_utf8("a\xE5\xA4" "b", "utf-8")));    // truncated, then more text
    CHECK(malformed(to_utf8("\x80", "utf-8")));          // a lone continuation byte
    CHECK(malformed(to_utf8("\xE0\x80\xAF", "utf-8")));  // overlong, three bytes
    CHECK(to_utf8(std::string_view("a\0b", 3), "utf-8").value() == std::string_view("a\0b", 3));  // NUL is UTF-8
    CHECK(to_utf8("\xF4\x8F\xBF\xBF", "utf-8").value() == "\xF4\x8F\xBF\xBF");  // U+10FFFF itself
}

TEST_CASE("UTF-8 validation finds a bad sequence at any offset of a long ASCII text")
{
    // ASCII is checked eight bytes at a time: put every sequence at every alignment, mid-text and
    // at the end.
    const std::string valid[] = {"\xE5\xA4\xA7", "\xC3\xA9", "\xF0\x9F\x98\x80", "\xF4\x8F\xBF\xBF"};
    const std::string invalid[] = {"\xE5\xA4", "\x80", "\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xFF"};
    for (std::size_t before = 0; before < 20; ++before) {
        for (std::size_t after : {std::size_t{0}, std::size_t{1}, std::size_t{9}}) {
            CAPTURE(before);
            CAPTURE(after);
            for (const std::string& seq : valid) {
                const std::string text = std::string(before, 'a') + seq + std::string(after, 'b') + seq;
                CHECK(to_utf8(text, "utf-8").value() == text);
            }
            for (const std::string& seq : invalid) {
                CHECK(malformed(to_utf8(std::string(before, 'a') + seq + std::string(after, 'b'), "utf-8")));
                // ... also behind a valid sequence
                CHECK(malformed(to_utf8(std::string(before, 'a') + "\xC3\xA9" + std::string(after, 'b') + seq, "utf-8")));
            }
        }
    }
}

TEST_CASE("long input crosses the internal buffer size")
{
    std::string utf8;
    std::string gbk;
    for (int i = 0; i < 5000; ++i) {
        utf8 += kUtf8;
        gbk += kGbk;
    }
    CHECK(to_utf8(gbk, "gbk").value() == utf8);
    CHECK(from_utf8(utf8, "gbk").value() == gbk);
    CHECK(to_utf8(utf8, "utf-8").value() == utf8);
}

TEST_CASE("from_utf8 encodes for the simulator, GB2312 is strict")
{
    CHECK(from_utf8(kUtf8, "gbk").value() == kGbk);
    CHECK(from_utf8(kUtf8, "gb2312").value() == kGbk);
    CHECK(from_utf8(kRongUtf8, "gbk").value() == kRongGbk);
    CHECK(malformed(from_utf8(kRongUtf8, "gb2312")));
    CHECK(malformed(from_utf8("\xF0\x9F\x98\x80", "gbk")));  // emoji: not in GBK
    CHECK(from_utf8("\xF0\x9F\x98\x80", "gb18030").has_value());
    CHECK(malformed(from_utf8("\xC0\xAF", "gbk")));
}

TEST_CASE("header names and charset labels compare ASCII case-insensitively, nothing more")
{
    using paybridge::gateways::ascii_iequals;
    CHECK(ascii_iequals("Wechatpay-Serial", "WECHATPAY-serial"));
    CHECK(ascii_iequals("", ""));
    CHECK_FALSE(ascii_iequals("Wechatpay-Serial", "Wechatpay-Seria"));
    CHECK_FALSE(ascii_iequals("a-b", "a_b"));
    CHECK_FALSE(ascii_iequals("\xC3\xA9", "\xC3\x89"));  // é / É: not folded (not ASCII)
    CHECK_FALSE(ascii_iequals("@", "`"));                // 0x40 / 0x60 differ by the case bit only
    paybridge::gateways::InboundRequest req;
    req.headers = {{"content-type", "application/json"}, {"WECHATPAY-NONCE", "abc"}};
    std::string_view v;
    CHECK(req.header("Wechatpay-Nonce", v));
    CHECK(v == "abc");
    CHECK_FALSE(req.header("Wechatpay-Serial", v));
}

TEST_CASE("the decoders Alipay notifications need are checked where the gateway loads")
{
    // This machine has glibc's gconv modules: nothing is missing, and GBK decodes.
    CHECK(paybridge::gateways::missing_decoders().empty());
    CHECK(to_utf8("\xD6\xD0", "gbk").value() == "\xE4\xB8\xAD");  // 中
}

#include "gateways/form.hpp"

#include "core/error.hpp"

#include <doctest/doctest.h>

using namespace paybridge;
using gateways::FormFields;
using gateways::form_encode;
using gateways::parse_form;

namespace {

FormFields ok(std::string_view raw)
{
    auto fields = parse_form(raw);
    REQUIRE_MESSAGE(fields.has_value(), raw);
    return *fields;
}

bool malformed(std::string_view raw)
{
    auto fields = parse_form(raw);
    return !fields && fields.error() == make_error_code(errc::malformed_request);
}

}  // namespace

TEST_CASE("form: '+' is a space, %2B a literal plus, decoded exactly once")
{
    const FormFields f = ok("subject=%E4%BC%9A%E5%91%98%2B+1&passback_params=%257B%2522a%2522%257D&plus=a+b");
    REQUIRE(f.size() == 3);
    CHECK(f[0].first == "subject");
    CHECK(f[0].second == "\xE4\xBC\x9A\xE5\x91\x98+ 1");  // 会员+ 1
    // %25 decodes to '%' once; a second decode would turn "%7B" into '{'.
    CHECK(f[1].second == "%7B%22a%22%7D");
    CHECK(f[2].second == "a b");
}

TEST_CASE("form: '&' and '=' inside values, split on the first '='")
{
    const FormFields f = ok("body=a%26b%3Dc&expr=x=y=z&k%3D=v");
    REQUIRE(f.size() == 3);
    CHECK(f[0] == std::pair<std::string, std::string>{"body", "a&b=c"});
    CHECK(f[1] == std::pair<std::string, std::string>{"expr", "x=y=z"});
    CHECK(f[2] == std::pair<std::string, std::string>{"k=", "v"});
}

TEST_CASE("form: base64 sign ending in '=' and '==' keeps its padding")
{
    CHECK(ok("sign=QUJD&x=1")[0].second == "QUJD");
    CHECK(ok("sign=QUI=&x=1")[0].second == "QUI=");
    CHECK(ok("sign=QQ==&x=1")[0].second == "QQ==");
    CHECK(ok("sign=QQ%3D%3D")[0].second == "QQ==");
    CHECK(ok("x=1&sign=a+b/c==")[1].second == "a b/c==");  // raw '+' becomes a space (the gateway undoes it)
}

TEST_CASE("form: raw bytes are kept, no transcoding, hex digits in either case")
{
    const FormFields f = ok("subject=%B4%f3%C0%D6%cd%B8&raw=\xB4\xF3");
    CHECK(f[0].second == "\xB4\xF3\xC0\xD6\xCD\xB8");  // 大乐透 in GBK, untouched
    CHECK(f[1].second == "\xB4\xF3");
}

TEST_CASE("form: empty values, empty segments and empty body")
{
    const FormFields f = ok("a=1&&b=&c=3&");
    REQUIRE(f.size() == 3);
    CHECK(f[1] == std::pair<std::string, std::string>{"b", ""});
    CHECK(ok("&a=1").size() == 1);
    CHECK(ok("").empty());
    CHECK(ok("&&").empty());
    const FormFields order = ok("z=1&a=2&m=3");
    CHECK(order[0].first == "z");  // wire order is preserved
    CHECK(order[2].first == "m");
}

TEST_CASE("form: malformed input")
{
    CHECK(malformed("a=%G1"));
    CHECK(malformed("a=%1G"));
    CHECK(malformed("a=1%"));
    CHECK(malformed("a=%4"));
    CHECK(malformed("a=%\xE5\xA4"));  // an escape of non-ASCII bytes
    CHECK(malformed("a=%%41"));
    CHECK(malformed("a%=1"));
    CHECK(malformed("a=1&novalue"));
    CHECK(malformed("=v"));
    CHECK(malformed("a=1&=2"));
}

TEST_CASE("form: duplicate keys are rejected, also when spelled differently")
{
    CHECK(malformed("a=1&a=1"));
    CHECK(malformed("a=1&b=2&a=3"));
    CHECK(malformed("sign=x&%73ign=y"));  // %73 = 's'
    CHECK(ok("a=1&A=1").size() == 2);     // keys are case-sensitive
}

TEST_CASE("form_encode: java.net.URLEncoder rules")
{
    CHECK(form_encode("AZaz09.-*_") == "AZaz09.-*_");
    CHECK(form_encode("a b") == "a+b");
    CHECK(form_encode("+&=%~!'()/:") == "%2B%26%3D%25%7E%21%27%28%29%2F%3A");
    CHECK(form_encode("\xE5\xA4\xA7") == "%E5%A4%A7");
    CHECK(form_encode(std::string_view("\x00\x7F\xFF", 3)) == "%00%7F%FF");
    CHECK(form_encode("") == "");
}

TEST_CASE("form: encode then parse round-trips every byte")
{
    std::string all;
    for (int c = 0; c < 256; ++c) {
        all += static_cast<char>(c);
    }
    const FormFields f = ok("k=" + form_encode(all));
    REQUIRE(f.size() == 1);
    CHECK(f[0].second == all);
}

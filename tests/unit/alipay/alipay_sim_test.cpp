// The simulator must produce exactly what Alipay sends: these tests check its output against the
// protocol independently of the gateway (sign string, encoding, field order, signature).

#include "gateways/alipay/alipay_sim.hpp"

#include "alipay_test_support.hpp"
#include "core/money.hpp"
#include "core/time.hpp"
#include "gateways/form.hpp"

#include <doctest/doctest.h>

using namespace paybridge;
using namespace paybridge::gateways;
using namespace paybridge::gateways::alipay;
using namespace alipay_test;

TEST_CASE("build_alipay_body: given order, URLEncoder encoding, sign_type and sign last")
{
    AlipayNotice notice;
    notice.fields = {{"out_trade_no", "A 1"}, {"app_id", "2021"}, {"passback_params", "%7B\"a\":1%7D"},
                     {"subject", "\xE4\xBC\x9A\xE5\x91\x98+"}, {"charset", "utf-8"}};
    const std::string body = body_of(notice);
    const std::string expected_prefix =
        "out_trade_no=A+1&app_id=2021&passback_params=%257B%22a%22%3A1%257D&subject=%E4%BC%9A%E5%91%98%2B&"
        "charset=utf-8&sign_type=RSA2&sign=";
    REQUIRE(body.starts_with(expected_prefix));
    CHECK(alipay_sign_string(notice) ==
          "app_id=2021&charset=utf-8&out_trade_no=A 1&passback_params=%7B\"a\":1%7D&"
          "subject=\xE4\xBC\x9A\xE5\x91\x98+");

    // The signature is SHA256withRSA over the sign string, checked with the public key directly.
    auto fields = parse_form(body);
    REQUIRE(fields.has_value());
    auto signature = crypto::base64_decode(fields->back().second);
    REQUIRE(signature.has_value());
    auto pub = crypto::load_public_key(alipay_keys().public_pem);
    REQUIRE(pub.has_value());
    CHECK(crypto::rsa_verify(pub->get(), crypto::Digest::sha256, alipay_sign_string(notice), *signature));
    CHECK_FALSE(crypto::rsa_verify(pub->get(), crypto::Digest::sha1, alipay_sign_string(notice), *signature));

    notice.sign_type = "RSA";
    auto rsa1 = parse_form(body_of(notice));
    REQUIRE(rsa1.has_value());
    CHECK(crypto::rsa_verify(pub->get(), crypto::Digest::sha1, alipay_sign_string(notice),
                             crypto::base64_decode(rsa1->back().second).value()));

    notice.sign_type.clear();
    CHECK(body_of(notice).find("sign_type") == std::string::npos);
}

TEST_CASE("GBK notices: values transcoded before signing and encoding")
{
    AlipayNotice notice;
    notice.charset = "gbk";
    notice.fields = {{"subject", "\xE5\xA4\xA7\xE4\xB9\x90\xE9\x80\x8F"}, {"charset", "gbk"}};
    CHECK(alipay_sign_string(notice) == "charset=gbk&subject=\xB4\xF3\xC0\xD6\xCD\xB8");
    CHECK(body_of(notice).starts_with("subject=%B4%F3%C0%D6%CD%B8&charset=gbk&"));

    notice.fields.emplace_back("body", "\xF0\x9F\x98\x80");  // not representable in GBK
    CHECK_THROWS_AS(body_of(notice), std::invalid_argument);
}

TEST_CASE("make_paid_notice: the usual fields, amounts in yuan, Beijing times")
{
    const AlipayNotice n = make_paid_notice(spec("B-7", 5));
    auto get = [&](std::string_view key) {
        for (const auto& [k, v] : n.fields) {
            if (k == key) {
                return v;
            }
        }
        return std::string("<absent>");
    };
    CHECK(get("app_id") == kAppId);
    CHECK(get("auth_app_id") == kAppId);
    CHECK(get("seller_id") == kSellerId);
    CHECK(get("out_trade_no") == "B-7");
    CHECK(get("total_amount") == "0.05");
    CHECK(get("receipt_amount") == "0.05");
    CHECK(get("trade_status") == "TRADE_SUCCESS");
    CHECK(get("trade_no") == "2024050122001400001234567890");
    CHECK(get("notify_time") == "2024-05-01 12:00:00");
    CHECK(get("gmt_payment") == "2024-05-01 11:59:30");
    CHECK(get("charset") == "utf-8");
    CHECK(get("notify_type") == "trade_status_sync");
    CHECK(get("fund_bill_list") == R"([{"amount":"0.05","fundChannel":"ALIPAYACCOUNT"}])");
    CHECK(get("refund_fee") == "<absent>");
    CHECK(get("buyer_id").size() == 16);

    // notify_id is random; a generated trade_no looks like Alipay's.
    auto s = spec();
    s.trade_no.clear();
    const AlipayNotice a = make_paid_notice(s);
    const AlipayNotice b = make_paid_notice(s);
    CHECK(a.fields != b.fields);
}

TEST_CASE("make_refund_notice / make_closed_notice")
{
    const AlipayNotice partial = make_refund_notice(spec(), 300, "RF-9");
    const AlipayNotice full = make_refund_notice(spec(), 1234, "RF-10");
    const AlipayNotice closed = make_closed_notice(spec());
    auto get = [](const AlipayNotice& n, std::string_view key) {
        for (const auto& [k, v] : n.fields) {
            if (k == key) {
                return v;
            }
        }
        return std::string("<absent>");
    };
    CHECK(get(partial, "trade_status") == "TRADE_SUCCESS");
    CHECK(get(partial, "refund_fee") == "3.00");
    CHECK(get(partial, "gmt_refund") == "2024-05-01 11:59:59.123");
    CHECK(get(partial, "out_biz_no") == "RF-9");
    CHECK(get(full, "trade_status") == "TRADE_CLOSED");
    CHECK(get(full, "refund_fee") == "12.34");
    CHECK(get(closed, "trade_status") == "TRADE_CLOSED");
    CHECK(get(closed, "refund_fee") == "<absent>");
    CHECK(get(closed, "gmt_refund") == "<absent>");
    CHECK(get(closed, "gmt_close") == "2024-05-01 11:59:59");
}

TEST_CASE("format_beijing_time")
{
    CHECK(format_beijing_time(0) == "1970-01-01 08:00:00");
    CHECK(format_beijing_time(1714536000123, true) == "2024-05-01 12:00:00.123");
    CHECK(format_beijing_time(1714492799999) == "2024-04-30 23:59:59");
    const auto parsed = parse_beijing_time(format_beijing_time(1714536000123, true));
    REQUIRE(parsed.has_value());
    CHECK(*parsed == 1714536000123);
    CHECK(alipay_content_type("gbk") == "application/x-www-form-urlencoded; charset=gbk");
}

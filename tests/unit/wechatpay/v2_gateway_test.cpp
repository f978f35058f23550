#include "core/error.hpp"
#include "gateways/wechatpay/wechatpay_v2_gateway.hpp"
#include "tests/unit/wechatpay/fixtures.hpp"

#include <doctest/doctest.h>

#include <cctype>
#include <memory>
#include <string>

using namespace wxtest;
using paybridge::errc;
using paybridge::EventKind;
using wx::V2SignType;

namespace {

// PROTOCOLS.md §3.2 official vector and §3.3 req_info vector.
constexpr const char* kVectorKey = "192006250b4c09247ec02edce69f6a2d";
constexpr const char* kVectorReqInfo =
    "WBzGpzQuNpcFxIlFjUUD9BZv+lpBMzd2SHiKCkwfALWid5G8ZvfOussfMIHLbKJmcnxPKdb1ZJEqTAp8ysQv+xa1fj+Eorgndx3fNxf3KAYa3LPgsjvZgxaeYyrhV05Kbjkj6ywg27cEyTTaPZFYNg==";
constexpr const char* kVectorRefundPlain =
    "<root><out_refund_no><![CDATA[R1]]></out_refund_no><refund_status><![CDATA[SUCCESS]]></refund_status></root>";

std::unique_ptr<gw::Gateway> make_gateway(const std::string& key = keys().apiv2_key)
{
    auto m = merchant(false, false);
    m.apiv2_key = key;
    std::vector<std::string> problems;
    auto gateway = wx::make_wechat_v2_gateway({m}, problems);
    REQUIRE(gateway);
    CHECK(problems.empty());
    return std::move(*gateway);
}

paybridge::Result<gw::Verified> verify(const gw::Gateway& gateway, std::string_view body,
                                       std::string_view mchid = kMchid)
{
    const std::vector<std::pair<std::string_view, std::string_view>> headers{{"Content-Type", "text/xml"}};
    return gateway.verify_and_parse(request(headers, body, mchid, now_unix()));
}

sim::V2Payment payment()
{
    return sim::V2Payment{.appid = kAppid,
                          .mch_id = kMchid,
                          .out_trade_no = "BILL-2",
                          .transaction_id = "1004400740201409030005092168",
                          .total_fen = 4321,
                          .time_end_unix = 1528425296};
}

sim::V2Refund refund()
{
    return sim::V2Refund{.appid = kAppid,
                         .mch_id = kMchid,
                         .out_trade_no = "BILL-2",
                         .transaction_id = "1004400740201409030005092168",
                         .out_refund_no = "R-2",
                         .total_fen = 4321,
                         .refund_fen = 321,
                         .success_unix = 1513302361};
}

/// Replaces the text of one element (the signature then no longer covers the document).
std::string replace_value(std::string doc, const std::string& name, const std::string& value)
{
    const std::string open = "<" + name + ">";
    const auto start = doc.find(open) + open.size();
    const auto end = doc.find("</" + name + ">");
    doc.replace(start, end - start, value);
    return doc;
}

}  // namespace

TEST_CASE("v2: the §3.2 official signature vector")
{
    const wx::XmlFields fields{{"appid", "wxd930ea5d5a258f4f"},
                               {"mch_id", "10000100"},
                               {"device_info", "1000"},
                               {"body", "test"},
                               {"nonce_str", "ibuaiVcKdpRxkhJA"},
                               {"sign", "ignored"},
                               {"empty", ""}};
    CHECK(wx::v2_sign_string(fields) ==
          "appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100&nonce_str=ibuaiVcKdpRxkhJA");
    CHECK(wx::v2_sign(fields, kVectorKey, V2SignType::md5) == "9A0A8659F005D6984697E2CA0A9CF3B7");
    CHECK(wx::v2_sign(fields, kVectorKey, V2SignType::hmac_sha256) ==
          "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6");
}

TEST_CASE("v2: the §3.3 req_info vector")
{
    CHECK(wx::v2_req_info_key(kVectorKey) == "d96eb16afdd491fa1e705096edbc2205");
    auto encrypted = sim::encrypt_req_info(kVectorRefundPlain, kVectorKey);
    REQUIRE(encrypted);
    CHECK(*encrypted == kVectorReqInfo);
    auto plain = crypto::aes256ecb_decrypt(wx::v2_req_info_key(kVectorKey), *crypto::base64_decode(kVectorReqInfo));
    REQUIRE(plain);
    CHECK(*plain == kVectorRefundPlain);

    // Through the gateway: the vector decrypts with the vector key (its inner document lacks the
    // amounts a SUCCESS refund needs, hence malformed), and fails authentication with another key.
    auto m = merchant(false, false);
    m.apiv2_key = kVectorKey;
    std::vector<std::string> problems;
    auto gateway = wx::make_wechat_v2_gateway({m}, problems);
    REQUIRE(gateway);
    const std::string outer = wx::build_flat_xml("xml", {{"return_code", "SUCCESS"},
                                                         {"appid", kAppid},
                                                         {"mch_id", kMchid},
                                                         {"nonce_str", "n"},
                                                         {"req_info", kVectorReqInfo}});
    CHECK(verify(**gateway, outer).error() == errc::malformed_request);
    CHECK(verify(*make_gateway(), outer).error() == errc::bad_signature);
}

TEST_CASE("v2: payments signed with MD5 or HMAC-SHA256 with and without sign_type")
{
    auto gateway = make_gateway();
    CHECK(gateway->name() == "wechatpay_v2");
    for (const auto type : {V2SignType::md5, V2SignType::hmac_sha256}) {
        for (const bool send_sign_type : {true, false}) {
            CAPTURE(wx::sign_type_name(type));
            CAPTURE(send_sign_type);
            const std::string body = sim::build_v2_payment_xml(payment(), keys().apiv2_key, type, send_sign_type);
            CHECK((body.find("<sign_type>") != std::string::npos) == send_sign_type);
            auto v = verify(*gateway, body);
            REQUIRE(v);
            const auto& ev = v->event;
            CHECK(ev.provider == "wechatpay");
            CHECK(ev.channel == "wechatpay_v2");
            CHECK(ev.kind == EventKind::payment);
            CHECK(ev.account == kMchid);
            CHECK(ev.bill_id == "BILL-2");
            CHECK(ev.provider_txn_id == "1004400740201409030005092168");
            CHECK(ev.notification_id == "v2:1004400740201409030005092168:BILL-2");
            CHECK(ev.total_fen == 4321);
            CHECK(ev.currency == "CNY");
            CHECK(ev.provider_status == "SUCCESS");
            CHECK(ev.occurred_at == "2018-06-08T02:34:56.000Z");
            CHECK(v->notes.find(std::string(wx::sign_type_name(type))) != std::string::npos);
        }
    }
    // A lower-case sign is accepted (compared after upper-casing).
    const std::string body = sim::build_v2_payment_xml(payment(), keys().apiv2_key, V2SignType::md5);
    const auto start = body.find("<sign><![CDATA[") + 15;
    std::string lower = body;
    for (std::size_t i = start; i < start + 32; ++i) {
        lower[i] = static_cast<char>(std::tolower(static_cast<unsigned char>(lower[i])));
    }
    REQUIRE(lower != body);
    CHECK(verify(*gateway, lower));
}

TEST_CASE("v2: a notification declaring one sign_type but signed with the other verifies (pitfall 29)")
{
    // WeChat has been seen signing with MD5 where HMAC-SHA256 was ordered (PROTOCOLS.md §3.2): the
    // declared sign_type is tried first, then the other algorithm, both keyed with the API v2 key.
    auto gateway = make_gateway();
    for (const auto& [declared, used] : {std::pair{"HMAC-SHA256", V2SignType::md5},
                                         std::pair{"MD5", V2SignType::hmac_sha256}}) {
        CAPTURE(declared);
        auto p = payment();
        p.extra.push_back({"sign_type", declared});
        const std::string body = sim::build_v2_payment_xml(p, keys().apiv2_key, used, false);
        REQUIRE(body.find(std::string("<sign_type><![CDATA[") + declared) != std::string::npos);
        auto v = verify(*gateway, body);
        REQUIRE(v);
        CHECK(v->event.total_fen == p.total_fen);
        CHECK(v->notes.find(std::string("signed ") + std::string(wx::sign_type_name(used)) + " (sign_type " +
                            declared + ", fallback)") != std::string::npos);
        // Still keyed: the same mix under another key does not verify.
        const std::string other = sim::build_v2_payment_xml(p, std::string(32, 'x'), used, false);
        CHECK(verify(*gateway, other).error() == errc::bad_signature);
    }
}

TEST_CASE("v2: signatures that do not match are rejected")
{
    auto gateway = make_gateway();
    const std::string md5 = sim::build_v2_payment_xml(payment(), keys().apiv2_key, V2SignType::md5);
    CHECK(verify(*gateway, replace_value(md5, "total_fee", "1")).error() == errc::bad_signature);
    CHECK(verify(*gateway, replace_value(md5, "sign", "<![CDATA[]]>")).error() == errc::bad_signature);
    CHECK(verify(*gateway, replace_value(md5, "sign_type", "<![CDATA[SHA1]]>")).error() == errc::bad_signature);
    // sign_type is a signed field: changing it on the way breaks the signature under either algorithm.
    CHECK(verify(*gateway, replace_value(md5, "sign_type", "<![CDATA[HMAC-SHA256]]>")).error() ==
          errc::bad_signature);
    // Signed with another key.
    const std::string other = sim::build_v2_payment_xml(payment(), std::string(32, 'x'), V2SignType::hmac_sha256);
    CHECK(verify(*gateway, other).error() == errc::bad_signature);
    // No sign at all.
    const std::string unsigned_doc =
        wx::build_flat_xml("xml", {{"return_code", "SUCCESS"}, {"mch_id", kMchid}, {"total_fee", "1"}});
    CHECK(verify(*gateway, unsigned_doc).error() == errc::bad_signature);
    // The v3 key is not the v2 key (PROTOCOLS.md pitfall 30).
    const std::string v3_keyed = sim::build_v2_payment_xml(payment(), keys().apiv3_key, V2SignType::md5);
    CHECK(verify(*gateway, v3_keyed).error() == errc::bad_signature);
}

TEST_CASE("v2: return_code or result_code FAIL is acknowledged without moving money")
{
    auto gateway = make_gateway();
    auto p = payment();
    p.return_code = "FAIL";
    auto v = verify(*gateway, sim::build_v2_payment_xml(p, keys().apiv2_key, V2SignType::md5));
    REQUIRE(v);
    CHECK(v->event.kind == EventKind::none);
    CHECK(v->event.provider_status == "FAIL");

    p = payment();
    p.result_code = "FAIL";
    auto w = verify(*gateway, sim::build_v2_payment_xml(p, keys().apiv2_key, V2SignType::hmac_sha256));
    REQUIRE(w);
    CHECK(w->event.kind == EventKind::none);
}

TEST_CASE("v2: mch_id and appid must agree with the route and the configuration")
{
    auto gateway = make_gateway();
    const std::string body = sim::build_v2_payment_xml(payment(), keys().apiv2_key, V2SignType::md5);
    CHECK(verify(*gateway, body, "1900000999").error() == errc::unknown_account);

    auto p = payment();
    p.mch_id = "1900000999";
    CHECK(verify(*gateway, sim::build_v2_payment_xml(p, keys().apiv2_key, V2SignType::md5)).error() ==
          errc::unknown_account);
    p = payment();
    p.appid = "wx0000000000000bad";
    CHECK(verify(*gateway, sim::build_v2_payment_xml(p, keys().apiv2_key, V2SignType::md5)).error() ==
          errc::unknown_account);
}

TEST_CASE("v2: payments and refunds through another AppID bound to the merchant (other_appids) are accepted")
{
    auto m = merchant(false, false);
    m.other_appids = {"wx00000000miniprog"};
    std::vector<std::string> problems;
    auto made = wx::make_wechat_v2_gateway({m}, problems);
    REQUIRE(made);
    const auto& gateway = **made;
    auto p = payment();
    p.appid = "wx00000000miniprog";
    auto paid = verify(gateway, sim::build_v2_payment_xml(p, keys().apiv2_key, V2SignType::md5));
    REQUIRE(paid);
    CHECK(paid->event.kind == EventKind::payment);
    auto r = refund();
    r.appid = "wx00000000miniprog";
    auto refunded = verify(gateway, sim::build_v2_refund_xml(r, keys().apiv2_key).value());
    REQUIRE(refunded);
    CHECK(refunded->event.kind == EventKind::refund);
    p.appid = "wx0000000000000bad";
    CHECK(verify(gateway, sim::build_v2_payment_xml(p, keys().apiv2_key, V2SignType::md5)).error() ==
          errc::unknown_account);
}

TEST_CASE("v2: amounts must be integer fen, or the authentic notification is unusable")
{
    auto gateway = make_gateway();
    for (const char* bad : {"12.5", "-1", "", "1e3"}) {
        auto p = payment();
        p.extra.push_back({"total_fee", bad});
        CAPTURE(bad);
        auto v = verify(*gateway, sim::build_v2_payment_xml(p, keys().apiv2_key, V2SignType::md5));
        REQUIRE(v);
        CHECK(v->event.kind == EventKind::unusable);
        CHECK(v->event.problem == "total_fee \"" + std::string(bad) + "\" is not an amount in fen");
        CHECK(v->event.bill_id == p.out_trade_no);
        CHECK_FALSE(v->event.notification_id.empty());
    }
    // Forged: still a bad signature, never an anomaly.
    auto p = payment();
    p.extra.push_back({"total_fee", "12.5"});
    std::string forged = sim::build_v2_payment_xml(p, keys().apiv2_key, V2SignType::md5);
    forged.replace(forged.find("12.5"), 4, "13.5");
    CHECK(verify(*gateway, forged).error() == errc::bad_signature);
}

TEST_CASE("v2: XXE and billion laughs and duplicates are rejected through the gateway")
{
    auto gateway = make_gateway();
    const std::string xxe = "<!DOCTYPE xml [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]><xml><sign>&xxe;</sign></xml>";
    CHECK(verify(*gateway, xxe).error() == errc::malformed_request);
    const std::string laughs =
        "<!DOCTYPE xml [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\">"
        "<!ENTITY c \"&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;\">]><xml><return_msg>&c;</return_msg></xml>";
    CHECK(verify(*gateway, laughs).error() == errc::malformed_request);

    // A second total_fee after a correctly signed document must not be able to win.
    std::string body = sim::build_v2_payment_xml(payment(), keys().apiv2_key, V2SignType::md5);
    body.insert(body.size() - 6, "<total_fee>1</total_fee>");
    CHECK(verify(*gateway, body).error() == errc::malformed_request);
}

TEST_CASE("v2: refund notifications")
{
    auto gateway = make_gateway();

    SUBCASE("SUCCESS")
    {
        auto body = sim::build_v2_refund_xml(refund(), keys().apiv2_key);
        REQUIRE(body);
        CHECK(body->find("<sign>") == std::string::npos);
        auto v = verify(*gateway, *body);
        REQUIRE(v);
        const auto& ev = v->event;
        CHECK(ev.kind == EventKind::refund);
        CHECK(ev.channel == "wechatpay_v2");
        CHECK(ev.bill_id == "BILL-2");
        CHECK(ev.refund_id == "R-2");
        CHECK(ev.refund_fen == 321);
        CHECK(ev.total_fen == 4321);
        CHECK_FALSE(ev.refund_cumulative);
        CHECK(ev.provider_txn_id == "1004400740201409030005092168");
        CHECK(ev.provider_status == "SUCCESS");
        CHECK(ev.notification_id == "v2:refund:R-2:SUCCESS");
        CHECK(ev.occurred_at == "2017-12-15T01:46:01.000Z");
    }
    SUBCASE("the unauthenticated outer return_code does not decide: the decrypted refund_status does")
    {
        auto r = refund();
        r.return_code = "FAIL";
        auto body = sim::build_v2_refund_xml(r, keys().apiv2_key);
        REQUIRE(body);
        auto v = verify(*gateway, *body);
        REQUIRE(v);
        CHECK(v->event.kind == EventKind::refund);
        CHECK(v->event.refund_fen == 321);
    }
    SUBCASE("CHANGE and REFUNDCLOSE")
    {
        auto r = refund();
        r.refund_status = "CHANGE";
        auto change = sim::build_v2_refund_xml(r, keys().apiv2_key);
        REQUIRE(change);
        auto v = verify(*gateway, *change);
        REQUIRE(v);
        CHECK(v->event.kind == EventKind::refund_abnormal);

        r.refund_status = "REFUNDCLOSE";
        auto closed = sim::build_v2_refund_xml(r, keys().apiv2_key);
        REQUIRE(closed);
        auto w = verify(*gateway, *closed);
        REQUIRE(w);
        CHECK(w->event.kind == EventKind::refund_closed);
        CHECK(w->event.notification_id == "v2:refund:R-2:REFUNDCLOSE");

        // Without the bill's id there is nothing to record it on: malformed (400), as API v3
        // answers, not a store error (500) that WeChat would retry for a day.
        r.out_trade_no.clear();
        for (const char* status : {"CHANGE", "REFUNDCLOSE", "SUCCESS"}) {
            CAPTURE(status);
            r.refund_status = status;
            auto nameless = sim::build_v2_refund_xml(r, keys().apiv2_key);
            REQUIRE(nameless);
            CHECK(verify(*gateway, *nameless).error() == errc::malformed_request);
        }
    }
    SUBCASE("decryption failures are bad signatures")
    {
        auto other_key = sim::build_v2_refund_xml(refund(), std::string(32, 'z'));
        REQUIRE(other_key);
        CHECK(verify(*gateway, *other_key).error() == errc::bad_signature);

        auto body = sim::build_v2_refund_xml(refund(), keys().apiv2_key);
        REQUIRE(body);
        const auto start = body->find("<req_info><![CDATA[") + 19;
        std::string tampered = *body;
        tampered[start + 5] = tampered[start + 5] == 'A' ? 'B' : 'A';
        CHECK(verify(*gateway, tampered).error() == errc::bad_signature);
        CHECK(verify(*gateway, replace_value(*body, "req_info", "<![CDATA[not*base64]]>")).error() ==
              errc::bad_signature);
    }
    SUBCASE("the outer mch_id must match the route")
    {
        auto r = refund();
        r.mch_id = "1900000999";
        auto body = sim::build_v2_refund_xml(r, keys().apiv2_key);
        REQUIRE(body);
        CHECK(verify(*gateway, *body).error() == errc::unknown_account);
    }
}

TEST_CASE("v2: replies")
{
    auto gateway = make_gateway();
    const auto ok = gateway->success();
    CHECK(ok.status == 200);
    CHECK(ok.content_type == "application/xml");
    CHECK(ok.body ==
          "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>");

    const auto bad = gateway->failure(make_error_code(errc::bad_signature));
    CHECK(bad.status == 401);
    CHECK(bad.content_type == "application/xml");
    auto parsed = wx::parse_flat_xml(bad.body, "xml");
    REQUIRE(parsed);
    CHECK(parsed->at("return_code") == "FAIL");
    CHECK_FALSE(parsed->at("return_msg").empty());
    CHECK(gateway->failure(make_error_code(errc::malformed_request)).status == 400);
    CHECK(gateway->failure(make_error_code(errc::unknown_account)).status == 400);
    CHECK(gateway->failure(make_error_code(errc::store_unavailable)).status == 503);
    CHECK(gateway->failure(make_error_code(errc::internal)).status == 500);
}

TEST_CASE("v2: the factory serves merchants with an APIv2 key and reports bad keys")
{
    auto with_key = merchant(false, false);
    auto without_key = merchant(false, false);
    without_key.mchid = "1900000002";
    without_key.apiv2_key.clear();
    std::vector<std::string> problems;
    auto gateway = wx::make_wechat_v2_gateway({with_key, without_key}, problems);
    REQUIRE(gateway);
    CHECK(problems.empty());
    const std::string body = sim::build_v2_payment_xml(payment(), keys().apiv2_key, V2SignType::md5);
    CHECK(verify(**gateway, body));
    CHECK(verify(**gateway, body, "1900000002").error() == errc::unknown_account);

    auto short_key = merchant(false, false);
    short_key.apiv2_key = "short";
    auto no_appid = merchant(false, false);
    no_appid.mchid = "1900000003";
    no_appid.appid.clear();
    std::vector<std::string> bad;
    auto failed = wx::make_wechat_v2_gateway({short_key, no_appid}, bad);
    REQUIRE_FALSE(failed);
    CHECK(failed.error() == errc::invalid_argument);
    REQUIRE(bad.size() == 2);
    CHECK(bad[0] == "/wechatpay/merchants/0/apiv2_key: must be 32 characters, got 5");
    CHECK(bad[1] == "/wechatpay/merchants/1/appid: is empty");
}

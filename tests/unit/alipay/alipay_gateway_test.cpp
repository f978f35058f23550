#include "gateways/alipay/alipay_gateway.hpp"

#include "alipay_test_support.hpp"
#include "core/error.hpp"
#include "gateways/alipay/alipay_sim.hpp"
#include "gateways/form.hpp"

#include <doctest/doctest.h>

using namespace paybridge;
using namespace paybridge::gateways;
using namespace paybridge::gateways::alipay;
using namespace alipay_test;

namespace {

std::string field(const FormFields& fields, std::string_view key)
{
    for (const auto& [k, v] : fields) {
        if (k == key) {
            return v;
        }
    }
    FAIL("no field " << key);
    return {};
}

bool has_field(const FormFields& fields, std::string_view key)
{
    for (const auto& [k, v] : fields) {
        if (k == key) {
            return true;
        }
    }
    return false;
}

Result<Verified> parse_body(const AlipayGateway& gw, std::string_view body, std::string_view content_type = {})
{
    InboundRequest req;
    if (!content_type.empty()) {
        req.headers.emplace_back("Content-Type", content_type);
    }
    req.body = body;
    return gw.verify_and_parse(req);
}

// The worked example of PROTOCOLS.md §1.5, field for field in its wire order.
const FormFields kWorkedExample = {
    {"total_amount", "2.00"},
    {"buyer_id", "2088102116773037"},
    {"body", "\xE5\xA4\xA7\xE4\xB9\x90\xE9\x80\x8F" "2.1"},
    {"trade_no", "2016071921001003030200089909"},
    {"refund_fee", "0.00"},
    {"notify_time", "2016-07-19 14:10:49"},
    {"subject", "\xE5\xA4\xA7\xE4\xB9\x90\xE9\x80\x8F" "2.1"},
    {"sign_type", "RSA2"},
    {"charset", "utf-8"},
    {"notify_type", "trade_status_sync"},
    {"out_trade_no", "0719141034-6418"},
    {"gmt_close", "2016-07-19 14:10:46"},
    {"gmt_payment", "2016-07-19 14:10:47"},
    {"trade_status", "TRADE_SUCCESS"},
    {"version", "1.0"},
    // The document truncates sign ("kPbQ…"); any base64 stands in, it is not part of the string.
    {"sign", "kPbQIjX+xQc8F0/A6/AocELIjhhZnGbcBN6G4MM/HmfWL4ZiHM6fWl5NQhzXJusaklZ1LFuMo+lHQUELAYeugH8L"
             "YFvxnNajOvZhuxNFbN2LhF0l/KL8ANtj8oyPM4NN7Qft2kWJTDJUpQOzCzNnV9hDxh5AaT9FPqRS6ZKxnzM="},
    {"gmt_create", "2016-07-19 14:10:44"},
    {"app_id", "2015102700040153"},
    {"seller_id", "2088102119685838"},
    {"notify_id", "4a91b7a78a503640467525113fb7d8bg8e"},
};

}  // namespace

// The documented string to verify omits gmt_create although the documented notification carries
// it (an error in the reposted official example): every field except sign and sign_type is signed
// (§1.5 step 4), so gmt_create belongs in the string. Both facts are checked: without gmt_create
// the result equals the documented string byte for byte; with it, gmt_create sits in sort order.
TEST_CASE("§1.5 worked example: the string to verify, byte for byte")
{
    const std::string documented =
        "app_id=2015102700040153&body=\xE5\xA4\xA7\xE4\xB9\x90\xE9\x80\x8F" "2.1&buyer_id=2088102116773037&"
        "charset=utf-8&gmt_close=2016-07-19 14:10:46&gmt_payment=2016-07-19 14:10:47&"
        "notify_id=4a91b7a78a503640467525113fb7d8bg8e&notify_time=2016-07-19 14:10:49&"
        "notify_type=trade_status_sync&out_trade_no=0719141034-6418&refund_fee=0.00&"
        "seller_id=2088102119685838&subject=\xE5\xA4\xA7\xE4\xB9\x90\xE9\x80\x8F" "2.1&"
        "total_amount=2.00&trade_no=2016071921001003030200089909&trade_status=TRADE_SUCCESS&version=1.0";
    std::string raw;
    std::string raw_without_gmt_create;
    for (const auto& [k, v] : kWorkedExample) {
        const std::string pair = form_encode(k) + "=" + form_encode(v);
        raw += (raw.empty() ? "" : "&") + pair;
        if (k != "gmt_create") {
            raw_without_gmt_create += (raw_without_gmt_create.empty() ? "" : "&") + pair;
        }
    }
    auto without = parse_form(raw_without_gmt_create);
    REQUIRE(without.has_value());
    CHECK(sign_content(*without) == documented);

    auto fields = parse_form(raw);
    REQUIRE(fields.has_value());
    std::string with_gmt_create = documented;
    with_gmt_create.insert(with_gmt_create.find("gmt_payment="), "gmt_create=2016-07-19 14:10:44&");
    CHECK(sign_content(*fields) == with_gmt_create);
}

TEST_CASE("sign_content: byte order, empty values and alipay_cert_sn")
{
    const FormFields fields = {{"b", "2"}, {"_x", ""}, {"B", "1"}, {"a", ""}, {"alipay_cert_sn", "sn"},
                               {"sign", "s"}, {"sign_type", "RSA2"}, {"\xC3\xA9", "e"}};
    CHECK(sign_content(fields) == "B=1&_x=&a=&alipay_cert_sn=sn&b=2&\xC3\xA9=e");
    CHECK(sign_content(fields, false, true) == "B=1&alipay_cert_sn=sn&b=2&\xC3\xA9=e");
    CHECK(sign_content(fields, true, false) == "B=1&_x=&a=&b=2&\xC3\xA9=e");
}

TEST_CASE("RSA2 notification from the simulator verifies and maps to a payment")
{
    auto gw = make_gateway({app_config()});
    const std::string body = body_of(make_paid_notice(spec()));
    auto verified = parse_body(*gw, body, alipay_content_type("utf-8"));
    REQUIRE(verified.has_value());
    const PaymentEvent& ev = verified->event;
    CHECK(verified->notes.empty());
    CHECK(ev.provider == "alipay");
    CHECK(ev.channel == "alipay");
    CHECK(ev.kind == EventKind::payment);
    CHECK(ev.account == kAppId);
    CHECK(ev.bill_id == "BILL-1001");
    CHECK(ev.provider_txn_id == "2024050122001400001234567890");
    CHECK(ev.currency == "CNY");
    CHECK(ev.total_fen == 1234);
    CHECK(ev.provider_status == "TRADE_SUCCESS");
    CHECK(ev.occurred_at == "2024-05-01T03:59:30.000Z");  // gmt_payment (whole seconds), Beijing → UTC
    CHECK(ev.notification_id.size() > 20);
    CHECK(ev.refund_fen == 0);
}

TEST_CASE("RSA (SHA1withRSA) app")
{
    auto gw = make_gateway({app_config("RSA")});
    auto notice = make_paid_notice(spec());
    notice.sign_type = "RSA";
    CHECK(parse_body(*gw, body_of(notice)).has_value());
    notice.sign_type = "RSA2";  // signed with SHA-256 and labelled so: the app only accepts RSA
    CHECK(error_of(gw->verify(body_of(notice))) == make_error_code(errc::bad_signature));
}

TEST_CASE("sign_type must equal the app's, absent means RSA2")
{
    auto rsa2 = make_gateway({app_config("RSA2")});
    auto rsa1 = make_gateway({app_config("RSA")});
    auto notice = make_paid_notice(spec());
    notice.sign_type = "RSA";  // signed with SHA-1
    CHECK(error_of(rsa2->verify(body_of(notice))) == make_error_code(errc::bad_signature));

    notice.sign_type = "";  // not sent: signed with SHA-256 (the simulator's default)
    CHECK(rsa2->verify(body_of(notice)).has_value());
    CHECK(error_of(rsa1->verify(body_of(notice))) == make_error_code(errc::bad_signature));
}

TEST_CASE("public key given as bare base64 SPKI, as Alipay's console shows it")
{
    std::string bare;
    std::string_view pem = alipay_keys().public_pem;
    for (std::size_t pos = 0; pos < pem.size();) {
        std::size_t end = pem.find('\n', pos);
        if (end == std::string_view::npos) {
            end = pem.size();
        }
        const std::string_view line = pem.substr(pos, end - pos);
        if (!line.starts_with("-----")) {
            bare += line;
        }
        pos = end + 1;
    }
    REQUIRE(bare.find("BEGIN") == std::string::npos);
    auto app = app_config();
    app.public_key_pem = bare;
    auto gw = make_gateway({app});
    CHECK(gw->verify(body_of(make_paid_notice(spec()))).has_value());
}

TEST_CASE("one flipped byte anywhere gives bad_signature")
{
    auto gw = make_gateway({app_config()});
    const std::string body = body_of(make_paid_notice(spec()));
    REQUIRE(gw->verify(body).has_value());

    std::string amount = body;
    const auto pos = amount.find("total_amount=12.34");
    REQUIRE(pos != std::string::npos);
    amount[pos + std::string_view("total_amount=12.3").size()] = '5';
    CHECK(error_of(gw->verify(amount)) == make_error_code(errc::bad_signature));

    std::string sig = body;
    const auto sign_pos = sig.rfind("sign=") + 10;
    sig[sign_pos] = sig[sign_pos] == 'A' ? 'B' : 'A';
    CHECK(error_of(gw->verify(sig)) == make_error_code(errc::bad_signature));

    std::string extra = body + "&passback_params=x";  // an unsigned extra field is part of the string
    CHECK(error_of(gw->verify(extra)) == make_error_code(errc::bad_signature));
}

TEST_CASE("signature by another key, undecodable sign")
{
    auto gw = make_gateway({app_config()});
    const auto notice = make_paid_notice(spec());
    const std::string forged = build_alipay_body(notice, private_key(other_keys()).get());
    CHECK(error_of(gw->verify(forged)) == make_error_code(errc::bad_signature));

    std::string body = body_of(notice);
    body = body.substr(0, body.rfind("&sign=")) + "&sign=not*base64";
    CHECK(error_of(gw->verify(body)) == make_error_code(errc::bad_signature));
}

TEST_CASE("unknown app_id → unknown_account, seller_id mismatch → unknown_account")
{
    auto gw = make_gateway({app_config()});
    auto other_app = spec();
    other_app.app_id = "2021999999999999";
    CHECK(error_of(gw->verify(body_of(make_paid_notice(other_app)))) == make_error_code(errc::unknown_account));

    auto other_seller = spec();
    other_seller.seller_id = "2088999999999999";
    const std::string body = body_of(make_paid_notice(other_seller));
    CHECK(error_of(gw->verify(body)) == make_error_code(errc::unknown_account));

    auto unchecked = app_config();
    unchecked.seller_id.clear();  // no seller configured: not checked
    CHECK(make_gateway({unchecked})->verify(body).has_value());

    auto notice = make_paid_notice(spec());
    remove_field(notice, "seller_id");
    CHECK(error_of(gw->verify(body_of(notice))) == make_error_code(errc::unknown_account));
}

TEST_CASE("two apps: each notification verifies with its own app's key")
{
    auto second = app_config();
    second.app_id = "2021000000000002";
    second.seller_id.clear();
    second.public_key_pem = other_keys().public_pem;
    auto gw = make_gateway({app_config(), second});
    auto s = spec();
    s.app_id = "2021000000000002";
    const auto notice = make_paid_notice(s);
    CHECK(gw->verify(build_alipay_body(notice, private_key(other_keys()).get())).has_value());
    CHECK(error_of(gw->verify(body_of(notice))) == make_error_code(errc::bad_signature));
}

TEST_CASE("required fields, duplicates and garbage → malformed_request")
{
    auto gw = make_gateway({app_config()});
    for (std::string_view key : {"app_id", "trade_status", "out_trade_no", "notify_id"}) {
        auto notice = make_paid_notice(spec());
        remove_field(notice, key);
        CAPTURE(key);
        CHECK(error_of(gw->verify(body_of(notice))) == make_error_code(errc::malformed_request));
    }
    std::string body = body_of(make_paid_notice(spec()));
    CHECK(error_of(gw->verify(body.substr(0, body.rfind("&sign=")))) == make_error_code(errc::malformed_request));
    CHECK(error_of(gw->verify(body + "&app_id=2021000000000001")) == make_error_code(errc::malformed_request));
    CHECK(error_of(gw->verify(body + "&x=%ZZ")) == make_error_code(errc::malformed_request));
    CHECK(error_of(gw->verify("")) == make_error_code(errc::malformed_request));
}

TEST_CASE("GBK notification with a Chinese subject: verified on GBK bytes, then transcoded")
{
    auto gw = make_gateway({app_config()});
    // 大乐透2.1 会员+
    const std::string subject = "\xE5\xA4\xA7\xE4\xB9\x90\xE9\x80\x8F" "2.1 \xE4\xBC\x9A\xE5\x91\x98+";
    auto s = spec();
    s.charset = "GBK";
    s.subject = subject;
    const auto notice = make_paid_notice(s);
    const std::string body = body_of(notice);
    REQUIRE(body.find("subject=%B4%F3%C0%D6%CD%B8") != std::string::npos);  // GBK on the wire

    auto verified = gw->verify(body);
    REQUIRE(verified.has_value());
    CHECK(field(verified->fields, "subject") == subject);  // UTF-8 after verification
    CHECK(field(verified->fields, "charset") == "GBK");
    CHECK(parse_body(*gw, body).value().event.kind == EventKind::payment);

    // A sender that signed the UTF-8 form of the same text (i.e. a verifier that transcodes
    // first) does not verify: the signature covers the GBK bytes.
    auto utf8_view = notice;
    utf8_view.charset = "utf-8";
    std::string wrong = body.substr(0, body.rfind("&sign_type="));
    auto sig =
        crypto::rsa_sign(private_key(alipay_keys()).get(), crypto::Digest::sha256, alipay_sign_string(utf8_view));
    REQUIRE(sig.has_value());
    wrong += "&sign_type=RSA2&sign=" + form_encode(crypto::base64_encode(*sig));
    CHECK(error_of(gw->verify(wrong)) == make_error_code(errc::bad_signature));
}

TEST_CASE("GB2312 label, and the Content-Type charset as fallback when the field is absent")
{
    auto gw = make_gateway({app_config()});
    const std::string subject = "\xE5\xA4\xA7\xE4\xB9\x90\xE9\x80\x8F";
    auto s = spec();
    s.charset = "gb2312";
    s.subject = subject;
    auto notice = make_paid_notice(s);
    CHECK(field(gw->verify(body_of(notice)).value().fields, "subject") == subject);

    remove_field(notice, "charset");
    const std::string body = body_of(notice);  // still GBK bytes, signed without a charset field
    CHECK(field(gw->verify(body, "GBK").value().fields, "subject") == subject);
    CHECK(parse_body(*gw, body, "application/x-www-form-urlencoded; charset=\"GBK\"").has_value());
    // Without any label the bytes are taken as UTF-8, which the subject's are not: the payment is
    // still accepted (its signature verified; nothing paybridge acts on is unreadable), the subject
    // is dropped and the notes say so.
    auto mislabelled = gw->verify(body);
    REQUIRE(mislabelled.has_value());
    CHECK_FALSE(has_field(mislabelled->fields, "subject"));
    CHECK(field(mislabelled->fields, "out_trade_no") == "BILL-1001");
    CHECK(mislabelled->notes.find("dropped field subject: not valid utf-8") != std::string::npos);
    CHECK(parse_body(*gw, body, "").has_value());
    // An unsigned Content-Type label paybridge cannot use is treated as no label, not as a reason
    // to refuse a verified notification.
    auto latin1 = parse_body(*gw, body, "application/x-www-form-urlencoded; charset=ISO-8859-1");
    REQUIRE(latin1.has_value());
    CHECK(latin1->event.bill_id == "BILL-1001");
    CHECK(latin1->notes.find("Content-Type charset not used") != std::string::npos);
}

TEST_CASE("a field paybridge acts on that is not valid in the charset is refused, a descriptive one dropped")
{
    auto gw = make_gateway({app_config()});
    auto notice = make_paid_notice(spec());
    notice.charset = "gbk";
    set_field(notice, "charset", "utf-8");  // labelled UTF-8, but the values are sent as GBK
    set_field(notice, "body", "\xE6\xB5\x8B\xE8\xAF\x95");  // UTF-8 "测试": GBK bytes B2 E2 CA D4
    auto dropped = gw->verify(body_of(notice));
    REQUIRE(dropped.has_value());
    CHECK_FALSE(has_field(dropped->fields, "body"));
    CHECK(field(dropped->fields, "subject") == "paybridge test order");
    CHECK(dropped->notes.find("dropped field body") != std::string::npos);

    set_field(notice, "out_trade_no", "BILL-\xE6\xB5\x8B");  // the bill id itself unreadable
    CHECK(error_of(gw->verify(body_of(notice))) == make_error_code(errc::malformed_request));
}

TEST_CASE("verified notification with an unknown charset label → malformed_request")
{
    auto gw = make_gateway({app_config()});
    auto notice = make_paid_notice(spec());
    set_field(notice, "charset", "latin1");  // signed, but not a charset we can read
    CHECK(error_of(gw->verify(body_of(notice))) == make_error_code(errc::malformed_request));
}

TEST_CASE("fallback: empty values excluded from the signed string")
{
    auto gw = make_gateway({app_config()});
    auto notice = make_paid_notice(spec());
    set_field(notice, "passback_params", "");
    set_field(notice, "body", "");

    // Signed with the empty fields included: the documented rule, no note.
    auto included = gw->verify(body_of(notice));
    REQUIRE(included.has_value());
    CHECK(included->notes.empty());

    // Signed without them (gopay and some Alipay paths do this): accepted, and noted.
    const std::string body = body_signed_over(notice, sign_content(notice.fields, false, true));
    auto skipped = gw->verify(body);
    REQUIRE(skipped.has_value());
    CHECK(skipped->notes.find("empty") != std::string::npos);
    CHECK(field(skipped->fields, "passback_params").empty());

    // Without empty values in the notification the fallback is not available.
    auto no_empty = make_paid_notice(spec());
    auto signed_elsewhere = no_empty;
    set_field(signed_elsewhere, "memo", "");
    CHECK(error_of(gw->verify(body_signed_over(no_empty, alipay_sign_string(signed_elsewhere)))) ==
          make_error_code(errc::bad_signature));
}

TEST_CASE("fallback: HTML-escaped quotes in a value, spaces in sign")
{
    auto gw = make_gateway({app_config()});
    auto notice = make_paid_notice(spec());
    auto escaped = notice;
    set_field(escaped, "fund_bill_list",
              "[{&quot;amount&quot;:&quot;12.34&quot;,&quot;fundChannel&quot;:&quot;ALIPAYACCOUNT&quot;}]");
    // The body carries the HTML-escaped value, the signature covers real quotes.
    auto quot = gw->verify(body_signed_over(escaped, alipay_sign_string(notice)));
    REQUIRE(quot.has_value());
    CHECK(quot->notes.find("&quot;") != std::string::npos);

    // A '+' sent unencoded in sign arrives as a space.
    std::string body;
    for (int i = 0; i < 20 && body.find("%2B", body.rfind("&sign=")) == std::string::npos; ++i) {
        set_field(notice, "notify_id", "nid" + std::to_string(i));  // until the signature has a '+'
        body = body_of(notice);
    }
    const auto sign_at = body.rfind("&sign=");
    std::string raw_plus = body.substr(0, sign_at);
    std::string sign_part = body.substr(sign_at);
    for (std::size_t p = sign_part.find("%2B"); p != std::string::npos; p = sign_part.find("%2B")) {
        sign_part.replace(p, 3, "+");
    }
    raw_plus += sign_part;
    REQUIRE(raw_plus.find("%2B", sign_at) == std::string::npos);
    auto spaced = gw->verify(raw_plus);
    REQUIRE(spaced.has_value());
    CHECK(spaced->notes.find("'+'") != std::string::npos);
}

TEST_CASE("fallback: alipay_cert_sn in a notification, signed without it or with it")
{
    auto gw = make_gateway({app_config()});
    auto notice = make_paid_notice(spec());
    auto with_sn = notice;
    set_field(with_sn, "alipay_cert_sn", "9f0c1d4c874d4a323f8fb679d7417b30");

    auto excluded = gw->verify(body_signed_over(with_sn, alipay_sign_string(notice)));
    REQUIRE(excluded.has_value());
    CHECK(excluded->notes.find("alipay_cert_sn excluded") != std::string::npos);

    auto included = gw->verify(body_of(with_sn));
    REQUIRE(included.has_value());
    CHECK(included->notes.find("alipay_cert_sn included") != std::string::npos);
}

TEST_CASE("trade_status and refund mapping")
{
    auto gw = make_gateway({app_config()});
    auto event_of = [&](const AlipayNotice& n) {
        auto v = parse_body(*gw, body_of(n));
        REQUIRE_MESSAGE(v.has_value(), v.error().message());
        return v->event;
    };

    SUBCASE("TRADE_FINISHED is a payment")
    {
        const PaymentEvent ev = event_of(make_paid_notice(spec(), "TRADE_FINISHED"));
        CHECK(ev.kind == EventKind::payment);
        CHECK(ev.provider_status == "TRADE_FINISHED");
        CHECK(ev.total_fen == 1234);
    }
    SUBCASE("TRADE_CLOSED without refund fields is a close")
    {
        const PaymentEvent ev = event_of(make_closed_notice(spec()));
        CHECK(ev.kind == EventKind::close);
        CHECK(ev.provider_status == "TRADE_CLOSED");
        CHECK(ev.occurred_at == "2024-05-01T03:59:59.000Z");  // gmt_close
    }
    SUBCASE("partial refund: TRADE_SUCCESS + refund_fee + gmt_refund + out_biz_no")
    {
        const PaymentEvent ev = event_of(make_refund_notice(spec(), 300, "RF-1"));
        CHECK(ev.kind == EventKind::refund);
        CHECK(ev.provider_status == "TRADE_SUCCESS");
        CHECK(ev.refund_id == "RF-1");
        CHECK(ev.refund_fen == 300);
        CHECK(ev.refund_cumulative);
        CHECK(ev.total_fen == 1234);
        CHECK(ev.occurred_at == "2024-05-01T03:59:59.123Z");  // gmt_refund with milliseconds
        CHECK(ev.paid_at == "2024-05-01T03:00:00.000Z");        // gmt_payment, an hour before
    }
    SUBCASE("full refund: TRADE_CLOSED with refund fields is a refund, not a close")
    {
        const PaymentEvent ev = event_of(make_refund_notice(spec(), 1234, "RF-2"));
        CHECK(ev.kind == EventKind::refund);
        CHECK(ev.provider_status == "TRADE_CLOSED");
        CHECK(ev.refund_fen == 1234);
    }
    SUBCASE("refund without out_biz_no gets an id from the cumulative amount")
    {
        const PaymentEvent ev = event_of(make_refund_notice(spec(), 500, ""));
        CHECK(ev.refund_id == "alipay-refund-500");
    }
    SUBCASE("refund_fee > 0 alone makes a refund; refund_fee=0.00 alone does not")
    {
        auto n = make_refund_notice(spec(), 200, "RF-3");
        remove_field(n, "gmt_refund");
        CHECK(event_of(n).kind == EventKind::refund);
        auto p = make_paid_notice(spec());
        set_field(p, "refund_fee", "0.00");
        CHECK(event_of(p).kind == EventKind::payment);
    }
    SUBCASE("full refund reported without refund_fee uses total_amount")
    {
        auto n = make_refund_notice(spec(), 1234, "RF-4");
        remove_field(n, "refund_fee");
        const PaymentEvent ev = event_of(n);
        CHECK(ev.kind == EventKind::refund);
        CHECK(ev.refund_fen == 1234);
    }
    SUBCASE("WAIT_BUYER_PAY and unknown statuses move nothing")
    {
        CHECK(event_of(make_paid_notice(spec(), "WAIT_BUYER_PAY")).kind == EventKind::none);
        CHECK(event_of(make_paid_notice(spec(), "TRADE_PENDING_NEW")).kind == EventKind::none);
    }
}

TEST_CASE("occurred_at falls back to notify_time")
{
    auto notice = make_closed_notice(spec());
    remove_field(notice, "gmt_close");
    auto gw = make_gateway({app_config()});
    CHECK(parse_body(*gw, body_of(notice)).value().event.occurred_at == "2024-05-01T04:00:00.000Z");
}

TEST_CASE("amounts: a table of total_amount values")
{
    struct Row {
        std::string_view text;
        std::int64_t fen;  // -1: not an amount (an authentic notification: kind unusable)
    };
    const Row rows[] = {
        {"20", 2000},  {"0.5", 50},    {"12.34", 1234}, {"0.01", 1},    {"0.00", 0},  {"100000.00", 10000000},
        {"1.234", -1}, {"-1.00", -1},  {"1e3", -1},     {"", -1},       {" 1.00", -1}, {"1.00 ", -1},
        {"01.00", -1}, {"1.", -1},     {".5", -1},      {"1,00", -1},   {"abc", -1},  {"+1", -1},
        {"10000000000.00", 1'000'000'000'000}, {"10000000000.01", -1},
    };
    auto gw = make_gateway({app_config()});
    for (const Row& row : rows) {
        CAPTURE(row.text);
        auto notice = make_paid_notice(spec());
        set_field(notice, "total_amount", row.text);
        auto v = parse_body(*gw, body_of(notice));
        REQUIRE(v.has_value());
        if (row.fen < 0) {
            CHECK(v->event.kind == EventKind::unusable);
            CHECK(v->event.total_fen == -1);
            CHECK(v->event.problem.starts_with(row.text.empty() ? "a TRADE_SUCCESS payment without total_amount"
                                                                : "total_amount \""));
        } else {
            REQUIRE(v.has_value());
            CHECK(v->event.total_fen == row.fen);
        }
    }
}

TEST_CASE("to_payment_event: a time that does not read is skipped for the next one, never a refusal")
{
    FormFields f = {{"app_id", "a"},          {"notify_id", "n"},     {"out_trade_no", "o"},
                    {"trade_status", "TRADE_SUCCESS"}, {"trade_no", "t"}, {"total_amount", "1.00"},
                    {"gmt_payment", "2024-13-01 00:00:00"}, {"notify_time", "2024-05-01 12:00:00"}};
    auto ev = to_payment_event(f);
    REQUIRE(ev.has_value());
    CHECK(ev->kind == EventKind::payment);
    CHECK(ev->occurred_at == "2024-05-01T04:00:00.000Z");  // notify_time, Beijing → UTC
    CHECK(ev->paid_at.empty());                            // gmt_payment unreadable: unknown
    f.back().second = "yesterday";
    ev = to_payment_event(f);
    REQUIRE(ev.has_value());
    CHECK(ev->occurred_at.empty());  // the store then uses the time it applies it
}

TEST_CASE("to_payment_event: what it cannot map is unusable with the reason, unless it names no bill")
{
    const FormFields base = {{"app_id", "a"},          {"notify_id", "n"}, {"out_trade_no", "o"},
                             {"trade_status", "TRADE_SUCCESS"}, {"trade_no", "t"},  {"total_amount", "1.00"}};
    CHECK(to_payment_event(base).has_value());
    auto without = [&](std::string_view key) {
        FormFields f;
        for (const auto& kv : base) {
            if (kv.first != key) {
                f.push_back(kv);
            }
        }
        return to_payment_event(f);
    };
    auto unusable = [](const Result<PaymentEvent>& ev) {
        REQUIRE(ev.has_value());
        CHECK(ev->kind == EventKind::unusable);
        CHECK(ev->bill_id == "o");           // what the store files it under
        CHECK(ev->notification_id == "n");   // what it is recorded once by
        CHECK(ev->account == "a");
        return ev->problem;
    };
    CHECK(unusable(without("total_amount")) == "a TRADE_SUCCESS payment without total_amount");
    CHECK(unusable(without("trade_no")) == "a TRADE_SUCCESS payment without trade_no");
    FormFields refund = base;
    refund.emplace_back("refund_fee", "0.50");
    refund.emplace_back("gmt_refund", "2016-07-19 14:10:49.123");
    CHECK(to_payment_event(refund)->kind == EventKind::refund);
    std::erase_if(refund, [](const auto& kv) { return kv.first == "trade_no"; });
    CHECK(unusable(to_payment_event(refund)) == "a refund without trade_no");
    // Without its notification id or its bill it cannot be recorded: refused as malformed.
    CHECK(without("notify_id").error() == make_error_code(errc::malformed_request));
    CHECK(without("out_trade_no").error() == make_error_code(errc::malformed_request));
    FormFields empty_refund_fee = base;  // "refund_fee=" (§1.5 step 7: empty values are sent)
    empty_refund_fee.emplace_back("refund_fee", "");
    const auto empty_refund = to_payment_event(empty_refund_fee);
    REQUIRE(empty_refund.has_value());
    CHECK(empty_refund->kind == EventKind::payment);
    CHECK(empty_refund->total_fen == 100);
    FormFields bad_refund = base;
    bad_refund.emplace_back("refund_fee", "1.2.3");
    CHECK(unusable(to_payment_event(bad_refund)) ==
          "refund_fee \"1.2.3\" is not an amount in yuan (digits, at most two decimals)");
    CHECK(to_payment_event(bad_refund)->total_fen == 100);  // what did read is kept
    FormFields long_amount = base;
    long_amount.back().second = std::string(40, '9') + "\"";
    CHECK(unusable(to_payment_event(long_amount)) == "total_amount \"" + std::string(32, '9') +
                                                         "...\" is not an amount in yuan (digits, at most two decimals)");
    FormFields zero_refund = base;
    zero_refund.emplace_back("gmt_refund", "2024-05-01 12:00:00.000");
    zero_refund.emplace_back("refund_fee", "0.00");
    CHECK(unusable(to_payment_event(zero_refund)) == "a refund (gmt_refund is present) of 0.00");
    FormFields no_refund_fee = base;
    no_refund_fee.emplace_back("gmt_refund", "2024-05-01 12:00:00.000");
    const auto without_fee = to_payment_event(no_refund_fee);
    CHECK(unusable(without_fee) == "a refund (gmt_refund is present) without refund_fee");
    CHECK(without_fee->occurred_at == "2024-05-01T04:00:00.000Z");  // the refund's time, as for a refund
}

TEST_CASE("replies: success is exactly 'success', failure is 'fail' with 400, 503 or 500")
{
    auto gw = make_gateway({app_config()});
    const Reply ok = gw->success();
    CHECK(ok.status == 200);
    CHECK(ok.content_type == "text/plain");
    CHECK(ok.body == "success");
    const Reply bad = gw->failure(make_error_code(errc::bad_signature));
    CHECK(bad.status == 400);
    CHECK(bad.body == "fail");
    CHECK(gw->failure(make_error_code(errc::malformed_request)).status == 400);
    CHECK(gw->failure(make_error_code(errc::store_unavailable)).status == 503);
    CHECK(gw->failure(make_error_code(errc::timeout)).status == 503);
    CHECK(gw->failure(make_error_code(errc::store_unavailable)).body == "fail");
    CHECK(gw->failure(make_error_code(errc::unknown_account)).status == 400);
    CHECK(gw->failure(make_error_code(errc::internal)).status == 500);  // our bug, not Alipay's input
    CHECK(gw->failure(make_error_code(errc::internal)).body == "fail");
    CHECK(gw->name() == "alipay");
}

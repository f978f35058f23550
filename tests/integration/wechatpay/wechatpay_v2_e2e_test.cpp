// End to end over HTTP against the real paybridged and a real redis-server: WeChat Pay API v2
// (legacy XML) notifications at POST /notify/wechatpay/{mchid}/v2, and a bill paid through v3 and
// refunded through v2 (issue 3).

#include "tests/integration/wechatpay/wechat_e2e.hpp"
#include "tests/support/redis_server.hpp"
#include "tools/keygen/keygen.hpp"

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string_view>

using namespace wxe2e;
using paybridge::test::http_request;
using paybridge::test::wait_for_http;
namespace keygen = paybridge::keygen;

namespace {

constexpr std::string_view kAck =
    "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";

void check_ack(const HttpResult& r)
{
    CHECK(r.status == 200);
    CHECK(r.body == kAck);
    CHECK(r.header("content-type").find("xml") != std::string::npos);
}

/// The peak resident set size of process `pid` (VmHWM in /proc/<pid>/status), in KiB; -1 when
/// it cannot be read.
long long peak_rss_kib(int pid)
{
    std::ifstream status("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.starts_with("VmHWM:")) {
            return std::stoll(line.substr(6));
        }
    }
    return -1;
}

/// `xml` with `extra` inserted right after the opening <xml> tag.
std::string inject(const std::string& xml, const std::string& extra)
{
    REQUIRE(xml.starts_with("<xml>"));
    return "<xml>" + extra + xml.substr(5);
}

}  // namespace

TEST_CASE("wechatpay v2: MD5 and HMAC-SHA256 payments → PAID with the XML SUCCESS ack "
          "and a bad sign → XML FAIL")
{
    DaemonFixture fx;
    INFO("paybridged log:\n", fx.log());
    Wechat wx{fx};
    REQUIRE(fx.create_bill("V1001", 1000).status == 201);
    REQUIRE(fx.create_bill("V1002", 2000).status == 201);
    REQUIRE(fx.create_bill("V1003", 3000).status == 201);
    REQUIRE(fx.create_bill("V1004", 4000).status == 201);

    const auto md5 = sim::build_v2_payment_xml(wx.v2_payment("V1001", 1000, "4200000101202611270000101001"),
                                               fx.apiv2_key, wx::V2SignType::md5);
    REQUIRE(md5.find("<sign_type><![CDATA[MD5]]></sign_type>") != std::string::npos);
    auto r = wx.post_v2(md5);
    check_ack(r);
    auto bill = bill_of(fx, "V1001");
    CHECK(str(bill, "status") == "PAID");
    CHECK(bill["paid_fen"].GetInt64() == 1000);
    CHECK(str(bill, "provider") == "wechatpay");
    CHECK(str(bill, "provider_txn_id") == "4200000101202611270000101001");
    REQUIRE(bill["events"].Size() == 1);
    CHECK(str(bill["events"][0]["data"], "channel") == "wechatpay_v2");

    // The same document again (WeChat retries until it sees the ack): nothing more.
    check_ack(wx.post_v2(md5));
    CHECK(events_of(fx, "V1001") == 1);
    CHECK(fx.outbox_length() == 1);

    const auto hmac = sim::build_v2_payment_xml(wx.v2_payment("V1002", 2000, "4200000101202611270000101002"),
                                                fx.apiv2_key, wx::V2SignType::hmac_sha256);
    REQUIRE(hmac.find("<sign_type><![CDATA[HMAC-SHA256]]></sign_type>") != std::string::npos);
    check_ack(wx.post_v2(hmac));
    CHECK(status_of(fx, "V1002") == "PAID");

    // No sign_type: MD5 by default, and HMAC-SHA256 recognised by the sign's length.
    check_ack(wx.post_v2(sim::build_v2_payment_xml(wx.v2_payment("V1003", 3000, "4200000101202611270000101003"),
                                                   fx.apiv2_key, wx::V2SignType::md5, false)));
    check_ack(wx.post_v2(sim::build_v2_payment_xml(wx.v2_payment("V1004", 4000, "4200000101202611270000101004"),
                                                   fx.apiv2_key, wx::V2SignType::hmac_sha256, false)));
    CHECK(status_of(fx, "V1003") == "PAID");
    CHECK(status_of(fx, "V1004") == "PAID");
    CHECK(fx.outbox_length() == 4);

    // Bad signs: FAIL with a 4xx, nothing changes.
    REQUIRE(fx.create_bill("V1005", 500).status == 201);
    const auto payment = wx.v2_payment("V1005", 500, "4200000101202611270000101005");
    SUBCASE("amount changed after signing")
    {
        auto xml = sim::build_v2_payment_xml(payment, fx.apiv2_key, wx::V2SignType::md5);
        const std::string signed_fee = "<total_fee>500</total_fee>";
        const auto pos = xml.find(signed_fee);
        REQUIRE(pos != std::string::npos);
        xml.replace(pos, signed_fee.size(), "<total_fee>5</total_fee>");
        check_v2_fail(wx.post_v2(xml));
    }
    SUBCASE("signed with the APIv3 key instead of the APIv2 key")
    {
        check_v2_fail(wx.post_v2(sim::build_v2_payment_xml(payment, fx.apiv3_key, wx::V2SignType::hmac_sha256)));
    }
    SUBCASE("declared sign_type does not match the sign")
    {
        auto xml = sim::build_v2_payment_xml(payment, fx.apiv2_key, wx::V2SignType::hmac_sha256);
        const std::string declared = "<sign_type><![CDATA[HMAC-SHA256]]></sign_type>";
        const auto pos = xml.find(declared);
        REQUIRE(pos != std::string::npos);
        xml.replace(pos, declared.size(), "<sign_type><![CDATA[MD5]]></sign_type>");
        check_v2_fail(wx.post_v2(xml));
    }
    SUBCASE("no sign at all")
    {
        auto xml = sim::build_v2_payment_xml(payment, fx.apiv2_key, wx::V2SignType::md5);
        const auto start = xml.find("<sign>");
        const auto end = xml.find("</sign>");
        REQUIRE(start != std::string::npos);
        REQUIRE(end != std::string::npos);
        xml.erase(start, end + std::string_view("</sign>").size() - start);
        check_v2_fail(wx.post_v2(xml));
    }
    SUBCASE("a merchant we do not serve")
    {
        const auto xml = sim::build_v2_payment_xml(payment, fx.apiv2_key, wx::V2SignType::md5);
        check_v2_fail(wx.post_v2(xml, "1900000002"));
    }
    auto unchanged = bill_of(fx, "V1005");
    CHECK(str(unchanged, "status") == "PENDING");
    CHECK(unchanged["events"].Size() == 0);
    CHECK(fx.outbox_length() == 4);
}

TEST_CASE("wechatpay v2: refund notify (req_info) is applied once and undecryptable req_info → XML FAIL")
{
    DaemonFixture fx;
    INFO("paybridged log:\n", fx.log());
    Wechat wx{fx};
    const std::string txn = "4200000102202611270000102001";
    REQUIRE(fx.create_bill("V2001", 1000).status == 201);
    const auto paid = wx.v2_payment("V2001", 1000, txn);
    check_ack(wx.post_v2(sim::build_v2_payment_xml(paid, fx.apiv2_key, wx::V2SignType::hmac_sha256)));

    const auto refund = wx.v2_refund_xml(wx.v2_refund("V2001", txn, "R2001-1", 1000, 400));
    REQUIRE(refund.find("<req_info>") != std::string::npos);
    REQUIRE(refund.find("<sign>") == std::string::npos);
    check_ack(wx.post_v2(refund));
    auto bill = bill_of(fx, "V2001");
    CHECK(str(bill, "status") == "PARTIALLY_REFUNDED");
    CHECK(bill["refunded_fen"].GetInt64() == 400);
    REQUIRE(bill["events"].Size() == 2);
    CHECK(str(bill["events"][1], "type") == "bill.refunded");
    CHECK(str(bill["events"][1]["data"], "refund_id") == "R2001-1");
    CHECK(str(bill["events"][1]["data"], "channel") == "wechatpay_v2");

    // Retried: nothing more.
    check_ack(wx.post_v2(refund));
    CHECK(bill_of(fx, "V2001")["refunded_fen"].GetInt64() == 400);
    CHECK(events_of(fx, "V2001") == 2);

    // REFUNDCLOSE (closed) is history only.
    auto closed = wx.v2_refund("V2001", txn, "R2001-2", 1000, 100);
    closed.refund_status = "REFUNDCLOSE";
    check_ack(wx.post_v2(wx.v2_refund_xml(closed)));
    bill = bill_of(fx, "V2001");
    CHECK(bill["refunded_fen"].GetInt64() == 400);
    REQUIRE(bill["events"].Size() == 3);
    CHECK(str(bill["events"][2], "type") == "bill.anomaly");
    CHECK(str(bill["events"][2]["data"], "anomaly") == "refund_closed");

    // req_info encrypted under another key (a forgery, or our key is wrong): FAIL, nothing moves.
    const auto rest = wx.v2_refund("V2001", txn, "R2001-3", 1000, 600);
    auto forged = sim::build_v2_refund_xml(rest, keygen::random_token(32));
    REQUIRE(forged.has_value());
    check_v2_fail(wx.post_v2(*forged));
    // req_info that is not even base64.
    auto garbage = wx.v2_refund_xml(wx.v2_refund("V2001", txn, "R2001-3", 1000, 600));
    const auto start = garbage.find("<req_info><![CDATA[") + 19;
    garbage.replace(start, garbage.find("]]>", start) - start, "not*base64*at*all");
    check_v2_fail(wx.post_v2(garbage));
    bill = bill_of(fx, "V2001");
    CHECK(str(bill, "status") == "PARTIALLY_REFUNDED");
    CHECK(bill["refunded_fen"].GetInt64() == 400);
    CHECK(bill["events"].Size() == 3);

    // The rest of the money: REFUNDED.
    check_ack(wx.post_v2(wx.v2_refund_xml(wx.v2_refund("V2001", txn, "R2001-3", 1000, 600))));
    bill = bill_of(fx, "V2001");
    CHECK(str(bill, "status") == "REFUNDED");
    CHECK(bill["refunded_fen"].GetInt64() == 1000);
    CHECK(fx.outbox_length() == 4);
}

TEST_CASE("wechatpay v2: XXE or billion laughs or duplicate elements → 400 and the daemon stays healthy")
{
    DaemonFixture fx;
    INFO("paybridged log:\n", fx.log());
    Wechat wx{fx};
    REQUIRE(fx.create_bill("V3001", 100).status == 201);
    const auto payment = wx.v2_payment("V3001", 100, "4200000103202611270000103001");
    const auto genuine = sim::build_v2_payment_xml(payment, fx.apiv2_key, wx::V2SignType::md5);

    // A local file the attacker would like to see echoed back or used.
    const std::string secret = "wxe2e-secret-" + keygen::random_token(16);
    const auto secret_path = fx.dir() / "secret.txt";
    {
        std::FILE* f = std::fopen(secret_path.c_str(), "w");
        REQUIRE(f != nullptr);
        std::fputs(secret.c_str(), f);
        std::fclose(f);
    }

    SUBCASE("XXE: an external entity in a field")
    {
        const std::string xxe = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                                "<!DOCTYPE xml [<!ENTITY xxe SYSTEM \"file://" +
                                secret_path.string() + "\">]>\n" +
                                inject(genuine, "<attach>&xxe;</attach>");
        auto r = wx.post_v2(xxe);
        CHECK(r.status == 400);
        check_v2_fail(r);
        CHECK(r.body.find(secret) == std::string::npos);
    }
    SUBCASE("XXE: an external parameter entity (out-of-band DTD)")
    {
        const std::string xxe = "<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY % ext SYSTEM \"file://" +
                                secret_path.string() + "\"> %ext;]>" + genuine;
        auto r = wx.post_v2(xxe);
        CHECK(r.status == 400);
        check_v2_fail(r);
    }
    SUBCASE("billion laughs")
    {
        std::string dtd = "<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY lol \"lol\">";
        for (int i = 1; i <= 9; ++i) {
            const std::string prev = i == 1 ? "lol" : "lol" + std::to_string(i - 1);
            dtd += "<!ENTITY lol" + std::to_string(i) + " \"";
            for (int j = 0; j < 10; ++j) {
                dtd += "&" + prev + ";";
            }
            dtd += "\">";
        }
        dtd += "]>";
        const std::string bomb = dtd + inject(genuine, "<attach>&lol9;</attach>");
        const long long peak_before = peak_rss_kib(fx.process().pid());
        REQUIRE(peak_before > 0);
        const auto started = std::chrono::steady_clock::now();
        auto r = wx.post_v2(bomb);
        const auto took = std::chrono::steady_clock::now() - started;
        CHECK(r.status == 400);
        check_v2_fail(r);
        // Not expanded: 10^9 "lol"s are 3 GB, which the daemon's peak memory would show (a
        // rejected notification of 1 KB costs it next to nothing)...
        const long long peak_after = peak_rss_kib(fx.process().pid());
        CHECK_MESSAGE(peak_after - peak_before < 256 * 1024, "peak RSS " << peak_before << " -> " << peak_after << " KiB");
        // ...and expanding them would take seconds, up to the test client's 10 s limit (status 0,
        // caught above). Normally the rejection takes milliseconds.
        CHECK(took < std::chrono::seconds(5));
    }
    SUBCASE("duplicate elements")
    {
        // A second out_trade_no or total_fee before the signed ones: which one would be trusted?
        auto r = wx.post_v2(inject(genuine, "<out_trade_no><![CDATA[V3999]]></out_trade_no>"));
        CHECK(r.status == 400);
        check_v2_fail(r);
        r = wx.post_v2(inject(genuine, "<total_fee>1</total_fee>"));
        CHECK(r.status == 400);
        check_v2_fail(r);
        r = wx.post_v2(inject(genuine, "<sign><![CDATA[00000000000000000000000000000000]]></sign>"));
        CHECK(r.status == 400);
        check_v2_fail(r);
    }
    SUBCASE("XXE inside the encrypted req_info of a refund")
    {
        const std::string inner = "<?xml version=\"1.0\"?><!DOCTYPE root [<!ENTITY xxe SYSTEM \"file://" +
                                  secret_path.string() + "\">]><root><out_refund_no>&xxe;</out_refund_no>"
                                  "<refund_status>SUCCESS</refund_status></root>";
        auto req_info = sim::encrypt_req_info(inner, fx.apiv2_key);
        REQUIRE(req_info.has_value());
        const std::vector<wx::XmlField> outer{{"return_code", "SUCCESS"},
                                              {"appid", DaemonFixture::kAppId},
                                              {"mch_id", DaemonFixture::kMchId},
                                              {"nonce_str", keygen::random_token(32)},
                                              {"req_info", *req_info}};
        const std::string xml = wx::build_flat_xml("xml", outer);
        auto r = wx.post_v2(xml);
        check_v2_fail(r);
        CHECK(r.body.find(secret) == std::string::npos);
    }

    CHECK(http_request(fx.port(), "GET", "/healthz").status == 200);
    CHECK(http_request(fx.port(), "GET", "/readyz").status == 200);
    CHECK(status_of(fx, "V3001") == "PENDING");
    CHECK(fx.outbox_length() == 0);
    // The genuine document is still accepted afterwards.
    check_ack(wx.post_v2(genuine));
    CHECK(status_of(fx, "V3001") == "PAID");
}

TEST_CASE("wechatpay v2: Redis stopped → 5xx XML FAIL and once restarted the same notification succeeds once")
{
    // One worker, so that /readyz speaks for the only Redis connection (as in the v3 variant).
    DaemonFixture fx(paybridge::test::DaemonOptions{.workers = 1});
    INFO("paybridged log:\n", fx.log());
    Wechat wx{fx};
    REQUIRE(fx.create_bill("V8001", 100).status == 201);
    // The test Redis runs without automatic snapshots: save once, so the bill survives the
    // restart as it would on a production Redis with persistence.
    fx.redis_run({"SAVE"});
    const auto xml = sim::build_v2_payment_xml(wx.v2_payment("V8001", 100, "4200000108202611270000108001"),
                                               fx.apiv2_key, wx::V2SignType::md5);

    fx.redis().stop();
    check_v2_unavailable(wx.post_v2(xml));
    check_v2_unavailable(wx.post_v2(xml));  // WeChat's first retry, still down
    CHECK(http_request(fx.port(), "GET", "/readyz").status == 503);
    CHECK(http_request(fx.port(), "GET", "/healthz").status == 200);

    fx.redis().restart();
    REQUIRE(wait_for_http(fx.port(), "/readyz", 200, std::chrono::seconds(15)));
    check_ack(wx.post_v2(xml));
    auto bill = bill_of(fx, "V8001");
    CHECK(str(bill, "status") == "PAID");
    CHECK(bill["paid_fen"].GetInt64() == 100);
    REQUIRE(bill["events"].Size() == 1);
    CHECK(str(bill["events"][0]["data"], "channel") == "wechatpay_v2");
    CHECK(fx.outbox_length() == 1);
    // A late duplicate of one of the refused deliveries changes nothing.
    check_ack(wx.post_v2(xml));
    CHECK(events_of(fx, "V8001") == 1);
    CHECK(fx.outbox_length() == 1);
}

TEST_CASE("wechatpay mixed: paid through v3 and refunded through v3 and the merchant portal (v2 XML at the v3 URL) → consistent")
{
    DaemonFixture fx;
    INFO("paybridged log:\n", fx.log());
    Wechat wx{fx};
    const std::string txn = "4200000104202611270000104001";
    REQUIRE(fx.create_bill("M1001", 1000).status == 201);
    REQUIRE(wx.post_v3(wx.pay(wx.tx("M1001", 1000, txn))).status == 204);

    // An API refund notified in v3.
    CHECK(wx.post_v3(wx.refund_notice(wx.refund("M1001", txn, "R1001-api", 1000, 300))).status == 204);
    CHECK(status_of(fx, "M1001") == "PARTIALLY_REFUNDED");

    // The rest refunded in the merchant portal: notified in v2 XML, here at the URL the API v3
    // notifications use (PROTOCOLS.md §2.6): told apart by its Content-Type, answered in v2 XML.
    auto portal = wx.v2_refund("M1001", txn, "R1001-portal", 1000, 700);
    portal.refund_request_source = "VENDOR_PLATFORM";
    check_ack(http_request(fx.port(), "POST", "/notify/wechatpay/" + std::string(DaemonFixture::kMchId),
                           wx.v2_refund_xml(portal), {{"Content-Type", "text/xml"}}));

    auto bill = bill_of(fx, "M1001");
    CHECK(str(bill, "status") == "REFUNDED");
    CHECK(bill["paid_fen"].GetInt64() == 1000);
    CHECK(bill["refunded_fen"].GetInt64() == 1000);
    CHECK(str(bill, "provider") == "wechatpay");
    CHECK(str(bill, "provider_txn_id") == txn);
    CHECK(bill["version"].GetInt() == 4);
    REQUIRE(bill["events"].Size() == 3);
    CHECK(str(bill["events"][0]["data"], "channel") == "wechatpay_v3");
    CHECK(str(bill["events"][1]["data"], "channel") == "wechatpay_v3");
    CHECK(str(bill["events"][2]["data"], "channel") == "wechatpay_v2");
    CHECK(str(bill["events"][2]["data"], "refund_id") == "R1001-portal");
    CHECK(bill["events"][2]["data"]["refund_fen"].GetInt64() == 700);

    // The same refunds reported again through the other API version (v2 at its own route): keyed by out_refund_no,
    // so no money moves twice and nothing is flagged as exceeding the payment.
    CHECK(wx.post_v3(wx.refund_notice(wx.refund("M1001", txn, "R1001-portal", 1000, 700))).status == 204);
    check_ack(wx.post_v2(wx.v2_refund_xml(wx.v2_refund("M1001", txn, "R1001-api", 1000, 300))));
    bill = bill_of(fx, "M1001");
    CHECK(str(bill, "status") == "REFUNDED");
    CHECK(bill["refunded_fen"].GetInt64() == 1000);
    CHECK(bill["events"].Size() == 3);
    CHECK(anomalies_of(fx, "M1001").empty());
    CHECK(fx.outbox_length() == 3);

    // The event feed the CRM reads agrees with the bill's history, in order.
    auto feed = parse_json(fx.api("GET", "/v1/events?limit=100").body);
    std::vector<std::string> types;
    for (const auto& e : feed["events"].GetArray()) {
        if (str(e, "bill_id") == "M1001") {
            types.emplace_back(e["type"].GetString());
        }
    }
    CHECK(types == std::vector<std::string>{"bill.paid", "bill.refunded", "bill.refunded"});
}

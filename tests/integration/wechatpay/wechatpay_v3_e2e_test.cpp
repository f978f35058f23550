// End to end over HTTP against the real paybridged and a real redis-server: WeChat Pay API v3
// notifications at POST /notify/wechatpay/{mchid} (issue 3).

#include "tests/integration/wechatpay/wechat_e2e.hpp"
#include "tests/support/redis_server.hpp"
#include "tools/keygen/keygen.hpp"

#include <atomic>
#include <thread>

using namespace wxe2e;
using paybridge::test::http_request;
using paybridge::test::wait_for_http;
namespace keygen = paybridge::keygen;

TEST_CASE("wechatpay v3: payment → PAID with 204 and a WeChat retry or 50 concurrent copies apply once")
{
    DaemonFixture fx;
    INFO("paybridged log:\n", fx.log());
    Wechat wx{fx};
    REQUIRE(fx.create_bill("W1001", 1234).status == 201);

    const auto first = wx.pay(wx.tx("W1001", 1234, "4200000001202611270000001001"));
    auto r = wx.post_v3(first);
    CHECK(r.status == 204);
    CHECK(r.body.empty());
    CHECK(r.headers.count("content-length") == 0);  // RFC 9110 §8.6: none on a 204
    auto bill = bill_of(fx, "W1001");
    CHECK(str(bill, "status") == "PAID");
    CHECK(bill["paid_fen"].GetInt64() == 1234);
    CHECK(str(bill, "provider") == "wechatpay");
    CHECK(str(bill, "provider_txn_id") == "4200000001202611270000001001");
    CHECK(str(bill, "paid_at") != "null");
    CHECK(bill["version"].GetInt() == 2);
    REQUIRE(bill["events"].Size() == 1);
    const auto& paid = bill["events"][0];
    CHECK(str(paid, "type") == "bill.paid");
    CHECK(paid["sequence"].GetInt() == 1);
    CHECK(str(paid["data"], "channel") == "wechatpay_v3");
    CHECK(str(paid["data"], "provider_status") == "TRANSACTION.SUCCESS");
    CHECK(fx.outbox_length() == 1);

    // WeChat's retry: the same notification id and body, a new timestamp, nonce and signature.
    const auto retry = Wechat::resign(first, wx.public_key, now_unix() - 20);
    CHECK(retry.headers != first.headers);
    r = wx.post_v3(retry);
    CHECK(r.status == 204);
    CHECK(r.body.empty());
    CHECK(events_of(fx, "W1001") == 1);
    {
        // A 204 without Content-Length ends where it should: the keep-alive connection goes on.
        paybridge::test::HttpClient client(fx.port());
        const paybridge::test::Headers headers(retry.headers.begin(), retry.headers.end());
        const HttpResult again = client.post("/notify/wechatpay/" + std::string(DaemonFixture::kMchId), retry.body, headers);
        CHECK(again.status == 204);
        CHECK(again.headers.count("content-length") == 0);
        CHECK(client.get("/healthz").status == 200);
    }
    CHECK(fx.outbox_length() == 1);
    CHECK(bill_of(fx, "W1001")["version"].GetInt() == 2);

    // The retry signed with the platform certificate instead (rollout in progress): still once.
    r = wx.post_v3(Wechat::resign(first, wx.platform, now_unix()));
    CHECK(r.status == 204);
    CHECK(events_of(fx, "W1001") == 1);
    CHECK(fx.outbox_length() == 1);

    // 50 concurrent copies for a fresh bill: every copy acknowledged, exactly one transition.
    REQUIRE(fx.create_bill("W1002", 500).status == 201);
    const auto copy = wx.pay(wx.tx("W1002", 500, "4200000001202611270000001002"));
    std::atomic<int> acknowledged{0};
    std::atomic<int> other{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < 50; ++i) {
        threads.emplace_back([&] {
            auto res = wx.post_v3(copy);
            if (res.status == 204 && res.body.empty()) {
                ++acknowledged;
            } else {
                ++other;
            }
        });
    }
    for (auto& t : threads) {
        t.join();
    }
    CHECK(acknowledged == 50);
    CHECK(other == 0);
    bill = bill_of(fx, "W1002");
    CHECK(str(bill, "status") == "PAID");
    CHECK(bill["version"].GetInt() == 2);
    CHECK(bill["events"].Size() == 1);
    CHECK(fx.outbox_length() == 2);
}

TEST_CASE("wechatpay v3: partial then full refund keyed by out_refund_no")
{
    DaemonFixture fx;
    INFO("paybridged log:\n", fx.log());
    Wechat wx{fx};
    const std::string txn = "4200000002202611270000002001";
    REQUIRE(fx.create_bill("W2001", 1000).status == 201);
    REQUIRE(wx.post_v3(wx.pay(wx.tx("W2001", 1000, txn))).status == 204);

    const auto partial = wx.refund_notice(wx.refund("W2001", txn, "R2001-1", 1000, 300));
    auto r = wx.post_v3(partial);
    CHECK(r.status == 204);
    CHECK(r.body.empty());
    auto bill = bill_of(fx, "W2001");
    CHECK(str(bill, "status") == "PARTIALLY_REFUNDED");
    CHECK(bill["refunded_fen"].GetInt64() == 300);
    CHECK(bill["paid_fen"].GetInt64() == 1000);

    // The same refund again: a WeChat retry, and a new notification for the same out_refund_no.
    CHECK(wx.post_v3(Wechat::resign(partial, wx.public_key, now_unix() - 5)).status == 204);
    const auto again = wx.refund_notice(wx.refund("W2001", txn, "R2001-1", 1000, 300), wx.platform);
    CHECK(wx.post_v3(again).status == 204);
    bill = bill_of(fx, "W2001");
    CHECK(bill["refunded_fen"].GetInt64() == 300);
    CHECK(bill["events"].Size() == 2);
    CHECK(fx.outbox_length() == 2);

    // The rest: REFUNDED.
    r = wx.post_v3(wx.refund_notice(wx.refund("W2001", txn, "R2001-2", 1000, 700)));
    CHECK(r.status == 204);
    bill = bill_of(fx, "W2001");
    CHECK(str(bill, "status") == "REFUNDED");
    CHECK(bill["refunded_fen"].GetInt64() == 1000);
    REQUIRE(bill["events"].Size() == 3);
    CHECK(str(bill["events"][1], "type") == "bill.refunded");
    CHECK(str(bill["events"][1]["data"], "refund_id") == "R2001-1");
    CHECK(bill["events"][1]["data"]["refund_fen"].GetInt64() == 300);
    CHECK(str(bill["events"][2], "type") == "bill.refunded");
    CHECK(str(bill["events"][2]["data"], "refund_id") == "R2001-2");
    CHECK(bill["events"][2]["data"]["refund_fen"].GetInt64() == 700);
    CHECK(bill["events"][2]["data"]["refunded_fen"].GetInt64() == 1000);
    for (rapidjson::SizeType i = 0; i < bill["events"].Size(); ++i) {
        CHECK(bill["events"][i]["sequence"].GetInt() == static_cast<int>(i) + 1);
    }
    CHECK(fx.outbox_length() == 3);
    CHECK(anomalies_of(fx, "W2001").empty());
}

TEST_CASE("wechatpay v3: REFUND.CLOSED and REFUND.ABNORMAL are anomalies that move no money "
          "and an ABNORMAL refund later succeeds")
{
    DaemonFixture fx;
    INFO("paybridged log:\n", fx.log());
    Wechat wx{fx};
    const std::string txn = "4200000003202611270000003001";
    REQUIRE(fx.create_bill("W3001", 1000).status == 201);
    REQUIRE(wx.post_v3(wx.pay(wx.tx("W3001", 1000, txn))).status == 204);

    // Closed: recorded, no money moves; its retry is not recorded twice.
    const auto closed = wx.refund_notice(wx.refund("W3001", txn, "R3001-1", 1000, 400, "CLOSED"));
    CHECK(wx.post_v3(closed).status == 204);
    CHECK(wx.post_v3(Wechat::resign(closed, wx.public_key, now_unix())).status == 204);
    auto bill = bill_of(fx, "W3001");
    CHECK(str(bill, "status") == "PAID");
    CHECK(bill["refunded_fen"].GetInt64() == 0);
    CHECK(bill["version"].GetInt() == 2);
    REQUIRE(bill["events"].Size() == 2);
    CHECK(str(bill["events"][1], "type") == "bill.anomaly");
    CHECK(str(bill["events"][1]["data"], "anomaly") == "refund_closed");
    CHECK(str(bill["events"][1]["data"], "kind") == "refund_closed");
    CHECK(str(bill["events"][1]["data"], "refund_id") == "R3001-1");
    CHECK(str(bill["events"][1]["data"], "provider_status") == "REFUND.CLOSED");

    // Abnormal (the user's card was frozen): recorded, no money moves.
    CHECK(wx.post_v3(wx.refund_notice(wx.refund("W3001", txn, "R3001-2", 1000, 600, "ABNORMAL"))).status == 204);
    bill = bill_of(fx, "W3001");
    CHECK(str(bill, "status") == "PAID");
    CHECK(bill["refunded_fen"].GetInt64() == 0);
    REQUIRE(bill["events"].Size() == 3);
    CHECK(str(bill["events"][2], "type") == "bill.anomaly");
    CHECK(str(bill["events"][2]["data"], "anomaly") == "refund_abnormal");
    CHECK(str(bill["events"][2]["data"], "kind") == "refund_abnormal");
    CHECK(str(bill["events"][2]["data"], "refund_id") == "R3001-2");

    // Handled in the merchant portal, the same refund later succeeds: money moves now.
    CHECK(wx.post_v3(wx.refund_notice(wx.refund("W3001", txn, "R3001-2", 1000, 600))).status == 204);
    bill = bill_of(fx, "W3001");
    CHECK(str(bill, "status") == "PARTIALLY_REFUNDED");
    CHECK(bill["refunded_fen"].GetInt64() == 600);
    REQUIRE(bill["events"].Size() == 4);
    CHECK(str(bill["events"][3], "type") == "bill.refunded");
    CHECK(str(bill["events"][3]["data"], "refund_id") == "R3001-2");
    CHECK(fx.outbox_length() == 4);
    CHECK(anomalies_of(fx, "W3001") == std::vector<std::string>{"refund_closed", "refund_abnormal"});
}

// The exact boundary (299 s accepted, 300 s refused, both ways) is checked with an injected clock in
// tests/unit/wechatpay/v3_gateway_test.cpp ("v3: the timestamp window accepts 299 s and rejects
// 300 s in both directions"). Here, over HTTP against the daemon's own clock, the notification is
// signed some time before the daemon checks it: ±290 s and ±310 s stay clear of the boundary by 10 s
// whatever the load.
TEST_CASE("wechatpay v3: the timestamp window accepts ±290 s and stale or early notifications at ±310 s get 401 FAIL")
{
    DaemonFixture fx;
    INFO("paybridged log:\n", fx.log());
    Wechat wx{fx};
    for (const char* id : {"W4001", "W4002", "W4003"}) {
        REQUIRE(fx.create_bill(id, 100).status == 201);
    }

    SUBCASE("290 s old and 290 s ahead are accepted")
    {
        auto r = wx.post_v3(wx.pay(wx.tx("W4001", 100, "4200000004202611270000004001"), wx.public_key,
                                   now_unix() - 290));
        CHECK(r.status == 204);
        const auto early = wx.tx("W4002", 100, "4200000004202611270000004002");
        r = wx.post_v3(wx.pay(early, wx.platform, now_unix() + 290));
        CHECK(r.status == 204);
        CHECK(status_of(fx, "W4001") == "PAID");
        CHECK(status_of(fx, "W4002") == "PAID");
        CHECK(fx.outbox_length() == 2);
    }
    SUBCASE("310 s old and 310 s ahead are refused and a fresh retry then succeeds")
    {
        const auto tx = wx.tx("W4003", 100, "4200000004202611270000004003");
        const auto old = wx.pay(tx, wx.public_key, now_unix() - 310);
        check_v3_fail(wx.post_v3(old), 401);
        check_v3_fail(wx.post_v3(Wechat::resign(old, wx.public_key, now_unix() + 310)), 401);
        check_v3_fail(wx.post_v3(Wechat::resign(old, wx.platform, now_unix() - 3600)), 401);
        CHECK(status_of(fx, "W4003") == "PENDING");
        CHECK(events_of(fx, "W4003") == 0);
        CHECK(fx.outbox_length() == 0);
        // WeChat regenerates the timestamp when it retries: nothing was lost.
        CHECK(wx.post_v3(Wechat::resign(old, wx.public_key, now_unix())).status == 204);
        CHECK(status_of(fx, "W4003") == "PAID");
    }
}

TEST_CASE("wechatpay v3: signatures or keys or merchants that do not match are refused and change nothing")
{
    DaemonFixture fx;
    INFO("paybridged log:\n", fx.log());
    Wechat wx{fx};
    REQUIRE(fx.create_bill("W5001", 2000).status == 201);
    const auto tx = wx.tx("W5001", 2000, "4200000005202611270000005001");

    SUBCASE("unknown serial → 401")
    {
        // Signed by the right key but naming a certificate we do not have.
        auto n = wx.pay(tx, sim::V3Signer{wx.platform.private_key, "7E57000000000000000000000000000000000009"});
        check_v3_fail(wx.post_v3(n), 401);
        // A public key id that is not the configured one.
        const sim::V3Signer other_id{wx.public_key.private_key, "PUB_KEY_ID_0114232024110100000000000000000002"};
        n = wx.pay(tx, other_id);
        check_v3_fail(wx.post_v3(n), 401);
    }
    SUBCASE("signed by another key under a known serial → 401")
    {
        auto other = keygen::generate_rsa();
        auto key = *crypto::load_private_key(other.private_pem);
        check_v3_fail(wx.post_v3(wx.pay(tx, sim::V3Signer{key, DaemonFixture::kPublicKeyId})), 401);
        check_v3_fail(wx.post_v3(wx.pay(tx, sim::V3Signer{key, kPlatformSerial})), 401);
    }
    SUBCASE("WECHATPAY/SIGNTEST/ probe → 401 never 500")
    {
        for (const auto* signer : {&wx.public_key, &wx.platform}) {
            auto probe = wx.pay(tx, *signer);
            probe.set_header("Wechatpay-Signature", "WECHATPAY/SIGNTEST/" + keygen::random_token(40));
            check_v3_fail(wx.post_v3(probe), 401);
        }
        // A probe whose tail happens to be valid base64 is still just a failed verification.
        auto probe = wx.pay(tx);
        const std::string tail = crypto::base64_encode(std::string(256, 'x'));
        probe.set_header("Wechatpay-Signature", "WECHATPAY/SIGNTEST/" + tail);
        check_v3_fail(wx.post_v3(probe), 401);
    }
    SUBCASE("one byte of the body changed after signing → 401")
    {
        auto n = wx.pay(tx);
        const auto pos = n.body.find("TRANSACTION.SUCCESS");
        REQUIRE(pos != std::string::npos);
        n.body[pos] = 't';
        check_v3_fail(wx.post_v3(n), 401);
    }
    SUBCASE("flipped ciphertext byte signed by WeChat → 400")
    {
        const auto genuine = wx.pay(tx);
        auto raw = crypto::base64_decode(ciphertext_of(genuine.body));
        REQUIRE(raw.has_value());
        (*raw)[10] = static_cast<char>((*raw)[10] ^ 0x01);
        auto damaged = sim::sign_v3(with_ciphertext(genuine.body, crypto::base64_encode(*raw)), wx.public_key);
        REQUIRE(damaged.has_value());
        check_v3_fail(wx.post_v3(*damaged), 400);
    }
    SUBCASE("encrypted under another APIv3 key → 400")
    {
        auto n = sim::make_v3_payment(tx, keygen::random_token(32), wx.platform);
        REQUIRE(n.has_value());
        check_v3_fail(wx.post_v3(*n), 400);
    }
    SUBCASE("wrong mchid → 400")
    {
        // A merchant we do not serve in the URL.
        check_v3_fail(wx.post_v3(wx.pay(tx), "1900000002"), 400);
        // Our URL, but the decrypted object belongs to another merchant or app.
        auto other = tx;
        other.mchid = "1900000002";
        check_v3_fail(wx.post_v3(wx.pay(other)), 400);
        other = tx;
        other.appid = "wx0000000000000002";
        check_v3_fail(wx.post_v3(wx.pay(other)), 400);
    }
    SUBCASE("missing header or unknown signature type → 4xx FAIL")
    {
        auto n = wx.pay(tx);
        n.set_header("Wechatpay-Nonce", "");
        check_v3_fail(wx.post_v3(n), 400);
        n = wx.pay(tx);
        n.set_header("Wechatpay-Signature-Type", "WECHATPAY2-SHA256-RSA4096");
        check_v3_fail(wx.post_v3(n), 401);
    }
    SUBCASE("a body over the limit → 413 FAIL in WeChat's format, v2 XML FAIL")
    {
        auto n = wx.pay(tx);
        n.body.append(70 * 1024, ' ');
        check_v3_fail(wx.post_v3(n), 413);
        const auto v2 = wx.post_v2("<xml>" + std::string(70 * 1024, ' ') + "</xml>");
        CHECK(v2.status == 413);
        check_v2_fail(v2);
    }

    CHECK(http_request(fx.port(), "GET", "/healthz").status == 200);
    auto bill = bill_of(fx, "W5001");
    CHECK(str(bill, "status") == "PENDING");
    CHECK(bill["version"].GetInt() == 1);
    CHECK(bill["events"].Size() == 0);
    CHECK(fx.outbox_length() == 0);
    CHECK(anomalies_of(fx, "W5001").empty());
    // The genuine notification still goes through afterwards: nothing above left a trace.
    CHECK(wx.post_v3(wx.pay(tx)).status == 204);
    CHECK(status_of(fx, "W5001") == "PAID");
}

TEST_CASE("wechatpay v3: the public key and the platform certificate are both accepted")
{
    DaemonFixture fx;
    INFO("paybridged log:\n", fx.log());
    Wechat wx{fx};
    REQUIRE(fx.create_bill("W6001", 100).status == 201);
    REQUIRE(fx.create_bill("W6002", 200).status == 201);
    REQUIRE(fx.create_bill("W6003", 300).status == 201);

    auto r = wx.post_v3(wx.pay(wx.tx("W6001", 100, "4200000006202611270000006001"), wx.public_key));
    CHECK(r.status == 204);
    r = wx.post_v3(wx.pay(wx.tx("W6002", 200, "4200000006202611270000006002"), wx.platform));
    CHECK(r.status == 204);
    // The Go SDK prints the serial with its leading zero, and some integrators use lower case.
    r = wx.post_v3(wx.pay(wx.tx("W6003", 300, "4200000006202611270000006003"),
                          sim::V3Signer{wx.platform.private_key, "05157f09efdc096de15ebe81a47057a7232f1b8e1"}));
    CHECK(r.status == 204);
    CHECK(status_of(fx, "W6001") == "PAID");
    CHECK(status_of(fx, "W6002") == "PAID");
    CHECK(status_of(fx, "W6003") == "PAID");
    CHECK(fx.outbox_length() == 3);

    // Keys are not interchangeable: the platform key under the public key id is refused.
    REQUIRE(fx.create_bill("W6004", 400).status == 201);
    auto swapped = wx.pay(wx.tx("W6004", 400, "4200000006202611270000006004"),
                          sim::V3Signer{wx.platform.private_key, DaemonFixture::kPublicKeyId});
    check_v3_fail(wx.post_v3(swapped), 401);
    CHECK(status_of(fx, "W6004") == "PENDING");
}

TEST_CASE("wechatpay v3: amount mismatch and unknown bill are acknowledged and recorded as anomalies")
{
    DaemonFixture fx;
    INFO("paybridged log:\n", fx.log());
    Wechat wx{fx};

    // Amount mismatch: 204, the bill unchanged, one anomaly (a retry does not add another).
    REQUIRE(fx.create_bill("W7001", 1000).status == 201);
    const auto wrong = wx.pay(wx.tx("W7001", 999, "4200000007202611270000007001"));
    auto r = wx.post_v3(wrong);
    CHECK(r.status == 204);
    CHECK(r.body.empty());
    CHECK(wx.post_v3(Wechat::resign(wrong, wx.platform, now_unix())).status == 204);
    auto bill = bill_of(fx, "W7001");
    CHECK(str(bill, "status") == "PENDING");
    CHECK(bill["paid_fen"].GetInt64() == 0);
    REQUIRE(bill["events"].Size() == 1);
    CHECK(str(bill["events"][0], "type") == "bill.anomaly");
    CHECK(str(bill["events"][0]["data"], "anomaly") == "amount_mismatch");
    CHECK(anomalies_of(fx, "W7001") == std::vector<std::string>{"amount_mismatch"});

    // Unknown bill: 204, kept as an orphan, applied when the bill is registered.
    r = wx.post_v3(wx.pay(wx.tx("W7002", 700, "4200000007202611270000007002")));
    CHECK(r.status == 204);
    CHECK(fx.get_bill("W7002").status == 404);
    CHECK(anomalies_of(fx, "W7002") == std::vector<std::string>{"unknown_bill"});
    CHECK(fx.create_bill("W7002", 700).status == 201);
    bill = bill_of(fx, "W7002");
    CHECK(str(bill, "status") == "PAID");
    CHECK(str(bill, "provider") == "wechatpay");
    CHECK(str(bill, "provider_txn_id") == "4200000007202611270000007002");
    // Its history: the unknown_bill anomaly (sequence 1), then the payment (sequence 2).
    CHECK(event_types(fx, "W7002") == std::vector<std::string>{"bill.anomaly", "bill.paid"});

    // An orphan whose amount disagrees with the bill registered later: still checked.
    CHECK(wx.post_v3(wx.pay(wx.tx("W7003", 100, "4200000007202611270000007003"))).status == 204);
    CHECK(fx.create_bill("W7003", 200).status == 201);
    CHECK(status_of(fx, "W7003") == "PENDING");
    auto kinds = anomalies_of(fx, "W7003");
    CHECK(std::find(kinds.begin(), kinds.end(), "amount_mismatch") != kinds.end());
}

TEST_CASE("wechatpay v3: an authentic resource whose amount does not read is recorded once and refused with 400 FAIL")
{
    DaemonFixture fx;
    INFO("paybridged log:\n", fx.log());
    Wechat wx{fx};
    REQUIRE(fx.create_bill("W7051", 1000).status == 201);
    std::string plaintext = sim::v3_transaction_json(wx.tx("W7051", 1000, "4200000007202611270000007051"));
    const auto at = plaintext.find("\"total\":1000");
    REQUIRE(at != std::string::npos);
    plaintext.replace(at, 12, "\"total\":\"10.00\"");
    const sim::V3Envelope envelope{.id = "EV-W7051"};
    auto body = sim::build_v3_body(envelope, plaintext, fx.apiv3_key);
    REQUIRE(body.has_value());
    for (int i = 0; i < 2; ++i) {  // WeChat Pay's retry, signed again
        auto n = sim::sign_v3(*body, wx.public_key, now_unix());
        REQUIRE(n.has_value());
        check_v3_fail(wx.post_v3(*n), 400);
    }
    auto bill = bill_of(fx, "W7051");
    CHECK(str(bill, "status") == "PENDING");
    REQUIRE(bill["events"].Size() == 1);
    CHECK(str(bill["events"][0]["data"], "anomaly") == "unusable_notification");
    CHECK(str(bill["events"][0]["data"], "problem") ==
          "TRANSACTION.SUCCESS: amount.total is missing or not an amount in fen");
    CHECK(anomalies_of(fx, "W7051") == std::vector<std::string>{"unusable_notification"});
    // The same notification with a readable amount (as a fixed paybridge would read it) applies.
    auto readable = wx.pay(wx.tx("W7051", 1000, "4200000007202611270000007051"), wx.public_key, 0, envelope);
    CHECK(wx.post_v3(readable).status == 204);
    CHECK(status_of(fx, "W7051") == "PAID");
}

TEST_CASE("wechatpay v3: a verified event type we do not act on is acknowledged, with or without a bill")
{
    DaemonFixture fx;
    INFO("paybridged log:\n", fx.log());
    Wechat wx{fx};
    REQUIRE(fx.create_bill("W7101", 1000).status == 201);

    // Naming no bill (out_trade_no empty): 204, so WeChat Pay stops retrying; nothing recorded.
    sim::V3Envelope other{.event_type = "MCHTRANSFER.BILL.FINISHED"};
    auto r = wx.post_v3(wx.pay(wx.tx("", 1000, "4200000007202611270000007101"), wx.public_key, 0, other));
    CHECK(r.status == 204);
    CHECK(r.body.empty());
    // Naming a bill: 204 and the bill unchanged, no event, no anomaly.
    r = wx.post_v3(wx.pay(wx.tx("W7101", 1000, "4200000007202611270000007102"), wx.public_key, 0, other));
    CHECK(r.status == 204);
    auto bill = bill_of(fx, "W7101");
    CHECK(str(bill, "status") == "PENDING");
    CHECK(bill["events"].Size() == 0);
    CHECK(anomalies_of(fx, "W7101").empty());
    // A forged one is still refused: verification comes first.
    auto forged = wx.pay(wx.tx("", 1000, "4200000007202611270000007103"), wx.public_key, 0, other);
    const auto pos = forged.body.find("MCHTRANSFER");
    REQUIRE(pos != std::string::npos);
    forged.body[pos] = 'm';
    check_v3_fail(wx.post_v3(forged), 401);
}

TEST_CASE("wechatpay v3: Redis stopped → 503 FAIL and once restarted the same notification succeeds")
{
    // One worker, so that /readyz speaks for the only Redis connection: with several workers
    // each reconnects on its own backoff and /readyz answers for whichever worker took it.
    DaemonFixture fx(paybridge::test::DaemonOptions{.workers = 1});
    INFO("paybridged log:\n", fx.log());
    Wechat wx{fx};
    REQUIRE(fx.create_bill("W8001", 100).status == 201);
    // The test Redis runs without automatic snapshots: save once, so the bill survives the
    // restart as it would on a production Redis with persistence.
    fx.redis_run({"SAVE"});
    const auto n = wx.pay(wx.tx("W8001", 100, "4200000008202611270000008001"));

    fx.redis().stop();
    check_v3_fail(wx.post_v3(n), 503);
    check_v3_fail(wx.post_v3(n), 503);  // WeChat's first retry, still down
    CHECK(http_request(fx.port(), "GET", "/readyz").status == 503);
    CHECK(http_request(fx.port(), "GET", "/healthz").status == 200);

    fx.redis().restart();
    REQUIRE(wait_for_http(fx.port(), "/readyz", 200, std::chrono::seconds(15)));
    auto r = wx.post_v3(n);
    CHECK(r.status == 204);
    CHECK(r.body.empty());
    auto bill = bill_of(fx, "W8001");
    CHECK(str(bill, "status") == "PAID");
    CHECK(bill["events"].Size() == 1);
    CHECK(fx.outbox_length() == 1);
    // A late duplicate of one of the 503'd deliveries changes nothing.
    CHECK(wx.post_v3(Wechat::resign(n, wx.platform, now_unix())).status == 204);
    CHECK(events_of(fx, "W8001") == 1);
}

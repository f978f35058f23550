// End to end over HTTP against the real paybridged binary and a real redis-server: the Alipay
// path of issue 2 (register → notify → PAID, idempotency, anomalies, outages, limits).

#include "gateways/alipay/alipay_sim.hpp"
#include "gateways/crypto/crypto.hpp"
#include "tests/support/daemon_fixture.hpp"
#include "tests/support/json.hpp"
#include "tests/support/redis_server.hpp"

#include <doctest/doctest.h>
#include <rapidjson/document.h>
#include <signal.h>

#include <atomic>
#include <latch>
#include <thread>

using namespace paybridge;
using namespace paybridge::test;
namespace alipay = paybridge::gateways::alipay;

namespace {

struct Alipay {
    DaemonFixture& fx;
    crypto::SharedKey key = *crypto::load_private_key(fx.alipay_keys.private_pem);

    alipay::NoticeSpec spec(const std::string& bill, std::int64_t fen, const std::string& trade_no = "")
    {
        alipay::NoticeSpec s;
        s.app_id = DaemonFixture::kAlipayAppId;
        s.seller_id = DaemonFixture::kSellerId;
        s.out_trade_no = bill;
        s.amount_fen = fen;
        s.trade_no = trade_no.empty() ? "2026112722001400000000" + bill.substr(bill.size() > 4 ? bill.size() - 4 : 0)
                                      : trade_no;
        return s;
    }
    std::string paid(const std::string& bill, std::int64_t fen, std::string_view status = "TRADE_SUCCESS")
    {
        return alipay::build_alipay_body(alipay::make_paid_notice(spec(bill, fen), status), key.get());
    }
    std::string refund(const std::string& bill, std::int64_t fen, std::int64_t refunded_total, const std::string& biz)
    {
        return alipay::build_alipay_body(alipay::make_refund_notice(spec(bill, fen), refunded_total, biz), key.get());
    }
};

std::string status_of(DaemonFixture& fx, const std::string& bill)
{
    auto r = fx.get_bill(bill);
    REQUIRE_MESSAGE(r.status == 200, r.body);
    auto d = parse_json(r.body);
    return d["status"].GetString();
}

std::size_t events_of(DaemonFixture& fx, const std::string& bill);

/// After an outage: Alipay's retry of `body` is acknowledged, and the bill (its only one) has been
/// paid exactly once, whatever happened to the attempts Redis did not answer.
void check_retry_applied_once(DaemonFixture& fx, const std::string& body, const std::string& bill)
{
    const HttpResult r = fx.post_alipay(body);
    CHECK(r.status == 200);
    CHECK(r.body == "success");
    CHECK(status_of(fx, bill) == "PAID");
    CHECK(events_of(fx, bill) == 1);
    CHECK(fx.outbox_length() == 1);
}

std::size_t events_of(DaemonFixture& fx, const std::string& bill)
{
    auto r = fx.get_bill(bill);
    REQUIRE(r.status == 200);
    auto d = parse_json(r.body);
    return d["events"].Size();
}

}  // namespace

TEST_CASE("alipay: register, pay, duplicate, TRADE_FINISHED, 50 concurrent copies")
{
    DaemonFixture fx;
    Alipay ali{fx};

    auto created = fx.create_bill("B1001", 1234);
    CHECK(created.status == 201);
    CHECK(!created.header("x-request-id").empty());
    CHECK(fx.create_bill("B1001", 1234).status == 200);   // identical → 200
    CHECK(fx.create_bill("B1001", 999).status == 409);    // different content → 409

    const std::string body = ali.paid("B1001", 1234);
    auto r = fx.post_alipay(body);
    CHECK(r.status == 200);
    CHECK(r.body == "success");
    CHECK(r.header("content-type").starts_with("text/plain"));
    CHECK(status_of(fx, "B1001") == "PAID");
    const auto outbox_after_first = fx.outbox_length();
    CHECK(outbox_after_first == 1);

    // The same bytes again: acknowledged, nothing changes (the bill byte for byte: version,
    // updated_at, history), nothing appended.
    const std::string paid_bill = fx.get_bill("B1001").body;
    r = fx.post_alipay(body);
    CHECK(r.status == 200);
    CHECK(r.body == "success");
    CHECK(fx.outbox_length() == 1);
    CHECK(events_of(fx, "B1001") == 1);
    CHECK(fx.get_bill("B1001").body == paid_bill);

    // TRADE_FINISHED later (new notify_id, same trade): a no-op.
    r = fx.post_alipay(ali.paid("B1001", 1234, "TRADE_FINISHED"));
    CHECK(r.body == "success");
    CHECK(fx.outbox_length() == 1);

    // 50 concurrent copies of one notification for a fresh bill: exactly one transition.
    REQUIRE(fx.create_bill("B1002", 500).status == 201);
    const std::string b2 = ali.paid("B1002", 500);
    std::atomic<int> ok{0};
    std::vector<std::thread> threads;
    // Each thread connects first and all send together: the copies meet inside paybridged.
    std::latch go(50);
    for (int i = 0; i < 50; ++i) {
        threads.emplace_back([&] {
            HttpClient client(fx.port());
            CHECK(client.get("/healthz").status == 200);
            go.arrive_and_wait();
            auto res = client.post("/notify/alipay", b2,
                                   {{"Content-Type", "application/x-www-form-urlencoded; charset=utf-8"}});
            if (res.status == 200 && res.body == "success") {
                ++ok;
            }
        });
    }
    for (auto& t : threads) {
        t.join();
    }
    CHECK(ok == 50);
    CHECK(fx.outbox_length() == 2);
    CHECK(events_of(fx, "B1002") == 1);
    auto bill = parse_json(fx.get_bill("B1002").body);
    CHECK(bill["version"].GetInt() == 2);
    CHECK(bill["paid_fen"].GetInt64() == 500);
    CHECK(std::string(bill["provider"].GetString()) == "alipay");
    CHECK(bill["events"][0]["sequence"].GetInt() == 1);
    CHECK(std::string(bill["events"][0]["type"].GetString()) == "bill.paid");
    // The 49 others were repeats, not anomalies.
    CHECK(parse_json(fx.api("GET", "/v1/anomalies").body)["anomalies"].Size() == 0);
}

TEST_CASE("alipay: only the POST body is the notification: a notify_url with a query string verifies and its parameters change nothing")
{
    // PROTOCOLS.md pitfall 8: merchants put parameters in notify_url; Alipay signs the body only.
    DaemonFixture fx;
    Alipay ali{fx};
    REQUIRE(fx.create_bill("B1501", 1000).status == 201);
    REQUIRE(fx.create_bill("B1502", 1000).status == 201);
    const std::string form = "application/x-www-form-urlencoded; charset=utf-8";
    auto r = http_request(fx.port(), "POST", "/notify/alipay?id=123&out_trade_no=B1502&total_amount=1.00",
                          ali.paid("B1501", 1000), {{"Content-Type", form}});
    CHECK(r.status == 200);
    CHECK(r.body == "success");
    CHECK(status_of(fx, "B1501") == "PAID");
    CHECK(status_of(fx, "B1502") == "PENDING");
    CHECK(fx.outbox_length() == 1);
}

TEST_CASE("alipay: rejections answer fail and change nothing")
{
    DaemonFixture fx;
    Alipay ali{fx};
    REQUIRE(fx.create_bill("B2001", 1000).status == 201);

    SUBCASE("one flipped byte in the amount")
    {
        std::string body = ali.paid("B2001", 1000);
        const auto pos = body.find("total_amount=10.00");
        REQUIRE(pos != std::string::npos);
        body[pos + 13] = '2';  // 10.00 → 20.00, signature no longer matches
        auto r = fx.post_alipay(body);
        CHECK(r.status == 400);
        CHECK(r.body == "fail");
    }
    SUBCASE("one flipped byte in a field no other check reads")
    {
        // Only the signature can refuse this one (a changed amount is also an amount mismatch).
        std::string body = ali.paid("B2001", 1000);
        const auto pos = body.find("notify_id=");
        REQUIRE(pos != std::string::npos);
        char& c = body[pos + std::string_view("notify_id=").size()];
        c = c == 'a' ? 'b' : 'a';
        auto r = fx.post_alipay(body);
        CHECK(r.status == 400);
        CHECK(r.body == "fail");
        CHECK(fx.log().find("\"error\":\"bad_signature\"") != std::string::npos);
    }
    SUBCASE("unknown app_id")
    {
        auto spec = ali.spec("B2001", 1000);
        spec.app_id = "2021999999999999";
        auto r = fx.post_alipay(alipay::build_alipay_body(alipay::make_paid_notice(spec), ali.key.get()));
        CHECK(r.status == 400);
        CHECK(r.body == "fail");
    }
    SUBCASE("signed with another key")
    {
        auto other = keygen::generate_rsa();
        auto key = *crypto::load_private_key(other.private_pem);
        auto r = fx.post_alipay(alipay::build_alipay_body(alipay::make_paid_notice(ali.spec("B2001", 1000)), key.get()));
        CHECK(r.status == 400);
    }
    SUBCASE("not a form")
    {
        auto r = fx.post_alipay("%zz&&===");
        CHECK(r.status == 400);
        CHECK(r.body == "fail");
    }
    CHECK(status_of(fx, "B2001") == "PENDING");
    CHECK(fx.outbox_length() == 0);
}

TEST_CASE("alipay: anomalies are acknowledged and recorded")
{
    DaemonFixture fx;
    Alipay ali{fx};

    // Amount mismatch: ack, bill unchanged, anomaly recorded once.
    REQUIRE(fx.create_bill("B3001", 1000).status == 201);
    const std::string wrong = ali.paid("B3001", 999);
    CHECK(fx.post_alipay(wrong).body == "success");
    CHECK(fx.post_alipay(wrong).body == "success");
    CHECK(status_of(fx, "B3001") == "PENDING");
    auto anomalies = parse_json(fx.api("GET", "/v1/anomalies").body);
    REQUIRE(anomalies["anomalies"].Size() == 1);
    CHECK(std::string(anomalies["anomalies"][0]["kind"].GetString()) == "amount_mismatch");
    // ... and emitted to the outbox once, on the bill's history.
    CHECK(fx.outbox_length() == 1);
    {
        const auto b = parse_json(fx.get_bill("B3001").body);
        REQUIRE(b["events"].Size() == 1);
        CHECK(std::string(b["events"][0]["type"].GetString()) == "bill.anomaly");
        CHECK(std::string(b["events"][0]["bill_id"].GetString()) == "B3001");
        CHECK(b["version"].GetInt() == 1);
    }

    // Unknown bill: ack, kept as orphan, applied when the bill is registered.
    CHECK(fx.post_alipay(ali.paid("B3002", 700)).body == "success");
    CHECK(fx.get_bill("B3002").status == 404);
    auto created = fx.create_bill("B3002", 700);
    CHECK(created.status == 201);
    CHECK(status_of(fx, "B3002") == "PAID");

    // An orphan whose amount disagrees with the bill registered later: the check still applies.
    CHECK(fx.post_alipay(ali.paid("B3003", 100)).body == "success");
    CHECK(fx.create_bill("B3003", 200).status == 201);
    CHECK(status_of(fx, "B3003") == "PENDING");

    // Payment after close, then a second payment with another trade number.
    REQUIRE(fx.create_bill("B3004", 300).status == 201);
    auto closed = alipay::build_alipay_body(alipay::make_closed_notice(ali.spec("B3004", 300)), ali.key.get());
    CHECK(fx.post_alipay(closed).body == "success");
    CHECK(status_of(fx, "B3004") == "CLOSED");
    CHECK(fx.post_alipay(ali.paid("B3004", 300)).body == "success");
    CHECK(status_of(fx, "B3004") == "PAID");
    auto other_trade = alipay::build_alipay_body(
        alipay::make_paid_notice(ali.spec("B3004", 300, "2026112722009999999999")), ali.key.get());
    CHECK(fx.post_alipay(other_trade).body == "success");
    CHECK(status_of(fx, "B3004") == "PAID");

    anomalies = parse_json(fx.api("GET", "/v1/anomalies?limit=100").body);
    std::vector<std::string> kinds;
    for (auto& a : anomalies["anomalies"].GetArray()) {
        kinds.emplace_back(a["kind"].GetString());
    }
    auto has = [&](const char* k) { return std::find(kinds.begin(), kinds.end(), k) != kinds.end(); };
    CHECK(has("amount_mismatch"));
    CHECK(has("unknown_bill"));
    CHECK(has("paid_after_close"));
    CHECK(has("duplicate_payment"));

    // paybridge_anomalies_total agrees with the feed, kind by kind, including the amount mismatch
    // that B3003's orphan recorded when it was replayed at registration.
    const std::string metrics = fx.api("GET", "/metrics").body;
    for (const std::string& kind : {std::string("amount_mismatch"), std::string("unknown_bill"),
                                    std::string("paid_after_close"), std::string("duplicate_payment")}) {
        CAPTURE(kind);
        const auto recorded = std::count(kinds.begin(), kinds.end(), kind);
        const std::string line = "paybridge_anomalies_total{kind=\"" + kind + "\"} " + std::to_string(recorded) + "\n";
        CHECK_MESSAGE(metrics.find(line) != std::string::npos, metrics);
    }
    CHECK(std::count(kinds.begin(), kinds.end(), "amount_mismatch") == 2);
}

TEST_CASE("alipay: an authentic notification whose amount does not read is recorded once and refused so Alipay retries")
{
    DaemonFixture fx;
    Alipay ali{fx};
    REQUIRE(fx.create_bill("B3101", 1000).status == 201);
    auto notice = alipay::make_paid_notice(ali.spec("B3101", 1000));
    alipay::set_field(notice, "total_amount", "10.001");
    const std::string unreadable = alipay::build_alipay_body(notice, ali.key.get());
    // Forged with that content: a bad signature, not an anomaly.
    std::string forged = unreadable;
    forged.replace(forged.find("10.001"), 6, "10.002");
    CHECK(fx.post_alipay(forged).status == 400);
    CHECK(parse_json(fx.api("GET", "/v1/anomalies").body)["anomalies"].Size() == 0);
    for (int i = 0; i < 3; ++i) {  // Alipay's retries
        const auto r = fx.post_alipay(unreadable);
        CHECK(r.status == 400);
        CHECK(r.body == "fail");
    }
    CHECK(status_of(fx, "B3101") == "PENDING");
    auto anomalies = parse_json(fx.api("GET", "/v1/anomalies").body);
    REQUIRE(anomalies["anomalies"].Size() == 1);
    const auto& anomaly = anomalies["anomalies"][0];
    CHECK(std::string(anomaly["kind"].GetString()) == "unusable_notification");
    CHECK(std::string(anomaly["bill_id"].GetString()) == "B3101");
    CHECK(std::string(anomaly["detail"]["problem"].GetString()) ==
          "total_amount \"10.001\" is not an amount in yuan (digits, at most two decimals)");
    // The CRM hears of it: one bill.anomaly event in the bill's history (and the outbox).
    auto bill = parse_json(fx.get_bill("B3101").body);
    REQUIRE(bill["events"].Size() == 1);
    CHECK(std::string(bill["events"][0]["type"].GetString()) == "bill.anomaly");
    CHECK(std::string(bill["events"][0]["data"]["anomaly"].GetString()) == "unusable_notification");
    CHECK(fx.outbox_length() == 1);
    // The anomaly blocks nothing: a readable payment notification pays the bill.
    CHECK(fx.post_alipay(ali.paid("B3101", 1000)).body == "success");
    CHECK(status_of(fx, "B3101") == "PAID");
}

TEST_CASE("alipay: partial then full refund — refund before payment — certificate mode")
{
    DaemonFixture fx;
    Alipay ali{fx};
    REQUIRE(fx.create_bill("B4001", 1000).status == 201);
    CHECK(fx.post_alipay(ali.paid("B4001", 1000)).body == "success");
    const std::string partial = ali.refund("B4001", 1000, 300, "R1");
    CHECK(fx.post_alipay(partial).body == "success");
    CHECK(status_of(fx, "B4001") == "PARTIALLY_REFUNDED");
    CHECK(fx.post_alipay(partial).body == "success");  // duplicate
    CHECK(fx.post_alipay(ali.refund("B4001", 1000, 1000, "R2")).body == "success");
    auto bill = parse_json(fx.get_bill("B4001").body);
    CHECK(std::string(bill["status"].GetString()) == "REFUNDED");
    CHECK(bill["refunded_fen"].GetInt64() == 1000);
    CHECK(bill["events"].Size() == 3);
    for (rapidjson::SizeType i = 0; i < bill["events"].Size(); ++i) {
        CHECK(bill["events"][i]["sequence"].GetInt() == static_cast<int>(i) + 1);
    }

    // A refund notification seen while the bill is PENDING applies the payment first.
    REQUIRE(fx.create_bill("B4002", 800).status == 201);
    CHECK(fx.post_alipay(ali.refund("B4002", 800, 200, "R9")).body == "success");
    bill = parse_json(fx.get_bill("B4002").body);
    CHECK(std::string(bill["status"].GetString()) == "PARTIALLY_REFUNDED");
    CHECK(bill["paid_fen"].GetInt64() == 800);
    // paid_at is the payment's time the refund states (gmt_payment, an hour before gmt_refund).
    REQUIRE(bill["events"].Size() == 2);
    const std::string paid_at = bill["paid_at"].GetString();
    const std::string refunded_at = bill["events"][1]["data"]["occurred_at"].GetString();
    CHECK(paid_at.size() == refunded_at.size());
    CHECK(paid_at < refunded_at);

    // Certificate-mode app (certificate checked against the test root at load).
    REQUIRE(fx.create_bill("B4003", 100).status == 201);
    auto key = *crypto::load_private_key(fx.alipay_cert.key.private_pem);
    auto spec = ali.spec("B4003", 100);
    spec.app_id = DaemonFixture::kAlipayCertAppId;
    CHECK(fx.post_alipay(alipay::build_alipay_body(alipay::make_paid_notice(spec), key.get())).body == "success");
    CHECK(status_of(fx, "B4003") == "PAID");

    // GBK notification (Chinese subject) verified on its raw bytes.
    REQUIRE(fx.create_bill("B4004", 250).status == 201);
    auto gbk = ali.spec("B4004", 250);
    gbk.charset = "gbk";
    gbk.subject = "大乐透2.1 会员+";
    CHECK(fx.post_alipay(alipay::build_alipay_body(alipay::make_paid_notice(gbk), ali.key.get()), "GBK").body ==
          "success");
    CHECK(status_of(fx, "B4004") == "PAID");
}

TEST_CASE("alipay: Redis down → 503 fail and /readyz 503 — back up → the same notification succeeds")
{
    DaemonFixture fx;
    Alipay ali{fx};
    REQUIRE(fx.create_bill("B5001", 100).status == 201);
    // The test Redis runs without automatic snapshots: save once, so the bill survives the
    // restart as it would on a production Redis with persistence.
    fx.redis_run({"SAVE"});
    const std::string body = ali.paid("B5001", 100);
    fx.redis().stop();
    auto r = fx.post_alipay(body);
    CHECK(r.status == 503);
    CHECK(r.body == "fail");
    CHECK(fx.post_alipay(body).status == 503);  // Alipay's first retry, still down
    CHECK(http_request(fx.port(), "GET", "/readyz").status == 503);
    CHECK(http_request(fx.port(), "GET", "/healthz").status == 200);
    CHECK(fx.api("GET", "/v1/bills/B5001").status == 503);
    fx.redis().restart();  // the same port, the saved data
    CHECK(wait_for_http(fx.port(), "/readyz", 200, std::chrono::seconds(15)));
    REQUIRE(status_of(fx, "B5001") == "PENDING");
    check_retry_applied_once(fx, body, "B5001");
}

TEST_CASE("alipay: Redis that stops answering mid-request → 503 fail — the retry is applied exactly once")
{
    // A frozen Redis (SIGSTOP) still accepts the script: whether it ran is unknown when the
    // request times out, so paybridged answers 503 and Alipay retries. Redis then runs what
    // queued up, and the retry must be recognised as a repeat, not applied a second time.
    DaemonFixture fx;
    Alipay ali{fx};
    REQUIRE(fx.create_bill("B5002", 100).status == 201);
    const std::string body = ali.paid("B5002", 100);
    fx.redis().freeze();
    auto r = fx.post_alipay(body);  // the request deadline (2 s in the test config) passes
    CHECK(r.status == 503);
    CHECK(r.body == "fail");
    fx.redis().thaw();
    CHECK(wait_for_http(fx.port(), "/readyz", 200, std::chrono::seconds(15)));
    check_retry_applied_once(fx, body, "B5002");
    CHECK(fx.post_alipay(body).body == "success");
    CHECK(events_of(fx, "B5002") == 1);
}

TEST_CASE("alipay with redis.wait_replicas: 503 fail while no replica has the change — a replica attached → the retry succeeds")
{
    DaemonOptions options;
    options.redis_extra = ", \"wait_replicas\": 1, \"wait_timeout_ms\": 500";
    DaemonFixture fx(options);
    Alipay ali{fx};
    // Written, but not confirmed: the CRM and the provider hear 503 and retry.
    CHECK(fx.create_bill("B5101", 100).status == 503);
    const std::string body = ali.paid("B5101", 100);
    auto r = fx.post_alipay(body);
    CHECK(r.status == 503);
    CHECK(r.body == "fail");
    CHECK(status_of(fx, "B5101") == "PAID");  // applied on the primary, once
    // A replica attaches (Redis 7 waits a few seconds before a diskless sync): the retries are
    // repeats, and they are acknowledged once the replica has what they repeat.
    RedisTestServer replica({"--replicaof", "127.0.0.1", std::to_string(fx.redis().port())});
    int registered = 0;
    for (int i = 0; i < 200 && registered != 200; ++i) {
        registered = fx.create_bill("B5101", 100).status;
        if (registered != 200) {
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
    }
    CHECK(registered == 200);
    // Alipay retries until it hears success. Each try waits for the replica's acknowledgement, which
    // on a loaded machine (the test suite runs two at a time) can miss the 500 ms now and then.
    int tries = 0;
    do {
        r = fx.post_alipay(body);
    } while (r.status == 503 && ++tries < 10);
    CHECK(r.status == 200);
    CHECK(r.body == "success");
    CHECK(events_of(fx, "B5101") == 1);  // the payment, applied once
}

TEST_CASE("alipay through Redis Sentinel: the master the sentinels name is used, not the URL's host")
{
    RedisTestServer master;
    const auto sentinel = RedisTestServer::sentinel(master.port(), "pbmaster");
    DaemonOptions options;
    options.redis_extra = R"(, "sentinel": {"master": "pbmaster", "nodes": ["127.0.0.1:)" +
                          std::to_string(sentinel->port()) + R"("]})";
    DaemonFixture fx(options);
    fx.redis().stop();  // the server the URL names: nothing may depend on it
    Alipay ali{fx};
    REQUIRE(fx.create_bill("B5201", 100).status == 201);
    const auto r = fx.post_alipay(ali.paid("B5201", 100));
    CHECK(r.status == 200);
    CHECK(r.body == "success");
    CHECK(status_of(fx, "B5201") == "PAID");
    CHECK(http_request(fx.port(), "GET", "/readyz").status == 200);
    // The master gone (and no replica to fail over to): not ready, and providers hear 503.
    master.stop();
    CHECK(wait_for_http(fx.port(), "/readyz", 503, std::chrono::seconds(10)));
    CHECK(fx.post_alipay(ali.paid("B5201", 100)).status == 503);
    CHECK(fx.stop() == 0);
}

TEST_CASE("http: a chunk-size line that never ends is refused, not buffered — a refused upload still reads its answer")
{
    DaemonFixture fx;
    // The parser limits the header and the declared body, but keeps buffering a chunk-size line
    // (its extensions) until the line ends: 300 KB of one is refused once the request buffer
    // (header limit + 64 KiB) is full, long before the 2 s read deadline would end it silently.
    HttpClient chunked(fx.port());
    const std::string endless = chunked.raw(
        "POST /notify/alipay HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;" + std::string(300 * 1024, 'a'),
        std::chrono::seconds(5));
    CHECK(endless.rfind("HTTP/1.1 400 Bad Request\r\n", 0) == 0);
    // A 4 MiB upload refused by its Content-Length: the server answers 413 at the header, then
    // reads and discards the rest before closing, so the client's write completes and the answer
    // is not destroyed by a reset (without that, this client's write fails and it reads nothing).
    HttpClient upload(fx.port());
    const std::string big = upload.raw("POST /notify/alipay HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n"
                                       "Content-Type: application/x-www-form-urlencoded\r\n\r\n" +
                                           std::string(4 * 1024 * 1024, 'a'),
                                       std::chrono::seconds(5));
    CHECK(big.rfind("HTTP/1.1 413 Payload Too Large\r\n", 0) == 0);
    // The server is unharmed.
    CHECK(http_request(fx.port(), "GET", "/healthz").status == 200);
    CHECK(fx.stop() == 0);
}

TEST_CASE("bills API: a body of 4 million nested brackets is refused at level 33, not parsed by recursion")
{
    DaemonOptions options;
    options.limits_json = R"({"max_body_bytes": 8388608, "read_timeout_ms": 10000})";
    DaemonFixture fx(options);
    // A recursive parse of this body needs far more stack than a worker has (and a document of
    // 4 million arrays hundreds of MB): the worker would crash or balloon. It is refused as read.
    const auto r = fx.api("POST", "/v1/bills", std::string(4'000'000, '['));
    CHECK(r.status == 400);
    CHECK(r.body.find("deeper than 32 levels") != std::string::npos);
    CHECK(http_request(fx.port(), "GET", "/healthz").status == 200);
    CHECK(fx.stop() == 0);
}

TEST_CASE("http: limits, deadlines, auth, request ids, graceful shutdown")
{
    DaemonFixture fx;
    // Oversized body → 413.
    auto r = http_request(fx.port(), "POST", "/notify/alipay", std::string(70 * 1024, 'a'),
                          {{"Content-Type", "application/x-www-form-urlencoded"}});
    CHECK(r.status == 413);
    CHECK(!r.header("x-request-id").empty());
    CHECK(r.body == "fail");  // in Alipay's format, as every answer on its route
    CHECK(r.header("content-type").starts_with("text/plain"));
    // On the API, in the API's error shape; elsewhere plain text.
    r = http_request(fx.port(), "POST", "/v1/bills", std::string(70 * 1024, 'a'), {{"Content-Type", "application/json"}});
    CHECK(r.status == 413);
    CHECK(r.body == R"({"error":{"code":"payload_too_large","message":"payload too large"}})");
    r = http_request(fx.port(), "POST", "/healthz", std::string(70 * 1024, 'a'));
    CHECK(r.status == 413);
    CHECK(r.body == "payload too large\n");
    // Oversized header → 431.
    r = http_request(fx.port(), "GET", "/healthz", {}, {{"X-Big", std::string(10 * 1024, 'h')}});
    CHECK(r.status == 431);
    CHECK(r.body == "request header fields too large\n");
    // A request line that alone is over the header limit → 414; for the API in its error shape.
    r = http_request(fx.port(), "GET", "/v1/bills/" + std::string(10 * 1024, 'b'));
    CHECK(r.status == 414);
    CHECK(r.body == R"({"error":{"code":"uri_too_long","message":"uri too long"}})");
    CHECK(!r.header("x-request-id").empty());
    r = http_request(fx.port(), "GET", "/healthz?" + std::string(10 * 1024, 'b'));
    CHECK(r.status == 414);
    CHECK(r.body == "uri too long\n");
    // Half a request is dropped after the read deadline (2 s in the test config).
    const auto waited = HttpClient::time_until_closed(
        fx.port(), "POST /notify/alipay HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc", std::chrono::seconds(10));
    CHECK(waited >= std::chrono::milliseconds(1500));
    CHECK(waited < std::chrono::milliseconds(5000));
    // A keep-alive connection is closed once it has been idle for the idle deadline (5 s in the
    // test config) after its answer, not at the read deadline; one that pauses for less than that
    // between requests is served.
    const auto idle = HttpClient::time_until_closed(fx.port(), "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                                                    std::chrono::seconds(12));
    CHECK(idle >= std::chrono::milliseconds(4500));
    CHECK(idle < std::chrono::milliseconds(8000));
    {
        HttpClient pausing(fx.port());
        CHECK(pausing.get("/healthz").status == 200);
        std::this_thread::sleep_for(std::chrono::milliseconds(2500));
        CHECK(pausing.get("/readyz").status == 200);
        CHECK(pausing.connections() == 1);  // served on the same connection, not a new one
    }
    // Bearer tokens.
    CHECK(http_request(fx.port(), "GET", "/v1/anomalies").status == 401);
    CHECK(http_request(fx.port(), "GET", "/v1/anomalies", {}, {{"Authorization", "Bearer wrong"}}).status == 401);
    CHECK(fx.api("GET", "/v1/anomalies").status == 200);
    // Request id echoed when valid.
    r = http_request(fx.port(), "GET", "/healthz", {}, {{"X-Request-Id", "abc-123"}});
    CHECK(r.header("x-request-id") == "abc-123");
    // Generated otherwise: 16 hex digits of a per-thread prefix, '-', a counter of 8+ hex digits.
    const std::string generated = http_request(fx.port(), "GET", "/healthz").header("x-request-id");
    CHECK(generated.size() == 25);
    CHECK(generated.find_first_not_of("0123456789abcdef-") == std::string::npos);
    CHECK(generated[16] == '-');
    CHECK(generated != http_request(fx.port(), "GET", "/healthz").header("x-request-id"));
    // Validation errors name the field.
    r = fx.api("POST", "/v1/bills", R"({"id":"B6001","amount_fen":12.5,"customer_id":"c"})");
    CHECK(r.status == 400);
    CHECK(r.body.find("\"field\":\"amount_fen\"") != std::string::npos);
    r = fx.api("POST", "/v1/bills", R"({"id":"B6001","amount_fen":1,"customer_id":"c","colour":"red"})");
    CHECK(r.status == 400);
    CHECK(r.body.find("colour") != std::string::npos);
    // A field given twice is refused (parsers disagree on which one counts).
    r = fx.api("POST", "/v1/bills", R"({"id":"B6001","amount_fen":100,"customer_id":"c","amount_fen":200})");
    CHECK(r.status == 400);
    CHECK(r.body.find("\"field\":\"amount_fen\"") != std::string::npos);
    CHECK(r.body.find("more than once") != std::string::npos);
    // Optional fields may be null, as a bill's own JSON writes them.
    r = fx.api("POST", "/v1/bills",
               R"({"id":"B6005","amount_fen":1,"customer_id":"c","expires_at":null,"metadata":null,"description":null})");
    CHECK(r.status == 201);
    // Lengths are characters: 256 Chinese characters (768 bytes) fit a description, 257 do not.
    std::string chinese;
    for (int i = 0; i < 256; ++i) {
        chinese += "\xE4\xB8\xAD";  // 中
    }
    r = fx.api("POST", "/v1/bills", R"({"id":"B6006","amount_fen":1,"customer_id":"c","description":")" + chinese + "\"}");
    CHECK(r.status == 201);
    r = fx.api("POST", "/v1/bills",
               R"({"id":"B6007","amount_fen":1,"customer_id":"c","description":")" + chinese + "\xE4\xB8\xAD\"}");
    CHECK(r.status == 400);
    CHECK(r.body.find("\"field\":\"description\"") != std::string::npos);
    // expires_at must stay a four-digit year once in UTC.
    r = fx.api("POST", "/v1/bills",
               R"({"id":"B6008","amount_fen":1,"customer_id":"c","expires_at":"9999-12-31T23:59:59-01:00"})");
    CHECK(r.status == 400);
    CHECK(r.body.find("\"field\":\"expires_at\"") != std::string::npos);
    r = fx.api("POST", "/v1/bills",
               R"({"id":"B6008","amount_fen":1,"customer_id":"c","expires_at":"9999-12-31T22:59:59-01:00"})");
    CHECK(r.status == 201);
    // Nesting: metadata up to 16 levels is kept; deeper is refused by name; a body nesting more
    // than 32 levels is refused as it is read (below: a body of millions of levels).
    const auto nested = [](int levels) {
        std::string m;
        for (int i = 0; i < levels; ++i) {
            m += R"({"a":)";
        }
        m += "1" + std::string(static_cast<std::size_t>(levels), '}');
        return m;
    };
    r = fx.api("POST", "/v1/bills", R"({"id":"B6003","amount_fen":1,"customer_id":"c","metadata":)" + nested(16) + "}");
    CHECK(r.status == 201);
    r = fx.api("POST", "/v1/bills", R"({"id":"B6004","amount_fen":1,"customer_id":"c","metadata":)" + nested(17) + "}");
    CHECK(r.status == 400);
    CHECK(r.body.find("\"field\":\"metadata\"") != std::string::npos);
    CHECK(r.body.find("16 levels") != std::string::npos);
    r = fx.api("POST", "/v1/bills", std::string(33, '[') + std::string(33, ']'));
    CHECK(r.status == 400);
    CHECK(r.body.find("deeper than 32 levels") != std::string::npos);
    r = fx.api("POST", "/v1/bills", std::string(32, '[') + std::string(32, ']'));
    CHECK(r.status == 400);
    CHECK(r.body.find("must be a JSON object") != std::string::npos);
    // Invalid UTF-8 (a lone 0xFF; an overlong "/") is refused: it would make every event of the
    // bill invalid JSON for the CRM. Valid non-ASCII text is kept as it is.
    for (const std::string& bad : {std::string("\xff"), std::string("\xc0\xaf")}) {
        r = fx.api("POST", "/v1/bills", R"({"id":"B6002","amount_fen":1,"customer_id":"c","description":")" + bad + "\"}");
        CHECK(r.status == 400);
        CHECK(r.body.find("not valid UTF-8") != std::string::npos);
    }
    CHECK(fx.get_bill("B6002").status == 404);
    r = fx.api("POST", "/v1/bills", R"({"id":"B6002","amount_fen":1,"customer_id":"c","description":"账单 №1"})");
    CHECK(r.status == 201);
    CHECK(r.body.find("账单 №1") != std::string::npos);
    // Pipelining: two requests in one write, two answers in order.
    HttpClient c(fx.port());
    const std::string two = c.raw("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                                  std::chrono::seconds(3));
    REQUIRE(two.find("404 Not Found") != std::string::npos);
    CHECK(two.find("200 OK") < two.find("404 Not Found"));
    // HEAD: the header GET would get, Content-Length included, and no body, so the next answer on
    // the connection starts right after it.
    HttpClient h(fx.port());
    const std::string head_then_get = h.raw(
        "HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        std::chrono::seconds(3));
    REQUIRE(head_then_get.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
    const std::size_t head_end = head_then_get.find("\r\n\r\n");
    REQUIRE(head_end != std::string::npos);
    CHECK(head_then_get.substr(0, head_end).find("Content-Length: 3") != std::string::npos);
    CHECK(head_then_get.compare(head_end + 4, 17, "HTTP/1.1 200 OK\r\n") == 0);
    // SIGTERM → exit 0.
    CHECK(fx.stop() == 0);
}

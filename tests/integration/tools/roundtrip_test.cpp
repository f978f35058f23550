// End to end with the real binaries: `paybridge trigger` → `paybridged` (real redis-server) →
// CRM push → `paybridge listen`, for every provider and event; --tamper and --stale refused by the
// daemon; duplicates and concurrent copies applied once; the API commands and their exit codes.

#include "tests/integration/tools/cli_stack.hpp"

#include <doctest/doctest.h>

#include <thread>

using namespace paybridge::test;
using namespace paybridge::test::cli;

namespace {

bool contains(const std::string& text, std::string_view what) { return text.find(what) != std::string::npos; }

std::vector<std::string> types(const std::vector<Received>& events)
{
    std::vector<std::string> out;
    for (const auto& e : events) {
        out.push_back(e.type);
    }
    return out;
}

void create(Stack& s, const std::string& id, std::int64_t fen)
{
    const Run r =
        s.run({"bills", "create", "--id", id, "--amount", std::to_string(fen), "--customer", "cust-1"});
    REQUIRE_MESSAGE(r.code == 0, r.output);
}

Run trigger(Stack& s, std::vector<std::string> args)
{
    args.insert(args.begin(), "trigger");
    return s.run(args);
}

std::string status(Stack& s, const std::string& id) { return s.bill(id)["status"].GetString(); }

}  // namespace

TEST_SUITE("tools/roundtrip")
{
    TEST_CASE("alipay paid + refund + closed: trigger -> paybridged -> listen")
    {
        Stack s;
        create(s, "A1", 1234);
        create(s, "A2", 500);

        Run paid = trigger(s, {"alipay", "paid", "--bill", "A1"});
        CHECK_MESSAGE(paid.code == 0, paid.output);
        CHECK(contains(paid.output, "200 OK  success"));
        CHECK(contains(paid.output, "total_amount=12.34"));  // the amount came from GET /v1/bills/A1
        CHECK(status(s, "A1") == "PAID");

        Run partial = trigger(s, {"alipay", "refund", "--bill", "A1", "--refund-amount", "234"});
        CHECK_MESSAGE(partial.code == 0, partial.output);
        CHECK(status(s, "A1") == "PARTIALLY_REFUNDED");
        Run rest = trigger(s, {"alipay", "refund", "--bill", "A1"});  // cumulative refund_fee = 12.34
        CHECK_MESSAGE(rest.code == 0, rest.output);
        CHECK(contains(rest.output, "refund_fee=12.34 (cumulative)"));
        auto a1 = s.bill("A1");
        CHECK(std::string(a1["status"].GetString()) == "REFUNDED");
        CHECK(a1["refunded_fen"].GetInt64() == 1234);

        Run closed = trigger(s, {"alipay", "closed", "--bill", "A2"});
        CHECK_MESSAGE(closed.code == 0, closed.output);
        CHECK(status(s, "A2") == "CLOSED");

        REQUIRE_MESSAGE(s.wait_received([&](const auto&) {
            return s.events_for("A1").size() >= 3 && s.events_for("A2").size() >= 1;
        }),
                        s.logs());
        CHECK(types(s.events_for("A1")) ==
              std::vector<std::string>{"bill.paid", "bill.refunded", "bill.refunded"});
        CHECK(types(s.events_for("A2")) == std::vector<std::string>{"bill.closed"});
        for (const auto& e : s.received()) {
            CHECK(e.verified);
        }
        CHECK(s.events_for("A1").back().bill_status == "REFUNDED");
        CHECK(s.events_for("A1").back().sequence == 3);
    }

    TEST_CASE("wechatpay (API v3) paid + refund + refund-closed + refund-abnormal with both signers")
    {
        Stack s;
        create(s, "W1", 800);

        Run paid = trigger(s, {"wechatpay", "paid", "--bill", "W1"});
        CHECK_MESSAGE(paid.code == 0, paid.output);
        CHECK(contains(paid.output, "204 No Content"));
        Run refund = trigger(
            s, {"wechatpay", "refund", "--bill", "W1", "--refund-amount", "300", "--signer", "platform"});
        CHECK_MESSAGE(refund.code == 0, refund.output);
        Run refund_closed =
            trigger(s, {"wechatpay", "refund-closed", "--bill", "W1", "--refund-amount", "100"});
        CHECK_MESSAGE(refund_closed.code == 0, refund_closed.output);
        Run abnormal = trigger(s, {"wechatpay", "refund-abnormal", "--bill", "W1", "--refund-amount", "100",
                                   "--signer", "platform"});
        CHECK_MESSAGE(abnormal.code == 0, abnormal.output);

        auto w1 = s.bill("W1");
        CHECK(std::string(w1["status"].GetString()) == "PARTIALLY_REFUNDED");
        CHECK(w1["paid_fen"].GetInt64() == 800);
        CHECK(w1["refunded_fen"].GetInt64() == 300);  // closed / abnormal refunds move no money
        CHECK(std::string(w1["provider"].GetString()) == "wechatpay");

        REQUIRE_MESSAGE(s.wait_received([&](const auto&) { return s.events_for("W1").size() >= 4; }),
                        s.logs());
        const auto events = s.events_for("W1");
        CHECK(types(events) == std::vector<std::string>{"bill.paid", "bill.refunded", "bill.anomaly", "bill.anomaly"});
        CHECK(events[2].data_kind == "refund_closed");
        CHECK(events[3].data_kind == "refund_abnormal");
    }

    TEST_CASE("wechatpay-v2 paid and refund")
    {
        Stack s;
        create(s, "V1", 600);
        create(s, "V2", 700);
        Run paid = trigger(s, {"wechatpay-v2", "paid", "--bill", "V1"});
        CHECK_MESSAGE(paid.code == 0, paid.output);
        CHECK(contains(paid.output, "<return_code><![CDATA[SUCCESS]]></return_code>"));
        Run md5 = trigger(s, {"wechatpay-v2", "paid", "--bill", "V2", "--sign-type", "MD5"});
        CHECK_MESSAGE(md5.code == 0, md5.output);
        // No <sign_type> at all (WeChat's default): the daemon tells MD5 by the sign's length.
        create(s, "V3", 800);
        Run bare = trigger(s, {"wechatpay-v2", "paid", "--bill", "V3", "--sign-type", "none"});
        CHECK_MESSAGE(bare.code == 0, bare.output);
        CHECK(status(s, "V3") == "PAID");
        Run refund = trigger(s, {"wechatpay-v2", "refund", "--bill", "V1"});
        CHECK_MESSAGE(refund.code == 0, refund.output);
        CHECK(status(s, "V1") == "REFUNDED");
        CHECK(status(s, "V2") == "PAID");
        REQUIRE_MESSAGE(s.wait_received([&](const auto&) {
            return s.events_for("V1").size() >= 2 && s.events_for("V2").size() >= 1;
        }),
                        s.logs());
        CHECK(types(s.events_for("V1")) == std::vector<std::string>{"bill.paid", "bill.refunded"});
        CHECK(types(s.events_for("V2")) == std::vector<std::string>{"bill.paid"});
    }

    TEST_CASE("trigger --tamper and --stale are refused by paybridged and change nothing")
    {
        Stack s;
        create(s, "T1", 100);
        struct Case {
            std::vector<std::string> args;
            int status;
            std::string reply;  ///< what the daemon's answer says: which check refused it
        };
        for (const Case& c : {Case{{"alipay", "paid", "--tamper"}, 400, "  fail  "},
                              Case{{"wechatpay", "paid", "--tamper"}, 401, "signature verification failed"},
                              Case{{"wechatpay", "paid", "--stale"}, 401, "timestamp outside the allowed window"},
                              Case{{"wechatpay-v2", "paid", "--tamper"}, 401, "FAIL"}}) {
            std::vector<std::string> args = c.args;
            args.insert(args.end(), {"--bill", "T1"});
            CAPTURE(args[0] + " " + args[2]);
            Run r = trigger(s, args);
            CHECK(r.code == 1);
            CHECK(contains(r.output, "  #1  " + std::to_string(c.status)));
            CHECK(contains(r.output, c.reply));
            CHECK(contains(r.output, "paybridged must refuse it"));
            CHECK(contains(r.output, "(as it must)"));
        }
        CHECK(trigger(s, {"alipay", "paid", "--bill", "T1", "--stale"}).code == 2);
        CHECK(trigger(s, {"wechatpay-v2", "refund", "--bill", "T1", "--stale"}).code == 2);

        auto t1 = s.bill("T1");
        CHECK(std::string(t1["status"].GetString()) == "PENDING");
        CHECK(t1["events"].Size() == 0);
        CHECK(t1["version"].GetInt64() == 1);

        // A tampered v2 refund (encrypted, unsigned) is refused too, and the bill keeps its money.
        REQUIRE(trigger(s, {"wechatpay-v2", "paid", "--bill", "T1"}).code == 0);
        Run refund = trigger(s, {"wechatpay-v2", "refund", "--bill", "T1", "--tamper"});
        CHECK(refund.code == 1);
        t1 = s.bill("T1");
        CHECK(std::string(t1["status"].GetString()) == "PAID");
        CHECK(t1["refunded_fen"].GetInt64() == 0);

        REQUIRE(s.wait_received([&](const auto&) { return s.events_for("T1").size() >= 1; }));
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        CHECK(types(s.events_for("T1")) == std::vector<std::string>{"bill.paid"});
    }

    TEST_CASE("trigger --duplicate and --concurrency: the same bytes are applied once")
    {
        Stack s;
        create(s, "D1", 1000);
        create(s, "D2", 2000);
        Run many = trigger(s, {"alipay", "paid", "--bill", "D1", "--duplicate", "3", "--concurrency", "4"});
        CHECK_MESSAGE(many.code == 0, many.output);
        CHECK(contains(many.output, "16 copies of the same bytes: 4 round(s) of 4 at once"));
        CHECK(contains(many.output, "sent 16: 200 x16"));
        Run wx = trigger(s, {"wechatpay", "paid", "--bill", "D2", "--concurrency", "8"});
        CHECK_MESSAGE(wx.code == 0, wx.output);
        CHECK(contains(wx.output, "sent 8: 204 x8"));
        for (const char* id : {"D1", "D2"}) {
            CAPTURE(id);
            auto bill = s.bill(id);
            CHECK(std::string(bill["status"].GetString()) == "PAID");
            CHECK(bill["events"].Size() == 1);
        }
        REQUIRE(s.wait_received(
            [&](const auto&) { return s.events_for("D1").size() >= 1 && s.events_for("D2").size() >= 1; }));
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        CHECK(s.events_for("D1").size() == 1);
        CHECK(s.events_for("D2").size() == 1);
    }

    TEST_CASE("API commands: bills create/get/list + events + anomalies and their exit codes")
    {
        Stack s;
        Run created = s.run({"bills", "create", "--id", "B1", "--amount", "1234", "--customer", "c-1",
                             "--description", "order one"});
        CHECK_MESSAGE(created.code == 0, created.output);
        CHECK(contains(created.output, "created bill B1  PENDING"));
        CHECK(contains(created.output, "12.34 CNY (1234 fen)"));
        Run same = s.run({"bills", "create", "--id", "B1", "--amount", "1234", "--customer", "c-1",
                          "--description", "order one"});
        CHECK(same.code == 0);
        CHECK(contains(same.output, "already registered with the same content"));
        Run conflict = s.run({"bills", "create", "--id", "B1", "--amount", "999", "--customer", "c-1"});
        CHECK(conflict.code == 1);
        CHECK(contains(conflict.output, "409 conflict"));
        // This stack's daemon has no provider_query: the API says so, and the CLI shows it.
        Run query = s.run({"bills", "query", "B1"});
        CHECK(query.code == 1);
        CHECK(contains(query.output, "active queries are off"));
        Run missing = s.run({"bills", "get", "NOPE"});
        CHECK(missing.code == 1);
        CHECK(contains(missing.output, "no bill 'NOPE'"));
        Run bad_token = s.run({"bills", "list", "--token", "not-the-token"});
        CHECK(bad_token.code == 1);
        CHECK(contains(bad_token.output, "401"));
        CHECK(contains(bad_token.output, "check --token"));
        Run env_token = paybridge_cli({"bills", "list", "--config", s.config().string()},
                                      {{"PAYBRIDGE_TOKEN", "wrong-token-from-env"}});
        CHECK(env_token.code == 1);  // $PAYBRIDGE_TOKEN wins over the configuration

        // A notification for a bill that does not exist needs --amount; with it, it is an orphan.
        Run no_amount = trigger(s, {"alipay", "paid", "--bill", "ORPHAN1"});
        CHECK(no_amount.code == 2);
        CHECK(contains(no_amount.output, "does not exist"));
        Run orphan = trigger(s, {"alipay", "paid", "--bill", "ORPHAN1", "--amount", "300"});
        CHECK_MESSAGE(orphan.code == 0, orphan.output);
        REQUIRE(trigger(s, {"wechatpay", "paid", "--bill", "B1"}).code == 0);

        Run list = s.run({"bills", "list"});
        CHECK(list.code == 0);
        CHECK(contains(list.output, "B1  PAID"));
        Run pending = s.run({"bills", "list", "--status", "pending"});
        CHECK(pending.code == 0);
        CHECK(contains(pending.output, "no bills"));
        Run get = s.run({"bills", "get", "B1"});
        CHECK(get.code == 0);
        CHECK(contains(get.output, "bill.paid"));
        CHECK(contains(get.output, "events (oldest first): 1"));

        Run events = s.run({"events"});
        CHECK_MESSAGE(events.code == 0, events.output);
        CHECK(contains(events.output, "bill.paid"));
        CHECK(contains(events.output, "B1"));
        Run page = s.run({"events", "--limit", "1"});
        CHECK(page.code == 0);
        CHECK(contains(page.output, "continue with: paybridge events --after "));
        Run events_json = s.run({"events", "--json"});
        CHECK(events_json.code == 0);
        CHECK(events_json.output.starts_with("{\"events\":["));

        Run anomalies = s.run({"anomalies"});
        CHECK_MESSAGE(anomalies.code == 0, anomalies.output);
        CHECK(contains(anomalies.output, "unknown_bill"));
        CHECK(contains(anomalies.output, "ORPHAN1"));

        // The orphan is applied when its bill is registered.
        create(s, "ORPHAN1", 300);
        CHECK(status(s, "ORPHAN1") == "PAID");

        const std::string down = "http://127.0.0.1:" + std::to_string(free_port());
        Run unreachable = s.run({"bills", "list", "--url", down});
        CHECK(unreachable.code == 3);
        CHECK(contains(unreachable.output, "is paybridged running?"));
    }

    TEST_CASE("listen --status 503: paybridged retries the same event (same webhook-id)")
    {
        Stack s({"--status", "503"});
        create(s, "R1", 100);
        REQUIRE(trigger(s, {"alipay", "paid", "--bill", "R1"}).code == 0);
        const bool retried = s.wait_received(
            [](const std::vector<Received>& all) {
                for (const auto& r : all) {
                    if (r.bill_id == "R1" && r.verified && r.delivery >= 2) {
                        return true;
                    }
                }
                return false;
            },
            std::chrono::seconds(30));
        CHECK_MESSAGE(retried, s.logs());
        std::string id;
        for (const auto& r : s.received()) {
            CHECK(r.answered == 503);
            if (id.empty()) {
                id = r.webhook_id;
            }
            CHECK(r.webhook_id == id);
        }
    }
}

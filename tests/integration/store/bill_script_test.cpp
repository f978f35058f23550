// Every rule of the bill state machine (store/bill.lua), through RedisBillStore against a real
// redis-server: outcomes, the bill after, and exactly what was appended to history, outbox and
// anomalies.

#include "store/bill_script.hpp"

#include "core/async.hpp"
#include "core/error.hpp"
#include "tests/integration/store/bill_events.hpp"
#include "tests/integration/store/store_fixture.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <doctest/doctest.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace asio = boost::asio;
using paybridge::ApplyOutcome;
using paybridge::ApplyResult;
using paybridge::EventKind;
using paybridge::NewBill;
using paybridge::PaymentEvent;
using paybridge::RegisterOutcome;
using paybridge::Result;
using paybridge::test::num;
using paybridge::test::parse_json;
using paybridge::test::str;
using paybridge::test::StoreFixture;
using namespace paybridge::test::bill_events;
using namespace std::chrono_literals;

namespace {

void check_result(const ApplyResult& r, ApplyOutcome outcome, const std::string& anomaly, const std::string& status)
{
    CHECK(paybridge::to_string(r.outcome) == paybridge::to_string(outcome));
    CHECK(r.anomaly == anomaly);
    CHECK(r.status == status);
}

/// The last event in the bill's history, parsed.
rapidjson::Document last_event(StoreFixture& f, const std::string& id)
{
    const auto view = f.get(id);
    REQUIRE(!view.events_json.empty());
    return parse_json(view.events_json.back());
}

/// The newest anomaly record of the bill's shard, parsed.
rapidjson::Document last_anomaly(StoreFixture& f, const std::string& id)
{
    const std::string key = f.store->keys().anomalies(f.store->keys().shard_of(id));
    const auto r = f.cmd({"XREVRANGE", key, "+", "-", "COUNT", "1"});
    REQUIRE(r.elements.size() == 1);
    const auto& fields = r.elements[0].elements.at(1).elements;
    for (std::size_t i = 0; i + 1 < fields.size(); i += 2) {
        if (fields[i].str == "anomaly") {
            return parse_json(fields[i + 1].str);
        }
    }
    FAIL("anomaly entry without an anomaly field");
    return {};
}

asio::awaitable<void> apply_into(paybridge::store::RedisBillStore* store, PaymentEvent ev,
                                 std::vector<ApplyOutcome>* out, int* done)
{
    Result<ApplyResult> r = co_await store->apply(std::move(ev));
    if (r) {
        out->push_back(r->outcome);
    }
    ++*done;
}

}  // namespace

TEST_SUITE("integration/store/bill_script")
{
    TEST_CASE("the script is embedded verbatim from store/bill.lua")
    {
        // Byte for byte: configure_file's @VAR@ substitution, the raw string's delimiter, or a
        // stale configure would each change what Redis runs without a compile error.
        std::ifstream in(PAYBRIDGE_BILL_LUA_PATH, std::ios::binary);
        REQUIRE_MESSAGE(in.good(), "cannot read " PAYBRIDGE_BILL_LUA_PATH);
        std::ostringstream file;
        file << in.rdbuf();
        const std::string source = file.str();
        REQUIRE(!source.empty());
        const std::string_view script = paybridge::store::bill_script();
        const auto differ = std::mismatch(script.begin(), script.end(), source.begin(), source.end());
        const auto first_difference = static_cast<std::size_t>(differ.first - script.begin());
        CAPTURE(first_difference);
        CHECK(script.size() == source.size());
        CHECK_MESSAGE(script == source, "first difference at byte " << first_difference << ": \""
                                            << source.substr(first_difference, 60) << "\"");
        CHECK(script.find("local function apply_payment") != std::string_view::npos);
        CHECK(script.find("return redis.error_reply") != std::string_view::npos);
    }

    TEST_CASE("register creates a PENDING bill, version 1, no events")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        NewBill nb = new_bill("B-1", 1234);
        nb.description = "Café / \"quoted\" \\ tab\t";
        nb.expires_at = "2024-06-01T00:00:00.000Z";
        nb.metadata_json = R"({"z":1,"a":{"y":[1,2],"b":"x"}})";
        const auto r = f.register_bill(nb);
        CHECK(r.outcome == RegisterOutcome::created);
        CHECK(r.orphans_applied == 0);
        const auto doc = parse_json(r.bill_json);
        CHECK(str(doc, "id") == "B-1");
        CHECK(str(doc, "status") == "PENDING");
        CHECK(num(doc, "amount_fen") == 1234);
        CHECK(str(doc, "currency") == "CNY");
        CHECK(str(doc, "customer_id") == "cust-1");
        CHECK(str(doc, "description") == nb.description);
        CHECK(str(doc, "expires_at") == "2024-06-01T00:00:00.000Z");
        CHECK(doc["metadata"].IsObject());
        CHECK(doc["metadata"]["a"]["b"] == "x");
        CHECK(num(doc, "paid_fen") == 0);
        CHECK(num(doc, "refunded_fen") == 0);
        CHECK(paybridge::test::is_null(doc, "provider"));
        CHECK(paybridge::test::is_null(doc, "provider_txn_id"));
        CHECK(paybridge::test::is_null(doc, "paid_at"));
        CHECK(num(doc, "version") == 1);
        CHECK(str(doc, "created_at") == str(doc, "updated_at"));
        CHECK_FALSE(doc.HasMember("seq"));
        // The C++ rendering (get_bill) and the Lua rendering are the same text.
        CHECK(f.get("B-1").bill_json == r.bill_json);
        CHECK(f.hist_len("B-1") == 0);
        CHECK(f.outbox_len("B-1") == 0);
        // Metadata is stored canonical (keys sorted, compact).
        CHECK(f.cmd({"HGET", f.store->keys().bill("B-1"), "metadata"}).str == R"({"a":{"b":"x","y":[1,2]},"z":1})");
    }

    TEST_CASE("register is idempotent: identical (also with metadata keys reordered) or conflict")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        NewBill nb = new_bill("B-2");
        nb.metadata_json = R"({"order":"o-1","n":2})";
        REQUIRE(f.register_bill(nb).outcome == RegisterOutcome::created);
        CHECK(f.register_bill(nb).outcome == RegisterOutcome::identical);
        NewBill reordered = nb;
        reordered.metadata_json = R"({ "n": 2, "order": "o-1" })";
        CHECK(f.register_bill(reordered).outcome == RegisterOutcome::identical);

        NewBill other_amount = nb;
        other_amount.amount_fen = 1001;
        const auto conflict = f.register_bill(other_amount);
        CHECK(conflict.outcome == RegisterOutcome::conflict);
        CHECK(num(parse_json(conflict.bill_json), "amount_fen") == 1000);  // the stored bill
        NewBill other_customer = nb;
        other_customer.customer_id = "cust-2";
        CHECK(f.register_bill(other_customer).outcome == RegisterOutcome::conflict);
        NewBill other_meta = nb;
        other_meta.metadata_json = R"({"order":"o-2","n":2})";
        CHECK(f.register_bill(other_meta).outcome == RegisterOutcome::conflict);
        NewBill no_meta = nb;
        no_meta.metadata_json.clear();
        CHECK(f.register_bill(no_meta).outcome == RegisterOutcome::conflict);
        CHECK(num(f.bill("B-2"), "version") == 1);

        NewBill bad = new_bill("B-3");
        bad.metadata_json = "[1,2]";
        const auto r = f.run(f.store->register_bill(bad));
        CHECK(r.error() == paybridge::make_error_code(paybridge::errc::invalid_argument));
    }

    TEST_CASE("payment: PENDING -> PAID with one event in history and outbox")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-10"));
        check_result(f.apply(alipay_payment("B-10", "T-1", 1000, "N-1")), ApplyOutcome::applied, "", "PAID");

        const auto bill = f.bill("B-10");
        CHECK(str(bill, "status") == "PAID");
        CHECK(num(bill, "paid_fen") == 1000);
        CHECK(str(bill, "provider") == "alipay");
        CHECK(str(bill, "provider_txn_id") == "T-1");
        CHECK(str(bill, "paid_at") == "2024-05-01T10:00:00.000Z");
        CHECK(num(bill, "version") == 2);
        CHECK(f.hist_len("B-10") == 1);
        CHECK(f.outbox_len("B-10") == 1);
        CHECK(f.anomalies_total() == 0);

        const auto ev = last_event(f, "B-10");
        CHECK(str(ev, "id") == "evt_B-10_1");
        CHECK(str(ev, "type") == "bill.paid");
        CHECK(str(ev, "bill_id") == "B-10");
        CHECK(num(ev, "sequence") == 1);
        CHECK(str(ev["bill"], "status") == "PAID");
        CHECK(num(ev["bill"], "version") == 2);
        CHECK_FALSE(ev["bill"].HasMember("seq"));
        CHECK(str(ev["data"], "provider") == "alipay");
        CHECK(str(ev["data"], "channel") == "alipay");
        CHECK(str(ev["data"], "kind") == "payment");
        CHECK(str(ev["data"], "notification_id") == "N-1");
        CHECK(str(ev["data"], "provider_txn_id") == "T-1");
        CHECK(num(ev["data"], "amount_fen") == 1000);
        CHECK(str(ev["data"], "provider_status") == "TRADE_SUCCESS");
        CHECK(str(ev["data"], "occurred_at") == "2024-05-01T10:00:00.000Z");
        // The bill inside the event is exactly what get_bill renders now.
        CHECK(ev["bill"] == f.bill("B-10"));

        // The outbox entry carries the same event with its id, bill and type as fields.
        const auto entries = f.cmd({"XRANGE", f.store->keys().outbox(f.store->keys().shard_of("B-10")), "-", "+"});
        REQUIRE(entries.elements.size() == 1);
        const auto& fields = entries.elements[0].elements.at(1).elements;
        REQUIRE(fields.size() == 8);
        CHECK(fields[0].str == "id");
        CHECK(fields[1].str == "evt_B-10_1");
        CHECK(fields[3].str == "B-10");
        CHECK(fields[5].str == "bill.paid");
        CHECK(fields[7].str == f.get("B-10").events_json.at(0));
    }

    TEST_CASE("exact repeat and TRADE_FINISHED after TRADE_SUCCESS are duplicates that append nothing")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-11"));
        f.apply(alipay_payment("B-11", "T-1", 1000, "N-1"));
        check_result(f.apply(alipay_payment("B-11", "T-1", 1000, "N-1")), ApplyOutcome::duplicate, "", "PAID");
        // New notify_id, same trade: Alipay's TRADE_FINISHED after TRADE_SUCCESS.
        check_result(f.apply(alipay_payment("B-11", "T-1", 1000, "N-2", "TRADE_FINISHED")), ApplyOutcome::duplicate,
                     "", "PAID");
        CHECK(f.hist_len("B-11") == 1);
        CHECK(f.outbox_len("B-11") == 1);
        CHECK(num(f.bill("B-11"), "version") == 2);
        // The same notification id on another channel is another notification.
        PaymentEvent v2 = wechat_payment("B-11", "T-1", 1000, "N-1");
        v2.provider = "alipay";
        v2.channel = "wechatpay_v2";
        check_result(f.apply(v2), ApplyOutcome::duplicate, "", "PAID");
        CHECK(f.hist_len("B-11") == 1);
        CHECK(f.outbox_len("B-11") == 1);
        // Markers of notification ids live in the bill hash (one HMGET answers "seen?" and "status").
        CHECK(f.cmd({"HEXISTS", f.store->keys().bill("B-11"), "n:wechatpay_v2:N-1"}).integer == 1);
        CHECK(f.cmd({"EXISTS", f.store->keys().seen("B-11")}).integer == 0);
    }

    TEST_CASE("amount mismatch: anomaly once per (txn, amount), bill and version unchanged")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-12"));
        check_result(f.apply(alipay_payment("B-12", "T-1", 999, "N-1")), ApplyOutcome::anomaly, "amount_mismatch",
                     "PENDING");
        auto bill = f.bill("B-12");
        CHECK(str(bill, "status") == "PENDING");
        CHECK(num(bill, "version") == 1);
        CHECK(f.hist_len("B-12") == 1);
        CHECK(f.outbox_len("B-12") == 1);
        CHECK(f.anomalies_len("B-12") == 1);
        const auto ev = last_event(f, "B-12");
        CHECK(str(ev, "type") == "bill.anomaly");
        CHECK(num(ev, "sequence") == 1);
        CHECK(str(ev["data"], "anomaly") == "amount_mismatch");
        CHECK(num(ev["data"], "expected") == 1000);
        CHECK(num(ev["data"], "received") == 999);
        const auto anomaly = last_anomaly(f, "B-12");
        CHECK(str(anomaly, "id") == "anm_B-12_1");
        CHECK(str(anomaly, "kind") == "amount_mismatch");
        CHECK(str(anomaly, "bill_id") == "B-12");
        CHECK(str(anomaly, "provider") == "alipay");
        CHECK(str(anomaly, "notification_id") == "N-1");
        CHECK(str(anomaly, "provider_txn_id") == "T-1");
        CHECK(num(anomaly["detail"], "expected") == 1000);
        CHECK(num(anomaly["detail"], "received") == 999);
        CHECK(str(anomaly, "event_id") == "evt_B-12_1");

        // The provider's retry with a new notification id is not recorded again.
        check_result(f.apply(alipay_payment("B-12", "T-1", 999, "N-2")), ApplyOutcome::duplicate, "", "PENDING");
        // Another currency is a mismatch too.
        PaymentEvent usd = alipay_payment("B-12", "T-1", 1000, "N-3");
        usd.currency = "USD";
        check_result(f.apply(usd), ApplyOutcome::anomaly, "amount_mismatch", "PENDING");
        CHECK(f.anomalies_len("B-12") == 2);
        CHECK(num(f.bill("B-12"), "version") == 1);
        // The right amount still pays the bill.
        check_result(f.apply(alipay_payment("B-12", "T-1", 1000, "N-4")), ApplyOutcome::applied, "", "PAID");
        CHECK(num(last_event(f, "B-12"), "sequence") == 3);
    }

    TEST_CASE("unknown bill: orphan + unknown_bill anomaly once, applied with every check at registration")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        check_result(f.apply(alipay_payment("B-20", "T-1", 1000, "N-1")), ApplyOutcome::orphaned, "unknown_bill", "");
        const std::string orphans = f.store->keys().orphans("B-20");
        CHECK(f.integer({"LLEN", orphans}) == 1);
        CHECK(f.anomalies_len("B-20") == 1);
        CHECK(f.outbox_len("B-20") == 1);
        CHECK(f.integer({"EXISTS", f.store->keys().bill("B-20")}) == 0);

        // The outbox event has no bill; it is the bill's first unknown_bill event: sequence 1.
        const auto entries = f.cmd({"XRANGE", f.store->keys().outbox(f.store->keys().shard_of("B-20")), "-", "+"});
        const auto ev = parse_json(entries.elements.at(0).elements.at(1).elements.at(7).str);
        CHECK(str(ev, "type") == "bill.anomaly");
        CHECK(ev["bill"].IsNull());
        CHECK(num(ev, "sequence") == 1);
        CHECK(str(ev, "id") == "evt_B-20_u1");
        CHECK(str(ev["data"], "anomaly") == "unknown_bill");
        const auto anomaly = last_anomaly(f, "B-20");
        CHECK(str(anomaly, "kind") == "unknown_bill");
        CHECK(str(anomaly, "event_id") == str(ev, "id"));

        // Retries (same or new notification id) keep one orphan and one anomaly.
        check_result(f.apply(alipay_payment("B-20", "T-1", 1000, "N-1")), ApplyOutcome::orphaned, "", "");
        check_result(f.apply(alipay_payment("B-20", "T-1", 1000, "N-2")), ApplyOutcome::orphaned, "", "");
        CHECK(f.integer({"LLEN", orphans}) == 1);
        CHECK(f.anomalies_len("B-20") == 1);
        CHECK(f.outbox_len("B-20") == 1);

        const auto reg = f.register_bill(new_bill("B-20"));
        CHECK(reg.outcome == RegisterOutcome::created);
        CHECK(reg.orphans_applied == 1);
        CHECK(reg.anomalies.empty());
        const auto bill = parse_json(reg.bill_json);
        CHECK(str(bill, "status") == "PAID");
        CHECK(str(bill, "provider_txn_id") == "T-1");
        CHECK(num(bill, "version") == 2);
        CHECK(f.integer({"EXISTS", orphans}) == 0);
        // The history holds the unknown_bill event (sequence 1) and the payment (sequence 2).
        CHECK(f.hist_len("B-20") == 2);
        const auto history = f.get("B-20").events_json;
        REQUIRE(history.size() == 2);
        CHECK(str(parse_json(history[0]), "id") == "evt_B-20_u1");
        CHECK(num(parse_json(history[0]), "sequence") == 1);
        CHECK(num(parse_json(history[1]), "sequence") == 2);
        CHECK(f.outbox_len("B-20") == 2);
        // The bill's own events continue after the unknown_bill event: sequence 2.
        CHECK(str(last_event(f, "B-20"), "id") == "evt_B-20_2");
        CHECK(num(last_event(f, "B-20"), "sequence") == 2);
        // The replayed orphan kept its notification id: the provider's retry is now a duplicate.
        check_result(f.apply(alipay_payment("B-20", "T-1", 1000, "N-1")), ApplyOutcome::duplicate, "", "PAID");
        CHECK(f.register_bill(new_bill("B-20")).outcome == RegisterOutcome::identical);
    }

    TEST_CASE("the same refund notified through API v3 and v2 before its bill exists is one orphan")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        const auto orphans = f.store->keys().orphans("B-21");
        PaymentEvent v3 = wechat_refund("B-21", "WX-1", "R-1", 400, "W-1");
        PaymentEvent v2 = v3;
        v2.channel = "wechatpay_v2";
        v2.provider_status = "SUCCESS";  // v3 says REFUND.SUCCESS
        v2.notification_id = "v2:refund:R-1:SUCCESS";
        check_result(f.apply(std::move(v3)), ApplyOutcome::orphaned, "unknown_bill", "");
        check_result(f.apply(std::move(v2)), ApplyOutcome::orphaned, "", "");
        CHECK(f.integer({"LLEN", orphans}) == 1);
        CHECK(f.anomalies_len("B-21") == 1);
        CHECK(f.outbox_len("B-21") == 1);

        const auto reg = f.register_bill(new_bill("B-21"));
        CHECK(reg.orphans_applied == 1);
        const auto bill = parse_json(reg.bill_json);
        CHECK(str(bill, "status") == "PARTIALLY_REFUNDED");
        CHECK(num(bill, "refunded_fen") == 400);
    }

    TEST_CASE("orphans stored by the previous version (JSON numbers and booleans) still replay at registration")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        // The JSON payload the script took before events became ARGV fields, as it is kept in Redis.
        const std::string orphans = f.store->keys().orphans("B-22");
        f.cmd({"RPUSH", orphans,
               R"({"provider":"alipay","channel":"alipay","kind":"payment","notification_id":"N-1","account":"A",)"
               R"("bill_id":"B-22","provider_txn_id":"T-1","currency":"CNY","total_fen":1000,"refund_id":"",)"
               R"("refund_fen":0,"refund_cumulative":false,"provider_status":"TRADE_SUCCESS","occurred_at":""})"});
        f.cmd({"RPUSH", orphans,
               R"({"provider":"alipay","channel":"alipay","kind":"refund","notification_id":"N-2","account":"A",)"
               R"("bill_id":"B-22","provider_txn_id":"T-1","currency":"CNY","total_fen":1000,"refund_id":"R-1",)"
               R"("refund_fen":400,"refund_cumulative":true,"provider_status":"TRADE_SUCCESS","occurred_at":""})"});
        const auto reg = f.register_bill(new_bill("B-22"));
        CHECK(reg.orphans_applied == 2);
        const auto bill = parse_json(reg.bill_json);
        CHECK(str(bill, "status") == "PARTIALLY_REFUNDED");
        CHECK(num(bill, "paid_fen") == 1000);
        CHECK(num(bill, "refunded_fen") == 400);
        // A later cumulative refund notification counts from the replayed total.
        PaymentEvent more = alipay_payment("B-22", "T-1", 1000, "N-3");
        more.kind = EventKind::refund;
        more.refund_id = "R-2";
        more.refund_fen = 1000;
        more.refund_cumulative = true;
        check_result(f.apply(more), ApplyOutcome::applied, "", "REFUNDED");
        CHECK(num(f.bill("B-22"), "refunded_fen") == 1000);
    }

    TEST_CASE("strings that need JSON escapes arrive intact in the bill, the event and its data")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        // Quotes, backslashes, control characters, a slash and non-ASCII text in the CRM's fields...
        NewBill nb = new_bill("B-30");
        nb.customer_id = "c\"1\\";
        nb.description = "line 1\nline 2\t\x01 a/b \xE5\xA4\xA7";
        nb.metadata_json = R"({"note":"say \"hi\"\\"})";
        REQUIRE(f.register_bill(nb).outcome == RegisterOutcome::created);
        // ... and in the provider's: the script is told this event's strings need escaping.
        PaymentEvent ev = alipay_payment("B-30", "T\"1\\/", 1000, "N\n1");
        ev.provider_status = "TRADE_\"SUCCESS\"";
        check_result(f.apply(ev), ApplyOutcome::applied, "", "PAID");

        const auto event = last_event(f, "B-30");
        const auto bill = f.bill("B-30");  // rendered by C++ from the hash
        CHECK(event["bill"] == bill);      // rendered by the script: the same object
        CHECK(str(event["bill"], "customer_id") == nb.customer_id);
        CHECK(str(event["bill"], "description") == nb.description);
        CHECK(str(event["bill"]["metadata"], "note") == "say \"hi\"\\");
        CHECK(str(event["bill"], "provider_txn_id") == "T\"1\\/");
        CHECK(str(event["data"], "provider_txn_id") == "T\"1\\/");
        CHECK(str(event["data"], "notification_id") == "N\n1");
        CHECK(str(event["data"], "provider_status") == "TRADE_\"SUCCESS\"");

        // A refund with plain strings (the script's fast path) on that bill renders it the same way.
        check_result(f.apply(wechat_refund("B-30", "T\"1\\/", "R-1", 400, "N-2")), ApplyOutcome::anomaly,
                     "refund_other_txn", "PAID");
        PaymentEvent refund = alipay_refund("B-30", "T\"1\\/", "R-2", 400, "N-3");
        check_result(f.apply(refund), ApplyOutcome::applied, "", "PARTIALLY_REFUNDED");
        const auto refunded = last_event(f, "B-30");
        CHECK(refunded["bill"] == f.bill("B-30"));
        CHECK(str(refunded["bill"], "description") == nb.description);
    }

    TEST_CASE("a bill stored without the pre-rendered j_id / j_fixed fields renders the same events")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        NewBill nb = new_bill("B-31");
        nb.description = "quote \" here";
        nb.metadata_json = R"({"k":"v"})";
        REQUIRE(f.register_bill(nb).outcome == RegisterOutcome::created);
        // As an earlier version stored it.
        f.cmd({"HDEL", f.store->keys().bill("B-31"), "j_id", "j_fixed"});
        check_result(f.apply(alipay_payment("B-31", "T-1", 1000, "N-1")), ApplyOutcome::applied, "", "PAID");
        const auto event = last_event(f, "B-31");
        CHECK(event["bill"] == f.bill("B-31"));
        CHECK(str(event["bill"], "description") == "quote \" here");
        CHECK(str(event["bill"]["metadata"], "k") == "v");
        CHECK(f.register_bill(nb).outcome == RegisterOutcome::identical);
    }

    TEST_CASE("orphans keep their order and their checks: a wrong amount is a mismatch at registration")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.apply(alipay_payment("B-21", "T-1", 500, "N-1"));
        f.apply(close_event("B-21", "N-2"));
        CHECK(f.integer({"LLEN", f.store->keys().orphans("B-21")}) == 2);
        CHECK(f.anomalies_len("B-21") == 2);
        const auto reg = f.register_bill(new_bill("B-21", 1000));
        CHECK(reg.orphans_applied == 2);
        // What the replay recorded, for the caller's anomaly counter.
        CHECK(reg.anomalies == std::vector<std::string>{"amount_mismatch"});
        const auto bill = parse_json(reg.bill_json);
        // amount_mismatch first (bill unchanged), then the close applies.
        CHECK(str(bill, "status") == "CLOSED");
        CHECK(num(bill, "version") == 2);
        const auto view = f.get("B-21");
        // The two unknown_bill events (sequence 1, 2), then what registration applied (3, 4).
        REQUIRE(view.events_json.size() == 4);
        for (std::size_t i = 0; i < 4; ++i) {
            CHECK(num(parse_json(view.events_json[i]), "sequence") == static_cast<std::int64_t>(i + 1));
        }
        CHECK(str(parse_json(view.events_json[0])["data"], "anomaly") == "unknown_bill");
        CHECK(str(parse_json(view.events_json[1])["data"], "anomaly") == "unknown_bill");
        CHECK(str(parse_json(view.events_json[2])["data"], "anomaly") == "amount_mismatch");
        CHECK(str(parse_json(view.events_json[3]), "type") == "bill.closed");
        CHECK(f.anomalies_len("B-21") == 3);
    }

    TEST_CASE("unusable: one anomaly per notification and no marker so that a readable copy still applies")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-U1"));
        auto unusable = [](const std::string& bill, const std::string& notify_id) {
            PaymentEvent ev = alipay_payment(bill, "T-1", -1, notify_id);
            ev.kind = EventKind::unusable;
            ev.problem = "total_amount \"10.001\" is not an amount in yuan";
            return ev;
        };
        check_result(f.apply(unusable("B-U1", "N-1")), ApplyOutcome::anomaly, "unusable_notification", "PENDING");
        CHECK(num(f.bill("B-U1"), "version") == 1);
        CHECK(f.anomalies_len("B-U1") == 1);
        CHECK(f.outbox_len("B-U1") == 1);
        const auto ev = last_event(f, "B-U1");
        CHECK(str(ev, "type") == "bill.anomaly");
        CHECK(num(ev, "sequence") == 1);
        CHECK(str(ev["data"], "anomaly") == "unusable_notification");
        CHECK(str(ev["data"], "problem") == "total_amount \"10.001\" is not an amount in yuan");
        CHECK(paybridge::test::is_null(ev["data"], "amount_fen"));
        CHECK(str(ev["data"], "notification_id") == "N-1");
        const auto anomaly = last_anomaly(f, "B-U1");
        CHECK(str(anomaly, "kind") == "unusable_notification");
        CHECK(str(anomaly["detail"], "problem") == "total_amount \"10.001\" is not an amount in yuan");
        CHECK(str(anomaly, "event_id") == "evt_B-U1_1");
        // The provider's retries are recorded once; the notification's marker is not set.
        check_result(f.apply(unusable("B-U1", "N-1")), ApplyOutcome::anomaly, "", "PENDING");
        CHECK(f.anomalies_len("B-U1") == 1);
        CHECK(f.hist_len("B-U1") == 1);
        CHECK(f.integer({"HEXISTS", f.store->keys().bill("B-U1"), "n:alipay:N-1"}) == 0);
        // A paybridge that reads it applies the same notification; one that still cannot read it
        // then hears "duplicate" (handled), which it acknowledges.
        check_result(f.apply(alipay_payment("B-U1", "T-1", 1000, "N-1")), ApplyOutcome::applied, "", "PAID");
        CHECK(num(last_event(f, "B-U1"), "sequence") == 2);
        check_result(f.apply(unusable("B-U1", "N-1")), ApplyOutcome::duplicate, "", "PAID");
        CHECK(f.anomalies_len("B-U1") == 1);

        // Before its bill: in the bill's history as an unknown_bill event is, numbered before the
        // bill's own events, and not replayed at registration (there is nothing to apply).
        check_result(f.apply(unusable("B-U2", "N-1")), ApplyOutcome::anomaly, "unusable_notification", "");
        check_result(f.apply(unusable("B-U2", "N-1")), ApplyOutcome::anomaly, "", "");
        CHECK(f.anomalies_len("B-U2") == 1);
        CHECK(str(last_anomaly(f, "B-U2"), "id") == "anm_B-U2_u1");
        const auto reg = f.register_bill(new_bill("B-U2"));
        CHECK(reg.orphans_applied == 0);
        CHECK(str(parse_json(reg.bill_json), "status") == "PENDING");
        check_result(f.apply(alipay_payment("B-U2", "T-1", 1000, "N-2")), ApplyOutcome::applied, "", "PAID");
        const auto history = f.get("B-U2").events_json;
        REQUIRE(history.size() == 2);
        CHECK(str(parse_json(history[0]), "id") == "evt_B-U2_u1");
        CHECK(num(parse_json(history[0]), "sequence") == 1);
        CHECK(str(parse_json(history[1]), "id") == "evt_B-U2_2");
        CHECK(num(parse_json(history[1]), "sequence") == 2);

        // Mixed with orphans: one numbering (u1 orphan, u2 unusable, u3 orphan), only the orphans
        // replayed, and the bill's own events after them.
        check_result(f.apply(alipay_payment("B-U3", "T-1", 1000, "N-1")), ApplyOutcome::orphaned, "unknown_bill", "");
        check_result(f.apply(unusable("B-U3", "N-2")), ApplyOutcome::anomaly, "unusable_notification", "");
        PaymentEvent refund = wechat_refund("B-U3", "T-1", "R-1", 400, "N-3");
        refund.provider = "alipay";
        refund.channel = "alipay";
        check_result(f.apply(refund), ApplyOutcome::orphaned, "unknown_bill", "");
        const auto reg3 = f.register_bill(new_bill("B-U3"));
        CHECK(reg3.orphans_applied == 2);
        CHECK(str(parse_json(reg3.bill_json), "status") == "PARTIALLY_REFUNDED");
        std::vector<std::string> ids;
        for (const auto& e : f.get("B-U3").events_json) {
            ids.push_back(str(parse_json(e), "id"));
        }
        CHECK(ids == std::vector<std::string>{"evt_B-U3_u1", "evt_B-U3_u2", "evt_B-U3_u3", "evt_B-U3_4",
                                              "evt_B-U3_5"});
    }

    TEST_CASE("kind none is ignored: nothing stored but the notification marker")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-22"));
        PaymentEvent wait = alipay_payment("B-22", "T-1", 1000, "N-1", "WAIT_BUYER_PAY");
        wait.kind = EventKind::none;
        check_result(f.apply(wait), ApplyOutcome::ignored, "", "PENDING");
        check_result(f.apply(wait), ApplyOutcome::duplicate, "", "PENDING");
        CHECK(f.hist_len("B-22") == 0);
        CHECK(f.outbox_total() == 0);
        CHECK(num(f.bill("B-22"), "version") == 1);
        // For an unknown bill it is not an orphan either.
        PaymentEvent stray = wait;
        stray.bill_id = "B-nope";
        check_result(f.apply(stray), ApplyOutcome::ignored, "", "");
        CHECK(f.integer({"EXISTS", f.store->keys().orphans("B-nope")}) == 0);
        CHECK(f.anomalies_total() == 0);
    }

    TEST_CASE("close: PENDING -> CLOSED, again duplicate, paid after close wins with an anomaly")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-30"));
        check_result(f.apply(close_event("B-30", "N-1")), ApplyOutcome::applied, "", "CLOSED");
        CHECK(str(last_event(f, "B-30"), "type") == "bill.closed");
        CHECK(num(f.bill("B-30"), "version") == 2);
        check_result(f.apply(close_event("B-30", "N-2")), ApplyOutcome::duplicate, "", "CLOSED");
        CHECK(f.hist_len("B-30") == 1);

        check_result(f.apply(alipay_payment("B-30", "T-1", 1000, "N-3")), ApplyOutcome::applied, "paid_after_close",
                     "PAID");
        const auto bill = f.bill("B-30");
        CHECK(str(bill, "status") == "PAID");
        CHECK(num(bill, "paid_fen") == 1000);
        CHECK(num(bill, "version") == 3);
        // One event (bill.paid, flagged) and one anomaly pointing at it.
        CHECK(f.hist_len("B-30") == 2);
        const auto ev = last_event(f, "B-30");
        CHECK(str(ev, "type") == "bill.paid");
        CHECK(str(ev["data"], "anomaly") == "paid_after_close");
        CHECK(f.anomalies_len("B-30") == 1);
        const auto anomaly = last_anomaly(f, "B-30");
        CHECK(str(anomaly, "kind") == "paid_after_close");
        CHECK(str(anomaly, "event_id") == str(ev, "id"));

        // Close after paid: anomaly once, bill stays PAID.
        check_result(f.apply(close_event("B-30", "N-4")), ApplyOutcome::anomaly, "close_after_paid", "PAID");
        check_result(f.apply(close_event("B-30", "N-5")), ApplyOutcome::duplicate, "", "PAID");
        CHECK(f.anomalies_len("B-30") == 2);
        // closed, paid (flagged), close_after_paid: the repeat appended nothing.
        CHECK(f.hist_len("B-30") == 3);
        CHECK(f.outbox_len("B-30") == 3);
        CHECK(num(f.bill("B-30"), "version") == 3);
    }

    TEST_CASE("duplicate_payment: another transaction on a paid bill, once per transaction")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-31"));
        f.apply(alipay_payment("B-31", "T-1", 1000, "N-1"));
        check_result(f.apply(wechat_payment("B-31", "WX-9", 1000, "W-1")), ApplyOutcome::anomaly, "duplicate_payment",
                     "PAID");
        check_result(f.apply(wechat_payment("B-31", "WX-9", 1000, "W-2")), ApplyOutcome::duplicate, "", "PAID");
        CHECK(f.hist_len("B-31") == 2);  // paid, duplicate_payment
        CHECK(f.outbox_len("B-31") == 2);
        const auto bill = f.bill("B-31");
        CHECK(str(bill, "provider") == "alipay");
        CHECK(str(bill, "provider_txn_id") == "T-1");
        CHECK(num(bill, "paid_fen") == 1000);
        CHECK(num(bill, "version") == 2);
        CHECK(f.anomalies_len("B-31") == 1);
        const auto anomaly = last_anomaly(f, "B-31");
        CHECK(str(anomaly, "kind") == "duplicate_payment");
        CHECK(str(anomaly, "provider_txn_id") == "WX-9");
        CHECK(str(anomaly["detail"], "paid_provider_txn_id") == "T-1");
        // A third transaction for another amount is a second payment too, not an amount mismatch.
        check_result(f.apply(wechat_payment("B-31", "WX-10", 500, "W-4")), ApplyOutcome::anomaly, "duplicate_payment",
                     "PAID");
        CHECK(num(last_anomaly(f, "B-31")["detail"], "received") == 500);
        // The paying transaction again for another amount is a mismatch.
        check_result(f.apply(alipay_payment("B-31", "T-1", 900, "N-5")), ApplyOutcome::anomaly, "amount_mismatch",
                     "PAID");
        CHECK(f.anomalies_len("B-31") == 3);
        // A refund of that second transaction does not touch this bill's money.
        check_result(f.apply(wechat_refund("B-31", "WX-9", "R-dup", 1000, "W-3")), ApplyOutcome::anomaly,
                     "refund_other_txn", "PAID");
        CHECK(num(f.bill("B-31"), "refunded_fen") == 0);
    }

    TEST_CASE("paid_after_refund: the payment still held takes over a bill refunded in full")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-32"));
        f.apply(alipay_payment("B-32", "T-1", 1000, "N-1"));
        check_result(f.apply(wechat_payment("B-32", "WX-2", 1000, "W-1")), ApplyOutcome::anomaly, "duplicate_payment",
                     "PAID");
        // WX-2 is refunded in part while it is the duplicate: a refund of another transaction.
        check_result(f.apply(wechat_refund("B-32", "WX-2", "R-W", 200, "W-2")), ApplyOutcome::anomaly,
                     "refund_other_txn", "PAID");
        const std::int64_t outbox_before = f.outbox_total();

        // T-1 refunded in full: the bill is REFUNDED (its event), then WX-2, still holding 800 of
        // the bill's amount, becomes its payment (a second event, and an anomaly pointing at it).
        check_result(f.apply(alipay_refund("B-32", "T-1", "R-A", 1000, "N-2")), ApplyOutcome::applied,
                     "paid_after_refund", "PARTIALLY_REFUNDED");
        CHECK(f.outbox_total() - outbox_before == 2);
        const auto view = f.get("B-32");
        const auto refunded = parse_json(view.events_json.at(view.events_json.size() - 2));
        CHECK(str(refunded, "type") == "bill.refunded");
        CHECK(str(refunded["bill"], "status") == "REFUNDED");
        CHECK(str(refunded["bill"], "provider_txn_id") == "T-1");
        const auto paid = last_event(f, "B-32");
        CHECK(str(paid, "type") == "bill.paid");
        CHECK(str(paid["data"], "anomaly") == "paid_after_refund");
        CHECK(str(paid["data"], "provider") == "wechatpay");
        CHECK(str(paid["data"], "channel") == "wechatpay_v3");
        CHECK(str(paid["data"], "kind") == "payment");
        CHECK(str(paid["data"], "provider_txn_id") == "WX-2");
        CHECK(str(paid["data"], "provider_status") == "TRANSACTION.SUCCESS");
        // The payment as it was notified (W-1), not the refund that brought the change (N-2).
        CHECK(str(paid["data"], "notification_id") == "W-1");
        CHECK(num(paid["data"], "amount_fen") == 1000);
        CHECK(num(paid["data"], "refunded_fen") == 200);
        CHECK(str(paid["data"], "replaced_provider") == "alipay");
        CHECK(str(paid["data"], "replaced_provider_txn_id") == "T-1");
        const auto bill = f.bill("B-32");
        CHECK(str(bill, "status") == "PARTIALLY_REFUNDED");
        CHECK(str(bill, "provider") == "wechatpay");
        CHECK(str(bill, "provider_txn_id") == "WX-2");
        CHECK(num(bill, "paid_fen") == 1000);
        CHECK(num(bill, "refunded_fen") == 200);
        CHECK(str(bill, "paid_at") == "2024-05-01T10:00:00.000Z");
        CHECK(num(bill, "version") == 4);
        CHECK(str(paid["bill"], "provider_txn_id") == "WX-2");
        CHECK(num(paid["bill"], "version") == 4);
        const auto anomaly = last_anomaly(f, "B-32");
        CHECK(str(anomaly, "kind") == "paid_after_refund");
        CHECK(str(anomaly, "provider_txn_id") == "WX-2");
        CHECK(str(anomaly, "event_id") == str(paid, "id"));
        CHECK(str(anomaly["detail"], "replaced_provider_txn_id") == "T-1");
        // The bill's refunds are now WX-2's: R-W is known, T-1's R-A went with T-1.
        CHECK(f.cmd({"HGET", f.store->keys().refunds("B-32"), "R-W"}).str == "200");
        CHECK(f.cmd({"HEXISTS", f.store->keys().refunds("B-32"), "R-A"}).integer == 0);

        // R-W again (its v2 copy: another notification): known, nothing changes.
        PaymentEvent copy = wechat_refund("B-32", "WX-2", "R-W", 200, "W-3");
        copy.channel = "wechatpay_v2";
        check_result(f.apply(copy), ApplyOutcome::duplicate, "", "PARTIALLY_REFUNDED");
        // R-A again through another notification: a refund of T-1, which the bill no longer holds;
        // seen already, so neither money nor an anomaly.
        check_result(f.apply(alipay_refund("B-32", "T-1", "R-A", 1000, "N-3")), ApplyOutcome::duplicate, "",
                     "PARTIALLY_REFUNDED");
        // The rest of WX-2 refunded: REFUNDED, and nothing is left to take over (T-1 is refunded).
        check_result(f.apply(wechat_refund("B-32", "WX-2", "R-W2", 800, "W-4")), ApplyOutcome::applied, "",
                     "REFUNDED");
        CHECK(num(f.bill("B-32"), "refunded_fen") == 1000);
        CHECK(str(f.bill("B-32"), "provider_txn_id") == "WX-2");
    }

    TEST_CASE("paid_after_refund: another payment after a full refund pays the bill again")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-33"));
        f.apply(alipay_payment("B-33", "T-1", 1000, "N-1"));
        check_result(f.apply(alipay_refund("B-33", "T-1", "R-1", 1000, "N-2")), ApplyOutcome::applied, "", "REFUNDED");
        // Another amount: a second payment that cannot be the bill's.
        check_result(f.apply(wechat_payment("B-33", "WX-3", 999, "W-1")), ApplyOutcome::anomaly, "duplicate_payment",
                     "REFUNDED");
        check_result(f.apply(wechat_payment("B-33", "WX-2", 1000, "W-2")), ApplyOutcome::applied, "paid_after_refund",
                     "PAID");
        const auto bill = f.bill("B-33");
        CHECK(str(bill, "provider_txn_id") == "WX-2");
        CHECK(num(bill, "refunded_fen") == 0);
        CHECK(str(last_event(f, "B-33")["data"], "notification_id") == "W-2");
        CHECK(str(last_event(f, "B-33")["data"], "provider_status") == "TRANSACTION.SUCCESS");
        // The new payment's refunds count from 0: its full refund is counted in full.
        check_result(f.apply(wechat_refund("B-33", "WX-2", "R-2", 1000, "W-3")), ApplyOutcome::applied, "", "REFUNDED");
        // The replaced payment notified again (TRADE_FINISHED): known, neither a change nor an anomaly.
        const auto anomalies = f.anomalies_len("B-33");
        check_result(f.apply(alipay_payment("B-33", "T-1", 1000, "N-4", "TRADE_FINISHED")), ApplyOutcome::duplicate,
                     "", "REFUNDED");
        CHECK(f.anomalies_len("B-33") == anomalies);
        CHECK(str(f.bill("B-33"), "provider_txn_id") == "WX-2");
    }

    TEST_CASE("paid_after_refund: a refund that first shows another payment takes over and is the bill's refund")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-37"));
        f.apply(alipay_payment("B-37", "T-1", 1000, "N-1"));
        f.apply(alipay_refund("B-37", "T-1", "R-1", 1000, "N-2"));
        // WX-2's payment notification never came; its refund proves it (as on a PENDING bill).
        check_result(f.apply(wechat_refund("B-37", "WX-2", "R-2", 300, "W-2")), ApplyOutcome::applied,
                     "paid_after_refund", "PARTIALLY_REFUNDED");
        const auto view = f.get("B-37");
        REQUIRE(view.events_json.size() == 4);  // paid, refunded, paid (take-over), refunded (R-2)
        const auto paid = parse_json(view.events_json[2]);
        CHECK(str(paid, "type") == "bill.paid");
        CHECK(str(paid["data"], "anomaly") == "paid_after_refund");
        CHECK(str(paid["data"], "kind") == "refund");  // what showed the payment, as on a PENDING bill
        CHECK(str(paid["data"], "notification_id") == "W-2");
        CHECK(num(paid["data"], "refunded_fen") == 0);
        CHECK(str(paid["bill"], "status") == "PAID");
        const auto refunded = parse_json(view.events_json[3]);
        CHECK(str(refunded, "type") == "bill.refunded");
        CHECK(str(refunded["data"], "refund_id") == "R-2");
        CHECK(num(refunded["data"], "refund_fen") == 300);
        CHECK(str(refunded["bill"], "status") == "PARTIALLY_REFUNDED");
        CHECK(str(refunded["bill"], "provider_txn_id") == "WX-2");
        CHECK(f.cmd({"HGET", f.store->keys().refunds("B-37"), "R-2"}).str == "300");
        // Its copy through API v2, and WX-2's payment arriving at last: nothing new.
        PaymentEvent copy = wechat_refund("B-37", "WX-2", "R-2", 300, "W-3");
        copy.channel = "wechatpay_v2";
        check_result(f.apply(copy), ApplyOutcome::duplicate, "", "PARTIALLY_REFUNDED");
        check_result(f.apply(wechat_payment("B-37", "WX-2", 1000, "W-1")), ApplyOutcome::duplicate, "",
                     "PARTIALLY_REFUNDED");
        CHECK(f.hist_len("B-37") == 4);
    }

    TEST_CASE("a refund of another transaction recorded before the ledger existed is still known")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-38"));
        f.apply(alipay_payment("B-38", "T-1", 1000, "N-1"));
        // What the script wrote for such a refund before the ledger: one marker per refund id.
        f.cmd({"HSET", f.store->keys().seen("B-38"), "refund_other_txn:R-9", "1"});
        check_result(f.apply(wechat_refund("B-38", "WX-2", "R-9", 300, "W-1")), ApplyOutcome::duplicate, "", "PAID");
        CHECK(f.hist_len("B-38") == 1);
    }

    TEST_CASE("close of another trade is ignored, of a refunded one a duplicate, of the paying one an anomaly")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-34"));
        f.apply(wechat_payment("B-34", "WX-1", 1000, "W-1"));
        // The customer opened an Alipay trade, left it unpaid and paid with WeChat Pay; Alipay
        // closes its trade.
        PaymentEvent other = close_event("B-34", "N-1");
        other.provider_txn_id = "T-unpaid";
        check_result(f.apply(other), ApplyOutcome::ignored, "", "PAID");
        CHECK(f.hist_len("B-34") == 1);
        // The paying trade closed: a refund was missed.
        PaymentEvent own = wechat_payment("B-34", "WX-1", -1, "W-2");
        own.kind = EventKind::close;
        check_result(f.apply(own), ApplyOutcome::anomaly, "close_after_paid", "PAID");
        // Refunded in full, Alipay closes the trade: nothing new.
        f.register_bill(new_bill("B-35"));
        f.apply(alipay_payment("B-35", "T-1", 1000, "N-1"));
        f.apply(alipay_refund("B-35", "T-1", "R-1", 1000, "N-2"));
        PaymentEvent closed = close_event("B-35", "N-3");
        closed.provider_txn_id = "T-1";
        check_result(f.apply(closed), ApplyOutcome::duplicate, "", "REFUNDED");
        CHECK(f.hist_len("B-35") == 2);
    }

    TEST_CASE("a refund from another provider is of another transaction even when it names none")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-36"));
        f.apply(wechat_payment("B-36", "WX-1", 1000, "W-1"));
        check_result(f.apply(alipay_refund("B-36", "", "R-1", 300, "N-1")), ApplyOutcome::anomaly, "refund_other_txn",
                     "PAID");
        CHECK(num(f.bill("B-36"), "refunded_fen") == 0);
    }

    TEST_CASE("refunds (WeChat, per refund): partial then full")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-40"));
        f.apply(wechat_payment("B-40", "WX-1", 1000, "W-1"));
        check_result(f.apply(wechat_refund("B-40", "WX-1", "R-1", 300, "W-2")), ApplyOutcome::applied, "",
                     "PARTIALLY_REFUNDED");
        auto bill = f.bill("B-40");
        CHECK(num(bill, "refunded_fen") == 300);
        CHECK(num(bill, "paid_fen") == 1000);
        CHECK(num(bill, "version") == 3);
        const auto ev = last_event(f, "B-40");
        CHECK(str(ev, "type") == "bill.refunded");
        CHECK(str(ev["data"], "refund_id") == "R-1");
        CHECK(num(ev["data"], "refund_fen") == 300);
        CHECK(num(ev["data"], "refunded_fen") == 300);

        // The same refund again (new notification id): duplicate.
        check_result(f.apply(wechat_refund("B-40", "WX-1", "R-1", 300, "W-3")), ApplyOutcome::duplicate, "",
                     "PARTIALLY_REFUNDED");
        check_result(f.apply(wechat_refund("B-40", "WX-1", "R-2", 700, "W-4")), ApplyOutcome::applied, "", "REFUNDED");
        bill = f.bill("B-40");
        CHECK(num(bill, "refunded_fen") == 1000);
        CHECK(num(bill, "version") == 4);
        CHECK(f.hist_len("B-40") == 3);
        CHECK(f.outbox_len("B-40") == 3);
        CHECK(f.cmd({"HGET", f.store->keys().refunds("B-40"), "R-2"}).str == "700");
        // Nothing left to refund.
        check_result(f.apply(wechat_refund("B-40", "WX-1", "R-3", 1, "W-5")), ApplyOutcome::anomaly,
                     "refund_exceeds_paid", "REFUNDED");
    }

    TEST_CASE("refunds (Alipay, cumulative) out of order: an older total is superseded, and flagged")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-41"));
        f.apply(alipay_payment("B-41", "T-1", 1000, "N-1"));
        // R-2 (cumulative 500) arrives before R-1 (cumulative 200).
        check_result(f.apply(alipay_refund("B-41", "T-1", "R-2", 500, "N-3")), ApplyOutcome::applied, "",
                     "PARTIALLY_REFUNDED");
        CHECK(num(last_event(f, "B-41")["data"], "refund_fen") == 500);
        // Cumulative reading: an older state, the bill stays at 500. Per-refund reading (one source):
        // 200 more were refunded. Not decidable here: an anomaly, once.
        check_result(f.apply(alipay_refund("B-41", "T-1", "R-1", 200, "N-2")), ApplyOutcome::anomaly,
                     "refund_total_not_increased", "PARTIALLY_REFUNDED");
        CHECK(num(f.bill("B-41"), "refunded_fen") == 500);
        CHECK(f.cmd({"HGET", f.store->keys().refunds("B-41"), "R-1"}).str == "200");
        const auto anomaly = last_anomaly(f, "B-41");
        CHECK(str(anomaly, "kind") == "refund_total_not_increased");
        CHECK(str(anomaly["detail"], "refund_id") == "R-1");
        CHECK(num(anomaly["detail"], "refund_fee") == 200);
        CHECK(num(anomaly["detail"], "refunded_fen") == 500);
        check_result(f.apply(alipay_refund("B-41", "T-1", "R-1", 200, "N-6")), ApplyOutcome::duplicate, "",
                     "PARTIALLY_REFUNDED");
        CHECK(f.anomalies_len("B-41") == 1);
        CHECK(f.hist_len("B-41") == 3);  // paid, refunded, anomaly
        // The full refund: cumulative 1000, increment 500.
        check_result(f.apply(alipay_refund("B-41", "T-1", "R-3", 1000, "N-4")), ApplyOutcome::applied, "", "REFUNDED");
        const auto ev = last_event(f, "B-41");
        CHECK(num(ev["data"], "refund_fen") == 500);
        CHECK(num(ev["data"], "refunded_fen") == 1000);
        CHECK(f.hist_len("B-41") == 4);
        check_result(f.apply(alipay_refund("B-41", "T-1", "R-3", 1000, "N-5")), ApplyOutcome::duplicate, "",
                     "REFUNDED");
        CHECK(f.hist_len("B-41") == 4);
        CHECK(f.outbox_len("B-41") == 4);
        // A new named refund for the same total cannot be cumulative: flagged too.
        check_result(f.apply(alipay_refund("B-41", "T-1", "R-4", 1000, "N-7")), ApplyOutcome::anomaly,
                     "refund_total_not_increased", "REFUNDED");
        // The same state without out_biz_no (the gateway's id from the total) is not news.
        check_result(f.apply(alipay_refund("B-41", "T-1", "alipay-refund-1000", 1000, "N-8")),
                     ApplyOutcome::duplicate, "", "REFUNDED");
        CHECK(f.anomalies_len("B-41") == 2);
        CHECK(num(f.bill("B-41"), "refunded_fen") == 1000);
    }

    TEST_CASE("refund before payment: the payment is applied first, then the refund")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-42"));
        check_result(f.apply(wechat_refund("B-42", "WX-1", "R-1", 400, "W-9")), ApplyOutcome::applied, "",
                     "PARTIALLY_REFUNDED");
        const auto bill = f.bill("B-42");
        CHECK(num(bill, "paid_fen") == 1000);
        CHECK(num(bill, "refunded_fen") == 400);
        CHECK(str(bill, "provider_txn_id") == "WX-1");
        // A WeChat refund does not say when the payment was: its own time is the closest bound.
        CHECK(str(bill, "paid_at") == "2024-05-02T10:00:00.000Z");
        CHECK(num(bill, "version") == 3);
        const auto view = f.get("B-42");
        REQUIRE(view.events_json.size() == 2);
        CHECK(str(parse_json(view.events_json[0]), "type") == "bill.paid");
        CHECK(str(parse_json(view.events_json[1]), "type") == "bill.refunded");
        // The late payment notification is a duplicate.
        check_result(f.apply(wechat_payment("B-42", "WX-1", 1000, "W-1")), ApplyOutcome::duplicate, "",
                     "PARTIALLY_REFUNDED");
        CHECK(f.hist_len("B-42") == 2);
    }

    TEST_CASE("refund before payment: paid_at is the payment's time where the refund gives it, also as an orphan")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-48"));
        PaymentEvent refund = alipay_refund("B-48", "T-1", "R-1", 300, "N-2");
        refund.occurred_at = "2024-05-03T08:00:00.123Z";  // gmt_refund
        refund.paid_at = "2024-05-01T09:59:00.000Z";      // gmt_payment
        check_result(f.apply(PaymentEvent(refund)), ApplyOutcome::applied, "", "PARTIALLY_REFUNDED");
        auto bill = f.bill("B-48");
        CHECK(str(bill, "paid_at") == "2024-05-01T09:59:00.000Z");
        auto view = f.get("B-48");
        REQUIRE(view.events_json.size() == 2);
        CHECK(str(parse_json(view.events_json[0])["bill"], "paid_at") == "2024-05-01T09:59:00.000Z");

        // The same refund for a bill registered later: kept as an orphan (with its paid_at) and
        // applied at registration.
        refund.bill_id = "B-49";
        refund.notification_id = "N-3";
        check_result(f.apply(PaymentEvent(refund)), ApplyOutcome::orphaned, "unknown_bill", "");
        f.register_bill(new_bill("B-49"));
        bill = f.bill("B-49");
        CHECK(str(bill, "status") == "PARTIALLY_REFUNDED");
        CHECK(str(bill, "paid_at") == "2024-05-01T09:59:00.000Z");
    }

    TEST_CASE("refund before payment with the wrong total: refund_unapplied once, nothing refunded")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-43"));
        check_result(f.apply(wechat_refund("B-43", "WX-1", "R-1", 400, "W-1", 900)), ApplyOutcome::anomaly,
                     "refund_unapplied", "PENDING");
        const auto bill = f.bill("B-43");
        CHECK(num(bill, "paid_fen") == 0);
        CHECK(num(bill, "refunded_fen") == 0);
        CHECK(num(bill, "version") == 1);
        CHECK(f.integer({"HLEN", f.store->keys().refunds("B-43")}) == 0);
        const auto anomaly = last_anomaly(f, "B-43");
        CHECK(str(anomaly, "kind") == "refund_unapplied");
        CHECK(str(anomaly["detail"], "reason") == "amount_mismatch");
        CHECK(str(anomaly["detail"], "refund_id") == "R-1");
        CHECK(num(anomaly["detail"], "refund_fen") == 400);
        CHECK(num(anomaly["detail"], "expected") == 1000);
        CHECK(num(anomaly["detail"], "received") == 900);
        // The provider's retry is not recorded again; the payment itself is its own mismatch.
        check_result(f.apply(wechat_refund("B-43", "WX-1", "R-1", 400, "W-2", 900)), ApplyOutcome::duplicate, "",
                     "PENDING");
        check_result(f.apply(wechat_payment("B-43", "WX-1", 900, "W-3")), ApplyOutcome::anomaly, "amount_mismatch",
                     "PENDING");
        CHECK(f.anomalies_len("B-43") == 2);
        CHECK(f.hist_len("B-43") == 2);
    }

    TEST_CASE("a refund after the payment was refused for its amount is recorded, not dropped")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-44"));
        PaymentEvent payment = alipay_payment("B-44", "T-1", 900, "N-1");
        check_result(f.apply(PaymentEvent(payment)), ApplyOutcome::anomaly, "amount_mismatch", "PENDING");
        PaymentEvent refund = alipay_refund("B-44", "T-1", "R-1", 300, "N-2");
        refund.total_fen = 900;
        check_result(f.apply(PaymentEvent(refund)), ApplyOutcome::anomaly, "refund_unapplied", "PENDING");
        CHECK(f.anomalies_len("B-44") == 2);
        CHECK(num(f.bill("B-44"), "refunded_fen") == 0);

        // The same two as orphans, replayed at registration: both recorded.
        const std::int64_t before = f.anomalies_total();
        payment.bill_id = refund.bill_id = "B-45";
        payment.notification_id = "N-3";
        refund.notification_id = "N-4";
        check_result(f.apply(PaymentEvent(payment)), ApplyOutcome::orphaned, "unknown_bill", "");
        check_result(f.apply(PaymentEvent(refund)), ApplyOutcome::orphaned, "unknown_bill", "");
        f.register_bill(new_bill("B-45"));
        CHECK(str(f.bill("B-45"), "status") == "PENDING");
        CHECK(str(last_anomaly(f, "B-45"), "kind") == "refund_unapplied");
        CHECK(f.anomalies_total() - before == 4);  // two unknown_bill, amount_mismatch, refund_unapplied
    }

    TEST_CASE("a refund naming no transaction does not pay a PENDING bill")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-46"));
        check_result(f.apply(alipay_refund("B-46", "", "R-1", 300, "N-1")), ApplyOutcome::anomaly, "refund_unapplied",
                     "PENDING");
        CHECK(str(last_anomaly(f, "B-46")["detail"], "reason") == "no_provider_txn_id");
        // The real payment then pays the bill, with no false duplicate_payment.
        check_result(f.apply(alipay_payment("B-46", "T-1", 1000, "N-2")), ApplyOutcome::applied, "", "PAID");
        CHECK(str(f.bill("B-46"), "provider_txn_id") == "T-1");
        CHECK(f.anomalies_len("B-46") == 1);
    }

    TEST_CASE("a refund id seen again with another amount: refund_amount_mismatch once per amount")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-47"));
        f.apply(wechat_payment("B-47", "WX-1", 1000, "W-1"));
        check_result(f.apply(wechat_refund("B-47", "WX-1", "R-1", 300, "W-2")), ApplyOutcome::applied, "",
                     "PARTIALLY_REFUNDED");
        check_result(f.apply(wechat_refund("B-47", "WX-1", "R-1", 500, "W-3")), ApplyOutcome::anomaly,
                     "refund_amount_mismatch", "PARTIALLY_REFUNDED");
        const auto anomaly = last_anomaly(f, "B-47");
        CHECK(str(anomaly["detail"], "refund_id") == "R-1");
        CHECK(num(anomaly["detail"], "expected") == 300);
        CHECK(num(anomaly["detail"], "received") == 500);
        check_result(f.apply(wechat_refund("B-47", "WX-1", "R-1", 500, "W-4")), ApplyOutcome::duplicate, "",
                     "PARTIALLY_REFUNDED");
        check_result(f.apply(wechat_refund("B-47", "WX-1", "R-1", 300, "W-5")), ApplyOutcome::duplicate, "",
                     "PARTIALLY_REFUNDED");
        CHECK(num(f.bill("B-47"), "refunded_fen") == 300);
        CHECK(f.anomalies_len("B-47") == 1);

        // Alipay: the same out_biz_no with another cumulative refund_fee.
        f.register_bill(new_bill("B-50"));
        f.apply(alipay_payment("B-50", "T-1", 1000, "N-1"));
        f.apply(alipay_refund("B-50", "T-1", "R-1", 200, "N-2"));
        check_result(f.apply(alipay_refund("B-50", "T-1", "R-1", 400, "N-3")), ApplyOutcome::anomaly,
                     "refund_amount_mismatch", "PARTIALLY_REFUNDED");
        CHECK(num(f.bill("B-50"), "refunded_fen") == 200);
    }

    TEST_CASE("refund_exceeds_paid: anomaly once per refund, bill unchanged")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-44"));
        f.apply(wechat_payment("B-44", "WX-1", 1000, "W-1"));
        check_result(f.apply(wechat_refund("B-44", "WX-1", "R-1", 1200, "W-2")), ApplyOutcome::anomaly,
                     "refund_exceeds_paid", "PAID");
        check_result(f.apply(wechat_refund("B-44", "WX-1", "R-1", 1200, "W-3")), ApplyOutcome::duplicate, "", "PAID");
        CHECK(f.hist_len("B-44") == 2);  // paid, refund_exceeds_paid
        CHECK(f.outbox_len("B-44") == 2);
        const auto bill = f.bill("B-44");
        CHECK(num(bill, "refunded_fen") == 0);
        CHECK(num(bill, "version") == 2);
        CHECK(f.anomalies_len("B-44") == 1);
        const auto anomaly = last_anomaly(f, "B-44");
        CHECK(num(anomaly["detail"], "expected") == 1000);
        CHECK(num(anomaly["detail"], "received") == 1200);
    }

    TEST_CASE("refund_abnormal / refund_closed: an anomaly without money, once per refund and kind, may later succeed")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-49"));
        f.apply(wechat_payment("B-49", "WX-1", 1000, "W-1"));
        PaymentEvent abnormal = wechat_refund("B-49", "WX-1", "R-1", 300, "W-2");
        abnormal.kind = EventKind::refund_abnormal;
        abnormal.provider_status = "REFUND.ABNORMAL";
        check_result(f.apply(abnormal), ApplyOutcome::anomaly, "refund_abnormal", "PAID");
        abnormal.notification_id = "W-3";
        check_result(f.apply(abnormal), ApplyOutcome::duplicate, "", "PAID");
        auto bill = f.bill("B-49");
        CHECK(num(bill, "refunded_fen") == 0);
        CHECK(num(bill, "version") == 2);
        const auto ev = last_event(f, "B-49");
        CHECK(str(ev, "type") == "bill.anomaly");  // API.md's four types only
        CHECK(num(ev, "sequence") == 2);
        CHECK(str(ev["data"], "kind") == "refund_abnormal");
        CHECK(str(ev["data"], "anomaly") == "refund_abnormal");
        CHECK(str(ev["data"], "refund_id") == "R-1");
        CHECK(num(ev["data"], "refund_fen") == 300);
        CHECK(f.anomalies_len("B-49") == 1);
        const auto recorded = last_anomaly(f, "B-49");
        CHECK(str(recorded, "kind") == "refund_abnormal");
        CHECK(str(recorded, "event_id") == str(ev, "id"));

        check_result(f.apply(wechat_refund("B-49", "WX-1", "R-1", 300, "W-4")), ApplyOutcome::applied, "",
                     "PARTIALLY_REFUNDED");
        PaymentEvent closed = wechat_refund("B-49", "WX-1", "R-2", 100, "W-5");
        closed.kind = EventKind::refund_closed;
        closed.provider_status = "REFUND.CLOSED";
        check_result(f.apply(closed), ApplyOutcome::anomaly, "refund_closed", "PARTIALLY_REFUNDED");
        bill = f.bill("B-49");
        CHECK(num(bill, "refunded_fen") == 300);
        CHECK(f.hist_len("B-49") == 4);
        CHECK(f.anomalies_len("B-49") == 2);
        CHECK(str(last_anomaly(f, "B-49"), "kind") == "refund_closed");
    }

    TEST_CASE("50 concurrent applies of one event make exactly one transition")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-50"));
        std::vector<ApplyOutcome> outcomes;
        int done = 0;
        for (int i = 0; i < 50; ++i) {
            // Half are exact repeats, half are the provider's retries with fresh notification ids.
            const std::string nid = i % 2 == 0 ? "N-same" : "N-" + std::to_string(i);
            asio::co_spawn(f.ctx, apply_into(f.store.get(), alipay_payment("B-50", "T-1", 1000, nid), &outcomes, &done),
                           asio::detached);
        }
        REQUIRE(paybridge::test::run_until(f.ctx, [&] { return done == 50; }, 10s));
        REQUIRE(outcomes.size() == 50);
        CHECK(std::count(outcomes.begin(), outcomes.end(), ApplyOutcome::applied) == 1);
        CHECK(std::count(outcomes.begin(), outcomes.end(), ApplyOutcome::duplicate) == 49);
        CHECK(f.hist_len("B-50") == 1);
        CHECK(f.outbox_len("B-50") == 1);
        CHECK(num(f.bill("B-50"), "version") == 2);
    }

    TEST_CASE("updated index and updated_at move on changes only")
    {
        std::int64_t now = 1'700'000'000'000;
        StoreFixture f({}, {}, [&now] { return now; });
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("B-60"));
        const std::string updated = f.store->keys().updated(f.store->keys().shard_of("B-60"));
        CHECK(f.cmd({"ZSCORE", updated, "B-60"}).str == "1700000000000");
        now += 5000;
        f.apply(alipay_payment("B-60", "T-1", 999, "N-1"));  // anomaly: no change
        CHECK(f.cmd({"ZSCORE", updated, "B-60"}).str == "1700000000000");
        CHECK(str(f.bill("B-60"), "updated_at") == "2023-11-14T22:13:20.000Z");
        now += 5000;
        f.apply(alipay_payment("B-60", "T-1", 1000, "N-2"));
        CHECK(f.cmd({"ZSCORE", updated, "B-60"}).str == "1700000010000");
        const auto bill = f.bill("B-60");
        CHECK(str(bill, "updated_at") == "2023-11-14T22:13:30.000Z");
        CHECK(str(bill, "created_at") == "2023-11-14T22:13:20.000Z");
        const std::string created = f.store->keys().created(f.store->keys().shard_of("B-60"));
        CHECK(f.cmd({"ZSCORE", created, "B-60"}).str == "1700000000000");
    }

    TEST_CASE("the payment fast path writes byte for byte what the general path writes")
    {
        // The same payment, to two bills registered alike at the same instant: once with the
        // caller's "no string needs an escape" flag (the script's fast path) and once without it
        // (apply() and pay(), which escape what needs it: nothing here). Run through EVAL with the
        // same clock, so the only difference left is the bill id.
        const std::int64_t now = 1'700'000'000'000;
        StoreFixture f({}, {}, [now] { return now; });
        REQUIRE(f.wait_ready());
        const std::string script(paybridge::store::bill_script());
        struct Variant {
            std::string paid_at;  // the notification's own payment time, or none
            bool details;         // the bill has metadata and expires_at
            bool orphan;          // a wrong-amount payment came before the bill: sequence starts at 2
        };
        const Variant variants[] = {{"", true, false}, {"2024-05-01T09:59:58.000Z", false, false}, {"", false, true}};
        int pair = 0;
        for (const Variant& v : variants) {
            const std::string& paid_at = v.paid_at;
            ++pair;
            CAPTURE(pair);
            const std::string fast = "B-70-" + std::to_string(pair) + "-fast";
            const std::string slow = "B-70-" + std::to_string(pair) + "-slow";
            for (const std::string& id : {fast, slow}) {
                if (v.orphan) {
                    check_result(f.apply(alipay_payment(id, "T-0", 999, "N-0")), ApplyOutcome::orphaned,
                                 "unknown_bill", "");
                }
                NewBill nb = new_bill(fast, 1234);  // the description names the same bill
                nb.id = id;
                if (v.details) {
                    nb.metadata_json = R"({"order":"42","tags":["a","b"]})";
                    nb.expires_at = "2024-06-01T00:00:00.000Z";
                }
                REQUIRE(f.register_bill(nb).outcome == RegisterOutcome::created);
            }

            auto apply = [&](const std::string& bill, const char* safe) {
                std::vector<std::string> argv{"EVAL", script, "9"};
                for (std::string& k : f.store->keys().for_bill(bill).script_keys()) {
                    argv.push_back(std::move(k));
                }
                for (const std::string a :
                     {"apply", "1700000005000", "2023-11-14T22:13:25.000Z", "alipay", "alipay", "payment",
                      "N-70", "2021000000000001"}) {
                    argv.push_back(a);
                }
                argv.push_back(bill);
                for (const std::string a :
                     {"2024050122001400001", "CNY", "1234", "", "0", "0", "TRADE_SUCCESS", "2024-05-01T10:00:00.000Z"}) {
                    argv.push_back(a);
                }
                argv.push_back(safe);
                argv.push_back(paid_at);
                const auto r = f.cmd(std::move(argv));
                REQUIRE(r.elements.size() == 3);
                CHECK(r.elements[0].str == "applied");
                CHECK(r.elements[1].str == "");
                CHECK(r.elements[2].str == "PAID");
            };
            apply(fast, "1");
            apply(slow, "0");

            auto replace_all = [](std::string s, const std::string& from, const std::string& to) {
                for (std::size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) {
                    s.replace(at, from.size(), to);
                }
                return s;
            };
            const auto fast_view = f.get(fast);
            const auto slow_view = f.get(slow);
            const std::size_t events = v.orphan ? 3 : 1;  // unknown_bill, amount_mismatch, paid
            REQUIRE(fast_view.events_json.size() == events);
            REQUIRE(slow_view.events_json.size() == events);
            for (std::size_t i = 0; i < events; ++i) {
                CHECK(fast_view.events_json[i] == replace_all(slow_view.events_json[i], slow, fast));
            }
            CHECK(fast_view.bill_json == replace_all(slow_view.bill_json, slow, fast));
            const auto paid = parse_json(fast_view.events_json.back());
            CHECK(num(paid, "sequence") == static_cast<std::int64_t>(events));
            CHECK(str(paid["bill"], "paid_at") == (paid_at.empty() ? "2024-05-01T10:00:00.000Z" : paid_at));
            // The hashes too: every field, the notification's marker included.
            const auto fast_hash = f.cmd({"HGETALL", f.store->keys().bill(fast)});
            const auto slow_hash = f.cmd({"HGETALL", f.store->keys().bill(slow)});
            REQUIRE(fast_hash.elements.size() == slow_hash.elements.size());
            std::vector<std::string> a;
            std::vector<std::string> b;
            for (std::size_t i = 0; i < fast_hash.elements.size(); ++i) {
                a.push_back(fast_hash.elements[i].str);
                b.push_back(replace_all(slow_hash.elements[i].str, slow, fast));
            }
            CHECK(a == b);
            // And the outbox entries, field for field.
            auto entries_of = [&](const std::string& bill) {
                const auto out =
                    f.cmd({"XRANGE", f.store->keys().outbox(f.store->keys().shard_of(bill)), "-", "+"});
                std::vector<std::string> found;
                for (const auto& e : out.elements) {
                    const auto& fields = e.elements.at(1).elements;
                    if (fields.at(3).str == bill) {
                        for (const auto& x : fields) {
                            found.push_back(replace_all(x.str, bill, fast));
                        }
                    }
                }
                return found;
            };
            const auto fast_entries = entries_of(fast);
            CHECK(fast_entries.size() == 8 * events);
            CHECK(fast_entries == entries_of(slow));
        }
    }
}

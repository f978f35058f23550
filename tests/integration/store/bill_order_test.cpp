// Order does not matter: the same notifications, in every order they could arrive in and with the
// bill registered before, between or after them, leave the bill in the same state, with a
// history whose sequence runs 1..n and one outbox entry per history entry. Against a real
// redis-server, through RedisBillStore.

#include "tests/integration/store/bill_events.hpp"
#include "tests/integration/store/store_fixture.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstddef>
#include <functional>
#include <numeric>
#include <set>
#include <string>
#include <vector>

using paybridge::ApplyOutcome;
using paybridge::PaymentEvent;
using paybridge::test::num;
using paybridge::test::parse_json;
using paybridge::test::str;
using paybridge::test::StoreFixture;
using namespace paybridge::test::bill_events;

namespace {

/// Where a bill ends, whatever the order.
struct Final {
    std::string status;
    std::int64_t paid_fen;
    std::int64_t refunded_fen;
    std::string provider_txn_id;  ///< empty: not compared (several transactions were refunded in full)
};

/// One notification, made for a given bill id.
using Make = std::function<PaymentEvent(const std::string& bill)>;

/// Applies `facts` in every order, registering the bill before them, after the first half and
/// after all of them, and checks where each run ends. Returns the number of runs.
std::size_t check_every_order(StoreFixture& f, const std::string& name, const std::vector<Make>& facts,
                              const Final& expected)
{
    std::vector<std::size_t> order(facts.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::size_t runs = 0;
    do {
        for (const std::size_t registered_after : {std::size_t{0}, facts.size() / 2, facts.size()}) {
            const std::string id = name + "-" + std::to_string(runs++);
            std::string sequence;
            for (const std::size_t i : order) {
                sequence += std::to_string(i) + " ";
            }
            CAPTURE(sequence);
            CAPTURE(registered_after);
            const std::int64_t outbox_before = f.outbox_total();
            for (std::size_t n = 0; n <= order.size(); ++n) {
                if (n == registered_after) {
                    f.register_bill(new_bill(id));
                }
                if (n < order.size()) {
                    f.apply(facts[order[n]](id));
                }
            }
            const auto bill = f.bill(id);
            CHECK(str(bill, "status") == expected.status);
            CHECK(num(bill, "paid_fen") == expected.paid_fen);
            CHECK(num(bill, "refunded_fen") == expected.refunded_fen);
            if (!expected.provider_txn_id.empty()) {
                CHECK(str(bill, "provider_txn_id") == expected.provider_txn_id);
            }
            // Every change and anomaly is one history entry and one outbox entry, numbered 1..n,
            // each carrying the bill as it was right after it.
            const auto view = f.get(id);
            CHECK(static_cast<std::int64_t>(view.events_json.size()) == f.outbox_total() - outbox_before);
            std::int64_t seq = 0;
            for (const std::string& raw : view.events_json) {
                const auto event = parse_json(raw);
                CHECK(num(event, "sequence") == ++seq);
            }
            // And the last word is the bill's: a change after the last event would be unrecorded.
            const auto last = parse_json(view.events_json.back());
            if (last["bill"].IsObject()) {
                CHECK(num(last["bill"], "version") == num(bill, "version"));
                CHECK(str(last["bill"], "status") == expected.status);
            }
            // Every notification again (as providers repeat themselves): nothing changes.
            for (const std::size_t i : order) {
                const auto r = f.apply(facts[i](id));
                CHECK(paybridge::to_string(r.outcome) == paybridge::to_string(ApplyOutcome::duplicate));
            }
            CHECK(num(f.bill(id), "version") == num(bill, "version"));
            CHECK(f.hist_len(id) == static_cast<std::int64_t>(view.events_json.size()));
        }
    } while (std::next_permutation(order.begin(), order.end()));
    return runs;
}

}  // namespace

TEST_SUITE("integration/store/bill_order")
{
    TEST_CASE("Alipay: payment, TRADE_FINISHED and three cumulative refunds end REFUNDED in every order")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        const std::vector<Make> facts{
            [](const std::string& b) { return alipay_payment(b, "T-1", 1000, "N-1"); },
            [](const std::string& b) { return alipay_payment(b, "T-1", 1000, "N-2", "TRADE_FINISHED"); },
            [](const std::string& b) { return alipay_refund(b, "T-1", "R-1", 300, "N-3"); },
            [](const std::string& b) { return alipay_refund(b, "T-1", "R-2", 700, "N-4"); },
            [](const std::string& b) { return alipay_refund(b, "T-1", "R-3", 1000, "N-5"); },
        };
        CHECK(check_every_order(f, "OA", facts, {"REFUNDED", 1000, 1000, "T-1"}) == 360);
    }

    TEST_CASE("WeChat Pay: payment and two refunds, one of them notified twice, end REFUNDED in every order")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        const std::vector<Make> facts{
            [](const std::string& b) { return wechat_payment(b, "WX-1", 1000, "W-1"); },
            [](const std::string& b) { return wechat_refund(b, "WX-1", "R-1", 300, "W-2"); },
            [](const std::string& b) { return wechat_refund(b, "WX-1", "R-2", 700, "W-3"); },
            [](const std::string& b) {
                PaymentEvent ev = wechat_refund(b, "WX-1", "R-1", 300, "W-4");  // the v2 copy of R-1
                ev.channel = "wechatpay_v2";
                ev.provider_status = "SUCCESS";
                return ev;
            },
        };
        CHECK(check_every_order(f, "OW", facts, {"REFUNDED", 1000, 1000, "WX-1"}) == 72);
    }

    TEST_CASE("paid twice, the second payment refunded: PAID by the first in every order")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        const std::vector<Make> facts{
            [](const std::string& b) { return alipay_payment(b, "T-1", 1000, "N-1"); },
            [](const std::string& b) { return wechat_payment(b, "WX-2", 1000, "W-1"); },
            [](const std::string& b) { return wechat_refund(b, "WX-2", "R-2", 1000, "W-2"); },
        };
        CHECK(check_every_order(f, "OD", facts, {"PAID", 1000, 0, "T-1"}) == 18);
    }

    TEST_CASE("paid, refunded in full, paid again with another transaction: PAID by that one in every order")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        const std::vector<Make> facts{
            [](const std::string& b) { return alipay_payment(b, "T-1", 1000, "N-1"); },
            [](const std::string& b) { return alipay_refund(b, "T-1", "R-1", 1000, "N-2"); },
            [](const std::string& b) { return wechat_payment(b, "WX-2", 1000, "W-1"); },
        };
        CHECK(check_every_order(f, "OR", facts, {"PAID", 1000, 0, "WX-2"}) == 18);
    }

    TEST_CASE("paid twice, one refunded in full and the other in part: PARTIALLY_REFUNDED in every order")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        const std::vector<Make> facts{
            [](const std::string& b) { return alipay_payment(b, "T-1", 1000, "N-1"); },
            [](const std::string& b) { return wechat_payment(b, "WX-2", 1000, "W-1"); },
            [](const std::string& b) { return alipay_refund(b, "T-1", "R-1", 1000, "N-2"); },
            [](const std::string& b) { return wechat_refund(b, "WX-2", "R-2", 300, "W-2"); },
        };
        CHECK(check_every_order(f, "OP", facts, {"PARTIALLY_REFUNDED", 1000, 300, "WX-2"}) == 72);
    }

    TEST_CASE("the replaced payment notified again (TRADE_FINISHED) after the take-over changes nothing")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        const std::vector<Make> facts{
            [](const std::string& b) { return alipay_payment(b, "T-1", 1000, "N-1"); },
            [](const std::string& b) { return wechat_payment(b, "WX-2", 1000, "W-1"); },
            [](const std::string& b) { return alipay_refund(b, "T-1", "R-1", 1000, "N-2"); },
            [](const std::string& b) { return alipay_payment(b, "T-1", 1000, "N-9", "TRADE_FINISHED"); },
        };
        CHECK(check_every_order(f, "OF", facts, {"PAID", 1000, 0, "WX-2"}) == 72);
    }

    TEST_CASE("a refund proves its payment: refunded in full, a refund of another payment takes over")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        const std::vector<Make> facts{
            [](const std::string& b) { return alipay_payment(b, "T-1", 1000, "N-1"); },
            [](const std::string& b) { return alipay_refund(b, "T-1", "R-1", 1000, "N-2"); },
            [](const std::string& b) { return wechat_refund(b, "WX-2", "R-2", 300, "W-2"); },
        };
        CHECK(check_every_order(f, "OQ", facts, {"PARTIALLY_REFUNDED", 1000, 300, "WX-2"}) == 18);
    }

    TEST_CASE("refund ids are their transaction's: two Alipay trades refunded without out_biz_no")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        // The gateway names both refunds alipay-refund-1000 (no out_biz_no): one per trade, not one.
        const std::vector<Make> facts{
            [](const std::string& b) { return wechat_payment(b, "WX-1", 1000, "W-1"); },
            [](const std::string& b) { return alipay_payment(b, "T-2", 1000, "N-1"); },
            [](const std::string& b) { return alipay_refund(b, "T-2", "alipay-refund-1000", 1000, "N-2"); },
            [](const std::string& b) { return alipay_refund(b, "T-3", "alipay-refund-1000", 1000, "N-3"); },
            [](const std::string& b) { return wechat_refund(b, "WX-1", "R-1", 1000, "W-2"); },
        };
        CHECK(check_every_order(f, "OS", facts, {"REFUNDED", 1000, 1000, ""}) == 360);
    }

    TEST_CASE("a refund above what a duplicate payment holds is not counted, as on the bill")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        const std::vector<Make> facts{
            [](const std::string& b) { return alipay_payment(b, "T-1", 1000, "N-1"); },
            [](const std::string& b) { return wechat_payment(b, "WX-2", 1000, "W-1"); },
            [](const std::string& b) { return wechat_refund(b, "WX-2", "R-a", 700, "W-2"); },
            [](const std::string& b) { return wechat_refund(b, "WX-2", "R-b", 700, "W-3"); },
            [](const std::string& b) { return alipay_refund(b, "T-1", "R-1", 1000, "N-2"); },
        };
        CHECK(check_every_order(f, "OE", facts, {"PARTIALLY_REFUNDED", 1000, 700, "WX-2"}) == 360);
    }

    TEST_CASE("paid twice, both refunded in full: REFUNDED in every order")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        const std::vector<Make> facts{
            [](const std::string& b) { return alipay_payment(b, "T-1", 1000, "N-1"); },
            [](const std::string& b) { return wechat_payment(b, "WX-2", 1000, "W-1"); },
            [](const std::string& b) { return alipay_refund(b, "T-1", "R-1", 1000, "N-2"); },
            [](const std::string& b) { return wechat_refund(b, "WX-2", "R-2", 1000, "W-2"); },
        };
        // Which of the two the bill names last depends on the order; that it is refunded does not.
        CHECK(check_every_order(f, "OB", facts, {"REFUNDED", 1000, 1000, ""}) == 72);
    }
}

// RedisBillStore reads and options: get_bill, the merged event / anomaly feeds with cursor paging
// across shards, list_bills filters and paging, WAIT for replicas, reconciliation, ping.

#include "store/redis_bill_store.hpp"

#include "core/error.hpp"
#include "core/time.hpp"
#include "tests/integration/redis_hook_proxy.hpp"
#include "tests/integration/store/store_fixture.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;
using paybridge::ApplyOutcome;
using paybridge::ApplyResult;
using paybridge::BillFilter;
using paybridge::errc;
using paybridge::EventKind;
using paybridge::NewBill;
using paybridge::Page;
using paybridge::PaymentEvent;
using paybridge::RegisterOutcome;
using paybridge::Result;
using paybridge::test::num;
using paybridge::test::parse_json;
using paybridge::test::str;
using paybridge::test::StoreFixture;
using namespace std::chrono_literals;

namespace {

// Coroutines for co_spawn take their arguments by value: a capturing lambda's captures would die
// with the temporary closure before the coroutine runs.
asio::awaitable<void> apply_into(paybridge::store::RedisBillStore* store, PaymentEvent ev,
                                 std::optional<Result<ApplyResult>>* out)
{
    Result<ApplyResult> r = co_await store->apply(std::move(ev));
    *out = std::move(r);
}

asio::awaitable<void> exec_into(paybridge::store::RedisConnection* conn, std::vector<std::string> argv,
                                std::optional<Result<paybridge::store::Reply>>* out)
{
    Result<paybridge::store::Reply> r = co_await conn->exec(std::move(argv));
    *out = std::move(r);
}

/// A replica of the fixture's server, online and acknowledging writes.
/// redis.wait_replicas = 1, with the time a loaded CI machine's replica takes to acknowledge.
void wait_for_one_replica(paybridge::config::RedisConfig& c)
{
    c.wait_replicas = 1;
    c.wait_timeout = std::chrono::milliseconds(2000);
    c.request_timeout = std::chrono::milliseconds(5000);
}

std::unique_ptr<paybridge::test::RedisTestServer> start_replica(StoreFixture& f)
{
    f.cmd({"CONFIG", "SET", "repl-diskless-sync-delay", "0"});  // Redis 7 waits 5 s for more replicas
    auto replica = std::make_unique<paybridge::test::RedisTestServer>(
        std::vector<std::string>{"--replicaof", "127.0.0.1", std::to_string(f.server.port())});
    bool online = false;
    for (int i = 0; i < 400 && !online; ++i) {
        online = f.cmd({"INFO", "replication"}).str.find("state=online") != std::string::npos;
        if (!online) {
            std::this_thread::sleep_for(std::chrono::milliseconds(25));
        }
    }
    REQUIRE(online);
    // "online" is the primary's view once the snapshot is sent; wait until the replica has
    // loaded it and acknowledges writes.
    f.cmd({"SET", "warm-up", "1"});
    REQUIRE(f.integer({"WAIT", "1", "10000"}) == 1);
    return replica;
}

NewBill new_bill(const std::string& id, const std::string& customer = "cust-1", std::int64_t amount = 1000)
{
    NewBill b;
    b.id = id;
    b.amount_fen = amount;
    b.customer_id = customer;
    b.description = "Order " + id;
    return b;
}

PaymentEvent payment(const std::string& bill, const std::string& provider, std::int64_t total,
                     const std::string& notify_id)
{
    PaymentEvent ev;
    ev.provider = provider;
    ev.channel = provider == "alipay" ? "alipay" : "wechatpay_v3";
    ev.kind = EventKind::payment;
    ev.notification_id = notify_id;
    ev.bill_id = bill;
    ev.provider_txn_id = "TX-" + bill;
    ev.total_fen = total;
    ev.provider_status = "SUCCESS";
    return ev;
}

PaymentEvent refund(const std::string& bill, std::int64_t fen, const std::string& refund_id)
{
    PaymentEvent ev = payment(bill, "wechatpay", 1000, "RN-" + refund_id);
    ev.kind = EventKind::refund;
    ev.refund_id = refund_id;
    ev.refund_fen = fen;
    return ev;
}

asio::awaitable<void> apply_counted(paybridge::store::RedisBillStore* store, PaymentEvent ev, int* done)
{
    Result<ApplyResult> r = co_await store->apply(std::move(ev));
    if (r && r->outcome == ApplyOutcome::applied) {
        ++*done;
    } else {
        *done += 1000;  // makes the wait below fail loudly
    }
}

Page events_page(StoreFixture& f, const std::string& after, std::size_t limit)
{
    Result<Page> p = f.run(f.store->list_events(after, limit));
    REQUIRE_MESSAGE(p.has_value(), p.error().message());
    return *p;
}

Page bills_page(StoreFixture& f, BillFilter filter)
{
    Result<Page> p = f.run(f.store->list_bills(std::move(filter)));
    REQUIRE_MESSAGE(p.has_value(), p.error().message());
    return *p;
}

std::vector<std::string> ids_of(const Page& page)
{
    std::vector<std::string> ids;
    for (const std::string& json : page.items_json) {
        ids.push_back(str(parse_json(json), "id"));
    }
    return ids;
}

// Writes n bills directly (register_bill one by one takes long): the bill hash, with a notification
// marker, and the updated index, bill i updated at 1'700'000'000'000 + i ms. Returns their ids,
// newest change first.
std::vector<std::string> write_bills(StoreFixture& f, int n, const std::function<const char*(int)>& customer_of)
{
    const paybridge::store::Keys& keys = f.store->keys();
    std::vector<std::string> ids;
    std::vector<std::vector<std::string>> writes;
    for (int i = 0; i < n; ++i) {
        const std::string id = "R-" + std::to_string(100000 + i);
        writes.push_back({"HSET", keys.bill(id), "id", id, "status", "PENDING", "amount_fen", "100", "currency", "CNY",
                          "customer_id", customer_of(i), "description", "d", "expires_at", "", "metadata", "",
                          "paid_fen", "0", "refunded_fen", "0", "provider", "", "provider_txn_id", "", "created_at",
                          "2023-11-14T22:13:20Z", "updated_at", "2023-11-14T22:13:20Z", "paid_at", "", "version", "1",
                          "n:alipay:N-" + id, "1700000000000"});
        writes.push_back({"ZADD", keys.updated(keys.shard_of(id)), std::to_string(1'700'000'000'000 + i), id});
        ids.push_back(id);
        if (writes.size() >= 2000 || i + 1 == n) {
            REQUIRE(f.run(f.conn->exec_many(std::move(writes))).has_value());
            writes.clear();
        }
    }
    std::reverse(ids.begin(), ids.end());
    return ids;
}

// Bytes Redis has sent to its clients so far.
std::uint64_t redis_bytes_out(StoreFixture& f)
{
    const std::string info = f.cmd({"INFO", "stats"}).str;
    const auto at = info.find("total_net_output_bytes:");
    REQUIRE(at != std::string::npos);
    return std::stoull(info.substr(at + std::string_view("total_net_output_bytes:").size()));
}

std::vector<std::string> all_bill_ids(StoreFixture& f, BillFilter filter)
{
    std::vector<std::string> ids;
    for (int pages = 0; pages < 100; ++pages) {
        const Page page = bills_page(f, filter);
        for (const std::string& id : ids_of(page)) {
            ids.push_back(id);
        }
        if (page.next_cursor.empty()) {
            return ids;
        }
        filter.cursor = page.next_cursor;
    }
    FAIL("list_bills paging did not end");
    return ids;
}

}  // namespace

TEST_SUITE("integration/store/redis_bill_store")
{
    TEST_CASE("get_bill: a long history is read in pages, whole and in order")
    {
        // Before, the whole history came back in one reply: a bill with thousands of events made
        // one reply that grows without bound (and past the connection's 32 MiB reply limit, one
        // that drops the connection every request on it shares).
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("H-1"));
        f.apply(payment("H-1", "alipay", 1000, "N-1"));
        const paybridge::store::Keys& keys = f.store->keys();
        std::vector<std::string> push{"RPUSH", keys.hist("H-1")};
        for (int i = 2; i <= 2500; ++i) {
            push.push_back("{\"sequence\":" + std::to_string(i) + "}");
        }
        REQUIRE(f.integer(std::move(push)) == 2500);
        CHECK(f.cmd({"CONFIG", "RESETSTAT"}).is_status("OK"));
        const auto view = f.get("H-1");
        REQUIRE(view.events_json.size() == 2500);
        for (std::size_t i = 0; i < view.events_json.size(); ++i) {
            REQUIRE(num(parse_json(view.events_json[i]), "sequence") == static_cast<std::int64_t>(i + 1));
        }
        // The script's first page and two more LRANGEs of at most 1000 events each.
        const std::string stats = f.cmd({"INFO", "commandstats"}).str;
        CHECK(stats.find("cmdstat_lrange:calls=3,") != std::string::npos);
    }

    TEST_CASE("get_bill: nullopt for an unknown id, history oldest first")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        const auto none = f.run(f.store->get_bill("nope"));
        REQUIRE(none.has_value());
        CHECK_FALSE(none->has_value());

        f.register_bill(new_bill("G-1"));
        f.apply(payment("G-1", "wechatpay", 1000, "N-1"));
        f.apply(refund("G-1", 100, "R-1"));
        f.apply(refund("G-1", 200, "R-2"));
        const auto view = f.get("G-1");
        REQUIRE(view.events_json.size() == 3);
        for (std::size_t i = 0; i < 3; ++i) {
            CHECK(num(parse_json(view.events_json[i]), "sequence") == static_cast<std::int64_t>(i + 1));
        }
        const auto bill = parse_json(view.bill_json);
        CHECK(num(bill, "refunded_fen") == 300);
        CHECK(str(bill, "status") == "PARTIALLY_REFUNDED");

        // A WeChat refund of 0 fen (the gateway passes one; tests/fuzz/wechat_v2.cpp found it)
        // returns nothing: acknowledged as ignored, the bill and the outbox unchanged.
        const std::int64_t outbox = f.outbox_total();
        const auto zero = f.run(f.store->apply(refund("G-1", 0, "R-0")));
        REQUIRE(zero.has_value());
        CHECK(zero->outcome == ApplyOutcome::ignored);
        CHECK(zero->status == "PARTIALLY_REFUNDED");
        CHECK(f.outbox_total() == outbox);
        CHECK(f.get("G-1").events_json.size() == 3);
        CHECK(num(parse_json(f.get("G-1").bill_json), "refunded_fen") == 300);
    }

    TEST_CASE("apply: an event without a bill id is refused, unless it asks for nothing")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        const std::int64_t keys_before = f.integer({"DBSIZE"});  // the key-layout marker (store/layout.hpp)
        const auto r = f.run(f.store->apply(payment("", "alipay", 1, "N")));
        CHECK(r.error() == paybridge::make_error_code(errc::invalid_argument));

        // A verified provider event we do not act on (WeChat Pay's other event types, a failed
        // v2 payment) may name no bill: acknowledged as ignored, and Redis is not touched.
        PaymentEvent nothing = payment("", "wechatpay", 0, "N-2");
        nothing.kind = EventKind::none;
        nothing.provider_status = "MCHTRANSFER.BILL.FINISHED";
        const auto ignored = f.run(f.store->apply(std::move(nothing)));
        REQUIRE(ignored.has_value());
        CHECK(ignored->outcome == ApplyOutcome::ignored);
        CHECK(ignored->anomaly.empty());
        CHECK(ignored->status.empty());
        CHECK(f.integer({"DBSIZE"}) == keys_before);
        CHECK(f.outbox_total() == 0);
    }

    TEST_CASE("key names: for_bill() builds the nine script keys as the single-key builders do, sharing one tag")
    {
        const paybridge::store::Keys keys("pb", 16);
        const std::string id = "INV-42";
        const int shard = keys.shard_of(id);
        const std::vector<std::string> expected{keys.bill(id),      keys.hist(id),          keys.seen(id),
                                                keys.refunds(id),   keys.orphans(id),       keys.outbox(shard),
                                                keys.anomalies(shard), keys.updated(shard), keys.created(shard)};
        const auto named = keys.for_bill(id);
        CHECK(named.script_keys() == expected);                       // copying overload
        CHECK(keys.for_bill(id).script_keys() == expected);           // moving overload
        CHECK(expected[0] == "pb" + paybridge::store::Keys::tag(shard) + ":bill:INV-42");
        CHECK(expected[5] == "pb" + paybridge::store::Keys::tag(shard) + ":outbox");
        for (const std::string& k : expected) {
            CHECK(k.find(paybridge::store::Keys::tag(shard)) == 2);  // one hash tag: one Cluster slot
        }
    }

    TEST_CASE("events feed: shards merged in (ms, seq, shard) order, cursor paging loses and repeats nothing")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        constexpr int kBills = 40;
        std::set<int> shards;
        for (int i = 0; i < kBills; ++i) {
            const std::string id = "P-" + std::to_string(i);
            f.register_bill(new_bill(id));
            shards.insert(f.store->keys().shard_of(id));
        }
        REQUIRE(shards.size() >= 8);
        // All payments in one pipelined burst: many entries of different shards share (ms, seq).
        int done = 0;
        for (int i = 0; i < kBills; ++i) {
            const std::string id = "P-" + std::to_string(i);
            asio::co_spawn(f.ctx, apply_counted(f.store.get(), payment(id, "wechatpay", 1000, "N-" + id), &done),
                           asio::detached);
        }
        REQUIRE(paybridge::test::run_until(f.ctx, [&] { return done >= kBills; }, 10s));
        REQUIRE(done == kBills);

        const Page all = events_page(f, "", 1000);
        REQUIRE(all.items_json.size() == kBills);
        std::set<std::string> unique(all.items_json.begin(), all.items_json.end());
        CHECK(unique.size() == kBills);

        for (const std::size_t limit : {std::size_t{1}, std::size_t{3}, std::size_t{7}}) {
            CAPTURE(limit);
            std::vector<std::string> paged;
            std::string cursor;
            for (int guard = 0; guard < 100; ++guard) {
                const Page page = events_page(f, cursor, limit);
                CHECK(page.items_json.size() <= limit);
                if (page.items_json.empty()) {
                    CHECK(page.next_cursor == cursor);  // at the tail: poll again from there
                    break;
                }
                paged.insert(paged.end(), page.items_json.begin(), page.items_json.end());
                CHECK_FALSE(page.next_cursor.empty());
                cursor = page.next_cursor;
            }
            CHECK(paged == all.items_json);
        }

        // A consumer tailing the feed with the last cursor sees only new events.
        const Page tail = events_page(f, all.next_cursor, 10);
        CHECK(tail.items_json.empty());
        CHECK(tail.next_cursor == all.next_cursor);
        f.apply(refund("P-3", 100, "R-1"));
        const Page fresh = events_page(f, all.next_cursor, 10);
        REQUIRE(fresh.items_json.size() == 1);
        CHECK(str(parse_json(fresh.items_json[0]), "type") == "bill.refunded");

        for (const char* bad : {"x", "1-0", "1-0.99", "a-b.1", "1-0.-1"}) {
            CAPTURE(bad);
            const auto r = f.run(f.store->list_events(bad, 10));
            CHECK(r.error() == paybridge::make_error_code(errc::invalid_argument));
        }
        CHECK(events_page(f, "", 0).items_json.empty());
    }

    TEST_CASE("events feed: a page reads about limit entries over all shards, not limit from each")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        const int shards = f.store->keys().shards();
        REQUIRE(shards == 16);
        // 1000 entries per shard, interleaved: entry j of every shard has id (1000 + j)-0, so the
        // merged feed is j-major, then by shard.
        constexpr int kPerShard = 1000;
        const std::string pad(200, 'x');
        const auto json = [&pad](int s, int j) {
            return R"({"id":"e)" + std::to_string(s) + "-" + std::to_string(j) + R"(","pad":")" + pad + R"("})";
        };
        std::vector<std::vector<std::string>> writes;
        for (int s = 0; s < shards; ++s) {
            for (int j = 0; j < kPerShard; ++j) {
                writes.push_back({"XADD", f.store->keys().outbox(s), std::to_string(1000 + j) + "-0", "event", json(s, j)});
            }
            REQUIRE(f.run(f.conn->exec_many(std::move(writes))).has_value());
            writes.clear();
        }
        std::vector<std::string> merged;
        for (int j = 0; j < kPerShard; ++j) {
            for (int s = 0; s < shards; ++s) {
                merged.push_back(json(s, j));
            }
        }
        for (const std::size_t limit : {std::size_t{1000}, std::size_t{100}, std::size_t{5}}) {
            CAPTURE(limit);
            const std::uint64_t before = redis_bytes_out(f);
            const Page page = events_page(f, "", limit);
            const std::uint64_t sent = redis_bytes_out(f) - before;
            CHECK(page.items_json == std::vector<std::string>(merged.begin(), merged.begin() + limit));
            // The next page goes on exactly where this one stopped.
            const Page next = events_page(f, page.next_cursor, 3);
            CHECK(next.items_json == std::vector<std::string>(merged.begin() + limit, merged.begin() + limit + 3));
            // Before: every shard sent `limit` entries, 16 times the page. (A small page still reads
            // up to limit / 16 + 8 from each shard.)
            if (limit >= 100) {
                CHECK(sent < 3 * limit * (json(0, 0).size() + 40) + 8000);
            }
        }
        // Paging from the middle of a millisecond goes on exactly where the page stopped.
        std::vector<std::string> paged;
        std::string cursor;
        for (int page = 0; page < 5; ++page) {
            const Page p = events_page(f, cursor, 99);
            paged.insert(paged.end(), p.items_json.begin(), p.items_json.end());
            cursor = p.next_cursor;
        }
        CHECK(paged == std::vector<std::string>(merged.begin(), merged.begin() + 5 * 99));
    }

    TEST_CASE("events feed: each shard goes on after its own last id, whatever the clocks of the shards")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        const paybridge::store::Keys& keys = f.store->keys();
        const auto add = [&](int shard, const std::string& id, const std::string& event_id) {
            CHECK(f.cmd({"XADD", keys.outbox(shard), id, "event", R"({"id":")" + event_id + R"("})"}).str == id);
        };
        add(1, "5000-0", "e1");
        const Page first = events_page(f, "", 100);
        CHECK(first.items_json == std::vector<std::string>{R"({"id":"e1"})"});
        CHECK(first.next_cursor.size() < 16);  // compact: 16 shards, one of them read
        // Shard 0 now appends an entry with a smaller id: its server's clock is behind (a clock
        // step, a failover, another Cluster node). The cursor must not skip it.
        add(0, "4000-0", "e0");
        add(1, "5000-1", "e2");
        const Page second = events_page(f, first.next_cursor, 100);
        CHECK(second.items_json == std::vector<std::string>{R"({"id":"e0"})", R"({"id":"e2"})"});
        const Page third = events_page(f, second.next_cursor, 100);
        CHECK(third.items_json.empty());
        CHECK(third.next_cursor == second.next_cursor);
        add(0, "4000-1", "e3");
        CHECK(events_page(f, second.next_cursor, 100).items_json == std::vector<std::string>{R"({"id":"e3"})"});
        // An id far ahead of Redis's clock (after a clock step back) is listed at once.
        add(2, "99999999999999-0", "e4");
        CHECK(events_page(f, second.next_cursor, 100).items_json.size() == 2);

        // A cursor of the earlier form "<ms>-<seq>.<shard>": shards up to <shard> after that id,
        // the later ones from it.
        add(3, "5000-1", "e5");
        const Page old_form = events_page(f, "5000-1.2", 100);
        CHECK(old_form.items_json ==
              std::vector<std::string>{R"({"id":"e5"})", R"({"id":"e4"})"});
        const Page old_first = events_page(f, "4000-0.0", 100);
        CHECK(old_first.items_json.size() == 5);  // e3, e1, e2, e5, e4: not e0 (4000-0 in shard 0)
        // The text form written before the compact one is still read.
        const Page text_form = events_page(f, "4000_0.1000-1.99999999995999.1000-1............", 100);
        CHECK(text_form.items_json == std::vector<std::string>{R"({"id":"e3"})"});
        // A compact cursor with something appended is not one this API wrote.
        CHECK(f.run(f.store->list_events(first.next_cursor + "A", 10)).error() ==
              paybridge::make_error_code(errc::invalid_argument));
        for (const char* bad : {"x", "1-0", "1-0.99", "a-b.1", "1-0.-1", "_", "5000_", "5000_0", "5000_a.........",
                                "5000_0-x..............", "18446744073709551615_1...............",
                                "5000_................", "-1_...............", "c", "c*", "cA", "cAAAA"}) {
            CAPTURE(bad);
            const auto r = f.run(f.store->list_events(bad, 10));
            CHECK(r.error() == paybridge::make_error_code(errc::invalid_argument));
        }
    }

    TEST_CASE("events feed: a cursor over 1024 shards read up to a day apart stays near 5 characters a shard")
    {
        // The reported case: 1024 shards, one entry each, their last entries spread over a day.
        // The text form took about 9 characters a shard (9,200 here, 10,517 in the report):
        // over the 8 KiB header limit once sent back.
        StoreFixture f([](paybridge::config::RedisConfig& c) { c.shards = 1024; });
        REQUIRE(f.wait_ready());
        const paybridge::store::Keys& keys = f.store->keys();
        constexpr std::uint64_t kBase = 1'700'000'000'000;
        std::uint64_t lcg = 12345;
        std::vector<std::vector<std::string>> writes;
        std::size_t entries = 0;
        for (int s = 0; s < 1024; ++s) {
            if (s >= 1000) {
                continue;  // a run of shards with nothing yet
            }
            lcg = lcg * 6364136223846793005ULL + 1442695040888963407ULL;
            // Shards 900..909 all at one id: a run of equal positions. Shard 5: a seq above 0.
            const std::uint64_t ms = s >= 900 && s < 910 ? kBase + 5 : kBase + (lcg >> 33) % 86'400'000;
            const std::string id = std::to_string(ms) + "-" + (s == 5 ? "7" : "0");
            writes.push_back({"XADD", keys.outbox(s), id, "event", R"({"id":"e)" + std::to_string(s) + R"("})"});
            ++entries;
        }
        REQUIRE(f.run(f.conn->exec_many(std::move(writes))).has_value());
        std::set<std::string> seen;
        std::string cursor;
        for (int guard = 0; guard < 10; ++guard) {
            const Page page = events_page(f, cursor, 1000);
            for (const std::string& json : page.items_json) {
                CHECK(seen.insert(json).second);
            }
            if (page.items_json.empty()) {
                CHECK(page.next_cursor == cursor);
                break;
            }
            cursor = page.next_cursor;
        }
        CHECK(seen.size() == entries);
        CAPTURE(cursor.size());
        CHECK(cursor.size() < 5600);  // 4 bytes a shard read, base64: 1000 x 5.3
        // Exact per shard: an entry a shard adds after its own position, older than the newest
        // position of all (its server's clock is behind), is the next page, and so is a new one.
        f.cmd({"XADD", keys.outbox(1010), "1700000000001-0", "event", R"({"id":"late-1010"})"});
        f.cmd({"XADD", keys.outbox(5), "99999999999999-0", "event", R"({"id":"new-5"})"});
        const Page next = events_page(f, cursor, 1000);
        CHECK(next.items_json == std::vector<std::string>{R"({"id":"late-1010"})", R"({"id":"new-5"})"});
        CHECK(events_page(f, next.next_cursor, 1000).items_json.empty());
    }

    TEST_CASE("an empty feed page returns the cursor it was given, null only for an empty feed from its start")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        CHECK(events_page(f, "", 10).next_cursor.empty());
        const Result<Page> no_anomalies = f.run(f.store->list_anomalies("", 10));
        REQUIRE(no_anomalies.has_value());
        CHECK(no_anomalies->next_cursor.empty());

        f.register_bill(new_bill("E-1"));
        f.apply(payment("E-1", "alipay", 1000, "N-1"));
        f.apply(payment("E-1", "alipay", 999, "N-2"));  // duplicate_payment or amount_mismatch: an anomaly
        const Page events = events_page(f, "", 10);
        REQUIRE(events.items_json.size() == 2);
        const Page tail = events_page(f, events.next_cursor, 10);
        CHECK(tail.items_json.empty());
        CHECK(tail.next_cursor == events.next_cursor);
        const Result<Page> anomalies = f.run(f.store->list_anomalies("", 10));
        REQUIRE(anomalies.has_value());
        REQUIRE(anomalies->items_json.size() == 1);
        const Result<Page> anomalies_tail = f.run(f.store->list_anomalies(anomalies->next_cursor, 10));
        REQUIRE(anomalies_tail.has_value());
        CHECK(anomalies_tail->items_json.empty());
        CHECK(anomalies_tail->next_cursor == anomalies->next_cursor);
        // A cursor of the earlier form comes back as it was given.
        CHECK(events_page(f, "99999999999999-0.3", 10).next_cursor == "99999999999999-0.3");
        // Polling with it sees what comes next, and nothing twice.
        f.apply(refund("E-1", 100, "R-1"));
        const Page fresh = events_page(f, tail.next_cursor, 10);
        REQUIRE(fresh.items_json.size() == 1);
        CHECK(num(parse_json(fresh.items_json[0]), "sequence") == 3);
    }

    TEST_CASE("anomalies feed pages like the events feed")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        for (int i = 0; i < 5; ++i) {
            const std::string id = "A-" + std::to_string(i);
            f.register_bill(new_bill(id));
            f.apply(payment(id, "alipay", 999, "N-" + id));  // amount_mismatch
        }
        f.apply(payment("A-unknown", "alipay", 1000, "N-u"));  // unknown_bill
        const Result<Page> all = f.run(f.store->list_anomalies("", 100));
        REQUIRE(all.has_value());
        REQUIRE(all->items_json.size() == 6);
        std::vector<std::string> paged;
        std::string cursor;
        for (int guard = 0; guard < 20; ++guard) {
            Result<Page> page = f.run(f.store->list_anomalies(cursor, 2));
            REQUIRE(page.has_value());
            if (page->items_json.empty()) {
                break;
            }
            paged.insert(paged.end(), page->items_json.begin(), page->items_json.end());
            cursor = page->next_cursor;
        }
        CHECK(paged == all->items_json);
        std::vector<std::string> kinds;
        for (const std::string& json : paged) {
            kinds.push_back(str(parse_json(json), "kind"));
        }
        // Within one millisecond the feed orders shards by number, not by arrival: count, don't index.
        CHECK(std::count(kinds.begin(), kinds.end(), "amount_mismatch") == 5);
        CHECK(std::count(kinds.begin(), kinds.end(), "unknown_bill") == 1);
    }

    TEST_CASE("list_bills: newest change first, filters, updated range, cursor paging")
    {
        std::int64_t now = 1'700'000'000'000;
        StoreFixture f({}, {}, [&now] { return now; });
        REQUIRE(f.wait_ready());
        const auto at = [&now](std::int64_t offset_s) { now = 1'700'000'000'000 + offset_s * 1000; };
        at(1);
        f.register_bill(new_bill("L-a1", "cust-a"));  // -> PAID alipay at 10
        at(2);
        f.register_bill(new_bill("L-b1", "cust-b"));  // stays PENDING (updated 2)
        at(3);
        f.register_bill(new_bill("L-a2", "cust-a"));  // -> PAID wechatpay at 11
        at(4);
        f.register_bill(new_bill("L-a3", "cust-a"));  // -> REFUNDED wechatpay at 13
        at(5);
        f.register_bill(new_bill("L-b2", "cust-b"));  // stays PENDING (updated 5)
        at(10);
        f.apply(payment("L-a1", "alipay", 1000, "N-1"));
        at(11);
        f.apply(payment("L-a2", "wechatpay", 1000, "N-2"));
        at(12);
        f.apply(payment("L-a3", "wechatpay", 1000, "N-3"));
        at(13);
        f.apply(refund("L-a3", 1000, "R-1"));

        BillFilter all;
        const Page page = bills_page(f, all);
        CHECK(ids_of(page) == std::vector<std::string>{"L-a3", "L-a2", "L-a1", "L-b2", "L-b1"});
        CHECK(page.next_cursor.empty());

        BillFilter paid;
        paid.status = "PAID";
        CHECK(ids_of(bills_page(f, paid)) == std::vector<std::string>{"L-a2", "L-a1"});
        BillFilter wechat;
        wechat.provider = "wechatpay";
        CHECK(ids_of(bills_page(f, wechat)) == std::vector<std::string>{"L-a3", "L-a2"});
        BillFilter cust_b;
        cust_b.customer_id = "cust-b";
        CHECK(ids_of(bills_page(f, cust_b)) == std::vector<std::string>{"L-b2", "L-b1"});
        BillFilter combined;
        combined.customer_id = "cust-a";
        combined.status = "REFUNDED";
        combined.provider = "wechatpay";
        CHECK(ids_of(bills_page(f, combined)) == std::vector<std::string>{"L-a3"});
        BillFilter none;
        none.status = "CLOSED";
        CHECK(bills_page(f, none).items_json.empty());

        // [from, to): updated at 5 and 10 are inside, 11 is not.
        BillFilter range;
        range.updated_from_ms = 1'700'000'005'000;
        range.updated_to_ms = 1'700'000'011'000;
        CHECK(ids_of(bills_page(f, range)) == std::vector<std::string>{"L-a1", "L-b2"});

        BillFilter paged;
        paged.limit = 2;
        const Page first = bills_page(f, paged);
        CHECK(ids_of(first) == std::vector<std::string>{"L-a3", "L-a2"});
        CHECK(first.next_cursor == "1700000011000:L-a2");
        CHECK(all_bill_ids(f, paged) == std::vector<std::string>{"L-a3", "L-a2", "L-a1", "L-b2", "L-b1"});
        BillFilter paged_cust = paged;
        paged_cust.customer_id = "cust-a";
        paged_cust.limit = 1;
        CHECK(all_bill_ids(f, paged_cust) == std::vector<std::string>{"L-a3", "L-a2", "L-a1"});
        BillFilter paged_range = range;
        paged_range.limit = 1;
        CHECK(all_bill_ids(f, paged_range) == std::vector<std::string>{"L-a1", "L-b2"});

        BillFilter bad;
        bad.cursor = "not-a-cursor";
        CHECK(f.run(f.store->list_bills(bad)).error() == paybridge::make_error_code(errc::invalid_argument));
    }

    TEST_CASE("list_bills pages through bills with the same updated time across shards")
    {
        std::int64_t now = 1'700'000'000'000;
        StoreFixture f({}, {}, [&now] { return now; });
        REQUIRE(f.wait_ready());
        std::vector<std::string> expected;
        for (int i = 0; i < 25; ++i) {
            const std::string id = "T-" + std::to_string(100 + i);
            f.register_bill(new_bill(id));
            expected.push_back(id);
        }
        std::sort(expected.rbegin(), expected.rend());  // same time: id descending
        for (const std::size_t limit : {std::size_t{1}, std::size_t{4}, std::size_t{25}, std::size_t{100}}) {
            CAPTURE(limit);
            BillFilter filter;
            filter.limit = limit;
            CHECK(all_bill_ids(f, filter) == expected);
        }
    }

    TEST_CASE("list_bills skips no bill when one already read changes between its read rounds")
    {
        StoreFixture f([](paybridge::config::RedisConfig& c) { c.shards = 1; });
        REQUIRE(f.wait_ready());
        // 200 bills changed in the same millisecond, ids descending R-100199 .. R-100000. A filtered
        // page of 2 reads (3 + 8) x 4 = 44 index entries in its first round (R-100199 .. R-100156);
        // alice's bills are R-100155 (the 45th), R-100010 and R-100000.
        const auto alice = [](int i) { return i == 155 || i == 10 || i == 0; };
        write_bills(f, 200, [&alice](int i) { return alice(i) ? "alice" : "bob"; });
        const std::string index = f.store->keys().updated(0);
        for (int i = 0; i < 200; ++i) {
            f.cmd({"ZADD", index, "1700000000000", "R-" + std::to_string(100000 + i)});
        }
        BillFilter filter;
        filter.customer_id = "alice";
        filter.limit = 2;
        // The page's first read goes out first; behind it on the same connection, R-100199 (read
        // in that round) changes: it leaves the score the second round goes on reading.
        std::optional<Result<Page>> page;
        asio::co_spawn(
            f.ctx, [&f, &page, filter]() -> asio::awaitable<void> { page.emplace(co_await f.store->list_bills(filter)); },
            asio::detached);
        std::optional<Result<paybridge::store::Reply>> moved;
        asio::co_spawn(f.ctx, exec_into(f.conn.get(), {"ZADD", index, "1700000000001", "R-100199"}, &moved),
                       asio::detached);
        REQUIRE(paybridge::test::run_until(f.ctx, [&] { return page.has_value() && moved.has_value(); }, 10s));
        REQUIRE(page->has_value());
        CHECK(ids_of(**page) == std::vector<std::string>{"R-100155", "R-100010"});
        filter.cursor = (*page)->next_cursor;
        CHECK(all_bill_ids(f, filter) == std::vector<std::string>{"R-100000"});
    }

    TEST_CASE("list_bills lists a bill only as it matches the filter in the read the page is built from")
    {
        // A page checks its filter on a few fields of each candidate, then reads the page's bills
        // whole. A bill that changes in between (paid while a status=PENDING page is read; refunded
        // again after updated_to) must not be listed as it is now under a filter it no longer
        // matches. A proxy in front of Redis makes the change exactly between the two reads: just
        // before the whole-bill read of the bill named `changed` reaches Redis.
        for (const bool by_time : {false, true}) {
            CAPTURE(by_time);
            std::int64_t now = 1'700'000'000'000;
            const std::string changed = by_time ? "L-refunded-2" : "L-pending-2";
            std::atomic<bool> once{false};
            const auto when = [&changed, &once](const paybridge::test::RedisHookProxy::Argv& argv) {
                // HMGET key + every field bill_json() reads: the whole-bill read, not the filter's.
                return argv.size() > 10 && argv[0] == "HMGET" && argv[1].ends_with(":bill:" + changed) &&
                       !once.exchange(true);
            };
            std::atomic<bool> hook_ran{false};
            std::string bill_key;
            std::string index_key;
            const auto hook = [&](const paybridge::test::RedisHookProxy::Direct& redis) {
                // What another instance's change writes into the bill (store/bill.lua), at 9 s.
                const std::string later = paybridge::format_rfc3339(1'700'000'009'000);
                std::string reply;
                if (by_time) {
                    reply = redis({"HSET", bill_key, "refunded_fen", "300", "updated_at", later, "version", "5"});
                } else {
                    reply = redis({"HSET", bill_key, "status", "PAID", "paid_fen", "1000", "provider", "alipay",
                                   "provider_txn_id", "TX-1", "paid_at", later, "updated_at", later, "version", "2"});
                }
                hook_ran = reply.starts_with(":") && redis({"ZADD", index_key, "1700000009000", changed}).starts_with(":");
            };
            std::unique_ptr<paybridge::test::RedisHookProxy> proxy;
            StoreFixture f(
                [&](paybridge::config::RedisConfig& c) {
                    c.shards = 1;
                    proxy = std::make_unique<paybridge::test::RedisHookProxy>(c.port, when, hook);
                    c.port = proxy->port();
                },
                {}, [&now] { return now; });
            REQUIRE(f.wait_ready());
            bill_key = f.store->keys().bill(changed);
            index_key = f.store->keys().updated(0);
            for (const char* id : {"L-pending-1", "L-pending-2", "L-pending-3", "L-refunded-1", "L-refunded-2"}) {
                now += 1000;
                f.register_bill(new_bill(id));
            }
            for (const char* id : {"L-refunded-1", "L-refunded-2"}) {  // PARTIALLY_REFUNDED at 6 s and 7 s
                now += 1000;
                f.apply(payment(id, "wechatpay", 1000, std::string("N-") + id));
                f.apply(refund(id, 100, std::string("R-") + id));
            }
            REQUIRE(str(f.bill("L-refunded-2"), "status") == "PARTIALLY_REFUNDED");

            BillFilter filter;
            if (by_time) {
                filter.status = "PARTIALLY_REFUNDED";
                filter.updated_to_ms = 1'700'000'008'000;
            } else {
                filter.status = "PENDING";
            }
            const Page page = bills_page(f, filter);
            CHECK(proxy->fired() == 1);
            CHECK(hook_ran);
            const std::vector<std::string> expected =
                by_time ? std::vector<std::string>{"L-refunded-1"} : std::vector<std::string>{"L-pending-3", "L-pending-1"};
            CHECK(ids_of(page) == expected);
            for (const std::string& json : page.items_json) {
                const rapidjson::Document bill = parse_json(json);
                CHECK(str(bill, "status") == filter.status);
                if (by_time) {
                    CHECK(*paybridge::parse_rfc3339(str(bill, "updated_at")) < filter.updated_to_ms);
                }
            }
            CHECK(page.next_cursor.empty());
        }
    }

    TEST_CASE("list_bills with a rare filter pages to the end through thousands of bills changed in one millisecond")
    {
        StoreFixture f([](paybridge::config::RedisConfig& c) { c.shards = 1; });
        REQUIRE(f.wait_ready());
        // More bills at one score than a page's budget of index entries (4096): every page after
        // the first re-reads the ones before its cursor, which must not use the budget up.
        const auto alice = [](int i) { return i % 1500 == 7; };
        write_bills(f, 6000, [&alice](int i) { return alice(i) ? "alice" : "bob"; });
        std::vector<std::vector<std::string>> same_ms;
        std::vector<std::string> expected;
        for (int i = 0; i < 6000; ++i) {
            const std::string id = "R-" + std::to_string(100000 + i);
            same_ms.push_back({"ZADD", f.store->keys().updated(0), "1700000000000", id});
        }
        REQUIRE(f.run(f.conn->exec_many(std::move(same_ms))).has_value());
        for (int i = 6000 - 1; i >= 0; --i) {
            if (alice(i)) {
                expected.push_back("R-" + std::to_string(100000 + i));
            }
        }
        BillFilter filter;
        filter.customer_id = "alice";
        filter.limit = 50;
        CHECK(all_bill_ids(f, filter) == expected);  // all_bill_ids gives up after 100 pages
    }

    TEST_CASE("list_bills: an unfiltered page reads about limit bills over all shards, not limit from each")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        const std::vector<std::string> ids = write_bills(f, 4000, [](int) { return "bob"; });
        for (const std::size_t limit : {std::size_t{500}, std::size_t{37}}) {
            CAPTURE(limit);
            BillFilter filter;
            filter.limit = limit;
            const auto commands_before = f.conn->stats().commands.load();
            const Page page = bills_page(f, filter);
            const auto cost = f.conn->stats().commands.load() - commands_before;
            CHECK(ids_of(page) == std::vector<std::string>(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(limit)));
            CHECK(page.next_cursor == std::to_string(1'700'000'000'000 + 4000 - static_cast<std::int64_t>(limit)) + ":" +
                                          ids[limit - 1]);
            // An HMGET per index entry read, and one per bill of the page. Before: 16 x (limit + 1) entries.
            CHECK(cost <= 2 * limit + 400);
        }
    }

    TEST_CASE("list_bills with a rare filter examines a bounded number of bills per page")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        // Every 1500th bill is alice's.
        const auto alice = [](int i) { return i % 1500 == 7; };
        write_bills(f, 12000, [&alice](int i) { return alice(i) ? "alice" : "bob"; });
        std::vector<std::string> expected;
        for (int i = 12000 - 1; i >= 0; --i) {
            if (alice(i)) {
                expected.push_back("R-" + std::to_string(100000 + i));
            }
        }
        REQUIRE(expected.size() == 8);

        BillFilter filter;
        filter.customer_id = "alice";
        filter.limit = 50;
        std::vector<std::string> got;
        int pages = 0;
        for (; pages < 100; ++pages) {
            const auto commands_before = f.conn->stats().commands.load();
            const Page page = bills_page(f, filter);
            // A bounded number of index entries, one small HMGET each, then the page's bills.
            CHECK(f.conn->stats().commands.load() - commands_before <= 4400);
            CHECK(page.items_json.size() <= 50);
            for (const std::string& id : ids_of(page)) {
                got.push_back(id);
            }
            if (page.next_cursor.empty()) {
                break;
            }
            filter.cursor = page.next_cursor;
        }
        CHECK(got == expected);
        CHECK(pages >= 2);  // short pages with a cursor at the scan frontier, then the rest
        // Whole bill hashes (every notification marker) are never read for a listing.
        CHECK(f.cmd({"INFO", "commandstats"}).str.find("cmdstat_hgetall") == std::string::npos);
    }

    TEST_CASE("wait_replicas with no replica: a change answers store_unavailable, and so does its retry")
    {
        StoreFixture f([](paybridge::config::RedisConfig& c) {
            c.wait_replicas = 1;
            c.wait_timeout = std::chrono::milliseconds(100);
        });
        REQUIRE(f.wait_ready());
        const auto reg = f.run(f.store->register_bill(new_bill("W-1")));
        CHECK(reg.error() == paybridge::make_error_code(errc::store_unavailable));
        // The bill was written; only the replication guarantee is missing, and a retry cannot
        // give it either (it writes a marker on the shard and waits for that).
        const auto again = f.run(f.store->register_bill(new_bill("W-1")));
        CHECK(again.error() == paybridge::make_error_code(errc::store_unavailable));
        CHECK(f.integer({"EXISTS", f.store->keys().bill("W-1")}) == 1);

        const auto start = std::chrono::steady_clock::now();
        const auto paid = f.run(f.store->apply(payment("W-1", "alipay", 1000, "N-1")));
        CHECK(std::chrono::steady_clock::now() - start >= 90ms);
        CHECK(paid.error() == paybridge::make_error_code(errc::store_unavailable));
        // The provider's retry is a duplicate in the script (nothing is written twice), but it is
        // not acknowledged while the replicas lack the change it repeats.
        const auto retry = f.run(f.store->apply(payment("W-1", "alipay", 1000, "N-1")));
        CHECK(retry.error() == paybridge::make_error_code(errc::store_unavailable));
        CHECK(f.outbox_len("W-1") == 1);
        CHECK(f.integer({"EXISTS", f.store->keys().replicated(0)}) == 1);
    }

    TEST_CASE("wait_replicas with a real replica: a change and its repeats are acknowledged while it has them")
    {
        StoreFixture f(wait_for_one_replica);
        REQUIRE(f.wait_ready());
        const auto replica = start_replica(f);
        const auto reg = f.run(f.store->register_bill(new_bill("W-3")));
        REQUIRE(reg.has_value());
        CHECK(reg->outcome == RegisterOutcome::created);
        const auto paid = f.run(f.store->apply(payment("W-3", "alipay", 1000, "N-1")));
        REQUIRE(paid.has_value());
        CHECK(paid->outcome == ApplyOutcome::applied);
        // A repeat writes the shard's marker and waits for it: acknowledged, nothing written twice.
        const auto repeat = f.run(f.store->apply(payment("W-3", "alipay", 1000, "N-1")));
        REQUIRE(repeat.has_value());
        CHECK(repeat->outcome == ApplyOutcome::duplicate);
        CHECK(f.outbox_len("W-3") == 1);
        const auto again = f.run(f.store->register_bill(new_bill("W-3")));
        REQUIRE(again.has_value());
        CHECK(again->outcome == RegisterOutcome::identical);

        // Without the replica, the same repeat is not acknowledged: it did wait.
        replica->stop();
        const auto alone = f.run(f.store->apply(payment("W-3", "alipay", 1000, "N-1")));
        CHECK(alone.error() == paybridge::make_error_code(errc::store_unavailable));
    }

    TEST_CASE("wait_replicas: a confirmation on another primary than the one written to confirms nothing")
    {
        // The write connection and the confirmation connection follow Sentinel each on its own
        // (a watch per connection, every second), so during a failover they can name different
        // primaries for a moment. Here they simply go to two servers, each with a replica.
        StoreFixture f(wait_for_one_replica);
        REQUIRE(f.wait_ready());
        const auto replica = start_replica(f);
        paybridge::test::RedisTestServer other_primary;
        paybridge::test::RedisTestServer other_replica(
            std::vector<std::string>{"--replicaof", "127.0.0.1", std::to_string(other_primary.port())});
        paybridge::store::RedisConnection elsewhere(f.ctx.get_executor(), paybridge::test::redis_config(other_primary));
        elsewhere.start();
        REQUIRE(paybridge::test::run_until(f.ctx, [&] { return elsewhere.ready(); }, std::chrono::seconds(5)));
        bool acked = false;
        for (int i = 0; i < 400 && !acked; ++i) {
            f.run(elsewhere.exec({"SET", "warm-up", "1"}));
            const auto waited = f.run(elsewhere.exec({"WAIT", "1", "50"}));
            acked = waited && waited->is_integer() && waited->integer == 1;
        }
        REQUIRE(acked);  // that primary's replica acknowledges writes

        paybridge::store::RedisBillStore split(*f.conn, f.cfg, {}, &elsewhere);
        const auto reg = f.run(split.register_bill(new_bill("W-9")));
        CHECK(reg.error() == paybridge::make_error_code(errc::store_unavailable));
        const auto paid = f.run(split.apply(payment("W-9", "alipay", 1000, "N-1")));
        CHECK(paid.error() == paybridge::make_error_code(errc::store_unavailable));
        // The same calls confirmed on the primary written to are acknowledged (the retry of each).
        const auto reg_again = f.run(f.store->register_bill(new_bill("W-9")));
        REQUIRE(reg_again.has_value());
        CHECK(reg_again->outcome == RegisterOutcome::identical);
        const auto paid_again = f.run(f.store->apply(payment("W-9", "alipay", 1000, "N-1")));
        REQUIRE(paid_again.has_value());
        CHECK(paid_again->outcome == ApplyOutcome::duplicate);
        elsewhere.stop();
        f.ctx.restart();
        f.ctx.run_for(std::chrono::milliseconds(200));
    }

    TEST_CASE("wait_replicas: a confirmation whose SET the primary refuses (NOREPLICAS) is not confirmed by an older write")
    {
        StoreFixture f(wait_for_one_replica);
        REQUIRE(f.wait_ready());
        const auto replica = start_replica(f);
        REQUIRE(f.run(f.store->register_bill(new_bill("W-4"))).has_value());
        const auto paid = f.run(f.store->apply(payment("W-4", "alipay", 1000, "N-1")));
        REQUIRE(paid.has_value());
        CHECK(paid->outcome == ApplyOutcome::applied);
        // The primary now refuses writes. The provider's repeat reads only (a duplicate), and the
        // replica has acknowledged every write this far, so a WAIT alone would say "1": the
        // refused SET must make the repeat unconfirmed instead.
        f.cmd({"CONFIG", "SET", "min-replicas-to-write", "2"});
        const auto refused = f.run(f.store->apply(payment("W-4", "alipay", 1000, "N-1")));
        CHECK(refused.error() == paybridge::make_error_code(errc::store_unavailable));
        f.cmd({"CONFIG", "SET", "min-replicas-to-write", "0"});
        const auto repeat = f.run(f.store->apply(payment("W-4", "alipay", 1000, "N-1")));
        REQUIRE(repeat.has_value());
        CHECK(repeat->outcome == ApplyOutcome::duplicate);
        CHECK(f.outbox_len("W-4") == 1);
    }

    TEST_CASE("wait_replicas without a replica: concurrent confirmations share rounds, and WAIT never holds up the pipelined connection")
    {
        StoreFixture f([](paybridge::config::RedisConfig& c) {
            c.wait_replicas = 1;
            c.wait_timeout = std::chrono::milliseconds(300);
            c.request_timeout = std::chrono::milliseconds(1000);
        });
        REQUIRE(f.wait_ready());
        f.cmd({"SET", "k", "v"});
        const auto reconnects = f.conn->stats().reconnects.load();
        const auto confirmations = f.replicas->stats().commands.load();
        // Eight notifications at once (unknown bills: each keeps an orphan, so each wrote), and a
        // read on the same pipelined connection behind them.
        constexpr int kN = 8;
        std::vector<std::optional<Result<ApplyResult>>> results(kN);
        std::optional<Result<paybridge::store::Reply>> read;
        for (int i = 0; i < kN; ++i) {
            asio::co_spawn(f.ctx,
                           apply_into(f.store.get(), payment("W-5-" + std::to_string(i), "alipay", 1000, "N-1"),
                                      &results[static_cast<std::size_t>(i)]),
                           asio::detached);
        }
        asio::co_spawn(f.ctx, exec_into(f.conn.get(), {"GET", "k"}, &read), asio::detached);
        REQUIRE(paybridge::test::run_until(
            f.ctx,
            [&] { return read.has_value() && std::all_of(results.begin(), results.end(), [](auto& r) { return r.has_value(); }); },
            10s));
        // Every notification is refused for the missing replica, none for a timeout of the
        // connection (eight WAITs queued on it would take 8 x 300 ms > request_timeout, and the
        // reconnect would fail everything else in flight).
        for (const auto& r : results) {
            CHECK((*r).error() == paybridge::make_error_code(errc::store_unavailable));
        }
        REQUIRE(read->has_value());
        CHECK((*read)->str == "v");
        CHECK(f.conn->stats().reconnects.load() == reconnects);
        // One round for the first caller, one for all who came while it waited: SET + WAIT each.
        const auto sent = f.replicas->stats().commands.load() - confirmations;
        CHECK(sent >= 2);
        CHECK(sent <= 4);
        // The pipelined connection sent no WAIT at all.
        CHECK(f.cmd({"INFO", "commandstats"}).str.find("cmdstat_wait:calls=" + std::to_string(sent / 2) + ",") !=
              std::string::npos);
    }

    TEST_CASE("wait_replicas = 0 sends no WAIT")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("W-2"));
        const auto before = f.conn->stats().commands.load();
        f.apply(payment("W-2", "alipay", 1000, "N-1"));
        CHECK(f.conn->stats().commands.load() == before + 1);  // the EVALSHA alone
    }

    TEST_CASE("reconciliation: bills created in from..to by provider and status, anomalies by kind")
    {
        std::int64_t now = 1'700'000'000'000;
        StoreFixture f({}, {}, [&now] { return now; });
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("S-1", "c", 1000));
        f.register_bill(new_bill("S-2", "c", 2000));
        f.register_bill(new_bill("S-3", "c", 3000));
        f.register_bill(new_bill("S-4", "c", 4000));
        now += 60'000;
        f.register_bill(new_bill("S-late", "c", 5000));
        f.apply(payment("S-1", "alipay", 1000, "N-1"));
        f.apply(payment("S-2", "wechatpay", 2000, "N-2"));
        f.apply(refund("S-2", 500, "R-1"));
        f.apply(payment("S-3", "wechatpay", 3000, "N-3"));
        f.apply(payment("S-4", "alipay", 1, "N-4"));  // amount_mismatch

        const auto sum = f.run(f.store->reconciliation(1'700'000'000'000, 1'700'000'060'000));
        REQUIRE(sum.has_value());
        REQUIRE(sum->groups.size() == 4);
        CHECK(sum->groups[0].provider == "alipay");
        CHECK(sum->groups[0].status == "PAID");
        CHECK(sum->groups[0].count == 1);
        CHECK(sum->groups[0].paid_fen == 1000);
        CHECK(sum->groups[1].provider == "none");
        CHECK(sum->groups[1].status == "PENDING");
        CHECK(sum->groups[1].amount_fen == 4000);
        CHECK(sum->groups[2].provider == "wechatpay");
        CHECK(sum->groups[2].status == "PAID");
        CHECK(sum->groups[2].amount_fen == 3000);
        CHECK(sum->groups[3].status == "PARTIALLY_REFUNDED");
        CHECK(sum->groups[3].refunded_fen == 500);

        // Anomalies are dated by Redis's clock (now), outside this fake range.
        CHECK(sum->anomalies.empty());
        const std::int64_t real_now = paybridge::unix_ms(std::chrono::system_clock::now());
        const auto json = f.run(f.store->summary(1'600'000'000'000, real_now + 60'000));
        REQUIRE(json.has_value());
        const auto doc = parse_json(*json);
        CHECK(num(doc["totals"], "count") == 5);
        CHECK(num(doc["totals"], "amount_fen") == 15000);
        CHECK(num(doc["totals"], "paid_fen") == 6000);
        CHECK(num(doc["totals"], "refunded_fen") == 500);
        CHECK(num(doc["anomalies"], "amount_mismatch") == 1);
        CHECK(doc["bills"].IsArray());
        CHECK(doc["bills"].Size() == 4);
        // Bills paid by no provider: provider null, as the bill itself says (not "none").
        CHECK(doc["bills"][1]["provider"].IsNull());
        CHECK(str(doc["bills"][1], "status") == "PENDING");

        const auto empty = f.run(f.store->reconciliation(0, 1000));
        REQUIRE(empty.has_value());
        CHECK(empty->groups.empty());
        CHECK(num(parse_json(empty->json)["totals"], "count") == 0);
    }

    TEST_CASE("reconciliation counts the payments a bill received besides its own and their refunds per provider")
    {
        // A provider's statement lists every payment it took: a bill paid twice shows its second
        // payment (and a payment refunded in full and replaced) under other_payments.
        StoreFixture f;
        REQUIRE(f.wait_ready());
        f.register_bill(new_bill("D-1", "c", 1000));
        f.register_bill(new_bill("D-2", "c", 1000));
        f.register_bill(new_bill("D-3", "c", 1000));
        const auto second = [](const std::string& bill, const std::string& nid) {
            PaymentEvent ev = payment(bill, "wechatpay", 1000, nid);
            ev.provider_txn_id = "WX-" + bill;
            return ev;
        };
        // D-1: Alipay, then WeChat Pay again; WeChat refunds 300 of its payment, Alipay all of its:
        // the WeChat payment takes the bill over, the Alipay one steps aside.
        f.apply(payment("D-1", "alipay", 1000, "N-1"));
        f.apply(second("D-1", "N-2"));
        PaymentEvent wx_refund = second("D-1", "N-3");
        wx_refund.kind = EventKind::refund;
        wx_refund.refund_id = "WR-1";
        wx_refund.refund_fen = 300;
        f.apply(wx_refund);
        PaymentEvent ali_refund = payment("D-1", "alipay", 1000, "N-4");
        ali_refund.kind = EventKind::refund;
        ali_refund.refund_id = "AR-1";
        ali_refund.refund_fen = 1000;
        ali_refund.refund_cumulative = true;
        f.apply(ali_refund);
        // D-2: paid twice, nothing refunded. D-3: paid once.
        f.apply(payment("D-2", "alipay", 1000, "N-5"));
        f.apply(second("D-2", "N-6"));
        f.apply(payment("D-3", "alipay", 1000, "N-7"));

        const std::int64_t real_now = paybridge::unix_ms(std::chrono::system_clock::now());
        const auto sum = f.run(f.store->reconciliation(real_now - 3'600'000, real_now + 60'000));
        REQUIRE(sum.has_value());
        REQUIRE(sum->groups.size() == 2);
        CHECK(sum->groups[0].provider == "alipay");
        CHECK(sum->groups[0].status == "PAID");
        CHECK(sum->groups[0].count == 2);
        CHECK(sum->groups[0].paid_fen == 2000);
        CHECK(sum->groups[1].provider == "wechatpay");
        CHECK(sum->groups[1].status == "PARTIALLY_REFUNDED");
        CHECK(sum->groups[1].paid_fen == 1000);
        CHECK(sum->groups[1].refunded_fen == 300);
        REQUIRE(sum->other_payments.size() == 2);
        CHECK(sum->other_payments[0].provider == "alipay");  // D-1's, refunded in full
        CHECK(sum->other_payments[0].count == 1);
        CHECK(sum->other_payments[0].paid_fen == 1000);
        CHECK(sum->other_payments[0].refunded_fen == 1000);
        CHECK(sum->other_payments[1].provider == "wechatpay");  // D-2's second payment
        CHECK(sum->other_payments[1].count == 1);
        CHECK(sum->other_payments[1].paid_fen == 1000);
        CHECK(sum->other_payments[1].refunded_fen == 0);
        // Per provider, what it took and gave back: Alipay 3000 and 1000, WeChat Pay 2000 and 300.
        const auto doc = parse_json(sum->json);
        REQUIRE(doc["other_payments"].IsArray());
        REQUIRE(doc["other_payments"].Size() == 2);
        CHECK(std::string(doc["other_payments"][0]["provider"].GetString()) == "alipay");
        CHECK(num(doc["other_payments"][0], "paid_fen") == 1000);
        CHECK(num(doc["other_payments"][1], "count") == 1);
    }

    TEST_CASE("reconciliation reads only the summed fields, continuing each shard by score")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        const paybridge::store::Keys& keys = f.store->keys();
        // 2,500 bills of one shard, 1,500 created in one millisecond and 1,000 in the next (more
        // than a round reads), each with 20 notification markers the summary must not read.
        constexpr std::int64_t kAt = 1'700'000'000'000;
        const std::string marker_value(100, '1');
        std::vector<std::vector<std::string>> writes;
        int written = 0;
        for (int i = 0; written < 2500; ++i) {
            const std::string id = "C-" + std::to_string(i);
            if (keys.shard_of(id) != 0) {
                continue;
            }
            const bool paid = written % 2 == 0;
            std::vector<std::string> hset{"HSET", keys.bill(id), "id", id, "status", paid ? "PAID" : "PENDING",
                                          "amount_fen", "100", "paid_fen", paid ? "100" : "0", "refunded_fen", "0",
                                          "provider", paid ? "alipay" : ""};
            for (int m = 0; m < 20; ++m) {
                hset.push_back("n:alipay:N-" + id + "-" + std::to_string(m));
                hset.push_back(marker_value);
            }
            writes.push_back(std::move(hset));
            writes.push_back({"ZADD", keys.created(0), std::to_string(written < 1500 ? kAt : kAt + 1), id});
            ++written;
        }
        REQUIRE(f.run(f.conn->exec_many(std::move(writes))).has_value());

        const std::uint64_t before = redis_bytes_out(f);
        const auto sum = f.run(f.store->reconciliation(kAt, kAt + 2));
        const std::uint64_t sent = redis_bytes_out(f) - before;
        REQUIRE(sum.has_value());
        REQUIRE(sum->groups.size() == 2);
        CHECK(sum->groups[0].provider == "alipay");
        CHECK(sum->groups[0].count == 1250);
        CHECK(sum->groups[0].paid_fen == 125'000);
        CHECK(sum->groups[1].provider == "none");
        CHECK(sum->groups[1].count == 1250);
        CHECK(sum->groups[1].amount_fen == 125'000);
        // Five short fields per bill, not every marker (before: 2,500 whole hashes, about 6 MB).
        CHECK(sent < 2500 * 200);
        CHECK(f.cmd({"INFO", "commandstats"}).str.find("cmdstat_hgetall") == std::string::npos);
    }

    TEST_CASE("reconciliation: sums past 2^63 - 1 fen are an error, not a wrapped total")
    {
        // No bill can hold such amounts (at most 10^12 fen each): only hashes written around
        // paybridge can. Before, the sum wrapped (undefined behaviour) into a negative total.
        StoreFixture f;
        REQUIRE(f.wait_ready());
        const paybridge::store::Keys& keys = f.store->keys();
        constexpr std::int64_t kAt = 1'700'000'000'000;
        std::vector<std::vector<std::string>> writes;
        for (const char* id : {"O-1", "O-2"}) {
            writes.push_back({"HSET", keys.bill(id), "id", id, "status", "PAID", "amount_fen", "9000000000000000000",
                              "paid_fen", "9000000000000000000", "refunded_fen", "0", "provider", "alipay"});
            writes.push_back({"ZADD", keys.created(keys.shard_of(id)), std::to_string(kAt), id});
        }
        REQUIRE(f.run(f.conn->exec_many(std::move(writes))).has_value());
        const auto sum = f.run(f.store->reconciliation(kAt, kAt + 1));
        REQUIRE_FALSE(sum.has_value());
        CHECK(sum.error() == paybridge::make_error_code(errc::internal));
    }

    TEST_CASE("ping: PONG when ready, store_unavailable when Redis is gone")
    {
        StoreFixture f;
        REQUIRE(f.wait_ready());
        CHECK(f.run(f.store->ping()).has_value());
        f.server.stop();
        REQUIRE(paybridge::test::run_until(f.ctx, [&] { return !f.conn->ready(); }, 2s));
        const auto r = f.run(f.store->ping());
        CHECK(r.error() == paybridge::make_error_code(errc::store_unavailable));
        const auto apply = f.run(f.store->apply(payment("X", "alipay", 1, "N")));
        CHECK(apply.error() == paybridge::make_error_code(errc::store_unavailable));
    }
}

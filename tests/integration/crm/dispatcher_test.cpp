// The Dispatcher against a real redis-server and a real HTTP receiver: delivery, signatures,
// retries, outages, crashes, several instances, dead letters and recovery.

#include "tests/integration/crm/crm_fixture.hpp"
#include "tests/integration/redis_hook_proxy.hpp"
#include "tests/support/json.hpp"

#include "core/error.hpp"
#include "core/payment_event.hpp"
#include "crm/delivery_schema.hpp"
#include "crm/webhook_signer.hpp"
#include "store/redis_bill_store.hpp"
#include "tests/support/redis_cluster.hpp"

#include <doctest/doctest.h>
#include <rapidjson/document.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <set>

namespace asio = boost::asio;
using namespace paybridge;
using namespace paybridge::test;

namespace {

bool all_acknowledged(const HttpReceiver& receiver, const std::vector<std::string>& ids)
{
    const std::set<std::string> acked = receiver.acknowledged_ids();
    return std::all_of(ids.begin(), ids.end(), [&](const std::string& id) { return acked.count(id) > 0; });
}

}  // namespace

TEST_CASE("events are delivered, signed, with webhook-id = event id, and acknowledged in Redis")
{
    RedisEnv env;
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    std::vector<std::string> ids;
    // Written before the consumer group exists: the group starts at 0, so they are delivered.
    for (int i = 0; i < 12; ++i) {
        ids.push_back(env.add_event("B" + std::to_string(i), 1));
    }
    RunningDispatcher d(env.ioc, env.cfg, test_options(receiver.url(), {secret}));
    REQUIRE(run_until(env.ioc, [&] { return all_acknowledged(receiver, ids); }, 10s));
    for (int i = 12; i < 20; ++i) {
        ids.push_back(env.add_event("B" + std::to_string(i), 1));
    }
    REQUIRE(run_until(env.ioc, [&] { return all_acknowledged(receiver, ids); }, 10s));
    REQUIRE(run_until(env.ioc, [&] { return d->stats().delivered.load() == ids.size(); }, 5s));

    check_all_signed(receiver);
    CHECK(receiver.count() == ids.size());
    for (const std::string& id : ids) {
        CHECK(env.state_of(id) == "delivered");
        CHECK(env.delivery(id)["attempts"] == "1");
    }
    CHECK(env.pending_total() == 0);
    CHECK(d->stats().failed_attempts.load() == 0);
    REQUIRE(run_until(env.ioc, [&] { return d->stats().backlog.load() == 0; }, 5s));
    CHECK(d->stats().oldest_pending_age_ms.load() == 0);
}

TEST_CASE("events of one bill arrive in sequence order (real bill script)")
{
    RedisEnv env;
    store::RedisBillStore bills(*env.conn, env.cfg);
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});

    for (const std::string bill_id : {"ORD-1", "ORD-2", "ORD-3"}) {
        NewBill nb;
        nb.id = bill_id;
        nb.amount_fen = 1000;
        nb.customer_id = "c1";
        nb.description = "order";
        Result<RegisterResult> reg = run_awaitable(env.ioc, bills.register_bill(std::move(nb)));
        REQUIRE(reg.has_value());

        PaymentEvent pay;
        pay.provider = "wechatpay";
        pay.channel = "wechatpay_v3";
        pay.kind = EventKind::payment;
        pay.notification_id = "n-pay-" + bill_id;
        pay.account = "1900000001";
        pay.bill_id = bill_id;
        pay.provider_txn_id = "T-" + bill_id;
        pay.total_fen = 1000;
        pay.provider_status = "SUCCESS";
        Result<ApplyResult> applied = run_awaitable(env.ioc, bills.apply(std::move(pay)));
        REQUIRE(applied.has_value());
        REQUIRE(applied->outcome == ApplyOutcome::applied);
        for (int r = 1; r <= 3; ++r) {
            PaymentEvent refund;
            refund.provider = "wechatpay";
            refund.channel = "wechatpay_v3";
            refund.kind = EventKind::refund;
            refund.notification_id = "n-ref-" + bill_id + std::to_string(r);
            refund.account = "1900000001";
            refund.bill_id = bill_id;
            refund.provider_txn_id = "T-" + bill_id;
            refund.total_fen = 1000;
            refund.refund_id = "R" + std::to_string(r);
            refund.refund_fen = 100;
            refund.provider_status = "SUCCESS";
            Result<ApplyResult> refunded = run_awaitable(env.ioc, bills.apply(std::move(refund)));
            REQUIRE(refunded.has_value());
            REQUIRE(refunded->outcome == ApplyOutcome::applied);
        }
    }

    RunningDispatcher d(env.ioc, env.cfg, test_options(receiver.url(), {secret}));
    REQUIRE(run_until(env.ioc, [&] { return receiver.acknowledged_ids().size() == 12; }, 10s));
    check_all_signed(receiver);

    std::map<std::string, std::vector<std::int64_t>> sequences;
    for (const ReceivedRequest& r : receiver.requests()) {
        const rapidjson::Document ev = parse_json(r.body);
        sequences[ev["bill_id"].GetString()].push_back(ev["sequence"].GetInt64());
        const std::string type = ev["type"].GetString();
        CHECK((type == "bill.paid" || type == "bill.refunded"));
    }
    REQUIRE(sequences.size() == 3);
    for (const auto& [bill, seqs] : sequences) {
        CAPTURE(bill);
        CHECK(seqs.size() == 4);
        CHECK(std::is_sorted(seqs.begin(), seqs.end()));
        CHECK(std::adjacent_find(seqs.begin(), seqs.end()) == seqs.end());
    }
}

TEST_CASE("500 then 200: delivered on the second attempt, both attempts recorded")
{
    RedisEnv env;
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    receiver.push_statuses({500});
    receiver.set_response_body(std::string(1000, 'x'));
    const std::string id = env.add_event("B1", 1);

    RunningDispatcher d(env.ioc, env.cfg, test_options(receiver.url(), {secret}));
    REQUIRE(run_until(env.ioc, [&] { return env.state_of(id) == "delivered"; }, 10s));

    const std::vector<ReceivedRequest> got = receiver.requests();
    REQUIRE(got.size() == 2);
    CHECK(got[0].status == 500);
    CHECK(got[1].status == 200);
    CHECK(got[0].webhook_id == id);
    CHECK(got[1].webhook_id == id);  // stable across retries
    CHECK(got[0].body == got[1].body);
    check_all_signed(receiver);
    // The retry waited for the first schedule step (100 ms).
    CHECK(got[1].at - got[0].at >= 90ms);

    crm::DeliveryAdmin admin(*env.conn, kPrefix, kShards);
    Result<std::string> text = run_awaitable(env.ioc, admin.get_event_deliveries(id));
    REQUIRE(text.has_value());
    const rapidjson::Document doc = parse_json(*text);
    REQUIRE(doc["event"].IsObject());
    CHECK(std::string(doc["event"]["id"].GetString()) == id);
    CHECK(std::string(doc["delivery"]["state"].GetString()) == "delivered");
    CHECK(doc["delivery"]["attempts"].GetInt() == 2);
    CHECK(doc["delivery"]["last_status"].GetInt() == 200);
    CHECK(doc["delivery"]["delivered_at"].IsString());
    const auto& attempts = doc["attempts"];
    REQUIRE(attempts.Size() == 2);
    CHECK(attempts[0]["status"].GetInt() == 500);
    CHECK(std::string(attempts[0]["outcome"].GetString()) == "retry");
    CHECK(attempts[0]["next_at"].IsString());
    CHECK(std::string(attempts[0]["error"].GetString()) == "http status 500");
    CHECK(std::string(attempts[0]["response_body"].GetString()) == std::string(256, 'x'));
    CHECK(attempts[0]["latency_ms"].GetInt64() >= 0);
    CHECK(attempts[1]["status"].GetInt() == 200);
    CHECK(std::string(attempts[1]["outcome"].GetString()) == "delivered");
    CHECK(attempts[1]["attempt"].GetInt() == 2);
    // Redis records the outcome before the dispatcher thread counts it: wait for the counters.
    CHECK(run_until(env.ioc, [&] { return d->stats().delivered.load() == 1; }, 5s));
    CHECK(d->stats().failed_attempts.load() == 1);
    CHECK(env.pending_total() == 0);
}

TEST_CASE("receiver down for a while: the backlog is delivered when it returns")
{
    RedisEnv env;
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    receiver.stop();
    std::vector<std::string> ids;
    for (int i = 0; i < 10; ++i) {
        ids.push_back(env.add_event("B" + std::to_string(i % 4), i + 1));
    }
    crm::DispatcherOptions options = test_options(receiver.url(), {secret});
    options.retry_schedule = {200ms, 200ms, 200ms, 200ms, 200ms, 200ms, 200ms, 200ms, 200ms, 200ms};
    RunningDispatcher d(env.ioc, env.cfg, options);

    REQUIRE(run_until(env.ioc, [&] { return d->stats().failed_attempts.load() >= 20; }, 10s));
    for (const std::string& id : ids) {
        CHECK(env.state_of(id) == "retrying");
    }
    REQUIRE(run_until(env.ioc, [&] { return d->stats().retrying.load() == 10 && d->stats().backlog.load() == 10; },
                      5s));
    CHECK(d->stats().oldest_pending_age_ms.load() > 0);
    // Waiting for a retry, every entry is held in the group's PEL by the retry holder, not by the
    // instance that read it: the instance's own PEL entries are only what it has in flight.
    std::size_t held = 0;
    for (int s = 0; s < kShards; ++s) {
        std::vector<std::string> argv{"XPENDING", env.keys.outbox(s), "crm", "-", "+", "100"};
        for (const auto& p : env.exec(std::move(argv)).elements) {
            CHECK(p.elements.at(1).str == crm::kRetryHolder);
            ++held;
        }
    }
    CHECK(held == ids.size());
    const std::map<std::string, std::string> rec = env.delivery(ids[0]);
    CHECK(rec.at("last_error").find("connect") != std::string::npos);
    CHECK(rec.at("last_status").empty());

    REQUIRE(receiver.start());
    REQUIRE(run_until(env.ioc, [&] { return all_acknowledged(receiver, ids); }, 10s));
    REQUIRE(run_until(env.ioc, [&] { return env.pending_total() == 0; }, 5s));
    for (const std::string& id : ids) {
        CHECK(env.state_of(id) == "delivered");
    }
    // The record kept its first-seen time through every attempt and counted each of them.
    const std::map<std::string, std::string> after = env.delivery(ids[0]);
    CHECK(after.at("first_seen_at") == rec.at("first_seen_at"));
    CHECK(std::stoll(after.at("attempts")) > std::stoll(rec.at("attempts")));
    CHECK(std::stoll(after.at("first_seen_at")) <= std::stoll(after.at("delivered_at")));
    check_all_signed(receiver);
    CHECK(d->stats().dead_letters.load() == 0);
}

TEST_CASE("a dispatcher that dies mid-delivery: another one redelivers every event, same webhook-id")
{
    RedisEnv env;
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    std::vector<std::string> ids;
    for (int i = 0; i < 6; ++i) {
        ids.push_back(env.add_event("B" + std::to_string(i), 1));
    }

    // Instance A reads everything and is mid-request when it "crashes": its io_context simply
    // stops running, so it never acknowledges anything.
    receiver.set_response_delay(10s);
    asio::io_context ioc_a;
    auto a = std::make_unique<RunningDispatcher>(ioc_a, env.cfg, test_options(receiver.url(), {secret}));
    REQUIRE(run_until(ioc_a, [&] { return receiver.count() == ids.size(); }, 10s));
    const std::string consumer_a = (*a)->consumer();

    receiver.set_response_delay(0ms);
    {
        RunningDispatcher b(env.ioc, env.cfg, test_options(receiver.url(), {secret}));
        CHECK(b->consumer() != consumer_a);
        REQUIRE(run_until(env.ioc, [&] { return all_acknowledged(receiver, ids); }, 10s));
        REQUIRE(run_until(env.ioc, [&] { return env.pending_total() == 0; }, 5s));
        CHECK(run_until(env.ioc, [&] { return b->stats().delivered.load() == ids.size(); }, 5s));
        CHECK(b->stats().reclaimed.load() == ids.size());
    }
    for (const std::string& id : ids) {
        CHECK(env.state_of(id) == "delivered");
        CHECK(acknowledged_counts(receiver)[id] == 1);
    }
    // Each event was sent twice (A's lost attempt, B's), always under the same webhook-id.
    std::map<std::string, int> sent;
    for (const ReceivedRequest& r : receiver.requests()) {
        ++sent[r.webhook_id];
    }
    for (const std::string& id : ids) {
        CHECK(sent[id] == 2);
    }
    check_all_signed(receiver);

    // A comes back to life only to shut down: its attempts time out, and those late failures must
    // not undo B's deliveries.
    ioc_a.restart();
    a.reset();
    for (const std::string& id : ids) {
        CHECK(env.state_of(id) == "delivered");
    }
    CHECK(env.pending_total() == 0);
}

TEST_CASE("kReclaim hands back an entry deleted while a dead instance held it so that it is reported")
{
    // The instance died after its read and before its delivery record: nothing but the PEL knew of
    // the entry, and Redis 7.0's XCLAIM drops a deleted entry from it silently. The reclaim now
    // returns it without fields, which the dispatcher logs as crm.entry_missing and acknowledges.
    RedisEnv env;
    const int shard = 0;
    const crm::DeliveryKeys keys(kPrefix, kShards);
    const crm::ShardKeys& k = keys.shard(shard);
    env.exec({"XGROUP", "CREATE", k.stream, "crm", "0", "MKSTREAM"});
    std::vector<std::string> ids;
    for (int i = 0; ids.size() < 2; ++i) {
        const std::string bill = "R" + std::to_string(i);
        if (env.keys.shard_of(bill) == shard) {
            ids.push_back(env.add_event(bill, 1));
        }
    }
    env.exec({"XREADGROUP", "GROUP", "crm", "dead-instance", "COUNT", "10", "STREAMS", k.stream, ">"});
    const store::Reply entries = env.exec({"XRANGE", k.stream, "-", "+"});
    REQUIRE(entries.elements.size() == 2);
    const std::string deleted = entries.elements[0].elements.at(0).str;
    const std::string kept = entries.elements[1].elements.at(0).str;
    CHECK(env.exec({"XDEL", k.stream, deleted}).integer == 1);

    const store::Reply claimed = env.exec({"EVAL", std::string(crm::scripts::kReclaim), "3", k.stream, k.retry, k.tries,
                                           "crm", "me", "0", "10", "500", std::string(crm::kRetryHolder)});
    REQUIRE(claimed.elements.size() == 2);
    std::map<std::string, bool> with_fields;
    for (const auto& c : claimed.elements) {
        with_fields[c.elements.at(0).str] = c.elements.at(1).is_array();
    }
    CHECK(with_fields == std::map<std::string, bool>{{deleted, false}, {kept, true}});

    // A dispatcher that reclaims such an entry says so and leaves nothing pending.
    CHECK(env.exec({"XACK", k.stream, "crm", kept}).integer == 1);
    std::string another;
    for (int i = 10; another.empty(); ++i) {
        const std::string bill = "R" + std::to_string(i);
        if (env.keys.shard_of(bill) == shard) {
            another = env.add_event(bill, 1);
        }
    }
    env.exec({"XREADGROUP", "GROUP", "crm", "dead-instance", "COUNT", "10", "STREAMS", k.stream, ">"});
    const store::Reply last = env.exec({"XREVRANGE", k.stream, "+", "-", "COUNT", "1"});
    const std::string gone = last.elements.at(0).elements.at(0).str;
    CHECK(env.exec({"XDEL", k.stream, gone}).integer == 1);
    LogCapture logs;
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    crm::DispatcherOptions options = test_options(receiver.url(), {secret});
    options.lease = 1500ms;  // above the HTTP timeout
    RunningDispatcher d(env.ioc, env.cfg, options);
    REQUIRE(run_until(env.ioc, [&] { return !logs.with("crm.entry_missing").empty(); }, 10s));
    CHECK(logs.with("crm.entry_missing")[0].find(gone) != std::string::npos);
    CHECK(run_until(env.ioc, [&] { return env.pending_total() == 0; }, 10s));
    CHECK(receiver.count() == 0);
}

TEST_CASE("a dead instance's entries are reclaimed in one pass, however long the retry backlog")
{
    // A long CRM outage leaves thousands of entries per shard waiting for a retry. A version before
    // the retry holder kept them in the PEL of the instance that first read them, so the reclaim
    // pass (500 PEL entries per shard and pass) had to wade through them before it found what a
    // dead instance held in flight: minutes. Here 2,000 such entries of one instance come first in
    // the PEL, then 6 entries a dead instance was delivering.
    RedisEnv env;
    const int shard = env.keys.shard_of("R");
    const std::string stream = env.keys.outbox(shard);
    const std::string retry = kPrefix + store::Keys::tag(shard) + ":crm:retry";
    const std::string tries = kPrefix + store::Keys::tag(shard) + ":crm:tries";
    env.exec({"XGROUP", "CREATE", stream, "crm", "0", "MKSTREAM"});
    env.exec({"EVAL", R"(for i = 1, tonumber(ARGV[1]) do
                           redis.call('XADD', KEYS[1], '*', 'id', 'evt_R_' .. i, 'bill_id', 'R', 'type', 'bill.paid',
                                      'event', '{}')
                         end)",
              "1", stream, "2000"});
    env.exec({"XREADGROUP", "GROUP", "crm", "old-instance", "COUNT", "2000", "STREAMS", stream, ">"});
    env.exec({"EVAL", R"(for _, p in ipairs(redis.call('XPENDING', KEYS[1], 'crm', '-', '+', 5000)) do
                           redis.call('ZADD', KEYS[2], '9999999999999', p[1])
                         end)",
              "2", stream, retry});
    std::vector<std::string> in_flight;
    for (int i = 0; in_flight.size() < 6; ++i) {
        const std::string bill = "D" + std::to_string(i);
        if (env.keys.shard_of(bill) == shard) {
            in_flight.push_back(env.add_event(bill, 1));
        }
    }
    env.exec({"XREADGROUP", "GROUP", "crm", "dead-instance", "COUNT", "6", "STREAMS", stream, ">"});

    const std::string script(crm::scripts::kReclaim);
    auto pending_of = [&](const std::string& consumer) {
        std::vector<std::string> argv{"XPENDING", stream, "crm", "-", "+", "5000", consumer};
        return env.exec(std::move(argv)).elements.size();
    };
    // Nothing has been idle for a lease yet: nothing is claimed, nothing moves.
    CHECK(env.exec({"EVAL", script, "3", stream, retry, tries, "crm", "me", "60000", "10", "500",
                    std::string(crm::kRetryHolder)})
              .elements.empty());
    CHECK(pending_of("old-instance") == 2000);
    CHECK(pending_of(std::string(crm::kRetryHolder)) == 0);

    // One reclaim call (as a dispatcher with 10 free slots makes it) finds all six.
    const store::Reply claimed = env.exec({"EVAL", script, "3", stream, retry, tries, "crm", "me", "0", "10", "500",
                                           std::string(crm::kRetryHolder)});
    REQUIRE(claimed.elements.size() == 6);
    std::set<std::string> got;
    for (const auto& c : claimed.elements) {
        const auto& fields = c.elements.at(1).elements;
        got.insert(fields.at(1).str);  // "id", event id, ...
        CHECK(c.elements.at(2).str == "0");
    }
    CHECK(got == std::set<std::string>(in_flight.begin(), in_flight.end()));

    // The retrying entries it came across (500) are handed to the retry holder, and so on each pass
    // until the old instance holds none: the retry zset still has them all.
    CHECK(pending_of("me") == 6);
    CHECK(pending_of(std::string(crm::kRetryHolder)) == 500);
    CHECK(pending_of("old-instance") == 1500);
    for (int pass = 0; pass < 3; ++pass) {
        // Slots for none: nothing is claimed, but the retrying entries still move.
        const store::Reply none = env.exec({"EVAL", script, "3", stream, retry, tries, "crm", "me", "0", "0", "500",
                                            std::string(crm::kRetryHolder)});
        CHECK(none.elements.empty());
    }
    CHECK(pending_of("old-instance") == 0);
    CHECK(pending_of(std::string(crm::kRetryHolder)) == 2000);
    CHECK(env.exec({"ZCARD", retry}).integer == 2000);

    // A stream that is gone (and its group with it) is reported as a missing group, which makes a
    // dispatcher create the group again.
    std::vector<std::string> gone{"EVAL", script, "3", kPrefix + "no-such-stream", retry, tries, "crm", "me", "0",
                                  "10", "500", std::string(crm::kRetryHolder)};
    Result<store::Reply> missing = run_awaitable(env.ioc, env.conn->exec(std::move(gone)));
    REQUIRE(missing.has_value());
    CHECK(missing->is_error());
    CHECK(missing->str.find("NOGROUP") != std::string::npos);

    // The holder's name is not one an instance may take.
    crm::DispatcherOptions options = test_options("http://127.0.0.1:1/", {new_secret()});
    options.consumer = std::string(crm::kRetryHolder);
    Result<std::unique_ptr<crm::Dispatcher>> refused = crm::Dispatcher::create(env.ioc.get_executor(), env.cfg, options);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error() == errc::invalid_argument);
}

TEST_CASE("two dispatchers on one Redis: every event delivered exactly once")
{
    RedisEnv env;
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    RunningDispatcher a(env.ioc, env.cfg, test_options(receiver.url(), {secret}));
    RunningDispatcher b(env.ioc, env.cfg, test_options(receiver.url(), {secret}));
    std::vector<std::string> ids;
    for (int i = 0; i < 150; ++i) {
        ids.push_back(env.add_event("B" + std::to_string(i % 37), i + 1));
        if (i % 10 == 0) {
            run_for(env.ioc, 5ms);
        }
    }
    REQUIRE(run_until(env.ioc, [&] { return all_acknowledged(receiver, ids); }, 20s));
    REQUIRE(run_until(env.ioc, [&] { return env.pending_total() == 0; }, 5s));
    run_for(env.ioc, 300ms);
    CHECK(receiver.count() == ids.size());
    for (const auto& [id, n] : acknowledged_counts(receiver)) {
        CAPTURE(id);
        CHECK(n == 1);
    }
    CHECK(a->stats().delivered.load() + b->stats().delivered.load() == ids.size());
    check_all_signed(receiver);
}

TEST_CASE("the lease counts from the POST: entries waiting for a slot are not taken over and sent twice")
{
    RedisEnv env;
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    // One event in every shard, each on a bill of its own: A's first read may take all of them.
    std::vector<std::string> ids;
    std::set<int> shards;
    for (int i = 0; ids.size() < kShards; ++i) {
        const std::string bill = "L" + std::to_string(i);
        if (shards.insert(env.keys.shard_of(bill)).second) {
            ids.push_back(env.add_event(bill, 1));
        }
    }
    // One request at a time, each answered after 700 ms: anything A holds beyond its slot waits
    // longer than the 1.5 s lease before A gets to send it.
    receiver.set_response_delay(700ms);
    crm::DispatcherOptions options = test_options(receiver.url(), {secret});
    options.concurrency = 1;
    RunningDispatcher a(env.ioc, env.cfg, options);
    REQUIRE(run_until(env.ioc, [&] { return receiver.count() >= 1; }, 5s));
    // B is idle and reclaims whatever has been pending for longer than the lease.
    RunningDispatcher b(env.ioc, env.cfg, options);
    REQUIRE(run_until(env.ioc, [&] { return all_acknowledged(receiver, ids); }, 30s));
    REQUIRE(run_until(env.ioc, [&] { return env.pending_total() == 0; }, 5s));
    run_for(env.ioc, 500ms);

    std::map<std::string, int> sent;
    for (const ReceivedRequest& r : receiver.requests()) {
        ++sent[r.webhook_id];
    }
    for (const std::string& id : ids) {
        CAPTURE(id);
        CHECK(sent[id] == 1);
        CHECK(env.state_of(id) == "delivered");
    }
    CHECK(receiver.count() == ids.size());
    check_all_signed(receiver);
}

TEST_CASE("a bill's events queued behind each other longer than the lease are each sent once")
{
    RedisEnv env;
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    std::vector<std::string> ids;
    for (int seq = 1; seq <= 4; ++seq) {
        ids.push_back(env.add_event("Q1", seq));
    }
    // Sent one after another, 700 ms each: the last ones wait in the bill's queue longer than the
    // 1.5 s lease while slots are free, so this instance's own reclaim finds them idle.
    receiver.set_response_delay(700ms);
    RunningDispatcher d(env.ioc, env.cfg, test_options(receiver.url(), {secret}));
    REQUIRE(run_until(env.ioc, [&] { return all_acknowledged(receiver, ids); }, 20s));
    REQUIRE(run_until(env.ioc, [&] { return env.pending_total() == 0; }, 5s));
    run_for(env.ioc, 1000ms);

    std::vector<std::string> order;
    for (const ReceivedRequest& r : receiver.requests()) {
        order.push_back(r.webhook_id);
    }
    CHECK(order == ids);
    for (const std::string& id : ids) {
        CHECK(env.delivery(id)["attempts"] == "1");
    }
    // The instance claimed its own queued entries again; none was taken over from another.
    CHECK(d->stats().reclaimed.load() == 0);
}

TEST_CASE("due retries of every shard take turns: a shard with many does not hold up the others")
{
    RedisEnv env;
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    receiver.set_default_status(503);
    // 120 bills of the first shard and one of the last, each with one event.
    std::vector<std::string> ids;
    for (int i = 0; ids.size() < 120; ++i) {
        const std::string bill = "F" + std::to_string(i);
        if (env.keys.shard_of(bill) == 0) {
            ids.push_back(env.add_event(bill, 1));
        }
    }
    std::string last_shard_bill = "L0";
    for (int i = 1; env.keys.shard_of(last_shard_bill) != kShards - 1; ++i) {
        last_shard_bill = "L" + std::to_string(i);
    }
    const std::string last = env.add_event(last_shard_bill, 1);
    ids.push_back(last);
    crm::DispatcherOptions options = test_options(receiver.url(), {secret});
    options.retry_schedule = {1500ms, 100ms};
    options.concurrency = 32;
    {
        // Every event fails once and waits 1.5 s for its retry.
        RunningDispatcher failing(env.ioc, env.cfg, options);
        REQUIRE(run_until(env.ioc, [&] {
            return std::all_of(ids.begin(), ids.end(), [&](const std::string& id) { return env.state_of(id) == "retrying"; });
        }, 10s));
    }
    const std::size_t failures = receiver.count();
    REQUIRE(failures == ids.size());
    receiver.set_default_status(200);
    receiver.set_response_delay(20ms);
    run_for(env.ioc, 1600ms);  // all due now
    options.concurrency = 2;
    RunningDispatcher d(env.ioc, env.cfg, options);
    REQUIRE(run_until(env.ioc, [&] { return all_acknowledged(receiver, ids); }, 30s));
    std::vector<std::string> order;
    const std::vector<ReceivedRequest> requests = receiver.requests();
    for (std::size_t i = failures; i < requests.size(); ++i) {
        order.push_back(requests[i].webhook_id);
    }
    const auto at = std::find(order.begin(), order.end(), last) - order.begin();
    CAPTURE(at);
    // Two at a time: the last shard's retry goes in one of the first passes, not after the 120.
    CHECK(at < 10);
}

TEST_CASE("shortened schedule: dead letter after the last retry, then recover delivers it")
{
    RedisEnv env;
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    receiver.set_default_status(503);
    const std::string first = env.add_event("B1", 1);
    const std::string second = env.add_event("B2", 1);
    crm::DispatcherOptions options = test_options(receiver.url(), {secret});
    options.retry_schedule = {100ms, 200ms};
    RunningDispatcher d(env.ioc, env.cfg, options);

    REQUIRE(run_until(env.ioc, [&] { return env.state_of(first) == "dead" && env.state_of(second) == "dead"; }, 10s));
    CHECK(receiver.count() == 6);  // 3 attempts each
    // The state in Redis changes before the dispatcher thread counts it: wait for the counter.
    CHECK(run_until(env.ioc, [&] { return d->stats().dead_letters.load() == 2; }, 5s));
    CHECK(env.delivery(first)["attempts"] == "3");
    CHECK(env.delivery(first)["last_status"] == "503");
    CHECK(env.pending_total() == 0);  // dead letters are acknowledged in the group
    REQUIRE(run_until(env.ioc, [&] { return d->stats().dead.load() == 2; }, 5s));

    crm::DeliveryAdmin admin(*env.conn, kPrefix, kShards);
    Result<std::string> dead = run_awaitable(env.ioc, admin.list_deliveries("dead", 10, ""));
    REQUIRE(dead.has_value());
    const rapidjson::Document listed = parse_json(*dead);
    REQUIRE(listed["items"].Size() == 2);
    CHECK(std::string(listed["items"][0]["state"].GetString()) == "dead");

    receiver.set_default_status(200);
    run_for(env.ioc, 500ms);
    CHECK(receiver.count() == 6);  // dead letters stay dead until someone acts

    Result<std::string> recovered = run_awaitable(env.ioc, admin.recover(0, "dead"));
    REQUIRE(recovered.has_value());
    const rapidjson::Document rec = parse_json(*recovered);
    CHECK(rec["requeued"].GetInt() == 2);
    REQUIRE(run_until(env.ioc, [&] { return env.state_of(first) == "delivered" && env.state_of(second) == "delivered"; },
                      10s));
    CHECK(env.delivery(first)["attempts"] == "4");
    CHECK(receiver.acknowledged_ids() == std::set<std::string>{first, second});

    // Recover again: nothing is dead any more.
    Result<std::string> again = run_awaitable(env.ioc, admin.recover(0, "dead"));
    REQUIRE(again.has_value());
    CHECK(parse_json(*again)["requeued"].GetInt() == 0);
    CHECK_FALSE(parse_json(*again)["more"].GetBool());
    check_all_signed(receiver);
}

TEST_CASE("recover with state retrying sends events waiting for a retry now and keeps their schedule")
{
    // After a CRM outage, events wait for their next step (minutes to hours). An operator who sees
    // the CRM back makes them due now; a failure then goes on to the next step of the schedule.
    RedisEnv env;
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    receiver.set_default_status(503);
    const std::string first = env.add_event("B1", 1);
    const std::string second = env.add_event("B2", 1);
    crm::DispatcherOptions options = test_options(receiver.url(), {secret});
    options.retry_schedule = {100ms, 1h, 1h};
    RunningDispatcher d(env.ioc, env.cfg, options);
    const auto attempts_are = [&](const char* n) {
        return env.delivery(first)["attempts"] == n && env.delivery(second)["attempts"] == n;
    };
    REQUIRE(run_until(env.ioc, [&] { return attempts_are("2"); }, 10s));
    REQUIRE(env.state_of(first) == "retrying");  // the next attempt is an hour away
    REQUIRE(env.state_of(second) == "retrying");

    crm::DeliveryAdmin admin(*env.conn, kPrefix, kShards);
    // A window that starts after their last failure takes nothing; the dead letters are none.
    const std::int64_t in_a_minute = unix_ms(std::chrono::system_clock::now()) + 60'000;
    Result<std::string> later = run_awaitable(env.ioc, admin.recover(in_a_minute, "retrying"));
    REQUIRE(later.has_value());
    CHECK(parse_json(*later)["requeued"].GetInt() == 0);
    Result<std::string> dead = run_awaitable(env.ioc, admin.recover(0, "dead"));
    REQUIRE(dead.has_value());
    CHECK(parse_json(*dead)["requeued"].GetInt() == 0);
    run_for(env.ioc, 300ms);
    CHECK(receiver.count() == 4);

    // Still down: one more attempt each, then the schedule's third step (not the first again).
    Result<std::string> again = run_awaitable(env.ioc, admin.recover(0, "retrying"));
    REQUIRE(again.has_value());
    CHECK(parse_json(*again)["requeued"].GetInt() == 2);
    REQUIRE(run_until(env.ioc, [&] { return attempts_are("3"); }, 10s));
    run_for(env.ioc, 300ms);
    CHECK(env.state_of(first) == "retrying");
    CHECK(receiver.count() == 6);
    const std::int64_t next_at = std::stoll(env.delivery(first)["next_at"]);
    CHECK(next_at - unix_ms(std::chrono::system_clock::now()) > 40 * 60'000);  // 1 h ± 20 %, not 100 ms

    receiver.set_default_status(200);
    Result<std::string> recovered = run_awaitable(env.ioc, admin.recover(0, "retrying"));
    REQUIRE(recovered.has_value());
    const rapidjson::Document rec = parse_json(*recovered);
    CHECK(rec["requeued"].GetInt() == 2);
    CHECK(rec["event_ids"].Size() == 2);
    REQUIRE(run_until(env.ioc, [&] { return env.state_of(first) == "delivered" && env.state_of(second) == "delivered"; },
                      10s));
    CHECK(env.delivery(first)["attempts"] == "4");
    CHECK(receiver.acknowledged_ids() == std::set<std::string>{first, second});
    Result<std::string> none = run_awaitable(env.ioc, admin.recover(0, "retrying"));
    REQUIRE(none.has_value());
    CHECK(parse_json(*none)["requeued"].GetInt() == 0);
    CHECK(env.pending_total() == 0);
    check_all_signed(receiver);
}

TEST_CASE("recover takes only the states it names")
{
    RedisEnv env;
    crm::DeliveryAdmin admin(*env.conn, kPrefix, kShards);
    Result<std::string> pending = run_awaitable(env.ioc, admin.recover(0, "pending"));
    REQUIRE_FALSE(pending.has_value());
    CHECK(pending.error() == errc::invalid_argument);
}

TEST_CASE("recover reads the dead letters a page at a time, past those that stay dead")
{
    // 2,500 dead-letter ids that cannot be requeued (no delivery record: they stay dead), older
    // than two real dead letters: those are on the third page. Before, every dead letter of a shard
    // came back in one reply (a million after a long CRM outage: more than a reply may carry).
    RedisEnv env;
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    receiver.set_default_status(503);
    const std::string first = env.add_event("B1", 1);
    const std::string second = env.add_event("B2", 1);
    crm::DispatcherOptions options = test_options(receiver.url(), {secret});
    options.retry_schedule = {100ms};
    RunningDispatcher d(env.ioc, env.cfg, options);
    REQUIRE(run_until(env.ioc, [&] { return env.state_of(first) == "dead" && env.state_of(second) == "dead"; }, 10s));

    const crm::DeliveryKeys keys(kPrefix, kShards);
    std::vector<std::string> with_dead;  // the dead-letter zsets of the shards the two are in
    for (const crm::ShardKeys& k : keys.all()) {
        if (env.exec({"ZCARD", k.dead}).integer > 0) {
            with_dead.push_back(k.dead);
        }
    }
    REQUIRE_FALSE(with_dead.empty());
    for (const std::string& dead : with_dead) {
        std::vector<std::string> zadd{"ZADD", dead};
        for (int i = 0; i < 2500; ++i) {
            zadd.push_back("1");
            zadd.push_back("evt_junk_" + std::to_string(i));
        }
        CHECK(env.exec(std::move(zadd)).integer == 2500);
    }
    receiver.set_default_status(200);
    crm::DeliveryAdmin admin(*env.conn, kPrefix, kShards);
    Result<std::string> recovered = run_awaitable(env.ioc, admin.recover(0, "dead"), 60s);
    REQUIRE(recovered.has_value());
    const rapidjson::Document rec = parse_json(*recovered);
    CHECK(rec["requeued"].GetInt() == 2);
    REQUIRE(run_until(env.ioc, [&] { return env.state_of(first) == "delivered" && env.state_of(second) == "delivered"; },
                      10s));
    // The junk stays where it was, for an operator to look at.
    for (const std::string& dead : with_dead) {
        CHECK(env.exec({"ZCARD", dead}).integer == 2500);
    }
}

TEST_CASE("recover pages by position - a dead letter that stayed and then left the index costs no unread one")
{
    // 1000 dead letters that cannot be requeued (no delivery record: they stay), then one that can.
    // Between the first page and the second, one of those that stayed leaves the index (an
    // operator removes it, its record reappears and a recover elsewhere takes it). Read by offset
    // (1000: the number that stayed), the second page started one entry too far: past the real
    // one, and the call said "more": false with it still dead. A proxy in front of Redis makes the
    // change just before the second page's read reaches Redis.
    RedisEnv env;
    const crm::DeliveryKeys keys(kPrefix, kShards);
    const crm::ShardKeys& k = keys.shard(0);
    std::vector<std::string> junk{"ZADD", k.dead};
    for (int i = 0; i < 1000; ++i) {
        char id[32];
        std::snprintf(id, sizeof id, "evt_junk_%04d", i);
        junk.push_back("1");
        junk.push_back(id);
    }
    CHECK(env.exec(std::move(junk)).integer == 1000);
    std::vector<std::string> real{"EVAL", R"(
local entry = redis.call('XADD', KEYS[1], '*', 'id', 'evt_R_1', 'bill_id', 'R', 'type', 'bill.paid', 'event', '{}')
redis.call('HSET', ARGV[1] .. 'evt_R_1', 'state', 'dead', 'event_id', 'evt_R_1', 'entry_id', entry)
return redis.call('ZADD', KEYS[2], 2, 'evt_R_1'))", "2", k.stream, k.dead, k.delivery_prefix};
    REQUIRE(env.exec(std::move(real)).integer == 1);

    std::atomic<int> reads{0};
    std::atomic<bool> removed{false};
    const std::string dead = k.dead;
    test::RedisHookProxy proxy(
        env.server.port(),
        [&reads, &dead](const test::RedisHookProxy::Argv& argv) {
            return argv.size() > 1 && argv[0] == "ZRANGEBYSCORE" && argv[1] == dead && ++reads == 2;
        },
        [&removed, &dead](const test::RedisHookProxy::Direct& redis) {
            removed = redis({"ZREM", dead, "evt_junk_0000"}) == ":1\r\n";
        });
    config::RedisConfig cfg = env.cfg;
    cfg.port = proxy.port();
    store::RedisConnection conn(env.ioc.get_executor(), cfg);
    conn.start();
    REQUIRE(run_until(env.ioc, [&conn] { return conn.ready(); }, 5s));
    {
        crm::DeliveryAdmin admin(conn, kPrefix, kShards);
        Result<std::string> recovered = run_awaitable(env.ioc, admin.recover(0, "dead"), 60s);
        REQUIRE(recovered.has_value());
        CHECK(removed);
        const rapidjson::Document rec = parse_json(*recovered);
        CHECK(rec["requeued"].GetInt() == 1);
        CHECK_FALSE(rec["more"].GetBool());
        CHECK(env.state_of("evt_R_1") == "pending");
        CHECK(env.exec({"ZCARD", k.dead}).integer == 999);  // the rest stay, for an operator to look at
    }
    conn.stop();
    run_for(env.ioc, 20ms);
}

TEST_CASE("recover does at most 10,000 per call and says when there is more")
{
    // 10,050 dead letters of one shard, their entries in the stream: one call requeues 10,000 (a
    // million after a long CRM outage would hold one request for minutes), the next the rest.
    RedisEnv env;
    const crm::DeliveryKeys keys(kPrefix, kShards);
    const crm::ShardKeys& k = keys.shard(0);
    std::vector<std::string> make{"EVAL", R"(
for i = 1, tonumber(ARGV[1]) do
  local id = 'evt_R' .. i
  local entry = redis.call('XADD', KEYS[1], '*', 'id', id, 'bill_id', 'R', 'type', 'bill.paid', 'event', '{}')
  redis.call('HSET', ARGV[2] .. id, 'state', 'dead', 'event_id', id, 'entry_id', entry)
  redis.call('ZADD', KEYS[2], i, id)
end
return redis.call('ZCARD', KEYS[2]))", "2", k.stream, k.dead, "10050", k.delivery_prefix};
    REQUIRE(env.exec(std::move(make)).integer == 10'050);
    crm::DeliveryAdmin admin(*env.conn, kPrefix, kShards);
    Result<std::string> first = run_awaitable(env.ioc, admin.recover(0, "dead"), 120s);
    REQUIRE(first.has_value());
    const rapidjson::Document one = parse_json(*first);
    CHECK(one["requeued"].GetInt() == 10'000);
    CHECK(one["event_ids"].Size() == 10'000);
    CHECK(one["more"].GetBool());
    CHECK(env.exec({"ZCARD", k.dead}).integer == 50);
    Result<std::string> second = run_awaitable(env.ioc, admin.recover(0, "dead"), 60s);
    REQUIRE(second.has_value());
    const rapidjson::Document two = parse_json(*second);
    CHECK(two["requeued"].GetInt() == 50);
    CHECK_FALSE(two["more"].GetBool());
    CHECK(env.exec({"ZCARD", k.dead}).integer == 0);
    CHECK(env.exec({"ZCARD", k.retry}).integer == 10'050);
}

TEST_CASE("Retry-After on 429 is honoured")
{
    RedisEnv env;
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    receiver.push_statuses({429});
    receiver.set_retry_after("1");
    const std::string id = env.add_event("B1", 1);
    RunningDispatcher d(env.ioc, env.cfg, test_options(receiver.url(), {secret}));
    REQUIRE(run_until(env.ioc, [&] { return env.state_of(id) == "delivered"; }, 10s));
    const std::vector<ReceivedRequest> got = receiver.requests();
    REQUIRE(got.size() == 2);
    CHECK(got[1].at - got[0].at >= 950ms);  // not the 100 ms of the schedule
}

TEST_CASE("secret rotation: both secrets sign every event")
{
    RedisEnv env;
    const std::string current = new_secret();
    const std::string previous = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {current, previous}});
    HttpReceiver old_receiver(HttpReceiverOptions{.secrets = {previous}});
    const std::string id = env.add_event("B1", 1);
    RunningDispatcher d(env.ioc, env.cfg, test_options(receiver.url(), {current, previous}));
    REQUIRE(run_until(env.ioc, [&] { return env.state_of(id) == "delivered"; }, 10s));
    const std::vector<ReceivedRequest> got = receiver.requests();
    REQUIRE(got.size() == 1);
    CHECK(got[0].signature_ok);
    CHECK(got[0].verified_by == std::vector<bool>{true, true});
    CHECK(std::count(got[0].webhook_signature.begin(), got[0].webhook_signature.end(), ' ') == 1);
    CHECK(crm::verify(previous, got[0].webhook_id, got[0].webhook_timestamp, got[0].webhook_signature, got[0].body,
                      std::stoll(got[0].webhook_timestamp)));
    CHECK_FALSE(crm::verify(new_secret(), got[0].webhook_id, got[0].webhook_timestamp, got[0].webhook_signature,
                            got[0].body, std::stoll(got[0].webhook_timestamp)));
}

TEST_CASE("everything is in Redis: a restarted dispatcher resumes the retries of the previous one")
{
    RedisEnv env;
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    receiver.set_default_status(500);
    const std::string id = env.add_event("B1", 1);
    crm::DispatcherOptions options = test_options(receiver.url(), {secret});
    options.retry_schedule = {300ms, 300ms, 300ms, 300ms, 300ms, 300ms};
    {
        RunningDispatcher first(env.ioc, env.cfg, options);
        REQUIRE(run_until(env.ioc, [&] { return env.delivery(id)["attempts"] == "2"; }, 10s));
        first.stop();  // graceful: nothing in flight is lost
    }
    CHECK(env.state_of(id) == "retrying");
    receiver.set_default_status(200);
    RunningDispatcher second(env.ioc, env.cfg, options);
    REQUIRE(run_until(env.ioc, [&] { return env.state_of(id) == "delivered"; }, 10s));
    CHECK(env.delivery(id)["attempts"] == "3");
    CHECK(env.pending_total() == 0);
}

TEST_CASE("redeliver re-sends a delivered event under the same webhook-id — list_deliveries pages")
{
    RedisEnv env;
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    std::vector<std::string> ids;
    for (int i = 0; i < 7; ++i) {
        ids.push_back(env.add_event("B" + std::to_string(i), 1));
    }
    RunningDispatcher d(env.ioc, env.cfg, test_options(receiver.url(), {secret}));
    REQUIRE(run_until(env.ioc, [&] { return all_acknowledged(receiver, ids); }, 10s));
    REQUIRE(run_until(env.ioc, [&] { return d->stats().delivered.load() == ids.size(); }, 5s));

    crm::DeliveryAdmin admin(*env.conn, kPrefix, kShards);
    // Page through the delivered events three at a time.
    std::set<std::string> seen;
    std::string cursor;
    int pages = 0;
    for (;;) {
        Result<std::string> page = run_awaitable(env.ioc, admin.list_deliveries("delivered", 3, cursor));
        REQUIRE(page.has_value());
        const rapidjson::Document doc = parse_json(*page);
        for (const auto& item : doc["items"].GetArray()) {
            CHECK(seen.insert(item["event_id"].GetString()).second);
            CHECK(std::string(item["state"].GetString()) == "delivered");
        }
        ++pages;
        if (doc["next_cursor"].IsNull()) {
            break;
        }
        cursor = doc["next_cursor"].GetString();
        REQUIRE(pages < 10);
    }
    CHECK(seen == std::set<std::string>(ids.begin(), ids.end()));
    Result<std::string> all = run_awaitable(env.ioc, admin.list_deliveries("", 100, ""));
    REQUIRE(all.has_value());
    CHECK(parse_json(*all)["items"].Size() == ids.size());
    CHECK(run_awaitable(env.ioc, admin.list_deliveries("bogus", 10, "")).error() == errc::invalid_argument);
    CHECK(run_awaitable(env.ioc, admin.list_deliveries("dead", 10, "nonsense")).error() == errc::invalid_argument);

    Result<std::string> again = run_awaitable(env.ioc, admin.redeliver(ids[3]));
    REQUIRE(again.has_value());
    CHECK(std::string(parse_json(*again)["previous_state"].GetString()) == "delivered");
    REQUIRE(run_until(env.ioc, [&] { return acknowledged_counts(receiver)[ids[3]] == 2; }, 10s));
    REQUIRE(run_until(env.ioc, [&] { return env.state_of(ids[3]) == "delivered"; }, 5s));
    CHECK(env.delivery(ids[3])["attempts"] == "2");
    CHECK(run_awaitable(env.ioc, admin.redeliver("evt_nope")).error() == errc::not_found);
    CHECK(run_awaitable(env.ioc, admin.get_event_deliveries("evt_nope")).error() == errc::not_found);
    check_all_signed(receiver);
}

TEST_CASE("redeliver while an attempt is in flight is refused (conflict), so no second copy is sent")
{
    RedisEnv env;
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    receiver.set_response_delay(800ms);
    receiver.push_statuses({500});
    const std::string id = env.add_event("R1", 1);
    RunningDispatcher d(env.ioc, env.cfg, test_options(receiver.url(), {secret}));
    crm::DeliveryAdmin admin(*env.conn, kPrefix, kShards);

    // The first attempt is in flight: the entry is pending in the group, not waiting for a retry.
    REQUIRE(run_until(env.ioc, [&] { return receiver.count() == 1; }, 5s));
    CHECK(run_awaitable(env.ioc, admin.redeliver(id)).error() == errc::conflict);
    // It fails; the retry is popped (leased) and in flight in turn.
    REQUIRE(run_until(env.ioc, [&] { return receiver.count() == 2; }, 5s));
    CHECK(run_awaitable(env.ioc, admin.redeliver(id)).error() == errc::conflict);
    REQUIRE(run_until(env.ioc, [&] { return env.state_of(id) == "delivered"; }, 5s));
    run_for(env.ioc, 1000ms);
    CHECK(receiver.count() == 2);
    CHECK(env.delivery(id)["attempts"] == "2");
    CHECK(acknowledged_counts(receiver)[id] == 1);

    // Once the attempt is over, redeliver sends it again.
    Result<std::string> again = run_awaitable(env.ioc, admin.redeliver(id));
    REQUIRE(again.has_value());
    CHECK(std::string(parse_json(*again)["previous_state"].GetString()) == "delivered");
    REQUIRE(run_until(env.ioc, [&] { return acknowledged_counts(receiver)[id] == 2; }, 5s));
    REQUIRE(run_until(env.ioc, [&] { return env.state_of(id) == "delivered"; }, 5s));
    CHECK(receiver.count() == 3);
}

TEST_CASE("an event not read yet is found by its outbox entry, and redeliver leaves it to its first delivery")
{
    RedisEnv env;
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    std::vector<std::string> ids;
    ids.push_back(env.add_event("U_1", 1));  // a bill id with '_' in it: evt_U_1_1
    for (int i = 0; i < 5; ++i) {
        ids.push_back(env.add_event("V" + std::to_string(i), 1));
    }
    const std::string& id = ids[0];
    crm::DeliveryAdmin admin(*env.conn, kPrefix, kShards);

    // No dispatcher has run: no consumer group, no delivery record.
    Result<std::string> doc = run_awaitable(env.ioc, admin.get_event_deliveries(id));
    REQUIRE(doc.has_value());
    {
        const rapidjson::Document d = parse_json(*doc);
        CHECK(std::string(d["event"]["id"].GetString()) == id);
        CHECK(std::string(d["delivery"]["state"].GetString()) == "pending");
        CHECK(std::string(d["delivery"]["bill_id"].GetString()) == "U_1");
        CHECK(d["attempts"].Size() == 0);
    }
    Result<std::string> again = run_awaitable(env.ioc, admin.redeliver(id));
    REQUIRE(again.has_value());
    CHECK(std::string(parse_json(*again)["previous_state"].GetString()) == "pending");
    CHECK(run_awaitable(env.ioc, admin.redeliver("evt_U_1_2")).error() == errc::not_found);
    CHECK(run_awaitable(env.ioc, admin.get_event_deliveries("evt_U_1_x")).error() == errc::not_found);

    RunningDispatcher d(env.ioc, env.cfg, test_options(receiver.url(), {secret}));
    REQUIRE(run_until(env.ioc, [&] { return all_acknowledged(receiver, ids); }, 10s));
    REQUIRE(run_until(env.ioc, [&] { return env.pending_total() == 0; }, 5s));
    run_for(env.ioc, 500ms);
    CHECK(receiver.count() == ids.size());  // sent once: the redeliver added no second copy
    CHECK(env.delivery(id)["attempts"] == "1");
}

TEST_CASE("an event whose delivery record expired is found by its outbox entry and can be redelivered")
{
    RedisEnv env;
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    const std::string id = env.add_event("X1", 3);
    crm::DispatcherOptions options = test_options(receiver.url(), {secret});
    options.record_ttl = 300ms;
    auto d = std::make_unique<RunningDispatcher>(env.ioc, env.cfg, options);
    REQUIRE(run_until(env.ioc, [&] { return acknowledged_counts(receiver)[id] == 1; }, 10s));
    REQUIRE(run_until(env.ioc, [&] { return env.pending_total() == 0; }, 5s));
    REQUIRE(run_until(env.ioc, [&] { return env.delivery(id).empty(); }, 5s));  // the record expired
    d->stop();
    d.reset();
    // Newer entries in the same stream, more than one search step: it is found further back.
    for (int i = 0; i < 1200; ++i) {
        const std::string filler = "evt_X1_" + std::to_string(100 + i);
        std::vector<std::string> argv{"XADD", env.keys.outbox(env.keys.shard_of("X1")), "*", "id", filler,
                                      "bill_id", "X1", "type", "bill.paid", "event", R"({"id":")" + filler + R"("})"};
        env.exec(std::move(argv));
    }
    crm::DeliveryAdmin admin(*env.conn, kPrefix, kShards);

    Result<std::string> doc = run_awaitable(env.ioc, admin.get_event_deliveries(id));
    REQUIRE(doc.has_value());
    {
        const rapidjson::Document got = parse_json(*doc);
        CHECK(std::string(got["event"]["id"].GetString()) == id);
        CHECK(std::string(got["delivery"]["state"].GetString()) == "delivered");
        CHECK(std::string(got["delivery"]["entry_id"].GetString()).size() > 0);
    }
    Result<std::string> again = run_awaitable(env.ioc, admin.redeliver(id));
    REQUIRE(again.has_value());
    CHECK(std::string(parse_json(*again)["previous_state"].GetString()) == "delivered");
    CHECK(env.state_of(id) == "pending");

    d = std::make_unique<RunningDispatcher>(env.ioc, env.cfg, options);
    REQUIRE(run_until(env.ioc, [&] { return acknowledged_counts(receiver)[id] == 2; }, 20s));
    REQUIRE(run_until(env.ioc, [&] { return env.state_of(id) == "delivered"; }, 5s));
    CHECK(env.delivery(id)["attempts"] == "1");
    check_all_signed(receiver);
}

TEST_CASE("an event id is looked up in its bill's history before the outbox is read")
{
    RedisEnv env;
    // An event whose created_at is a day off the outbox entry's time (clocks far apart), behind
    // more than one search step of newer entries.
    const std::string id = env.add_event("H1", 2, "bill.paid", unix_ms(std::chrono::system_clock::now()) - 86'400'000);
    for (int i = 0; i < 1200; ++i) {
        env.add_event("H1", 3 + i);
    }
    crm::DeliveryAdmin admin(*env.conn, kPrefix, kShards);
    const auto outbox_reads = [&env] {
        std::vector<std::string> argv{"INFO", "commandstats"};
        const std::string info = env.exec(std::move(argv)).str;
        const auto at = info.find("cmdstat_xrevrange:calls=");
        return at == std::string::npos ? 0L : std::stol(info.substr(at + 24));
    };

    // Ids that name no event: refused from the history alone, the outbox is not read.
    const long before = outbox_reads();
    for (const char* missing : {"evt_H1_5000", "evt_H1_1", "evt_Nobody_1", "evt_H1_u1"}) {
        CAPTURE(missing);
        CHECK(run_awaitable(env.ioc, admin.get_event_deliveries(missing)).error() == errc::not_found);
    }
    CHECK(outbox_reads() == before);

    // A real one is still found: around its created_at first, then the whole stream.
    Result<std::string> doc = run_awaitable(env.ioc, admin.get_event_deliveries(id));
    REQUIRE(doc.has_value());
    CHECK(std::string(parse_json(*doc)["event"]["id"].GetString()) == id);
    CHECK(outbox_reads() > before);
    // A recent one is found in the window around its time, in one read.
    const long window_before = outbox_reads();
    const std::string recent = "evt_H1_" + std::to_string(3 + 1199);
    REQUIRE(run_awaitable(env.ioc, admin.get_event_deliveries(recent)).has_value());
    CHECK(outbox_reads() - window_before == 1);
}

TEST_CASE("HTTPS delivery to a receiver with a certificate from the configured CA")
{
    RedisEnv env;
    keygen::CertSpec ca_spec;
    ca_spec.common_name = "paybridge test CA";
    ca_spec.is_ca = true;
    const keygen::Certificate ca = keygen::make_ca(ca_spec);
    keygen::CertSpec server_spec;
    server_spec.common_name = "localhost";
    server_spec.dns_names = {"localhost"};
    server_spec.ip_addresses = {"127.0.0.1"};
    const keygen::Certificate server = keygen::issue(ca, server_spec);
    const std::string ca_file = write_temp_file("crm-ca.pem", ca.cert_pem);

    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}, .tls_cert_pem = server.cert_pem,
                                              .tls_key_pem = server.key.private_pem});
    const std::string id = env.add_event("B1", 1);
    crm::DispatcherOptions options = test_options(receiver.url(), {secret});
    options.http.ca_file = ca_file;
    RunningDispatcher d(env.ioc, env.cfg, options);
    REQUIRE(run_until(env.ioc, [&] { return env.state_of(id) == "delivered"; }, 10s));
    REQUIRE(receiver.url().starts_with("https://"));
    check_all_signed(receiver);
}

TEST_CASE("a Redis outage is waited out — groups lost with the data are created again")
{
    RedisEnv env;
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    RunningDispatcher d(env.ioc, env.cfg, test_options(receiver.url(), {secret}));
    const std::string before = env.add_event("B1", 1);
    REQUIRE(run_until(env.ioc, [&] { return env.state_of(before) == "delivered"; }, 10s));

    // Without persistence the restarted server is empty: no streams, no consumer group.
    env.server.stop();
    run_for(env.ioc, 500ms);
    env.server.restart();
    REQUIRE(run_until(env.ioc, [&] { return env.conn->ready(); }, 10s));
    std::vector<std::string> ids;
    for (int i = 0; i < 5; ++i) {
        ids.push_back(env.add_event("C" + std::to_string(i), 1));
    }
    REQUIRE(run_until(env.ioc, [&] { return all_acknowledged(receiver, ids); }, 15s));
    REQUIRE(run_until(env.ioc, [&] { return env.pending_total() == 0; }, 5s));
    CHECK(d->stats().redis_errors.load() > 0);
    check_all_signed(receiver);
}

TEST_CASE("Redis Cluster with a master down: gauges, consumer cleanup and trim go on with the other shards, logged once a pass")
{
    // 16 shards over three masters; the one that holds shard 0 (the first of every pass) is down.
    RedisTestCluster cluster(3, {"--cluster-require-full-coverage", "no"});
    constexpr int shards = 16;
    const crm::DeliveryKeys keys(kPrefix, shards);
    std::vector<int> owner;
    for (const crm::ShardKeys& k : keys.all()) {
        owner.push_back(cluster.owner(std::stoi(cluster.command(0, {"CLUSTER", "KEYSLOT", k.stream}))));
    }
    const int down = owner[0];
    std::string down_shards;
    std::vector<int> live;
    for (int s = 0; s < shards; ++s) {
        if (owner[s] == down) {
            down_shards += (down_shards.empty() ? "" : ",") + std::to_string(s);
        } else {
            live.push_back(s);
        }
    }
    REQUIRE_FALSE(live.empty());
    // Every shard: three entries read and acknowledged long ago (to trim), one dead letter (a gauge),
    // an idle consumer of an instance gone (to clean up).
    for (int s = 0; s < shards; ++s) {
        const crm::ShardKeys& k = keys.shard(s);
        for (const char* id : {"1-0", "2-0", "3-0"}) {
            cluster.command(owner[s], {"XADD", k.stream, id, "id", "evt_" + std::to_string(s) + "_" + id});
        }
        cluster.command(owner[s], {"XGROUP", "CREATE", k.stream, "crm", "$"});
        cluster.command(owner[s], {"ZADD", k.dead, "1", "evt_dead_" + std::to_string(s)});
        cluster.command(owner[s], {"XGROUP", "CREATECONSUMER", k.stream, "crm", "gone-instance"});
    }
    cluster.server(down).stop();

    const int seed = down == 0 ? 1 : 0;
    config::RedisConfig cfg;
    cfg.host = "127.0.0.1";
    cfg.port = cluster.port(seed);
    cfg.key_prefix = kPrefix;
    cfg.shards = shards;
    cfg.request_timeout = 1000ms;
    cfg.connect_timeout = 500ms;
    config::Endpoint node;
    node.host = "127.0.0.1";
    node.port = cluster.port(seed);
    cfg.cluster.nodes.push_back(node);
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    crm::DispatcherOptions options = test_options(receiver.url(), {secret});
    options.shards = shards;
    options.outbox_retention = 1ms;
    options.trim_interval = 100ms;
    options.consumer_cleanup_idle = 100ms;  // a cleanup pass with every stats pass

    LogCapture logs;
    asio::io_context ioc;
    RunningDispatcher d(ioc, cfg, options);
    // Before, the first shard's failure ended each pass: no gauge was ever set, nothing trimmed.
    REQUIRE(run_until(ioc, [&] { return d->stats().dead.load() == live.size(); }, 20s));
    REQUIRE(run_until(ioc, [&] { return d->stats().outbox_trimmed.load() == 3 * live.size(); }, 20s));
    const auto consumers_left = [&] {
        std::size_t n = 0;
        for (const int s : live) {
            const std::string c = cluster.command(owner[s], {"XINFO", "CONSUMERS", keys.shard(s).stream, "crm"});
            n += c.find("gone-instance") != std::string::npos ? 1 : 0;
        }
        return n;
    };
    REQUIRE(run_until(ioc, [&] { return consumers_left() == 0; }, 20s));
    for (const int s : live) {
        CAPTURE(s);
        CHECK(cluster.command(owner[s], {"XLEN", keys.shard(s).stream}) == "0");
    }
    run_for(ioc, 500ms);  // a few more passes
    d.stop();

    // One warning per pass and operation, naming every shard the pass could not do.
    for (const char* op : {"stats", "cleanup_consumers", "trim_outbox"}) {
        CAPTURE(op);
        const std::vector<std::string> lines = logs.with(std::string(R"("op":")") + op + R"(")");
        std::size_t failed_passes = 0;
        for (const std::string& line : lines) {
            if (line.find(R"("event":"crm.shards_failed")") == std::string::npos) {
                continue;
            }
            ++failed_passes;
            CAPTURE(line);
            CHECK(line.find(R"("level":"warning")") != std::string::npos);
            CHECK(line.find(R"("shards":")" + down_shards + R"(")") != std::string::npos);
            CHECK((line.find(R"("error":"store_unavailable")") != std::string::npos ||
                   line.find(R"("error":"timeout")") != std::string::npos));
        }
        CHECK(failed_passes >= 2);
    }
}

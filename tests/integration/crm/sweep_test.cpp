// Outbox entries deleted from the stream (XDEL, XTRIM by an operator) while their events are still
// outstanding. On Redis 7.0 nothing on the delivery path can settle such an event: XCLAIM of the id
// drops it from the group's PEL and returns nothing, and kPopDue finds no fields for a due retry, so
// its record would stay pending or retrying for ever. kSweepLost, run by the dispatcher after each
// reclaim pass, dead-letters those records. First the script alone (what it changes and what it
// leaves alone, then its cursor), then a dispatcher meeting both kinds of lost entry.
// Last, the deletions paybridge makes itself: with crm.outbox_retention_s, kTrimOutbox trims each
// stream below the oldest entry still needed, so it never makes an entry lost.

#include "tests/integration/crm/crm_fixture.hpp"
#include "tests/support/json.hpp"

#include "crm/delivery_schema.hpp"

#include <doctest/doctest.h>
#include <rapidjson/document.h>

#include <algorithm>
#include <set>

namespace asio = boost::asio;
using namespace paybridge;
using namespace paybridge::test;

namespace {

// Spelled out rather than taken from crm/delivery_schema.hpp: it is what operators see in
// GET /v1/deliveries, so a change to it should show up here.
const std::string kDeletedError = "outbox entry deleted from the stream before delivery";
const std::string kHolder(crm::kRetryHolder);

/// An outbox entry: its stream entry id, event id and bill.
struct Ev {
    std::string entry;
    std::string id;
    std::string bill;
};

/// The result of one kSweepLost call: entry id -> event id.
using Swept = std::map<std::string, std::string>;

/// One shard's keys, its outbox entries and records set up as the dispatcher leaves them, and the
/// scripts run on them as the dispatcher runs them.
struct Shard {
    RedisEnv& env;
    crm::ShardKeys k;
    int next_bill{0};

    Shard(RedisEnv& e, int shard) : env(e), k(crm::DeliveryKeys(kPrefix, kShards).shard(shard))
    {
        env.exec({"XGROUP", "CREATE", k.stream, "crm", "0", "MKSTREAM"});
    }

    store::Reply eval(std::string_view script, std::vector<std::string> keys, std::vector<std::string> args)
    {
        std::vector<std::string> argv{"EVAL", std::string(script), std::to_string(keys.size())};
        argv.insert(argv.end(), keys.begin(), keys.end());
        argv.insert(argv.end(), args.begin(), args.end());
        return env.exec(std::move(argv));
    }

    /// kSweepLost as the dispatcher calls it, with min_age 3000 (2 x a 1.5 s lease).
    Swept sweep(std::int64_t now, int limit = 200)
    {
        const store::Reply r = eval(crm::scripts::kSweepLost,
                                    {k.stream, k.retry, k.tries, k.dead, k.idx_pending, k.idx_retrying,
                                     k.idx_delivered, k.sweep, k.delivery_prefix, k.attempts_prefix},
                                    {"crm", std::to_string(now), "3000", std::to_string(limit),
                                     std::string(crm::kEntryDeletedError)});
        Swept out;
        for (const store::Reply& row : r.elements) {
            REQUIRE(row.elements.size() == 2);
            out[row.elements[0].str] = row.elements[1].str;
        }
        return out;
    }

    /// kRecord as the dispatcher calls it after an attempt by `consumer`, which held the entry in
    /// its PEL (token "") or as a popped retry whose score was `token`.
    std::int64_t record(const Ev& ev, const std::string& outcome, std::int64_t now,
                        const std::string& consumer = "c1", const std::string& token = "")
    {
        return eval(crm::scripts::kRecord,
                    {k.stream, k.retry, k.tries, k.dead, k.idx_pending, k.idx_retrying, k.idx_delivered,
                     k.delivery(ev.id), k.attempts(ev.id)},
                    {outcome, "crm", ev.entry, ev.id, std::to_string(now), outcome == "retry" ? "999999999" : "0",
                     R"({"attempt":9})", outcome == "retry" ? "http status 500" : "", outcome == "retry" ? "500" : "200",
                     "60000", "50", ev.bill, "bill.paid", kHolder, consumer, token})
            .integer;
    }

    /// Appends an event of a new bill of this shard as store/bill.lua does (with entry id `entry`).
    Ev add(const std::string& entry = "*")
    {
        Ev ev;
        do {
            ev.bill = "W" + std::to_string(next_bill++);
        } while (env.keys.shard_of(ev.bill) != k.shard);
        ev.id = "evt_" + ev.bill + "_1";
        std::vector<std::string> argv{"XADD", k.stream, entry,       "id",    ev.id, "bill_id",
                                      ev.bill,  "type",   "bill.paid", "event", R"({"id":")" + ev.id + R"("})"};
        ev.entry = env.exec(std::move(argv)).str;
        return ev;
    }

    /// Reads every entry not read yet into `consumer`'s PEL.
    void read(const std::string& consumer)
    {
        env.exec({"XREADGROUP", "GROUP", "crm", consumer, "COUNT", "100000", "STREAMS", k.stream, ">"});
    }

    /// A record in `state`, listed in `index` with score `at` (as mark_pending and kRecord leave it).
    void put_record(const Ev& ev, const std::string& state, const std::string& index, std::int64_t at,
                    const std::string& attempts = "0")
    {
        const std::string t = std::to_string(at);
        env.exec({"HSET", k.delivery(ev.id), "state", state, "event_id", ev.id, "entry_id", ev.entry, "bill_id",
                  ev.bill, "type", "bill.paid", "updated_at", t, "first_seen_at", t, "attempts", attempts});
        env.exec({"ZADD", index, t, ev.id});
    }

    /// A retrying record waiting in the retry zset, its PEL entry held by the retry holder.
    void put_retrying(const Ev& ev, std::int64_t at, const std::string& due)
    {
        put_record(ev, "retrying", k.idx_retrying, at, "2");
        env.exec({"HSET", k.delivery(ev.id), "last_status", "500", "last_error", "http status 500", "next_at", due});
        env.exec({"RPUSH", k.attempts(ev.id), R"({"attempt":1})", R"({"attempt":2})"});
        env.exec({"ZADD", k.retry, due, ev.entry});
        env.exec({"HSET", k.tries, ev.entry, "2"});
        env.exec({"XCLAIM", k.stream, "crm", kHolder, "0", ev.entry, "JUSTID"});
    }

    void xdel(const Ev& ev) { CHECK(env.exec({"XDEL", k.stream, ev.entry}).integer == 1); }

    /// kRequeue as DeliveryAdmin::recover / redeliver call it: due now, out of the group's PEL.
    std::string requeue(const Ev& ev, std::int64_t now)
    {
        return eval(crm::scripts::kRequeue,
                    {k.stream, k.retry, k.tries, k.dead, k.idx_pending, k.idx_retrying, k.idx_delivered,
                     k.delivery(ev.id), k.attempts(ev.id)},
                    {ev.id, std::to_string(now), "", "crm"})
            .elements.at(0)
            .str;
    }

    /// kTrimOutbox as the dispatcher calls it: [trimmed, "trimmed" | "busy" | "no_group" | "no_stream", ...].
    store::Reply trim(std::int64_t cutoff_ms, int max_scan = 100)
    {
        return eval(crm::scripts::kTrimOutbox, {k.stream, k.retry, k.dead, k.delivery_prefix},
                    {std::to_string(cutoff_ms), std::to_string(max_scan)});
    }

    /// The entry ids left in the stream, oldest first.
    std::vector<std::string> entries()
    {
        std::vector<std::string> out;
        for (const store::Reply& e : env.exec({"XRANGE", k.stream, "-", "+"}).elements) {
            out.push_back(e.elements.at(0).str);
        }
        return out;
    }

    /// The score of `member` in `zset`, "" when absent.
    std::string score(const std::string& zset, const std::string& member)
    {
        const store::Reply r = env.exec({"ZSCORE", zset, member});
        return r.is_nil() ? std::string() : r.str;
    }

    /// PEL entries of the group: entry id -> consumer.
    std::map<std::string, std::string> pel()
    {
        std::map<std::string, std::string> out;
        for (const store::Reply& p : env.exec({"XPENDING", k.stream, "crm", "-", "+", "100000"}).elements) {
            out[p.elements.at(0).str] = p.elements.at(1).str;
        }
        return out;
    }

    std::map<std::string, std::string> hash(const std::string& key)
    {
        std::map<std::string, std::string> m;
        const store::Reply r = env.exec({"HGETALL", key});
        for (std::size_t i = 0; i + 1 < r.elements.size(); i += 2) {
            m[r.elements[i].str] = r.elements[i + 1].str;
        }
        return m;
    }

    /// Everything kSweepLost could change about one event.
    std::string snapshot(const Ev& ev)
    {
        std::string s;
        for (const auto& [f, v] : hash(k.delivery(ev.id))) {
            s += f + "=" + v + ";";
        }
        s += "|attempts=" + std::to_string(env.exec({"LLEN", k.attempts(ev.id)}).integer);
        s += "|ttl=" + std::to_string(env.exec({"PTTL", k.delivery(ev.id)}).integer > 0);
        for (const std::string& z : {k.idx_pending, k.idx_retrying, k.idx_delivered, k.dead}) {
            s += "|" + z + "=" + score(z, ev.id);
        }
        s += "|retry=" + score(k.retry, ev.entry);
        const store::Reply tries = env.exec({"HGET", k.tries, ev.entry});
        s += "|tries=" + (tries.is_nil() ? std::string() : tries.str);
        const std::map<std::string, std::string> p = pel();
        s += "|pel=" + (p.count(ev.entry) ? p.at(ev.entry) : std::string());
        return s;
    }

    /// The record of an event the sweep dead-lettered at `now`, in every place it shows.
    void check_dead_letter(const Ev& ev, std::int64_t now, const std::map<std::string, std::string>& before)
    {
        CAPTURE(ev.id);
        std::map<std::string, std::string> rec = hash(k.delivery(ev.id));
        CHECK(rec["state"] == "dead");
        CHECK(rec["last_error"] == kDeletedError);
        CHECK(rec["dead_at"] == std::to_string(now));
        CHECK(rec["updated_at"] == std::to_string(now));
        CHECK(rec["next_at"].empty());
        // No attempt was added; what the attempts left is kept.
        for (const std::string f : {"entry_id", "bill_id", "type", "first_seen_at", "attempts", "last_status"}) {
            CAPTURE(f);
            CHECK(rec[f] == (before.count(f) ? before.at(f) : std::string()));
        }
        CHECK(score(k.dead, ev.id) == std::to_string(now));
        CHECK(score(k.idx_pending, ev.id).empty());
        CHECK(score(k.idx_retrying, ev.id).empty());
        CHECK(score(k.idx_delivered, ev.id).empty());
        CHECK(score(k.retry, ev.entry).empty());
        CHECK(env.exec({"HGET", k.tries, ev.entry}).is_nil());
        CHECK(pel().count(ev.entry) == 0);
        CHECK(env.exec({"PTTL", k.delivery(ev.id)}).integer == -1);
        const std::int64_t attempts_ttl = env.exec({"PTTL", k.attempts(ev.id)}).integer;
        CHECK((attempts_ttl == -1 || attempts_ttl == -2));  // persistent, or no attempt was ever made
    }
};

}  // namespace

TEST_CASE("kSweepLost dead-letters exactly the old outstanding records whose entry is gone")
{
    CHECK(std::string(crm::kEntryDeletedError) == kDeletedError);
    RedisEnv env;
    Shard s(env, env.keys.shard_of("W"));
    constexpr std::int64_t kOld = 1'000'000;
    constexpr std::int64_t kNow = 2'000'000;

    // Outstanding and deleted from the stream: the three ways the delivery path loses them.
    const Ev claimed = s.add();    // read by a dead instance; then a reclaim's XCLAIM dropped it
    const Ev in_pel = s.add();     // read by a dead instance, still in its PEL
    const Ev retrying = s.add();   // waiting in the retry zset (PEL entry held by the retry holder)
    // Old, their entries still in the stream: never touched, whatever their state.
    const Ev kept_pending = s.add();
    const Ev kept_retrying = s.add();
    const Ev kept_delivered = s.add();
    // Entries gone, but nothing outstanding (or too young): not the sweep's business either.
    const Ev trimmed_delivered = s.add();  // delivered, then trimmed: the normal life of an entry
    const Ev trimmed_dead = s.add();       // dead-lettered before, then trimmed
    const Ev stale_index = s.add();        // listed in idx:pending, but its record says delivered
    const Ev no_entry_id = s.add();        // a record without entry_id
    const Ev young = s.add();              // read 1 s ago: an attempt may still be under way
    s.read("dead-instance");

    s.put_record(claimed, "pending", s.k.idx_pending, kOld);
    s.put_record(in_pel, "pending", s.k.idx_pending, kOld + 1);
    s.put_retrying(retrying, kOld + 2, "1");
    env.exec({"PEXPIRE", s.k.attempts(retrying.id), "600000"});  // made persistent again, as kRecord does
    s.put_record(kept_pending, "pending", s.k.idx_pending, kOld + 3);
    s.put_retrying(kept_retrying, kOld + 4, "1");
    s.put_record(kept_delivered, "delivered", s.k.idx_delivered, kOld + 5, "1");
    env.exec({"XACK", s.k.stream, "crm", kept_delivered.entry});
    s.put_record(trimmed_delivered, "delivered", s.k.idx_delivered, kOld + 6, "1");
    env.exec({"PEXPIRE", s.k.delivery(trimmed_delivered.id), "600000"});
    env.exec({"XACK", s.k.stream, "crm", trimmed_delivered.entry});
    s.put_record(trimmed_dead, "dead", s.k.dead, kOld + 7, "3");
    env.exec({"XACK", s.k.stream, "crm", trimmed_dead.entry});
    s.put_record(stale_index, "delivered", s.k.idx_pending, kOld + 8, "1");
    s.put_record(no_entry_id, "pending", s.k.idx_pending, kOld + 9);
    env.exec({"HDEL", s.k.delivery(no_entry_id.id), "entry_id"});
    s.put_record(young, "pending", s.k.idx_pending, kNow - 1000);

    for (const Ev* ev : {&claimed, &in_pel, &retrying, &trimmed_delivered, &trimmed_dead, &stale_index,
                         &no_entry_id, &young}) {
        s.xdel(*ev);
    }
    // Redis 7.0: a deleted entry stays in the PEL until something claims it; the claim returns
    // nothing and drops it from the PEL (as a reclaim pass does it).
    CHECK(s.pel().count(claimed.entry) == 1);
    CHECK(env.exec({"XCLAIM", s.k.stream, "crm", "other", "0", claimed.entry}).elements.empty());
    CHECK(s.pel().count(claimed.entry) == 0);
    CHECK(s.pel().count(in_pel.entry) == 1);
    CHECK(s.pel().at(retrying.entry) == kHolder);

    const std::vector<const Ev*> untouched{&kept_pending, &kept_retrying, &kept_delivered, &trimmed_delivered,
                                           &trimmed_dead, &stale_index,   &no_entry_id,    &young};
    std::map<std::string, std::string> snapshots;
    for (const Ev* ev : untouched) {
        snapshots[ev->id] = s.snapshot(*ev);
    }
    std::map<std::string, std::map<std::string, std::string>> before;
    for (const Ev* ev : {&claimed, &in_pel, &retrying}) {
        before[ev->id] = s.hash(s.k.delivery(ev->id));
    }
    const std::int64_t attempts_listed = env.exec({"LLEN", s.k.attempts(retrying.id)}).integer;

    const Swept swept = s.sweep(kNow);
    CHECK(swept == Swept{{claimed.entry, claimed.id}, {in_pel.entry, in_pel.id}, {retrying.entry, retrying.id}});
    for (const Ev* ev : {&claimed, &in_pel, &retrying}) {
        s.check_dead_letter(*ev, kNow, before[ev->id]);
    }
    CHECK(env.exec({"LLEN", s.k.attempts(retrying.id)}).integer == attempts_listed);
    CHECK(env.exec({"PTTL", s.k.attempts(retrying.id)}).integer == -1);
    for (const Ev* ev : untouched) {
        CAPTURE(ev->id);
        CHECK(s.snapshot(*ev) == snapshots[ev->id]);
    }
    CHECK(env.exec({"ZCARD", s.k.dead}).integer == 4);
    CHECK(s.pel() == std::map<std::string, std::string>{{kept_pending.entry, "dead-instance"},
                                                        {kept_retrying.entry, kHolder},
                                                        {stale_index.entry, "dead-instance"},
                                                        {no_entry_id.entry, "dead-instance"},
                                                        {young.entry, "dead-instance"}});

    // Nothing more to do now; the young one is dead-lettered once it is old enough.
    CHECK(s.sweep(kNow + 1).empty());
    CHECK(s.sweep(kNow + 2001) == Swept{{young.entry, young.id}});
    CHECK(s.hash(s.k.delivery(young.id))["last_error"] == kDeletedError);
    for (const Ev* ev : {&kept_pending, &kept_retrying, &kept_delivered}) {
        CHECK(s.snapshot(*ev) == snapshots[ev->id]);
    }

    // An attempt that was in flight when its entry was deleted: a late failure writes nothing (the
    // entry is no longer outstanding), a late success ends delivered.
    CHECK(s.record(in_pel, "retry", kNow + 3000) == -1);
    CHECK(s.hash(s.k.delivery(in_pel.id))["state"] == "dead");
    CHECK(s.hash(s.k.delivery(in_pel.id))["attempts"] == "0");
    CHECK(s.score(s.k.retry, in_pel.entry).empty());
    CHECK(s.record(claimed, "delivered", kNow + 3000) == 1);
    CHECK(s.hash(s.k.delivery(claimed.id))["state"] == "delivered");
    CHECK(s.score(s.k.dead, claimed.id).empty());
    CHECK_FALSE(s.score(s.k.idx_delivered, claimed.id).empty());
}

TEST_CASE("kRecord writes a failure only for the attempt that still holds the entry")
{
    RedisEnv env;
    Shard s(env, env.keys.shard_of("W"));
    constexpr std::int64_t kNow = 2'000'000;
    const Ev ev = s.add();
    // Instance A read the entry and stalled past its lease; B took it over and is sending it.
    s.read("A");
    env.exec({"XCLAIM", s.k.stream, "crm", "B", "0", ev.entry, "JUSTID"});
    s.put_record(ev, "pending", s.k.idx_pending, kNow);
    const auto before = s.snapshot(ev);
    // A's late failure (or its last one) changes nothing: B keeps the entry, nothing waits for a
    // retry that a third instance would send while B's POST runs, no try is counted.
    CHECK(s.record(ev, "retry", kNow + 1, "A") == -1);
    CHECK(s.record(ev, "dead", kNow + 1, "A") == -1);
    CHECK(s.pel() == std::map<std::string, std::string>{{ev.entry, "B"}});
    CHECK(s.score(s.k.retry, ev.entry).empty());
    CHECK(s.score(s.k.dead, ev.id).empty());
    CHECK(s.snapshot(ev) == before);
    // B's own failure is recorded: the entry waits for a retry, held by the retry holder.
    CHECK(s.record(ev, "retry", kNow + 2, "B") == 1);
    CHECK(s.pel() == std::map<std::string, std::string>{{ev.entry, kHolder}});
    CHECK(s.score(s.k.retry, ev.entry) == "999999999");
    // A popped retry is held by its score: an attempt whose lease was renewed by someone else since
    // (the score changed) writes nothing; the one holding the current score does.
    CHECK(s.record(ev, "dead", kNow + 3, "C", "123456789") == -1);
    CHECK(s.hash(s.k.delivery(ev.id))["state"] == "retrying");
    CHECK(s.record(ev, "dead", kNow + 3, "C", "999999999") == 2);
    CHECK(s.hash(s.k.delivery(ev.id))["state"] == "dead");
    CHECK_FALSE(s.score(s.k.dead, ev.id).empty());
    // A success is recorded whoever reports it: the CRM has the event.
    CHECK(s.record(ev, "delivered", kNow + 4, "A") == 3);
    CHECK(s.hash(s.k.delivery(ev.id))["state"] == "delivered");
    CHECK(s.pel().empty());
}

TEST_CASE("kSweepLost's cursor walks each index past the outstanding records, then wraps")
{
    RedisEnv env;
    Shard s(env, env.keys.shard_of("W"));
    constexpr std::int64_t kNow = 2'000'000;
    constexpr int kLimit = 5;
    const auto offset = [&](const std::string& field) {
        const store::Reply r = env.exec({"HGET", s.k.sweep, field});
        return r.is_nil() ? std::string("0") : r.str;
    };

    // idx:pending: 12 old records legitimately outstanding ahead of a lost one (13 old in all), and
    // one young record after them. idx:retrying: 7 retries waiting hours ahead of a lost one.
    std::vector<Ev> pending;
    for (int i = 0; i < 13; ++i) {
        pending.push_back(s.add());
    }
    const Ev young = s.add();
    s.read("dead-instance");
    for (int i = 0; i < 13; ++i) {
        s.put_record(pending[static_cast<std::size_t>(i)], "pending", s.k.idx_pending, 1000 + i);
    }
    s.put_record(young, "pending", s.k.idx_pending, kNow);
    std::vector<Ev> retrying;
    for (int i = 0; i < 8; ++i) {
        retrying.push_back(s.add());
    }
    s.read("dead-instance");
    for (int i = 0; i < 8; ++i) {
        s.put_retrying(retrying[static_cast<std::size_t>(i)], 1000 + i, "9999999999999");
    }
    s.xdel(pending.back());
    s.xdel(retrying.back());

    // ceil(13 / 5) + 1 = 4 calls reach the lost pending record, ceil(8 / 5) + 1 = 3 the retrying one.
    Swept swept;
    std::map<std::string, int> found_at;
    for (int call = 1; call <= 4; ++call) {
        for (const auto& [entry, id] : s.sweep(kNow, kLimit)) {
            swept[entry] = id;
            found_at[id] = call;
        }
    }
    CHECK(swept == Swept{{pending.back().entry, pending.back().id}, {retrying.back().entry, retrying.back().id}});
    CHECK(found_at[pending.back().id] == 3);   // members 10..12, the end of the old part
    CHECK(found_at[retrying.back().id] == 2);  // members 5..7
    CHECK(env.state_of(young.id) == "pending");
    // idx:pending: call 3 reached the end of the old part and wrapped, call 4 went on from the
    // start. idx:retrying (7 old members left): calls 2 and 4 reached the end and wrapped.
    CHECK(offset("pending") == "5");
    CHECK(offset("retrying") == "0");
    // Calls with nothing to do move on the same way, and wrap at the end of the old part (12 members
    // in idx:pending now; the young one is not part of it).
    CHECK(s.sweep(kNow, kLimit).empty());
    CHECK(offset("pending") == "10");
    CHECK(offset("retrying") == "5");
    CHECK(s.sweep(kNow, kLimit).empty());
    CHECK(offset("pending") == "0");
    CHECK(offset("retrying") == "0");

    // An entry deleted behind the cursor is found in the next lap: within ceil(12 / 5) + 1 calls.
    CHECK(s.sweep(kNow, kLimit).empty());
    CHECK(offset("pending") == "5");
    s.xdel(pending[1]);
    std::vector<std::string> lap;
    int calls = 0;
    while (calls < 4 && lap.empty()) {
        ++calls;
        for (const auto& [entry, id] : s.sweep(kNow, kLimit)) {
            lap.push_back(id);
        }
    }
    CHECK(lap == std::vector<std::string>{pending[1].id});
    CHECK(calls == 3);

    // Two lost records in one call's reach: the offset moves on by what stayed in the index, so
    // the member that moved into the gap is not skipped.
    env.exec({"HSET", s.k.sweep, "pending", "0"});
    s.xdel(pending[4]);  // now at position 3 (pending[1] left)
    s.xdel(pending[6]);  // position 5: just after the first call's window
    const Swept first = s.sweep(kNow, kLimit);
    CHECK(first == Swept{{pending[4].entry, pending[4].id}});
    CHECK(offset("pending") == "4");
    const Swept second = s.sweep(kNow, kLimit);
    CHECK(second == Swept{{pending[6].entry, pending[6].id}});
    for (std::size_t i = 0; i < pending.size() - 1; ++i) {
        CAPTURE(i);
        CHECK(env.state_of(pending[i].id) == (i == 1 || i == 4 || i == 6 ? "dead" : "pending"));
    }
    for (std::size_t i = 0; i + 1 < retrying.size(); ++i) {
        CHECK(env.state_of(retrying[i].id) == "retrying");
    }
}

TEST_CASE("a dispatcher dead-letters a dead instance's deleted entry and a deleted retry, and delivers the rest once")
{
    RedisEnv env;
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    std::vector<std::string> others;
    for (int i = 0; i < 4; ++i) {
        others.push_back(env.add_event("O" + std::to_string(i), 1));
    }
    const std::string read_lost = env.add_event("X1", 1);

    // Instance A reads everything and is mid-request when it "crashes" (its io_context stops), and
    // an operator deletes one of the entries it held from the stream.
    receiver.set_response_delay(10s);
    asio::io_context ioc_a;
    auto a = std::make_unique<RunningDispatcher>(ioc_a, env.cfg, test_options(receiver.url(), {secret}));
    REQUIRE(run_until(ioc_a, [&] { return receiver.count() == others.size() + 1; }, 10s));
    REQUIRE(env.state_of(read_lost) == "pending");
    const int x_shard = env.keys.shard_of("X1");
    const std::string x_entry = env.delivery(read_lost)["entry_id"];
    CHECK(env.exec({"XDEL", env.keys.outbox(x_shard), x_entry}).integer == 1);

    // Instance B's first attempt of a new event fails; its entry is deleted while it waits for
    // its retry, so the retry finds nothing to send (the dispatcher's forget_missing). The event is
    // written once A's last blocking read (200 ms) has timed out in Redis, so that B reads it.
    run_for(env.ioc, 400ms);
    receiver.set_response_delay(0ms);
    receiver.push_statuses({500});
    const std::string retry_lost = env.add_event("Y1", 1);
    const int y_shard = env.keys.shard_of("Y1");
    crm::DispatcherOptions options = test_options(receiver.url(), {secret});
    options.retry_schedule = std::vector<std::chrono::milliseconds>(10, 1500ms);
    {
        RunningDispatcher b(env.ioc, env.cfg, options);
        REQUIRE(run_until(env.ioc, [&] { return env.state_of(retry_lost) == "retrying"; }, 10s));
        const std::string y_entry = env.delivery(retry_lost)["entry_id"];
        CHECK(env.exec({"XDEL", env.keys.outbox(y_shard), y_entry}).integer == 1);

        REQUIRE(run_until(env.ioc, [&] { return env.state_of(read_lost) == "dead"; }, 15s));
        REQUIRE(run_until(env.ioc, [&] { return env.state_of(retry_lost) == "dead"; }, 15s));
        REQUIRE(run_until(env.ioc, [&] { return receiver.acknowledged_ids().size() == others.size(); }, 10s));
        CHECK(run_until(env.ioc, [&] { return b->stats().dead_letters.load() == 2; }, 5s));
        CHECK(run_until(env.ioc, [&] { return b->stats().delivered.load() == others.size(); }, 5s));
        CHECK(run_until(env.ioc, [&] { return env.pending_total() == 0; }, 5s));
        for (const std::string& id : others) {
            CAPTURE(id);
            CHECK(env.state_of(id) == "delivered");
            CHECK(acknowledged_counts(receiver)[id] == 1);
        }
        CHECK(env.exec({"ZCARD", kPrefix + store::Keys::tag(y_shard) + ":crm:retry"}).integer == 0);
        run_for(env.ioc, 500ms);
        CHECK(b->stats().dead_letters.load() == 2);  // each counted once
    }

    // What an operator sees: both among the dead letters with the reason, nothing left outstanding.
    crm::DeliveryAdmin admin(*env.conn, kPrefix, kShards);
    std::map<std::string, std::map<std::string, std::string>> listed;
    for (const std::string state : {"dead", "pending", "retrying"}) {
        Result<std::string> page = run_awaitable(env.ioc, admin.list_deliveries(state, 100, ""));
        REQUIRE(page.has_value());
        const rapidjson::Document doc = parse_json(*page);
        for (const auto& item : doc["items"].GetArray()) {
            CHECK(std::string(item["state"].GetString()) == state);
            listed[state][item["event_id"].GetString()] = item["last_error"].GetString();
        }
    }
    CHECK(listed["dead"] == std::map<std::string, std::string>{{read_lost, kDeletedError}, {retry_lost, kDeletedError}});
    CHECK(listed["pending"].empty());
    CHECK(listed["retrying"].empty());
    CHECK(env.delivery(retry_lost)["attempts"] == "1");  // the failed attempt before the deletion

    // A comes back to life only to shut down: its attempts time out, and those late failures change
    // nothing (the dead letter stays dead, the others stay delivered).
    ioc_a.restart();
    a.reset();
    CHECK(env.state_of(read_lost) == "dead");
    CHECK(env.delivery(read_lost)["last_error"] == kDeletedError);
    for (const std::string& id : others) {
        CHECK(env.state_of(id) == "delivered");
    }
    CHECK(env.pending_total() == 0);
}

namespace {

std::vector<std::string> entry_ids(std::initializer_list<const Ev*> evs)
{
    std::vector<std::string> out;
    for (const Ev* ev : evs) {
        out.push_back(ev->entry);
    }
    return out;
}

/// kTrimOutbox trims approximately: whole stream nodes, each entirely below the floor. With one
/// entry per node (set before the streams are written) that is exactly the entries below the
/// floor, so the two tests below see the floor itself in what goes; the default node size (100) is
/// tested after them.
void one_entry_per_node(RedisEnv& env)
{
    env.exec({"CONFIG", "SET", "stream-node-max-entries", "1"});
}

/// kTrimOutbox past any retention: [trimmed, "trimmed", floor].
std::pair<std::int64_t, std::string> trim_all(Shard& sh)
{
    const store::Reply r = sh.trim(std::int64_t{1} << 50);
    REQUIRE(r.elements.size() == 3);
    CHECK(r.elements[1].str == "trimmed");
    return {r.elements[0].integer, r.elements[2].str};
}

}  // namespace

TEST_CASE("kTrimOutbox trims below the oldest entry still needed, whatever holds it")
{
    RedisEnv env;
    one_entry_per_node(env);
    Shard sh(env, 0);
    const std::int64_t now = 1'000'000;  // the records' clock; the entry ids are chosen by hand
    const Ev lost = sh.add("500-0");
    const Ev a = sh.add("1000-0");
    const Ev b = sh.add("1000-1");
    const Ev c = sh.add("2000-0");
    const Ev d = sh.add("3000-0");
    const Ev e = sh.add("4000-0");
    const Ev f = sh.add("5000-0");
    sh.read("c1");
    const Ev g = sh.add("6000-0");  // not read by the group yet
    // A dead letter whose entry is already gone (what kSweepLost leaves) holds nothing back.
    CHECK(sh.record(lost, "dead", now) == 1);
    sh.xdel(lost);
    sh.record(a, "delivered", now);
    sh.record(b, "dead", now);
    sh.record(c, "delivered", now);
    REQUIRE(sh.requeue(c, now) == "requeued");  // redelivered: in the retry zset, not in the PEL
    sh.record(d, "retry", now);                 // retrying: in the retry zset and held in the PEL
    sh.record(f, "delivered", now);             // e stays in flight, in c1's PEL
    REQUIRE(sh.pel() == std::map<std::string, std::string>{{d.entry, kHolder}, {e.entry, "c1"}});

    // Nothing is older than the retention's cutoff: 1000 keeps 1000-0 and everything after it.
    CHECK(sh.trim(1000).elements.at(0).integer == 0);
    CHECK(sh.entries() == entry_ids({&a, &b, &c, &d, &e, &f, &g}));
    // Past the retention, the dead letter b is the oldest entry still needed.
    CHECK(trim_all(sh) == std::make_pair(std::int64_t{1}, std::string("1000-1")));
    CHECK(sh.entries() == entry_ids({&b, &c, &d, &e, &f, &g}));

    // Recovered, b waits in the retry zset outside the PEL: still kept until it is delivered.
    REQUIRE(sh.requeue(b, now) == "requeued");
    CHECK(trim_all(sh).first == 0);
    sh.record(b, "delivered", now);
    CHECK(trim_all(sh) == std::make_pair(std::int64_t{1}, std::string("2000-0")));  // c, redelivered
    sh.record(c, "delivered", now);
    CHECK(trim_all(sh) == std::make_pair(std::int64_t{1}, std::string("3000-0")));  // d, retrying
    sh.record(d, "delivered", now);
    CHECK(trim_all(sh) == std::make_pair(std::int64_t{1}, std::string("4000-0")));  // e, in flight
    sh.record(e, "delivered", now);
    // Only what the group has not read yet is left: the bound is just after its last-delivered-id.
    CHECK(trim_all(sh) == std::make_pair(std::int64_t{2}, std::string("5000-1")));
    CHECK(sh.entries() == entry_ids({&g}));
    sh.read("c1");
    sh.record(g, "delivered", now);
    CHECK(trim_all(sh) == std::make_pair(std::int64_t{1}, std::string("6000-1")));
    CHECK(sh.entries().empty());
    CHECK(trim_all(sh).first == 0);
    // The stream and its group stay: the next event is read and delivered as before.
    const Ev h = sh.add();
    sh.read("c1");
    CHECK(sh.pel().count(h.entry) == 1);
}

TEST_CASE("kTrimOutbox: every consumer group holds it back, and a busy shard, a stream no group reads or no stream lose nothing")
{
    RedisEnv env;
    one_entry_per_node(env);
    Shard sh(env, 0);
    const std::int64_t now = 1'000'000;
    const Ev a = sh.add("1000-0");
    const Ev b = sh.add("2000-0");
    const Ev c = sh.add("3000-0");
    sh.read("c1");
    for (const Ev* ev : {&a, &b, &c}) {
        sh.record(*ev, "delivered", now);
    }
    // An operator's own consumer group that has read nothing keeps everything.
    env.exec({"XGROUP", "CREATE", sh.k.stream, "audit", "0"});
    CHECK(trim_all(sh) == std::make_pair(std::int64_t{0}, std::string("0-1")));
    env.exec({"XREADGROUP", "GROUP", "audit", "x", "COUNT", "1", "STREAMS", sh.k.stream, ">"});
    CHECK(trim_all(sh) == std::make_pair(std::int64_t{0}, std::string("1000-0")));  // pending in audit
    env.exec({"XACK", sh.k.stream, "audit", a.entry});
    CHECK(trim_all(sh) == std::make_pair(std::int64_t{1}, std::string("1000-1")));
    env.exec({"XGROUP", "DESTROY", sh.k.stream, "audit"});

    // More retries and dead letters than max_scan: the pass is skipped, nothing is trimmed.
    const Ev d = sh.add("4000-0");
    const Ev e = sh.add("5000-0");
    sh.read("c1");
    sh.record(d, "dead", now);
    sh.record(e, "retry", now);
    const store::Reply busy = sh.trim(std::int64_t{1} << 50, 1);
    REQUIRE(busy.elements.size() == 3);
    CHECK(busy.elements[0].integer == 0);
    CHECK(busy.elements[1].str == "busy");
    CHECK(busy.elements[2].integer == 2);
    CHECK(sh.entries() == entry_ids({&b, &c, &d, &e}));
    const store::Reply enough = sh.trim(std::int64_t{1} << 50, 2);
    CHECK(enough.elements.at(0).integer == 2);
    CHECK(sh.entries() == entry_ids({&d, &e}));

    // A stream no group reads yet is left whole (a group created later starts at 0); no stream at all.
    const crm::ShardKeys other = crm::DeliveryKeys(kPrefix, kShards).shard(1);
    env.exec({"XADD", other.stream, "1-0", "id", "evt_x_1"});
    const store::Reply no_group =
        sh.eval(crm::scripts::kTrimOutbox, {other.stream, other.retry, other.dead, other.delivery_prefix},
                {std::to_string(std::int64_t{1} << 50), "100"});
    CHECK(no_group.elements.at(0).integer == 0);
    CHECK(no_group.elements.at(1).str == "no_group");
    CHECK(env.exec({"XLEN", other.stream}).integer == 1);
    const crm::ShardKeys none = crm::DeliveryKeys(kPrefix, kShards).shard(2);
    const store::Reply no_stream =
        sh.eval(crm::scripts::kTrimOutbox, {none.stream, none.retry, none.dead, none.delivery_prefix}, {"1", "100"});
    CHECK(no_stream.elements.at(1).str == "no_stream");
    CHECK(env.exec({"EXISTS", none.stream}).integer == 0);
}

TEST_CASE("kTrimOutbox removes a large backlog in bounded steps of whole nodes, never an entry at or above the floor")
{
    RedisEnv env;
    Shard sh(env, 0);
    // 25,000 entries 1-0 .. 25000-0 (default stream-node-max-entries: 100), all read and
    // acknowledged: only the retention holds entries back. A cutoff of 20,050 ms makes the floor
    // 20050-0: 20,049 entries below it, 4,951 at or above it.
    env.exec({"EVAL",
              "for i = 1, tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], i .. '-0', 'id', 'evt_' .. i) end",
              "1", sh.k.stream, "25000"});
    env.exec({"XGROUP", "SETID", sh.k.stream, "crm", "$"});
    const auto count = [&](const std::string& from, const std::string& to) {
        return env.exec({"EVAL", "return #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2])", "1", sh.k.stream, from, to})
            .integer;
    };
    const auto below_floor = [&] { return count("-", "(20050-0"); };
    const auto at_or_above = [&] { return count("20050-0", "+"); };

    std::vector<std::int64_t> removed;
    for (int pass = 0; pass < 10; ++pass) {
        CAPTURE(pass);
        const store::Reply r = sh.trim(20'050);
        REQUIRE(r.elements.size() == 3);
        CHECK(r.elements[1].str == "trimmed");
        CHECK(r.elements[2].str == "20050-0");
        CHECK(r.elements[0].integer <= 10'000);  // one call never blocks Redis with more
        CHECK(at_or_above() == 4'951);            // nothing at or above the floor goes
        removed.push_back(r.elements[0].integer);
        if (r.elements[0].integer == 0) {
            break;
        }
    }
    CAPTURE(removed.size());
    CHECK(removed.front() > 5'000);
    CHECK(removed.size() <= 5);  // a few passes work off the backlog, then one finds nothing
    CHECK(removed.back() == 0);
    std::int64_t total = 0;
    for (const std::int64_t n : removed) {
        total += n;
    }
    // Everything below the floor is gone but what shares the floor's node (fewer than 100).
    CHECK(total == 20'049 - below_floor());
    CHECK(below_floor() < 100);
    CHECK(env.exec({"XLEN", sh.k.stream}).integer == 4'951 + below_floor());

    // Once the floor passes that node (here: past every entry), it goes too.
    const store::Reply all = sh.trim(std::int64_t{1} << 50);
    CHECK(all.elements.at(0).integer == 4'951 + (20'049 - total));
    CHECK(env.exec({"XLEN", sh.k.stream}).integer == 0);
}

TEST_CASE("the dispatcher works off a large trim backlog in one pass, in calls of at most 10,000 entries")
{
    RedisEnv env;
    const crm::ShardKeys k = crm::DeliveryKeys(kPrefix, kShards).shard(0);
    env.exec({"EVAL",
              "for i = 1, tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], i .. '-0', 'id', 'evt_' .. i) end",
              "1", k.stream, "25000"});
    env.exec({"XGROUP", "CREATE", k.stream, "crm", "$"});  // all read and acknowledged
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    crm::DispatcherOptions options = test_options(receiver.url(), {secret});
    options.outbox_retention = 1ms;
    options.trim_interval = std::chrono::hours{1};  // one pass, at start
    LogCapture logs;
    RunningDispatcher d(env.ioc, env.cfg, options);
    REQUIRE(run_until(env.ioc, [&] { return d->stats().outbox_trimmed.load() == 25'000; }, 10s));
    CHECK(env.exec({"XLEN", k.stream}).integer == 0);
    const std::vector<std::string> trimmed = logs.with("\"crm.outbox_trimmed\"");
    REQUIRE(trimmed.size() == 1);  // one pass, one line for the shard
    CHECK(trimmed[0].find(R"("count":25000)") != std::string::npos);
}

TEST_CASE("with a retention, the dispatcher trims what was delivered, keeps a dead letter's shard from it on, and the dead letter can still be redelivered")
{
    RedisEnv env;
    const std::string secret = new_secret();
    HttpReceiver receiver(HttpReceiverOptions{.secrets = {secret}});
    receiver.set_default_status(503);
    const std::string dead = env.add_event("D1", 1);
    crm::DispatcherOptions options = test_options(receiver.url(), {secret});
    options.retry_schedule = {100ms};
    options.outbox_retention = 1ms;
    options.trim_interval = 100ms;
    RunningDispatcher d(env.ioc, env.cfg, options);
    REQUIRE(run_until(env.ioc, [&] { return env.state_of(dead) == "dead"; }, 10s));

    receiver.set_default_status(200);
    std::vector<std::string> ids;
    std::size_t behind_dead = 0;  // events of the dead letter's shard, written after it
    for (int i = 0; i < 16; ++i) {
        const std::string bill = "T" + std::to_string(i);
        ids.push_back(env.add_event(bill, 1));
        behind_dead += env.keys.shard_of(bill) == env.keys.shard_of("D1") ? 1 : 0;
    }
    REQUIRE(behind_dead > 0);
    REQUIRE(behind_dead < ids.size());
    const auto outbox_length = [&] {
        std::int64_t n = 0;
        for (int s = 0; s < kShards; ++s) {
            n += env.exec({"XLEN", env.keys.outbox(s)}).integer;
        }
        return n;
    };
    REQUIRE(run_until(env.ioc, [&] { return receiver.acknowledged_ids().size() == ids.size(); }, 10s));
    REQUIRE(run_until(env.ioc, [&] { return d->stats().outbox_trimmed.load() == ids.size() - behind_dead; }, 10s));
    run_for(env.ioc, 300ms);
    CHECK(d->stats().outbox_trimmed.load() == ids.size() - behind_dead);
    CHECK(outbox_length() == static_cast<std::int64_t>(1 + behind_dead));
    CHECK(receiver.acknowledged_ids() == std::set<std::string>(ids.begin(), ids.end()));
    for (const std::string& id : ids) {
        CHECK(env.state_of(id) == "delivered");  // the records outlive their entries (record_ttl)
    }

    crm::DeliveryAdmin admin(*env.conn, kPrefix, kShards);
    Result<std::string> redelivered = run_awaitable(env.ioc, admin.redeliver(dead));
    REQUIRE(redelivered.has_value());
    REQUIRE(run_until(env.ioc, [&] { return env.state_of(dead) == "delivered"; }, 10s));
    CHECK(receiver.acknowledged_ids().count(dead) == 1);
    REQUIRE(run_until(env.ioc, [&] { return d->stats().outbox_trimmed.load() == ids.size() + 1; }, 10s));
    CHECK(outbox_length() == 0);
    check_all_signed(receiver);
}

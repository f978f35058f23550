// The provider-query queue (store/query_queue.hpp) against a real redis-server: which bills enter
// it and when, how often they come due, when they leave, the intake mark's paging, and the
// per-shard lease that lets several instances share the sweeps.

#include "store/query_queue.hpp"

#include "store/keys.hpp"
#include "tests/integration/store/bill_events.hpp"
#include "tests/integration/store/store_fixture.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <set>
#include <thread>
#include <string>
#include <vector>

using paybridge::Result;
using paybridge::store::DueBill;
using paybridge::store::DueRound;
using paybridge::store::QueryQueue;
using paybridge::store::QuerySchedule;
using paybridge::test::StoreFixture;
namespace ev = paybridge::test::bill_events;
using namespace std::chrono_literals;

namespace {

constexpr std::int64_t kT0 = 1'700'000'000'000;  // Unix ms
constexpr std::int64_t kAfter = 300'000;
constexpr std::int64_t kUntil = 93'600'000;
constexpr std::int64_t kMaxGap = 21'600'000;

QuerySchedule schedule()
{
    QuerySchedule s;
    s.after = std::chrono::milliseconds(kAfter);
    s.until = std::chrono::milliseconds(kUntil);
    s.max_gap = std::chrono::milliseconds(kMaxGap);
    return s;
}

/// A store and a queue on one clock the test moves.
struct QueueFixture {
    std::atomic<std::int64_t> clock{kT0};
    StoreFixture f{[](paybridge::config::RedisConfig& cfg) { cfg.shards = 2; }, {}, [this] { return clock.load(); }};
    QueryQueue queue{*f.conn, paybridge::store::Keys("pb:", 2), schedule(), [this] { return clock.load(); }};

    QueueFixture() { REQUIRE(f.wait_ready()); }

    std::size_t intake_all(std::size_t max_bills = 10'000)
    {
        std::size_t read = 0;
        for (int s = 0; s < 2; ++s) {
            Result<std::size_t> r = f.run(queue.intake(s, max_bills));
            REQUIRE(r.has_value());
            read += *r;
        }
        return read;
    }
    std::vector<DueBill> due_all(std::size_t* settled = nullptr, std::vector<std::string>* expired = nullptr,
                                 std::chrono::milliseconds claim = 60s)
    {
        std::vector<DueBill> all;
        for (int s = 0; s < 2; ++s) {
            Result<DueRound> r = f.run(queue.take_due(s, 1000, claim));
            REQUIRE(r.has_value());
            if (settled != nullptr) {
                *settled += r->settled;
            }
            if (expired != nullptr) {
                expired->insert(expired->end(), r->expired.begin(), r->expired.end());
            }
            all.insert(all.end(), r->bills.begin(), r->bills.end());
        }
        return all;
    }
    std::set<std::string> ids(const std::vector<DueBill>& bills)
    {
        std::set<std::string> out;
        for (const DueBill& b : bills) {
            out.insert(b.id);
        }
        return out;
    }
    /// The bill's score in its shard's due set, -1 when it is not there.
    std::int64_t due_at(const std::string& id)
    {
        const paybridge::store::Keys keys("pb:", 2);
        const paybridge::store::Reply r = f.cmd({"ZSCORE", keys.query_due(keys.shard_of(id)), id});
        return r.is_nil() ? -1 : std::stoll(r.str);
    }
    std::int64_t waiting()
    {
        Result<std::int64_t> r = f.run(queue.waiting());
        REQUIRE(r.has_value());
        return *r;
    }
};

}  // namespace

TEST_CASE("query queue - unsettled bills enter once they are `after` old and paid ones never do")
{
    QueueFixture q;
    q.f.register_bill(ev::new_bill("Q-PENDING"));
    q.f.register_bill(ev::new_bill("Q-PAID"));
    q.f.register_bill(ev::new_bill("Q-CLOSED"));
    q.f.apply(ev::alipay_payment("Q-PAID", "T-PAID", 1000, "n-paid"));
    q.f.apply(ev::close_event("Q-CLOSED", "n-close"));

    q.clock = kT0 + kAfter - 1;
    CHECK(q.intake_all() == 0);
    CHECK(q.due_all().empty());

    q.clock = kT0 + kAfter;
    CHECK(q.intake_all() == 2);
    CHECK(q.waiting() == 2);
    const std::vector<DueBill> due = q.due_all();
    CHECK(q.ids(due) == std::set<std::string>{"Q-PENDING", "Q-CLOSED"});
    for (const DueBill& b : due) {
        CHECK(b.created_ms == kT0);
        CHECK(b.status == (b.id == "Q-PENDING" ? "PENDING" : "CLOSED"));
    }

    // Read again (the look-back), but they are in already: their due times stay (claimed now).
    CHECK(q.intake_all() == 0);
    CHECK(q.due_at("Q-PENDING") == kT0 + kAfter + 60'000);
}

TEST_CASE("query queue - a bill paid after it entered leaves at its next turn")
{
    QueueFixture q;
    q.f.register_bill(ev::new_bill("Q-LATE"));
    q.clock = kT0 + kAfter;
    REQUIRE(q.intake_all() == 1);
    REQUIRE(q.due_at("Q-LATE") == kT0 + kAfter);

    q.f.apply(ev::wechat_payment("Q-LATE", "WX-LATE", 1000, "n-late"));
    std::size_t settled = 0;
    CHECK(q.due_all(&settled).empty());
    CHECK(settled == 1);
    CHECK(q.due_at("Q-LATE") == -1);
    CHECK(q.waiting() == 0);
}

TEST_CASE("query queue - a bill is asked about again when its age has doubled and last at `until`")
{
    QueueFixture q;
    // Pure schedule: doubling, clamped to [after, max_gap], never past created + until.
    CHECK(q.queue.next_due_ms(kT0, kT0 + kAfter) == kT0 + 2 * kAfter);
    CHECK(q.queue.next_due_ms(kT0, kT0 + 1000) == kT0 + 1000 + kAfter);
    CHECK(q.queue.next_due_ms(kT0, kT0 + 3'600'000) == kT0 + 7'200'000);
    CHECK(q.queue.next_due_ms(kT0, kT0 + 36'000'000) == kT0 + 36'000'000 + kMaxGap);
    CHECK(q.queue.next_due_ms(kT0, kT0 + kUntil - 60'000) == kT0 + kUntil);
    CHECK(q.queue.next_due_ms(kT0, kT0 + kUntil) == 0);

    q.f.register_bill(ev::new_bill("Q-SLOW"));
    q.clock = kT0 + kAfter;
    REQUIRE(q.intake_all() == 1);
    std::vector<DueBill> due = q.due_all();
    REQUIRE(due.size() == 1);

    // Asked about at 5 min: due again at 10 min, and not before.
    REQUIRE(q.f.run(q.queue.reschedule(due[0])).has_value());
    CHECK(q.due_at("Q-SLOW") == kT0 + 2 * kAfter);
    q.clock = kT0 + 2 * kAfter - 1;
    CHECK(q.due_all().empty());
    q.clock = kT0 + 2 * kAfter;
    due = q.due_all();
    REQUIRE(due.size() == 1);

    // The last turn is at `until`; after it the bill leaves.
    q.clock = kT0 + kUntil - 1000;
    REQUIRE(q.f.run(q.queue.reschedule(due[0])).has_value());
    CHECK(q.due_at("Q-SLOW") == kT0 + kUntil);
    q.clock = kT0 + kUntil;
    due = q.due_all();
    REQUIRE(due.size() == 1);
    REQUIRE(q.f.run(q.queue.reschedule(due[0])).has_value());
    CHECK(q.due_at("Q-SLOW") == -1);
}

TEST_CASE("query queue - a reschedule does not bring back a bill another instance removed")
{
    QueueFixture q;
    q.f.register_bill(ev::new_bill("Q-GONE"));
    q.clock = kT0 + kAfter;
    REQUIRE(q.intake_all() == 1);
    const std::vector<DueBill> due = q.due_all();
    REQUIRE(due.size() == 1);
    REQUIRE(q.f.run(q.queue.remove(due[0])).has_value());
    REQUIRE(q.f.run(q.queue.reschedule(due[0])).has_value());
    CHECK(q.due_at("Q-GONE") == -1);
}

TEST_CASE("query queue - the first intake starts at `until` ago and older bills are never asked about")
{
    QueueFixture q;
    q.f.register_bill(ev::new_bill("Q-ANCIENT"));
    q.clock = kT0 + 1;
    q.f.register_bill(ev::new_bill("Q-YOUNG"));
    q.clock = kT0 + kUntil;
    CHECK(q.intake_all() == 1);
    CHECK(q.ids(q.due_all()) == std::set<std::string>{"Q-YOUNG"});
}

TEST_CASE("query queue - intake pages through many bills of one millisecond and resumes where it stopped")
{
    QueueFixture q;
    const paybridge::store::Keys keys("pb:", 2);
    // 2,500 unsettled bills in shard 0 straight into the indexes: 1,500 created at one millisecond,
    // 1,000 at the next (pages of 1,000 must carry the count of entries read at a score).
    std::vector<std::string> zadd{"ZADD", keys.created(0)};
    int made = 0;
    for (int i = 0; made < 2500; ++i) {
        const std::string id = "Q-BULK-" + std::to_string(i);
        if (keys.shard_of(id) != 0) {
            continue;
        }
        zadd.push_back(std::to_string(made < 1500 ? kT0 : kT0 + 1));
        zadd.push_back(id);
        q.f.cmd({"HSET", keys.bill(id), "status", "PENDING"});
        ++made;
    }
    REQUIRE(q.f.integer(zadd) == 2500);

    q.clock = kT0 + 1 + kAfter;
    Result<std::size_t> first = q.f.run(q.queue.intake(0, 2000));
    REQUIRE(first.has_value());
    CHECK(*first == 2000);
    // It stopped inside kT0 + 1: the mark stays before it, so the next call reads it whole.
    CHECK(q.f.cmd({"GET", keys.query_intake(0)}).str == std::to_string(kT0));
    Result<std::size_t> second = q.f.run(q.queue.intake(0, 2000));
    REQUIRE(second.has_value());
    CHECK(*second == 500);
    CHECK(q.f.integer({"ZCARD", keys.query_due(0)}) == 2500);
    CHECK(q.f.cmd({"GET", keys.query_intake(0)}).str == std::to_string(kT0 + 1));
    Result<std::size_t> third = q.f.run(q.queue.intake(0, 2000));
    REQUIRE(third.has_value());
    CHECK(*third == 0);
}

TEST_CASE("query queue - one instance at a time holds a shard's lease until it expires")
{
    QueueFixture q;
    const paybridge::store::Keys keys("pb:", 2);
    Result<bool> a = q.f.run(q.queue.lease(1, "instance-a", 60s));
    REQUIRE(a.has_value());
    CHECK(*a);
    Result<bool> b = q.f.run(q.queue.lease(1, "instance-b", 60s));
    REQUIRE(b.has_value());
    CHECK_FALSE(*b);
    Result<bool> other_shard = q.f.run(q.queue.lease(0, "instance-b", 60s));
    REQUIRE(other_shard.has_value());
    CHECK(*other_shard);
    CHECK(q.f.cmd({"GET", keys.query_lease(1)}).str == "instance-a");
    const std::int64_t ttl = q.f.integer({"PTTL", keys.query_lease(1)});
    CHECK(ttl > 0);
    CHECK(ttl <= 60'000);

    q.f.cmd({"PEXPIRE", keys.query_lease(1), "1"});
    std::this_thread::sleep_for(20ms);
    Result<bool> later = q.f.run(q.queue.lease(1, "instance-b", 60s));
    REQUIRE(later.has_value());
    CHECK(*later);
}

TEST_CASE("query queue - bills taken by one sweep are claimed: another sweep does not take them until the claim ends")
{
    QueueFixture q;
    q.f.register_bill(ev::new_bill("Q-CLAIM"));
    q.clock = kT0 + kAfter;
    REQUIRE(q.intake_all() == 1);
    CHECK(q.due_all(nullptr, nullptr, 30s).size() == 1);
    CHECK(q.due_at("Q-CLAIM") == kT0 + kAfter + 30'000);
    // A second instance, at once and until the claim ends: nothing to take.
    CHECK(q.due_all().empty());
    q.clock = kT0 + kAfter + 29'999;
    CHECK(q.due_all().empty());
    // The first never came back (it died): the bill is due again.
    q.clock = kT0 + kAfter + 30'000;
    CHECK(q.due_all().size() == 1);
}

TEST_CASE("query queue - a failed query is retried when asked and a bill past its last turn by more than max_gap leaves unasked")
{
    QueueFixture q;
    q.f.register_bill(ev::new_bill("Q-RETRY"));
    q.clock = kT0 + kAfter;
    REQUIRE(q.intake_all() == 1);
    std::vector<DueBill> due = q.due_all();
    REQUIRE(due.size() == 1);
    REQUIRE(q.f.run(q.queue.retry(due[0], kT0 + kAfter + 30'000)).has_value());
    CHECK(q.due_at("Q-RETRY") == kT0 + kAfter + 30'000);

    CHECK(q.queue.may_retry(due[0], kT0 + kUntil + kMaxGap));
    CHECK_FALSE(q.queue.may_retry(due[0], kT0 + kUntil + kMaxGap + 1));
    // Every instance was down through the last turn and a max_gap after it.
    q.clock = kT0 + kUntil + kMaxGap + 1;
    std::vector<std::string> expired;
    CHECK(q.due_all(nullptr, &expired).empty());
    CHECK(expired == std::vector<std::string>{"Q-RETRY"});
    CHECK(q.due_at("Q-RETRY") == -1);
}

TEST_CASE("query queue - a bill registered by an instance whose clock is behind still enters")
{
    QueueFixture q;
    q.clock = kT0 + kAfter;
    REQUIRE(q.intake_all() == 0);  // sets the marks to kT0
    // Another instance, its clock 30 s behind, registers a bill now: created at kT0 - 30 s + 10 s.
    q.clock = kT0 - 20'000;
    q.f.register_bill(ev::new_bill("Q-SKEW"));
    q.clock = kT0 + kAfter + 10'000;
    CHECK(q.intake_all() == 1);
    CHECK(q.due_at("Q-SKEW") == kT0 - 20'000 + kAfter);
}

TEST_CASE("query queue - due_at moves the bills a sweep took and brings back none that left")
{
    QueueFixture q;
    for (const char* id : {"Q-D1", "Q-D2", "Q-D3"}) {
        q.f.register_bill(ev::new_bill(id));
    }
    q.clock = kT0 + kAfter;
    REQUIRE(q.intake_all() == 3);
    std::vector<DueBill> due = q.due_all();
    REQUIRE(due.size() == 3);
    // One of them was settled and removed meanwhile (another instance).
    const auto gone = std::find_if(due.begin(), due.end(), [](const DueBill& b) { return b.id == "Q-D2"; });
    REQUIRE(gone != due.end());
    REQUIRE(q.f.run(q.queue.remove(*gone)).has_value());
    REQUIRE(q.f.run(q.queue.due_at(due, kT0 + 999'000)).has_value());
    CHECK(q.due_at("Q-D1") == kT0 + 999'000);
    CHECK(q.due_at("Q-D3") == kT0 + 999'000);
    CHECK(q.due_at("Q-D2") == -1);
    // Given back: due at once.
    REQUIRE(q.f.run(q.queue.due_at(due, kT0 + kAfter)).has_value());
    CHECK(q.due_all().size() == 2);
}

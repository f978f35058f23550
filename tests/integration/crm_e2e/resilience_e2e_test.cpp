// CRM delivery through the real daemon (issue 4), when processes come and go: paybridged killed with
// SIGKILL in the middle of deliveries and restarted, two paybridged instances on one Redis, and a
// secret rotation applied with SIGHUP.

#include "tests/integration/crm_e2e/crm_e2e.hpp"
#include "tests/support/redis_server.hpp"

#include <doctest/doctest.h>
#include <signal.h>

using namespace paybridge;
using namespace paybridge::test;
using namespace paybridge::test::crm_e2e;

namespace {

bool all_acknowledged(const HttpReceiver& receiver, const std::vector<std::string>& ids)
{
    const std::map<std::string, int> acked = acknowledged_counts(receiver);
    return std::all_of(ids.begin(), ids.end(), [&](const std::string& id) { return acked.count(id) > 0; });
}

/// Ids of the events the daemon has recorded as delivered, out of `ids`.
std::size_t delivered_count(DaemonFixture& fx, const std::vector<std::string>& ids)
{
    return static_cast<std::size_t>(std::count_if(ids.begin(), ids.end(), [&](const std::string& id) {
        return delivery_state(fx, id) == "delivered";
    }));
}

}  // namespace

TEST_CASE("paybridged killed with SIGKILL mid-delivery and restarted: every event delivered, same webhook-id")
{
    CrmSettings settings;
    // The daemon must still be waiting for the held answer when it is killed, however long the test
    // takes to get there: a timeout would turn the attempt into a scheduled retry, which is not the
    // case under test. lease_s must exceed it (config rule); the dead process's entries are taken
    // over once their lease has run out.
    settings.timeout_ms = 5000;
    settings.concurrency = 4;
    settings.lease_s = 6;
    CrmStack stack(settings);
    DaemonFixture& fx = stack.fx;
    Alipay ali{fx};
    stack.receiver.set_response_delay(300ms);  // a slow CRM: deliveries are always in flight

    std::vector<std::string> ids;
    for (int i = 0; i < 30; ++i) {
        const std::string bill = "K" + std::to_string(6000 + i);
        register_and_pay(fx, ali, bill, 1000 + i);
        ids.push_back(bill_event_ids(fx, bill).at(0));
    }
    // Once some events are through, the CRM stops answering: every request it reads from then on is
    // held for ten minutes (the receiver takes the delay when it reads a request). The daemon is
    // killed once one such request has arrived, so that one is in flight for certain, whatever the
    // load: the daemon never saw an answer to it.
    REQUIRE(stack.receiver.wait_for(
        [](const std::vector<ReceivedRequest>& rs) {
            return std::count_if(rs.begin(), rs.end(), [](const ReceivedRequest& r) { return r.answered; }) >= 8;
        },
        30s));
    stack.receiver.set_response_delay(10min);
    const std::size_t held_from = stack.receiver.count();  // every request from this index on is held
    REQUIRE(stack.receiver.wait_for([&](const std::vector<ReceivedRequest>& rs) { return rs.size() > held_from; },
                                    30s));
    CHECK(fx.process().stop(SIGKILL, 10s) == 128 + SIGKILL);
    // In flight: the requests the CRM received and had not answered when the daemon died. Only the
    // held ones count: one read before the change may have been answered just as the daemon died,
    // and whether the daemon recorded that answer is a race.
    std::set<std::string> in_flight;
    const std::vector<ReceivedRequest> at_kill = stack.receiver.requests();
    for (std::size_t i = held_from; i < at_kill.size(); ++i) {
        CHECK_FALSE(at_kill[i].answered);
        in_flight.insert(at_kill[i].webhook_id);
    }
    REQUIRE_FALSE(in_flight.empty());
    REQUIRE(acknowledged_counts(stack.receiver).size() < ids.size());  // the kill came mid-way
    stack.receiver.set_response_delay(0ms);  // the CRM answers again (what it holds stays unanswered)

    keep_descriptors_from_children();
    fx.start();
    REQUIRE(wait_until([&] { return all_acknowledged(stack.receiver, ids); }, 60s));
    REQUIRE(wait_until([&] { return delivered_count(fx, ids) == ids.size(); }, 20s));
    check_requests_well_formed(stack.receiver);

    const std::map<std::string, int> acked = acknowledged_counts(stack.receiver);
    for (const std::string& id : in_flight) {
        CAPTURE(id);
        CHECK(acked.count(id) == 1);
        // Sent again after the restart, under the same webhook-id (check_requests_well_formed: same body).
        const std::vector<ReceivedRequest> all = stack.receiver.requests();
        const auto copies =
            std::count_if(all.begin(), all.end(), [&](const ReceivedRequest& r) { return r.webhook_id == id; });
        CHECK(copies >= 2);
        const rapidjson::Document d = delivery_doc(fx, id);
        CHECK(std::string(d["delivery"]["state"].GetString()) == "delivered");
    }
    // The new process took the dead one's pending entries over (its consumer name is new).
    CHECK(metric(fx.port(), "paybridge_crm_reclaimed_total") >= static_cast<double>(in_flight.size()));
    REQUIRE(wait_until([&] { return listed(fx, "pending").empty() && listed(fx, "retrying").empty(); }, 10s));

    // Nothing beyond the 30 events was ever sent.
    std::set<std::string> seen;
    for (const ReceivedRequest& r : stack.receiver.requests()) {
        seen.insert(r.webhook_id);
    }
    CHECK(seen == std::set<std::string>(ids.begin(), ids.end()));
}

TEST_CASE("two paybridged instances on one Redis: both deliver, every event delivered, none lost")
{
    CrmSettings settings;
    settings.concurrency = 2;
    CrmStack stack(settings, 1, 1);
    DaemonFixture& fx = stack.fx;
    Alipay ali{fx};
    stack.receiver.set_response_delay(50ms);
    SecondDaemon second(fx, "second");

    // Notifications land on either instance; deliveries are shared through the consumer group.
    std::vector<std::string> ids;
    for (int i = 0; i < 40; ++i) {
        const std::string bill = "T" + std::to_string(7000 + i);
        register_and_pay(fx, ali, bill, 500 + i, i % 2 == 0 ? fx.port() : second.port());
        ids.push_back(bill_event_ids(fx, bill).at(0));
    }
    REQUIRE(wait_until([&] { return all_acknowledged(stack.receiver, ids); }, 60s));
    REQUIRE(wait_until([&] { return delivered_count(fx, ids) == ids.size(); }, 20s));
    check_requests_well_formed(stack.receiver);

    // The receiver marks a request answered once its write completes; each daemon counts the
    // delivery after it has read the answer and recorded it: poll for the counters.
    double first_delivered = -1;
    double second_delivered = -1;
    wait_until(
        [&] {
            first_delivered = metric(fx.port(), "paybridge_crm_deliveries_total");
            second_delivered = metric(second.port(), "paybridge_crm_deliveries_total");
            return first_delivered > 0 && second_delivered > 0 &&
                   first_delivered + second_delivered >= static_cast<double>(ids.size());
        },
        10s);
    CAPTURE(first_delivered);
    CAPTURE(second_delivered);
    CHECK(first_delivered > 0);
    CHECK(second_delivered > 0);
    CHECK(first_delivered + second_delivered >= static_cast<double>(ids.size()));

    // The consumers of the two instances each recorded attempts under their own name.
    std::set<std::string> consumers;
    for (const std::string& id : ids) {
        const rapidjson::Document d = delivery_doc(fx, id);
        for (const auto& a : d["attempts"].GetArray()) {
            consumers.insert(a["consumer"].GetString());
        }
    }
    CHECK(consumers.size() == 2);
    CHECK(listed(fx, "pending").empty());
    CHECK(second.process().stop(SIGTERM, 20s) == 0);
}

TEST_CASE("secret rotation via SIGHUP: the CRM sees both signatures, then only the new one")
{
    CrmStack stack({}, 2);
    DaemonFixture& fx = stack.fx;
    Alipay ali{fx};
    int next_bill = 8000;

    // Notifies a fresh bill and returns the request the receiver got for its event.
    auto deliver_one = [&]() -> ReceivedRequest {
        const std::string bill = "R" + std::to_string(next_bill++);
        register_and_pay(fx, ali, bill, 300);
        const std::string id = bill_event_ids(fx, bill).at(0);
        REQUIRE(wait_until([&] { return acknowledged_counts(stack.receiver).count(id) == 1; }, 15s));
        for (const ReceivedRequest& r : stack.receiver.requests()) {
            if (r.webhook_id == id) {
                return r;
            }
        }
        FAIL("no request for " << id);
        return {};
    };
    auto signatures = [](const ReceivedRequest& r) {
        return std::count(r.webhook_signature.begin(), r.webhook_signature.end(), ',');
    };
    // SIGHUP, then wait until the dispatcher signs with the new set (it restarts after its in-flight work).
    auto reload = [&](const std::vector<int>& signing, const std::vector<bool>& expected) {
        stack.configure(signing);
        fx.process().signal(SIGHUP);
        REQUIRE(wait_until([&] { return deliver_one().verified_by == expected; }, 20s));
    };

    ReceivedRequest r = deliver_one();
    CHECK(r.verified_by == std::vector<bool>{true, false});
    CHECK(signatures(r) == 1);

    // A reload that leaves the CRM settings as they are leaves the dispatcher running.
    const auto occurrences = [&fx](const std::string& what) {
        const std::string log = fx.log();
        std::size_t n = 0;
        for (auto at = log.find(what); at != std::string::npos; at = log.find(what, at + 1)) {
            ++n;
        }
        return n;
    };
    const std::size_t started = occurrences("crm.dispatcher_started");
    CHECK(started > 0);
    const std::size_t reloads = occurrences("daemon.reloaded");
    stack.configure({1});
    fx.process().signal(SIGHUP);
    REQUIRE(wait_until([&] { return occurrences("daemon.reloaded") > reloads; }, 10s));
    r = deliver_one();
    CHECK(r.verified_by == std::vector<bool>{true, false});
    CHECK(occurrences("crm.dispatcher_started") == started);
    CHECK(occurrences("crm.dispatcher_stopped") == 0);

    // The rotation starts: the new secret signs first, the old one still signs too.
    reload({2, 1}, {true, true});
    for (int i = 0; i < 3; ++i) {
        r = deliver_one();
        CHECK(r.verified_by == std::vector<bool>{true, true});
        CHECK(signatures(r) == 2);
        CHECK(r.signature_ok);
    }
    // The CRM has switched: the old secret is dropped.
    reload({2}, {false, true});
    r = deliver_one();
    CHECK(r.verified_by == std::vector<bool>{false, true});
    CHECK(signatures(r) == 1);
    check_requests_well_formed(stack.receiver);
    CHECK(fx.log().find("daemon.reloaded") != std::string::npos);
    CHECK(fx.log().find("\"level\":\"error\"") == std::string::npos);
}

TEST_CASE("with redis.wait_replicas the CRM gets an event only once a replica holds it")
{
    // An event the CRM has must not be taken back by a failover: the bill's next change would
    // reuse its id, and the CRM, deduplicating on it, would drop that change. So the dispatcher
    // WAITs for the replicas, as the provider's acknowledgement does, before it POSTs.
    CrmSettings settings;
    settings.redis_extra = R"(, "wait_replicas": 1, "wait_timeout_ms": 300)";
    settings.lease_s = 3;
    CrmStack stack(settings);
    DaemonFixture& fx = stack.fx;
    INFO("paybridged log:\n", fx.log());
    Alipay ali{fx};

    // No replica: written on the primary, not confirmed. The provider hears 503, the CRM nothing.
    CHECK(fx.create_bill("RW1", 100).status == 503);
    CHECK(post_alipay(fx.port(), ali.paid("RW1", 100)).status == 503);
    REQUIRE(bill_event_ids(fx, "RW1") == std::vector<std::string>{"evt_RW1_1"});
    // The dispatcher took the event and held it back (more than once: every lease).
    REQUIRE(wait_until(
        [&] {
            const std::string log = fx.log();
            const std::size_t first = log.find(R"("event_id":"evt_RW1_1","wait_replicas":1)");
            return first != std::string::npos &&
                   log.find(R"("event_id":"evt_RW1_1","wait_replicas":1)", first + 1) != std::string::npos;
        },
        30s));
    CHECK(stack.receiver.count() == 0);
    CHECK(delivery_state(fx, "evt_RW1_1") != "delivered");

    // A replica attaches: the event is confirmed on the next try and delivered, once.
    RedisTestServer replica({"--replicaof", "127.0.0.1", std::to_string(fx.redis().port())});
    REQUIRE(wait_until([&] { return all_acknowledged(stack.receiver, {"evt_RW1_1"}); }, 60s));
    REQUIRE(wait_until([&] { return delivery_state(fx, "evt_RW1_1") == "delivered"; }, 10s));
    CHECK(acknowledged_counts(stack.receiver).at("evt_RW1_1") == 1);
}

TEST_CASE("the dispatcher's Redis trouble shows in metrics: its errors and the age of the outbox gauges")
{
    // One worker: the dispatcher's own connections are the ones that matter here.
    CrmStack stack({}, 1, 1);
    DaemonFixture& fx = stack.fx;
    INFO("paybridged log:\n", fx.log());
    const std::string text = http_request(fx.port(), "GET", "/metrics").body;
    CHECK(text.find("paybridge_crm_redis_errors_total 0") != std::string::npos);
    CHECK(text.find("paybridge_crm_in_flight 0") != std::string::npos);
    // The dispatcher at work (its connections ready: under a sanitizer they may still be checking
    // the key layout when the daemon is ready): an event delivered.
    Alipay ali{fx};
    register_and_pay(fx, ali, "RM1", 100);
    REQUIRE(wait_until([&] { return all_acknowledged(stack.receiver, {"evt_RM1_1"}); }, 30s));
    // The gauges are read every 5 s: fresh while Redis answers.
    REQUIRE(wait_until([&] { return metric(fx.port(), "paybridge_outbox_stats_age_seconds") < 6; }, 20s));

    // Redis stops answering: the dispatcher's commands time out and count, the gauges cannot be
    // refreshed, and say how old they are.
    fx.redis().freeze();
    REQUIRE(wait_until([&] { return metric(fx.port(), "paybridge_crm_redis_errors_total") > 0; }, 20s));
    REQUIRE(wait_until([&] { return metric(fx.port(), "paybridge_outbox_stats_age_seconds") >= 12; }, 30s));

    // Back: fresh again.
    fx.redis().thaw();
    CHECK(wait_until([&] { return metric(fx.port(), "paybridge_outbox_stats_age_seconds") < 6; }, 30s));
}

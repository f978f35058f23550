// CRM delivery through the real daemon (issue 4): what the CRM receives after a provider's
// notification, failed attempts and their records, a receiver outage, dead letters with recovery and
// redelivery, and a provider acknowledgement that never waits for the CRM.

#include "tests/integration/crm_e2e/crm_e2e.hpp"

#include "store/keys.hpp"
#include "tests/support/redis_cluster.hpp"
#include "tests/support/redis_server.hpp"

#include <doctest/doctest.h>

using namespace paybridge;
using namespace paybridge::test;
using namespace paybridge::test::crm_e2e;

TEST_CASE("notify -> the CRM receives the signed event served by the bill history and the feed")
{
    CrmStack stack;
    DaemonFixture& fx = stack.fx;
    Alipay ali{fx};

    // Paid and then partly refunded, back to back: the CRM must still see them in that order.
    register_and_pay(fx, ali, "E1001", 1000);
    const HttpResult refunded = fx.post_alipay(ali.refund("E1001", 1000, 300, "RF-E1001-1"));
    REQUIRE(refunded.body == "success");

    const std::vector<std::string> ids = bill_event_ids(fx, "E1001");
    REQUIRE(ids.size() == 2);
    REQUIRE(stack.receiver.wait_for(
        [&](const std::vector<ReceivedRequest>& rs) {
            return std::count_if(rs.begin(), rs.end(), [](const ReceivedRequest& r) { return r.answered; }) >= 2;
        },
        15s));
    const std::vector<ReceivedRequest> requests = stack.receiver.requests();
    REQUIRE(requests.size() == 2);  // one attempt each: nothing failed, nothing re-sent
    check_requests_well_formed(stack.receiver);

    const rapidjson::Document bill = parse_json(fx.get_bill("E1001").body);
    const std::map<std::string, std::string> all = feed(fx);
    std::int64_t previous_sequence = 0;
    for (std::size_t i = 0; i < ids.size(); ++i) {
        CAPTURE(ids[i]);
        const ReceivedRequest& r = requests[i];
        CHECK(r.webhook_id == ids[i]);  // arrived in history order
        CHECK(r.verified_by == std::vector<bool>{true});
        const auto age = std::chrono::system_clock::now().time_since_epoch() -
                         std::chrono::seconds(std::stoll(r.webhook_timestamp));
        CHECK(std::chrono::abs(std::chrono::duration_cast<std::chrono::seconds>(age)).count() <= 30);

        const rapidjson::Document sent = parse_json(r.body);
        // The same object as the bill's history and the feed (API.md: "the same objects").
        CHECK(sent == bill["events"][static_cast<rapidjson::SizeType>(i)]);
        REQUIRE(all.count(ids[i]) == 1);
        CHECK(sent == parse_json(all.at(ids[i])));

        CHECK(std::string(sent["bill_id"].GetString()) == "E1001");
        CHECK(sent["sequence"].GetInt64() > previous_sequence);
        previous_sequence = sent["sequence"].GetInt64();
        CHECK(sent["bill"].IsObject());
        CHECK(sent["data"].IsObject());
        CHECK(sent.HasMember("created_at"));

        // The receiver marks a request answered once its write completes; the daemon records the
        // delivery after it has read the answer: poll until it has.
        rapidjson::Document d;
        wait_until(
            [&] {
                d = delivery_doc(fx, ids[i]);
                return std::string(d["delivery"]["state"].GetString()) == "delivered" && d["attempts"].Size() >= 1;
            },
            10s);
        CHECK(std::string(d["delivery"]["state"].GetString()) == "delivered");
        REQUIRE(d["attempts"].Size() == 1);
        CHECK(d["attempts"][0]["status"].GetInt() == 200);
        CHECK(d["event"] == sent);
    }
    const rapidjson::Document paid = parse_json(requests[0].body);
    const rapidjson::Document refund = parse_json(requests[1].body);
    CHECK(std::string(paid["type"].GetString()) == "bill.paid");
    CHECK(std::string(paid["bill"]["status"].GetString()) == "PAID");
    CHECK(paid["bill"]["paid_fen"].GetInt64() == 1000);
    CHECK(std::string(refund["type"].GetString()) == "bill.refunded");
    CHECK(std::string(refund["bill"]["status"].GetString()) == "PARTIALLY_REFUNDED");
    CHECK(refund["bill"]["refunded_fen"].GetInt64() == 300);
    wait_until([&] { return metric(fx.port(), "paybridge_crm_deliveries_total") >= 2; }, 10s);
    CHECK(metric(fx.port(), "paybridge_crm_deliveries_total") == 2);
}

TEST_CASE("GET /v1/deliveries: state=delivered lists delivered events, limit up to the admin maximum")
{
    CrmStack stack;
    DaemonFixture& fx = stack.fx;
    Alipay ali{fx};
    register_and_pay(fx, ali, "E1101", 1000);
    const std::string id = bill_event_ids(fx, "E1101").at(0);
    REQUIRE(wait_until([&] { return delivery_state(fx, id) == "delivered"; }, 15s));

    HttpResult r = fx.api("GET", "/v1/deliveries?state=delivered");
    CHECK_MESSAGE(r.status == 200, r.body);
    if (r.status == 200) {
        const rapidjson::Document d = parse_json(r.body);
        REQUIRE(d["items"].Size() == 1);
        CHECK(std::string(d["items"][0]["event_id"].GetString()) == id);
        CHECK(std::string(d["items"][0]["state"].GetString()) == "delivered");
    }
    r = fx.api("GET", "/v1/deliveries?state=delivered&limit=500");
    CHECK_MESSAGE(r.status == 200, r.body);
    // Beyond the maximum: the limit is what is wrong, not the (absent) cursor.
    for (const std::string limit : {"501", "1000", "0"}) {
        CAPTURE(limit);
        r = fx.api("GET", "/v1/deliveries?state=pending&limit=" + limit);
        CHECK(r.status == 400);
        const rapidjson::Document d = parse_json(r.body);
        CHECK(std::string(d["error"]["field"].GetString()) == "limit");
        CHECK(std::string(d["error"]["message"].GetString()).find("500") != std::string::npos);
    }
    r = fx.api("GET", "/v1/deliveries?state=bogus");
    CHECK(r.status == 400);
    CHECK(std::string(parse_json(r.body)["error"]["field"].GetString()) == "state");
}

TEST_CASE("500 then 200: delivered, and GET /v1/events/{id} shows both attempts")
{
    CrmStack stack;
    DaemonFixture& fx = stack.fx;
    Alipay ali{fx};
    stack.receiver.push_statuses({500});
    stack.receiver.set_response_body(R"({"error":"crm database is restarting"})");
    stack.receiver.set_response_delay(120ms);

    register_and_pay(fx, ali, "E2001", 2500);
    const std::string id = bill_event_ids(fx, "E2001").at(0);
    REQUIRE(wait_until([&] { return acknowledged_counts(stack.receiver)[id] == 1; }, 20s));
    REQUIRE(wait_until([&] { return delivery_state(fx, id) == "delivered"; }, 10s));
    check_requests_well_formed(stack.receiver);
    const std::vector<ReceivedRequest> requests = stack.receiver.requests();
    REQUIRE(requests.size() == 2);
    CHECK(requests[0].status == 500);
    CHECK(requests[1].status == 200);
    CHECK(requests[0].webhook_id == id);
    CHECK(requests[1].webhook_id == id);
    // A retry is a new attempt: signed again, never earlier than the first.
    CHECK(std::stoll(requests[1].webhook_timestamp) >= std::stoll(requests[0].webhook_timestamp));

    const rapidjson::Document d = delivery_doc(fx, id);
    const auto& delivery = d["delivery"];
    CHECK(std::string(delivery["state"].GetString()) == "delivered");
    CHECK(delivery["attempts"].GetInt() == 2);
    CHECK(delivery["last_status"].GetInt() == 200);
    CHECK(std::string(delivery["bill_id"].GetString()) == "E2001");
    CHECK(std::string(delivery["type"].GetString()) == "bill.paid");
    CHECK(delivery["delivered_at"].IsString());

    const auto& attempts = d["attempts"];
    REQUIRE(attempts.Size() == 2);
    const auto& first = attempts[0];
    CHECK(first["attempt"].GetInt() == 1);
    CHECK(first["status"].GetInt() == 500);
    CHECK(std::string(first["outcome"].GetString()) == "retry");
    CHECK(std::string(first["error"].GetString()) == "http status 500");
    CHECK(std::string(first["response_body"].GetString()).find("crm database is restarting") != std::string::npos);
    CHECK(first["next_at"].IsString());
    CHECK(first["latency_ms"].GetInt64() >= 100);  // the receiver held the answer 120 ms
    const auto& second = attempts[1];
    CHECK(second["attempt"].GetInt() == 2);
    CHECK(second["status"].GetInt() == 200);
    CHECK(std::string(second["outcome"].GetString()) == "delivered");
    CHECK(second["next_at"].IsNull());
    CHECK(second["latency_ms"].GetInt64() >= 100);
    CHECK(second["at_ms"].GetInt64() >= first["at_ms"].GetInt64() + 500);  // the 1 s retry (jitter 0.2)
    CHECK(metric(fx.port(), "paybridge_crm_failed_attempts_total") == 1);
}

TEST_CASE("receiver down for a while: the backlog shows as retrying, then is delivered when it returns")
{
    CrmStack stack;
    DaemonFixture& fx = stack.fx;
    Alipay ali{fx};
    stack.receiver.stop();
    PortHold hold(stack.receiver.port());  // down: connections are refused

    std::vector<std::string> ids;
    for (int i = 0; i < 6; ++i) {
        const std::string bill = "E300" + std::to_string(i);
        register_and_pay(fx, ali, bill, 100 + i);
        ids.push_back(bill_event_ids(fx, bill).at(0));
    }
    const std::set<std::string> expected(ids.begin(), ids.end());
    REQUIRE(wait_until([&] { return listed(fx, "retrying") == expected; }, 20s));
    CHECK(stack.receiver.count() == 0);
    for (const std::string& id : ids) {
        const rapidjson::Document d = delivery_doc(fx, id);
        REQUIRE(d["attempts"].Size() >= 1);
        const auto& a = d["attempts"][0];
        CHECK(a["status"].IsNull());  // no HTTP answer at all
        CHECK(std::string(a["error"].GetString()).size() > 0);
        CHECK(std::string(a["outcome"].GetString()) == "retry");
    }
    // Still down a little longer: nothing is given up (the schedule has 20 retries).
    std::this_thread::sleep_for(2s);
    CHECK(listed(fx, "retrying") == expected);
    CHECK(listed(fx, "dead").empty());

    REQUIRE(stack.receiver.start());  // back on the same port (binds beside the hold, which never listens)
    hold.release();
    REQUIRE(wait_until(
        [&] {
            const auto acked = acknowledged_counts(stack.receiver);
            return std::all_of(ids.begin(), ids.end(), [&](const std::string& id) { return acked.count(id) > 0; });
        },
        20s));
    REQUIRE(wait_until([&] { return listed(fx, "retrying").empty(); }, 10s));
    for (const std::string& id : ids) {
        CHECK(delivery_state(fx, id) == "delivered");
    }
    check_requests_well_formed(stack.receiver);
    CHECK(listed(fx, "pending").empty());
}

TEST_CASE("shortened schedule: dead letter, recover since a time, then redeliver on request")
{
    CrmSettings settings;
    settings.retry_schedule_s = "[1, 1]";
    CrmStack stack(settings);
    DaemonFixture& fx = stack.fx;
    Alipay ali{fx};
    stack.receiver.set_default_status(503);
    const std::string before = format_rfc3339(unix_ms(std::chrono::system_clock::now()) - 1000);

    register_and_pay(fx, ali, "E4001", 4200);
    const std::string id = bill_event_ids(fx, "E4001").at(0);
    REQUIRE(wait_until([&] { return listed(fx, "dead").count(id) == 1; }, 20s));
    CHECK(stack.receiver.count() == 3);  // the first attempt and the two retries of the schedule
    {
        const rapidjson::Document d = delivery_doc(fx, id);
        CHECK(std::string(d["delivery"]["state"].GetString()) == "dead");
        CHECK(d["delivery"]["dead_at"].IsString());
        REQUIRE(d["attempts"].Size() == 3);
        CHECK(std::string(d["attempts"][2]["outcome"].GetString()) == "dead");
        for (const auto& a : d["attempts"].GetArray()) {
            CHECK(a["status"].GetInt() == 503);
        }
    }
    CHECK(listed(fx, "retrying").empty());
    // Dead stays dead: nothing more is sent on its own.
    std::this_thread::sleep_for(1500ms);
    CHECK(stack.receiver.count() == 3);

    // The CRM is healthy again. A recovery window that starts after the dead letter requeues nothing.
    stack.receiver.set_default_status(200);
    const std::string later = format_rfc3339(unix_ms(std::chrono::system_clock::now()) + 60'000);
    HttpResult r = fx.api("POST", "/v1/deliveries/recover?since=" + later);
    REQUIRE_MESSAGE(r.status == 200, r.body);
    CHECK(parse_json(r.body)["requeued"].GetInt() == 0);
    CHECK(fx.api("POST", "/v1/deliveries/recover?since=yesterday").status == 400);
    CHECK(fx.api("POST", "/v1/deliveries/recover").status == 400);
    CHECK(fx.api("GET", "/v1/deliveries?state=dead&cursor=nonsense").status == 400);

    r = fx.api("POST", "/v1/deliveries/recover?since=" + before);
    REQUIRE_MESSAGE(r.status == 200, r.body);
    {
        const rapidjson::Document d = parse_json(r.body);
        CHECK(d["requeued"].GetInt() == 1);
        REQUIRE(d["event_ids"].Size() == 1);
        CHECK(std::string(d["event_ids"][0].GetString()) == id);
    }
    REQUIRE(wait_until([&] { return acknowledged_counts(stack.receiver)[id] == 1; }, 15s));
    REQUIRE(wait_until([&] { return delivery_state(fx, id) == "delivered"; }, 10s));
    CHECK(listed(fx, "dead").empty());

    // An operator asks for one more copy: same webhook-id, same event.
    r = fx.api("POST", "/v1/events/" + id + "/redeliver");
    REQUIRE_MESSAGE(r.status == 200, r.body);
    CHECK(std::string(parse_json(r.body)["previous_state"].GetString()) == "delivered");
    REQUIRE(wait_until([&] { return acknowledged_counts(stack.receiver)[id] == 2; }, 15s));
    REQUIRE(wait_until([&] { return delivery_state(fx, id) == "delivered"; }, 10s));
    CHECK(stack.receiver.count() == 5);
    check_requests_well_formed(stack.receiver);
    const rapidjson::Document d = delivery_doc(fx, id);
    CHECK(d["attempts"].Size() == 5);

    CHECK(fx.api("POST", "/v1/events/evt_no_such_event/redeliver").status == 404);
    CHECK(fx.api("GET", "/v1/events/" + id + "/redeliver").status == 405);
    CHECK(fx.api("GET", "/v1/events/" + id + "/redeliver").header("allow") == "POST");
    CHECK(fx.api("GET", "/v1/deliveries/recover?since=" + before).header("allow") == "POST");
    CHECK(fx.api("POST", "/v1/deliveries").header("allow") == "GET, HEAD");
}

TEST_CASE("after a CRM outage an operator sends the events waiting for a retry now")
{
    CrmSettings settings;
    settings.retry_schedule_s = "[1, 3600]";
    CrmStack stack(settings);
    DaemonFixture& fx = stack.fx;
    Alipay ali{fx};
    stack.receiver.set_default_status(503);
    const std::string before = format_rfc3339(unix_ms(std::chrono::system_clock::now()) - 1000);

    register_and_pay(fx, ali, "E4101", 4200);
    const std::string id = bill_event_ids(fx, "E4101").at(0);
    REQUIRE(wait_until([&] { return stack.receiver.count() == 2; }, 20s));
    REQUIRE(wait_until([&] { return listed(fx, "retrying").count(id) == 1; }, 10s));  // next in an hour

    stack.receiver.set_default_status(200);
    HttpResult r = fx.api("POST", "/v1/deliveries/recover?since=" + before + "&state=pending");
    CHECK(r.status == 400);
    CHECK(std::string(parse_json(r.body)["error"]["field"].GetString()) == "state");
    r = fx.api("POST", "/v1/deliveries/recover?since=" + before);  // dead letters only: there are none
    REQUIRE_MESSAGE(r.status == 200, r.body);
    CHECK(parse_json(r.body)["requeued"].GetInt() == 0);

    r = fx.api("POST", "/v1/deliveries/recover?since=" + before + "&state=retrying");
    REQUIRE_MESSAGE(r.status == 200, r.body);
    {
        const rapidjson::Document d = parse_json(r.body);
        CHECK(d["requeued"].GetInt() == 1);
        REQUIRE(d["event_ids"].Size() == 1);
        CHECK(std::string(d["event_ids"][0].GetString()) == id);
        CHECK_FALSE(d["more"].GetBool());
    }
    REQUIRE(wait_until([&] { return acknowledged_counts(stack.receiver)[id] == 1; }, 15s));
    REQUIRE(wait_until([&] { return delivery_state(fx, id) == "delivered"; }, 10s));
    CHECK(listed(fx, "retrying").empty());
    CHECK(stack.receiver.count() == 3);
    check_requests_well_formed(stack.receiver);
}

TEST_CASE("a provider's acknowledgement never waits for the CRM: a hanging receiver")
{
    CrmSettings settings;
    settings.timeout_ms = 60'000;  // the daemon waits for the CRM for a minute...
    settings.lease_s = 120;
    CrmStack stack(settings);
    DaemonFixture& fx = stack.fx;
    Alipay ali{fx};
    stack.receiver.set_response_delay(10min);  // ...and the CRM never answers within it

    register_and_pay(fx, ali, "E5000", 990);
    const std::string first = bill_event_ids(fx, "E5000").at(0);
    REQUIRE(stack.receiver.wait_for([](const std::vector<ReceivedRequest>& rs) { return !rs.empty(); }, 15s));
    CHECK(delivery_state(fx, first) == "pending");  // in flight at the CRM
    // Redelivering it now would send a second copy at the same time: refused.
    const HttpResult redeliver = fx.api("POST", "/v1/events/" + first + "/redeliver");
    CHECK(redeliver.status == 409);
    CHECK(redeliver.body.find("\"conflict\"") != std::string::npos);

    // Every further notification is acknowledged at once, while the delivery still hangs.
    for (int i = 1; i <= 8; ++i) {
        const std::string bill = "E500" + std::to_string(i);
        REQUIRE(fx.create_bill(bill, 990).status == 201);
        const auto started = std::chrono::steady_clock::now();
        const HttpResult r = fx.post_alipay(ali.paid(bill, 990));
        const auto took = std::chrono::steady_clock::now() - started;
        // An acknowledgement that waited for the CRM would come after crm.timeout (a minute), if
        // ever: the test client gives up after 10 s (status 0, caught here)...
        CHECK(r.status == 200);
        CHECK(r.body == "success");
        // ...and well before that, a handler held up behind the hanging delivery for seconds is
        // caught too. Normally it answers within milliseconds.
        CHECK(took < 5s);
        CHECK(bill_event_ids(fx, bill).size() == 1);  // applied and in the outbox
    }
    const std::vector<ReceivedRequest> requests = stack.receiver.requests();
    CHECK(std::none_of(requests.begin(), requests.end(), [](const ReceivedRequest& r) { return r.answered; }));
    CHECK(std::count_if(requests.begin(), requests.end(),
                        [&](const ReceivedRequest& r) { return r.webhook_id == first; }) == 1);
    CHECK(delivery_state(fx, first) == "pending");
    CHECK(metric(fx.port(), "paybridge_crm_deliveries_total") == 0);

    // SIGTERM while the delivery still hangs (crm.timeout is a minute, systemd allows 30 s): the
    // stop takes the grace period (5 s in the tests) and then at most 5 s for the CRM thread, and
    // exits 0. The delivery is cut off unrecorded, so it stays pending and is sent again (same
    // webhook-id) once its lease runs out.
    const auto stopping = std::chrono::steady_clock::now();
    CHECK(fx.stop() == 0);
    CHECK(std::chrono::steady_clock::now() - stopping < 15s);
    stack.receiver.stop();
}

TEST_CASE("through a Redis Cluster: bills on every master are paid and every event reaches the CRM")
{
    RedisTestCluster cluster(3);
    CrmSettings settings;
    settings.redis_extra = R"(, "cluster": {"nodes": ["127.0.0.1:)" + std::to_string(cluster.port(1)) + R"("]})";
    CrmStack stack(settings);
    DaemonFixture& fx = stack.fx;
    fx.redis().stop();  // the server the URL names: nothing may depend on it
    Alipay ali{fx};

    // Bills whose shards live on each of the three masters.
    const store::Keys keys("pb:", 16);
    std::vector<std::string> bills;
    std::set<int> masters;
    for (int i = 0; bills.size() < 9; ++i) {
        const std::string id = "C" + std::to_string(7000 + i);
        const int slot = std::stoi(cluster.command(0, {"CLUSTER", "KEYSLOT", keys.bill(id)}));
        const int owner = cluster.owner(slot);
        if (std::count_if(bills.begin(), bills.end(), [&](const std::string& b) {
                return cluster.owner(std::stoi(cluster.command(0, {"CLUSTER", "KEYSLOT", keys.bill(b)}))) == owner;
            }) < 3) {
            bills.push_back(id);
            masters.insert(owner);
        }
    }
    REQUIRE(masters.size() == 3);
    for (const std::string& id : bills) {
        register_and_pay(fx, ali, id, 1000);
        // The bill's hash is on the master of its shard, and only there.
        const int owner = cluster.owner(std::stoi(cluster.command(0, {"CLUSTER", "KEYSLOT", keys.bill(id)})));
        CHECK(cluster.command(owner, {"HGET", keys.bill(id), "status"}) == "PAID");
    }
    CHECK(http_request(fx.port(), "GET", "/readyz").status == 200);

    // Every bill.paid delivered once, whichever master's outbox holds it.
    REQUIRE(stack.receiver.wait_for(
        [&](const std::vector<ReceivedRequest>& rs) {
            return std::count_if(rs.begin(), rs.end(), [](const ReceivedRequest& r) { return r.answered; }) >=
                   static_cast<long>(bills.size());
        },
        20s));
    std::set<std::string> delivered;
    for (const ReceivedRequest& r : stack.receiver.requests()) {
        const rapidjson::Document sent = parse_json(r.body);
        CHECK(std::string(sent["type"].GetString()) == "bill.paid");
        delivered.insert(sent["bill_id"].GetString());
    }
    CHECK(delivered == std::set<std::string>(bills.begin(), bills.end()));
    CHECK(feed(fx).size() == bills.size());  // the feed merges the shards of all three masters
    // Counted once the daemon has read the answer and recorded it, which may be after the receiver
    // marked it answered.
    wait_until(
        [&] { return metric(fx.port(), "paybridge_crm_deliveries_total") >= static_cast<double>(bills.size()); }, 10s);
    CHECK(metric(fx.port(), "paybridge_crm_deliveries_total") == static_cast<double>(bills.size()));

    // One master down (no replica to fail over to): not ready, its bills answer 503, and bills on
    // the other two are still paid and delivered.
    const auto owner_of = [&](const std::string& id) {
        return cluster.owner(std::stoi(cluster.command(0, {"CLUSTER", "KEYSLOT", keys.bill(id)})));
    };
    cluster.server(2).stop();
    CHECK(wait_for_http(fx.port(), "/readyz", 503, 10s));
    std::vector<std::string> later;
    std::string lost;
    for (int i = 100; later.size() < 2 || lost.empty(); ++i) {
        const std::string id = "C" + std::to_string(7000 + i);
        if (owner_of(id) == 2) {
            if (lost.empty()) {
                lost = id;
            }
        } else if (later.size() < 2) {
            later.push_back(id);
        }
    }
    CHECK(fx.create_bill(lost, 1000).status == 503);
    for (const std::string& id : later) {
        register_and_pay(fx, ali, id, 1000);
    }
    REQUIRE(stack.receiver.wait_for(
        [&](const std::vector<ReceivedRequest>& rs) {
            return std::count_if(rs.begin(), rs.end(), [](const ReceivedRequest& r) { return r.answered; }) >=
                   static_cast<long>(bills.size() + later.size());
        },
        30s));

    // Restarted while that master is still down: the CRM consumer group is ensured on the masters
    // that answer, and their events are delivered.
    CHECK(fx.stop() == 0);
    fx.start(false);
    std::string fresh;
    for (int i = 200; fresh.empty(); ++i) {
        const std::string id = "C" + std::to_string(7000 + i);
        if (owner_of(id) != 2) {
            fresh = id;
        }
    }
    // Not ready (a master is down), so nothing says when each worker's connections have read the
    // slot map: until then a request is answered 503, as a provider would be, and retried.
    HttpResult created;
    REQUIRE(wait_until(
        [&] {
            created = fx.create_bill(fresh, 1000);
            return created.status != 503;
        },
        15s));
    REQUIRE_MESSAGE(created.status == 201, created.body);
    HttpResult paid;
    REQUIRE(wait_until(
        [&] {
            paid = post_alipay(fx.port(), ali.paid(fresh, 1000));
            return paid.status != 503;
        },
        15s));
    REQUIRE_MESSAGE(paid.body == "success", paid.body);
    REQUIRE(stack.receiver.wait_for(
        [&](const std::vector<ReceivedRequest>& rs) {
            return std::any_of(rs.begin(), rs.end(), [&](const ReceivedRequest& r) {
                return r.answered && r.body.find("\"bill_id\":\"" + fresh + "\"") != std::string::npos;
            });
        },
        30s));
    CHECK(fx.stop() == 0);
}

TEST_CASE("through a Redis Cluster with redis.wait_replicas: an event is sent once the replicas of its master hold it")
{
    RedisTestCluster cluster(3);
    // Master 0 gets a replica; the others have none.
    REQUIRE(cluster.command(0, {"CONFIG", "SET", "repl-diskless-sync-delay", "0"}) == "OK");
    RedisTestServer replica({"--replicaof", "127.0.0.1", std::to_string(cluster.port(0))});
    REQUIRE(wait_until(
        [&] { return cluster.command(0, {"INFO", "replication"}).find("state=online") != std::string::npos; }, 20s));
    CrmSettings settings;
    settings.redis_extra = R"(, "cluster": {"nodes": ["127.0.0.1:)" + std::to_string(cluster.port(1)) +
                           R"("]}, "wait_replicas": 1, "wait_timeout_ms": 500)";
    settings.lease_s = 3;
    CrmStack stack(settings);
    DaemonFixture& fx = stack.fx;
    fx.redis().stop();  // the server the URL names: nothing may depend on it
    INFO("paybridged log:\n", fx.log());
    Alipay ali{fx};

    const store::Keys keys("pb:", 16);
    const auto owner_of = [&](const std::string& id) {
        return cluster.owner(std::stoi(cluster.command(0, {"CLUSTER", "KEYSLOT", keys.bill(id)})));
    };
    std::string replicated;
    std::string unreplicated;
    for (int i = 0; replicated.empty() || unreplicated.empty(); ++i) {
        const std::string id = "CW" + std::to_string(100 + i);
        (owner_of(id) == 0 ? replicated : unreplicated) = id;
    }
    // The replica may take a moment to acknowledge its first writes: the provider retries.
    REQUIRE(wait_until([&] { return fx.create_bill(replicated, 100).status != 503; }, 20s));
    REQUIRE(wait_until([&] { return post_alipay(fx.port(), ali.paid(replicated, 100)).body == "success"; }, 20s));
    CHECK(fx.create_bill(unreplicated, 100).status == 503);  // written, not confirmed
    CHECK(post_alipay(fx.port(), ali.paid(unreplicated, 100)).status == 503);
    const std::string held = "evt_" + unreplicated + "_1";
    REQUIRE(bill_event_ids(fx, unreplicated) == std::vector<std::string>{held});

    // The replicated master's event is delivered; the other one's is held back, try after try.
    REQUIRE(wait_until([&] { return acknowledged_counts(stack.receiver).count("evt_" + replicated + "_1") == 1; },
                       30s));
    const std::string attempt = R"("event_id":")" + held + R"(","wait_replicas":1)";
    REQUIRE(wait_until(
        [&] {
            const std::string log = fx.log();
            const std::size_t first = log.find(attempt);
            return first != std::string::npos && log.find(attempt, first + 1) != std::string::npos;
        },
        30s));
    CHECK(acknowledged_counts(stack.receiver).count(held) == 0);
    CHECK(stack.receiver.count() == 1);
}

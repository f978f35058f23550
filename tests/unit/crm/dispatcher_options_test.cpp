// DispatcherOptions::from_config: what the daemon's config hands the dispatcher.

#include "config/config.hpp"
#include "crm/dispatcher.hpp"

#include <doctest/doctest.h>

using namespace paybridge;
using namespace std::chrono_literals;

TEST_CASE("DispatcherOptions::from_config carries the redis and crm settings over")
{
    config::RedisConfig redis;
    redis.key_prefix = "x:";
    redis.shards = 4;
    config::CrmConfig crm;
    crm.url = "https://crm.example.com/hook";
    crm.secrets = {"whsec_a", "whsec_b"};
    crm.ca_file = "/etc/ca.pem";
    crm.timeout = 9ms;
    crm.concurrency = 7;
    crm.retry_schedule = {1s, 2s};
    crm.lease = 11s;
    crm.outbox_retention = 604800s;
    const crm::DispatcherOptions o = crm::DispatcherOptions::from_config(redis, crm);
    CHECK(o.key_prefix == "x:");
    CHECK(o.shards == 4);
    CHECK(o.secrets == crm.secrets);
    CHECK(o.retry_schedule == std::vector<std::chrono::milliseconds>{1000ms, 2000ms});
    CHECK(o.lease == 11'000ms);
    CHECK(o.concurrency == 7);
    CHECK(o.outbox_retention == 604'800'000ms);
    CHECK(o.http.url == crm.url);
    CHECK(o.http.ca_file == crm.ca_file);
    CHECK(o.http.timeout == 9ms);
    CHECK(o.http.concurrency == 7);
    // Off unless configured: every outbox entry is kept.
    CHECK(crm::DispatcherOptions::from_config(redis, config::CrmConfig{}).outbox_retention == 0ms);
}

// A Redis demoted to a replica behind the configured address (managed Redis failing over behind
// one endpoint), end to end: /readyz is 503 and writes are refused until the address leads to a
// master again, and then the daemon writes without a restart.

#include "tests/support/daemon_fixture.hpp"
#include "tests/support/redis_server.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <thread>

using namespace paybridge::test;
using namespace std::chrono_literals;

TEST_CASE("redis demoted to a replica behind its address: /readyz 503 and writes refused until it is a master again")
{
    DaemonFixture fx;
    RedisTestServer promoted;
    REQUIRE(fx.create_bill("R-1", 100).status == 201);

    // The failover: the other node is the master now and the configured address leads to a replica.
    fx.redis_run({"REPLICAOF", "127.0.0.1", std::to_string(promoted.port())});
    CHECK(wait_for_http(fx.port(), "/readyz", 503, 10s));
    CHECK(fx.create_bill("R-2", 100).status == 503);
    CHECK(fx.log().find("redis.demoted") != std::string::npos);
    // It stays unready while the address leads to a replica (reconnections refuse it at HELLO).
    std::this_thread::sleep_for(2s);
    CHECK(http_request(fx.port(), "GET", "/readyz").status == 503);
    CHECK(fx.log().find("redis.not_master") != std::string::npos);

    // The address leads to a master again: ready and writing, without a restart.
    fx.redis_run({"REPLICAOF", "NO", "ONE"});
    REQUIRE(wait_for_http(fx.port(), "/readyz", 200, 20s));
    CHECK(fx.create_bill("R-3", 100).status == 201);
    CHECK(fx.get_bill("R-3").status == 200);
}

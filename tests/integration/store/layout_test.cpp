// The key-layout markers (store/layout.hpp) against a real redis-server: connections with the same
// redis.shards share them, a connection with another shard count is refused (never ready, every
// command failed), data of a version from before the markers gets them written unless the data
// contradicts the configured shard count, and a shard that lost its marker gets it back.

#include "store/layout.hpp"

#include "core/error.hpp"
#include "store/cluster_slot.hpp"
#include "store/keys.hpp"
#include "store/redis_bill_store.hpp"
#include "store/redis_connection.hpp"
#include "tests/integration/store/bill_events.hpp"
#include "tests/integration/store/store_fixture.hpp"
#include "tests/support/log_capture.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace asio = boost::asio;
using paybridge::errc;
using paybridge::Result;
using paybridge::store::Keys;
using paybridge::store::RedisConnection;
using paybridge::store::Reply;
using paybridge::test::RedisTestServer;
using namespace std::chrono_literals;

namespace {

paybridge::config::RedisConfig config_with(const RedisTestServer& server, int shards)
{
    paybridge::config::RedisConfig cfg = paybridge::test::redis_config(server);
    cfg.shards = shards;
    return cfg;
}

/// Connections (and, when asked, a bill store on the first) sharing one io_context, stopped and
/// run dry on destruction.
struct Clients {
    asio::io_context ctx;
    std::vector<std::unique_ptr<RedisConnection>> conns;

    ~Clients()
    {
        for (auto& c : conns) {
            c->stop();
        }
        ctx.restart();
        ctx.run_for(3s);
        CHECK(ctx.stopped());
    }

    RedisConnection& add(const paybridge::config::RedisConfig& cfg,
                         paybridge::store::ConnectionChecks checks = paybridge::store::ConnectionChecks{})
    {
        conns.push_back(std::make_unique<RedisConnection>(ctx.get_executor(), cfg));
        conns.back()->set_checks(checks);
        conns.back()->start();
        return *conns.back();
    }
    bool ready(RedisConnection& c, std::chrono::milliseconds limit = 5s)
    {
        return paybridge::test::run_until(ctx, [&] { return c.ready(); }, limit);
    }
    Result<Reply> exec(RedisConnection& c, std::vector<std::string> argv)
    {
        return paybridge::test::run_awaitable(ctx, c.exec(std::move(argv)));
    }
    /// Shard 0's marker ("" when there is none), read on `c` (which need not check the layout).
    std::string marker(RedisConnection& c, const std::string& prefix = "pb:", int shard = 0)
    {
        const Result<Reply> r = exec(c, {"GET", paybridge::store::layout_key(prefix, shard)});
        REQUIRE(r.has_value());
        return r->is_string() ? r->str : std::string();
    }
    /// How many of the first `n` shards have a marker.
    std::int64_t markers(RedisConnection& c, int n)
    {
        std::vector<std::string> exists{"EXISTS"};
        for (int shard = 0; shard < n; ++shard) {
            exists.push_back(paybridge::store::layout_key("pb:", shard));
        }
        const Result<Reply> r = exec(c, std::move(exists));
        REQUIRE(r.has_value());
        return r->integer;
    }
};

bool is(const Result<Reply>& r, errc e) { return !r.has_value() && r.error() == paybridge::make_error_code(e); }

constexpr paybridge::store::ConnectionChecks kNoLayoutCheck{.master = true, .layout = false};

}  // namespace

TEST_SUITE("integration/store/layout")
{
    TEST_CASE("the markers name the layout version and the shard count and sit in their shards' slots")
    {
        CHECK(paybridge::store::layout_key("pb:") == "pb:{s00}:layout");
        CHECK(paybridge::store::layout_key("pb:", 7) == "pb:{s07}:layout");
        CHECK(paybridge::store::layout_value(16) == "paybridge-keys/1 shards=16");
        const Keys keys("pb:", 16);
        for (int shard = 0; shard < keys.shards(); ++shard) {
            CHECK(paybridge::store::key_slot(keys.layout(shard)) == paybridge::store::key_slot(keys.outbox(shard)));
        }
    }

    TEST_CASE("the first connection records the layout and one with the same shards matches it")
    {
        RedisTestServer server;
        paybridge::test::LogCapture logs;
        Clients clients;
        RedisConnection& first = clients.add(config_with(server, 16));
        REQUIRE(clients.ready(first));
        CHECK(clients.marker(first) == "paybridge-keys/1 shards=16");
        CHECK(clients.marker(first, "pb:", 15) == "paybridge-keys/1 shards=16");
        CHECK(clients.markers(first, 17) == 16);
        REQUIRE(logs.count("redis.layout_recorded") == 1);
        CHECK(logs.with("redis.layout_recorded").front().find("no data yet") != std::string::npos);

        RedisConnection& second = clients.add(config_with(server, 16));
        REQUIRE(clients.ready(second));
        CHECK(logs.count("redis.layout_recorded") == 1);
        CHECK_FALSE(logs.has("redis.layout_mismatch"));
    }

    TEST_CASE("a connection with other shards is refused with both layouts named and never serves")
    {
        RedisTestServer server;
        paybridge::test::LogCapture logs;
        Clients clients;
        RedisConnection& right = clients.add(config_with(server, 16));
        REQUIRE(clients.ready(right));

        RedisConnection& wrong = clients.add(config_with(server, 8));
        REQUIRE(paybridge::test::run_until(clients.ctx, [&] { return wrong.layout_refused(); }, 5s));
        CHECK_FALSE(wrong.ready());
        CHECK_FALSE(wrong.usable());
        CHECK(is(clients.exec(wrong, {"SET", "k", "v"}), errc::store_unavailable));
        CHECK(clients.exec(right, {"EXISTS", "k"})->integer == 0);
        const std::vector<std::string> said = logs.with("redis.layout_mismatch");
        REQUIRE(said.size() == 1);
        CHECK(said.front().find(R"("configured":"paybridge-keys/1 shards=8")") != std::string::npos);
        CHECK(said.front().find(R"("found":"paybridge-keys/1 shards=16")") != std::string::npos);
        CHECK(said.front().find(R"("key":"pb:{s00}:layout")") != std::string::npos);
        CHECK(clients.markers(right, 17) == 16);  // the refused one wrote nothing

        // Another one refused for the same reason says nothing more.
        RedisConnection& also_wrong = clients.add(config_with(server, 8));
        REQUIRE(paybridge::test::run_until(clients.ctx, [&] { return also_wrong.layout_refused(); }, 5s));
        CHECK(logs.count("redis.layout_mismatch") == 1);

        // Another key_prefix is another deployment, with a marker of its own.
        paybridge::config::RedisConfig other = config_with(server, 8);
        other.key_prefix = "other:";
        RedisConnection& elsewhere = clients.add(other);
        CHECK(clients.ready(elsewhere));
        CHECK(clients.marker(right, "other:") == "paybridge-keys/1 shards=8");

        // The markers are put right (the data was written with 8 shards after all): the refused
        // connections see it at their next check, within 5 s, and serve.
        for (int shard = 0; shard < 16; ++shard) {
            std::vector<std::string> del{"DEL", paybridge::store::layout_key("pb:", shard)};
            REQUIRE(clients.exec(right, std::move(del)).has_value());
        }
        for (int shard = 0; shard < 8; ++shard) {
            std::vector<std::string> set{"SET", paybridge::store::layout_key("pb:", shard), "paybridge-keys/1 shards=8"};
            REQUIRE(clients.exec(right, std::move(set)).has_value());
        }
        CHECK(clients.ready(wrong, 8s));
        CHECK(logs.has("redis.layout_matches"));
        CHECK(clients.exec(wrong, {"SET", "k", "v"})->is_status("OK"));
    }

    TEST_CASE("data from before the marker: the marker is written when the data agrees and not when it does not")
    {
        RedisTestServer server;
        paybridge::test::LogCapture logs;
        Clients clients;
        // As a version without the marker: bills stored with 16 shards, no marker.
        const paybridge::config::RedisConfig old_cfg = config_with(server, 16);
        RedisConnection& old_conn = clients.add(old_cfg, kNoLayoutCheck);
        REQUIRE(clients.ready(old_conn));
        paybridge::store::RedisBillStore old_store(old_conn, old_cfg);
        for (int i = 0; i < 40; ++i) {
            const Result<paybridge::RegisterResult> r = paybridge::test::run_awaitable(
                clients.ctx, old_store.register_bill(paybridge::test::bill_events::new_bill("OLD-" + std::to_string(i))));
            REQUIRE(r.has_value());
        }
        REQUIRE(clients.markers(old_conn, 32) == 0);

        // Fewer shards: the data holds shards past 8. Refused, and no marker written.
        RedisConnection& fewer = clients.add(config_with(server, 8));
        REQUIRE(paybridge::test::run_until(clients.ctx, [&] { return fewer.layout_refused(); }, 5s));
        const std::vector<std::string> said = logs.with("redis.layout_mismatch");
        REQUIRE(said.size() == 1);
        CHECK(said.front().find(R"("found":"no marker")") != std::string::npos);
        CHECK(said.front().find("beyond the 8 configured") != std::string::npos);
        CHECK(clients.markers(old_conn, 32) == 0);

        // More shards: bills indexed in shards they do not belong to with 32.
        RedisConnection& more = clients.add(config_with(server, 32));
        REQUIRE(paybridge::test::run_until(clients.ctx, [&] { return more.layout_refused(); }, 5s));
        CHECK(clients.markers(old_conn, 32) == 0);

        // The shard count the data was written with: the marker is written, as an upgrade.
        RedisConnection& same = clients.add(config_with(server, 16));
        REQUIRE(clients.ready(same));
        CHECK(clients.marker(old_conn) == "paybridge-keys/1 shards=16");
        CHECK(clients.markers(old_conn, 32) == 16);
        const std::vector<std::string> recorded = logs.with("redis.layout_recorded");
        REQUIRE(recorded.size() == 1);
        CHECK(recorded.front().find("keys of an earlier version agree with it") != std::string::npos);
        // The bills are where this connection looks for them.
        paybridge::store::RedisBillStore store(same, config_with(server, 16));
        const Result<std::optional<paybridge::BillView>> found =
            paybridge::test::run_awaitable(clients.ctx, store.get_bill("OLD-7"));
        REQUIRE(found.has_value());
        CHECK(found->has_value());
    }

    TEST_CASE("a shard that lost its marker gets it back from the next connection")
    {
        RedisTestServer server;
        paybridge::test::LogCapture logs;
        Clients clients;
        RedisConnection& first = clients.add(config_with(server, 16));
        REQUIRE(clients.ready(first));
        // As a failover to a replica that had not received it would leave it.
        REQUIRE(clients.exec(first, {"DEL", paybridge::store::layout_key("pb:", 5)}).has_value());
        REQUIRE(clients.markers(first, 16) == 15);

        RedisConnection& next = clients.add(config_with(server, 16));
        REQUIRE(clients.ready(next));
        CHECK(clients.markers(first, 16) == 16);
        const std::vector<std::string> recorded = logs.with("redis.layout_recorded");
        REQUIRE(recorded.size() == 2);
        CHECK(recorded.back().find("written to 1 shard(s) without one (pb:{s05}:layout)") != std::string::npos);

        // One with other shards is refused by the markers that are there, and restores none.
        REQUIRE(clients.exec(first, {"DEL", paybridge::store::layout_key("pb:", 3)}).has_value());
        RedisConnection& wrong = clients.add(config_with(server, 4));
        REQUIRE(paybridge::test::run_until(clients.ctx, [&] { return wrong.layout_refused(); }, 5s));
        CHECK(clients.markers(first, 16) == 15);
    }
}

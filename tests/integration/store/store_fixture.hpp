#pragma once

// A real redis-server, an io_context and a started RedisConnection (+ RedisBillStore) for the
// store integration tests, with blocking helpers that run the io_context until a call finishes.

#include "config/config.hpp"
#include "core/bill_store.hpp"
#include "store/redis_bill_store.hpp"
#include "store/redis_connection.hpp"
#include "tests/support/json.hpp"
#include "tests/support/redis_server.hpp"

#include <boost/asio/io_context.hpp>
#include <doctest/doctest.h>
#include <rapidjson/document.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace paybridge::test {

using namespace std::chrono_literals;

inline config::RedisConfig redis_config(const RedisTestServer& server)
{
    config::RedisConfig cfg;
    cfg.host = server.host();
    cfg.port = server.port();
    cfg.request_timeout = std::chrono::milliseconds(2000);
    cfg.connect_timeout = std::chrono::milliseconds(500);
    return cfg;
}

inline std::string str(const rapidjson::Value& v, const char* name)
{
    REQUIRE_MESSAGE(v.HasMember(name), "missing member " << name);
    const rapidjson::Value& m = v[name];
    REQUIRE_MESSAGE(m.IsString(), "not a string: " << name);
    return std::string(m.GetString(), m.GetStringLength());
}

inline std::int64_t num(const rapidjson::Value& v, const char* name)
{
    REQUIRE_MESSAGE(v.HasMember(name), "missing member " << name);
    REQUIRE_MESSAGE(v[name].IsInt64(), "not an integer: " << name);
    return v[name].GetInt64();
}

inline bool is_null(const rapidjson::Value& v, const char* name)
{
    return v.HasMember(name) && v[name].IsNull();
}

/// Server + io_context + connection (+ store). Destruction stops the connection and requires the
/// io_context to run out of work (graceful shutdown).
class StoreFixture {
public:
    explicit StoreFixture(std::function<void(config::RedisConfig&)> tweak = {},
                          std::vector<std::string> server_args = {},
                          std::function<std::int64_t()> clock = {})
        : server(std::move(server_args))
    {
        cfg = redis_config(server);
        if (tweak) {
            tweak(cfg);
        }
        conn = std::make_unique<store::RedisConnection>(ctx.get_executor(), cfg);
        if (cfg.wait_replicas > 0) {  // as the daemon does: confirmations on a connection of their own
            replicas = std::make_unique<store::RedisConnection>(ctx.get_executor(), cfg);
            replicas->start();
        }
        store = std::make_unique<store::RedisBillStore>(*conn, cfg, std::move(clock), replicas.get());
        conn->start();
    }

    ~StoreFixture()
    {
        conn->stop();
        if (replicas) {
            replicas->stop();
        }
        ctx.restart();
        // Nothing of the connection may keep the io_context busy after stop().
        ctx.run_for(std::chrono::seconds(3));
        CHECK(ctx.stopped());
    }

    bool wait_ready(std::chrono::milliseconds limit = 5s)
    {
        return run_until(ctx, [this] { return conn->ready() && (!replicas || replicas->ready()); }, limit);
    }

    template <class T>
    T run(boost::asio::awaitable<T> coro, std::chrono::milliseconds limit = 10s)
    {
        return run_awaitable(ctx, std::move(coro), limit);
    }

    /// One command; REQUIREs that it did not fail.
    store::Reply cmd(std::vector<std::string> argv)
    {
        Result<store::Reply> r = run(conn->exec(std::move(argv)));
        REQUIRE_MESSAGE(r.has_value(), "command failed: " << r.error().message());
        return *r;
    }

    std::int64_t integer(std::vector<std::string> argv)
    {
        const store::Reply r = cmd(std::move(argv));
        REQUIRE_MESSAGE(r.is_integer(), "not an integer reply: " << r.str);
        return r.integer;
    }

    ApplyResult apply(PaymentEvent ev)
    {
        Result<ApplyResult> r = run(store->apply(std::move(ev)));
        REQUIRE_MESSAGE(r.has_value(), "apply failed: " << r.error().message());
        return *r;
    }

    RegisterResult register_bill(NewBill bill)
    {
        Result<RegisterResult> r = run(store->register_bill(std::move(bill)));
        REQUIRE_MESSAGE(r.has_value(), "register failed: " << r.error().message());
        return *r;
    }

    /// The bill view; REQUIREs that the bill exists.
    BillView get(const std::string& id)
    {
        Result<std::optional<BillView>> r = run(store->get_bill(id));
        REQUIRE(r.has_value());
        REQUIRE(r->has_value());
        return **r;
    }

    rapidjson::Document bill(const std::string& id) { return parse_json(get(id).bill_json); }

    std::int64_t hist_len(const std::string& id) { return integer({"LLEN", store->keys().hist(id)}); }
    std::int64_t outbox_len(const std::string& id)
    {
        return integer({"XLEN", store->keys().outbox(store->keys().shard_of(id))});
    }
    std::int64_t anomalies_len(const std::string& id)
    {
        return integer({"XLEN", store->keys().anomalies(store->keys().shard_of(id))});
    }
    /// Outbox entries over every shard.
    std::int64_t outbox_total()
    {
        std::int64_t n = 0;
        for (int s = 0; s < store->keys().shards(); ++s) {
            n += integer({"XLEN", store->keys().outbox(s)});
        }
        return n;
    }
    std::int64_t anomalies_total()
    {
        std::int64_t n = 0;
        for (int s = 0; s < store->keys().shards(); ++s) {
            n += integer({"XLEN", store->keys().anomalies(s)});
        }
        return n;
    }

    RedisTestServer server;
    boost::asio::io_context ctx;
    config::RedisConfig cfg;
    std::unique_ptr<store::RedisConnection> conn;
    std::unique_ptr<store::RedisConnection> replicas;  ///< with wait_replicas > 0
    std::unique_ptr<store::RedisBillStore> store;
};

}  // namespace paybridge::test

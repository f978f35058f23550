// RedisConnection to one address (no Sentinel, no Cluster) whose node is demoted to a replica, as
// managed Redis (ElastiCache, Memorystore) fails over behind one endpoint: real redis-servers, one
// made the replica of another with REPLICAOF while the connection is up.

#include "store/redis_connection.hpp"

#include "core/error.hpp"
#include "tests/integration/store/store_fixture.hpp"
#include "tests/support/log_capture.hpp"

#include <doctest/doctest.h>
#include <hiredis/hiredis.h>

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace asio = boost::asio;
using paybridge::errc;
using paybridge::Result;
using paybridge::store::RedisConnection;
using paybridge::store::Reply;
using paybridge::test::RedisTestServer;
using namespace std::chrono_literals;

namespace {

/// One command on its own blocking connection (hiredis), as an operator's redis-cli; the reply's
/// text. Throws when the server cannot be reached or answers with an error.
std::string admin(std::uint16_t port, const std::vector<std::string>& argv)
{
    redisContext* c = redisConnect("127.0.0.1", port);
    if (c == nullptr || c->err != 0) {
        if (c != nullptr) {
            redisFree(c);
        }
        throw std::runtime_error("admin: cannot connect");
    }
    std::vector<const char*> args;
    std::vector<std::size_t> lens;
    for (const std::string& a : argv) {
        args.push_back(a.data());
        lens.push_back(a.size());
    }
    auto* reply = static_cast<redisReply*>(redisCommandArgv(c, static_cast<int>(args.size()), args.data(), lens.data()));
    redisFree(c);
    if (reply == nullptr) {
        throw std::runtime_error("admin: no reply to " + argv.front());
    }
    const bool error = reply->type == REDIS_REPLY_ERROR;
    const std::string text = reply->type == REDIS_REPLY_INTEGER ? std::to_string(reply->integer)
                             : reply->str != nullptr             ? std::string(reply->str, reply->len)
                                                                 : std::string();
    freeReplyObject(reply);
    if (error) {
        throw std::runtime_error("admin: " + argv.front() + " answered " + text);
    }
    return text;
}

/// A connection on its own io_context, stopped (and its io_context run dry) on destruction.
struct Client {
    asio::io_context ctx;
    std::unique_ptr<RedisConnection> conn;

    explicit Client(std::uint16_t port)
    {
        paybridge::config::RedisConfig cfg;
        cfg.host = "127.0.0.1";
        cfg.port = port;
        cfg.request_timeout = 2000ms;
        cfg.connect_timeout = 500ms;
        conn = std::make_unique<RedisConnection>(ctx.get_executor(), cfg);
        conn->start();
    }
    ~Client()
    {
        conn->stop();
        ctx.restart();
        ctx.run_for(3s);
        CHECK(ctx.stopped());
    }

    Result<Reply> exec(std::vector<std::string> argv)
    {
        return paybridge::test::run_awaitable(ctx, conn->exec(std::move(argv)));
    }
    bool becomes(bool ready, std::chrono::milliseconds limit)
    {
        return paybridge::test::run_until(ctx, [&] { return conn->ready() == ready; }, limit);
    }
};

bool is(const Result<Reply>& r, errc e) { return !r.has_value() && r.error() == paybridge::make_error_code(e); }

}  // namespace

TEST_SUITE("integration/store/demotion")
{
    TEST_CASE("a master demoted behind its address: READONLY leaves it and it is used again once promoted")
    {
        RedisTestServer a;
        RedisTestServer b;
        paybridge::test::LogCapture logs;
        Client client(a.port());
        REQUIRE(client.becomes(true, 5s));
        REQUIRE(client.exec({"SET", "k", "before"}).has_value());

        // The failover: b is promoted (it already is a master), a follows it.
        admin(a.port(), {"REPLICAOF", "127.0.0.1", std::to_string(b.port())});
        const Result<Reply> refused = client.exec({"SET", "k", "during"});
        REQUIRE(refused.has_value());
        CHECK(refused->is_error());
        CHECK(refused->str.starts_with("READONLY"));
        // The READONLY reply drops the connection, and the handshake refuses the replica.
        CHECK(client.becomes(false, 2s));
        CHECK(logs.has("redis.readonly"));
        CHECK(paybridge::test::run_until(client.ctx, [&] { return logs.has("redis.not_master"); }, 5s));
        paybridge::test::run_for(client.ctx, 1500ms);
        CHECK_FALSE(client.conn->ready());
        CHECK(is(client.exec({"SET", "k", "during"}), errc::store_unavailable));

        // The address leads to a master again: the connection is made again (within its back-off,
        // at most 5 s) and writes succeed, without anything restarted.
        admin(a.port(), {"REPLICAOF", "NO", "ONE"});
        REQUIRE(client.becomes(true, 10s));
        const Result<Reply> written = client.exec({"SET", "k", "after"});
        REQUIRE(written.has_value());
        CHECK(written->is_status("OK"));
        CHECK(admin(a.port(), {"GET", "k"}) == "after");
    }

    TEST_CASE("an idle connection leaves a master demoted under it without a write of its own")
    {
        RedisTestServer a;
        RedisTestServer b;
        paybridge::test::LogCapture logs;
        Client client(a.port());
        REQUIRE(client.becomes(true, 5s));
        const std::uint64_t commands = client.conn->stats().commands.load();
        const std::uint64_t writes = client.conn->stats().writes.load();

        // Idle for a while: the role watch asks, and is not counted as the application's commands.
        paybridge::test::run_for(client.ctx, 2500ms);
        CHECK(client.conn->ready());
        CHECK(client.conn->stats().commands.load() == commands);
        CHECK(client.conn->stats().writes.load() == writes);

        admin(a.port(), {"REPLICAOF", "127.0.0.1", std::to_string(b.port())});
        CHECK(client.becomes(false, 3s));
        REQUIRE(logs.has("redis.demoted"));
        CHECK(logs.with("redis.demoted").front().find(R"("role":"replica")") != std::string::npos);
        admin(a.port(), {"REPLICAOF", "NO", "ONE"});
        CHECK(client.becomes(true, 10s));
    }

    TEST_CASE("a connection to an address that leads to a replica never becomes ready")
    {
        RedisTestServer a;
        RedisTestServer b({"--replicaof", "127.0.0.1", std::to_string(a.port())});
        paybridge::test::LogCapture logs;
        Client client(b.port());
        paybridge::test::run_for(client.ctx, 1500ms);
        CHECK_FALSE(client.conn->ready());
        CHECK(is(client.exec({"PING"}), errc::store_unavailable));
        CHECK(logs.has("redis.not_master"));

        // Unless asked not to check (a look at a replica, not a store).
        paybridge::store::RedisConnection look(client.ctx.get_executor(), paybridge::test::redis_config(b));
        look.set_checks(paybridge::store::ConnectionChecks{.master = false, .layout = false});
        look.start();
        CHECK(paybridge::test::run_until(client.ctx, [&] { return look.ready(); }, 5s));
        look.stop();
        paybridge::test::run_for(client.ctx, 200ms);  // its loops end before it is destroyed
    }
}

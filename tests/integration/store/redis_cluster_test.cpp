// RedisConnection in Cluster mode (config redis.cluster) against a real three-master Redis Cluster
// (RedisTestCluster): routing by hash slot, batches across nodes, MOVED after a resharding, ASK
// during a migration, NOSCRIPT on one node, a node going down and coming back, and the bill store
// and its replica confirmation on top (a bill script waiting out its slot's migration included).

#include "store/cluster_slot.hpp"
#include "store/layout.hpp"
#include "store/query_queue.hpp"
#include "store/redis_bill_store.hpp"
#include "store/redis_connection.hpp"

#include "core/error.hpp"
#include "tests/integration/store/store_fixture.hpp"
#include "tests/support/log_capture.hpp"
#include "tests/support/redis_cluster.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <doctest/doctest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;
using paybridge::errc;
using paybridge::EventKind;
using paybridge::NewBill;
using paybridge::PaymentEvent;
using paybridge::RegisterOutcome;
using paybridge::RegisterResult;
using paybridge::Result;
using paybridge::config::Endpoint;
using paybridge::config::RedisConfig;
using paybridge::store::key_slot;
using paybridge::store::Keys;
using paybridge::store::RedisBillStore;
using paybridge::store::RedisConnection;
using paybridge::store::Reply;
using paybridge::test::RedisTestCluster;
using paybridge::test::RedisTestServer;
using namespace std::chrono_literals;

namespace {

RedisConfig cluster_config(const RedisTestCluster& cluster, std::vector<int> seeds = {0})
{
    RedisConfig cfg;
    cfg.host = "192.0.2.1";  // not used with Cluster (TEST-NET: nothing answers there)
    cfg.port = 1;
    for (int node : seeds) {
        cfg.cluster.nodes.push_back(Endpoint{cluster.host(), cluster.port(node)});
    }
    cfg.request_timeout = 2000ms;
    cfg.connect_timeout = 500ms;
    return cfg;
}

/// A cluster client on its own io_context, stopped (and its io_context run dry) on destruction.
struct Client {
    asio::io_context ctx;
    RedisConfig cfg;
    std::unique_ptr<RedisConnection> conn;
    std::unique_ptr<RedisConnection> replicas;  ///< with_replicas_conn: the store's confirming connection
    std::unique_ptr<RedisBillStore> store;
    std::string sha;

    /// with_replicas_conn (with a store): replica confirmations run on a connection of their own,
    /// with a slot map of its own, as in the daemon.
    explicit Client(RedisConfig c, bool with_store = false, bool with_replicas_conn = false) : cfg(std::move(c))
    {
        conn = std::make_unique<RedisConnection>(ctx.get_executor(), cfg);
        sha = conn->add_script("return {redis.call('INCR', KEYS[1]), ARGV[1]}");
        if (with_replicas_conn) {
            replicas = std::make_unique<RedisConnection>(ctx.get_executor(), cfg);
        }
        if (with_store) {
            store = std::make_unique<RedisBillStore>(*conn, cfg, std::function<std::int64_t()>{}, replicas.get());
        }
        conn->start();
        if (replicas) {
            replicas->start();
        }
    }
    ~Client()
    {
        conn->stop();
        if (replicas) {
            replicas->stop();
        }
        ctx.restart();
        ctx.run_for(3s);
        CHECK(ctx.stopped());  // nothing of the router or its nodes outlives stop()
    }

    bool wait_ready(std::chrono::milliseconds limit = 10s)
    {
        return paybridge::test::run_until(
            ctx, [this] { return conn->ready() && (!replicas || replicas->ready()); }, limit);
    }

    template <class T>
    T run(asio::awaitable<T> coro)
    {
        return paybridge::test::run_awaitable(ctx, std::move(coro), 15s);
    }

    Result<Reply> exec(std::vector<std::string> argv) { return run(conn->exec(std::move(argv))); }

    /// One command that must succeed; returns its reply.
    Reply ok(std::vector<std::string> argv)
    {
        const std::string what = argv.empty() ? std::string() : argv[0] + " " + (argv.size() > 1 ? argv[1] : "");
        Result<Reply> r = exec(std::move(argv));
        REQUIRE_MESSAGE(r.has_value(), what << " failed: " << r.error().message());
        return *r;
    }

    std::uint64_t redirects() const { return conn->stats().redirects.load(); }
};

/// A key of every node: "k<i>" for the first i whose slot each node owns.
std::vector<std::string> key_per_node(const RedisTestCluster& cluster)
{
    std::vector<std::string> keys(static_cast<std::size_t>(cluster.size()));
    const std::vector<int> owners = cluster.slot_owners();
    int found = 0;
    for (int i = 0; found < cluster.size(); ++i) {
        const std::string key = "k" + std::to_string(i);
        std::string& slot_key = keys[static_cast<std::size_t>(owners[static_cast<std::size_t>(key_slot(key))])];
        if (slot_key.empty()) {
            slot_key = key;
            ++found;
        }
    }
    return keys;
}

/// A node other than `node`.
int other(const RedisTestCluster& cluster, int node) { return (node + 1) % cluster.size(); }

std::string address(const RedisTestCluster& cluster, int node)
{
    return cluster.host() + ":" + std::to_string(cluster.port(node));
}

NewBill small_bill(const std::string& id)
{
    NewBill bill;
    bill.id = id;
    bill.amount_fen = 500;
    bill.customer_id = "c";
    return bill;
}

/// "<stem>-<i>" for the first i whose bill is in `shard`.
std::string bill_in_shard(const Keys& keys, int shard, const std::string& stem)
{
    for (int i = 0;; ++i) {
        std::string id = stem + "-" + std::to_string(i);
        if (keys.shard_of(id) == shard) {
            return id;
        }
    }
}

// Coroutines for co_spawn take their arguments by value (a capturing lambda's captures would die
// with the temporary closure before the coroutine runs).
asio::awaitable<void> register_into(RedisBillStore* store, NewBill bill, std::optional<Result<RegisterResult>>* out)
{
    Result<RegisterResult> r = co_await store->register_bill(std::move(bill));
    *out = std::move(r);
}

/// A plain (not cluster-enabled) redis-server replicating cluster node `node`: WAIT on that master
/// counts it (CLUSTER SLOTS does not list it). Returns once it acknowledges writes.
std::unique_ptr<RedisTestServer> start_replica(const RedisTestCluster& cluster, int node)
{
    // Redis 7 waits 5 s for more replicas before a diskless sync.
    REQUIRE(cluster.command(node, {"CONFIG", "SET", "repl-diskless-sync-delay", "0"}) == "OK");
    auto replica = std::make_unique<RedisTestServer>(
        std::vector<std::string>{"--replicaof", cluster.host(), std::to_string(cluster.port(node))});
    bool online = false;
    for (int i = 0; i < 400 && !online; ++i) {
        online = cluster.command(node, {"INFO", "replication"}).find("state=online") != std::string::npos;
        if (!online) {
            std::this_thread::sleep_for(25ms);
        }
    }
    REQUIRE(online);
    // "online" is the master's view once the snapshot is sent; wait until the replica has loaded
    // it and acknowledges (SET and WAIT on one connection: WAIT counts that connection's writes).
    const std::string key = key_per_node(cluster)[static_cast<std::size_t>(node)];
    const std::vector<std::string> got = cluster.pipeline(node, {{"SET", key, "warm-up"}, {"WAIT", "1", "10000"}});
    REQUIRE(got.size() == 2);
    REQUIRE(got[1] == "1");
    return replica;
}

/// Deletes every key of `slot` on `node` (as a failover to a replica that lacked them would).
void drop_slot_keys(const RedisTestCluster& cluster, int node, int slot)
{
    const std::string listed = cluster.command(node, {"CLUSTER", "GETKEYSINSLOT", std::to_string(slot), "1000"});
    std::vector<std::string> del{"DEL"};
    std::size_t start = 0;
    while (start < listed.size()) {
        const std::size_t end = listed.find('\n', start);
        del.push_back(listed.substr(start, end == std::string::npos ? std::string::npos : end - start));
        start = end == std::string::npos ? listed.size() : end + 1;
    }
    if (del.size() > 1) {
        CHECK(cluster.command(node, del) == std::to_string(del.size() - 1));
    }
    CHECK(cluster.command(node, {"CLUSTER", "COUNTKEYSINSLOT", std::to_string(slot)}) == "0");
}

/// A slot `node` owns, other than `not_this`.
int slot_of_node(const RedisTestCluster& cluster, int node, int not_this)
{
    const std::vector<int> owners = cluster.slot_owners();
    for (int slot = 0; slot < static_cast<int>(owners.size()); ++slot) {
        if (owners[static_cast<std::size_t>(slot)] == node && slot != not_this) {
            return slot;
        }
    }
    FAIL("node " << node << " owns no slot");
    return -1;
}

/// A key of `slot` ("k<i>").
std::string key_of_slot(int slot)
{
    for (int i = 0;; ++i) {
        std::string key = "k" + std::to_string(i);
        if (key_slot(key) == slot) {
            return key;
        }
    }
}

}  // namespace

TEST_SUITE("store/redis_cluster")
{
    TEST_CASE("command_key names the argument a command is routed by")
    {
        using paybridge::store::command_key;
        using V = std::vector<std::string>;
        CHECK(command_key(V{"GET", "a"}) == "a");
        CHECK(command_key(V{"hset", "h", "f", "v"}) == "h");
        CHECK(command_key(V{"EVALSHA", "abc", "2", "k1", "k2", "arg"}) == "k1");
        CHECK(command_key(V{"eval", "return 1", "1", "k"}) == "k");
        CHECK_FALSE(command_key(V{"EVALSHA", "abc", "0", "arg"}).has_value());
        CHECK_FALSE(command_key(V{"EVALSHA", "abc", "x1", "k"}).has_value());
        CHECK(command_key(V{"XREADGROUP", "GROUP", "g", "c", "COUNT", "5", "STREAMS", "s1", "s2", ">", ">"}) == "s1");
        CHECK(command_key(V{"XREAD", "BLOCK", "10", "streams", "s", "$"}) == "s");
        CHECK(command_key(V{"XGROUP", "CREATE", "s", "g", "0", "MKSTREAM"}) == "s");
        CHECK(command_key(V{"xinfo", "GROUPS", "s"}) == "s");
        CHECK_FALSE(command_key(V{"XGROUP", "HELP"}).has_value());
        CHECK_FALSE(command_key(V{"PING"}).has_value());
        CHECK_FALSE(command_key(V{"WAIT", "1", "100"}).has_value());
        CHECK_FALSE(command_key(V{"script", "load", "return 1"}).has_value());
        CHECK_FALSE(command_key(V{"CLUSTER", "SLOTS"}).has_value());
        CHECK_FALSE(command_key(V{}).has_value());
    }

    TEST_CASE("key_slot agrees with CLUSTER KEYSLOT of a real node, hash tags and paybridge's keys included")
    {
        RedisTestCluster cluster(1);
        std::vector<std::string> keys{"", "foo", "bar", "123456789", "{user1000}.following", "foo{}{bar}",
                                      "foo{{bar}}zap", "foo{bar}{zap}", "{", "}{", "a{b}c", "\xff\xfe{\x01}"};
        const Keys layout("pb:", 16);
        for (int shard = 0; shard < 16; ++shard) {
            keys.push_back(layout.outbox(shard));
            keys.push_back(layout.bill("bill-" + std::to_string(shard)));
        }
        for (int i = 0; i < 200; ++i) {
            keys.push_back("key:" + std::to_string(i * 7919));
        }
        for (const std::string& key : keys) {
            CAPTURE(key);
            CHECK(cluster.command(0, {"CLUSTER", "KEYSLOT", key}) == std::to_string(key_slot(key)));
        }
        CHECK(key_slot("123456789") == 0x31C3 % 16384);  // CRC16/XMODEM check value
    }

    TEST_CASE("commands go to the master of their slot, and a batch across nodes keeps its order")
    {
        RedisTestCluster cluster(3);
        Client client(cluster_config(cluster));
        REQUIRE(client.wait_ready());

        // One key on each node, written through the client: each is on its owner and nowhere else.
        const std::vector<std::string> keys = key_per_node(cluster);
        for (std::size_t node = 0; node < keys.size(); ++node) {
            CHECK(client.ok({"SET", keys[node], "v" + std::to_string(node)}).is_status("OK"));
        }
        for (int node = 0; node < cluster.size(); ++node) {
            const std::string& key = keys[static_cast<std::size_t>(node)];
            CHECK(cluster.command(node, {"GET", key}) == "v" + std::to_string(node));
            CHECK(cluster.command(other(cluster, node), {"GET", key}).starts_with("(error) MOVED "));
        }

        // A batch interleaving the nodes: replies in the batch's order.
        std::vector<std::vector<std::string>> batch;
        for (int round = 0; round < 3; ++round) {
            for (const std::string& key : keys) {
                batch.push_back({"INCR", key + ":n"});
            }
        }
        batch.push_back({"PING"});
        Result<std::vector<Reply>> replies = client.run(client.conn->exec_many(batch));
        REQUIRE(replies.has_value());
        REQUIRE(replies->size() == batch.size());
        for (std::size_t i = 0; i + 1 < batch.size(); ++i) {
            CHECK((*replies)[i].integer == static_cast<std::int64_t>(i / keys.size() + 1));
        }
        CHECK(replies->back().is_status("PONG"));
        // Commands whose key follows a subcommand (the CRM dispatcher's XGROUP CREATE).
        for (const std::string& key : keys) {
            CHECK(client.ok({"XGROUP", "CREATE", key + ":stream", "crm", "0", "MKSTREAM"}).is_status("OK"));
        }
        CHECK(client.redirects() == 0);

        // Scripts: loaded on every node, routed by their first key.
        for (const std::string& key : keys) {
            Result<Reply> r = client.run(client.conn->eval(client.sha, {key + ":s"}, {"x"}));
            REQUIRE(r.has_value());
            REQUIRE(r->is_array());
            CHECK(r->elements[0].integer == 1);
        }
    }

    TEST_CASE("the configured node may be any node: the rest of the cluster is discovered")
    {
        RedisTestCluster cluster(3);
        Client client(cluster_config(cluster, {2}));
        REQUIRE(client.wait_ready());
        for (const std::string& key : key_per_node(cluster)) {
            CHECK(client.ok({"SET", key, "x"}).is_status("OK"));
        }
        CHECK(client.redirects() == 0);
    }

    TEST_CASE("a configured node that knows no slots (just added or reset) does not empty the map")
    {
        RedisTestCluster cluster(3);
        RedisTestCluster empty(1);
        REQUIRE(empty.command(0, {"CLUSTER", "RESET", "HARD"}) == "OK");
        REQUIRE(empty.command(0, {"CLUSTER", "SLOTS"}).empty());  // an empty map
        RedisConfig cfg = cluster_config(cluster);
        // Second: the first question of a client that had to wait for its connections starts at
        // the second node (the node asked turns with every question).
        cfg.cluster.nodes.push_back(Endpoint{empty.host(), empty.port(0)});
        REQUIRE(empty.command(0, {"CONFIG", "RESETSTAT"}) == "OK");  // forget the CLUSTER SLOTS above
        paybridge::test::LogCapture logs;
        const auto started = std::chrono::steady_clock::now();
        Client client(cfg);
        REQUIRE(client.wait_ready());
        const auto took = std::chrono::steady_clock::now() - started;
        // Asked first, the empty node's answer is refused and the next node is asked in the same
        // round: ready within milliseconds. Had the empty map been applied, the client would have
        // taken it and, not ready, asked again only after the 1 s pause of a client that is not
        // ready (kRefreshNotReady), counted from its first question, itself after `started`:
        // the bound is just under that.
        CHECK(took < 1s);
        // Whether the empty node was asked before the client was ready depends on which seed
        // connection came up first. When it was, its answer must have been refused, not applied.
        const bool empty_asked =
            empty.command(0, {"INFO", "commandstats"}).find("cmdstat_cluster|slots:calls=") != std::string::npos;
        if (empty_asked) {
            bool refused = false;
            for (const std::string& line : logs.with("\"redis.cluster_slots_refused\"")) {
                refused = refused || line.find("\"node\":\"" + address(empty, 0) + "\"") != std::string::npos;
            }
            CHECK_MESSAGE(refused, "the empty node was asked and its map not refused");
        } else {
            MESSAGE("the empty node was not asked first this time: only the time bound applies");
        }
        for (const std::string& key : key_per_node(cluster)) {
            CHECK(client.ok({"SET", key, "x"}).is_status("OK"));
        }
        CHECK(client.redirects() == 0);
    }

    TEST_CASE("after a resharding the MOVED reply is followed and the slot map corrected")
    {
        RedisTestCluster cluster(3);
        Client client(cluster_config(cluster));
        REQUIRE(client.wait_ready());
        const std::string key = "{s03}moved";
        const int slot = key_slot(key);
        const int from = cluster.owner(slot);
        const int to = other(cluster, from);
        CHECK(client.ok({"SET", key, "before"}).is_status("OK"));

        cluster.move_slot(slot, to);
        CHECK(cluster.command(to, {"GET", key}) == "before");

        // The client still thinks `from` owns the slot: one MOVED, then straight to `to`.
        const Reply got = client.ok({"GET", key});
        CHECK(got.str == "before");
        CHECK(client.redirects() == 1);
        CHECK(client.ok({"SET", key, "after"}).is_status("OK"));
        CHECK(client.redirects() == 1);
        CHECK(cluster.command(to, {"GET", key}) == "after");
        CHECK(client.conn->stats().errors.load() == 0);  // a followed MOVED is no failure
        CHECK(client.conn->node_of(key) == "127.0.0.1:" + std::to_string(cluster.port(to)));
    }

    TEST_CASE("during a migration ASK is followed with ASKING, without changing the map")
    {
        RedisTestCluster cluster(3);
        Client client(cluster_config(cluster));
        REQUIRE(client.wait_ready());
        const std::string key = "{s05}asked";
        const int slot = key_slot(key);
        const int from = cluster.owner(slot);
        const int to = other(cluster, from);
        CHECK(client.ok({"SET", key, "v1"}).is_status("OK"));

        cluster.begin_migration(slot, to);
        cluster.migrate_keys(slot, to);
        // The key has left `from`, which answers ASK; the target serves it only after ASKING.
        CHECK(cluster.command(from, {"GET", key}).starts_with("(error) ASK "));
        CHECK(client.ok({"GET", key}).str == "v1");
        CHECK(client.redirects() == 1);
        // A key of the slot that exists nowhere yet is created on the target too.
        CHECK(client.ok({"SET", "{s05}new", "n"}).is_status("OK"));
        CHECK(client.redirects() == 2);
        CHECK(client.ok({"GET", key}).str == "v1");
        CHECK(client.redirects() == 3);  // still asked each time: the slot is not moved yet

        cluster.finish_migration(slot, to);
        CHECK(cluster.command(to, {"GET", "{s05}new"}) == "n");
        CHECK(client.ok({"GET", key}).str == "v1");  // one MOVED, then the map knows
        CHECK(client.ok({"GET", key}).str == "v1");
        CHECK(client.redirects() == 4);
    }

    TEST_CASE("a node that lost its scripts answers NOSCRIPT and the script is sent again there")
    {
        RedisTestCluster cluster(3);
        Client client(cluster_config(cluster));
        REQUIRE(client.wait_ready());
        const std::string key = key_per_node(cluster)[1];
        CHECK(cluster.command(1, {"SCRIPT", "FLUSH"}) == "OK");
        Result<Reply> r = client.run(client.conn->eval(client.sha, {key}, {"again"}));
        REQUIRE(r.has_value());
        REQUIRE(r->is_array());
        CHECK(r->elements[1].str == "again");
        CHECK(cluster.command(1, {"SCRIPT", "EXISTS", client.sha}) == "1");
    }

    TEST_CASE("a master down fails its slots' commands at once, the others go on, and it is used again when back")
    {
        RedisTestCluster cluster(3);
        RedisConfig cfg = cluster_config(cluster, {0, 1, 2});
        // Long, so that "at once" and "at the request deadline" stay far apart under any load.
        cfg.request_timeout = 6s;
        Client client(cfg);
        REQUIRE(client.wait_ready());
        const std::vector<std::string> keys = key_per_node(cluster);

        cluster.server(2).stop();
        const auto started = std::chrono::steady_clock::now();
        Result<Reply> lost = client.exec({"SET", keys[2], "x"});
        REQUIRE_FALSE(lost.has_value());
        CHECK(lost.error() == errc::store_unavailable);  // not timeout: it was not left to its deadline
        // Just under the request deadline: a command that waited for the lost master (to come
        // back, or for a reply) would fail only then. Normally it fails within milliseconds.
        CHECK(std::chrono::steady_clock::now() - started < cfg.request_timeout);
        CHECK_FALSE(client.conn->ready());
        CHECK(client.ok({"SET", keys[0], "still"}).is_status("OK"));
        CHECK(client.ok({"SET", keys[1], "still"}).is_status("OK"));
        CHECK(client.conn->usable());  // two masters of three still serve their slots
        // A batch across all three: exec_many fails as a whole, exec_each only the lost master's part.
        const std::vector<std::vector<std::string>> batch{{"GET", keys[0]}, {"GET", keys[2]}, {"GET", keys[1]}};
        Result<std::vector<Reply>> whole = client.run(client.conn->exec_many(batch));
        REQUIRE_FALSE(whole.has_value());
        CHECK(whole.error() == errc::store_unavailable);
        std::vector<Result<Reply>> each = client.run(client.conn->exec_each(batch));
        REQUIRE(each.size() == 3);
        REQUIRE(each[0].has_value());
        CHECK(each[0]->str == "still");
        REQUIRE_FALSE(each[1].has_value());
        CHECK(each[1].error() == errc::store_unavailable);
        REQUIRE(each[2].has_value());
        CHECK(each[2]->str == "still");

        cluster.server(2).restart();  // its nodes.conf brings it back with its slots
        REQUIRE(client.wait_ready(15s));
        // A restarted node answers CLUSTERDOWN until it has heard from the others again (about
        // 2 s); the client retries that within request_timeout, so wait for it first.
        const bool rejoined = paybridge::test::run_until(
            client.ctx, [&] { return cluster.command(2, {"CLUSTER", "INFO"}).find("cluster_state:ok") != std::string::npos; },
            15s);
        REQUIRE(rejoined);
        CHECK(client.ok({"SET", keys[2], "back"}).is_status("OK"));
        CHECK(cluster.command(2, {"GET", keys[2]}) == "back");
    }

    TEST_CASE("a master that stops answering: the request times out and its connection is made again")
    {
        RedisTestCluster cluster(3);
        RedisConfig cfg = cluster_config(cluster);
        cfg.request_timeout = 500ms;
        Client client(cfg);
        REQUIRE(client.wait_ready());
        const std::string key = key_per_node(cluster)[1];
        CHECK(client.ok({"SET", key, "v"}).is_status("OK"));

        // Node 1 is frozen (SIGSTOP; freeze() returns once the kernel reports it stopped): it
        // answers nothing and closes nothing, as a blackholed host looks, for as long as the test
        // needs, so the GET below certainly goes out while it is silent, whatever the load.
        cluster.server(1).freeze();
        Result<Reply> stuck = client.exec({"GET", key});
        const auto timeouts = client.conn->stats().timeouts.load();
        cluster.server(1).thaw();
        REQUIRE_FALSE(stuck.has_value());
        CHECK(stuck.error() == errc::timeout);
        // No reply for request_timeout: the connection is dropped and made again, not kept
        // (its requests would pile up behind the silent node for ever).
        CHECK(timeouts == 1);
        REQUIRE(client.wait_ready());
        CHECK(client.ok({"GET", key}).str == "v");
        CHECK(client.conn->stats().reconnects.load() >= 1);
    }

    TEST_CASE("the bill store over a cluster: every shard registered, paid and listed")
    {
        RedisTestCluster cluster(3);
        Client client(cluster_config(cluster), true);
        REQUIRE(client.wait_ready());
        const Keys& keys = client.store->keys();
        std::set<int> shards;
        std::set<int> nodes;
        for (int i = 0; shards.size() < static_cast<std::size_t>(keys.shards()); ++i) {
            const std::string id = "bill-" + std::to_string(i);
            if (!shards.insert(keys.shard_of(id)).second) {
                continue;
            }
            nodes.insert(cluster.owner(key_slot(keys.bill(id))));
            NewBill bill;
            bill.id = id;
            bill.amount_fen = 1000 + i;
            bill.customer_id = "c";
            Result<paybridge::RegisterResult> reg = client.run(client.store->register_bill(bill));
            REQUIRE(reg.has_value());
            CHECK(reg->outcome == paybridge::RegisterOutcome::created);

            PaymentEvent ev;
            ev.provider = "alipay";
            ev.channel = "alipay";
            ev.kind = EventKind::payment;
            ev.notification_id = "N-" + id;
            ev.bill_id = id;
            ev.provider_txn_id = "T-" + id;
            ev.total_fen = 1000 + i;
            ev.provider_status = "TRADE_SUCCESS";
            Result<paybridge::ApplyResult> applied = client.run(client.store->apply(ev));
            REQUIRE(applied.has_value());
            CHECK(applied->outcome == paybridge::ApplyOutcome::applied);
            Result<paybridge::ApplyResult> again = client.run(client.store->apply(ev));
            REQUIRE(again.has_value());
            CHECK(again->outcome == paybridge::ApplyOutcome::duplicate);
        }
        CHECK(nodes.size() == 3);  // the 16 shards really are spread over the three masters

        // The event feed merges every shard's outbox: one bill.paid per bill (registration emits none).
        std::set<std::string> paid;
        std::size_t events = 0;
        std::string cursor;
        for (int page = 0; page < 20; ++page) {
            Result<paybridge::Page> p = client.run(client.store->list_events(cursor, 7));
            REQUIRE(p.has_value());
            if (p->items_json.empty()) {
                break;
            }
            events += p->items_json.size();
            for (const std::string& item : p->items_json) {
                const rapidjson::Document doc = paybridge::test::parse_json(item);
                CHECK(paybridge::test::str(doc, "type") == "bill.paid");
                paid.insert(paybridge::test::str(doc, "bill_id"));
            }
            cursor = p->next_cursor;
        }
        CHECK(events == static_cast<std::size_t>(keys.shards()));
        CHECK(paid.size() == static_cast<std::size_t>(keys.shards()));
        Result<void> ping = client.run(client.store->ping());
        CHECK(ping.has_value());
    }

    TEST_CASE("the key layout over a cluster: a marker in every shard's slot and other shards refused on every path")
    {
        RedisTestCluster cluster(3);
        Client right(cluster_config(cluster), true);
        REQUIRE(right.wait_ready());
        const Keys& keys = right.store->keys();
        std::set<int> holders;
        for (int shard = 0; shard < keys.shards(); ++shard) {
            const int owner = cluster.owner(key_slot(keys.layout(shard)));
            CHECK(owner == cluster.owner(key_slot(keys.outbox(shard))));
            CHECK(cluster.command(owner, {"GET", keys.layout(shard)}) == "paybridge-keys/1 shards=16");
            holders.insert(owner);
        }
        CHECK(holders.size() == 3);
        Result<paybridge::RegisterResult> first = right.run(right.store->register_bill(small_bill("L-1")));
        REQUIRE(first.has_value());

        RedisConfig eight = cluster_config(cluster, {0, 1, 2});
        eight.shards = 8;
        Client wrong(eight, true);
        REQUIRE(paybridge::test::run_until(wrong.ctx, [&] { return wrong.conn->layout_refused(); }, 10s));
        CHECK_FALSE(wrong.conn->ready());
        CHECK_FALSE(wrong.conn->usable());
        const auto refused = paybridge::make_error_code(errc::store_unavailable);
        CHECK(wrong.exec({"GET", "k"}).error() == refused);
        // The bill store's scripts go through the router itself: refused there too.
        Result<paybridge::RegisterResult> second = wrong.run(wrong.store->register_bill(small_bill("L-2")));
        REQUIRE_FALSE(second.has_value());
        CHECK(second.error() == refused);
        Result<std::optional<paybridge::BillView>> view = wrong.run(wrong.store->get_bill("L-1"));
        CHECK_FALSE(view.has_value());

        // The master of shard 0 down: a client started now checks against the other masters'
        // markers and serves their shards; one with other shards is still refused.
        const int down = cluster.owner(key_slot(keys.layout(0)));
        cluster.server(down).stop();
        Client later(cluster_config(cluster, {other(cluster, down)}), true);
        REQUIRE(paybridge::test::run_until(later.ctx, [&] { return later.conn->usable(); }, 15s));
        const std::string alive = bill_in_shard(keys, [&] {
            for (int shard = 0;; ++shard) {
                if (cluster.owner(key_slot(keys.layout(shard))) != down) {
                    return shard;
                }
            }
        }(), "L");
        Result<paybridge::RegisterResult> third = later.run(later.store->register_bill(small_bill(alive)));
        CHECK(third.has_value());
        Client wrong_later(eight, true);
        CHECK(paybridge::test::run_until(wrong_later.ctx, [&] { return wrong_later.conn->layout_refused(); }, 15s));
    }

    TEST_CASE("wait_replicas over a cluster confirms on the master of the bill's shard")
    {
        RedisTestCluster cluster(3);
        RedisConfig cfg = cluster_config(cluster);
        cfg.wait_replicas = 1;
        cfg.wait_timeout = 200ms;
        Client client(cfg, true);
        REQUIRE(client.wait_ready());
        const Keys& keys = client.store->keys();
        const std::string id = "bill-wait";
        const int shard = keys.shard_of(id);
        const int owner = cluster.owner(key_slot(keys.bill(id)));

        NewBill bill;
        bill.id = id;
        bill.amount_fen = 500;
        bill.customer_id = "c";
        // These masters have no replica: the bill is written, but not confirmed.
        Result<paybridge::RegisterResult> reg = client.run(client.store->register_bill(bill));
        REQUIRE_FALSE(reg.has_value());
        CHECK(reg.error() == errc::store_unavailable);
        CHECK(cluster.command(owner, {"EXISTS", keys.bill(id)}) == "1");
        // The confirmation's SET went to the same master as the bill (its WAIT with it).
        CHECK(cluster.command(owner, {"EXISTS", keys.replicated(shard)}) == "1");

        // A bill of another shard on the same master is confirmed by the same confirmer (one
        // WAIT at a time per master), which SETs that bill's shard key there too.
        std::string sibling;
        for (int i = 0; sibling.empty(); ++i) {
            const std::string id2 = "bill-wait-" + std::to_string(i);
            if (keys.shard_of(id2) != shard && cluster.owner(key_slot(keys.bill(id2))) == owner) {
                sibling = id2;
            }
        }
        bill.id = sibling;
        Result<paybridge::RegisterResult> reg2 = client.run(client.store->register_bill(bill));
        REQUIRE_FALSE(reg2.has_value());
        CHECK(cluster.command(owner, {"EXISTS", keys.bill(sibling)}) == "1");
        CHECK(cluster.command(owner, {"EXISTS", keys.replicated(keys.shard_of(sibling))}) == "1");
        CHECK(cluster.command(owner, {"GET", keys.replicated(shard)}) == "1");
    }

    TEST_CASE("wait_replicas over a cluster is met by the replicas of the master that took the write")
    {
        RedisTestCluster cluster(3);
        RedisConfig cfg = cluster_config(cluster);
        cfg.wait_replicas = 1;
        cfg.wait_timeout = 2000ms;  // the time a loaded machine's replica may take to acknowledge
        cfg.request_timeout = 5000ms;
        const Keys keys(cfg.key_prefix, cfg.shards);
        const std::string id = "bill-replicated";
        const int owner = cluster.owner(key_slot(keys.bill(id)));
        const std::unique_ptr<RedisTestServer> replica = start_replica(cluster, owner);
        Client client(cfg, true, true);
        REQUIRE(client.wait_ready());

        Result<RegisterResult> reg = client.run(client.store->register_bill(small_bill(id)));
        REQUIRE_MESSAGE(reg.has_value(), "register failed: " << reg.error().message());
        CHECK(reg->outcome == RegisterOutcome::created);
        CHECK(cluster.command(owner, {"GET", keys.replicated(keys.shard_of(id))}) == "1");
        PaymentEvent ev;
        ev.provider = "alipay";
        ev.channel = "alipay";
        ev.kind = EventKind::payment;
        ev.notification_id = "N-1";
        ev.bill_id = id;
        ev.provider_txn_id = "T-1";
        ev.total_fen = 500;
        ev.provider_status = "TRADE_SUCCESS";
        Result<paybridge::ApplyResult> applied = client.run(client.store->apply(ev));
        REQUIRE(applied.has_value());
        CHECK(applied->outcome == paybridge::ApplyOutcome::applied);

        // Bills of other shards: confirmed on the same master, refused on one without a replica.
        bool confirmed_elsewhere = false;
        bool refused_elsewhere = false;
        for (int i = 0; !(confirmed_elsewhere && refused_elsewhere); ++i) {
            const std::string other_id = "bill-other-" + std::to_string(i);
            if (keys.shard_of(other_id) == keys.shard_of(id)) {
                continue;
            }
            const bool same_master = cluster.owner(key_slot(keys.bill(other_id))) == owner;
            if ((same_master && confirmed_elsewhere) || (!same_master && refused_elsewhere)) {
                continue;
            }
            Result<RegisterResult> r = client.run(client.store->register_bill(small_bill(other_id)));
            if (same_master) {
                CHECK(r.has_value());
                confirmed_elsewhere = true;
            } else {
                REQUIRE_FALSE(r.has_value());
                CHECK(r.error() == errc::store_unavailable);
                refused_elsewhere = true;
            }
        }
    }

    TEST_CASE("wait_replicas over a cluster confirms on the master that ran the script even when the confirming connection names another")
    {
        RedisTestCluster cluster(3);
        RedisConfig cfg = cluster_config(cluster);
        cfg.wait_replicas = 1;
        cfg.wait_timeout = 4000ms;       // the window in which the test moves the slot
        cfg.request_timeout = 10000ms;
        Client client(cfg, true, true);  // confirmations on a connection (and slot map) of their own
        REQUIRE(client.wait_ready());
        const Keys& keys = client.store->keys();
        const std::string first = "bill-first";
        const int shard = keys.shard_of(first);
        const std::string second = bill_in_shard(keys, shard, "bill-second");
        const int slot = key_slot(keys.bill(first));
        const int from = cluster.owner(slot);
        const int to = other(cluster, from);
        const int third = other(cluster, to);
        // Only `to` has a replica: a confirmation that runs on `from` cannot succeed.
        const std::unique_ptr<RedisTestServer> replica = start_replica(cluster, to);

        // The first bill's confirmation round WAITs on `from` (no replica) for wait_timeout...
        const auto started = std::chrono::steady_clock::now();
        std::optional<Result<RegisterResult>> reg1;
        asio::co_spawn(client.ctx, register_into(client.store.get(), small_bill(first), &reg1), asio::detached);
        paybridge::test::run_for(client.ctx, 300ms);
        REQUIRE_FALSE(reg1.has_value());
        // ... so the second bill, written on `from` meanwhile, waits for the next round.
        std::optional<Result<RegisterResult>> reg2;
        asio::co_spawn(client.ctx, register_into(client.store.get(), small_bill(second), &reg2), asio::detached);
        paybridge::test::run_for(client.ctx, 300ms);
        REQUIRE_FALSE(reg2.has_value());
        REQUIRE(cluster.command(from, {"EXISTS", keys.bill(second)}) == "1");

        // Now `from` loses the slot's writes (as in a failover to a replica that did not have them
        // yet) and `to` takes the slot over, without them.
        drop_slot_keys(cluster, from, slot);
        cluster.move_slot(slot, to);
        // The confirming connection learns the new map. Its link to `from` is held by the first
        // round's WAIT, so it is told by `to`: a MOVED to `to` (for a slot of the third node,
        // moved too) makes it ask `to` for the map first.
        const int other_slot = slot_of_node(cluster, third, slot);
        cluster.move_slot(other_slot, to);
        Result<Reply> moved = client.run(client.replicas->exec({"GET", key_of_slot(other_slot)}));
        REQUIRE(moved.has_value());
        REQUIRE(paybridge::test::run_until(
            client.ctx, [&] { return client.replicas->node_of(keys.replicated(shard)) == address(cluster, to); }, 2s));
        // Staged while the first round still waits (else the test proves nothing).
        REQUIRE(std::chrono::steady_clock::now() - started < 3500ms);
        REQUIRE_FALSE(reg1.has_value());
        REQUIRE_FALSE(reg2.has_value());

        REQUIRE(paybridge::test::run_until(client.ctx, [&] { return reg1.has_value() && reg2.has_value(); }, 15s));
        CHECK_FALSE(reg1->has_value());  // no replica on `from`
        // The second bill is nowhere. Confirmed on `to` (by `to`'s replica, of `to`'s writes), the
        // provider would be told "success" for it.
        CHECK(cluster.command(to, {"EXISTS", keys.bill(second)}) == "0");
        REQUIRE_FALSE(reg2->has_value());
        CHECK(reg2->error() == errc::store_unavailable);
    }

    TEST_CASE("a bill script on a slot being migrated is retried until the slot has moved, within its deadline")
    {
        RedisTestCluster cluster(3);
        RedisConfig cfg = cluster_config(cluster);
        cfg.request_timeout = 4000ms;
        Client client(cfg, true);
        REQUIRE(client.wait_ready());
        const Keys& keys = client.store->keys();
        const std::string id = "bill-migrating";
        const int shard = keys.shard_of(id);
        const int slot = key_slot(keys.bill(id));
        const int from = cluster.owner(slot);
        const int to = other(cluster, from);
        // A bill of the shard first, so that the migration has keys to move.
        const std::string earlier = bill_in_shard(keys, shard, "bill-earlier");
        Result<RegisterResult> before = client.run(client.store->register_bill(small_bill(earlier)));
        REQUIRE(before.has_value());

        // The slot migrates and its keys have moved: the source answers the nine-key script ASK
        // (it holds none of them) and the target TRYAGAIN (it lacks the new bill's) until the
        // migration ends. (While the source still holds some keys it answers TRYAGAIN itself.)
        cluster.begin_migration(slot, to);
        cluster.migrate_keys(slot, to);
        CHECK(cluster.command(from, {"CLUSTER", "COUNTKEYSINSLOT", std::to_string(slot)}) == "0");
        {
            // A request whose deadline passes before the slot has moved fails (the provider retries).
            // (The slot does not move while this client runs: only its deadline can end the retries.)
            RedisConfig short_cfg = cfg;
            short_cfg.request_timeout = 1500ms;
            Client hasty(short_cfg, true);
            REQUIRE(hasty.wait_ready());
            const auto t0 = std::chrono::steady_clock::now();
            Result<RegisterResult> r =
                hasty.run(hasty.store->register_bill(small_bill(bill_in_shard(keys, shard, "bill-hasty"))));
            const auto hasty_took = std::chrono::steady_clock::now() - t0;
            REQUIRE_FALSE(r.has_value());
            CHECK(r.error() == errc::store_unavailable);
            CHECK(hasty_took >= short_cfg.request_timeout - 300ms);  // it did retry, for about its deadline
            // Just under twice the deadline: retries that went on past it (a second deadline, as
            // after NOSCRIPT, or none at all: until the run's 15 s limit) take at least that.
            CHECK(hasty_took < 2 * short_cfg.request_timeout);
        }

        // The migration ends 1 s later (after the 0.6 s within which five redirections used to be
        // spent), well within the request's 4 s.
        std::string migration_error;
        std::thread migration([&cluster, &migration_error, slot, to] {
            try {
                std::this_thread::sleep_for(1000ms);
                cluster.finish_migration(slot, to);
            } catch (const std::exception& e) {
                migration_error = e.what();
            }
        });
        const auto t0 = std::chrono::steady_clock::now();
        std::optional<Result<RegisterResult>> reg;
        asio::co_spawn(client.ctx, register_into(client.store.get(), small_bill(id), &reg), asio::detached);
        const bool finished = paybridge::test::run_until(client.ctx, [&reg] { return reg.has_value(); }, 6s);
        const auto took = std::chrono::steady_clock::now() - t0;
        migration.join();
        REQUIRE(migration_error.empty());
        REQUIRE(finished);
        REQUIRE_MESSAGE(reg->has_value(), "register failed: " << reg->error().message());
        CHECK((*reg)->outcome == RegisterOutcome::created);
        CHECK(took >= 1000ms);
        CHECK(cluster.command(to, {"EXISTS", keys.bill(id)}) == "1");
        CHECK(cluster.command(to, {"EXISTS", keys.bill(earlier)}) == "1");
    }

    TEST_CASE("the provider-query queue across a cluster - intake and claims per shard and batches across nodes")
    {
        RedisTestCluster cluster(3);
        Client client(cluster_config(cluster), true);
        REQUIRE(client.wait_ready());
        std::vector<std::string> ids;
        for (int i = 0; i < 24; ++i) {
            ids.push_back("QC-" + std::to_string(i));
            Result<paybridge::RegisterResult> reg = client.run(client.store->register_bill(small_bill(ids.back())));
            REQUIRE(reg.has_value());
        }
        const std::int64_t later = std::chrono::duration_cast<std::chrono::milliseconds>(
                                       std::chrono::system_clock::now().time_since_epoch())
                                       .count() +
                                   600'000;
        paybridge::store::QuerySchedule schedule;
        schedule.after = 300'000ms;
        paybridge::store::QueryQueue queue(*client.conn, Keys(client.cfg.key_prefix, client.cfg.shards), schedule,
                                           [later] { return later; });
        std::size_t entered = 0;
        std::vector<paybridge::store::DueBill> due;
        std::set<std::string> nodes;
        for (int shard = 0; shard < client.cfg.shards; ++shard) {
            nodes.insert(client.conn->node_of(queue.keys().query_due(shard)));
            Result<std::size_t> in = client.run(queue.intake(shard));
            REQUIRE(in.has_value());
            entered += *in;
            Result<paybridge::store::DueRound> round = client.run(queue.take_due(shard, 100, 60s));
            REQUIRE(round.has_value());
            due.insert(due.end(), round->bills.begin(), round->bills.end());
        }
        CHECK(nodes.size() == 3);  // the shards' sets live on every master
        CHECK(entered == ids.size());
        CHECK(due.size() == ids.size());
        // One pipelined batch across the nodes: every claim moved.
        REQUIRE(client.run(queue.due_at(due, later + 5'000)).has_value());
        Result<std::int64_t> waiting = client.run(queue.waiting());
        REQUIRE(waiting.has_value());
        CHECK(*waiting == static_cast<std::int64_t>(ids.size()));
        for (const auto& bill : due) {
            CHECK(client.ok({"ZSCORE", queue.keys().query_due(bill.shard), bill.id}).str == std::to_string(later + 5'000));
        }
        Result<std::string> now = client.run(queue.due_now(ids.front()));
        REQUIRE(now.has_value());
        CHECK(*now == "PENDING");
        CHECK(client.redirects() == 0);
    }
}

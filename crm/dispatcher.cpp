#include "crm/dispatcher.hpp"

#include "core/async.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/time.hpp"
#include "crm/delivery_schema.hpp"
#include "crm/retry_policy.hpp"
#include "crm/webhook_signer.hpp"
#include "gateways/crypto/crypto.hpp"
#include "store/keys.hpp"
#include "store/redis_cluster.hpp"
#include "store/redis_connection.hpp"
#include "store/replica_confirm.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <deque>
#include <limits>
#include <memory>
#include <exception>
#include <optional>
#include <random>
#include <unordered_map>

namespace paybridge::crm {
namespace {

namespace asio = boost::asio;
using store::Reply;
using Clock = std::chrono::steady_clock;

/// PEL entries looked at per consumer and shard in one reclaim pass (instances' PEL entries are
/// what they hold in flight; retries are held by kRetryHolder).
constexpr std::size_t kReclaimScan = 500;
/// Old members of idx:pending and of idx:retrying that kSweepLost looks at per shard and pass (each
/// costs an HMGET and an XRANGE inside the script), walking each index from a cursor kept in Redis.
constexpr std::size_t kSweepScan = 200;
constexpr std::chrono::milliseconds kBackoffMin{100};
constexpr std::chrono::milliseconds kBackoffMax{5'000};
// Redis Cluster: how long the reader waits before reading the shards again when all were empty.
constexpr std::chrono::milliseconds kClusterPoll{100};
/// kTrimOutbox calls per shard and trim pass at most (each removes at most 10,000 entries).
constexpr int kTrimRounds = 10;

/// One stream entry to deliver.
struct Item {
    int shard{0};
    std::string entry_id;
    std::string event_id;
    std::string bill_id;
    std::string type;
    std::string body;
    int prior_tries{0};    ///< failed attempts already made in the current schedule
    std::int64_t lease_until{0};  ///< popped retry: its score in the retry zset; 0: held in the PEL
    bool missing{false};   ///< the entry is no longer in the stream
    bool malformed{false}; ///< the entry has no id or event field
};

std::int64_t now_ms()
{
    return unix_ms(std::chrono::system_clock::now());
}

std::string make_consumer_name()
{
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) != 0 || host[0] == '\0') {
        std::snprintf(host, sizeof host, "host");
    }
    return std::string(host) + "-" + std::to_string(::getpid()) + "-" + crypto::hex_lower(crypto::random_bytes(4));
}

int to_int(const Reply& r)
{
    if (r.is_integer()) {
        return static_cast<int>(r.integer);
    }
    if (r.is_string()) {
        try {
            return std::stoi(r.str);
        } catch (const std::exception&) {
            return 0;
        }
    }
    return 0;
}

Item make_item(int shard, const Reply& id, const Reply* fields, int tries)
{
    Item item;
    item.shard = shard;
    item.entry_id = id.str;
    item.prior_tries = tries;
    if (fields == nullptr || !fields->is_array()) {
        item.missing = true;
        item.event_id = "entry:" + item.entry_id;
        return item;
    }
    const std::vector<Reply>& f = fields->elements;
    for (std::size_t i = 0; i + 1 < f.size(); i += 2) {
        const std::string& name = f[i].str;
        if (name == "id") {
            item.event_id = f[i + 1].str;
        } else if (name == "bill_id") {
            item.bill_id = f[i + 1].str;
        } else if (name == "type") {
            item.type = f[i + 1].str;
        } else if (name == "event") {
            item.body = f[i + 1].str;
        }
    }
    if (item.event_id.empty() || item.body.empty()) {
        item.malformed = true;
        if (item.event_id.empty()) {
            item.event_id = "entry:" + item.entry_id;
        }
    }
    return item;
}

/// [[entry_id, fields|nil, tries], ...] from kPopDue / kReclaim.
std::vector<Item> parse_claimed(const Reply& list, int shard)
{
    std::vector<Item> items;
    for (const Reply& row : list.elements) {
        if (!row.is_array() || row.elements.size() < 3) {
            continue;
        }
        const Reply* fields = row.elements[1].is_array() ? &row.elements[1] : nullptr;
        items.push_back(make_item(shard, row.elements[0], fields, to_int(row.elements[2])));
    }
    return items;
}

// The body of a response is untrusted bytes; the record is JSON, so invalid UTF-8 becomes U+FFFD.
std::string sanitize_utf8(std::string_view s)
{
    std::string out;
    out.reserve(s.size());
    std::size_t i = 0;
    while (i < s.size()) {
        const auto c = static_cast<unsigned char>(s[i]);
        std::size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
        bool ok = len > 0 && i + len <= s.size();
        for (std::size_t j = 1; ok && j < len; ++j) {
            ok = (static_cast<unsigned char>(s[i + j]) & 0xC0) == 0x80;
        }
        if (ok && len > 1) {
            const auto c1 = static_cast<unsigned char>(s[i + 1]);
            ok = !(len == 2 && c < 0xC2) && !(len == 3 && c == 0xE0 && c1 < 0xA0) &&
                 !(len == 3 && c == 0xED && c1 >= 0xA0) && !(len == 4 && c == 0xF0 && c1 < 0x90) &&
                 !(len == 4 && (c > 0xF4 || (c == 0xF4 && c1 >= 0x90)));
        }
        if (ok) {
            out.append(s.substr(i, len));
            i += len;
        } else {
            out.append("\xEF\xBF\xBD");
            ++i;
        }
    }
    return out;
}

struct AttemptRecord {
    std::int64_t at_ms{0};
    int attempt{0};
    std::string consumer;
    unsigned status{0};
    std::int64_t latency_ms{0};
    Verdict outcome{Verdict::retry};
    std::int64_t next_at_ms{0};
    std::string error;
    std::string body;
};

std::string to_json(const AttemptRecord& r)
{
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    w.StartObject();
    w.Key("at");
    w.String(format_rfc3339(r.at_ms));
    w.Key("at_ms");
    w.Int64(r.at_ms);
    w.Key("attempt");
    w.Int(r.attempt);
    w.Key("consumer");
    w.String(r.consumer);
    w.Key("status");
    if (r.status == 0) {
        w.Null();
    } else {
        w.Uint(r.status);
    }
    w.Key("latency_ms");
    w.Int64(r.latency_ms);
    w.Key("outcome");
    w.String(std::string(to_string(r.outcome)));
    w.Key("next_at");
    if (r.next_at_ms == 0) {
        w.Null();
    } else {
        w.String(format_rfc3339(r.next_at_ms));
    }
    w.Key("error");
    w.String(sanitize_utf8(r.error));
    w.Key("response_body");
    w.String(sanitize_utf8(r.body));
    w.EndObject();
    return std::string(buf.GetString(), buf.GetSize());
}

}  // namespace

DispatcherOptions DispatcherOptions::from_config(const config::RedisConfig& redis, const config::CrmConfig& crm)
{
    DispatcherOptions o;
    o.key_prefix = redis.key_prefix;
    o.shards = redis.shards;
    o.secrets = crm.secrets;
    o.retry_schedule.clear();
    for (std::chrono::seconds step : crm.retry_schedule) {
        o.retry_schedule.push_back(std::chrono::duration_cast<std::chrono::milliseconds>(step));
    }
    o.lease = std::chrono::duration_cast<std::chrono::milliseconds>(crm.lease);
    o.concurrency = crm.concurrency;
    o.outbox_retention = std::chrono::duration_cast<std::chrono::milliseconds>(crm.outbox_retention);
    o.http.url = crm.url;
    o.http.ca_file = crm.ca_file;
    o.http.timeout = crm.timeout;
    o.http.concurrency = crm.concurrency;
    o.wait_replicas = redis.wait_replicas;
    o.wait_timeout = redis.wait_timeout;
    return o;
}

struct Dispatcher::Impl {
    Impl(asio::any_io_executor ex, const config::RedisConfig& redis_cfg, DispatcherOptions opts,
         WebhookSigner sign, std::unique_ptr<HttpClient> client)
        : executor(ex),
          options(std::move(opts)),
          keys(options.key_prefix, options.shards),
          policy(options.retry_schedule, options.jitter),
          signer(std::move(sign)),
          http(std::move(client)),
          commands(ex, redis_cfg),
          reads(ex, redis_cfg),
          store_keys(options.key_prefix, options.shards),
          rng(std::random_device{}()),
          slot_signal(ex),
          drain_signal(ex),
          post_signal(ex),
          read_backoff(ex),
          retry_timer(ex),
          reclaim_timer(ex),
          stats_timer(ex),
          concurrency(static_cast<std::size_t>(options.concurrency))
    {
        for (const ShardKeys& k : keys.all()) {
            shard_of_stream.emplace(k.stream, k.shard);
        }
        shard_gauges.resize(keys.all().size());
        record_sha = commands.add_script(std::string(scripts::kRecord));
        pop_sha = commands.add_script(std::string(scripts::kPopDue));
        reclaim_sha = commands.add_script(std::string(scripts::kReclaim));
        renew_sha = commands.add_script(std::string(scripts::kRenew));
        stats_sha = commands.add_script(std::string(scripts::kStats));
        cleanup_sha = commands.add_script(std::string(scripts::kCleanupConsumers));
        sweep_sha = commands.add_script(std::string(scripts::kSweepLost));
        trim_sha = commands.add_script(std::string(scripts::kTrimOutbox));
        // A blocking read must end well before the connection's own request deadline fires.
        block = std::max(std::chrono::milliseconds{10}, std::min(options.block, redis_cfg.request_timeout / 2));
        cluster = !redis_cfg.cluster.nodes.empty();
        if (options.wait_replicas > 0) {
            confirms = std::make_unique<store::RedisConnection>(ex, redis_cfg);
            confirm_router = store::ClusterRouter::of(*confirms);
            if (!cluster) {
                confirmer = std::make_unique<store::ReplicaConfirmer>(*confirms, store_keys.replicated(0),
                                                                      options.wait_replicas, options.wait_timeout);
            }
        }
    }

    asio::any_io_executor executor;
    DispatcherOptions options;
    DeliveryKeys keys;
    RetryPolicy policy;
    WebhookSigner signer;
    std::unique_ptr<HttpClient> http;
    // Two connections: a blocked XREADGROUP holds its connection for up to `block`, and the
    // acknowledgements of finished deliveries must not queue behind it.
    store::RedisConnection commands;
    store::RedisConnection reads;
    store::Keys store_keys;  ///< the bill store's keys (each shard's replicated key)
    /// With wait_replicas: the connection replica confirmations run on (a WAIT holds every later
    /// reply on its connection), and its confirmer, or with Cluster one per master.
    std::unique_ptr<store::RedisConnection> confirms;
    store::ClusterRouter* confirm_router{nullptr};
    std::unique_ptr<store::ReplicaConfirmer> confirmer;
    std::unordered_map<std::string, std::unique_ptr<store::ReplicaConfirmer>> node_confirmers;
    std::string record_sha;
    std::string pop_sha;
    std::string reclaim_sha;
    std::string renew_sha;
    std::string stats_sha;
    std::string cleanup_sha;
    std::string sweep_sha;
    std::string trim_sha;
    std::unordered_map<std::string, int> shard_of_stream;
    std::mt19937_64 rng;
    DispatcherStats stats;

    asio::steady_timer slot_signal;
    asio::steady_timer drain_signal;
    asio::steady_timer post_signal;  ///< a POST finished (or gave up its turn)
    asio::steady_timer read_backoff;
    asio::steady_timer retry_timer;
    asio::steady_timer reclaim_timer;
    asio::steady_timer stats_timer;
    std::size_t concurrency;
    std::chrono::milliseconds block{1'000};
    /// Redis Cluster: one XREADGROUP over the streams of several shards is CROSSSLOT, so each
    /// shard is read on its own, without BLOCK, every kClusterPoll while nothing arrives.
    bool cluster{false};
    Clock::time_point last_failure_log{};
    /// refresh_stats(): each shard's last answer; a shard that fails keeps its last known values
    /// in the gauges (they are sums over the shards) until it answers again.
    struct ShardGauges {
        std::uint64_t pending{0};
        std::uint64_t lag{0};
        std::int64_t oldest_ms{0};
        std::uint64_t retrying{0};
        std::uint64_t dead{0};
        std::int64_t read_ms{0};  ///< when they were read (0: never)
    };
    std::vector<ShardGauges> shard_gauges;
    std::size_t held{0};      ///< items read and not yet settled
    std::size_t reserved{0};  ///< slots promised to a read, pop or reclaim still waiting for Redis
    std::size_t posting{0};   ///< deliveries renewing their lease or POSTing (at most `concurrency`)
    /// Per bill (shard + bill id): items waiting behind the one in flight.
    std::unordered_map<std::string, std::shared_ptr<std::deque<Item>>> bill_queues;
    /// Entries held (queued or in flight), by shard + entry id -> the lease token of the item
    /// (Item::lease_until). A reclaim or pop of an entry already held is not queued a second time.
    std::unordered_map<std::string, std::int64_t> active;
    std::size_t retry_next{0};    ///< shard retry_loop's next pass starts at
    std::size_t reclaim_next{0};  ///< shard reclaim_loop's next pass starts at
    bool stopping{false};
    bool groups_ready{false};

    double uniform() { return std::uniform_real_distribution<double>(0.0, 1.0)(rng); }

    std::size_t free_slots() const { return held + reserved >= concurrency ? 0 : concurrency - held - reserved; }

    /// Gives back slots reserved for a read, pop or reclaim, and wakes the loops waiting for slots.
    void release(std::size_t slots)
    {
        reserved -= slots;
        slot_signal.cancel();
    }

    static std::string active_key(const Item& item) { return std::to_string(item.shard) + '\n' + item.entry_id; }

    static asio::awaitable<void> sleep(asio::steady_timer& timer, std::chrono::milliseconds d)
    {
        timer.expires_after(d);
        co_await timer.async_wait(kUseTuple);
    }

    static asio::awaitable<void> wait_signal(asio::steady_timer& signal)
    {
        // Several loops may wait on one signal; setting the expiry again would cancel the others.
        if (signal.expiry() != asio::steady_timer::time_point::max()) {
            signal.expires_at(asio::steady_timer::time_point::max());
        }
        co_await signal.async_wait(kUseTuple);
    }

    void note_redis_failure(std::string_view what, const boost::system::error_code& ec)
    {
        if (ec == errc::shutting_down) {
            return;
        }
        stats.redis_errors.fetch_add(1, std::memory_order_relaxed);
        // With Cluster one master down fails its shards in every pass of every loop: logged at
        // most once a second (the counter has them all).
        const Clock::time_point now = Clock::now();
        if (cluster && now - last_failure_log < std::chrono::seconds(1)) {
            return;
        }
        last_failure_log = now;
        log::warning("crm.redis_failed", {{"op", what}, {"error", ec.message()}});
    }

    /// With Cluster, a failure that concerns one shard's master only (the loops over the shards
    /// go on with the next shard).
    bool shard_unreachable(const boost::system::error_code& ec) const noexcept
    {
        return cluster && (ec == errc::store_unavailable || ec == errc::timeout);
    }

    void note_redis_error_reply(std::string_view what, const Reply& reply)
    {
        stats.redis_errors.fetch_add(1, std::memory_order_relaxed);
        log::error("crm.redis_error", {{"op", what}, {"error", reply.str}});
    }

    /// The shards that one housekeeping pass (stats, consumer cleanup, trim) could not do: the pass
    /// goes on with the others and logs them once at its end (log_pass), not once per shard and pass.
    struct ShardFailures {
        std::string shards;  ///< "0,5"
        std::string error;   ///< the first failure's name

        void add(int shard, std::string_view name)
        {
            if (!shards.empty()) {
                shards += ',';
            } else {
                error = std::string(name);
            }
            shards += std::to_string(shard);
        }
    };

    /// A command of such a pass failed. Returns whether the pass goes on with the next shard: yes
    /// with Cluster (the shard's master may be down while the others answer), not with one node
    /// (the connection serves every shard) nor when shutting down.
    bool note_shard_failure(ShardFailures& failures, int shard, const boost::system::error_code& ec)
    {
        if (ec == errc::shutting_down) {
            return false;
        }
        stats.redis_errors.fetch_add(1, std::memory_order_relaxed);
        failures.add(shard, error_name(ec));
        return shard_unreachable(ec);
    }

    /// A shard answered such a pass with an error reply (or a reply of the wrong shape): that
    /// shard's own problem (a key of the wrong type, a script error), so the pass goes on.
    void note_shard_error_reply(ShardFailures& failures, int shard, const Reply& reply)
    {
        stats.redis_errors.fetch_add(1, std::memory_order_relaxed);
        if (!reply.is_error()) {
            failures.add(shard, "unexpected_reply");
            return;
        }
        const std::string_view text(reply.str);
        failures.add(shard, text.substr(0, text.find(' ')));  // "WRONGTYPE", "NOSCRIPT", "ERR", ...
    }

    static void log_pass(std::string_view op, const ShardFailures& failures)
    {
        if (!failures.shards.empty()) {
            log::warning("crm.shards_failed", {{"op", op}, {"shards", failures.shards}, {"error", failures.error}});
        }
    }

    asio::awaitable<bool> ensure_groups()
    {
        std::vector<std::vector<std::string>> cmds;
        for (const ShardKeys& k : keys.all()) {
            // From id 0: entries written before the group existed are delivered too.
            std::vector<std::string> create{"XGROUP", "CREATE", k.stream, options.group, "0", "MKSTREAM"};
            cmds.push_back(std::move(create));
        }
        // Each shard on its own: with Cluster, a master that cannot be reached must not keep the
        // others' shards from being read. Its streams get their group when it is back (a read
        // there then answers NOGROUP, and this runs again).
        std::vector<Result<Reply>> replies = co_await commands.exec_each(std::move(cmds));
        std::size_t created = 0;
        for (const Result<Reply>& r : replies) {
            if (!r) {
                note_redis_failure("xgroup_create", r.error());
                if (!cluster) {
                    co_return false;  // one node: the whole batch failed
                }
                continue;
            }
            if (r->is_error() && !r->str.starts_with("BUSYGROUP")) {
                note_redis_error_reply("xgroup_create", *r);
                co_return false;
            }
            ++created;
        }
        if (created == 0) {
            co_return false;
        }
        groups_ready = true;
        co_return true;
    }

    asio::awaitable<void> mark_pending(const std::vector<Item>& items)
    {
        const std::string now = std::to_string(now_ms());
        std::vector<std::vector<std::string>> cmds;
        cmds.reserve(items.size() * 4);
        for (const Item& item : items) {
            const ShardKeys& k = keys.shard(item.shard);
            const std::string delivery = k.delivery(item.event_id);
            std::vector<std::string> hset{"HSET",     delivery,     "state",   "pending",     "event_id",
                                          item.event_id, "entry_id", item.entry_id, "bill_id", item.bill_id,
                                          "type",   item.type,    "updated_at", now};
            std::vector<std::string> first_seen{"HSETNX", delivery, "first_seen_at", now};
            std::vector<std::string> attempts{"HSETNX", delivery, "attempts", "0"};
            std::vector<std::string> index{"ZADD", k.idx_pending, now, item.event_id};
            cmds.push_back(std::move(hset));
            cmds.push_back(std::move(first_seen));
            cmds.push_back(std::move(attempts));
            cmds.push_back(std::move(index));
        }
        if (cmds.empty()) {
            co_return;
        }
        // Best effort: the outcome script writes the full record anyway.
        Result<std::vector<Reply>> replies = co_await commands.exec_many(std::move(cmds));
        if (!replies) {
            note_redis_failure("mark_pending", replies.error());
        }
    }

    /// Queues each item behind the earlier items of its bill still in flight (one task per bill
    /// drains its queue), so that a healthy CRM receives a bill's events in sequence order.
    /// Returns how many of the items were not already held here.
    std::size_t dispatch(std::vector<Item> items)
    {
        std::size_t fresh_items = 0;
        for (Item& item : items) {
            const auto [held_entry, fresh] = active.try_emplace(active_key(item), item.lease_until);
            if (!fresh) {
                // Already queued here (its lease ran out while it waited): keep one copy, with the
                // newest retry lease if this one was popped again.
                if (item.lease_until != 0) {
                    held_entry->second = item.lease_until;
                }
                continue;
            }
            ++held;
            ++fresh_items;
            std::string key = item.bill_id.empty() ? "#" + item.entry_id
                                                   : std::to_string(item.shard) + '\n' + item.bill_id;
            const auto it = bill_queues.find(key);
            if (it != bill_queues.end()) {
                it->second->push_back(std::move(item));
                continue;
            }
            auto queue = std::make_shared<std::deque<Item>>();
            queue->push_back(std::move(item));
            bill_queues.emplace(key, queue);
            asio::awaitable<void> task = drain_bill(std::move(key), std::move(queue));
            asio::co_spawn(executor, std::move(task), LogFailure("crm.delivery_task_failed"));
        }
        stats.in_flight.store(held, std::memory_order_relaxed);
        return fresh_items;
    }

    asio::awaitable<void> drain_bill(std::string key, std::shared_ptr<std::deque<Item>> queue)
    {
        while (!queue->empty()) {
            Item item = std::move(queue->front());
            queue->pop_front();
            std::string entry = active_key(item);
            try {
                co_await deliver(std::move(item));
            } catch (const std::exception& ex) {
                // A bug; the entry stays outstanding and comes back after the lease.
                log::error("crm.delivery_failed", {{"what", ex.what()}});
            }
            active.erase(entry);
            --held;
            stats.in_flight.store(held, std::memory_order_relaxed);
            slot_signal.cancel();
            if (held == 0) {
                drain_signal.cancel();
            }
        }
        bill_queues.erase(key);
    }

    asio::awaitable<void> forget_missing(Item item)
    {
        // Nothing left to send (the stream was trimmed or the entry deleted by hand).
        const ShardKeys& k = keys.shard(item.shard);
        log::error("crm.entry_missing", {{"entry_id", item.entry_id}, {"shard", item.shard}});
        std::vector<std::string> zrem{"ZREM", k.retry, item.entry_id};
        std::vector<std::string> hdel{"HDEL", k.tries, item.entry_id};
        std::vector<std::string> ack{"XACK", k.stream, options.group, item.entry_id};
        std::vector<std::vector<std::string>> cmds;
        cmds.push_back(std::move(zrem));
        cmds.push_back(std::move(hdel));
        cmds.push_back(std::move(ack));
        Result<std::vector<Reply>> replies = co_await commands.exec_many(std::move(cmds));
        if (!replies) {
            note_redis_failure("forget_missing", replies.error());
        }
    }

    /// The lease ran from the read or pop; the item may since have waited behind its bill's earlier
    /// events. Renews it now, just before the POST; false when it is no longer ours (another
    /// instance took it over, or a redeliver put it back in the retry zset) or Redis did not answer
    /// (then it comes back after the lease).
    /// Where a renewal ran: the replica confirmation that follows must count the replicas of the
    /// node that holds the entry.
    struct Renewal {
        std::uint64_t session{0};  ///< without Cluster: `commands`' session before and after
        config::Endpoint at;       ///< without Cluster: the node it ran on
        store::NodeSession ran;    ///< with Cluster
    };

    asio::awaitable<bool> renew_lease(const Item& item, Renewal& where)
    {
        const std::int64_t token = lease_token(item);
        const std::int64_t now = now_ms();
        const ShardKeys& k = keys.shard(item.shard);
        std::vector<std::string> script_keys{k.stream, k.retry};
        std::vector<std::string> args{options.group,
                                      options.consumer,
                                      item.entry_id,
                                      token == 0 ? std::string() : std::to_string(token),
                                      std::to_string(now),
                                      std::to_string(options.lease.count())};
        Result<Reply> reply = make_error_code(errc::store_unavailable);
        if (store::ClusterRouter* router = cluster && confirms ? store::ClusterRouter::of(commands) : nullptr) {
            Result<Reply> ran = co_await router->eval(renew_sha, std::move(script_keys), std::move(args), where.ran);
            reply = std::move(ran);
        } else {
            where.session = commands.session();
            Result<Reply> ran = co_await commands.eval(renew_sha, std::move(script_keys), std::move(args));
            reply = std::move(ran);
            where.at = commands.endpoint();
            if (commands.session() != where.session) {
                where.session = 0;  // reconnected meanwhile: which node ran it is not known
            }
        }
        if (!reply) {
            note_redis_failure("renew", reply.error());
            co_return false;
        }
        if (reply->is_error()) {
            note_redis_error_reply("renew", *reply);
            co_return false;
        }
        if (reply->integer != 1) {
            log::info("crm.lease_lost", {{"event_id", item.event_id}, {"entry_id", item.entry_id}});
            co_return false;
        }
        // kRenew's new score is the token from now on (looked up again: `active` may have been
        // rehashed while the script ran).
        if (const auto held_entry = active.find(active_key(item)); token != 0 && held_entry != active.end()) {
            held_entry->second = now + options.lease.count();
        }
        co_return true;
    }

    /// With wait_replicas: true once that many replicas of the node that holds the entry hold
    /// every write it had acknowledged (the entry's XADD among them). False otherwise: the entry
    /// is not sent, and comes back after its lease, as one whose renewal failed.
    asio::awaitable<bool> replicated(const Item& item, const Renewal& where)
    {
        if (!confirms) {
            co_return true;
        }
        Result<void> confirmed = make_error_code(errc::store_unavailable);
        if (cluster) {
            store::ClusterRouter* router = store::ClusterRouter::of(commands);
            if (router != nullptr && confirm_router != nullptr && where.ran.connection != 0 &&
                router->still(where.ran)) {
                const std::string node = where.ran.at.host + ":" + std::to_string(where.ran.at.port);
                std::unique_ptr<store::ReplicaConfirmer>& on_node = node_confirmers[node];
                if (!on_node) {
                    on_node = std::make_unique<store::ReplicaConfirmer>(*confirm_router, where.ran.at,
                                                                        options.wait_replicas, options.wait_timeout);
                }
                store::ReplicaConfirmer* node_confirmer = on_node.get();  // the map may rehash meanwhile
                Result<void> done = co_await node_confirmer->confirm_on_node(store_keys.replicated(item.shard));
                confirmed = done && !router->still(where.ran) ? make_error_code(errc::store_unavailable) : done;
            }
        } else if (where.session != 0 && commands.session() == where.session) {
            Result<void> done = co_await confirmer->confirm(&where.at);
            confirmed = done;
        }
        if (!confirmed) {
            note_redis_failure("confirm_replicas", confirmed.error());
            log::info("crm.not_replicated", {{"event_id", item.event_id},
                                             {"wait_replicas", options.wait_replicas},
                                             {"retry_in_ms", static_cast<std::int64_t>(options.lease.count())}});
        }
        co_return static_cast<bool>(confirmed);
    }

    /// What the attempt holds the entry by: a popped retry's score in the retry zset (the newest,
    /// if this instance popped it again while it waited), or 0 for an entry pending for us.
    std::int64_t lease_token(const Item& item) const
    {
        const auto held_entry = active.find(active_key(item));
        return held_entry == active.end() ? item.lease_until : held_entry->second;
    }

    asio::awaitable<void> deliver(Item item)
    {
        if (item.missing) {
            co_await forget_missing(std::move(item));
            co_return;
        }
        // The HTTP client would queue requests beyond `concurrency`; wait for a turn here instead,
        // so that the lease is renewed only when the POST can start at once.
        while (posting >= concurrency) {
            co_await wait_signal(post_signal);
        }
        ++posting;
        struct Turn {
            Impl& d;
            ~Turn()
            {
                --d.posting;
                d.post_signal.cancel();
            }
        } turn{*this};
        if (!item.malformed) {
            Renewal where;
            const bool ours = co_await renew_lease(item, where);
            if (!ours) {
                co_return;
            }
            const bool held_by_replicas = co_await replicated(item, where);
            if (!held_by_replicas) {
                co_return;
            }
        }
        const ShardKeys& k = keys.shard(item.shard);
        AttemptRecord record;
        record.consumer = options.consumer;
        record.attempt = item.prior_tries + 1;
        AttemptResult attempt;

        if (item.malformed) {
            // Not an event we can sign and send; keep it visible in the dead letters.
            record.error = "malformed outbox entry (no id or event field)";
            record.outcome = Verdict::dead;
            attempt.error = make_error_code(errc::malformed_request);
        } else {
            const std::int64_t ts = now_ms() / 1000;
            Headers headers;
            headers.emplace_back("Content-Type", "application/json");
            headers.emplace_back("webhook-id", item.event_id);
            headers.emplace_back("webhook-timestamp", std::to_string(ts));
            headers.emplace_back("webhook-signature", signer.sign(item.event_id, ts, item.body));
            std::string body = item.body;
            const Clock::time_point started = Clock::now();
            PostResult result = co_await http->post(std::move(headers), std::move(body));
            record.latency_ms =
                std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count();
            if (result.response) {
                attempt.status = result.response->status;
                record.status = attempt.status;
                record.body = result.response->body_head;
                if (!result.response->retry_after.empty()) {
                    attempt.retry_after = parse_retry_after(result.response->retry_after, now_ms());
                }
            } else {
                attempt.error = result.response.error();
                record.error = result.error_detail;
            }
            record.outcome = classify(attempt);
            if (record.outcome != Verdict::delivered) {
                const RetryDecision decision = policy.after_failure(record.attempt, attempt, uniform());
                record.outcome = decision.verdict;
                if (decision.verdict == Verdict::retry) {
                    record.next_at_ms = now_ms() + decision.delay.count();
                }
                if (record.error.empty()) {
                    record.error = "http status " + std::to_string(attempt.status);
                }
            }
        }

        record.at_ms = now_ms();
        const std::int64_t token = lease_token(item);
        std::vector<std::string> script_keys{k.stream,       k.retry,        k.tries,
                                             k.dead,         k.idx_pending,  k.idx_retrying,
                                             k.idx_delivered, k.delivery(item.event_id), k.attempts(item.event_id)};
        std::vector<std::string> args{std::string(to_string(record.outcome)),
                                      options.group,
                                      item.entry_id,
                                      item.event_id,
                                      std::to_string(record.at_ms),
                                      std::to_string(record.next_at_ms),
                                      to_json(record),
                                      record.error,
                                      record.status == 0 ? std::string() : std::to_string(record.status),
                                      std::to_string(options.record_ttl.count()),
                                      std::to_string(options.max_attempt_records),
                                      item.bill_id,
                                      item.type,
                                      std::string(kRetryHolder),
                                      options.consumer,
                                      token == 0 ? std::string() : std::to_string(token)};
        Result<Reply> reply = co_await commands.eval(record_sha, std::move(script_keys), std::move(args));

        stats.attempts.fetch_add(1, std::memory_order_relaxed);
        if (record.outcome != Verdict::delivered) {
            stats.failed_attempts.fetch_add(1, std::memory_order_relaxed);
        }
        if (!reply) {
            // The entry stays outstanding (PEL or retry zset with a lease), so it comes back.
            note_redis_failure("record", reply.error());
            co_return;
        }
        if (reply->is_error()) {
            note_redis_error_reply("record", *reply);
            co_return;
        }
        if (reply->is_integer() && reply->integer < 0) {
            // kRecord wrote nothing: the entry was settled meanwhile (delivered by another instance
            // after a reclaim, dead-lettered by the sweep). This attempt's failure is not the record's.
            log::info("crm.attempt_superseded", {{"event_id", item.event_id},
                                                 {"attempt", record.attempt},
                                                 {"status", static_cast<std::int64_t>(record.status)},
                                                 {"error", record.error}});
            co_return;
        }
        switch (record.outcome) {
            case Verdict::delivered:
                stats.delivered.fetch_add(1, std::memory_order_relaxed);
                log::debug("crm.delivered", {{"event_id", item.event_id},
                                             {"attempt", record.attempt},
                                             {"status", static_cast<std::int64_t>(record.status)},
                                             {"latency_ms", record.latency_ms}});
                break;
            case Verdict::retry:
                log::warning("crm.delivery_retry", {{"event_id", item.event_id},
                                                    {"attempt", record.attempt},
                                                    {"status", static_cast<std::int64_t>(record.status)},
                                                    {"error", record.error},
                                                    {"next_at_ms", record.next_at_ms}});
                break;
            case Verdict::dead:
                stats.dead_letters.fetch_add(1, std::memory_order_relaxed);
                log::error("crm.dead_letter", {{"event_id", item.event_id},
                                               {"attempt", record.attempt},
                                               {"status", static_cast<std::int64_t>(record.status)},
                                               {"error", record.error}});
                break;
        }
    }

    std::vector<Item> parse_read(const Reply& reply)
    {
        std::vector<Item> items;
        for (const Reply& stream : reply.elements) {
            if (!stream.is_array() || stream.elements.size() < 2) {
                continue;
            }
            const auto shard = shard_of_stream.find(stream.elements[0].str);
            if (shard == shard_of_stream.end()) {
                continue;
            }
            for (const Reply& entry : stream.elements[1].elements) {
                if (!entry.is_array() || entry.elements.empty()) {
                    continue;
                }
                const Reply* fields = entry.elements.size() > 1 ? &entry.elements[1] : nullptr;
                items.push_back(make_item(shard->second, entry.elements[0], fields, 0));
            }
        }
        return items;
    }

    /// What the cluster form of the read got: the entries of every shard that answered (as one
    /// XREADGROUP over every stream would return them), and the first failure of the others.
    struct ShardRead {
        Reply entries;
        std::size_t answered{0};            ///< shards that answered without an error
        boost::system::error_code failure;  ///< a shard's connection failed
        std::optional<Reply> refused;       ///< a shard's error reply
        bool nogroup{false};                ///< some shard's stream or group is missing
    };

    /// The cluster form of the read: one XREADGROUP per shard (no BLOCK), pipelined per master;
    /// a master that cannot be reached fails only its shards.
    asio::awaitable<ShardRead> read_each_shard(std::size_t count)
    {
        std::vector<std::vector<std::string>> cmds;
        for (const ShardKeys& k : keys.all()) {
            cmds.push_back({"XREADGROUP", "GROUP", options.group, options.consumer, "COUNT", std::to_string(count),
                            "STREAMS", k.stream, ">"});
        }
        std::vector<Result<Reply>> replies = co_await reads.exec_each(std::move(cmds));
        ShardRead read;
        read.entries.type = Reply::Type::array;
        for (Result<Reply>& r : replies) {
            if (!r) {
                if (!read.failure) {
                    read.failure = r.error();
                }
            } else if (r->is_error()) {
                read.nogroup = read.nogroup || r->str.starts_with("NOGROUP");
                if (!read.refused) {
                    read.refused = std::move(*r);
                }
            } else {
                ++read.answered;
                for (Reply& stream : r->elements) {
                    read.entries.elements.push_back(std::move(stream));
                }
            }
        }
        co_return read;
    }

    /// Entries just read are pending for this consumer: delivered even if stopping.
    asio::awaitable<void> take(const Reply& read)
    {
        std::vector<Item> items = parse_read(read);
        reserved += items.size();  // until dispatched, after mark_pending
        co_await mark_pending(items);
        release(items.size());
        dispatch(std::move(items));
    }

    asio::awaitable<void> read_loop()
    {
        std::chrono::milliseconds backoff = kBackoffMin;
        while (!stopping) {
            if (!commands.usable() || !reads.usable()) {
                // Still connecting (the connections log their own failures). With Cluster, one
                // master down stops only its shards' delivery.
                co_await sleep(read_backoff, std::chrono::milliseconds{50});
                continue;
            }
            if (!groups_ready) {
                const bool ok = co_await ensure_groups();
                if (!ok) {
                    if (stopping) {
                        break;
                    }
                    co_await sleep(read_backoff, backoff);
                    backoff = std::min(backoff * 2, kBackoffMax);
                    continue;
                }
            }
            if (free_slots() == 0) {
                co_await wait_signal(slot_signal);
                continue;
            }
            // COUNT applies to each stream: at most the free slots in all. With fewer free slots than
            // shards a read may still take one entry per shard (reading fewer streams would leave
            // the others unread while it blocks); the extra entries wait for a slot, and their lease
            // is renewed when their POST starts.
            const std::size_t shards = keys.all().size();
            const std::size_t budget = free_slots();
            const std::size_t count = std::max<std::size_t>(1, budget / shards);
            reserved += budget;
            if (cluster) {
                ShardRead read = co_await read_each_shard(count);
                release(budget);
                if (!read.entries.elements.empty()) {
                    co_await take(read.entries);
                }
                if (read.nogroup) {
                    groups_ready = false;  // a stream or group was deleted: create them again
                }
                if (read.failure) {
                    note_redis_failure("xreadgroup", read.failure);
                }
                if (read.refused) {
                    note_redis_error_reply("xreadgroup", *read.refused);
                }
                if ((read.failure || read.refused) && read.answered == 0) {
                    // Nothing answered: back off. While some shards answer, they are read at the
                    // usual pace and only the others fail.
                    if (stopping) {
                        break;
                    }
                    co_await sleep(read_backoff, backoff);
                    backoff = std::min(backoff * 2, kBackoffMax);
                    continue;
                }
                backoff = kBackoffMin;
                if (read.entries.elements.empty()) {
                    co_await sleep(read_backoff, kClusterPoll);  // as a BLOCK that timed out
                }
                co_await asio::post(executor, asio::use_awaitable);
                continue;
            }
            std::vector<std::string> argv{"XREADGROUP", "GROUP", options.group, options.consumer,
                                          "COUNT",      std::to_string(count), "BLOCK", std::to_string(block.count()),
                                          "STREAMS"};
            for (const ShardKeys& k : keys.all()) {
                argv.push_back(k.stream);
            }
            for (std::size_t i = 0; i < shards; ++i) {
                argv.emplace_back(">");
            }
            Result<Reply> reply = co_await reads.exec(std::move(argv));
            // The pop and reclaim loops may have waited for the slots this read held: let them go first.
            release(budget);
            if (!reply || reply->is_error()) {
                if (stopping) {
                    break;
                }
                if (!reply) {
                    note_redis_failure("xreadgroup", reply.error());
                } else {
                    if (reply->str.starts_with("NOGROUP")) {
                        groups_ready = false;  // the stream or group was deleted: create them again
                    }
                    note_redis_error_reply("xreadgroup", *reply);
                }
                co_await sleep(read_backoff, backoff);
                backoff = std::min(backoff * 2, kBackoffMax);
                continue;
            }
            backoff = kBackoffMin;
            if (reply->is_array()) {
                co_await take(*reply);
            }
            co_await asio::post(executor, asio::use_awaitable);
        }
    }

    asio::awaitable<void> retry_loop()
    {
        while (!stopping) {
            if (free_slots() == 0) {
                co_await wait_signal(slot_signal);
                continue;
            }
            // Each pass starts at the shard the last one could not reach (its budget ran out), so
            // that a shard with many due retries does not keep the later shards waiting.
            const std::size_t shards = keys.all().size();
            std::size_t visited = 0;
            for (; visited < shards; ++visited) {
                const ShardKeys& k = keys.all()[(retry_next + visited) % shards];
                if (stopping || free_slots() == 0 || !commands.usable()) {
                    break;
                }
                const std::int64_t now = now_ms();
                const std::size_t budget = free_slots();
                std::vector<std::string> script_keys{k.stream, k.retry, k.tries};
                std::vector<std::string> args{std::to_string(now), std::to_string(options.lease.count()),
                                              std::to_string(budget)};
                reserved += budget;
                Result<Reply> reply = co_await commands.eval(pop_sha, std::move(script_keys), std::move(args));
                release(budget);
                if (!reply) {
                    note_redis_failure("pop_due", reply.error());
                    if (shard_unreachable(reply.error())) {
                        continue;  // another master's shards may still be served
                    }
                    break;
                }
                if (reply->is_error()) {
                    note_redis_error_reply("pop_due", *reply);
                    break;
                }
                std::vector<Item> items = parse_claimed(*reply, k.shard);
                for (Item& item : items) {
                    item.lease_until = now + options.lease.count();  // the score kPopDue gave it
                }
                if (!items.empty()) {
                    dispatch(std::move(items));
                }
            }
            retry_next = (retry_next + std::max<std::size_t>(visited, 1)) % shards;
            if (stopping) {
                break;
            }
            co_await sleep(retry_timer, options.retry_poll);
        }
    }

    asio::awaitable<void> reclaim_loop()
    {
        const std::chrono::milliseconds interval = options.reclaim_interval.count() > 0
                                                       ? options.reclaim_interval
                                                       : std::max(options.lease / 2, std::chrono::milliseconds{50});
        while (!stopping) {
            co_await sleep(reclaim_timer, interval);
            while (!stopping && free_slots() == 0) {
                co_await wait_signal(slot_signal);
            }
            if (stopping || !groups_ready || !commands.usable()) {
                continue;
            }
            const std::size_t shards = keys.all().size();  // rotated as in retry_loop
            std::size_t visited = 0;
            for (; visited < shards; ++visited) {
                const ShardKeys& k = keys.all()[(reclaim_next + visited) % shards];
                if (stopping || free_slots() == 0) {
                    break;
                }
                const std::size_t budget = free_slots();
                std::vector<std::string> script_keys{k.stream, k.retry, k.tries};
                std::vector<std::string> args{options.group,
                                              options.consumer,
                                              std::to_string(options.lease.count()),
                                              std::to_string(budget),
                                              std::to_string(kReclaimScan),
                                              std::string(kRetryHolder)};
                reserved += budget;
                Result<Reply> reply = co_await commands.eval(reclaim_sha, std::move(script_keys), std::move(args));
                release(budget);
                if (!reply) {
                    note_redis_failure("reclaim", reply.error());
                    if (shard_unreachable(reply.error())) {
                        continue;
                    }
                    break;
                }
                if (reply->is_error()) {
                    if (reply->str.find("NOGROUP") != std::string::npos) {
                        groups_ready = false;
                    }
                    note_redis_error_reply("reclaim", *reply);
                    break;
                }
                if (!reply->is_array()) {
                    continue;
                }
                std::vector<Item> items = parse_claimed(*reply, k.shard);
                // Entries of this instance's own that waited behind their bill longer than the lease
                // are claimed again too, and stay queued where they are: not taken over.
                const std::size_t taken = dispatch(std::move(items));
                if (taken > 0) {
                    stats.reclaimed.fetch_add(taken, std::memory_order_relaxed);
                    log::info("crm.reclaimed", {{"shard", k.shard}, {"count", taken}});
                }
            }
            reclaim_next = (reclaim_next + std::max<std::size_t>(visited, 1)) % shards;
            if (!stopping) {
                co_await sweep_lost();
            }
        }
    }

    /// Dead-letters the delivery records whose outbox entry was deleted from the stream while still
    /// outstanding (kSweepLost): a bounded look at each shard's old pending and retrying records.
    /// It delivers nothing, so it takes no slots.
    asio::awaitable<void> sweep_lost()
    {
        for (const ShardKeys& k : keys.all()) {
            if (stopping) {
                break;
            }
            // The record and attempts keys are built in the script from the two prefixes (with the
            // shard's tag, so in the same Cluster slot as the other keys).
            std::vector<std::string> script_keys{k.stream,        k.retry,       k.tries,
                                                 k.dead,          k.idx_pending, k.idx_retrying,
                                                 k.idx_delivered, k.sweep,       k.delivery_prefix,
                                                 k.attempts_prefix};
            std::vector<std::string> args{options.group,
                                          std::to_string(now_ms()),
                                          std::to_string(2 * options.lease.count()),
                                          std::to_string(kSweepScan),
                                          std::string(kEntryDeletedError)};
            Result<Reply> reply = co_await commands.eval(sweep_sha, std::move(script_keys), std::move(args));
            if (!reply) {
                note_redis_failure("sweep_lost", reply.error());
                if (shard_unreachable(reply.error())) {
                    continue;
                }
                break;
            }
            if (reply->is_error()) {
                note_redis_error_reply("sweep_lost", *reply);
                break;
            }
            for (const Reply& row : reply->elements) {
                if (!row.is_array() || row.elements.size() < 2) {
                    continue;
                }
                stats.dead_letters.fetch_add(1, std::memory_order_relaxed);
                log::error("crm.dead_letter", {{"event_id", row.elements[1].str},
                                               {"entry_id", row.elements[0].str},
                                               {"shard", k.shard},
                                               {"error", kEntryDeletedError}});
            }
        }
    }

    asio::awaitable<void> refresh_stats()
    {
        ShardFailures failures;
        for (const ShardKeys& k : keys.all()) {
            std::vector<std::string> script_keys{k.stream, k.retry, k.dead};
            std::vector<std::string> args{options.group};
            Result<Reply> reply = co_await commands.eval(stats_sha, std::move(script_keys), std::move(args));
            if (!reply) {
                if (!note_shard_failure(failures, k.shard, reply.error())) {
                    break;
                }
                continue;
            }
            if (reply->is_error() || !reply->is_array() || reply->elements.size() < 5) {
                note_shard_error_reply(failures, k.shard, *reply);
                continue;
            }
            const std::vector<Reply>& v = reply->elements;
            ShardGauges& g = shard_gauges[static_cast<std::size_t>(k.shard)];
            g.pending = static_cast<std::uint64_t>(std::max<std::int64_t>(0, v[0].integer));
            g.lag = static_cast<std::uint64_t>(std::max<std::int64_t>(0, v[1].integer));
            g.oldest_ms = v[2].integer;
            g.retrying = static_cast<std::uint64_t>(std::max<std::int64_t>(0, v[3].integer));
            g.dead = static_cast<std::uint64_t>(std::max<std::int64_t>(0, v[4].integer));
            g.read_ms = now_ms();
        }
        log_pass("stats", failures);
        std::uint64_t backlog = 0;
        std::uint64_t retrying = 0;
        std::uint64_t dead = 0;
        std::int64_t oldest = 0;
        std::int64_t read_at = std::numeric_limits<std::int64_t>::max();
        for (const ShardGauges& g : shard_gauges) {
            read_at = std::min(read_at, g.read_ms);
            backlog += g.pending + g.lag;
            retrying += g.retrying;
            dead += g.dead;
            if (g.oldest_ms > 0 && (oldest == 0 || g.oldest_ms < oldest)) {
                oldest = g.oldest_ms;
            }
        }
        stats.backlog.store(backlog, std::memory_order_relaxed);
        stats.retrying.store(retrying, std::memory_order_relaxed);
        stats.dead.store(dead, std::memory_order_relaxed);
        stats.oldest_pending_age_ms.store(oldest == 0 ? 0 : std::max<std::int64_t>(0, now_ms() - oldest),
                                          std::memory_order_relaxed);
        stats.oldest_pending_at_ms.store(oldest, std::memory_order_relaxed);
        stats.stats_at_ms.store(shard_gauges.empty() ? 0 : read_at, std::memory_order_relaxed);
    }

    asio::awaitable<void> cleanup_consumers()
    {
        ShardFailures failures;
        for (const ShardKeys& k : keys.all()) {
            std::vector<std::string> script_keys{k.stream};
            std::vector<std::string> args{options.group, options.consumer,
                                          std::to_string(options.consumer_cleanup_idle.count())};
            Result<Reply> reply = co_await commands.eval(cleanup_sha, std::move(script_keys), std::move(args));
            if (!reply) {
                if (!note_shard_failure(failures, k.shard, reply.error())) {
                    break;
                }
                continue;
            }
            if (reply->is_error()) {
                note_shard_error_reply(failures, k.shard, *reply);
            }
        }
        log_pass("cleanup_consumers", failures);
    }

    /// Trims every shard's outbox below the oldest entry still needed (kTrimOutbox). It delivers
    /// nothing and runs off the delivery path, between stats refreshes. One call removes at most
    /// 10,000 entries, and whole stream nodes only (approximate trimming, so that Redis is never
    /// blocked long): a shard is trimmed again while its calls remove something, at most
    /// kTrimRounds calls per pass; what one node still holds below the floor goes in a later pass.
    asio::awaitable<void> trim_outbox()
    {
        const std::string cutoff = std::to_string(now_ms() - options.outbox_retention.count());
        ShardFailures failures;
        for (const ShardKeys& k : keys.all()) {
            if (stopping) {
                break;
            }
            std::int64_t trimmed = 0;
            std::string below;
            bool go_on = true;
            for (int round = 0; round < kTrimRounds && !stopping; ++round) {
                // Dead letters' records are read in the script from the delivery prefix (with the
                // shard's tag, so in the same Cluster slot as the declared keys).
                std::vector<std::string> script_keys{k.stream, k.retry, k.dead, k.delivery_prefix};
                std::vector<std::string> args{cutoff, std::to_string(options.trim_max_scan)};
                Result<Reply> reply = co_await commands.eval(trim_sha, std::move(script_keys), std::move(args));
                if (!reply) {
                    go_on = note_shard_failure(failures, k.shard, reply.error());
                    break;
                }
                if (reply->is_error() || !reply->is_array() || reply->elements.size() < 2) {
                    note_shard_error_reply(failures, k.shard, *reply);
                    break;  // this shard's problem; the others are still trimmed
                }
                const std::vector<Reply>& v = reply->elements;
                if (v[1].str == "busy") {
                    log::warning("crm.outbox_trim_skipped",
                                 {{"shard", k.shard},
                                  {"retrying_and_dead", v.size() > 2 ? v[2].integer : 0},
                                  {"max_scan", options.trim_max_scan},
                                  {"why", "too many retries and dead letters to look at; trimmed once they are worked off"}});
                    break;
                }
                if (v[0].integer <= 0) {
                    break;
                }
                trimmed += v[0].integer;
                below = v.size() > 2 ? v[2].str : "";
            }
            if (trimmed > 0) {
                stats.outbox_trimmed.fetch_add(static_cast<std::uint64_t>(trimmed), std::memory_order_relaxed);
                log::info("crm.outbox_trimmed", {{"shard", k.shard}, {"count", trimmed}, {"below", below}});
            }
            if (!go_on) {
                break;
            }
        }
        log_pass("trim_outbox", failures);
    }

    std::chrono::milliseconds trim_every() const
    {
        if (options.trim_interval.count() > 0) {
            return options.trim_interval;
        }
        return std::clamp<std::chrono::milliseconds>(options.outbox_retention / 10, std::chrono::seconds{1},
                                                     std::chrono::minutes{10});
    }

    asio::awaitable<void> stats_loop()
    {
        const std::chrono::milliseconds cleanup_every =
            std::min(options.consumer_cleanup_idle, std::chrono::milliseconds{std::chrono::minutes{10}});
        Clock::time_point last_cleanup = Clock::now();
        const bool trimming = options.outbox_retention.count() > 0;
        Clock::time_point last_trim = Clock::now() - trim_every();  // the first pass runs at once
        while (!stopping) {
            if (commands.usable() && groups_ready) {
                co_await refresh_stats();
                if (Clock::now() - last_cleanup >= cleanup_every) {
                    last_cleanup = Clock::now();
                    co_await cleanup_consumers();
                }
                if (trimming && !stopping && Clock::now() - last_trim >= trim_every()) {
                    last_trim = Clock::now();
                    co_await trim_outbox();
                }
            }
            if (stopping) {
                break;
            }
            co_await sleep(stats_timer, options.stats_interval);
        }
    }
};

Result<std::unique_ptr<Dispatcher>> Dispatcher::create(asio::any_io_executor executor,
                                                       const config::RedisConfig& redis,
                                                       DispatcherOptions options)
{
    if (options.concurrency <= 0 || options.shards < 1 || options.lease.count() <= 0 ||
        options.max_attempt_records == 0 || options.group.empty() || options.consumer == kRetryHolder) {
        return make_error_code(errc::invalid_argument);
    }
    // An attempt that outlives the lease would be reclaimed (and sent again) by another instance.
    if (options.lease <= options.http.timeout) {
        return make_error_code(errc::invalid_argument);
    }
    Result<WebhookSigner> signer = WebhookSigner::create(options.secrets);
    if (!signer) {
        return signer.error();
    }
    options.http.concurrency = options.concurrency;
    Result<std::unique_ptr<HttpClient>> http = HttpClient::create(executor, options.http);
    if (!http) {
        return http.error();
    }
    if (options.consumer.empty()) {
        options.consumer = make_consumer_name();
    }
    auto impl = std::make_unique<Impl>(executor, redis, std::move(options), std::move(*signer), std::move(*http));
    return std::unique_ptr<Dispatcher>(new Dispatcher(std::move(impl)));
}

Dispatcher::Dispatcher(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Dispatcher::~Dispatcher() = default;

asio::awaitable<void> Dispatcher::run()
{
    using namespace asio::experimental::awaitable_operators;
    Impl& d = *impl_;
    d.stats.started_at_ms.store(now_ms(), std::memory_order_relaxed);
    d.commands.start();
    d.reads.start();
    if (d.confirms) {
        d.confirms->start();
    }
    log::info("crm.dispatcher_started", {{"consumer", d.options.consumer},
                                         {"shards", d.keys.shards()},
                                         {"concurrency", d.options.concurrency},
                                         {"url", d.http->url().host_header}});
    asio::awaitable<void> reader = d.read_loop();
    asio::awaitable<void> retrier = d.retry_loop();
    asio::awaitable<void> reclaimer = d.reclaim_loop();
    asio::awaitable<void> reporter = d.stats_loop();
    std::exception_ptr failure;
    try {
        co_await (std::move(reader) && std::move(retrier) && std::move(reclaimer) && std::move(reporter));
    } catch (...) {
        // A bug in one loop (the others were cancelled with it). The deliveries in flight use this
        // object: wind down as after stop(), then let the caller know (the daemon restarts it).
        failure = std::current_exception();
    }
    if (failure) {
        stop();
    }

    // Deliveries already started finish (bounded by the HTTP timeout) and are recorded.
    while (d.held > 0) {
        co_await Impl::wait_signal(d.drain_signal);
    }
    d.http->close_idle();
    d.commands.stop();
    d.reads.stop();
    if (d.confirms) {
        d.confirms->stop();
    }
    // The connections' own loops end on the io_context's next turns (their aborted operations are
    // already queued); give them those turns so the Dispatcher may be destroyed when run() returns.
    d.read_backoff.expires_after(std::chrono::milliseconds{50});
    co_await d.read_backoff.async_wait(kUseTuple);
    log::info("crm.dispatcher_stopped", {{"consumer", d.options.consumer}});
    if (failure) {
        std::rethrow_exception(failure);
    }
}

void Dispatcher::stop()
{
    Impl& d = *impl_;
    if (d.stopping) {
        return;
    }
    d.stopping = true;
    // The blocked XREADGROUP fails at once; the other loops wake from their timers.
    d.reads.stop();
    d.slot_signal.cancel();
    d.read_backoff.cancel();
    d.retry_timer.cancel();
    d.reclaim_timer.cancel();
    d.stats_timer.cancel();
}

const DispatcherStats& Dispatcher::stats() const noexcept
{
    return impl_->stats;
}

const std::string& Dispatcher::consumer() const noexcept
{
    return impl_->options.consumer;
}

}  // namespace paybridge::crm

#pragma once

// An asynchronous, pipelined Redis connection on one Asio executor: to one node, to the master a
// set of sentinels names, or (redis.cluster) to a Redis Cluster through one such connection per
// master (store/redis_cluster.hpp routes each command to the owner of its key's hash slot).
//
// hiredis 0.14 is used only as the RESP codec (redisFormatCommandArgv to encode, redisReader to
// decode); the socket, deadlines, reconnects and request queue are ours. Many coroutines may call
// exec() concurrently: their commands are appended to one output buffer, flushed by a single writer
// in one write, and completed in FIFO order by a single reader as the replies arrive.

#include "config/config.hpp"
#include "core/result.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

struct redisReader;

namespace paybridge::store {

/// One RESP reply, copied out of hiredis (which is freed at once). Plain value type.
struct Reply {
    enum class Type { string, status, error, integer, nil, array };

    Type type{Type::nil};
    std::string str;           ///< string, status and error replies
    std::int64_t integer{0};   ///< integer replies
    std::vector<Reply> elements;  ///< array replies

    bool is_error() const noexcept { return type == Type::error; }
    bool is_nil() const noexcept { return type == Type::nil; }
    bool is_string() const noexcept { return type == Type::string; }
    bool is_array() const noexcept { return type == Type::array; }
    bool is_integer() const noexcept { return type == Type::integer; }
    /// True for a status reply equal to `text` ("OK", "PONG").
    bool is_status(std::string_view text) const noexcept { return type == Type::status && str == text; }
};

/// For a reply to `what` that is an error or of the wrong type: logs it (store.redis_error with
/// the error text, or store.unexpected_reply with the type) and returns errc::store_unavailable.
boost::system::error_code unexpected_reply(std::string_view what, const Reply& reply);

/// Counters, readable from any thread (relaxed atomics; written on the connection's executor).
struct RedisStats {
    std::atomic<std::uint64_t> commands{0};    ///< commands sent (each command of a batch counts)
    std::atomic<std::uint64_t> errors{0};      ///< error replies plus requests failed without a reply
    std::atomic<std::uint64_t> timeouts{0};    ///< requests that hit request_timeout
    std::atomic<std::uint64_t> reconnects{0};  ///< connection attempts after a failure or loss
    std::atomic<std::uint64_t> in_flight{0};   ///< commands sent or queued, reply not yet read
    std::atomic<std::uint64_t> writes{0};      ///< socket writes; each carries every command queued before it
    std::atomic<std::uint64_t> redirects{0};   ///< Cluster MOVED and ASK replies followed
};

class ClusterRouter;

/// What a connection makes sure of before it serves, besides AUTH, SELECT and the scripts. Both
/// are on by default: paybridged's connections write, and must write neither to a replica nor with
/// a key layout other than the data's. Off only for a connection that is not a paybridge store (a
/// test's look at a replica or a sentinel, a scripted server). A cluster's node connections have
/// neither: the slot map says which nodes are masters (a replica answers MOVED, not READONLY), and
/// the layout is checked once for the whole cluster by the connection that owns the router.
struct ConnectionChecks {
    /// The node's HELLO role must be "master": at every connect, and every second while connected
    /// (HELLO on the connection itself, not counted in RedisStats). A node demoted behind the same
    /// address, as managed Redis fails over behind one endpoint, is left and connected to again
    /// (backoff as after any failure) until the address leads to a master. A write refused with
    /// READONLY leaves it at once. (With Sentinel, the role is checked at connect and READONLY
    /// acted on whatever this says.)
    bool master{true};
    /// The key-layout marker (store/layout.hpp) must match key_prefix and shards. Until it has been
    /// checked on the current connection, and while it does not match, ready() and usable() are
    /// false and every command fails with store_unavailable.
    bool layout{true};
};

/// A Redis connection. Not thread-safe: every call must happen on the executor given at
/// construction (a single-threaded io_context), which is what makes it lock-free.
///
/// Lifetime: call stop() and let the executor's io_context run out of work before destroying the
/// object; coroutines it spawned refer to it until then.
class RedisConnection {
public:
    RedisConnection(boost::asio::any_io_executor executor, const config::RedisConfig& cfg);
    /// A connection to one node (host/port of cfg) that counts into `shared` instead of stats of
    /// its own: what ClusterRouter makes for each cluster node. cfg.cluster must be empty.
    RedisConnection(boost::asio::any_io_executor executor, const config::RedisConfig& cfg, RedisStats& shared);
    ~RedisConnection();
    RedisConnection(const RedisConnection&) = delete;
    RedisConnection& operator=(const RedisConnection&) = delete;

    /// Replaces the checks (ConnectionChecks); before start().
    void set_checks(ConnectionChecks checks) noexcept;

    /// Registers a Lua script, loaded with SCRIPT LOAD on every (re)connect, and returns its SHA1
    /// (lower-case hex, as Redis computes it). Registering the same body twice is harmless.
    std::string add_script(std::string body);

    /// Spawns the run loop: connect (connect_timeout) -> AUTH -> SELECT -> SCRIPT LOAD -> ready ->
    /// serve. On any failure: every pending request fails with errc::store_unavailable, the
    /// connection backs off (100 ms doubling to 5 s, with jitter) and retries. Idempotent.
    ///
    /// With Sentinel (cfg.sentinel.nodes): before each connection the sentinels are asked, in
    /// turn (each within connect_timeout), where the master is, and the node each one names is
    /// connected to until one passes the handshake, which checks with HELLO (its "role", which
    /// needs no ACL category beyond @connection) that the node is a master. The backoff comes
    /// only after every sentinel's answer failed: a sentinel with a stale answer (a replica, a
    /// node that is down) costs one attempt, not the round. The sentinel whose answer made the
    /// connection is asked first next time. While connected, the sentinels are asked again every second; when
    /// the first to answer names another node, the connection is closed (and made again) only if
    /// that node reports role master, or the current one no longer does (or cannot be reached):
    /// one sentinel's stale view does not drop a working master (logged once as
    /// redis.sentinel_disagrees). A write refused with READONLY closes the connection at once.
    ///
    /// ConnectionChecks (on by default) add, in every mode but a cluster's node connections: the
    /// role check at connect (HELLO, as with Sentinel) and every second while connected, READONLY
    /// as a demotion, and the key-layout check after each connect (store/layout.hpp; with Cluster,
    /// once the masters' connections are up, and again each time they are all up again after a
    /// loss: ClusterRouter::generation()): a mismatch keeps the connection unready and
    /// refusing commands, is logged as redis.layout_mismatch by the first connection of the
    /// process to find it (while others are refused too, they say nothing), and is checked again
    /// every 5 s.
    void start();

    /// Closes the socket and stops reconnecting; pending requests fail with errc::shutting_down.
    /// Afterwards nothing of this object keeps the io_context busy. Idempotent.
    void stop();

    /// With Cluster (cfg.cluster.nodes): the nodes are asked for the slot map (CLUSTER SLOTS) at
    /// start, every 5 s, and at once after a MOVED reply or a node's failure; each master gets a
    /// connection as above, and start/stop/ready/exec/exec_many/eval act on all of them
    /// (store/redis_cluster.hpp says how commands are routed).
    ///
    /// Connected, authenticated, db selected, scripts loaded, and what ConnectionChecks asks for
    /// holds: the node reports role master, the key layout matches (with Cluster: every slot has a
    /// master, every master's connection is ready, and the layout matches).
    bool ready() const noexcept;

    /// The key-layout marker contradicts key_prefix/shards (the last check said so). Any thread.
    bool layout_refused() const noexcept { return layout_.load(std::memory_order_relaxed) == kLayoutRefused; }

    /// Waits until ready() or `limit` passes (polling); returns ready().
    boost::asio::awaitable<bool> wait_ready(std::chrono::milliseconds limit);

    /// Some commands can be served: ready(), or with Cluster every slot has a master and at least
    /// one master is ready (the others' slots fail until the cluster fails them over); never
    /// while the key layout is unchecked or does not match. For work that goes on per shard, like
    /// CRM delivery.
    bool usable() const noexcept;

    const RedisStats& stats() const noexcept { return *stats_; }

    /// Where this connection goes (the current master with Sentinel; unused with Cluster).
    const config::Endpoint& endpoint() const noexcept { return current_; }

    /// Counts the connection's sessions (each handshake that made it ready). Equal before a
    /// request and after its reply: the request was served by endpoint() in this session.
    std::uint64_t session() const noexcept { return session_; }

    /// Sends one command (binary-safe argv) and returns its reply. A Redis error reply is a
    /// value (Reply::Type::error), not a failure.
    /// Errors: store_unavailable (not ready, I/O error, connection lost), timeout (no reply within
    /// request_timeout; the connection then reconnects and fails the other pending requests with
    /// store_unavailable), shutting_down (after stop()), invalid_argument (empty argv).
    boost::asio::awaitable<Result<Reply>> exec(std::vector<std::string> argv);

    /// Sends the commands as one pipelined batch; the replies come back in the same order.
    /// Fails as a whole (same errors as exec) if any reply is missing.
    boost::asio::awaitable<Result<std::vector<Reply>>> exec_many(std::vector<std::vector<std::string>> commands);

    /// Like exec_many, but each command has a result of its own: with Cluster, the commands of a
    /// master that cannot be reached fail and the others' replies still come back. (On one node
    /// the batch still succeeds or fails as a whole.)
    boost::asio::awaitable<std::vector<Result<Reply>>> exec_each(std::vector<std::vector<std::string>> commands);

    /// With Cluster: "host:port" of the master that owns `key`'s slot now (empty: none known).
    /// Without: empty.
    std::string node_of(std::string_view key) const;

    /// EVALSHA sha numkeys keys... args...; on a NOSCRIPT error reply (Redis lost its script cache)
    /// retries once with EVAL and the registered body. Same errors as exec.
    boost::asio::awaitable<Result<Reply>> eval(std::string sha,
                                               std::vector<std::string> keys,
                                               std::vector<std::string> args);

private:
    friend class ClusterRouter;  // sends through submit() and reads node_ready()
    struct Waiter;
    struct Slot {
        Waiter* waiter;       ///< null once the caller gave up (timeout, cancellation)
        std::uint32_t index;  ///< position of this command in the waiter's batch
    };
    struct Script {
        std::string sha;
        std::string body;
    };
    struct ReaderFree {
        void operator()(redisReader* r) const noexcept;
    };

    static constexpr int kLayoutUnchecked = 0;
    static constexpr int kLayoutOk = 1;
    static constexpr int kLayoutRefused = 2;

    boost::asio::awaitable<void> run();
    boost::asio::awaitable<boost::system::error_code> connect_and_handshake();
    boost::asio::awaitable<boost::system::error_code> handshake();
    struct SentinelAnswer {
        config::Endpoint sentinel;  ///< who answered
        config::Endpoint master;    ///< the node it names
    };
    /// Sentinel mode: asks the sentinels in turn and connects (connect_and_handshake) to the node
    /// each names, until one is ready; the sentinel that named it moves to the front. Logs each
    /// failure (and redis.no_master when no sentinel named a node). Errors: the last attempt's,
    /// shutting_down.
    boost::asio::awaitable<boost::system::error_code> connect_via_sentinels();
    /// The first answer of the sentinels, asked in turn (the watch: failures are left to the
    /// caller's log). Errors: as the sentinels', shutting_down.
    boost::asio::awaitable<Result<SentinelAnswer>> ask_sentinels();
    /// One sentinel's answer within connect_timeout. `quiet`: failures are not logged.
    boost::asio::awaitable<Result<config::Endpoint>> ask_sentinel_within(config::Endpoint node, bool quiet);
    boost::asio::awaitable<Result<config::Endpoint>> ask_sentinel(config::Endpoint node, bool quiet);
    /// The role a data node reports to HELLO on a connection of its own (AUTH as configured),
    /// within connect_timeout: "master", "replica", or the error reply's text. Errors: the node
    /// cannot be reached or does not answer (timeout), shutting_down.
    boost::asio::awaitable<Result<std::string>> probe_role_within(config::Endpoint node);
    boost::asio::awaitable<Result<std::string>> probe_role(config::Endpoint node);
    /// While serving in Sentinel mode: returns (after closing the connection) once a sentinel
    /// names another node and that node reports master or the current one no longer does.
    boost::asio::awaitable<void> watch_master();
    /// While serving with ConnectionChecks::master: asks HELLO every second on the connection and
    /// returns (after closing it) once the node reports another role than master.
    boost::asio::awaitable<void> role_watch();
    /// With ConnectionChecks::layout: checks the key layout after each new session (with Cluster,
    /// whenever ClusterRouter::generation() moves), again every 5 s while it does not match, and
    /// opens or closes the gate (layout_) accordingly. Runs until stop().
    boost::asio::awaitable<void> layout_loop();
    /// The commands may be sent: no layout check, or it matched.
    bool layout_open() const noexcept
    {
        return !checks_.layout || layout_.load(std::memory_order_relaxed) == kLayoutOk;
    }
    /// exec_many and exec_each without the layout gate (the layout check's own commands).
    boost::asio::awaitable<Result<std::vector<Reply>>> exec_many_unguarded(std::vector<std::vector<std::string>> commands);
    boost::asio::awaitable<std::vector<Result<Reply>>> exec_each_unguarded(std::vector<std::vector<std::string>> commands);
    /// This connection no longer counts among the process's refused layouts (logged once for all).
    void uncount_refusal() noexcept;
    /// Counts `n` commands refused by the layout gate; returns store_unavailable (shutting_down after stop()).
    boost::system::error_code refused(std::size_t n) noexcept;
    boost::asio::awaitable<void> serve();
    boost::asio::awaitable<void> read_loop();
    boost::asio::awaitable<void> write_loop();

    /// Queues the commands and waits for all their replies (written to out[0..n)). `deadline`
    /// (ClusterRouter's, for the whole routed request) may end the wait before request_timeout:
    /// that gives up on the replies (timeout) without closing the connection. `counted`: false for
    /// the connection's own role check, which RedisStats does not count (commands, errors, writes).
    boost::asio::awaitable<boost::system::error_code> submit(
        const std::vector<std::string>* commands,
        std::size_t n,
        Reply* out,
        std::optional<std::chrono::steady_clock::time_point> deadline = std::nullopt,
        bool counted = true);
    void deliver_front(void* hiredis_reply);
    void abandon(std::uint64_t first_seq, std::size_t n) noexcept;
    void fail_pending(boost::system::error_code ec) noexcept;
    void close_io() noexcept;
    void wake_writer() noexcept;
    void update_in_flight() noexcept;
    bool node_ready() const noexcept { return ready_.load(std::memory_order_relaxed); }
    const Script* find_script(std::string_view sha) const noexcept;

    boost::asio::any_io_executor executor_;
    config::RedisConfig cfg_;
    boost::asio::ip::tcp::socket socket_;
    boost::asio::steady_timer write_signal_;
    boost::asio::steady_timer backoff_timer_;
    boost::asio::steady_timer connect_timer_;
    boost::asio::steady_timer watch_timer_;
    boost::asio::steady_timer sentinel_timer_;  ///< one sentinel's deadline (stop() cancels it)
    boost::asio::steady_timer probe_timer_;     ///< one role probe's deadline (stop() cancels it)
    boost::asio::steady_timer role_timer_;      ///< the role watch's wait (close_io() cancels it)
    boost::asio::steady_timer layout_timer_;    ///< the layout loop's wait (a new session, stop() cancel it)
    config::Endpoint current_;               ///< where the connection goes (the master, with Sentinel)
    /// Asked in this order; first, the one whose answer made the last ready connection.
    std::vector<config::Endpoint> sentinels_;
    bool demoted_{false};                      ///< a reply said READONLY: the node is no master now
    ConnectionChecks checks_;
    std::atomic<int> layout_{kLayoutUnchecked};  ///< kLayout*: the last layout check's verdict
    bool refusal_counted_{false};                  ///< counted in the process's refused layouts
    std::unique_ptr<redisReader, ReaderFree> reader_;
    std::unique_ptr<char[]> read_buf_;

    std::string out_buf_;    ///< encoded commands not yet handed to the writer
    std::string write_buf_;  ///< the batch being written
    std::size_t counted_unsent_{0};  ///< commands in out_buf_ that RedisStats counts (a write of none is not counted)
    std::deque<Slot> pending_;
    std::uint64_t head_seq_{0};  ///< sequence number of pending_.front()
    bool writer_idle_{false};

    std::vector<Script> scripts_;
    bool started_{false};
    bool stopped_{false};
    std::atomic<bool> ready_{false};
    std::uint64_t session_{0};
    RedisStats own_stats_;
    RedisStats* stats_;           ///< own_stats_, or a ClusterRouter's shared ones
    std::size_t reported_in_flight_{0};  ///< this connection's share of stats_->in_flight
    /// Since when pending_ has had no reply (the first request after a reply or an empty queue):
    /// no reply for request_timeout means the connection is stuck, whoever's deadline ended.
    std::chrono::steady_clock::time_point waiting_since_{};
    /// Bytes of a reply not yet complete (fed since the last complete one): bounded, so a server
    /// that never finishes a reply cannot grow the reader without limit.
    std::size_t partial_bytes_{0};
    std::unique_ptr<ClusterRouter> cluster_;  ///< with Cluster: routes every command
    // As a cluster's node connection (ClusterRouter sets these):
    ClusterRouter* router_{nullptr};  ///< told when ready_ changes
    bool attempted_{false};           ///< the first connection attempt has ended (either way)
    bool run_done_{false};            ///< the run loop has ended (after stop(): safe to destroy)
};

}  // namespace paybridge::store

#pragma once

// Redis Cluster behind a RedisConnection (config redis.cluster).
//
// The slot map comes from CLUSTER SLOTS, asked of a node paybridge has a ready connection to (the
// configured nodes to begin with; the node asked turns with every question, the target of the last
// MOVED first). Each master gets a pipelined RedisConnection of its own, made when the map (or a
// redirection) first names it. The map is asked for again every 5 s (every second while not every
// slot has a ready master), 100 ms after a MOVED reply, and after a failed node connection (at
// most once a second: a failover promotes a replica, and the next map names it). An answer that
// covers no slot (a node just added or reset) is not applied. A connection to a node that owns
// no slot and cannot be reached is stopped, and freed once nothing uses it.
//
// Routing: a command goes to the master of its key's hash slot (store/cluster_slot.hpp says which
// argument is the key); a keyless command (PING, WAIT, SCRIPT ...) to the first ready master or,
// inside exec_many, to the node of the command before it (else after it), so that SET k + WAIT
// share a connection. Every key of one paybridge script carries one hash tag, so no command is
// ever CROSSSLOT.
// Replies that name another node are followed, at most 5 times in a row: MOVED (the slot has
// moved: the map entry is corrected at once and the command sent there), ASK (the slot is being
// migrated and the key is already on the target: ASKING and the command, pipelined on the
// target's connection). TRYAGAIN (a multi-key command while its slot migrates) and CLUSTERDOWN are
// retried, from the slot's owner again, after 25, 50, 100, 200, then every 250 ms, and start the
// count of redirections afresh: a migration of the slot is waited out. A request, redirections
// and retries included, ends within request_timeout (a batch: all of it). A master
// whose connection was lost, or could not be made, fails its commands at once (store_unavailable);
// only a connection still making its first attempt (a node just named by a redirection) is
// waited for. A batch (exec_many) is split by node and each part
// pipelined; the parts run one after another; a command of a part that was redirected is sent
// again on its own, and a part in which a keyless command follows a redirected one fails
// (store_unavailable): the keyless command (a WAIT, say) went to a node that no longer owns what
// it was about.
//
// For replica confirmations (wait_replicas, store/replica_confirm.hpp), eval() also says which
// node ran a script, over which connection in which session (NodeSession), still() whether that
// connection is still in that session, and exec_at() sends commands to one given node, unrouted.
//
// Not thread-safe: every call on the executor of the RedisConnection that owns it, except ready()
// and usable(), which read atomics (the daemon's /readyz asks from other threads).

#include "config/config.hpp"
#include "core/result.hpp"
#include "store/redis_connection.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace paybridge::store {

/// Where a routed command got its reply: the node, and which of the router's connections to it,
/// in which session. A connection made again (or made anew to the same address) is another
/// session: what the node acknowledged on the old one may be gone (a restart, a failover).
struct NodeSession {
    config::Endpoint at;
    std::uint64_t connection{0};  ///< the router's serial number of that node connection (0: none)
    std::uint64_t session{0};     ///< that connection's RedisConnection::session() at the reply
};

class ClusterRouter {
public:
    /// `stats` (the owning RedisConnection's) counts the commands of every node connection.
    ClusterRouter(boost::asio::any_io_executor executor, const config::RedisConfig& cfg, RedisStats& stats);
    ~ClusterRouter();
    ClusterRouter(const ClusterRouter&) = delete;
    ClusterRouter& operator=(const ClusterRouter&) = delete;

    /// Every node connection, present and future, loads the script on connect.
    void add_script(const std::string& body);

    void start();
    void stop();

    /// Every slot has a master and every master's connection is ready. Any thread.
    bool ready() const noexcept { return ready_.load(std::memory_order_relaxed); }
    /// Every slot has a master and at least one master's connection is ready. Any thread.
    bool usable() const noexcept { return usable_.load(std::memory_order_relaxed); }

    /// "host:port" of the master that owns `key`'s slot now (empty: none known).
    std::string node_of(std::string_view key) const;

    /// Same contract as RedisConnection::exec / exec_many / exec_each, routed as described above.
    boost::asio::awaitable<Result<Reply>> exec(std::vector<std::string> argv);
    boost::asio::awaitable<Result<std::vector<Reply>>> exec_many(std::vector<std::vector<std::string>> commands);
    boost::asio::awaitable<std::vector<Result<Reply>>> exec_each(std::vector<std::vector<std::string>> commands);

    /// The router of a RedisConnection made with Cluster (cfg.cluster.nodes); null otherwise.
    static ClusterRouter* of(RedisConnection& conn) noexcept;

    /// RedisConnection::eval, routed like exec, that also says where the reply came from: `ran`
    /// (set whenever a node replied) names the node that ran the script, after any redirection.
    boost::asio::awaitable<Result<Reply>> eval(std::string sha,
                                               std::vector<std::string> keys,
                                               std::vector<std::string> args,
                                               NodeSession& ran);

    /// The connection `ran` names is ready and still in that session: the node has not been
    /// reconnected to (nor replaced by another connection) since.
    bool still(const NodeSession& ran) const noexcept;

    /// Sends the commands pipelined on this router's connection to `at` (made if there is none,
    /// as for a redirection's target), all of them there, whatever their keys: nothing is routed
    /// and no redirection is followed (a MOVED or ASK reply is returned like any other). For
    /// commands that must run on one given node. Errors: as exec_many.
    boost::asio::awaitable<Result<std::vector<Reply>>> exec_at(config::Endpoint at,
                                                               std::vector<std::vector<std::string>> commands);

    /// A node connection's readiness changed (called by it, on the executor).
    void node_changed() noexcept;

    /// Counts the times ready() or usable() became true (a node connection came back, a
    /// failover ended): the owner's key-layout check runs again when it has moved.
    std::uint64_t generation() const noexcept { return generation_; }
    /// Called (on the executor) whenever generation() moves.
    void set_on_change(std::function<void()> f);
    /// The owner's key-layout gate (RedisConnection ConnectionChecks::layout): while closed, eval()
    /// and exec_at() fail with store_unavailable (the owner gates exec, exec_many and exec_each
    /// itself). Open unless closed. Any thread.
    void set_open(bool open) noexcept { open_.store(open, std::memory_order_relaxed); }

    /// MOVED, ASK, TRYAGAIN or CLUSTERDOWN: a reply the router follows or retries.
    static bool redirection(const Reply& reply) noexcept;

private:
    struct Node {
        config::Endpoint at;
        std::unique_ptr<RedisConnection> conn;  ///< null once freed (the entry is reused)
        bool retired{false};                    ///< stopped: owns no slot and could not be reached
        int users{0};                           ///< requests holding a reference to conn
        std::uint64_t serial{0};                ///< unique per connection made (NodeSession)
    };
    /// Keeps a node's connection alive (not freed) while a request uses it.
    class Use;
    using Clock = std::chrono::steady_clock;
    static constexpr std::uint16_t kNoNode = 0xffff;

    boost::asio::awaitable<void> topology_loop();
    /// Asks ready nodes (else waits up to connect_timeout for one) for CLUSTER SLOTS and applies
    /// the first good answer. Returns whether the map was read.
    boost::asio::awaitable<bool> refresh();
    /// Applies a CLUSTER SLOTS reply from `asked`; false (and nothing changed) if it is malformed,
    /// covers no slot or would take paybridge past 1,000 node connections.
    bool apply_slots(const Reply& reply, const config::Endpoint& asked);
    /// After a MOVED (soon) or a failed node (at most once a second).
    void refresh_soon(bool moved) noexcept;
    std::uint16_t node_for(const config::Endpoint& at);
    /// A connection to `at` is open (not retired).
    [[nodiscard]] bool knows(const config::Endpoint& at) const;
    /// Node connections that exist (retired ones not yet freed included).
    [[nodiscard]] std::size_t live_nodes() const;
    void set_owner(int slot, std::uint16_t node);
    void update_ready() noexcept;
    void free_idle_nodes() noexcept;
    std::uint16_t any_ready_master() const noexcept;
    std::uint16_t slot_owner(const std::vector<std::string>& argv, bool& keyless) const noexcept;
    /// The node a command goes to first: its key's slot owner, a keyless one to any ready master.
    std::uint16_t route(const std::vector<std::string>& argv) const noexcept;
    /// Counts `n` failed commands and returns the error (store_unavailable, or shutting_down).
    boost::system::error_code failed(std::size_t n) noexcept;
    /// Whether `conn` can take a command now: ready, or ready by `deadline` if it is still making
    /// its first attempt. Asks for the slot map again when not.
    boost::asio::awaitable<bool> usable(RedisConnection& conn, Clock::time_point deadline);
    /// Sends one command to `node` and follows redirections until `deadline`; with `first`, that
    /// reply (from `node`) has already come back. `ran` (may be null): where a reply sent from
    /// here came from.
    boost::asio::awaitable<Result<Reply>> run_routed(std::vector<std::string> argv, std::uint16_t node,
                                                     std::optional<Reply> first, Clock::time_point deadline,
                                                     NodeSession* ran = nullptr);
    /// exec_many and exec_each: with `isolate`, a node's failure fails only its commands.
    boost::asio::awaitable<std::vector<Result<Reply>>> run_batch(std::vector<std::vector<std::string>> commands,
                                                                 bool isolate);

    boost::asio::any_io_executor executor_;
    config::RedisConfig node_cfg_;  ///< cfg without cluster; host/port set per node
    std::vector<config::Endpoint> seeds_;
    RedisStats& stats_;
    std::vector<std::string> scripts_;
    std::vector<std::unique_ptr<Node>> nodes_;  ///< entries are reused, never removed: indices are stable
    std::vector<std::uint16_t> owner_;          ///< slot -> index into nodes_, or kNoNode
    std::vector<std::uint16_t> masters_;        ///< the distinct values of owner_
    int unowned_{16384};                        ///< slots of owner_ without a node
    std::size_t next_asked_{0};                 ///< where the next slot-map question starts
    std::uint16_t prefer_{kNoNode};             ///< asked first next time (the last MOVED's target)
    std::uint64_t last_serial_{0};              ///< Node::serial of the last connection made
    Clock::time_point last_refresh_{};          ///< when the topology loop last asked
    Clock::time_point next_refresh_{Clock::time_point::max()};  ///< when it asks next
    std::atomic<bool> ready_{false};
    std::atomic<bool> usable_{false};
    std::atomic<bool> open_{true};
    std::uint64_t generation_{0};
    std::function<void()> on_change_;
    boost::asio::steady_timer refresh_timer_;   ///< the wait between two slot-map questions
    boost::asio::steady_timer gap_timer_;       ///< the short waits of the topology loop
    bool map_failing_{false};                   ///< the last question got no usable answer (logged once)
    bool started_{false};
    bool stopped_{false};
};

}  // namespace paybridge::store

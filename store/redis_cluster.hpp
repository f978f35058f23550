#pragma once

// Redis Cluster behind a RedisConnection (config redis.cluster).
//
// The slot map comes from CLUSTER SLOTS, asked of any node paybridge has a ready connection to (the
// configured nodes to begin with); each master gets a pipelined RedisConnection of its own, made
// when the map first names it and stopped when the map no longer does. The map is asked for again
// every 5 s (every second while not every slot has a ready master), and at once after a MOVED
// reply or a failed node connection (a failover promotes a replica: the next map names it).
//
// Routing: a command goes to the master of its key's hash slot (store/cluster_slot.hpp says which
// argument is the key); a keyless command (PING, WAIT, SCRIPT ...) to the first ready master or,
// inside exec_many, to the node of the command before it (else after it), so that SET k + WAIT
// share a connection. Every key of one paybridge script carries one hash tag, so no command is
// ever CROSSSLOT.
// Replies that name another node are followed, at most 5 times per command and within
// request_timeout: MOVED (the slot has moved: the map entry is corrected at once and the command
// sent there), ASK (the slot is being migrated and the key is already on the target: ASKING and
// the command, pipelined on the target's connection), TRYAGAIN and CLUSTERDOWN (retried after
// 20, 40, 80 ... ms). A batch (exec_many) is split by node and each part pipelined; the parts run
// one after another; a command of a part that was redirected is sent again on its own, and a
// part in which a keyless command follows a redirected one fails (store_unavailable): the keyless
// command (a WAIT, say) went to a node that no longer owns what it was about.
//
// Not thread-safe: every call on the executor of the RedisConnection that owns it.

#include "config/config.hpp"
#include "core/result.hpp"
#include "store/redis_connection.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace paybridge::store {

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

    /// Every slot has a master and every master's connection is ready.
    bool ready() const noexcept;

    /// The master that owns `slot` now, as "host:port" (empty: none known). For tests and logs.
    std::string owner_of(int slot) const;

    /// Same contract as RedisConnection::exec / exec_many, routed as described above.
    boost::asio::awaitable<Result<Reply>> exec(std::vector<std::string> argv);
    boost::asio::awaitable<Result<std::vector<Reply>>> exec_many(std::vector<std::vector<std::string>> commands);

private:
    struct Node {
        config::Endpoint at;
        std::unique_ptr<RedisConnection> conn;
        bool retired{false};  ///< stopped: no longer a master in the map (kept: callers may hold it)
    };
    static constexpr std::uint16_t kNoNode = 0xffff;

    boost::asio::awaitable<void> topology_loop();
    /// Asks the ready nodes (else waits up to connect_timeout for one) for CLUSTER SLOTS and
    /// applies the first good answer. Returns whether the map was read.
    boost::asio::awaitable<bool> refresh();
    /// Applies a CLUSTER SLOTS reply from `asked`; false (and nothing changed) if it is malformed.
    bool apply_slots(const Reply& reply, const config::Endpoint& asked);
    void refresh_soon() noexcept;
    std::uint16_t node_for(const config::Endpoint& at);
    std::uint16_t any_ready_master() const noexcept;
    /// The node a command goes to first: its key's slot owner, else any ready master.
    std::uint16_t route(const std::vector<std::string>& argv) const noexcept;
    void set_owner(int slot, std::uint16_t node);
    /// Sends one command to `node` and follows redirections; with `first`, that reply (from
    /// `node`) has already come back.
    boost::asio::awaitable<Result<Reply>> run_routed(std::vector<std::string> argv, std::uint16_t node,
                                                     std::optional<Reply> first);

    boost::asio::any_io_executor executor_;
    config::RedisConfig node_cfg_;  ///< cfg without cluster; host/port set per node
    std::vector<config::Endpoint> seeds_;
    RedisStats& stats_;
    std::vector<std::string> scripts_;
    std::vector<std::unique_ptr<Node>> nodes_;  ///< never shrinks: indices are stable
    std::vector<std::uint16_t> owner_;          ///< slot -> index into nodes_, or kNoNode
    std::vector<std::uint16_t> masters_;        ///< the distinct values of owner_
    int unowned_{16384};                        ///< slots of owner_ without a node
    boost::asio::steady_timer refresh_timer_;   ///< the wait between two slot-map questions
    boost::asio::steady_timer gap_timer_;       ///< the short waits of the topology loop
    bool refresh_wanted_{false};
    bool started_{false};
    bool stopped_{false};
};

}  // namespace paybridge::store

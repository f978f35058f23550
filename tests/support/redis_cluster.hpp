#pragma once

// A real Redis Cluster (cluster-enabled redis-servers, masters only) on loopback, for integration
// tests of cluster-aware clients: MOVED after a resharding, ASK during a slot migration.

#include "tests/support/redis_server.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace paybridge::test {

/// Synchronous and blocking (hiredis, one short-lived connection per call). Every failure throws
/// std::runtime_error with a specific message; every wait is bounded (20 s, polling every 50 ms).
///
/// Besides the cluster options named below, each node gets its own cluster bus port
/// (--cluster-port, a free port: the default port+10000 may be taken or above 65535) and
/// --cluster-announce-ip 127.0.0.1 (without it a lone node reports an empty IP in CLUSTER SLOTS).
/// Nodes get distinct config epochs 1..masters before they meet, as redis-cli --cluster create
/// does. Node indexes are 0..size()-1; the migration helpers need every node running.
class RedisTestCluster {
public:
    /// Starts `masters` (>=1) cluster-enabled redis-servers (RedisTestServer with extra args
    /// --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000
    /// plus extra_args), assigns the 16384 slots evenly in contiguous ranges (CLUSTER ADDSLOTSRANGE),
    /// introduces them (CLUSTER MEET), and waits until every node reports cluster_state:ok and
    /// knows all masters (CLUSTER NODES / CLUSTER SLOTS agree on every node).
    explicit RedisTestCluster(int masters = 3, std::vector<std::string> extra_args = {});
    ~RedisTestCluster();
    RedisTestCluster(const RedisTestCluster&) = delete;
    RedisTestCluster& operator=(const RedisTestCluster&) = delete;

    int size() const;                         ///< number of masters
    std::uint16_t port(int node) const;
    std::uint16_t bus_port(int node) const;   ///< its cluster bus port (--cluster-port)
    std::string host() const { return "127.0.0.1"; }
    RedisTestServer& server(int node);
    /// The node listening on `port`, or -1 (e.g. to decode a MOVED/ASK address).
    int node_at(std::uint16_t port) const;
    std::string node_id(int node) const;      ///< CLUSTER MYID (read once at start-up; stable)

    /// Node index owning `slot` right now (asks a node with CLUSTER SLOTS: the first running
    /// one), or -1 when no node serves it.
    int owner(int slot) const;
    /// The owner of every slot (index 0..16383) from one CLUSTER SLOTS, -1 where unassigned.
    std::vector<int> slot_owners() const;

    /// Runs one command on node `node` and returns the reply flattened to text for assertions
    /// (string/status: the text; integer: decimal; nil: "(nil)"; error: "ERR..." text prefixed with "(error) ";
    /// array: elements joined with '\n'). Does not follow redirections.
    std::string command(int node, const std::vector<std::string>& argv) const;
    /// Runs the commands in order on ONE connection to `node` (e.g. ASKING then GET), returning
    /// each reply flattened as command() does.
    std::vector<std::string> pipeline(int node, std::vector<std::vector<std::string>> cmds) const;

    /// Migration in steps (for ASK tests): begin marks the slot IMPORTING on `to` and MIGRATING on its
    /// owner; migrate_keys moves every key of the slot from the owner to `to` (CLUSTER GETKEYSINSLOT
    /// + MIGRATE ... KEYS ..., loop until none left); finish sets CLUSTER SETSLOT <slot> NODE <to-id>
    /// on every node (`to` first, then the old owner, then the rest) and waits until every node
    /// agrees on the owner. finish refuses (throws) while the old owner still holds keys of the slot.
    void begin_migration(int slot, int to);
    void migrate_keys(int slot, int to);
    void finish_migration(int slot, int to);
    /// All three in order (a complete resharding of one slot).
    void move_slot(int slot, int to);

private:
    void check_node(int node, const char* what) const;
    /// Waits (20 s) until every node has cluster_state:ok, knows every master, connected, at
    /// 127.0.0.1, and CLUSTER NODES and CLUSTER SLOTS give the same full slot map on every node;
    /// with slot >= 0 also until that slot is owned by `slot_owner` with no migration mark left.
    void wait_for_agreement(const std::string& what, int slot = -1, int slot_owner = -1) const;
    std::string agreement_problem(int slot, int slot_owner) const;

    std::vector<std::unique_ptr<RedisTestServer>> servers_;
    std::vector<std::uint16_t> bus_ports_;
    std::vector<std::string> ids_;
};

}  // namespace paybridge::test

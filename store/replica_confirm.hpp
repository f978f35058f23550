#pragma once

// Confirms that writes the primary has already acknowledged have reached the replicas, for
// config redis.wait_replicas: a group commit of SET + WAIT on a connection of its own.

#include "core/result.hpp"
#include "store/redis_connection.hpp"

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <memory>
#include <string>

namespace paybridge::store {

class ClusterRouter;

/// WAIT counts only the calling connection's own writes, and while it waits Redis answers nothing
/// else on that connection: on the pipelined connection every notification would queue behind
/// every other's WAIT (k of them take up to k × wait_timeout while a replica is down, and the
/// reads and health checks behind them time out). So the confirmations run on their own
/// connection, one round at a time: a round writes one key (its replication offset then covers
/// every write the primary acknowledged before it, from any connection) and WAITs for it; callers
/// that arrive while a round is in flight are answered together by the next one. One SET and one
/// WAIT in flight per worker, however many notifications wait for them.
///
/// With Cluster there is one confirmer per master that took writes, and its rounds run on that
/// master alone (ClusterRouter::exec_at), wherever the slot map says a slot is by then: a round
/// sent by the map could land on another master (after a failover or a resharding) and count that
/// one's replicas for a write it never received. Each round SETs one key per caller's slot there
/// (its shard's key, after ASKING), so a caller whose slot has left the master since fails
/// (MOVED or ASK) rather than being confirmed by replicas that no longer hold its data.
///
/// Lifetime: like the connection it uses (stop it and let the io_context run out first).
/// Not thread-safe: every call on the connection's executor.
class ReplicaConfirmer {
public:
    /// `key` is the key each round writes (on the node whose replicas are counted).
    ReplicaConfirmer(RedisConnection& conn, std::string key, int replicas, std::chrono::milliseconds timeout);
    /// Cluster: every round runs on `router`'s connection to `node`, and only there.
    ReplicaConfirmer(ClusterRouter& router, config::Endpoint node, int replicas, std::chrono::milliseconds timeout);
    ~ReplicaConfirmer();
    ReplicaConfirmer(const ReplicaConfirmer&) = delete;
    ReplicaConfirmer& operator=(const ReplicaConfirmer&) = delete;

    /// Returns once `replicas` replicas hold every write the primary had acknowledged when this
    /// was called. `written_at` (may be null): the primary the caller wrote to; a round that ran
    /// on another one (the two connections follow Sentinel each on its own, so during a failover
    /// they may disagree for a moment) confirms nothing for it. Errors: store_unavailable (fewer
    /// replicas acknowledged within the timeout, an error reply such as NOREPLICAS or OOM to the
    /// SET, another primary, or the connection's own errors), timeout, shutting_down.
    boost::asio::awaitable<Result<void>> confirm(const config::Endpoint* written_at = nullptr);

    /// Cluster (the second constructor): returns once `replicas` replicas of the node hold every
    /// write it had acknowledged when this was called. `key`: a key of the slot the caller wrote
    /// to on the node (its shard's replicated key); the round SETs it there, and a refusal
    /// (MOVED or ASK: the slot has left the node) fails this caller. Errors: as confirm().
    boost::asio::awaitable<Result<void>> confirm_on_node(std::string key);

private:
    struct Round;
    /// Joins the next round (adding `key`, if not empty, to what it SETs) and waits for its end.
    boost::asio::awaitable<std::shared_ptr<Round>> join(std::string key);
    boost::asio::awaitable<void> drive();
    boost::asio::awaitable<Result<void>> run_round(Round& round);
    boost::asio::awaitable<Result<void>> run_node_round(Round& round);

    RedisConnection* conn_{nullptr};  ///< without Cluster
    ClusterRouter* router_{nullptr};  ///< with Cluster
    config::Endpoint node_;           ///< with Cluster: where every round runs
    std::string key_;                 ///< without Cluster: the key each round SETs
    int replicas_;
    std::chrono::milliseconds timeout_;
    std::shared_ptr<Round> next_;  ///< the round callers join; taken by drive() when it starts it
    bool driving_{false};
};

}  // namespace paybridge::store

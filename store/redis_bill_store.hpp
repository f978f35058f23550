#pragma once

// BillStore on Redis: every state change is one call of the bill script (store/bill.lua) through
// a shared pipelined RedisConnection; reads are pipelined batches of plain commands.

#include "config/config.hpp"
#include "core/bill_store.hpp"
#include "store/keys.hpp"
#include "store/redis_cluster.hpp"
#include "store/redis_connection.hpp"
#include "store/replica_confirm.hpp"

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace paybridge::store {

/// Bills of one provider ("alipay", "wechatpay" or "none" when unpaid: null in the summary JSON) in
/// one status.
struct SummaryGroup {
    std::string provider;
    std::string status;
    std::int64_t count{0};
    std::int64_t amount_fen{0};
    std::int64_t paid_fen{0};
    std::int64_t refunded_fen{0};
};

/// GET /v1/reconciliation/summary: bills created in [from_ms, to_ms) grouped by provider and
/// status, and anomalies recorded in that range counted by kind.
struct ReconciliationSummary {
    std::int64_t from_ms{0};
    std::int64_t to_ms{0};
    std::vector<SummaryGroup> groups;               ///< sorted by provider, then status
    /// The payments those bills received besides the one each holds (a second payment,
    /// duplicate_payment; one refunded in full and replaced, paid_after_refund), per provider
    /// (sorted), with what was refunded of them: status "other", amount_fen 0. count and paid_fen
    /// are the payments whose amount is known; refunded_fen includes refunds of unknown ones.
    std::vector<SummaryGroup> other_payments;
    std::map<std::string, std::int64_t> anomalies;  ///< kind -> count
    /// The same as JSON: {"from","to","from_ms","to_ms","bills":[{"provider","status","count",
    /// "amount_fen","paid_fen","refunded_fen"}...],"totals":{"count","amount_fen","paid_fen",
    /// "refunded_fen"},"other_payments":[{"provider","count","paid_fen","refunded_fen"}...],
    /// "anomalies":{"<kind>":n,...}}
    std::string json;
};

/// Errors of every call: errc::store_unavailable (Redis down, not ready, or an error reply,
/// which is logged), errc::timeout, errc::shutting_down; errc::invalid_argument for a malformed
/// cursor, bill id or metadata.
class RedisBillStore final : public BillStore {
public:
    /// Registers the bill script on `redis` (construct before redis.start() so it is loaded on
    /// connect; later works too, through EVALSHA's NOSCRIPT fallback). `now_ms` is the clock for
    /// bill timestamps and indexes (Unix ms); empty means the system clock.
    /// `replicas`: the connection replica confirmations (wait_replicas > 0) run on, so that WAIT
    /// never holds up `redis`'s pipeline (see ReplicaConfirmer); null: `redis` itself.
    RedisBillStore(RedisConnection& redis, const config::RedisConfig& cfg, std::function<std::int64_t()> now_ms = {},
                   RedisConnection* replicas = nullptr);
    ~RedisBillStore() override;

    /// One script call. With wait_replicas > 0 it then waits until that many replicas hold what
    /// the call wrote or repeated (ReplicaConfirmer: SET + WAIT, wait_timeout) and fails with
    /// store_unavailable if fewer acknowledged: the provider retries, the retry is a duplicate,
    /// and it is acknowledged only once the replicas have the change it repeats.
    boost::asio::awaitable<Result<ApplyResult>> apply(PaymentEvent event) override;

    /// metadata_json must be empty or a JSON object; it is stored canonically (compact, keys sorted
    /// recursively), so the same object in another key order is "identical". Waits for replicas
    /// like apply() when a bill was created.
    boost::asio::awaitable<Result<RegisterResult>> register_bill(NewBill bill) override;

    /// HGETALL + LRANGE in one pipelined batch.
    boost::asio::awaitable<Result<std::optional<BillView>>> get_bill(std::string id) override;

    /// Newest change first. Cursor "<updated_ms>:<bill_id>" (next_cursor is empty on the last page).
    /// updated_from_ms is inclusive, updated_to_ms exclusive (0: no bound). limit is capped at 1000.
    /// With status, provider or customer_id, one call examines at most 4096 index entries; when
    /// they run out the page ends at the scan frontier: possibly short or empty, with next_cursor set.
    boost::asio::awaitable<Result<Page>> list_bills(BillFilter filter) override;

    /// The per-shard outbox streams merged in (stream ms, seq, shard) order. The cursor holds the
    /// last stream id read from every shard ("<base ms>_<shard 0>.<shard 1>...", each "<ms - base>"
    /// or "<ms - base>-<seq>", empty for none); the earlier "<ms>-<seq>.<shard>" is still accepted.
    /// Each shard goes on after its own id, so no entry is skipped whatever the shards' clocks do
    /// (a later page may list an entry with a smaller id than an earlier page, from another shard).
    /// When the page is empty (the tail), next_cursor is `after` as given: empty only when the
    /// feed is read from its start and is empty. limit is capped at 1000.
    boost::asio::awaitable<Result<Page>> list_events(std::string after, std::size_t limit) override;

    /// The per-shard anomaly streams, paged exactly like list_events.
    boost::asio::awaitable<Result<Page>> list_anomalies(std::string after, std::size_t limit) override;

    /// PING; fails with store_unavailable unless the connection is ready (scripts loaded).
    boost::asio::awaitable<Result<void>> ping() override;

    /// reconciliation(from_ms, to_ms).json.
    boost::asio::awaitable<Result<std::string>> summary(std::int64_t from_ms, std::int64_t to_ms) override;

    /// Bills created in [from_ms, to_ms) by provider x status, anomalies in that range by kind.
    /// Bills are attributed by their created index (this store's clock); anomalies by their stream
    /// entry time (Redis's clock). Reads five fields of every bill of the range: an operator call, not a
    /// hot path.
    boost::asio::awaitable<Result<ReconciliationSummary>> reconciliation(std::int64_t from_ms, std::int64_t to_ms);

    const Keys& keys() const noexcept { return keys_; }
    /// SHA1 of the bill script.
    const std::string& script_sha() const noexcept { return sha_; }

private:
    /// `ran` (Cluster): set to the node, connection and session that ran the script.
    boost::asio::awaitable<Result<Reply>> run_script(std::string op, std::string bill_id,
                                                     std::vector<std::string> payload, NodeSession& ran);
    /// With wait_replicas: until the replicas of the node that took the bill's change hold it.
    /// `session`: redis_.session() before the change was sent (standalone and Sentinel: the
    /// confirmation must run on the primary that took it). `ran` (Cluster): where the script ran;
    /// the confirmation runs there and nowhere else.
    boost::asio::awaitable<Result<void>> confirm_replicated(std::string_view bill_id, std::uint64_t session,
                                                            const NodeSession& ran);
    boost::asio::awaitable<Result<Page>> list_stream(bool anomalies, std::string after, std::size_t limit);
    std::int64_t now_ms() const;

    RedisConnection& redis_;
    RedisConnection& confirm_conn_;  ///< where replica confirmations run (the replicas connection, or redis_)
    config::RedisConfig cfg_;
    Keys keys_;
    std::string sha_;
    std::string read_sha_;  ///< kReadBill: a bill and its history as of one moment
    std::function<std::int64_t()> now_ms_;
    ClusterRouter* router_{nullptr};          ///< redis_'s, with Cluster
    ClusterRouter* confirm_router_{nullptr};  ///< confirm_conn_'s, with Cluster
    /// Cluster: the confirmer whose rounds run on `node` (made when first needed).
    ReplicaConfirmer* confirmer_on(const config::Endpoint& node);

    /// wait_replicas > 0 only: one, or with Cluster one per master that took writes.
    std::vector<std::unique_ptr<ReplicaConfirmer>> confirmers_;
    std::map<std::string, ReplicaConfirmer*> confirmer_of_node_;  ///< Cluster: "host:port" -> confirmer
};

}  // namespace paybridge::store
